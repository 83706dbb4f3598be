import ProcvisorABI

// Wire-format helpers for NetStack: big-endian loads and stores at byte offsets, the Internet
// checksum (RFC 1071), and address classes. Everything here works on raw pointers whose bounds
// the caller has already checked; none of it allocates.

/// Field offsets and constants of the headers NetStack reads and writes (Ethernet II, ARP for
/// IPv4 over Ethernet, IPv4 without options on output, ICMP, UDP).
enum NetStackWire {
    static let ethernetHeader = 14
    /// Ethernet's minimum frame without FCS: shorter frames are padded with zeros.
    static let minimumFrame = 60
    static let etherTypeIPv4: UInt16 = 0x0800
    static let etherTypeARP: UInt16 = 0x0806

    static let arpLength = 28
    static let arpRequest: UInt16 = 1
    static let arpReply: UInt16 = 2

    static let ipv4Header = 20
    static let protocolICMP: UInt8 = 1
    static let protocolUDP: UInt8 = 17
    /// Linux's default TTL (net.ipv4.ip_default_ttl).
    static let defaultTTL: UInt8 = 64
    /// Don't Fragment: set on everything sent, as Linux does with path MTU discovery on.
    static let flagDontFragment: UInt16 = 0x4000
    /// More Fragments and the fragment offset: either set means the packet is a fragment.
    static let fragmentMask: UInt16 = 0x3FFF

    static let icmpHeader = 8
    static let icmpEchoReply: UInt8 = 0
    static let icmpDestinationUnreachable: UInt8 = 3
    static let icmpPortUnreachable: UInt8 = 3
    static let icmpEchoRequest: UInt8 = 8

    static let udpHeader = 8

    @inline(__always) static func u8(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
        p.load(fromByteOffset: offset, as: UInt8.self)
    }

    @inline(__always) static func u16(_ p: UnsafeRawPointer, _ offset: Int) -> UInt16 {
        UInt16(bigEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inline(__always) static func u32(_ p: UnsafeRawPointer, _ offset: Int) -> UInt32 {
        UInt32(bigEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    @inline(__always) static func put8(_ p: UnsafeMutableRawPointer, _ offset: Int, _ v: UInt8) {
        p.storeBytes(of: v, toByteOffset: offset, as: UInt8.self)
    }

    @inline(__always) static func put16(_ p: UnsafeMutableRawPointer, _ offset: Int, _ v: UInt16) {
        p.storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    @inline(__always) static func put32(_ p: UnsafeMutableRawPointer, _ offset: Int, _ v: UInt32) {
        p.storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt32.self)
    }

    // MARK: Internet checksum

    /// The one's-complement sum of `count` bytes at `p` as big-endian 16-bit words (an odd last
    /// byte is padded with a zero), folded to 16 bits; not complemented. Adds native 32-bit words
    /// into 64-bit accumulators (no carries to chase below 16 GiB; 2^32 ≡ 1 mod 65535) and swaps
    /// once at the end (RFC 1071: the sum is byte-order independent).
    static func sum(_ p: UnsafeRawPointer, _ count: Int) -> UInt16 {
        var a: UInt64 = 0
        var b: UInt64 = 0
        var i = 0
        while i + 16 <= count {
            let x = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let y = p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
            a &+= (x & 0xFFFF_FFFF) &+ (y & 0xFFFF_FFFF)
            b &+= (x >> 32) &+ (y >> 32)
            i += 16
        }
        while i + 4 <= count {
            a &+= UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt32.self))
            i += 4
        }
        if i + 2 <= count {
            b &+= UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt16.self))
            i += 2
        }
        if i < count {
            #if _endian(little)
            b &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self))
            #else
            b &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << 8
            #endif
        }
        let folded = fold(UInt64(fold(a)) + UInt64(fold(b)))
        #if _endian(little)
        return folded.byteSwapped
        #else
        return folded
        #endif
    }

    /// Folds a sum of 16-bit words (or of native 64-bit words: 2^64 ≡ 1 mod 65535) to 16 bits
    /// with end-around carry.
    @inline(__always) static func fold(_ x: UInt64) -> UInt16 {
        var s = (x >> 32) + (x & 0xFFFF_FFFF)
        s = (s >> 32) + (s & 0xFFFF_FFFF)
        s = (s >> 16) + (s & 0xFFFF)
        s = (s >> 16) + (s & 0xFFFF)
        s = (s >> 16) + (s & 0xFFFF)
        return UInt16(truncatingIfNeeded: s)
    }

    /// The sum of the IPv4 pseudo-header UDP's checksum covers (source, destination, protocol,
    /// UDP length), not complemented.
    @inline(__always) static func pseudoHeaderSum(source: UInt32, destination: UInt32, protocol proto: UInt8, length: Int) -> UInt64 {
        UInt64(source >> 16) + UInt64(source & 0xFFFF) + UInt64(destination >> 16) + UInt64(destination & 0xFFFF)
            + UInt64(proto) + UInt64(length)
    }

    /// True when `count` bytes at `p` (checksum field included) sum to 0xFFFF: the checksum is right.
    @inline(__always) static func checksumIsValid(_ p: UnsafeRawPointer, _ count: Int, plus extra: UInt64 = 0) -> Bool {
        fold(UInt64(sum(p, count)) + extra) == 0xFFFF
    }

    /// The checksum to store for `count` bytes at `p` whose checksum field is zero.
    @inline(__always) static func checksum(_ p: UnsafeRawPointer, _ count: Int, plus extra: UInt64 = 0) -> UInt16 {
        ~fold(UInt64(sum(p, count)) + extra)
    }

    // MARK: Address classes (host-order values)

    /// 224.0.0.0/4 (multicast) and 240.0.0.0/4 (reserved, including the limited broadcast).
    @inline(__always) static func isMulticastOrReserved(_ a: UInt32) -> Bool { a >> 28 >= 0xE }
    /// 127.0.0.0/8: never valid on a wire (Linux drops it as a martian).
    @inline(__always) static func isLoopback(_ a: UInt32) -> Bool { a >> 24 == 127 }
}
