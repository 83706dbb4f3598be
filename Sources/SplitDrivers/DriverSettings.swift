/// A driver domain's settings: the KEY=VALUE words of its command line (`extra=` in its xl.cfg),
/// e.g. `PROCVISOR_FORCE_NO_IOURING=1 spin=2000`. Other words are ignored; a later KEY wins.
public enum DriverSettings {
    public static func parse(_ words: some Sequence<String>) -> [String: String] {
        var settings: [String: String] = [:]
        for word in words {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { settings[String(kv[0])] = String(kv[1]) }
        }
        return settings
    }
}
