import DomainRuntime
import Testing

/// The blkif ring fits DomainRuntime's generic ring: 32 slots a page, as `__RING_SIZE`.
@Suite struct BlkifRingLayoutTests {
    @Test func blkifSlotsMatchTheGenericRing() {
        let layout = RingLayout(requestSize: BlkifRequest.Layout.size, responseSize: BlkifResponse.Layout.size)
        #expect(layout.slotSize == BlkifRing.slotSize)
        #expect(Int(layout.count) == BlkifRing.slots(pages: 1))
        #expect(layout.count == 32)
    }
}

/// netif's tx and rx rings as DomainRuntime lays a shared ring over one page.
@Suite struct NetifRingLayoutTests {
    @Test func ringsHold256SlotsPerPage() {
        #expect(RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize).count == 256)
        #expect(RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize).count == 256)
    }
}
