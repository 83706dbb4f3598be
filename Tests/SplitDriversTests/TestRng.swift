/// xorshift64*: reproducible test data.
struct Rng {
    var s: UInt64
    init(_ seed: UInt64) { s = seed | 1 }
    mutating func next() -> UInt64 {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27
        return s &* 2685821657736338717
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func fill(_ b: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i + 8 <= b.count { b.storeBytes(of: next(), toByteOffset: i, as: UInt64.self); i += 8 }
        while i < b.count { b[i] = UInt8(truncatingIfNeeded: next()); i += 1 }
    }
}
