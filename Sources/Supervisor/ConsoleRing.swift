/// The last bytes a domain wrote to its console, replayed when `xl console` attaches
/// (xenconsoled keeps a buffer the same way).
struct ConsoleRing: Codable, Equatable {
    let capacity: Int
    private var storage: [UInt8] = []
    private var start = 0

    init(capacity: Int = 64 * 1024) {
        self.capacity = capacity
        storage.reserveCapacity(capacity)
    }

    mutating func append(_ bytes: ArraySlice<UInt8>) {
        if bytes.count >= capacity {
            storage = Array(bytes.suffix(capacity))
            start = 0
            return
        }
        for b in bytes {
            if storage.count < capacity {
                storage.append(b)
            } else {
                storage[start] = b
                start = (start + 1) % capacity
            }
        }
    }

    /// Contents, oldest first.
    var contents: [UInt8] {
        Array(storage[start...] + storage[..<start])
    }

    private enum CodingKeys: String, CodingKey { case capacity, contents }

    // The contents, oldest first, as one byte string (a live update carries every domain's
    // ring); a capacity from elsewhere is checked before anything is allocated for it.
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let capacity = try c.decode(Int.self, forKey: .capacity)
        guard capacity > 0, capacity <= 16 << 20 else {
            throw DecodingError.dataCorruptedError(forKey: .capacity, in: c, debugDescription: "console capacity \(capacity)")
        }
        self.init(capacity: capacity)
        append(try c.decode([UInt8].self, forKey: .contents)[...])
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(capacity, forKey: .capacity)
        try c.encode(contents, forKey: .contents)
    }
}

/// The supervisor's own message buffer: what `xl dmesg` prints, like Xen's console ring.
struct HypervisorLog {
    private(set) var lines: [String] = []
    let maxLines = 2000

    mutating func append(_ line: String) {
        lines.append("(XEN) " + line)
        if lines.count > maxLines { lines.removeFirst(lines.count - maxLines) }
    }

    mutating func clear() { lines.removeAll() }

    /// Lines as they were (a live update's new binary continues the log).
    mutating func restore(_ old: [String]) { lines = Array(old.suffix(maxLines)) }

    var text: String { lines.map { $0 + "\n" }.joined() }
}
