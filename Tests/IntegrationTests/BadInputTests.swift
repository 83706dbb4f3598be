import Foundation
import Glibc
import LinuxHost
import Testing

/// Every bad input gets a clear error naming the problem, and the rest keeps running: each test
/// keeps a sentinel domain alive and checks it (and the supervisor) afterwards.
@Suite struct BadInputTests {
    /// Creates the sentinel, runs `body`, then checks the sentinel is still there.
    func withSentinel(_ env: [String: String] = [:], _ body: (SupervisorHarness) throws -> Void) throws {
        let h = try SupervisorHarness(extraEnv: env)
        defer { h.stop() }
        try h.create("sentinel", mode: "run")
        let pid = try #require(h.children.first)
        try body(h)
        #expect(ProcFS.isAlive(pid), "the sentinel domain died")
        #expect(try h.list()["sentinel"]?.domid == 1, "the supervisor lost the sentinel")
    }

    func createFails(_ h: SupervisorHarness, _ cfg: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try h.xl("create", cfg)
        #expect(!r.ok, sourceLocation: sourceLocation)
        #expect(r.stderr.contains(message), "stderr was: \(r.stderr)", sourceLocation: sourceLocation)
    }

    @Test func missingKernel() throws {
        try withSentinel { h in
            try createFails(h, h.config("nokernel", kernel: "/nonexistent/guest"), "kernel /nonexistent/guest: no such file")
        }
    }

    @Test func nonExecutableKernel() throws {
        try withSentinel { h in
            let path = h.runDirectory + "/notexec"
            _ = FileManager.default.createFile(atPath: path, contents: Data("x".utf8), attributes: [.posixPermissions: 0o644])
            try createFails(h, h.config("noexec", kernel: path), "not an executable file")
        }
    }

    @Test func kernelThatIsNotADomainRuntimeProgramNeverEngages() throws {
        try withSentinel(["PROCVISOR_ENGAGE_TIMEOUT_MS": "700"]) { h in
            try createFails(h, h.config("sleeper", kernel: "/bin/sleep", "extra = \"30\"\n"),
                            "did not engage its sandbox within 700 ms")
            try createFails(h, h.config("lazy", mode: "no-engage"), "did not engage its sandbox")
            #expect(try h.list()["sleeper"] == nil)
            #expect(h.children.count == 1)
        }
    }

    @Test func kernelThatExitsImmediately() throws {
        try withSentinel { h in
            try createFails(h, h.config("truthy", kernel: "/bin/true"), "before bootstrap")
        }
    }

    @Test func guestExitingInTheMiddleOfBootstrap() throws {
        try withSentinel { h in
            try createFails(h, h.config("quitter", mode: "exit-in-bootstrap"), "exited during bootstrap (exited with status 3)")
        }
    }

    @Test func duplicateName() throws {
        try withSentinel { h in
            try createFails(h, h.config("sentinel", mode: "run"), "domain name \"sentinel\" already exists (dom1)")
        }
    }

    @Test func memoryLargerThanTheHostAllows() throws {
        try withSentinel(["PROCVISOR_MEMORY_MB": "256"]) { h in
            try createFails(h, h.config("huge", mode: "run", "memory = 100000\nmaxmem = 100000\n"),
                            "memory=100000 MiB is more than the free machine memory")
        }
    }

    @Test func configSyntaxErrorQuotesFileLineAndColumn() throws {
        try withSentinel { h in
            let path = h.runDirectory + "/broken.cfg"
            try "name = \"broken\"\nmemory = [ 1, \n".write(toFile: path, atomically: true, encoding: .utf8)
            let r = try h.xl("create", path)
            #expect(!r.ok)
            #expect(r.stderr.contains(path + ":"), "stderr was: \(r.stderr)")
            let noName = h.runDirectory + "/noname.cfg"
            try "memory = 32\n".write(toFile: noName, atomically: true, encoding: .utf8)
            let r2 = try h.xl("create", noName)
            #expect(!r2.ok)
            #expect(r2.stderr.contains("Domain name must be specified."))
            let r3 = try h.xl("create", h.runDirectory + "/absent.cfg")
            #expect(!r3.ok)
            #expect(r3.stderr.contains("absent.cfg"))
        }
    }

    @Test(arguments: [
        ["destroy", "ghost"], ["shutdown", "ghost"], ["reboot", "42"], ["pause", "ghost"], ["unpause", "ghost"],
        ["rename", "ghost", "x"], ["list", "ghost"], ["console", "ghost"], ["uptime", "ghost"],
    ])
    func unknownDomain(_ args: [String]) throws {
        try withSentinel { h in
            let r = try h.xl(args: args)
            #expect(!r.ok)
            #expect(r.stderr.contains("\(args[1]) is an invalid domain identifier"), "stderr was: \(r.stderr)")
        }
    }

    /// A subcommand xl does not have here (Xen's `vcpu-list`, `sched-rtds`, or a typo)
    /// gets xl's answer, `command not implemented`, rather than a usage error; the known ones,
    /// `help` and the options still parse.
    @Test func anUnknownSubcommandIsNotImplemented() throws {
        try withSentinel { h in
            for command in ["vcpu-list", "sched-rtds", "lsit"] {
                let r = try h.xl(command)
                #expect(!r.ok && r.stderr == "command not implemented\n", "\(command): \(r.stderr)")
            }
            #expect(try h.xl("list").ok)
            #expect(try h.xl("help", "list").ok)
            #expect(try h.xl("mem-max", "--help").ok)
        }
    }

    /// xl's help and usage errors: `xl` alone and `xl help` list every subcommand (exit 1 and 0);
    /// `xl help CMD` and `xl CMD -h` show that command's usage, description and options; too few
    /// arguments and an unknown option are refused with xl's words, the command's own help and
    /// exit 2; `xl help` of a command it lacks says so.
    @Test func usageErrorsShowTheCommandsOwnHelp() throws {
        try withSentinel { h in
            let bare = try h.xl(args: [])
            #expect(bare.status == 1 && bare.stdout.hasPrefix("Usage xl [-v] <subcommand> [args]\n\nxl full list of subcommands:\n\n"), "\(bare.stdout)")
            #expect(bare.stdout.contains("\n create              Create a domain from a config file\n"), "\(bare.stdout)")
            #expect(bare.stdout.contains("\n mem-set             "), "\(bare.stdout)")
            let help = try h.xl("help")
            #expect(help.status == 0 && help.stdout == bare.stdout)
            let destroy = try h.xl("help", "destroy")
            #expect(destroy.status == 0 && destroy.stdout.hasPrefix("Usage: xl [-v] destroy [options] <Domain>\n\nTerminate a domain immediately.\n\nOptions:\n\n"),
                    "\(destroy.stdout)")
            #expect(destroy.stdout.hasSuffix("-h                      Print this help.\n"), "\(destroy.stdout)")
            #expect(try h.xl("destroy", "-h").stdout == destroy.stdout)
            for (args, required) in [(["create"], "1 argument"), (["destroy"], "1 argument"), (["mem-set", "sentinel"], "2 arguments"),
                                     (["rename", "sentinel"], "2 arguments"), (["block-attach", "sentinel"], "2 arguments"),
                                     (["save"], "2 arguments"), (["restore"], "1 argument")] {
                let r = try h.xl(args: args)
                #expect(r.status == 2 && r.stderr == "'xl \(args[0])' requires at least \(required).\n\n", "\(args): \(r.stderr)")
                #expect(r.stdout.hasPrefix("Usage: xl [-v] \(args[0]) "), "\(args): \(r.stdout)")
            }
            let option = try h.xl("list", "-z")
            #expect(option.status == 2 && option.stderr == "option `z' not supported.\n", "\(option.stderr)")
            #expect(try h.xl("help", "vcpu-list").stdout == "command \"vcpu-list\" not implemented\n")
            #expect(try h.list()["sentinel"] != nil)
        }
    }

    /// `xl destroy 0` is refused as xl refuses it (domain 0 only with -f); with -f, because
    /// domain 0 is procvisord itself. The supervisor and its domains go on.
    @Test func domainZeroIsNotDestroyed() throws {
        try withSentinel { h in
            for name in ["0", "Domain-0"] {
                let r = try h.xl("destroy", name)
                #expect(!r.ok && r.stderr.contains("Not destroying domain 0; use -f to force."), "\(r.stderr)")
            }
            let f = try h.xl("destroy", "-f", "0")
            #expect(!f.ok && f.stderr.contains("domain 0 is procvisord itself"), "\(f.stderr)")
            #expect(try h.xl("list", "0").ok)
        }
    }

    @Test func unknownDomainForDomidAndDomname() throws {
        try withSentinel { h in
            let r = try h.xl("domid", "ghost")
            #expect(!r.ok)
            #expect(r.stderr.contains("Can't get domid of domain name 'ghost', maybe this domain does not exist."))
            let r2 = try h.xl("domname", "77")
            #expect(!r2.ok)
            #expect(r2.stderr.contains("Can't get domain name of domain id '77'"))
        }
    }

    @Test func supervisorNotReachable() throws {
        var env = ProcessInfo.processInfo.environment
        env["PROCVISOR_RUNDIR"] = "/tmp/pv-nonexistent-\(getpid())"
        env["PROCVISOR_NO_AUTOSTART"] = "1"
        let r = try runCommand(Products.path("xl"), ["list"], env: env)
        #expect(r.status == 1)
        #expect(r.stderr.contains("cannot reach the Procvisor supervisor at /tmp/pv-nonexistent-\(getpid())/control"))
        env.removeValue(forKey: "PROCVISOR_NO_AUTOSTART")
        env["PROCVISOR_SUPERVISOR"] = "/nonexistent/procvisord"
        let r2 = try runCommand(Products.path("xl"), ["list"], env: env)
        #expect(r2.status == 1)
        #expect(r2.stderr.contains("/nonexistent/procvisord cannot be started"))
    }

    @Test func malformedHypercallsGetErrorsAndTheDomainLives() throws {
        try withSentinel { h in
            try h.create("garbage", mode: "garbage")
            #expect(eventually { h.consoleLog("garbage").contains("survived garbage") })
            let log = h.consoleLog("garbage")
            #expect(log.contains("garbage 0: rc=-22"))
            #expect(log.contains("garbage 2: rc=-22"))
        }
    }

    /// Every malformed or refused form of every hypercall (Tests/Guests/testguest/HypercallModes.swift)
    /// gets exactly one reply carrying its sequence number; a multicall's inner calls get none of
    /// their own (their results travel in the multicall's reply).
    @Test func everyHypercallGetsExactlyOneReply() throws {
        try withSentinel(["PROCVISOR_MALFORMED_HYPERCALL_LIMIT": "1000"]) { h in
            try h.create("forms", mode: "hc-forms")
            #expect(eventually(timeout: 20) { h.consoleLog("forms").contains("hc done") })
            let lines = h.consoleLog("forms").split(separator: "\n").filter { $0.hasPrefix("hc ") }
            let done = try #require(lines.first { $0.hasPrefix("hc done") })
            #expect(done.contains("stray=0"), "\(done)")
            let forms = lines.filter { $0.contains("replies=") }
            #expect(forms.count >= 40, "only \(forms.count) forms reported")
            for line in forms {
                #expect(line.contains("replies=1 nested=0"), "\(line)")
            }
            // Requests that cannot be read as their operation are EINVAL (-22).
            for name in ["short-header", "payload-length-lies", "memory-op-ragged-extents", "gnttab-op-unmap-ragged",
                         "gnttab-op-copy-garbage", "reback-grant-pages-ragged", "multicall-garbage"] {
                #expect(forms.contains { $0.hasPrefix("hc \(name):") && $0.hasSuffix("rc=-22") }, "\(name)")
            }
            #expect(forms.contains { $0.hasPrefix("hc unknown-op:") && $0.hasSuffix("rc=-38") })
            #expect(forms.contains { $0.hasPrefix("hc bootstrap-again:") && $0.hasSuffix("rc=-1") })
            // It sent 17 malformed requests and was not crashed: the limit came from the environment.
            #expect(try !h.dmesg().contains("(forms): crashed"))
        }
    }

    /// Numbers at the ends of their ranges and more waiting calls than a domain can use: each
    /// gets an answer or waits, and the supervisor and everyone else carry on.
    @Test func hypercallNumbersAtTheirLimitsAreContained() throws {
        try withSentinel(["PROCVISOR_MALFORMED_HYPERCALL_LIMIT": "1000"]) { h in
            try h.create("overflow", mode: "hc-overflow")
            #expect(eventually(timeout: 20) { h.consoleLog("overflow").contains("hc-overflow done") }, "\(h.consoleLog("overflow"))")
            let log = h.consoleLog("overflow")
            // A timer at the last nanosecond is set (it never fires in practice); 64 blocks wait,
            // the rest are EBUSY (-16); the first report of a forbidden call is taken (it is
            // the one a dying domain sends), the others are malformed (-22) and logged once.
            #expect(log.contains("hc-overflow timer rc=0 blocks-refused=36 blocks-waiting=64 reports-answered=19 reports-rc=-22"), "\(log)")
            let dmesg = try h.dmesg()
            #expect(dmesg.components(separatedBy: "(overflow): forbidden system call").count - 1 == 1, "\(dmesg)")
            #expect(try h.list()["overflow"] != nil)
        }
    }

    /// A guest that writes to its console without end cannot fill the disk: its log is rotated
    /// at the configured size, the newest lines in the log, the previous ones in `.log.1`.
    @Test func aConsoleLogIsRotatedAtItsSize() throws {
        let h = try SupervisorHarness(extraEnv: ["PROCVISOR_CONSOLE_LOG_MAX_MB": "1"])
        defer { h.stop() }
        try h.create("spew", mode: "console-spew", "extra = \"mode=console-spew kib=2560\"\n")
        let path = h.runDirectory + "/console/guest-spew.log"
        #expect(eventually(timeout: 30) { h.consoleLog("spew").contains("spew done") }, "\((try? FileStatus(path: path))?.size ?? -1) bytes")
        let size = try FileStatus(path: path).size, older = try FileStatus(path: path + ".1").size
        #expect(size <= 1 << 20 && older <= 1 << 20 && older > 512 << 10, "log \(size) bytes, .1 \(older) bytes")
        // (2.5 MiB through a 1 MiB log: the last rotation, near 2 MiB, leaves whole lines in the
        // log; a multiple of the size could rotate just before the end and leave it almost empty.)
        // The newest lines are in the log, the ones before them in .1: nothing between is lost
        // (a line may be cut in two where the log was rotated).
        func numbers(_ text: String) -> [Int] {
            text.split(separator: "\n").compactMap { line in
                let words = line.split(separator: " ")
                return words.count >= 3 && words[0] == "spew" && words[1] == "line" ? Int(words[2]) : nil
            }
        }
        // A line cut at the rotation is whole in neither file: .1 ends in its first part (cut
        // anywhere, in its number too), the log starts with the rest. Only whole lines count.
        var olderText = try String(contentsOfFile: path + ".1", encoding: .utf8)
        if !olderText.hasSuffix("\n"), let lastNewline = olderText.lastIndex(of: "\n") { olderText = String(olderText[...lastNewline]) }
        let new = numbers(h.consoleLog("spew")), old = numbers(olderText)
        let firstNew = try #require(new.first), lastOld = try #require(old.last)
        #expect(firstNew == lastOld + 1 || firstNew == lastOld + 2, "\(lastOld) then \(firstNew)")
        #expect(try h.list()["spew"] != nil)
    }

    @Test func aGuestThatKeepsSendingGarbageIsCrashed() throws {
        try withSentinel { h in
            try h.create("spewer", mode: "garbage", "extra = \"mode=garbage count=40\"\non_crash = \"preserve\"\n")
            #expect(eventually { (try? h.dmesg())?.contains("(spewer): crashed: sent 16 malformed hypercalls") == true })
            #expect(eventually { (try? h.list())?.contains { $0.key == "spewer" && $0.value.state == "---sc-" } == true })
        }
    }

    @Test func oversizedHypercallCrashesTheGuest() throws {
        try withSentinel { h in
            try h.create("big", mode: "oversized", "on_crash = \"destroy\"\n")
            #expect(eventually { (try? h.dmesg())?.contains("(big): crashed: oversized hypercall") == true })
            #expect(eventually { (try? h.list())?["big"] == nil })
        }
    }

    @Test func hypercallFloodCrashesTheGuest() throws {
        try withSentinel { h in
            try h.create("flood", mode: "flood", "on_crash = \"destroy\"\n")
            #expect(eventually(timeout: 20) { (try? h.dmesg())?.contains("(flood): crashed: hypercall flood") == true })
            #expect(eventually { (try? h.list())?["flood"] == nil })
        }
    }

    @Test func malformedControlRequestsCloseOnlyThatConnection() throws {
        try withSentinel { h in
            let fd = try UnixSocket.connect(path: h.runDirectory + "/control")
            try fd.writeAll([5, 0, 0, 0] + Array("nope!".utf8))
            let reply = String(decoding: try fd.read(upTo: 4096), as: UTF8.self)
            #expect(reply.contains("malformed control request"))
            fd.close()
            let fd2 = try UnixSocket.connect(path: h.runDirectory + "/control")
            try fd2.writeAll([0xff, 0xff, 0xff, 0x7f])  // a frame far over the limit
            #expect(String(decoding: try fd2.read(upTo: 4096), as: UTF8.self).contains("exceeds the limit"))
            fd2.close()
        }
    }

    @Test func badShutdownTargets() throws {
        try withSentinel { h in
            try h.create("paused", mode: "run", flags: ["-p"])
            let r = try h.xl("shutdown", "paused")
            #expect(!r.ok)
            #expect(r.stderr.contains("is paused"))
            let r2 = try h.xl("shutdown", "0")
            #expect(!r2.ok)
            #expect(r2.stderr.contains("Domain-0"))
        }
    }
}
