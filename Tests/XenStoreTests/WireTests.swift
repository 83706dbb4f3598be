import ProcvisorABI
import Testing

@Suite struct XenStoreWireTests {
    @Test func headerIsSixteenLittleEndianBytes() throws {
        let m = XSMessage(.read, requestID: 7, transactionID: 3, strings: ["/local"])
        let b = m.encoded()
        #expect(b.count == 16 + 7)
        #expect(Array(b[0..<16]) == [2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0])
        var f = XSFramer()
        f.feed(b.prefix(10))
        #expect(try f.next() == nil)
        f.feed(b.dropFirst(10))
        #expect(try f.next() == m)
        #expect(f.pendingBytes == 0)
    }

    @Test func oversizedLengthIsRefused() {
        var f = XSFramer()
        f.feed([2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x10, 0, 0])  // len 4097
        #expect(throws: WireError.tooLarge(what: "xenstore payload", size: 4097, limit: 4096)) { try f.next() }
    }

    @Test func typeNumbersAreXens() {
        #expect(XSMessageType.resetWatches.rawValue == 21)
        #expect(XSMessageType.directoryPart.rawValue == 22)
        #expect(XSMessageType(rawValue: 20) == nil)  // XS_RESTRICT was removed
        #expect(XSError.allCases.prefix(16).map(\.rawValue) == ["EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
                                                                 "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"])
    }
}
