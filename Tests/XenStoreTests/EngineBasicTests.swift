import ProcvisorABI
import Testing
@testable import XenStore

@Suite struct EngineBasicTests {
    @Test func initialTreeIsXens() throws {
        let e = XenStoreEngine()
        #expect(try e.directory("/") == ["tool"])
        #expect(try e.directory("/tool") == ["xenstored"])
        #expect(try e.permissions("@releaseDomain") == [XSPermission(.none, 0)])
        #expect(e.nodeCount(of: 0) == 5)
    }

    @Test func writeReadDirectory() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        #expect(c.write("/a/b/c", "hello") == "OK|")
        #expect(c.read("/a/b/c") == "hello")
        #expect(c.read("/a/b") == "")
        #expect(c.call(.directory, ["/a"]) == "b|")
        #expect(c.call(.directory, ["/a/b/c"]) == "")
        #expect(c.read("/a/x") == "ERR:ENOENT")
        #expect(c.write("/a/b/d", "") == "OK|")
        #expect(c.call(.directory, ["/a/b"]) == "c|d|")
        // Values are raw bytes, NULs included, and READ replies carry no terminator.
        var p = Array("/bin\0".utf8); p += [1, 0, 2]
        _ = c.send(XSMessage(.write, payload: p))
        #expect(c.send(.read, ["/bin"]).reply.payload == [1, 0, 2])
        // Reply headers keep req_id.
        #expect(c.send(.read, ["/a/b/c"]).reply.requestID == 42)
    }

    @Test func relativePathsAreUnderTheDomainPath() {
        let e = XenStoreEngine()
        _ = try? e.mkdir("/local/domain/3", perms: [XSPermission(.none, 3)])
        let g = XSTestClient(e, id: 3, domid: 3)
        #expect(g.write("device/vif", "x") == "OK|")
        #expect((try? e.read("/local/domain/3/device/vif")) == Array("x".utf8))
        #expect(g.read("device/vif") == "x")
        #expect(g.call(.getDomainPath, ["7"]) == "/local/domain/7|")
    }

    @Test func mkdirAndRm() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        #expect(c.call(.mkdir, ["/m/n"]) == "OK|")
        #expect(c.call(.mkdir, ["/m/n"]) == "OK|")  // exists: fine
        #expect(c.write("/m/n/o/p", "1") == "OK|")
        #expect(c.call(.rm, ["/m/none"]) == "OK|")  // missing, parent exists
        #expect(c.call(.rm, ["/m/none/deeper"]) == "ERR:ENOENT")
        #expect(c.call(.rm, ["/"]) == "ERR:EINVAL")
        #expect(c.call(.rm, ["/m/n"]) == "OK|")
        #expect(c.read("/m/n/o/p") == "ERR:ENOENT")
        #expect(c.call(.directory, ["/m"]) == "")
        #expect(e.nodeCount(of: 0) == 6)  // 5 initial + /m
    }

    @Test(arguments: [
        ("", "EINVAL"), ("/a//b", "EINVAL"), ("/a/", "EINVAL"), ("/a b", "EINVAL"), ("/a.b", "EINVAL"),
        ("@foo", "EINVAL"), ("/ä", "EINVAL"), ("/x", "ENOENT"),
    ])
    func badPaths(path: String, error: String) {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        #expect(c.read(path) == "ERR:" + error)
    }

    @Test func pathLengthLimitForGuests() {
        let e = XenStoreEngine()
        _ = try? e.mkdir("/local/domain/4", perms: [XSPermission(.none, 4)])
        let g = XSTestClient(e, id: 4, domid: 4)
        // Components stay short: a long child name would overflow the parent's node-size quota.
        let ok = String(repeating: "aaaaaaaaa/", count: 204) + "aaaaaaaa"
        #expect(ok.count == 2048)
        #expect(g.write(ok, "") == "OK|")  // 2048 below /local/domain/4/
        #expect(g.write(ok + "b", "") == "ERR:EINVAL")
        #expect(g.write("/" + String(repeating: "a", count: 2048), "") == "ERR:EINVAL")  // 2049 absolute, not below a domain path
        // dom0 has no path quota.
        let d = XSTestClient(e, id: 1, domid: 0)
        #expect(d.write("/" + String(repeating: "a", count: 3000), "") == "OK|")
    }

    @Test func malformedPayloads() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        _ = c.write("/a", "1")
        func raw(_ t: XSMessageType, _ bytes: String) -> String { describe(c.send(XSMessage(t, payload: Array(bytes.utf8))).reply) }
        #expect(raw(.read, "/a") == "ERR:EINVAL")  // no NUL
        #expect(raw(.read, "/a\0/b\0") == "ERR:EINVAL")  // two args
        #expect(raw(.read, "") == "ERR:EINVAL")
        #expect(raw(.write, "/a") == "ERR:EINVAL")
        #expect(raw(.mkdir, "/a") == "ERR:EINVAL")
        #expect(raw(.rm, "/a") == "ERR:EINVAL")
        #expect(raw(.watch, "/a\0") == "ERR:EINVAL")
        #expect(raw(.watch, "/a\0t\0x\0") == "ERR:EINVAL")
        #expect(raw(.unwatch, "/a\0") == "ERR:EINVAL")
        #expect(raw(.setPerms, "/a\0") == "ERR:EINVAL")
        #expect(raw(.setPerms, "/a\0x1\0") == "ERR:EINVAL")
        #expect(raw(.setPerms, "/a\0r\0") == "ERR:EINVAL")
        #expect(raw(.setPerms, "/a\0r1z\0") == "ERR:EINVAL")
        #expect(raw(.directoryPart, "/a\0") == "ERR:EINVAL")
        #expect(raw(.transactionEnd, "X\0") == "ERR:EINVAL")
        #expect(raw(.getDomainPath, "1") == "ERR:EINVAL")
        #expect(raw(.introduce, "1\0" + "2\0") == "ERR:EINVAL")
        #expect(raw(.introduce, "1\0" + "2\0" + "0\0") == "ERR:EINVAL")  // port 0
        #expect(raw(.control, "") == "ERR:EINVAL")
    }

    @Test func unknownAndServerOnlyTypesAreENOSYS() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        for t: UInt32 in [20, 23, 999, XSMessageType.watchEvent.rawValue, XSMessageType.error.rawValue] {
            let r = c.send(XSMessage(rawType: t, requestID: 5, transactionID: 0, payload: [])).reply
            #expect(describe(r) == "ERR:ENOSYS")
            #expect(r.requestID == 5)
        }
    }

    @Test func directoryPartPagesThroughManyChildren() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        var expected: [String] = []
        for i in 0..<600 {
            let name = "child-with-a-longish-name-\(i)"
            expected.append(name)
            _ = c.write("/many/" + name, "")
        }
        // Plain DIRECTORY no longer fits in one payload.
        #expect(c.call(.directory, ["/many"]) == "ERR:E2BIG")
        var got: [String] = []
        var off = 0
        var gens: Set<String> = []
        var pages = 0
        while true {
            let r = c.send(.directoryPart, ["/many", String(off)]).reply
            #expect(r.type == .directoryPart)
            #expect(r.payload.count <= XenStoreWire.payloadMax)
            var strings = r.payloadStrings
            gens.insert(strings.removeFirst())
            pages += 1
            if strings.last == "" {
                strings.removeLast()
                got += strings
                break
            }
            got += strings
            off += strings.reduce(0) { $0 + $1.utf8.count + 1 }
        }
        #expect(got == expected)
        #expect(gens.count == 1)
        #expect(pages > 1)
        // Past the end: just the generation and an empty string.
        let end = c.send(.directoryPart, ["/many", "999999"]).reply.payloadStrings
        #expect(end.count == 2 && end[1] == "")
        #expect(c.call(.directoryPart, ["/nope", "0"]) == "ERR:ENOENT")
    }

    @Test func directoryPartGenerationChangesWithTheDirectory() {
        let e = XenStoreEngine()
        let c = XSTestClient(e, id: 1, domid: 0)
        _ = c.write("/d/a", "")
        let g1 = c.send(.directoryPart, ["/d", "0"]).reply.payloadStrings
        #expect(Array(g1.dropFirst()) == ["a", ""])
        _ = c.write("/d/b", "")
        let g2 = c.send(.directoryPart, ["/d", "0"]).reply.payloadStrings
        #expect(g1[0] != g2[0])
        #expect(Array(g2.dropFirst()) == ["a", "b", ""])
    }

    @Test func toolstackAPI() throws {
        let e = XenStoreEngine()
        _ = try e.write("/vm/1/name", Array("guest".utf8), perms: [XSPermission(.none, 1), XSPermission(.read, 2)])
        #expect(try e.read("/vm/1/name") == Array("guest".utf8))
        #expect(try e.permissions("/vm/1/name") == [XSPermission(.none, 1), XSPermission(.read, 2)])
        #expect(try e.directory("/vm/1") == ["name"])
        _ = try e.rm("/vm")
        #expect(throws: XSError.ENOENT) { try e.read("/vm/1/name") }
        #expect(throws: XSError.EINVAL) { try e.rm("/") }
        #expect(throws: XSError.EINVAL) { try e.read("bad path") }
        #expect(XSPermission("r5") == XSPermission(.read, 5))
        #expect(XSPermission("b0x10") == XSPermission(.both, 16))
        #expect(XSPermission("q1") == nil)
        #expect(XSPermission("n") == nil)
        #expect(XSPermission(.write, 9).description == "w9")
    }
}
