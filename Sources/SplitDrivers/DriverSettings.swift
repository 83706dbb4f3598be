/// A driver domain's settings: the KEY=VALUE words of its command line (`extra=` in its xl.cfg),
/// e.g. `PROCVISOR_FORCE_NO_IOURING=1 spin=2000`, read here — and only here — into the typed
/// settings the backends are given (`BlkbackSettings`, `NetbackSettings`). Other words are
/// ignored; a later KEY wins; keys a backend does not know are ignored.
///
/// A value its key cannot take (not a number, not one of the words it knows) is ignored: the
/// setting keeps its default. A number outside its key's range is clamped to it, except
/// `max-queues` below 1, which is ignored. Either way `warn` is told, naming the key and the value.
public enum DriverSettings {
    /// The KEY=VALUE words as a dictionary.
    public static func parse(_ words: some Sequence<String>) -> [String: String] {
        var settings: [String: String] = [:]
        for word in words {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { settings[String(kv[0])] = String(kv[1]) }
        }
        return settings
    }

    /// blkback's settings (`BlkbackSettings` documents each key).
    public static func blkback(_ words: some Sequence<String>, warn: (String) -> Void = { _ in }) -> BlkbackSettings {
        let r = Reader(parse(words))
        defer { r.warnings.forEach(warn) }
        var s = BlkbackSettings()
        s.io = BlockIOSettings(forceThreadPool: r.word(forceNoIOUring, oneOf: ["0", "1"]) == "1")
        s.maxQueues = r.maxQueues(limit: 16)
        // `submit=queue` keeps the event dispatcher even without `dispatch=1`.
        let submit = r.word("submit", oneOf: ["queue"]), dispatch = r.word("dispatch", oneOf: ["0", "1"])
        if submit == "queue" {
            s.queueMode = .queueThreadSubmits
        } else if dispatch == "1" {
            s.queueMode = .dispatched
        }
        s.spin = r.integer("spin", in: 0...Int.max) ?? s.spin
        s.pollNs = r.whole("poll-us", UInt64.self).map { r.clamped("poll-us", $0, to: 0...10_000) * 1000 }
        s.stagingBytes = (r.integer("staging-mib", in: 0...1024) ?? 16) << 20
        s.directIO = r.word("direct-io", oneOf: ["0", "1"]) != "0"
        s.fixedBuffers = r.word("fixed-buffers", oneOf: ["0", "1"]) != "0"
        s.bounceMinBytes = (r.integer("bounce-min", in: 4...Int.max) ?? 64) << 10
        s.submitChunk = r.integer("submit-chunk", in: 1...Int.max) ?? s.submitChunk
        s.failSubmit = r.integer("fail-submit", in: 1...Int.max)
        return s
    }

    /// netback's settings (`NetbackSettings` documents each key).
    public static func netback(_ words: some Sequence<String>, warn: (String) -> Void = { _ in }) -> NetbackSettings {
        let r = Reader(parse(words))
        defer { r.warnings.forEach(warn) }
        var s = NetbackSettings()
        s.forceNoIOUring = r.word(forceNoIOUring, oneOf: ["0", "1"]) == "1"
        s.maxQueues = r.maxQueues(limit: 8)
        s.spin = r.integer("spin", in: 0...Int.max) ?? s.spin
        s.budget = r.integer("budget", in: 1...Int.max) ?? s.budget
        s.backlog = r.integer("backlog", in: 0...Int.max) ?? s.backlog
        s.broadcastPPS = r.integer("broadcast-pps", in: 1...Int.max) ?? s.broadcastPPS
        return s
    }

    /// The setting that forces the thread-pool engine and plain tap I/O (as `IOUring.probe`
    /// honours it in the environment).
    static let forceNoIOUring = BlockIO.forceNoIOUringVariable

    /// Reads typed values out of the words, noting each value it cannot use as given.
    private final class Reader {
        let values: [String: String]
        private(set) var warnings: [String] = []

        init(_ values: [String: String]) { self.values = values }

        private func warn(_ line: String) { warnings.append(line) }

        /// The value of `key`, when it is set; a value not in `words` is returned too (the caller
        /// compares it as it always has) but reported, as ignored.
        func word(_ key: String, oneOf words: [String]) -> String? {
            guard let text = values[key] else { return nil }
            if !words.contains(text) { warn("\(key)=\(text): not \(words.joined(separator: " or ")); ignored") }
            return text
        }

        /// `key` as a whole number: nil when unset, or (reported) when it is not one.
        func whole<T: FixedWidthInteger>(_ key: String, _ type: T.Type) -> T? {
            guard let text = values[key] else { return nil }
            guard let v = T(text) else {
                warn("\(key)=\(text): not a whole number\(T.isSigned ? "" : " of 0 or more"); ignored")
                return nil
            }
            return v
        }

        /// `v` clamped to `range` (reported when it was outside).
        func clamped<T: FixedWidthInteger>(_ key: String, _ v: T, to range: ClosedRange<T>) -> T {
            let c = min(max(v, range.lowerBound), range.upperBound)
            if c != v { warn("\(key)=\(v): out of range; using \(c)") }
            return c
        }

        /// `key` as a whole number clamped to `range`; nil when unset or not a number.
        func integer(_ key: String, in range: ClosedRange<Int>) -> Int? {
            whole(key, Int.self).map { clamped(key, $0, to: range) }
        }

        /// `max-queues`: 1 or more, at most `limit`; below 1 it is ignored (one queue per vCPU).
        func maxQueues(limit: Int) -> Int? {
            guard let v = whole("max-queues", Int.self) else { return nil }
            guard v >= 1 else {
                warn("max-queues=\(v): less than 1; ignored")
                return nil
            }
            return clamped("max-queues", v, to: 1...limit)
        }
    }
}
