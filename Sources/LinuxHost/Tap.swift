import CProcvisor
import Glibc

/// Linux tap devices: an Ethernet interface of the host whose frames a process reads and writes
/// on a descriptor. The supervisor creates one as the uplink of a netback bridge and hands the
/// descriptor to the driver domain; a non-persistent tap disappears with its last descriptor.
public enum Tap {
    /// What is wrong with `name` as a Linux interface name (the kernel's `dev_valid_name`):
    /// empty, IFNAMSIZ (16) bytes or more, "." or "..", or containing '/', ':' or whitespace.
    /// Nil when the kernel would take it.
    public static func nameProblem(_ name: String) -> String? {
        if name.isEmpty { return "an interface name must not be empty" }
        if name.utf8.count >= 16 { return "an interface name has at most 15 bytes" }
        if name == "." || name == ".." { return "an interface name cannot be \".\" or \"..\"" }
        if name.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 == 0 || isspace(Int32($0)) != 0 }) {
            return "an interface name cannot contain '/', ':' or whitespace"
        }
        return nil
    }

    /// Creates the tap `name` (`IFF_TAP | IFF_NO_PI`, not persistent) and returns its descriptor
    /// (blocking, close-on-exec). With `exclusive` (`IFF_TUN_EXCL`) an interface of that name that
    /// already exists, tap or not, is `EBUSY` rather than attached to. Errors: `EPERM` without
    /// CAP_NET_ADMIN, `EBUSY` for a name in use, `EINVAL` for a bad name (or, without
    /// `exclusive`, an existing interface that is no tap). The corresponding C call is
    /// `ioctl(TUNSETIFF)` on /dev/net/tun.
    public static func open(name: String, exclusive: Bool = true) throws -> FileDescriptor {
        if nameProblem(name) != nil { throw SystemError("TUNSETIFF", name, errno: .invalidArgument) }
        let fd = try negErrno("TUNSETIFF", name) { pv_tap_open(name, exclusive ? 1 : 0) }
        return FileDescriptor(rawValue: fd)
    }

    /// Brings interface `name` up (or down): `IFF_UP` through `SIOCSIFFLAGS`.
    public static func setUp(_ name: String, _ up: Bool = true) throws {
        try negErrno("SIOCSIFFLAGS", name) { pv_netif_set_up(name, up ? 1 : 0) }
    }

    /// Sets the MTU of interface `name`. The corresponding C call is `ioctl(SIOCSIFMTU)`.
    public static func setMTU(_ name: String, _ mtu: Int) throws {
        guard let m = Int32(exactly: mtu) else { throw SystemError("SIOCSIFMTU", name, errno: .invalidArgument) }
        try negErrno("SIOCSIFMTU", name) { pv_netif_set_mtu(name, m) }
    }

    /// Whether this process can create taps: /dev/net/tun is there to open and it holds
    /// CAP_NET_ADMIN (bit 12 of `CapEff` in /proc/self/status).
    public static var canCreate: Bool {
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else { return false }
        guard let status = try? FileIO.readString("/proc/self/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let caps = UInt64(line.dropFirst("CapEff:".count).filter { $0 != " " && $0 != "\t" }, radix: 16) else { return false }
        return caps & (1 << 12) != 0
    }
}

