import ProcvisorABI
import Testing

/// `xen/io/netif.h` byte for byte. The numbers hard-coded here were printed by a throwaway C
/// program compiled against Debian's /usr/include/xen/io/netif.h (x86_64): `sizeof`/`offsetof`
/// of each struct and field, `__CONST_RING_SIZE(netif_tx/netif_rx, 4096)` and the flag, type and
/// status macros.
@Suite struct NetifTests {
    @Test func constantsHaveXensNumbers() {
        #expect(Netif.maxTxSize == 65535 && Netif.maxSlotsPerPacket == 18)
        #expect([Netif.rspDropped, Netif.rspError, Netif.rspOkay, Netif.rspNull] == [-2, -1, 0, 1])
        #expect([Netif.txCsumBlank, Netif.txDataValidated, Netif.txMoreData, Netif.txExtraInfo] == [1, 2, 4, 8])
        #expect([Netif.rxDataValidated, Netif.rxCsumBlank, Netif.rxMoreData, Netif.rxExtraInfo, Netif.rxGSOPrefix] == [1, 2, 4, 8, 16])
        #expect([Netif.extraTypeNone, Netif.extraTypeGSO, Netif.extraTypeMcastAdd, Netif.extraTypeMcastDel, Netif.extraTypeHash,
                 Netif.extraTypeMax] == [0, 1, 2, 3, 4, 5])
        #expect(Netif.extraFlagMore == 1)
    }

    /// Each field written through the Swift struct lands at its C offset.
    func bytes(_ size: Int, _ store: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        defer { p.deallocate() }
        p.initializeMemory(as: UInt8.self, repeating: 0xEE, count: 16)
        store(p)
        return Array(UnsafeRawBufferPointer(start: p, count: 16))
    }

    @Test func structLayoutsMatchOffsetofAndSizeof() {
        // struct netif_tx_request: sizeof 12; gref 0, offset 4, flags 6, id 8, size 10.
        #expect(Netif.txRequestSize == 12)
        let tx = bytes(12) { NetifTxRequest(gref: 0x04030201, offset: 0x0605, flags: 0x0807, id: 0x0A09, size: 0x0C0B).store(to: $0) }
        #expect(Array(tx[0..<12]) == (1...12).map { UInt8($0) } && tx[12] == 0xEE)
        #expect(tx.withUnsafeBytes { NetifTxRequest(loading: $0.baseAddress!) } == NetifTxRequest(gref: 0x04030201, offset: 0x0605, flags: 0x0807, id: 0x0A09, size: 0x0C0B))
        // struct netif_tx_response: sizeof 4; id 0, status 2.
        #expect(Netif.txResponseSize == 4)
        let txr = bytes(4) { NetifTxResponse(id: 0x0201, status: -1).store(to: $0) }
        #expect(Array(txr[0..<5]) == [1, 2, 0xFF, 0xFF, 0xEE])
        // struct netif_extra_info: sizeof 8; type 0, flags 1, u 2 (gso.size 2, gso.type 4, features 6).
        #expect(Netif.extraInfoSize == 8)
        let ex = bytes(8) { NetifExtraInfo(type: 1, flags: 1, payload: (0x0403, 0x0605, 0x0807)).store(to: $0) }
        #expect(Array(ex[0..<9]) == [1, 1, 3, 4, 5, 6, 7, 8, 0xEE])
        // struct netif_rx_request: sizeof 8; id 0, (pad 2), gref 4.
        #expect(Netif.rxRequestSize == 8)
        let rx = bytes(8) { NetifRxRequest(id: 0x0201, gref: 0x08070605).store(to: $0) }
        #expect(Array(rx[0..<9]) == [1, 2, 0, 0, 5, 6, 7, 8, 0xEE])
        // struct netif_rx_response: sizeof 8; id 0, offset 2, flags 4, status 6.
        #expect(Netif.rxResponseSize == 8)
        let rxr = bytes(8) { NetifRxResponse(id: 0x0201, offset: 0x0403, flags: 0x0605, status: 0x0807).store(to: $0) }
        #expect(Array(rxr[0..<9]) == [1, 2, 3, 4, 5, 6, 7, 8, 0xEE])
    }

    @Test func txErrorsNameTheProblem() {
        #expect("\(NetifTxError.badPacketSize(0))" == "packet size 0 (must be 14…65535)")
        #expect("\(NetifTxError.slotPastPage(slot: 0, offset: 4000, size: 200))" == "slot 0: offset 4000 + size 200 runs past the 4096-byte page")
        #expect("\(NetifTxError.tooManySlots(19))" == "19 slots in one packet (at most 18)")
        #expect("\(NetifTxError.badExtraInfo(type: 9))" == "extra info of type 9 (valid: 1…4)")
        #expect("\(NetifTxError.badGrant(gref: 7777, status: "GNTST_bad_gntref"))" == "gref 7777 cannot be mapped (GNTST_bad_gntref)")
        #expect(NetifTxError.sizeMismatch(announced: 60, slots: 100).kind == "sizeMismatch")
    }
}
