import ProcvisorABI
import Testing
@testable import XenStore

@Suite struct PermissionTests {
    func setup() throws -> (XenStoreEngine, XSTestClient, XSTestClient, XSTestClient) { try dom0AndTwoGuests() }

    @Test func guestsCannotTouchEachOther() throws {
        let (_, _, g1, g2) = try setup()
        #expect(g1.write("secret", "s") == "OK|")
        #expect(g2.read("/local/domain/1/secret") == "ERR:EACCES")
        #expect(g2.write("/local/domain/1/secret", "x") == "ERR:EACCES")
        #expect(g2.write("/local/domain/1/new", "x") == "ERR:EACCES")
        #expect(g2.call(.rm, ["/local/domain/1/secret"]) == "ERR:EACCES")
        #expect(g2.call(.directory, ["/local/domain/1"]) == "ERR:EACCES")
        // A missing node under an unreadable parent is EACCES, not ENOENT.
        #expect(g2.read("/local/domain/1/nothing") == "ERR:EACCES")
        #expect(g1.read("/local/domain/1/nothing") == "ERR:ENOENT")
        // The root is "n0": guests cannot create top-level nodes.
        #expect(g1.write("/top", "x") == "ERR:EACCES")
    }

    @Test func newNodesInheritParentPermsWithCreatorAsOwner() throws {
        let (e, d0, g1, _) = try setup()
        #expect(g1.call(.setPerms, ["/local/domain/1", "n1", "r2"]) == "OK|")
        #expect(g1.write("a/b", "v") == "OK|")
        #expect(g1.call(.getPerms, ["a/b"]) == "n1|r2|")
        // dom0 creating under a guest's node keeps the parent's owner.
        #expect(d0.write("/local/domain/1/byzero", "") == "OK|")
        #expect(try e.permissions("/local/domain/1/byzero") == [XSPermission(.none, 1), XSPermission(.read, 2)])
        #expect(e.nodeCount(of: 1) == 4)  // home, a, a/b, byzero
    }

    @Test func aclGrantsAccess() throws {
        let (_, _, g1, g2) = try setup()
        #expect(g1.write("shared", "v") == "OK|")
        #expect(g1.call(.setPerms, ["shared", "n1", "r2"]) == "OK|")
        #expect(g2.read("/local/domain/1/shared") == "v")
        #expect(g2.write("/local/domain/1/shared", "x") == "ERR:EACCES")
        #expect(g1.call(.setPerms, ["shared", "n1", "b2"]) == "OK|")
        #expect(g2.write("/local/domain/1/shared", "x") == "OK|")
        // Only the owner may SET_PERMS, and a guest may not give a node away.
        #expect(g2.call(.setPerms, ["/local/domain/1/shared", "n1", "b2"]) == "ERR:EACCES")
        #expect(g1.call(.setPerms, ["shared", "n2"]) == "ERR:EPERM")
        // Default access from the owner entry.
        #expect(g1.call(.setPerms, ["shared", "r1"]) == "OK|")
        #expect(g2.read("/local/domain/1/shared") == "x")
    }

    @Test func dom0MayChangeOwnerAndAccountingFollows() throws {
        let (e, d0, g1, _) = try setup()
        #expect(g1.write("n", "") == "OK|")
        #expect(e.nodeCount(of: 1) == 2)
        #expect(d0.call(.setPerms, ["/local/domain/1/n", "n2"]) == "OK|")
        #expect(e.nodeCount(of: 1) == 1)
        #expect(e.nodeCount(of: 2) == 2)
        #expect(d0.call(.setPerms, ["/nonexistent", "n0"]) == "ERR:ENOENT")
    }

    @Test func targetPrivilege() throws {
        let (e, d0, g1, g2) = try setup()
        #expect(g1.write("t", "v") == "OK|")
        #expect(g2.read("/local/domain/1/t") == "ERR:EACCES")
        #expect(g2.call(.setTarget, ["2", "1"]) == "ERR:EACCES")  // privileged only
        #expect(d0.call(.setTarget, ["2", "9"]) == "ERR:ENOENT")  // target not introduced
        #expect(d0.call(.setTarget, ["2", "1"]) == "OK|")
        // dom2 now acts as dom1's owner on dom1's nodes.
        #expect(g2.read("/local/domain/1/t") == "v")
        #expect(g2.write("/local/domain/1/t", "w") == "OK|")
        #expect(g2.call(.setPerms, ["/local/domain/1/t", "n1", "r2"]) == "OK|")
        // ...but not over its own nodes' owners or anyone else's.
        #expect(g1.read("/local/domain/2") == "ERR:EACCES")
        _ = e.releaseDomain(1)
        #expect(g2.read("/local/domain/1/t") == "ERR:ENOENT" || g2.read("/local/domain/1/t") == "ERR:EACCES")
    }

    @Test func permissionQuotaAndSpecialNodes() throws {
        let (_, d0, g1, _) = try setup()
        #expect(g1.write("p", "") == "OK|")
        #expect(g1.call(.setPerms, ["p", "n1", "r2", "r3", "r4", "r5"]) == "OK|")
        #expect(g1.call(.setPerms, ["p", "n1", "r2", "r3", "r4", "r5", "r6"]) == "ERR:ENOSPC")
        #expect(d0.call(.setPerms, ["/local/domain/1/p", "n1", "r2", "r3", "r4", "r5", "r6", "r7"]) == "OK|")
        #expect(d0.call(.getPerms, ["@releaseDomain"]) == "n0|")
        #expect(g1.call(.getPerms, ["@releaseDomain"]) == "ERR:EACCES")
        #expect(d0.call(.setPerms, ["@releaseDomain", "n0", "r1"]) == "OK|")
        #expect(g1.call(.getPerms, ["@releaseDomain"]) == "n0|r1|")
        #expect(d0.read("@releaseDomain") == "ERR:EINVAL")
    }

    @Test func permsOfAReleasedDomainDoNotPassToItsSuccessor() throws {
        let (e, _, g1, _) = try setup()
        _ = try e.write("/shared", [], perms: [XSPermission(.none, 0), XSPermission(.read, 3)])
        _ = try e.mkdir("/local/domain/3", perms: [XSPermission(.none, 3)])
        _ = e.introduceDomain(3)
        let g3 = XSTestClient(e, id: 3, domid: 3)
        #expect(g3.read("/shared") == "")
        _ = e.releaseDomain(3)
        e.disconnect(3)
        _ = e.introduceDomain(3)
        let g3b = XSTestClient(e, id: 33, domid: 3)
        #expect(g3b.read("/shared") == "ERR:EACCES")
        #expect(g1.read("/shared") == "ERR:EACCES")
    }

    @Test func privilegedOnlyRequests() throws {
        let (_, _, g1, _) = try setup()
        for t: XSMessageType in [.control, .introduce, .release, .resume, .isDomainIntroduced, .setTarget] {
            #expect(g1.call(t, ["1", "2", "3"]) == "ERR:EACCES")
        }
    }
}
