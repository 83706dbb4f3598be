import ArgumentParser
import LinuxHost

/// xl's help and usage errors, in xl's layout: `xl help` lists every subcommand, one per line;
/// `xl help CMD` and `xl CMD -h` print `Usage: xl [-v] CMD USAGE`, the description and the
/// options; a command given too few arguments says `'xl CMD' requires at least N argument(s).`
/// and shows its help, an option it does not take is `option `X' not supported.`; both exit 2.
/// The descriptions are each command's abstract, the options its own option help.
enum XLHelp {
    /// A subcommand's synopsis after its name, in xl's notation, and the arguments it needs.
    struct Synopsis {
        var usage: String
        var required: Int
    }

    static let synopses: [String: Synopsis] = [
        "create": Synopsis(usage: "[options] <ConfigFile> [vars]", required: 1),
        "destroy": Synopsis(usage: "[options] <Domain>", required: 1),
        "shutdown": Synopsis(usage: "[options] <-a|Domain>", required: 0),
        "reboot": Synopsis(usage: "[options] <-a|Domain>", required: 0),
        "pause": Synopsis(usage: "<Domain>", required: 1),
        "unpause": Synopsis(usage: "<Domain>", required: 1),
        "rename": Synopsis(usage: "<Domain> <NewDomainName>", required: 2),
        "list": Synopsis(usage: "[options] [Domain]", required: 0),
        "info": Synopsis(usage: "[Field]", required: 0),
        "console": Synopsis(usage: "<Domain>", required: 1),
        "dmesg": Synopsis(usage: "[-c]", required: 0),
        "domid": Synopsis(usage: "<DomainName>", required: 1),
        "domname": Synopsis(usage: "<DomainId>", required: 1),
        "uptime": Synopsis(usage: "[-s] [Domain]", required: 0),
        "mem-max": Synopsis(usage: "<Domain> <MemMB['b'[bytes]|'k'[KB]|'g'[GB]|'m'[MB]]>", required: 2),
        "mem-set": Synopsis(usage: "<Domain> <MemMB['b'[bytes]|'k'[KB]|'g'[GB]|'m'[MB]]>", required: 2),
        "block-attach": Synopsis(usage: "<Domain> <disk-spec-component(s)>...", required: 2),
        "block-detach": Synopsis(usage: "[-f] <Domain> <DevId>", required: 2),
        "block-list": Synopsis(usage: "<Domain(s)>", required: 1),
        "network-attach": Synopsis(usage: "<Domain> [vif-spec-component(s)]...", required: 1),
        "network-detach": Synopsis(usage: "<Domain> <DevId|mac>", required: 2),
        "network-list": Synopsis(usage: "<Domain(s)>", required: 1),
        "network-filter": Synopsis(usage: "[-b Backend] <list [Bridge]|add|insert|del|flush> ...", required: 1),
        "sched-credit": Synopsis(usage: "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]] [-s [-t TSLICE] [-r RATELIMIT]] [-p CPUPOOL]", required: 0),
        "sched-credit2": Synopsis(usage: "[-d <Domain> [-w[=WEIGHT]]] [-p CPUPOOL]", required: 0),
        "top": Synopsis(usage: "[-b] [-d SECONDS] [-i ITERATIONS] [-f] [-r]", required: 0),
        "save": Synopsis(usage: "[options] <Domain> <CheckpointFile> [<ConfigFile>]", required: 2),
        "restore": Synopsis(usage: "[options] [<ConfigFile>] <CheckpointFile>", required: 1),
        "migrate": Synopsis(usage: "[options] <Domain> <host>", required: 2),
        "migrate-receive": Synopsis(usage: "[options]", required: 0),
        "live-update": Synopsis(usage: "[options] [<Binary>]", required: 0),
    ]

    static func command(named name: String) -> ParsableCommand.Type? {
        XL.configuration.subcommands.first { $0._commandName == name }
    }

    /// `xl help` / `xl` alone: every subcommand with its description.
    static func list() -> String {
        var out = "Usage xl [-v] <subcommand> [args]\n\nxl full list of subcommands:\n\n"
        for type in XL.configuration.subcommands {
            let name = type._commandName
            out += " " + name.padding(19) + " "
            if name.count > 19 { out += "\n " + "".padding(19) + " " }
            out += description(type) + "\n"
        }
        return out
    }

    /// `xl help CMD`, `xl CMD -h`.
    static func help(_ name: String) -> String {
        guard let type = command(named: name) else { return "command \"\(name)\" not implemented\n" }
        var out = "Usage: xl [-v] \(name) \(synopses[name]?.usage ?? "")\n\n\(description(type)).\n\n"
        let options = self.options(type)
        if !options.isEmpty { out += "Options:\n\n" + options.joined(separator: "\n") + "\n" }
        return out
    }

    private static func description(_ type: ParsableCommand.Type) -> String {
        var text = type.configuration.abstract
        while text.hasSuffix(".") { text.removeLast() }
        return text
    }

    /// The command's options as its own help lists them, with xl's `-h` line.
    private static func options(_ type: ParsableCommand.Type) -> [String] {
        let lines = XL.helpMessage(for: type, columns: 100).split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0 == "OPTIONS:" }) else { return [] }
        var out: [String] = []
        for line in lines[(start + 1)...] {
            if line.isEmpty { break }
            let text = line.hasPrefix("  ") ? String(line.dropFirst(2)) : String(line)
            if text.hasPrefix("-h, --help") {
                out.append("-h".padding(24) + "Print this help.")
            } else {
                out.append(text)
            }
        }
        return out
    }

    /// Handles a parse error of subcommand `name` as xl does; never returns.
    static func usageError(_ name: String, _ error: Error) -> Never {
        let code = XL.exitCode(for: error)
        if code == .success {  // -h, --help
            FileDescriptor.standardOutput.writeUnchecked(help(name))
            Process.exit(0)
        }
        let message = XL.message(for: error)
        let required = synopses[name]?.required ?? 1
        var text: String
        if message.hasPrefix("Missing expected argument") || message.contains("requires at least") {
            text = "'xl \(name)' requires at least \(required) argument\(required > 1 ? "s" : "").\n\n"
        } else if message.hasPrefix("Unknown option") {
            // "Unknown option '-z'": xl names the letter.
            let option = message.split(separator: "'").dropFirst().first.map { String($0.drop { $0 == "-" }) } ?? message
            FileDescriptor.standardError.writeUnchecked("option `\(option)' not supported.\n")
            Process.exit(2)
        } else {
            text = message + "\n\n"
        }
        FileDescriptor.standardError.writeUnchecked(text)
        FileDescriptor.standardOutput.writeUnchecked(help(name))
        Process.exit(2)
    }
}

private extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
