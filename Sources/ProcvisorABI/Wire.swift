/// Little-endian encoder for Procvisor's binary wire formats (hypercalls, start-info, events).
public struct WireWriter {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func raw(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }
    /// A length-prefixed (u32) UTF-8 string.
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        raw(utf8)
    }
}

/// Errors from decoding untrusted bytes. Each names what was wrong so the sender can be told.
public enum WireError: Error, Equatable, CustomStringConvertible {
    case truncated(what: String, needed: Int, available: Int)
    case tooLarge(what: String, size: Int, limit: Int)
    case invalid(String)

    public var description: String {
        switch self {
        case let .truncated(what, needed, available): return "\(what): truncated (needed \(needed) bytes, have \(available))"
        case let .tooLarge(what, size, limit): return "\(what): \(size) bytes exceeds the limit of \(limit)"
        case let .invalid(why): return why
        }
    }
}

/// Bounds-checked little-endian decoder over untrusted bytes.
public struct WireReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    let what: String

    public init(_ bytes: [UInt8], what: String, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
        self.what = what
    }

    public var remaining: Int { bytes.count - offset }

    mutating func need(_ n: Int) throws {
        if remaining < n { throw WireError.truncated(what: what, needed: offset + n, available: bytes.count) }
    }

    public mutating func u8() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func fixed<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        try need(size)
        var v: T = 0
        for i in 0..<size { v |= T(bytes[offset + i]) << (8 * i) }
        offset += size
        return v
    }

    public mutating func u16() throws -> UInt16 { try fixed(UInt16.self) }
    public mutating func u32() throws -> UInt32 { try fixed(UInt32.self) }
    public mutating func u64() throws -> UInt64 { try fixed(UInt64.self) }
    public mutating func i64() throws -> Int64 { Int64(bitPattern: try fixed(UInt64.self)) }

    public mutating func raw(_ n: Int) throws -> ArraySlice<UInt8> {
        try need(n)
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    /// A length-prefixed string; rejects lengths over `limit` and invalid UTF-8.
    public mutating func string(limit: Int) throws -> String {
        let n = Int(try u32())
        if n > limit { throw WireError.tooLarge(what: "\(what) string", size: n, limit: limit) }
        let slice = try raw(n)
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw WireError.invalid("\(what): string is not valid UTF-8")
        }
        return s
    }
}
