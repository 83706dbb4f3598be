import ArgumentParser
import Toolstack

/// `xl network-filter` (a Procvisor command; Xen has none): the packet filter rules netback
/// applies on each bridge, kept by the supervisor in XenStore where only that netback reads them.
struct NetworkFilter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network-filter",
        abstract: "List or change the packet filter rules of a netback's bridges (Procvisor extension).",
        discussion: """
        network-filter [-b BACKEND] list [BRIDGE]            numbered rules of one bridge, or of every bridge that has some
        network-filter [-b BACKEND] add BRIDGE RULE...       append a rule
        network-filter [-b BACKEND] insert BRIDGE N RULE...  insert a rule before rule N (1 is first)
        network-filter [-b BACKEND] del BRIDGE N             delete rule N
        network-filter [-b BACKEND] flush BRIDGE             delete every rule of the bridge
        A rule is ACTION [KEY=VALUE ...], ACTION accept or drop, keys src-mac dst-mac src-ip dst-ip proto src-port \
        dst-port in, e.g. 'drop proto=udp dst-port=7' or 'accept src-ip=10.0.0.0/24'; its words may be separate \
        arguments. The first rule that matches a frame decides; a frame no rule matches is accepted. BACKEND (a \
        netback driver domain) defaults to the default netback, started for add and insert.
        """)
    @Option(name: [.short, .customLong("backend")], help: "The netback driver domain (default: netback).") var backend: String?
    @Argument(parsing: .captureForPassthrough, help: "list [BRIDGE] | add BRIDGE RULE... | insert BRIDGE N RULE... | del BRIDGE N | flush BRIDGE")
    var words: [String] = []

    func command() throws -> NetworkFilterCommand {
        guard let verb = words.first else {
            throw ValidationError("'xl network-filter' requires a command: list, add, insert, del or flush")
        }
        let rest = Array(words.dropFirst())
        func position(_ text: String) throws -> Int {
            guard let n = Int(text), n >= 1 else { throw ValidationError("rule number `\(text)' is not a number from 1 up") }
            return n
        }
        switch verb {
        case "list":
            guard rest.count <= 1 else { throw ValidationError("usage: xl network-filter [-b BACKEND] list [BRIDGE]") }
            return .list(bridge: rest.first)
        case "add":
            guard rest.count >= 2 else { throw ValidationError("usage: xl network-filter [-b BACKEND] add BRIDGE RULE...") }
            return .add(bridge: rest[0], rule: rest[1...].joined(separator: " "))
        case "insert":
            guard rest.count >= 3 else { throw ValidationError("usage: xl network-filter [-b BACKEND] insert BRIDGE N RULE...") }
            return .insert(bridge: rest[0], position: try position(rest[1]), rule: rest[2...].joined(separator: " "))
        case "del", "delete":
            guard rest.count == 2 else { throw ValidationError("usage: xl network-filter [-b BACKEND] del BRIDGE N") }
            return .delete(bridge: rest[0], position: try position(rest[1]))
        case "flush":
            guard rest.count == 1 else { throw ValidationError("usage: xl network-filter [-b BACKEND] flush BRIDGE") }
            return .flush(bridge: rest[0])
        default:
            throw ValidationError("unknown network-filter command `\(verb)' (list, add, insert, del or flush)")
        }
    }

    func run() throws {
        let command = try command()
        var client = ControlClient.connect()
        switch client.request(.networkFilter(backend: backend, command: command)) {
        case .ok:
            return
        case let .networkFilters(sets):
            print(XLFormat.networkFilterList(sets), terminator: "")
        case let .error(msg):
            fail(msg)
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}
