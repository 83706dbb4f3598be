import Glibc
import LinuxHost
import Testing

/// The launcher changes the child's uid and gid between clone and exec. In a copy of a
/// multi-threaded process, glibc's set*id wrappers wait for every thread glibc knows of to apply
/// the change too, and none of them exists in the child: the launcher must use the raw calls, or
/// a supervisor that spawns while one of its threads runs waits for ever.
@Suite struct SpawnCredentialsTests {
    @Test func aChildChangesItsUidWhileAnotherThreadOfTheParentRuns() throws {
        guard Process.effectiveUserID == 0 else {
            print("SpawnCredentialsTests: not root; changing a child's uid is not allowed here")
            return
        }
        // A thread that is alive (sleeping) while the child is cloned and changes credentials.
        let stop = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        stop.pointee = 0
        defer { stop.deallocate() }
        let thread = try PosixThread.start { while SharedAtomic.load(stop) == 0 { usleep(1000) } }
        defer {
            SharedAtomic.store(stop, 1)
            thread.join()
        }
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        for _ in 0..<20 {
            var jail = Spawner.Jail(namespaces: 0, mountPoint: nil, directories: [], files: [], hostname: nil, uid: 65534, gid: 65534)
            jail.dropCapabilities = true
            let (pid, _) = try Spawner.spawn(path: "/bin/true", argv: ["true"], env: [], fds: [(null, 0), (null, 1), (null, 2)],
                                             limits: [], filter: nil, jail: jail, listener: false)
            #expect(try ChildReaper.wait(pid) == .exited(0))
        }
    }
}
