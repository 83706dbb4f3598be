import Glibc
import LinuxHost
import Testing

/// A domain's memory cgroup goes away with the domain even when a process it did not expect is
/// still in it (an `xl restore` that joined it to write the pages and had not left yet).
@Suite struct MemoryCgroupTests {
    @Test func removeMovesAStragglerToTheParentAndRemovesTheCgroup() throws {
        let cgroup: MemoryCgroup
        do {
            cgroup = try MemoryCgroup(name: "pv-test-\(getpid())-straggler", limitBytes: 64 << 20)
        } catch {
            // Where cgroups are not writable (a container without them) there is nothing to remove.
            print("MemoryCgroupTests: no writable memory cgroup here (\(error)); the removal path is not exercised")
            return
        }
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        let pid = try Spawner.spawn(path: "/bin/sleep", argv: ["sleep", "30"], env: [], fds: [(null, 0), (null, 1), (null, 2)],
                                    limits: [], filter: nil)
        defer {
            try? Signals.send(SIGKILL, to: pid)
            _ = try? ChildReaper.wait(pid)
        }
        try cgroup.add(pid)
        #expect(try FileIO.readString(cgroup.path + "/cgroup.procs").contains("\(pid)"))
        #expect(cgroup.remove())
        #expect(!FileIO.exists(cgroup.path))
        // The straggler lives on, in the parent.
        #expect(kill(pid, 0) == 0)
        let parent = String(cgroup.path[..<cgroup.path.lastIndex(of: "/")!])
        #expect(try FileIO.readString(parent + "/cgroup.procs").split(separator: "\n").contains(Substring("\(pid)")))
    }
}
