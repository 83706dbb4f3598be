import LinuxHost
import ProcvisorABI
import Toolstack
import XenStore

extension Supervisor {
    // MARK: xl network-filter

    /// `xl network-filter`: the ordered rules of a bridge, stored where netback reads them,
    /// `/local/domain/B/netfilter/BRIDGE` (one rule per line, in NetFilterRule's own text form),
    /// owned by dom0 and readable by backend domain B alone. A rule is checked with
    /// `NetFilterRule.parse` before it is stored. `backend` nil is the default netback (started
    /// for `add` and `insert`).
    func networkFilter(backend name: String?, _ command: NetworkFilterCommand) -> ControlResponse {
        do {
            return try networkFilterChecked(backend: name, command)
        } catch {
            log("network-filter: \(error)")
            return .error("\(error)")
        }
    }

    func networkFilterChecked(backend name: String?, _ command: NetworkFilterCommand) throws -> ControlResponse {
        let backend: DomainRecord?
        switch (name, command) {
        case let (name?, _):
            guard let b = find(name), b.domid != 0, b.hasProcess, b.phase == .running || b.phase == .booting else {
                throw CreateError("backend domain \"\(name)\" is not running")
            }
            guard b.config.driverDomain else {
                throw CreateError("domain \"\(name)\" is not a driver domain (set driver_domain = 1 in its config)")
            }
            backend = b
        case (nil, .add), (nil, .insert):
            backend = try defaultDriverDomain(Self.defaultNetbackName, for: "network-filter")
        case (nil, _):
            backend = domains.values.first { $0.name == Self.defaultNetbackName && $0.hasProcess }
        }
        var bridge: String?
        switch command {
        case let .list(b): bridge = b
        case let .add(b, _), let .insert(b, _, _), let .delete(b, _), let .flush(b): bridge = b
        }
        if let bridge {
            if let p = VifSpec.interfaceNameProblem(bridge) { throw CreateError("invalid bridge name `\(bridge)': \(p)") }
            // ASCII letters and digits (what isalnum accepts in the C locale), '-', '_', '@'.
            let allowed: (UInt8) -> Bool = {
                (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0)
                    || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "@")
            }
            if !bridge.utf8.allSatisfy(allowed) {
                throw CreateError("bridge \(bridge): filter rules can only be kept for bridges named with letters, digits, '-', '_' and '@' (the name is a XenStore node)")
            }
        }
        guard let backend else {
            // No default netback runs: it has no bridges, so no rules.
            switch command {
            case .list(nil): return .networkFilters([])
            case let .list(b?): return .networkFilters([NetworkFilterRules(bridge: b, rules: [])])
            case .flush: return .ok
            case let .delete(b, n): throw CreateError("bridge \(b) has no rule \(n) (it has none: the default netback is not running)")
            case .add, .insert: return .ok  // not reached: started above
            }
        }
        let dir = "/local/domain/\(backend.domid)/netfilter"
        func rules(_ b: String) -> [String] {
            guard let v = try? xenstore.engine.read(dir + "/" + b) else { return [] }
            return String(decoding: v, as: UTF8.self).split(separator: "\n").map(String.init)
        }
        func parse(_ text: String) throws -> String {
            do {
                return try NetFilterRule.parse(text).description
            } catch {
                throw CreateError("bad rule \"\(text)\": \(error)")
            }
        }
        var list: [String]
        switch command {
        case let .list(b?):
            return .networkFilters([NetworkFilterRules(bridge: b, rules: rules(b))])
        case .list(nil):
            let bridges = ((try? xenstore.engine.directory(dir)) ?? []).sorted()
            return .networkFilters(bridges.map { NetworkFilterRules(bridge: $0, rules: rules($0)) }.filter { !$0.rules.isEmpty })
        case let .add(b, text):
            list = rules(b)
            list.append(try parse(text))
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(list.count) added: \(list[list.count - 1])")
        case let .insert(b, n, text):
            list = rules(b)
            guard (1...(list.count + 1)).contains(n) else {
                throw CreateError("bridge \(b): cannot insert at \(n): it has \(list.count) rule\(list.count == 1 ? "" : "s") (positions 1 to \(list.count + 1))")
            }
            list.insert(try parse(text), at: n - 1)
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(n) inserted: \(list[n - 1])")
        case let .delete(b, n):
            list = rules(b)
            guard n >= 1, n <= list.count else {
                throw CreateError("bridge \(b) has no rule \(n) (it has \(list.count) rule\(list.count == 1 ? "" : "s"))")
            }
            let gone = list.remove(at: n - 1)
            try storeRules(backend, b, list)
            log("network-filter: \(backend.label) bridge \(b): rule \(n) deleted: \(gone)")
        case let .flush(b):
            try storeRules(backend, b, [])
            log("network-filter: \(backend.label) bridge \(b): rules flushed")
        }
        return .ok
    }

    /// Writes a bridge's rules (removes the node when there are none), dom0's, readable by the
    /// backend alone.
    func storeRules(_ backend: DomainRecord, _ bridge: String, _ rules: [String]) throws {
        let dir = "/local/domain/\(backend.domid)/netfilter", node = dir + "/" + bridge
        let text = rules.joined(separator: "\n")
        guard text.utf8.count <= XenStoreWire.payloadMax else {
            throw CreateError("bridge \(bridge): \(rules.count) rules take \(text.utf8.count) bytes, more than a XenStore value holds (\(XenStoreWire.payloadMax))")
        }
        let perms = [XSPermission(domid: 0, access: .none), XSPermission(domid: backend.domid.rawValue, access: .read)]
        var failure: Error?
        store { e in
            do {
                if rules.isEmpty { return (try? e.rm(node)) ?? [] }
                var out = try e.mkdir(dir, perms: perms)
                out += try e.write(node, Array(text.utf8), perms: perms)
                return out
            } catch {
                failure = error
                return []
            }
        }
        if let failure { throw CreateError("bridge \(bridge): cannot store the rules in \(node): \(failure)") }
    }
}
