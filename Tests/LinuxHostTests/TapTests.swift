import Glibc
import LinuxHost
import Testing

/// Tap devices as the supervisor makes them for netback uplinks: created with a given name, up,
/// MTU set, gone once the descriptor is closed. Needs /dev/net/tun and CAP_NET_ADMIN; without
/// them the suite is skipped with that reason.
@Suite(.serialized, .enabled(if: Tap.canCreate, "needs /dev/net/tun and CAP_NET_ADMIN to create tap devices"))
struct TapTests {
    /// A name no other test run uses: "pvtap" + pid + a letter.
    static func name(_ suffix: String) -> String { "pvtap\(getpid() % 100_000)\(suffix)" }

    static func sysfs(_ name: String, _ file: String) -> String? {
        (try? FileIO.readString("/sys/class/net/\(name)/\(file)"))?.split(separator: "\n").first.map(String.init)
    }

    static func exists(_ name: String) -> Bool { access("/sys/class/net/\(name)", F_OK) == 0 }

    @Test func createsATapThatIsUpAndGoneWhenClosed() throws {
        let name = Self.name("a")
        let fd = try Tap.open(name: name)
        var closed = false
        defer { if !closed { fd.close() } }
        #expect(Self.exists(name))
        // IFF_TAP (0x0002) | IFF_NO_PI (0x1000), as tun_flags shows them; not persistent (0x0800).
        let flags = Self.sysfs(name, "tun_flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        #expect(flags & 0x0002 != 0 && flags & 0x1000 != 0 && flags & 0x0800 == 0, "tun_flags \(String(flags, radix: 16))")
        #expect(Self.sysfs(name, "type") == "1")  // ARPHRD_ETHER: a tap, not a tun
        try Tap.setMTU(name, 9000)
        #expect(Self.sysfs(name, "mtu") == "9000")
        try Tap.setUp(name)
        let ifFlags = Self.sysfs(name, "flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
        #expect(ifFlags & 0x1 != 0, "flags \(String(ifFlags, radix: 16))")
        try Tap.setUp(name, false)
        let downFlags = Self.sysfs(name, "flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 1
        #expect(downFlags & 0x1 == 0)
        fd.close()
        closed = true
        #expect(!Self.exists(name), "the tap outlived its descriptor")
    }

    @Test func aNameInUseIsBusy() throws {
        let name = Self.name("b")
        let fd = try Tap.open(name: name)
        defer { fd.close() }
        // An open tap of that name, and an interface that is no tap at all.
        for taken in [name, "lo"] {
            do {
                let again = try Tap.open(name: taken)
                again.close()
                Issue.record("opened \(taken) a second time")
            } catch let e as SystemError {
                #expect(e.errno == Errno(rawValue: EBUSY), "\(e)")
                #expect(e.description.contains("TUNSETIFF \(taken)"), "\(e)")
            }
        }
        // Not exclusive: the kernel's own answer for an interface that is no tap.
        #expect(throws: SystemError.self) { try Tap.open(name: "lo", exclusive: false).close() }
    }

    @Test(arguments: ["", "pvtap-name-too-long", ".", "..", "a/b", "a:b", "a b"])
    func badNamesAreRefusedBeforeTheKernel(_ name: String) {
        #expect(Tap.nameProblem(name) != nil)
        do {
            try Tap.open(name: name).close()
            Issue.record("opened \(name)")
        } catch let e as SystemError {
            #expect(e.errno == .invalidArgument)
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func settingsOfAMissingInterfaceFail() {
        let name = Self.name("z")
        #expect(!Self.exists(name))
        #expect(throws: SystemError.self) { try Tap.setUp(name) }
        #expect(throws: SystemError.self) { try Tap.setMTU(name, 1400) }
    }
}
