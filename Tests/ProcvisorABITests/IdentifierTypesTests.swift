import Foundation
import ProcvisorABI
import Testing

/// Ports, grant references and frame numbers are distinct types over the same raw integers: one
/// can never be passed for another, and each crosses the wire as its bare number.
@Suite struct IdentifierTypesTests {
    @Test func anEventChannelPortIsItsOwnType() throws {
        #expect(ObjectIdentifier(EvtchnPort.self) != ObjectIdentifier(UInt32.self))
        #expect(MemoryLayout<EvtchnPort>.size == MemoryLayout<UInt32>.size)
        let p: EvtchnPort = 70
        #expect(p.rawValue == 70 && EvtchnPort(rawValue: 70) == p && EvtchnPort(UInt32(70)) == p)
        #expect(EvtchnPort(3) < p)
        // Decimal both ways, as XenStore's `event-channel` keys carry it.
        #expect(p.description == "70" && "\(p)" == "70" && EvtchnPort("70") == p)
        #expect(EvtchnPort("port 70") == nil && EvtchnPort("-1") == nil)
        // Bitmap position: word 1, bit 6.
        #expect(p.index == 70 && p.bitmapWord == 1 && p.bitmapBit == 1 << 6)
        #expect(EvtchnPort(bitmapWord: 1, bit: 6) == p)
        // The wire carries the raw u32, unchanged.
        let info = EvtchnStatusInfo(status: .interdomain, remoteDomid: 2, remotePort: p)
        #expect(Array(info.encode()[8..<12]) == [70, 0, 0, 0])
        #expect(try EvtchnStatusInfo.decode(info.encode()) == info)
        let bound = ChannelEvent.portBound(port: 5, peer: 3, remotePort: p)
        #expect(try ChannelEvent.decode(bound.encode()) == bound)
    }

    @Test func aGrantReferenceIsItsOwnType() throws {
        #expect(ObjectIdentifier(GrantRef.self) != ObjectIdentifier(UInt32.self))
        #expect(ObjectIdentifier(GrantRef.self) != ObjectIdentifier(EvtchnPort.self))
        #expect(MemoryLayout<GrantRef>.size == MemoryLayout<UInt32>.size)
        let g: GrantRef = 513
        #expect(g.rawValue == 513 && GrantRef(rawValue: 513) == g && GrantRef(UInt32(513)) == g)
        #expect(GrantRef(8) < g)
        // Decimal both ways, as XenStore's `ring-ref` keys carry it.
        #expect(g.description == "513" && "\(g)" == "513" && GrantRef("513") == g && GrantRef("gref 513") == nil)
        // Entry 513 of a v1 table: 8 bytes each.
        #expect(g.index == 513 && g.entryOffset == 513 * GrantEntryV1.size)
        // The wire carries the raw u32, unchanged: a map request and a blkif segment.
        let req = GrantMapRequest(ref: g, domid: 3, flags: 0)
        #expect(Array(GrantMapRequest.encode([req]).prefix(4)) == [0x01, 0x02, 0, 0])
        #expect(try GrantMapRequest.decode(GrantMapRequest.encode([req])) == [req])
        var slot = [UInt8](repeating: 0, count: 12)
        slot.withUnsafeMutableBytes { NetifTxRequest(gref: g, offset: 0, flags: 0, id: 1, size: 60).store(to: $0.baseAddress!) }
        #expect(Array(slot.prefix(4)) == [0x01, 0x02, 0, 0])
        #expect(slot.withUnsafeBytes { NetifTxRequest(loading: $0.baseAddress!) }.gref == g)
    }

    @Test func aDomainIdIsItsOwnType() throws {
        #expect(ObjectIdentifier(DomID.self) != ObjectIdentifier(UInt16.self))
        #expect(MemoryLayout<DomID>.size == MemoryLayout<UInt16>.size)
        let d: DomID = 7
        #expect(d.rawValue == 7 && DomID(rawValue: 7) == d && DomID(UInt16(7)) == d && DomID.dom0 < d)
        // Decimal both ways, as XenStore paths carry it; reserved ids name no domain.
        #expect(d.description == "7" && "/local/domain/\(d)" == "/local/domain/7" && DomID("7") == d && DomID("dom7") == nil)
        #expect(DOMID_SELF.rawValue == 0x7FF0 && DOMID_SELF.isReserved && !d.isReserved && DomID.firstReserved == DOMID_SELF)
        // Codable as the bare number (the supervisor's persisted domain state keeps its format).
        #expect(String(decoding: try JSONEncoder().encode([d]), as: UTF8.self) == "[7]")
        #expect(try JSONDecoder().decode([DomID].self, from: Data("[7]".utf8)) == [d])
        // The wire carries the raw u16, unchanged.
        let info = EvtchnStatusInfo(status: .unbound, remoteDomid: d)
        #expect(Array(info.encode()[4..<6]) == [7, 0])
        #expect(try EvtchnStatusInfo.decode(info.encode()) == info)
        let req = GrantMapRequest(ref: 1, domid: d, flags: 0)
        #expect(Array(GrantMapRequest.encode([req])[4..<6]) == [7, 0])
        let pages = ChannelEvent.peerPages(peer: d)
        #expect(try ChannelEvent.decode(pages.encode()) == pages)
    }
}
