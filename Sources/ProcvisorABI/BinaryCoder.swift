/// A compact binary form for `Codable` values, for state one process hands to the next (a
/// supervisor live update), where JSON's parsing would be most of the pause.
///
/// Every value is a blob. A number is its little-endian bytes, a string its UTF-8, a Bool one
/// byte. A keyed container is `u32 count` then, per entry, `u32 key length, key, u32 value
/// length, value`; an unkeyed one `u32 count` then, per element, `u32 length, element`. A length
/// of 0xffff_ffff is nil. Lengths make every blob skippable without knowing its type, so a keyed
/// container is read into a table once and its keys are looked up in any order (a dictionary's
/// `allKeys` included). Input is untrusted: every length is checked against what is there.
public enum BinaryCoder {
    public struct Error: Swift.Error, CustomStringConvertible {
        public var description: String
    }

    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let root = Node()
        try value.encode(to: Encoder(node: root, codingPath: []))
        var out: [UInt8] = []
        out.reserveCapacity(4096)
        root.write(into: &out)
        return out
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBufferPointer { buf in
            try T(from: Decoder(buf: buf, range: 0..<buf.count, codingPath: []))
        }
    }

    static let nilLength = UInt32.max

    // MARK: encoding

    final class Node {
        enum Kind {
            case empty
            case bytes([UInt8])
            case keyed([(String, Node)])
            case unkeyed([Node])
            case null
        }
        var kind: Kind = .empty

        func write(into out: inout [UInt8]) {
            switch kind {
            case .empty, .null: break
            case let .bytes(b): out += b
            case let .keyed(entries):
                put(UInt32(entries.count), &out)
                for (k, v) in entries {
                    let key = Array(k.utf8)
                    put(UInt32(key.count), &out)
                    out += key
                    v.writeFramed(into: &out)
                }
            case let .unkeyed(elements):
                put(UInt32(elements.count), &out)
                for e in elements { e.writeFramed(into: &out) }
            }
        }

        func writeFramed(into out: inout [UInt8]) {
            if case .null = kind {
                put(nilLength, &out)
                return
            }
            let at = out.count
            put(0, &out)
            write(into: &out)
            let n = UInt32(out.count - at - 4)
            withUnsafeBytes(of: n.littleEndian) { for i in 0..<4 { out[at + i] = $0[i] } }
        }

        func appendKeyed(_ key: String) -> Node {
            let n = Node()
            if case var .keyed(e) = kind {
                kind = .empty
                e.append((key, n))
                kind = .keyed(e)
            } else {
                kind = .keyed([(key, n)])
            }
            return n
        }

        func appendUnkeyed() -> Node {
            let n = Node()
            if case var .unkeyed(e) = kind {
                kind = .empty
                e.append(n)
                kind = .unkeyed(e)
            } else {
                kind = .unkeyed([n])
            }
            return n
        }

        var count: Int {
            switch kind {
            case let .keyed(e): return e.count
            case let .unkeyed(e): return e.count
            default: return 0
            }
        }
    }

    static func put(_ v: UInt32, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    static func bytes<I: FixedWidthInteger>(_ v: I) -> [UInt8] {
        withUnsafeBytes(of: v.littleEndian) { Array($0) }
    }

    struct Encoder: Swift.Encoder {
        let node: Node
        var codingPath: [CodingKey]
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
            if case .keyed = node.kind {} else { node.kind = .keyed([]) }
            return KeyedEncodingContainer(KeyedEnc<Key>(node: node, codingPath: codingPath))
        }

        func unkeyedContainer() -> UnkeyedEncodingContainer {
            if case .unkeyed = node.kind {} else { node.kind = .unkeyed([]) }
            return UnkeyedEnc(node: node, codingPath: codingPath)
        }

        func singleValueContainer() -> SingleValueEncodingContainer { SingleEnc(node: node, codingPath: codingPath) }
    }

    /// Sets `node` to `value`'s encoding.
    static func encode<T: Encodable>(_ value: T, into node: Node, path: [CodingKey]) throws {
        // By the static type (a metadata comparison), not by casting the value: casts are slow,
        // and an empty array casts to every array type.
        if T.self == String.self { node.kind = .bytes(Array(unsafeBitCast(value, to: String.self).utf8)) }
        else if T.self == UInt64.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: UInt64.self))) }
        else if T.self == UInt32.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: UInt32.self))) }
        else if T.self == UInt16.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: UInt16.self))) }
        else if T.self == Int.self { node.kind = .bytes(bytes(Int64(unsafeBitCast(value, to: Int.self)))) }
        else if T.self == Int32.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Int32.self))) }
        else if T.self == Bool.self { node.kind = .bytes([unsafeBitCast(value, to: Bool.self) ? 1 : 0]) }
        else if T.self == UInt8.self { node.kind = .bytes([unsafeBitCast(value, to: UInt8.self)]) }
        else if T.self == [UInt8].self { node.kind = .bytes(unsafeBitCast(value, to: [UInt8].self)) }  // one blob, not one per byte
        else if T.self == Int8.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Int8.self))) }
        else if T.self == Int16.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Int16.self))) }
        else if T.self == Int64.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Int64.self))) }
        else if T.self == UInt.self { node.kind = .bytes(bytes(UInt64(unsafeBitCast(value, to: UInt.self)))) }
        else if T.self == Double.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Double.self).bitPattern)) }
        else if T.self == Float.self { node.kind = .bytes(bytes(unsafeBitCast(value, to: Float.self).bitPattern)) }
        else { try value.encode(to: Encoder(node: node, codingPath: path)) }
    }

    struct KeyedEnc<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let node: Node
        var codingPath: [CodingKey]

        mutating func encodeNil(forKey key: Key) throws { node.appendKeyed(key.stringValue).kind = .null }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            try BinaryCoder.encode(value, into: node.appendKeyed(key.stringValue), path: codingPath + [key])
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            let n = node.appendKeyed(key.stringValue)
            n.kind = .keyed([])
            return KeyedEncodingContainer(KeyedEnc<NestedKey>(node: n, codingPath: codingPath + [key]))
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> UnkeyedEncodingContainer {
            let n = node.appendKeyed(key.stringValue)
            n.kind = .unkeyed([])
            return UnkeyedEnc(node: n, codingPath: codingPath + [key])
        }
        mutating func superEncoder() -> Swift.Encoder { Encoder(node: node.appendKeyed("super"), codingPath: codingPath) }
        mutating func superEncoder(forKey key: Key) -> Swift.Encoder { Encoder(node: node.appendKeyed(key.stringValue), codingPath: codingPath + [key]) }
    }

    struct UnkeyedEnc: UnkeyedEncodingContainer {
        let node: Node
        var codingPath: [CodingKey]
        var count: Int { node.count }

        mutating func encodeNil() throws { node.appendUnkeyed().kind = .null }
        mutating func encode<T: Encodable>(_ value: T) throws {
            try BinaryCoder.encode(value, into: node.appendUnkeyed(), path: codingPath)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            let n = node.appendUnkeyed()
            n.kind = .keyed([])
            return KeyedEncodingContainer(KeyedEnc<NestedKey>(node: n, codingPath: codingPath))
        }
        mutating func nestedUnkeyedContainer() -> UnkeyedEncodingContainer {
            let n = node.appendUnkeyed()
            n.kind = .unkeyed([])
            return UnkeyedEnc(node: n, codingPath: codingPath)
        }
        mutating func superEncoder() -> Swift.Encoder { Encoder(node: node.appendUnkeyed(), codingPath: codingPath) }
    }

    struct SingleEnc: SingleValueEncodingContainer {
        let node: Node
        var codingPath: [CodingKey]
        mutating func encodeNil() throws { node.kind = .null }
        mutating func encode<T: Encodable>(_ value: T) throws { try BinaryCoder.encode(value, into: node, path: codingPath) }
    }

    // MARK: decoding

    struct Decoder: Swift.Decoder {
        let buf: UnsafeBufferPointer<UInt8>
        let range: Range<Int>
        var codingPath: [CodingKey]
        /// The value was encoded as nil (only an Optional decodes from it).
        var isNil = false
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
            if isNil { throw fail(codingPath, "nil where a container belongs") }
            return KeyedDecodingContainer(try KeyedDec<Key>(buf: buf, range: range, codingPath: codingPath))
        }

        func unkeyedContainer() throws -> UnkeyedDecodingContainer {
            if isNil { throw fail(codingPath, "nil where a container belongs") }
            return try UnkeyedDec(buf: buf, range: range, codingPath: codingPath)
        }

        func singleValueContainer() throws -> SingleValueDecodingContainer { SingleDec(buf: buf, range: range, codingPath: codingPath, isNil: isNil) }
    }

    /// A `T` from a blob that was encoded as nil: an Optional's nil, an error for anything else.
    static func decodeNil<T: Decodable>(_ type: T.Type, _ buf: UnsafeBufferPointer<UInt8>, _ path: [CodingKey]) throws -> T {
        try T(from: Decoder(buf: buf, range: 0..<0, codingPath: path, isNil: true))
    }

    static func fail(_ path: [CodingKey], _ why: String) -> Error {
        Error(description: (path.isEmpty ? "" : path.map(\.stringValue).joined(separator: ".") + ": ") + why)
    }

    /// A little-endian u32 at `at`, within `range`.
    static func u32(_ buf: UnsafeBufferPointer<UInt8>, _ at: Int, _ range: Range<Int>, _ path: [CodingKey]) throws -> UInt32 {
        guard at >= range.lowerBound, at + 4 <= range.upperBound else { throw fail(path, "truncated at byte \(at)") }
        return UInt32(buf[at]) | UInt32(buf[at + 1]) << 8 | UInt32(buf[at + 2]) << 16 | UInt32(buf[at + 3]) << 24
    }

    /// A framed blob at `at`: its range (nil for nil) and where the next one starts.
    static func framed(_ buf: UnsafeBufferPointer<UInt8>, _ at: Int, _ range: Range<Int>, _ path: [CodingKey]) throws -> (Range<Int>?, Int) {
        let n = try u32(buf, at, range, path)
        if n == nilLength { return (nil, at + 4) }
        let start = at + 4
        guard Int(n) <= range.upperBound - start else { throw fail(path, "a value of \(n) bytes runs past the end at byte \(start)") }
        return (start..<start + Int(n), start + Int(n))
    }

    /// A fixed-width integer from the blob `range`.
    static func int<I: FixedWidthInteger>(_: I.Type, _ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ path: [CodingKey]) throws -> I {
        guard range.count == MemoryLayout<I>.size else { throw fail(path, "\(I.self) of \(range.count) bytes") }
        var v: I = 0
        for i in 0..<range.count { v |= I(truncatingIfNeeded: buf[range.lowerBound + i]) << (8 * i) }
        return v
    }

    static func string(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ path: [CodingKey]) throws -> String {
        guard let s = String(validating: UnsafeBufferPointer(rebasing: buf[range]), as: UTF8.self) else { throw fail(path, "a string that is not UTF-8") }
        return s
    }

    static func bool(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ path: [CodingKey]) throws -> Bool {
        let b = try int(UInt8.self, buf, range, path)
        guard b <= 1 else { throw fail(path, "a Bool of \(b)") }
        return b == 1
    }

    /// Decodes a `T` from the blob `range`.
    static func decode<T: Decodable>(_ type: T.Type, _ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ path: [CodingKey]) throws -> T {
        if T.self == String.self { return unsafeBitCast(try string(buf, range, path), to: T.self) }
        if T.self == UInt64.self { return unsafeBitCast(try int(UInt64.self, buf, range, path), to: T.self) }
        if T.self == UInt32.self { return unsafeBitCast(try int(UInt32.self, buf, range, path), to: T.self) }
        if T.self == UInt16.self { return unsafeBitCast(try int(UInt16.self, buf, range, path), to: T.self) }
        if T.self == Int.self { return unsafeBitCast(Int(try int(Int64.self, buf, range, path)), to: T.self) }
        if T.self == Int32.self { return unsafeBitCast(try int(Int32.self, buf, range, path), to: T.self) }
        if T.self == Bool.self { return unsafeBitCast(try bool(buf, range, path), to: T.self) }
        if T.self == UInt8.self { return unsafeBitCast(try int(UInt8.self, buf, range, path), to: T.self) }
        if T.self == [UInt8].self { return unsafeBitCast(Array(buf[range]), to: T.self) }
        if T.self == Int8.self { return unsafeBitCast(try int(Int8.self, buf, range, path), to: T.self) }
        if T.self == Int16.self { return unsafeBitCast(try int(Int16.self, buf, range, path), to: T.self) }
        if T.self == Int64.self { return unsafeBitCast(try int(Int64.self, buf, range, path), to: T.self) }
        if T.self == UInt.self { return unsafeBitCast(UInt(try int(UInt64.self, buf, range, path)), to: T.self) }
        if T.self == Double.self { return unsafeBitCast(Double(bitPattern: try int(UInt64.self, buf, range, path)), to: T.self) }
        if T.self == Float.self { return unsafeBitCast(Float(bitPattern: try int(UInt32.self, buf, range, path)), to: T.self) }
        return try T(from: Decoder(buf: buf, range: range, codingPath: path))
    }

    /// A keyed container's entries: where each key and value is (nil: encoded as nil), and the
    /// entry after the last one looked up (synthesized decoders ask in the order encoders wrote).
    final class Entries {
        var keys: [Range<Int>] = []
        var values: [Range<Int>?] = []
        var next = 0
    }

    struct KeyedDec<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let buf: UnsafeBufferPointer<UInt8>
        var codingPath: [CodingKey]
        let entries = Entries()

        init(buf: UnsafeBufferPointer<UInt8>, range: Range<Int>, codingPath: [CodingKey]) throws {
            self.buf = buf
            self.codingPath = codingPath
            let count = try u32(buf, range.lowerBound, range, codingPath)
            guard Int(count) <= range.count / 8 else { throw fail(codingPath, "\(count) entries cannot fit in \(range.count) bytes") }
            var at = range.lowerBound + 4
            entries.keys.reserveCapacity(Int(count))
            entries.values.reserveCapacity(Int(count))
            for _ in 0..<count {
                let (k, next) = try framed(buf, at, range, codingPath)
                guard let k else { throw fail(codingPath, "a nil key") }
                let (v, after) = try framed(buf, next, range, codingPath)
                entries.keys.append(k)
                entries.values.append(v)
                at = after
            }
            guard at == range.upperBound else { throw fail(codingPath, "\(range.upperBound - at) bytes after the last entry") }
        }

        private func matches(_ r: Range<Int>, _ key: String) -> Bool {
            var key = key
            return key.withUTF8 { k in
                guard k.count == r.count else { return false }
                for i in 0..<k.count where k[i] != buf[r.lowerBound + i] { return false }
                return true
            }
        }

        private func index(_ key: Key) -> Int? {
            let s = key.stringValue
            let e = entries
            if e.next < e.keys.count, matches(e.keys[e.next], s) {
                e.next += 1
                return e.next - 1
            }
            for i in 0..<e.keys.count where matches(e.keys[i], s) {
                e.next = i + 1
                return i
            }
            return nil
        }

        /// Keys that are not UTF-8 (or that `Key` does not know) are left out: a decoder that
        /// needs one finds it missing and says so.
        var allKeys: [Key] {
            entries.keys.compactMap { r in String(validating: UnsafeBufferPointer(rebasing: buf[r]), as: UTF8.self).flatMap { Key(stringValue: $0) } }
        }

        func contains(_ key: Key) -> Bool { index(key).map { i in entries.next = i; return true } ?? false }

        func value(_ key: Key) throws -> Range<Int>? {
            guard let i = index(key) else { throw fail(codingPath + [key], "missing") }
            return entries.values[i]
        }

        /// The value of a key that must not be nil.
        func present(_ key: Key) throws -> Range<Int> {
            guard let r = try value(key) else { throw fail(codingPath + [key], "nil where a value belongs") }
            return r
        }

        func decodeNil(forKey key: Key) throws -> Bool {
            guard let i = index(key) else { throw fail(codingPath + [key], "missing") }
            if entries.values[i] == nil { return true }
            entries.next = i  // not consumed: the value is decoded next
            return false
        }

        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try bool(buf, present(key), codingPath + [key]) }
        func decode(_ type: String.Type, forKey key: Key) throws -> String { try string(buf, present(key), codingPath + [key]) }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { Int(try int(Int64.self, buf, present(key), codingPath + [key])) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try int(Int8.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try int(Int16.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try int(Int32.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try int(Int64.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { UInt(try int(UInt64.self, buf, present(key), codingPath + [key])) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try int(UInt8.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try int(UInt16.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try int(UInt32.self, buf, present(key), codingPath + [key]) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try int(UInt64.self, buf, present(key), codingPath + [key]) }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            guard let r = try value(key) else { return try BinaryCoder.decodeNil(type, buf, codingPath + [key]) }
            return try BinaryCoder.decode(type, buf, r, codingPath + [key])
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            KeyedDecodingContainer(try KeyedDec<NestedKey>(buf: buf, range: try present(key), codingPath: codingPath + [key]))
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> UnkeyedDecodingContainer {
            try UnkeyedDec(buf: buf, range: try present(key), codingPath: codingPath + [key])
        }

        func superDecoder() throws -> Swift.Decoder {
            guard let i = entries.keys.firstIndex(where: { matches($0, "super") }), let r = entries.values[i] else { throw fail(codingPath, "no super") }
            return Decoder(buf: buf, range: r, codingPath: codingPath)
        }

        func superDecoder(forKey key: Key) throws -> Swift.Decoder {
            Decoder(buf: buf, range: try present(key), codingPath: codingPath + [key])
        }
    }

    struct UnkeyedDec: UnkeyedDecodingContainer {
        let buf: UnsafeBufferPointer<UInt8>
        let range: Range<Int>
        var codingPath: [CodingKey]
        let total: Int
        var currentIndex = 0
        var at: Int

        init(buf: UnsafeBufferPointer<UInt8>, range: Range<Int>, codingPath: [CodingKey]) throws {
            self.buf = buf
            self.range = range
            self.codingPath = codingPath
            let n = try u32(buf, range.lowerBound, range, codingPath)
            guard Int(n) <= range.count / 4 else { throw fail(codingPath, "\(n) elements cannot fit in \(range.count) bytes") }
            total = Int(n)
            at = range.lowerBound + 4
        }

        var count: Int? { total }
        var isAtEnd: Bool { currentIndex >= total }

        mutating func next() throws -> Range<Int>? {
            guard !isAtEnd else { throw fail(codingPath, "past the last of \(total) elements") }
            let (r, after) = try framed(buf, at, range, codingPath)
            at = after
            currentIndex += 1
            return r
        }

        mutating func decodeNil() throws -> Bool {
            guard !isAtEnd else { throw fail(codingPath, "past the last of \(total) elements") }
            if try u32(buf, at, range, codingPath) == nilLength {
                at += 4
                currentIndex += 1
                return true
            }
            return false
        }

        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
            guard let r = try next() else { return try BinaryCoder.decodeNil(type, buf, codingPath) }
            return try BinaryCoder.decode(type, buf, r, codingPath)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            guard let r = try next() else { throw fail(codingPath, "nil where a container belongs") }
            return KeyedDecodingContainer(try KeyedDec<NestedKey>(buf: buf, range: r, codingPath: codingPath))
        }

        mutating func nestedUnkeyedContainer() throws -> UnkeyedDecodingContainer {
            guard let r = try next() else { throw fail(codingPath, "nil where a container belongs") }
            return try UnkeyedDec(buf: buf, range: r, codingPath: codingPath)
        }

        mutating func superDecoder() throws -> Swift.Decoder {
            guard let r = try next() else { throw fail(codingPath, "nil super") }
            return Decoder(buf: buf, range: r, codingPath: codingPath)
        }
    }

    struct SingleDec: SingleValueDecodingContainer {
        let buf: UnsafeBufferPointer<UInt8>
        let range: Range<Int>
        var codingPath: [CodingKey]
        var isNil: Bool
        func decodeNil() -> Bool { isNil }
        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            if isNil { throw fail(codingPath, "nil where a \(T.self) belongs") }
            return try BinaryCoder.decode(type, buf, range, codingPath)
        }
    }
}
