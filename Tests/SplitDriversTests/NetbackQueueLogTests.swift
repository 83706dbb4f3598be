import DomainRuntime
import Glibc
import ProcvisorABI
@testable import SplitDrivers
import Testing

/// netback's per-queue in-flight log over plain memory, with netif rings in memory whose
/// frontend end plays the guest: a response is written into its request's slot, so what a dead
/// incarnation took and answered without publishing is gone from the ring; the log puts it back.
@Suite struct NetbackQueueLogTests {
    final class Memory {
        let base: UnsafeMutableRawPointer
        init(bytes: Int) {
            var p: UnsafeMutableRawPointer?
            posix_memalign(&p, 4096, bytes)
            base = p!
            memset(base, 0, bytes)
        }
        deinit { free(base) }
    }

    /// A tx and an rx ring (one page each) with both ends, and a queue's log.
    final class Rig {
        let txPage = Memory(bytes: 4096), rxPage = Memory(bytes: 4096)
        let memory = Memory(bytes: NetbackQueueLog.bytes)
        let txLayout = RingLayout(requestSize: Netif.txRequestSize, responseSize: Netif.txResponseSize)
        let rxLayout = RingLayout(requestSize: Netif.rxRequestSize, responseSize: Netif.rxResponseSize)
        let txFront: FrontRing, rxFront: FrontRing
        var tx: BackRing, rx: BackRing
        var log: NetbackQueueLog

        init() {
            txFront = FrontRing(page: txPage.base, layout: txLayout)
            rxFront = FrontRing(page: rxPage.base, layout: rxLayout)
            tx = BackRing(page: txPage.base, layout: txLayout)
            rx = BackRing(page: rxPage.base, layout: rxLayout)
            log = NetbackQueueLog(base: memory.base, tx: tx, rx: rx)
            log.format(tx: tx, rx: rx)
        }

        /// The frontend posts tx packets (one slot each) and rx pages with these ids.
        func post(tx ids: [UInt16], rx rxIds: [UInt16]) {
            for id in ids {
                NetifTxRequest(gref: GrantRef(UInt32(id) + 100), offset: 0, flags: 0, id: id, size: 60).store(to: txFront.nextRequest()!)
            }
            for id in rxIds { NetifRxRequest(id: id, gref: GrantRef(UInt32(id) + 500)).store(to: rxFront.nextRequest()!) }
            _ = txFront.pushRequests()
            _ = rxFront.pushRequests()
        }

        /// netback's tx step for one packet: copied aside, answered in place, consumed.
        func answerTx() -> UInt16 {
            let request = NetifTxRequest(loading: tx.peekRequest(0))
            log.takingTx(1, on: tx)
            NetifTxResponse(id: request.id, status: Netif.rspOkay).store(to: tx.nextResponse())
            tx.consume(1)
            return request.id
        }

        /// netback's rx step for one slot.
        func answerRx() -> UInt16 {
            let request = NetifRxRequest(loading: rx.peekRequest(0))
            log.takingRx(on: rx)
            rx.consume(1)
            NetifRxResponse(id: request.id, offset: 0, flags: 0, status: 60).store(to: rx.nextResponse())
            return request.id
        }

        /// The process dies; a new incarnation attaches to the same rings and log.
        func restart() -> (tx: Int, rx: Int)? {
            tx = BackRing(page: txPage.base, layout: txLayout)
            rx = BackRing(page: rxPage.base, layout: rxLayout)
            log = NetbackQueueLog(base: memory.base, tx: tx, rx: rx)
            return log.restore(tx: tx, rx: rx)
        }

        /// What a new incarnation takes off the rings, in order.
        func pending() throws -> (tx: [UInt16], rx: [GrantRef]) {
            var t: [UInt16] = [], r: [GrantRef] = []
            while let s = try tx.takeRequest() { t.append(NetifTxRequest(loading: s).id) }
            while let s = try rx.takeRequest() { r.append(NetifRxRequest(loading: s).gref) }
            return (t, r)
        }
    }

    @Test func requestsAnsweredButNotPublishedAreTakenAgainIntact() throws {
        let rig = Rig()
        rig.post(tx: [1, 2, 3, 4], rx: [10, 11, 12])
        // Packet 1 answered and published; 2 and 3 answered in place, not published.
        #expect(rig.answerTx() == 1)
        _ = rig.tx.pushResponses()
        #expect(rig.answerTx() == 2 && rig.answerTx() == 3)
        #expect(rig.answerRx() == 10)
        // Without the log the new incarnation would read the answers as requests.
        let (t, r) = try #require(rig.restart())
        #expect(t == 2 && r == 1)
        let again = try rig.pending()
        #expect(again.tx == [2, 3, 4])
        #expect(again.rx == [GrantRef(510), GrantRef(511), GrantRef(512)])
    }

    @Test func nothingTakenMeansNothingRestored() throws {
        let rig = Rig()
        rig.post(tx: [7], rx: [8])
        #expect(try #require(rig.restart()) == (0, 0))
        let again = try rig.pending()
        #expect(again.tx == [7] && again.rx == [GrantRef(508)])
    }

    /// Over several laps of the ring: the slots restored are the current lap's.
    @Test func restoresTheCurrentLapAfterManyWraps() throws {
        let rig = Rig()
        var id: UInt16 = 0
        for _ in 0..<5 {
            let ids = (0..<200).map { _ in id &+= 1; return id }
            rig.post(tx: ids, rx: [])
            for _ in ids { _ = rig.answerTx() }
            _ = rig.tx.pushResponses()
            while try rig.txFront.takeResponse() != nil {}  // the frontend frees its slots as it reads
        }
        rig.post(tx: [9001, 9002], rx: [])
        #expect(rig.answerTx() == 9001)
        #expect(try #require(rig.restart()).tx == 1)
        #expect(try rig.pending().tx == [9001, 9002])
    }

    /// A log whose recorded index is past what the frontend produced is refused, and nothing is
    /// written to the ring.
    @Test func anImpossibleRecordIsRefused() throws {
        let rig = Rig()
        rig.post(tx: [1], rx: [])
        rig.log.words[0] = 50
        let before = Array(UnsafeRawBufferPointer(start: rig.txPage.base, count: 4096))
        #expect(rig.restart() == nil)
        #expect(Array(UnsafeRawBufferPointer(start: rig.txPage.base, count: 4096)) == before)
    }
}
