import ArgumentParser

struct MemMax: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mem-max", abstract: "Set the maximum memory a domain may hold.")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(help: "Memory: MiB, or a number with a b/k/m/g suffix (as xl).") var memory: String

    func run() throws {
        guard let kb = MemMax.parseKB(memory) else { fail("Invalid memory size: \(memory)") }
        var client = ControlClient.connect()
        client.expectOK(.memMax(domain: domain, kb: kb))
    }

    /// xl's parse_mem_size_kb: a plain number is MiB; suffixes b, k, m, g (either case).
    static func parseKB(_ s: String) -> UInt64? {
        guard let last = s.last else { return nil }
        let (digits, mult): (Substring, Double) = {
            switch last.lowercased() {
            case "b": return (s.dropLast(), 1.0 / 1024)
            case "k": return (s.dropLast(), 1)
            case "m": return (s.dropLast(), 1024)
            case "g": return (s.dropLast(), 1024 * 1024)
            default: return (s[...], 1024)
            }
        }()
        guard let v = UInt64(digits) else { return nil }
        return UInt64(Double(v) * mult)
    }
}
