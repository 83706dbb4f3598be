import Foundation
import Glibc
import LinuxHost
import Testing

/// scripts/install.sh as an operator uses it: install into a prefix, run domains from the
/// installed tree alone (its xl starts its procvisord, which finds the installed driver
/// domains; the installed example configs point at the installed guests), uninstall, and
/// nothing is left.
@Suite struct InstallTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func install(_ args: [String]) throws -> CommandResult {
        try runCommand("/bin/bash", [Self.repository + "/scripts/install.sh"] + args, env: ProcessInfo.processInfo.environment, timeout: 120)
    }

    @Test func installRunFromTheInstalledTreeAndUninstallLeavingNothing() throws {
        var template = Array("/tmp/pvinstall.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let top = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: top) }
        chmod(top, 0o755)  // the domains' own users read their kernels through it
        let prefix = top + "/usr", rundir = top + "/run"

        let r = try install(["--from", Products.directory, prefix])
        #expect(r.ok, "\(r.stdout)\(r.stderr)")
        // Nothing with a generic name on PATH: sbin holds xl and procvisord alone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: prefix + "/sbin").sorted() == ["procvisord", "xl"])
        for f in ["lib/procvisor/bin/blkback", "lib/procvisor/bin/netback", "lib/procvisor/guests/hello", "lib/systemd/system/procvisord.service",
                  "share/bash-completion/completions/xl", "share/man/man1/xl.1", "share/man/man5/xl.cfg.5"] {
            #expect(FileIO.exists(prefix + "/" + f), "\(f)")
        }
        let hello = prefix + "/share/procvisor/examples/hello/hello.cfg"
        #expect(((try? String(contentsOfFile: hello, encoding: .utf8)) ?? "").contains("kernel = \"\(prefix)/lib/procvisor/guests/hello\""))
        let unit = (try? String(contentsOfFile: prefix + "/lib/systemd/system/procvisord.service", encoding: .utf8)) ?? ""
        #expect(unit.contains("ExecStart=\(prefix)/sbin/procvisord --daemonize"), "\(unit)")
        let man = (try? String(contentsOfFile: prefix + "/share/man/man1/xl.1", encoding: .utf8)) ?? ""
        #expect(man.contains(".SS mem-set") && man.contains("Usage: xl [-v] mem-set"), "\(man.prefix(400))")
        // The bash completion completes xl's subcommands.
        let completion = prefix + "/share/bash-completion/completions/xl"
        let completed = try runCommand("/bin/bash", ["-c", "source '\(completion)'; COMP_WORDS=(xl mem-); COMP_CWORD=1; _procvisor_xl; echo \"${COMPREPLY[*]}\""],
                                       env: ProcessInfo.processInfo.environment)
        #expect(completed.stdout == "mem-max mem-set\n", "\(completed.stdout)\(completed.stderr)")
        // A second install over the first is refused, naming the way out.
        let again = try install(["--from", Products.directory, prefix])
        #expect(!again.ok && again.stderr.contains("--uninstall \(prefix)"), "\(again.stderr)")

        // The example session from the installed tree, in a shell whose PATH has only sbin added.
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = prefix + "/sbin:" + (env["PATH"] ?? "/usr/bin:/bin")
        env["PROCVISOR_RUNDIR"] = rundir
        env.removeValue(forKey: "PROCVISOR_NO_AUTOSTART")
        env.removeValue(forKey: "PROCVISOR_SUPERVISOR")
        let xl = prefix + "/sbin/xl"
        func supervisorPid() -> pid_t? {
            (try? String(contentsOfFile: rundir + "/procvisord.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        defer {
            if let pid = supervisorPid(), ProcFS.isAlive(pid) {
                kill(pid, SIGTERM)
                _ = eventually(timeout: 15) { !ProcFS.isAlive(pid) }
            }
        }
        let first = try runCommand(xl, ["create", "-c", hello], env: env, timeout: 60)
        #expect(first.ok && first.stdout.contains("Hello from dom1 (hello)"), "\(first.stdout)\(first.stderr)")
        let spinner = prefix + "/share/procvisor/examples/spinner/spinner.cfg"
        // A disk without backend=: the installed blkback is started as the default driver domain.
        let image = top + "/disk.img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
        let second = try runCommand(xl, ["create", spinner, "disk=['vdev=xvda, access=rw, target=\(image)']"], env: env, timeout: 60)
        #expect(second.ok, "\(second.stderr)")
        let list = try runCommand(xl, ["list"], env: env)
        #expect(list.stdout.contains("\nspinner ") && list.stdout.contains("\nblkback "), "\(list.stdout)")
        let dmesg = try runCommand(xl, ["dmesg"], env: env).stdout
        #expect(dmesg.contains("(blkback) from \(prefix)/lib/procvisor/bin/blkback"), "\(dmesg)")
        #expect(try runCommand(xl, ["destroy", "spinner"], env: env).ok)
        let pid = try #require(supervisorPid())
        kill(pid, SIGTERM)
        #expect(eventually(timeout: 15) { !ProcFS.isAlive(pid) })

        let removed = try install(["--uninstall", prefix])
        #expect(removed.ok, "\(removed.stderr)")
        #expect(!FileIO.exists(prefix), "left behind: \((try? FileManager.default.subpathsOfDirectory(atPath: prefix)) ?? [])")
    }
}
