import Foundation
import Glibc
import LinuxHost
import Testing

/// The jail around every domain, seen from outside, and attacked from inside by hostile kernels:
/// `cattack` (plain C, no DomainRuntime) and testguest's pre-start modes (Swift code before
/// `Domain.start()`). Each attack must leave the host file untouched, harm no other process, keep
/// the supervisor and the other domains running, and be named in `xl dmesg`.
@Suite(.serialized) struct JailTests {
    static let cattack = Products.path("cattack")

    /// A domain's process as the host sees it.
    struct Seen {
        var uid: String
        var capEff: String
        var namespaces: [String: String]
        var rootFiles: [String]
    }

    static func namespaces(of pid: pid_t) -> [String: String] {
        var out: [String: String] = [:]
        for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"] {
            out[ns] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(ns)")) ?? "?"
        }
        return out
    }

    static func see(_ pid: pid_t) throws -> Seen {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func field(_ name: String) -> String {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) } ?? ""
        }
        var files: [String] = []
        func walk(_ dir: String) {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root" + dir)) ?? [] {
                let path = (dir == "/" ? "" : dir) + "/" + name
                var st = stat()
                guard lstat("/proc/\(pid)/root" + path, &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR { walk(path) } else { files.append(path) }
            }
        }
        walk("/")
        return Seen(uid: field("Uid"), capEff: field("CapEff"), namespaces: namespaces(of: pid), rootFiles: files.sorted())
    }

    /// A process of the test's own that an attacker aims at: it must still be alive afterwards.
    final class Victim {
        let process = Foundation.Process()
        init() throws {
            process.executableURL = URL(fileURLWithPath: "/bin/sleep")
            process.arguments = ["60"]
            try process.run()
        }
        var pid: pid_t { process.processIdentifier }
        var alive: Bool { process.isRunning && kill(pid, 0) == 0 }
        deinit {
            if process.isRunning { kill(pid, SIGKILL) }
            process.waitUntilExit()
        }
    }

    @Test func aRunningDomainIsJailedAsSeenFromOutside() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("jailed", mode: "run")
        let pid = try #require(h.children.first)
        let seen = try Self.see(pid)
        let uid = seen.uid.split(whereSeparator: { $0 == "\t" || $0 == " " })
        #expect(uid.count == 4 && uid.allSatisfy { $0 != "0" }, "Uid: \(seen.uid)")
        #expect(uid.first == "100001", "the first domain runs as the uid base plus its domid: \(seen.uid)")
        #expect(seen.capEff == "0000000000000000")
        let mine = Self.namespaces(of: h.pid)
        for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
            #expect(seen.namespaces[ns] != mine[ns], "\(ns) namespace shared with the supervisor: \(seen.namespaces[ns] ?? "?")")
        }
        // Its root holds the kernel, its loader, its libraries and /dev/null: no host file.
        // The kernel sits at /kernel/NAME, not at its host path: no host directory name shows.
        let testguest = "/kernel/testguest"
        #expect(seen.rootFiles.contains(testguest), "\(seen.rootFiles)")
        let hostPath = URL(fileURLWithPath: Products.path("testguest")).resolvingSymlinksInPath().path
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(pid)/root" + hostPath), "the kernel's host path is in the jail")
        #expect(seen.rootFiles.contains("/dev/null"))
        for f in seen.rootFiles where f != testguest && f != "/dev/null" {
            #expect(f.hasSuffix(".so") || f.contains(".so."), "not a library: \(f)")
        }
        for hostFile in ["/etc/passwd", "/etc/shadow", "/bin/sh", "/usr/bin/env", "/proc/self", "/tmp", "/sys"] {
            #expect(!FileManager.default.fileExists(atPath: "/proc/\(pid)/root" + hostFile), "\(hostFile) is in the jail")
        }
        // Every process of the domain is in its pids cgroup, and only those.
        let cgroup = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
        #expect(cgroup.contains("pids:/") && cgroup.contains("-dom1"), "\(cgroup)")
        #expect(try h.xl("info", "xen_commandline").stdout.contains("jail=on cgroups=on"))
    }

    /// A plain C program as the kernel, looking around: nothing of the host is there.
    @Test func aPlainCKernelSeesOnlyItsJail() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let cfg = h.config("probe", kernel: Self.cattack, "extra = \"mode=probe target=\(h.runDirectory)\"\n")
        _ = try h.xl("create", cfg)
        #expect(eventually { h.consoleLog("probe").contains("probe done") })
        let log = h.consoleLog("probe")
        for path in ["/etc/shadow", "/etc/passwd", "/proc/self/status", "/proc/1/mem", "/tmp", "/usr/bin/env", "/sys/fs/cgroup", h.runDirectory] {
            #expect(log.contains("open \(path): No such file or directory"), "\(path): \(log)")
        }
        #expect(log.contains("open /dev/null: ok"))
        #expect(log.contains("uid=100001") && log.contains("pid=1\n"), "\(log)")
    }

    /// (cattack mode, what `xl dmesg` must name) for attacks the bound refuses outright.
    static let refusedAttacks: [(String, String)] = [
        ("write-host", "forbidden system call openat"), ("open-rdwr", "forbidden system call openat"),
        ("socket-inet", "forbidden system call socket"), ("socket-unix", "forbidden system call socket"),
        ("socketpair", "forbidden system call socketpair"), ("fork", "forbidden system call clone"),
        ("uring", "forbidden system call io_uring_setup"), ("setuid0", "forbidden system call setuid"),
        ("int80", "another ABI"), ("x32", "another ABI"),
    ]

    @Test(arguments: refusedAttacks)
    func aPlainCKernelsAttackIsRefusedAndNamed(_ mode: String, _ named: String) throws {
        let base = Self.privateUIDBase()
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_JAIL_UID_BASE": "\(base)"])
        defer { h.stop() }
        try h.create("bystander", mode: "run")
        let target = h.runDirectory + "/pwned-\(mode)"
        let cfg = h.config("attacker", kernel: Self.cattack, "extra = \"mode=\(mode) target=\(target)\"\non_crash = \"preserve\"\n")
        _ = try h.xl("create", cfg)
        #expect(eventually { (try? h.dmesg())?.contains("(attacker): failed to start: ") == true }, "\((try? h.dmesg()) ?? "")")
        let dmesg = try h.dmesg()
        #expect(dmesg.contains(named), "\(dmesg)")
        #expect(h.consoleLog("attacker").contains("attempting \(mode)"))
        #expect(!h.consoleLog("attacker").contains("survived"), "\(h.consoleLog("attacker"))")
        #expect(!FileManager.default.fileExists(atPath: target))
        #expect(h.supervisor.isRunning)
        #expect(try h.list()["bystander"] != nil)
        // Nothing of the attacker is left: no process with its uid anywhere.
        #expect(eventually { !Self.processesExist(uid: base + 2) })
    }

    /// Attacks aimed at another process: signals through fcntl's owner, a plain kill, ptrace.
    @Test(arguments: ["sigio", "kill", "ptrace"])
    func anotherProcessCannotBeHarmed(_ mode: String) throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let victim = try Victim()
        for (name, target) in [("at-victim", victim.pid), ("at-supervisor", h.pid)] {
            let cfg = h.config("\(mode)-\(name)", kernel: Self.cattack, "extra = \"mode=\(mode) target=\(target)\"\non_crash = \"preserve\"\n")
            _ = try h.xl("create", cfg)
            #expect(eventually { (try? h.dmesg())?.contains("(\(mode)-\(name)): failed to start: forbidden system call") == true },
                    "\((try? h.dmesg()) ?? "")")
        }
        let dmesg = try h.dmesg()
        let expected = ["sigio": "fcntl", "kill": "kill", "ptrace": "ptrace"][mode]!
        #expect(dmesg.contains("failed to start: forbidden system call \(expected)"), "\(dmesg)")
        #expect(victim.alive)
        #expect(h.supervisor.isRunning)
        #expect(try h.xl("list").ok)
    }

    /// A forged engagement: a kernel with its own allow-everything filter that speaks the two
    /// runtime hypercalls is listed as running, and is exactly as confined as before.
    @Test func aForgedEngagementGainsNothing() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let target = h.runDirectory + "/forged"
        _ = FileManager.default.createFile(atPath: target, contents: Data("untouched".utf8))
        chmod(target, 0o666)
        let cfg = h.config("forger", kernel: Self.cattack, "extra = \"mode=forge target=\(target)\"\non_crash = \"preserve\"\n")
        #expect(try h.xl("create", cfg).ok)
        #expect(eventually { (try? h.dmesg())?.contains("(forger): sandbox engaged, running") == true })
        #expect(eventually { (try? h.dmesg())?.contains("(forger): crashed: forbidden system call openat") == true }, "\((try? h.dmesg()) ?? "")")
        #expect(h.consoleLog("forger").contains("engaged: 0"))
        #expect(!h.consoleLog("forger").contains("survived"))
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "untouched")
    }

    /// Code in a C constructor, before main.
    @Test func aConstructorCannotWriteTheHost() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        let target = h.runDirectory + "/pwned-ctor"
        let cfg = h.config("ctor", kernel: Self.cattack, "extra = \"mode=probe ctor=\(target)\"\n")
        _ = try h.xl("create", cfg)
        #expect(eventually { (try? h.dmesg())?.contains("(ctor): failed to start: forbidden system call openat") == true }, "\((try? h.dmesg()) ?? "")")
        #expect(h.consoleLog("ctor").contains("constructor: opening"))
        #expect(!h.consoleLog("ctor").contains("constructor survived"))
        #expect(!FileManager.default.fileExists(atPath: target))
    }

    /// Swift code before `Domain.start()`: reads find no host file, writing one is refused.
    @Test func codeBeforeDomainStartIsJailedAndBounded() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        _ = try h.xl("create", h.config("early", mode: "pre-start", "extra = \"mode=pre-start target=/proc/\(h.pid)/mem\"\n"))
        #expect(eventually { (try? h.dmesg())?.contains("(early): failed to start: forbidden system call openat") == true }, "\((try? h.dmesg()) ?? "")")
        let log = h.consoleLog("early")
        for path in ["/etc/shadow", "/etc/passwd", "/proc/self/status", "/tmp", "/usr/bin/env"] {
            #expect(log.contains("pre-start open \(path): errno \(ENOENT)"), "\(path): \(log)")
        }
        #expect(log.contains("pre-start open /dev/null: ok"))
        #expect(log.contains("pre-start uid=100001 pid=1"), "\(log)")
        #expect(!log.contains("pre-start survived"))
    }

    /// fork before engagement: refused, so nothing survives a destroy or the supervisor's exit.
    @Test func forkBeforeEngagementLeavesNothingBehind() throws {
        let base = Self.privateUIDBase()
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_JAIL_UID_BASE": "\(base)"])
        _ = try h.xl("create", h.config("forker", mode: "pre-start-fork"))
        #expect(eventually { (try? h.dmesg())?.contains("(forker): failed to start: forbidden system call clone") == true }, "\((try? h.dmesg()) ?? "")")
        #expect(!h.consoleLog("forker").contains("fork returned"))
        h.stop()
        #expect(eventually { !Self.processesExist(uid: base + 1) })
    }

    /// The supervisor dies without a word (SIGKILL): its domains die with it. The jail's change of
    /// uid clears a process's parent-death signal, so the launcher sets it again afterwards.
    @Test func domainsDieWithAKilledSupervisor() throws {
        let base = Self.privateUIDBase()
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_JAIL_UID_BASE": "\(base)"])
        // Kernels that never read their sockets again, so the closed channels do not end them.
        for name in ["left", "right"] {
            let r = try h.xl("create", h.config(name, kernel: Self.cattack, "extra = \"mode=deaf\"\n"))
            #expect(r.ok, "xl create \(name): \(r.stderr)")
        }
        let kids = h.children
        #expect(kids.count == 2)
        // The cgroups a crashed supervisor leaves (their processes gone), to remove afterwards.
        let cgroups = kids.flatMap { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line -> String? in
                let f = line.split(separator: ":", maxSplits: 2).map(String.init)
                guard f.count == 3, f[2].contains("-dom"), ["pids", "memory"].contains(f[1]) else { return nil }
                return "/sys/fs/cgroup/\(f[1])\(f[2])"
            }
        }
        h.killSupervisor()
        #expect(eventually { kids.allSatisfy { !ProcFS.isAlive($0) || ProcFS.state(of: $0) == "Z" } }, "domains outlived their supervisor")
        #expect(eventually { !Self.processesExist(uid: base + 1) && !Self.processesExist(uid: base + 2) })
        for pid in kids where ProcFS.isAlive(pid) { kill(pid, SIGKILL) }  // when the check above failed
        // The next supervisor removes the cgroups the killed one left.
        // (Any supervisor starting meanwhile, another test's, may be the one that does it.)
        #expect(cgroups.count == 4, "\(cgroups)")
        let next = try SupervisorHarness()
        next.stop()
        for dir in cgroups { #expect(!FileIO.exists(dir), "\(dir) left behind") }
        for dir in cgroups { _ = eventually { rmdir(dir) == 0 || errno == ENOENT } }
    }

    /// A guest asking for the driver role gets a guest's bound: it engages the driver allow-list
    /// itself and asks for an io_uring, and is crashed for it.
    @Test func aGuestCannotMakeItselfADriverDomain() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        _ = try h.xl("create", h.config("claimer", mode: "claim-driver", "on_crash = \"preserve\"\n"))
        #expect(eventually { (try? h.dmesg())?.contains("(claimer): failed to start: forbidden system call io_uring_setup") == true }, "\((try? h.dmesg()) ?? "")")
        #expect(h.consoleLog("claimer").contains("engaged the driver allow-list itself"))
        #expect(!h.consoleLog("claimer").contains("survived"))
    }

    /// A compromised driver domain calling io_uring_setup itself gets the supervisor's ring:
    /// disabled, restricted, its escapes refused.
    @Test func aDriverDomainsOwnRingCannotReachPastItsDescriptors() throws {
        let h = try SupervisorHarness()
        defer { h.stop() }
        try h.create("be-ring", mode: "be-uring-escape", "driver_domain = 1\n")
        #expect(eventually { h.consoleLog("be-ring").contains("uring-escape done") }, "\(h.consoleLog("be-ring"))")
        let log = h.consoleLog("be-ring")
        if log.contains("uring-escape: io_uring_setup errno") {
            // The kernel refuses io_uring here (kernel.io_uring_disabled): the backends use threads.
            #expect(log.contains("errno \(EPERM)") || log.contains("errno \(ENOSYS)"), "\(log)")
            return
        }
        #expect(log.contains("registered=ok enable=0"), "\(log)")
        let eacces = -EACCES
        #expect(log.contains("openat=\(eacces) openat-fixed=\(eacces) socket=\(eacces) ftruncate=\(eacces) unregistered=\(eacces)"), "\(log)")
        #expect(log.contains("uring-escape: written through the ring"), "the registered file works: \(log)")
    }

    /// Layers the kernel refuses (or the operator waives) are reported; without the cgroup layer
    /// domains still run, and xl info says so.
    @Test func aWaivedLayerIsReported() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_INSECURE": "no-cgroups"])
        defer { h.stop() }
        try h.create("loose", mode: "run")
        #expect(try h.xl("info", "xen_commandline").stdout.contains("cgroups=off insecure-no-cgroups"))
        #expect(try h.dmesg().contains("WARNING: --insecure-no-cgroups: domains run without their cgroups layer"))
        let pid = try #require(h.children.first)
        #expect(!(try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)).contains("-dom1"))
    }

    @Test func anUnknownInsecureOptionIsRefused() throws {
        let r = try runCommand(Products.path("procvisord"), [], env: ["PROCVISOR_RUNDIR": "/tmp/pv-never-\(getpid())", "PROCVISOR_INSECURE": "no-seccomp"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("PROCVISOR_INSECURE: unknown layer \"no-seccomp\""), "\(r.stderr)")
    }

    /// An ordinary user runs Procvisor: the jail adds a user namespace mapping the domain's uid onto
    /// the supervisor's; without a delegated cgroup the supervisor refuses domains, saying how to
    /// fix it, unless the operator waives the cgroup layer.
    @Test func anOrdinaryUserRunsJailedDomainsInAUserNamespace() throws {
        guard geteuid() == 0, FileIO.isExecutable("/usr/bin/setpriv"), Spawner.probeNamespaces(Namespace.user) == nil else {
            return  // needs root to become another user, and user namespaces
        }
        var template = Array("/tmp/pvu.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let dir = String(cString: try #require(made))
        defer { _ = try? runCommand("/bin/rm", ["-rf", dir], env: [:]) }
        chmod(dir, 0o755)
        chown(dir, 65534, 65534)
        let cfg = dir + "/user.cfg"
        try "name = \"user\"\nkernel = \"\(Products.path("testguest"))\"\nmemory = 16\nextra = \"mode=run\"\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        chmod(cfg, 0o644)
        func asNobody(_ args: [String], insecure: Bool) throws -> CommandResult {
            var env = ["PROCVISOR_RUNDIR": dir + "/run", "PATH": "/usr/bin:/bin"]
            if insecure { env["PROCVISOR_INSECURE"] = "no-cgroups" }
            return try runCommand("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Products.path("xl")] + args, env: env)
        }
        func stopSupervisor() {
            guard let text = try? FileIO.readString(dir + "/run/procvisord.pid"), let pid = pid_t(text.split(separator: "\n").first ?? "") else { return }
            kill(pid, SIGTERM)
            _ = eventually(timeout: 15) { kill(pid, 0) != 0 }
        }
        defer { stopSupervisor() }
        do {
            // Where nobody cannot write a cgroup (almost everywhere): refused, with what to do.
            let refused = try asNobody(["create", cfg], insecure: false)
            if refused.status != 0 {
                #expect(refused.stderr.contains("cgroups layer is unavailable") && refused.stderr.contains("--insecure-no-cgroups"), "\(refused.stderr)")
            } else {
                _ = try asNobody(["destroy", "user"], insecure: false)  // a delegated cgroup: nothing to refuse
            }
            stopSupervisor()
        }
        let r = try asNobody(["create", cfg], insecure: true)
        #expect(r.ok, "\(r.stderr)")
        let text = try FileIO.readString(dir + "/run/procvisord.pid")
        let sup = try #require(pid_t(text.split(separator: "\n").first ?? ""))
        let dom = try #require(ProcFS.children(of: sup).first)
        let seen = try Self.see(dom)
        #expect(seen.uid.hasPrefix("65534"), "the domain is the supervisor's user outside: \(seen.uid)")
        #expect(seen.capEff == "0000000000000000")
        let mine = Self.namespaces(of: getpid())
        for ns in ["user", "mnt", "pid", "net", "ipc"] { #expect(seen.namespaces[ns] != mine[ns], "\(ns)") }
        #expect(!seen.rootFiles.contains("/etc/passwd") && seen.rootFiles.contains("/dev/null"))
        #expect(try asNobody(["info", "xen_commandline"], insecure: true).stdout.contains("jail=userns cgroups=off insecure-no-cgroups"))
        #expect(try asNobody(["destroy", "user"], insecure: true).ok)
    }

    /// A jail uid base no other harness of any test run uses (`PROCVISOR_JAIL_UID_BASE`): a
    /// check for "no process of this uid left" must not see another test's domain of the same
    /// domid, which under the default base has the same uid.
    static func privateUIDBase() -> UInt32 {
        uidLock.lock()
        defer { uidLock.unlock() }
        nextUIDSlot += 1
        return 1_000_000 + UInt32(getpid() % 4000) * 4096 + nextUIDSlot * 16
    }
    nonisolated(unsafe) private static var nextUIDSlot: UInt32 = 0
    private static let uidLock = Lock()

    static func processesExist(uid: UInt32) -> Bool {
        guard let dir = opendir("/proc") else { return false }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int32(name) != nil else { continue }
            var st = stat()
            if stat("/proc/\(name)", &st) == 0, st.st_uid == uid { return true }
        }
        return false
    }
}
