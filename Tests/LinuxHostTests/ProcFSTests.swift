import Glibc
import LinuxHost
import Testing

/// /proc/PID/stat as `xl list` reads it: the state and the CPU time, comm names of any shape.
@Suite struct ProcFSTests {
    @Test func aBusyProcessIsRunningAndItsCPUTimeGrows() throws {
        let me = getpid()
        // The thread reading its own process's stat is running (the main thread may not be).
        #expect(ProcFS.threadStates(of: me).contains("R"))
        let before = ProcFS.cpuTimeNs(of: me)
        // Spin until the CPU time moves (it does in 10 ms ticks), for at most 10 s.
        let start = MonotonicClock.nanoseconds()
        var x: UInt64 = 1
        while ProcFS.cpuTimeNs(of: me) == before && MonotonicClock.nanoseconds() - start < 10_000_000_000 {
            for _ in 0..<100_000 { x = x &* 6364136223846793005 &+ 1 }
        }
        #expect(ProcFS.cpuTimeNs(of: me) > before, "spinning shows in utime (\(x))")
    }

    /// A comm with spaces and parentheses ("a) b (c") does not shift the fields.
    @Test func aCommWithSpacesAndParenthesesIsSkippedWhole() throws {
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        // The comm is the name the program was executed by: a link to sleep named so.
        let dir = "/tmp/pv-procfs-\(getpid())"
        mkdir(dir, 0o700)
        let link = dir + "/a) b (c"
        symlink("/bin/sleep", link)
        defer {
            unlink(link)
            rmdir(dir)
        }
        let pid = try Spawner.spawn(path: link, argv: ["sleep", "30"], env: [], fds: [(null, 0), (null, 1), (null, 2)],
                                    limits: [], filter: nil)
        defer {
            try? Signals.send(SIGKILL, to: pid)
            _ = try? ChildReaper.wait(pid)
        }
        let start = MonotonicClock.nanoseconds()
        while ProcFS.state(of: pid) != "S" && MonotonicClock.nanoseconds() - start < 10_000_000_000 { usleep(10_000) }
        #expect(((try? FileIO.readString("/proc/\(pid)/comm")) ?? "").hasPrefix("a) b (c"))
        #expect(ProcFS.state(of: pid) == "S", "a sleeping process")
        #expect(ProcFS.threadStates(of: pid) == ["S"])
        #expect(ProcFS.cpuTimeNs(of: pid) < 1_000_000_000)
    }

    @Test func aProcessThatIsGoneHasNoState() {
        #expect(ProcFS.state(of: 0x3FFF_FFF0) == nil)
        #expect(ProcFS.cpuTimeNs(of: 0x3FFF_FFF0) == 0)
        #expect(ProcFS.threadStates(of: 0x3FFF_FFF0).isEmpty)
    }
}
