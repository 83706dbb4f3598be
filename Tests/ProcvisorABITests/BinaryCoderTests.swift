import ProcvisorABI
import Testing

/// `BinaryCoder`: what a live update's state goes through, so everything `Codable` must come
/// back exactly, and damaged input must be refused with a reason, never trusted.
@Suite struct BinaryCoderTests {
    enum Kind: String, Codable, Equatable { case a, b }
    enum Shape: Codable, Equatable {
        case point
        case circle(radius: Double)
        case named(String, tag: UInt16?)
    }
    struct Inner: Codable, Equatable {
        var bytes: [UInt8]
        var words: [UInt64]
        var maybe: Int32?
    }
    struct Outer: Codable, Equatable {
        var name: String
        var flag: Bool
        var small: Int8
        var big: Int
        var unsigned: UInt
        var float: Float
        var kind: Kind
        var shapes: [Shape]
        var byName: [String: Inner]
        var byNumber: [UInt32: [Int]]
        var optionals: [UInt64?]
        var nested: [[String]]
        var none: Inner?
        var some: Inner?
    }

    static let sample = Outer(
        name: "dom1 (é)", flag: true, small: -5, big: Int.min, unsigned: UInt.max, float: 1.5, kind: .b,
        shapes: [.point, .circle(radius: 2.25), .named("x", tag: nil), .named("y", tag: 7)],
        byName: ["": Inner(bytes: [], words: [], maybe: nil), "k": Inner(bytes: [0, 255, 1], words: [1, .max], maybe: -1)],
        byNumber: [0: [], 7: [1, -2, 3]], optionals: [nil, 5, nil], nested: [[], ["a", ""]], none: nil,
        some: Inner(bytes: Array(repeating: 9, count: 1000), words: [], maybe: 0))

    @Test func everyKindOfValueComesBackAsItWas() throws {
        let bytes = try BinaryCoder.encode(Self.sample)
        #expect(try BinaryCoder.decode(Outer.self, from: bytes) == Self.sample)
        // Empty arrays of any element type are containers, not byte strings.
        #expect(try BinaryCoder.decode([UInt64].self, from: try BinaryCoder.encode([UInt64]())) == [])
        #expect(try BinaryCoder.decode([String: Int].self, from: try BinaryCoder.encode([String: Int]())) == [:])
        // A byte string is one blob: about its own size, not five bytes a byte.
        #expect(try BinaryCoder.encode(Inner(bytes: Array(repeating: 1, count: 4096), words: [], maybe: nil)).count < 4200)
    }

    struct Before: Codable { var a: Int; var b: String }
    struct After: Codable, Equatable { var a: Int; var b: String; var added: [Int]? }

    /// A layout that gained an optional field reads the older one (the field is nil): what lets a
    /// live update take over a state written before the field existed.
    @Test func anOptionalFieldAddedLaterDecodesAsNilFromTheOlderLayout() throws {
        let old = try BinaryCoder.encode(Before(a: 7, b: "x"))
        #expect(try BinaryCoder.decode(After.self, from: old) == After(a: 7, b: "x", added: nil))
        let new = try BinaryCoder.encode(After(a: 7, b: "x", added: [1, 2]))
        #expect(try BinaryCoder.decode(After.self, from: new).added == [1, 2])
    }

    @Test func damagedInputIsRefusedWithAReason() throws {
        let bytes = try BinaryCoder.encode(Self.sample)
        // Every truncation fails cleanly (no crash, no garbage value).
        for n in stride(from: 0, to: bytes.count, by: 7) {
            #expect(throws: BinaryCoder.Error.self) { try BinaryCoder.decode(Outer.self, from: Array(bytes[0..<n])) }
        }
        // A count no input could hold, a length past the end, a Bool of 2.
        #expect(throws: BinaryCoder.Error.self) { try BinaryCoder.decode([Int].self, from: [0xff, 0xff, 0xff, 0x7f]) }
        #expect(throws: BinaryCoder.Error.self) { try BinaryCoder.decode([Int].self, from: [1, 0, 0, 0, 0xff, 0, 0, 0]) }
        #expect(throws: BinaryCoder.Error.self) { try BinaryCoder.decode([Bool].self, from: [1, 0, 0, 0, 1, 0, 0, 0, 2]) }
        do {
            _ = try BinaryCoder.decode(Outer.self, from: Array(bytes.dropLast(3)))
        } catch let e as BinaryCoder.Error {
            #expect(!e.description.isEmpty)
        }
    }
}
