import Foundation
import Glibc
import LinuxHost
import Testing

/// The README's example session, run top to bottom in one shell, every line it shows checked
/// against what the commands print. Three things differ from a reader's run, and only these:
/// the prefix is a temporary directory instead of /opt/procvisor, the install takes the products
/// this test run built (`--from`) instead of building a release, and the supervisor gets a run
/// directory of its own (which xl announces on its first start: that line is not compared), and
/// the install's note about another xl on PATH (Debian's, where xen-utils-common is) is not compared.
/// The Domain-0 row's memory and the times in `xl list` vary from run to run and are not compared.
@Suite struct ReadmeSessionTests {
    struct Step {
        var command: String
        var expected: [String]
    }

    /// The `$ ` commands of the README's first `text` block under "An example session", each
    /// with the lines shown after it.
    static func session(_ readme: String) -> [Step] {
        guard let section = readme.range(of: "## An example session\n"),
              let open = readme.range(of: "```text\n", range: section.upperBound..<readme.endIndex),
              let close = readme.range(of: "\n```", range: open.upperBound..<readme.endIndex) else { return [] }
        var steps: [Step] = []
        for line in readme[open.upperBound..<close.lowerBound].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("$ ") {
                var command = String(line.dropFirst(2))
                // A trailing "   # comment" is the README talking, not the shell (none of the
                // commands has a # of its own).
                if let hash = command.range(of: " #") { command = String(command[..<hash.lowerBound]) }
                steps.append(Step(command: command.trimmingCharacters(in: .whitespaces), expected: []))
            } else if !steps.isEmpty {
                steps[steps.count - 1].expected.append(String(line))
            }
        }
        return steps
    }

    /// Whether `actual` shows what `expected` does: the same words, except a time (`0.0`) and
    /// the Domain-0 row's memory, which vary.
    static func matches(_ expected: String, _ actual: String) -> Bool {
        let e = expected.split(whereSeparator: { $0 == " " || $0 == "\t" }), a = actual.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard e.count == a.count else { return false }
        for (i, (x, y)) in zip(e, a).enumerated() where x != y {
            func time(_ s: Substring) -> Bool {
                let parts = s.split(separator: ".", omittingEmptySubsequences: false)
                return parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
            }
            let isTime = time(x) && time(y)
            let isDom0Memory = e.first == "Domain-0" && i == 2 && Int(y) != nil
            if !isTime && !isDom0Memory { return false }
        }
        return true
    }

    @Test func theExampleSessionPrintsWhatTheReadmeShows() throws {
        let repository = InstallTests.repository
        let readme = try String(contentsOfFile: repository + "/README.md", encoding: .utf8)
        let steps = Self.session(readme)
        #expect(steps.count >= 10, "the README's session was not found")
        var template = Array("/tmp/pvreadme.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let top = String(cString: template)
        chmod(top, 0o755)
        let prefix = top + "/opt/procvisor", rundir = top + "/run"
        defer {
            // Whatever the session left running if it failed part way.
            if let text = try? String(contentsOfFile: rundir + "/procvisord.pid", encoding: .utf8),
               let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), ProcFS.isAlive(pid) {
                kill(pid, SIGTERM)
                _ = eventually(timeout: 15) { !ProcFS.isAlive(pid) }
            }
            try? FileManager.default.removeItem(atPath: top)
        }
        // One shell, a marker before each command; stderr joins stdout so lines keep their order.
        var script = "exec 2>&1\ncd '\(repository)'\n"
        for (i, step) in steps.enumerated() {
            var command = step.command.replacingOccurrences(of: "/opt/procvisor", with: prefix)
            if command.hasPrefix("bash scripts/install.sh "), !command.contains("--uninstall") {
                command = command.replacingOccurrences(of: "scripts/install.sh ", with: "scripts/install.sh --from '\(Products.directory)' ")
            }
            if command == "xl list" {
                // A reader types slower than evil crashes; a script does not: wait for it (unseen).
                script += "for _ in $(seq 100); do xl list 2>/dev/null | grep -q '^evil .*---sc-' && break; sleep 0.1; done\n"
            }
            script += "echo '@@step \(i)'\n\(command)\n"
        }
        script += "echo '@@end'\n"
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = rundir
        env.removeValue(forKey: "PROCVISOR_NO_AUTOSTART")
        env.removeValue(forKey: "XENSTORED_PATH")
        env.removeValue(forKey: "PROCVISOR_SUPERVISOR")
        let r = try runCommand("/bin/bash", ["-c", script], env: env, timeout: 240)
        #expect(r.stdout.hasSuffix("@@end\n"), "the session stopped early:\n\(r.stdout)")
        var outputs: [Int: [String]] = [:]
        var current = -1
        for line in r.stdout.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("@@step "), let n = Int(line.dropFirst(7)) { current = n; outputs[n] = []; continue }
            if line == "@@end" { current = -1; continue }
            // Said because of where the test runs, not what the README shows: its own run
            // directory, and Debian's xl on this machine's PATH at install time.
            guard current >= 0, !line.hasPrefix("xl: no supervisor runs in "), !line.hasPrefix("note: the xl your PATH finds") else { continue }
            outputs[current, default: []].append(String(line))
        }
        for (i, step) in steps.enumerated() {
            let expected = step.expected.map { $0.replacingOccurrences(of: "/opt/procvisor", with: prefix) }
            let actual = outputs[i] ?? []
            let same = expected.count == actual.count && zip(expected, actual).allSatisfy { Self.matches($0, $1) }
            #expect(same, "$ \(step.command)\n--- the README shows:\n\(expected.joined(separator: "\n"))\n--- it printed:\n\(actual.joined(separator: "\n"))")
        }
        #expect(!FileIO.exists(prefix), "the uninstall left \(prefix)")
    }
}
