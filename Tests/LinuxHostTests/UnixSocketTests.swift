import Glibc
import LinuxHost
import Testing

@Suite struct UnixSocketTests {
    @Test func seqpacketCarriesDescriptorsAndReportsTruncation() throws {
        let (a, b) = try UnixSocket.pair()
        defer { a.close(); b.close() }
        let (r, w) = try FileDescriptor.pipe()
        defer { r.close(); w.close() }
        try UnixSocket.send(a, [1, 2, 3], fds: [w])
        let m = try #require(try UnixSocket.receive(b, maxSize: 16))
        #expect(m.bytes == [1, 2, 3])
        #expect(m.fds.count == 1)
        // The received descriptor is the pipe's write end.
        try m.fds[0].writeAll([42])
        #expect(try r.read(upTo: 1) == [42])
        m.fds.forEach { $0.close() }
        try UnixSocket.send(a, [UInt8](repeating: 7, count: 100))
        let t = try #require(try UnixSocket.receive(b, maxSize: 10))
        #expect(t.truncated)
        #expect(t.bytes.count == 10)
    }

    @Test func receiveSeesThePeerClose() throws {
        let (a, b) = try UnixSocket.pair()
        a.close()
        #expect(try UnixSocket.receive(b, maxSize: 16) == nil)
        b.close()
    }

    @Test func listenCreatesAPrivateSocket() throws {
        let path = "/tmp/pv-sock-\(getpid())"
        let l = try UnixSocket.listen(path: path)
        defer { l.close(); FileIO.unlink(path) }
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let c = try UnixSocket.connect(path: path)
        defer { c.close() }
        var accepted: FileDescriptor?
        for _ in 0..<100 where accepted == nil {
            accepted = try UnixSocket.accept(l)
            if accepted == nil { usleep(1000) }
        }
        let s = try #require(accepted)
        #expect(try UnixSocket.peer(s).pid == getpid())
        s.close()
    }
}
