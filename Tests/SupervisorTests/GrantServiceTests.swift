import Glibc
import LinuxHost
import Logging
import ProcvisorABI
import Testing
@testable import Supervisor

/// The grant service on its own: two domains' tables and pages as the supervisor holds them
/// (real memfds, no domain process), entries written as a granter writes them, and every
/// grant_table_op checked against Xen's rules. Serialized: pages are counted process-wide.
@Suite(.serialized) struct GrantServiceTests {
    static let granter: DomID = 1
    static let grantee: DomID = 2

    /// A service with dom1 and dom2 alive, dom1's table set up and one grantable page allocated.
    final class Fixture {
        let service = GrantService(maxFrames: 4, logger: Logger(label: "test"))
        var live: Set<DomID> = [granter, grantee]
        let gfn: UInt64
        var received: [FileDescriptor] = []

        init() throws {
            guard case let .reply(rc, _, fds, _) = service.tableOp(granter, Self.request(.grantTableOp, [GnttabOp.setupTable.rawValue, 1])) else {
                throw GNTST.generalError
            }
            #expect(rc == 0 && fds.count == 1)
            guard case let .reply(n, payload, pageFDs, _) = service.allocPages(granter, Self.request(.allocGrantPages, [1])) else {
                throw GNTST.generalError
            }
            #expect(n == 1 && pageFDs.count == 1)
            var r = WireReader(payload, what: "gfns")
            gfn = try r.u64()
            service.isLive = { [unowned self] in live.contains($0) }
        }

        deinit { received.forEach { $0.close() } }

        static func request(_ op: HypercallOp, _ args: [UInt64], payload: [UInt8] = []) -> HypercallRequest {
            HypercallRequest(op, seq: 1, args: args, payload: payload)
        }

        /// Writes entry `ref` of dom1's table as a granting guest does: frame first, then flags+domid.
        func grant(_ ref: GrantRef, to domid: DomID, frame: UInt64? = nil, flags: UInt16 = GTF.permitAccess) {
            let base = service.tables[granter]!.table!.base + ref.entryOffset
            (base + GrantEntryV1.frameOffset).assumingMemoryBound(to: UInt32.self).pointee = UInt32(frame ?? gfn)
            base.assumingMemoryBound(to: UInt32.self).pointee = UInt32(flags) | UInt32(domid.rawValue) << 16
        }

        func entryFlags(_ ref: GrantRef) -> UInt16 {
            (service.tables[granter]!.table!.base + ref.entryOffset).assumingMemoryBound(to: UInt16.self).pointee
        }

        /// `GNTTABOP_map_grant_ref` of one entry by `by`: its status, handle and descriptor.
        func map(_ ref: GrantRef, by: DomID = grantee, from: DomID = granter, readonly: Bool = false) -> (GNTST, UInt32, FileDescriptor?) {
            let req = GrantMapRequest(ref: ref, domid: from, flags: readonly ? GNTMAP_readonly : 0)
            guard case let .reply(_, payload, fds, owned) = service.tableOp(by, Self.request(.grantTableOp, [GnttabOp.mapGrantRef.rawValue],
                                                                                              payload: GrantMapRequest.encode([req]))),
                  let result = try? GrantMapResult.decode(payload).first else { return (.generalError, 0, nil) }
            // What the dispatcher would send: owned descriptors are closed after sending; keep a duplicate.
            let fd = fds.first.map { fd in owned.contains(where: { $0 == fd }) ? FileDescriptor(rawValue: dup(fd.rawValue)) : fd }
            owned.forEach { $0.close() }
            if let fd { received.append(fd) }
            return (result.status, result.handle, fd)
        }

        func unmap(_ handle: UInt32, by: DomID = grantee) -> GNTST {
            var w = WireWriter()
            w.u32(handle)
            guard case let .reply(_, payload, _, _) = service.tableOp(by, Self.request(.grantTableOp, [GnttabOp.unmapGrantRef.rawValue], payload: w.bytes)),
                  let status = try? GrantStatusList.decode(payload).first else { return .generalError }
            return status
        }
    }

    @Test func aGranteeMapsExactlyTheGrantedPageAndUnmappingClearsTheEntry() throws {
        let f = try Fixture()
        f.grant(7, to: Self.grantee)
        let (status, handle, fd) = f.map(7)
        #expect(status == .okay && handle != 0)
        #expect(f.entryFlags(7) & (GTF.reading | GTF.writing) == GTF.reading | GTF.writing)
        // The descriptor is the granter's page: a write through it shows in the granter's frame.
        let m = try SharedMapping(try #require(fd), length: 4096)
        m.base.storeBytes(of: 0xC0FFEE, as: UInt32.self)
        let page = try #require(f.service.tables[Self.granter]?.pages[f.gfn])
        let view = try SharedMapping(page.fd, length: 4096)
        #expect(view.base.load(as: UInt32.self) == 0xC0FFEE)
        #expect(f.service.tables[Self.granter]!.isExposed(page))
        // In use: the granter cannot free it.
        #expect(errorOf(f.service.freePage(Self.granter, Fixture.request(.freeGrantPage, [f.gfn]))) == .EBUSY)
        #expect(f.unmap(handle) == .okay)
        #expect(f.entryFlags(7) & (GTF.reading | GTF.writing) == 0)
        #expect(f.unmap(handle) == .badHandle)
        #expect(errorOf(f.service.freePage(Self.granter, Fixture.request(.freeGrantPage, [f.gfn]))) == nil)
    }

    @Test func aReadOnlyGrantIsMappedReadOnlyOnly() throws {
        let f = try Fixture()
        f.grant(3, to: Self.grantee, flags: GTF.permitAccess | GTF.readonly)
        #expect(f.map(3).0 == .permissionDenied)
        let (status, _, fd) = f.map(3, readonly: true)
        #expect(status == .okay)
        #expect(f.entryFlags(3) & (GTF.reading | GTF.writing) == GTF.reading)
        #expect(throws: (any Error).self) { _ = try SharedMapping(try #require(fd), length: 4096) }
        #expect((try? SharedMapping(try #require(fd), length: 4096, writable: false)) != nil)
    }

    @Test func entriesThatDoNotGrantAreRefusedWithXensStatuses() throws {
        let f = try Fixture()
        f.grant(1, to: 9)                                  // granted to someone else
        f.grant(2, to: Self.grantee, flags: GTF.invalid)   // not a permit
        f.grant(4, to: Self.grantee, frame: 12345)         // not one of the granter's grantable pages
        #expect(f.map(1).0 == .permissionDenied)
        #expect(f.map(2).0 == .badGntref)
        #expect(f.map(4).0 == .badPage)
        #expect(f.map(GrantRef(UInt32(GrantEntryV1.perFrame))).0 == .badGntref)  // past the one frame set up
        #expect(f.map(1, from: Self.grantee).0 == .badDomain)            // a domain with no table
        #expect(f.map(1, by: Self.granter, from: Self.granter).0 == .badDomain)  // itself
        f.grant(5, to: Self.grantee)
        f.live.remove(Self.granter)
        #expect(f.map(5).0 == .badDomain)                                // the granter is gone
        // None of the refusals left GTF_reading/writing behind.
        for ref: GrantRef in [1, 2, 4, 5] { #expect(f.entryFlags(ref) & (GTF.reading | GTF.writing) == 0) }
    }

    @Test func grantCopyChecksBothSides() throws {
        let f = try Fixture()
        f.grant(6, to: Self.grantee)
        // The grantee's own page to copy into.
        guard case let .reply(_, payload, _, _) = f.service.allocPages(Self.grantee, Fixture.request(.allocGrantPages, [1])) else {
            Issue.record("no page for the grantee")
            return
        }
        var r = WireReader(payload, what: "gfn")
        let mine = try r.u64()
        let sourceView = try SharedMapping(try #require(f.service.tables[Self.granter]?.pages[f.gfn]).fd, length: 4096)
        let source = sourceView.base
        for i in 0..<4096 { source.storeBytes(of: UInt8(truncatingIfNeeded: i * 7), toByteOffset: i, as: UInt8.self) }
        func copy(_ op: GrantCopy) -> GNTST? {
            guard case let .reply(_, payload, _, _) = f.service.tableOp(Self.grantee, Fixture.request(.grantTableOp, [GnttabOp.copy.rawValue],
                                                                                                      payload: GrantCopy.encode([op]))) else { return nil }
            return try? GrantStatusList.decode(payload).first
        }
        let good = GrantCopy(source: .init(refOrGFN: 6, domid: Self.granter, offset: 100), dest: .init(refOrGFN: mine, domid: DOMID_SELF, offset: 0),
                             length: 1000, flags: GNTCOPY_source_gref)
        #expect(copy(good) == .okay)
        let destView = try SharedMapping(try #require(f.service.tables[Self.grantee]?.pages[mine]).fd, length: 4096)
        let dest = destView.base
        #expect((0..<1000).allSatisfy { dest.load(fromByteOffset: $0, as: UInt8.self) == UInt8(truncatingIfNeeded: ($0 + 100) * 7) })
        var past = good
        past.length = 4000  // 100 + 4000 runs past the source page
        #expect(copy(past) == .badCopyArg)
        var foreign = good
        foreign.dest = .init(refOrGFN: f.gfn, domid: Self.granter, offset: 0)  // a frame of another domain, not a gref
        #expect(copy(foreign) == .permissionDenied)
        f.grant(8, to: Self.grantee, flags: GTF.permitAccess | GTF.readonly)
        let intoReadOnly = GrantCopy(source: .init(refOrGFN: mine, domid: DOMID_SELF, offset: 0), dest: .init(refOrGFN: 8, domid: Self.granter, offset: 0),
                                     length: 16, flags: GNTCOPY_dest_gref)
        #expect(copy(intoReadOnly) == .permissionDenied)
    }

    /// The supervisor maps a page for grant copy and keeps the mapping, but only for the most
    /// recent `maxMapped` pages: copies into ever new pages do not pile up mappings.
    @Test func grantCopyKeepsABoundedNumberOfMappings() throws {
        let f = try Fixture()
        f.grant(6, to: Self.grantee)
        let cap = GrantPage.maxMapped
        GrantPage.maxMapped = 4
        defer { GrantPage.maxMapped = cap }
        GrantPage.makeRoom(0)
        let sourceView = try SharedMapping(try #require(f.service.tables[Self.granter]?.pages[f.gfn]).fd, length: 4096)
        for i in 0..<4096 { sourceView.base.storeBytes(of: UInt8(truncatingIfNeeded: i * 3), toByteOffset: i, as: UInt8.self) }
        guard case let .reply(_, payload, _, _) = f.service.allocPages(Self.grantee, Fixture.request(.allocGrantPages, [10])) else {
            Issue.record("no pages for the grantee")
            return
        }
        var r = WireReader(payload, what: "gfns")
        let mine = try (0..<10).map { _ in try r.u64() }
        for gfn in mine {
            let op = GrantCopy(source: .init(refOrGFN: 6, domid: Self.granter, offset: 0), dest: .init(refOrGFN: gfn, domid: DOMID_SELF, offset: 0),
                               length: 4096, flags: GNTCOPY_source_gref)
            guard case let .reply(_, out, _, _) = f.service.tableOp(Self.grantee, Fixture.request(.grantTableOp, [GnttabOp.copy.rawValue],
                                                                                              payload: GrantCopy.encode([op]))) else {
                Issue.record("no reply")
                return
            }
            #expect(try GrantStatusList.decode(out) == [.okay])
            #expect(GrantPage.mappedCount <= 4, "\(GrantPage.mappedCount) pages mapped")
        }
        for gfn in mine {
            let view = try SharedMapping(try #require(f.service.tables[Self.grantee]?.pages[gfn]).fd, length: 4096)
            #expect((0..<4096).allSatisfy { view.base.load(fromByteOffset: $0, as: UInt8.self) == UInt8(truncatingIfNeeded: $0 * 3) })
        }
    }

    @Test func aGoneGranteesMappingsAreReleased() throws {
        let f = try Fixture()
        f.grant(9, to: Self.grantee)
        #expect(f.map(9).0 == .okay)
        #expect(f.entryFlags(9) & GTF.reading != 0)
        f.service.release(Self.grantee)
        #expect(f.entryFlags(9) & (GTF.reading | GTF.writing) == 0)
        #expect(f.service.tables[Self.grantee] == nil)
        #expect(errorOf(f.service.freePage(Self.granter, Fixture.request(.freeGrantPage, [f.gfn]))) == nil)
    }

    @Test func unreadableRequestsAreMalformedAndNothingElse() throws {
        let f = try Fixture()
        let forms: [(GnttabOp, [UInt8])] = [(.mapGrantRef, []), (.mapGrantRef, [1, 2, 3]), (.unmapGrantRef, [1, 2, 3]),
                                            (.unmapGrantRef, [UInt8](repeating: 0, count: 4 * 65)), (.copy, []), (.copy, [9])]
        for (op, payload) in forms {
            guard case .malformed = f.service.tableOp(Self.grantee, Fixture.request(.grantTableOp, [op.rawValue], payload: payload)) else {
                Issue.record("\(op) with \(payload.count) bytes was not malformed")
                continue
            }
        }
        for payload in [[UInt8](), [1, 2, 3], [UInt8](repeating: 0, count: 8 * 17)] {
            guard case .malformed = f.service.reback(Self.granter, Fixture.request(.rebackGrantPages, [], payload: payload)) else {
                Issue.record("reback with \(payload.count) bytes was not malformed")
                continue
            }
        }
        #expect(errorOf(f.service.allocPages(Self.granter, Fixture.request(.allocGrantPages, [0]))) == .EINVAL)
        #expect(errorOf(f.service.tableOp(Self.granter, Fixture.request(.grantTableOp, [99]))) == .ENOSYS)
    }

    @Test func pagesBeyondTheBudgetAreRefusedOnce() throws {
        let f = try Fixture()
        var logged: [String] = []
        f.service.log = { logged.append($0) }
        f.service.pageRoom = { _, g in (max(0, 3 - g.pages.count), "refused: budget 3") }
        guard case let .reply(n, _, fds, _) = f.service.allocPages(Self.grantee, Fixture.request(.allocGrantPages, [8])) else {
            Issue.record("no reply")
            return
        }
        #expect(n == 3 && fds.count == 3)  // fewer than asked: what the budget leaves
        #expect(errorOf(f.service.allocPages(Self.grantee, Fixture.request(.allocGrantPages, [1]))) == .ENOMEM)
        #expect(errorOf(f.service.allocPages(Self.grantee, Fixture.request(.allocGrantPages, [1]))) == .ENOMEM)
        #expect(logged == ["refused: budget 3"])
    }
}

/// The Xen errno of an error reply; nil for success, a non-reply or an unknown code.
func errorOf(_ outcome: HypercallOutcome) -> XenErrno? {
    guard case let .reply(rc, _, _, _) = outcome, rc < 0 else { return nil }
    return XenErrno(rawValue: -rc)
}
