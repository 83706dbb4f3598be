import ProcvisorABI
import SplitDrivers
import Testing
import TestSupport

// netback's per-frame policies: anti-spoofing verdicts on frames built byte by byte, the learning
// MAC table (ageing, capacity, eviction order) against a reference model, the rate= credit
// scheduler against hand-computed schedules and Linux's semantics, and the flood limiter.

private let ms: UInt64 = 1_000_000
private let second: UInt64 = 1_000_000_000

/// Frames assembled octet by octet.
private enum Wire {
    static let vifMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C]
    static let otherMAC: [UInt8] = [0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0D]
    static let broadcastMAC: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

    static func u16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

    static func ethernet(src: [UInt8] = vifMAC, etherType: UInt16, tags: [UInt16] = [], payload: [UInt8]) -> [UInt8] {
        var f = broadcastMAC + src
        for tag in tags { f += [0x81, 0x00] + u16(tag) }
        return f + u16(etherType) + payload
    }

    static func ipv4(src: [UInt8], dst: [UInt8] = [10, 0, 0, 1], proto: UInt8, payload: [UInt8]) -> [UInt8] {
        [0x45, 0x00] + u16(UInt16(20 + payload.count)) + [0, 0, 0, 0, 64, proto, 0, 0] + src + dst + payload
    }

    static func udp(_ sport: UInt16, _ dport: UInt16) -> [UInt8] { u16(sport) + u16(dport) + u16(8) + [0, 0] }
    static func tcp(_ sport: UInt16, _ dport: UInt16) -> [UInt8] {
        u16(sport) + u16(dport) + [0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0]
    }

    static func udpFrame(src: [UInt8] = vifMAC, ip: [UInt8], _ sport: UInt16 = 5000, _ dport: UInt16 = 53, tags: [UInt16] = []) -> [UInt8] {
        ethernet(src: src, etherType: 0x0800, tags: tags, payload: ipv4(src: ip, proto: 17, payload: udp(sport, dport)))
    }

    static func tcpFrame(ip: [UInt8], _ sport: UInt16, _ dport: UInt16) -> [UInt8] {
        ethernet(etherType: 0x0800, payload: ipv4(src: ip, proto: 6, payload: tcp(sport, dport)))
    }

    static func arpFrame(src: [UInt8] = vifMAC, senderMAC: [UInt8] = vifMAC, senderIP: [UInt8], targetIP: [UInt8] = [10, 0, 0, 1]) -> [UInt8] {
        ethernet(src: src, etherType: 0x0806,
                 payload: [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01] + senderMAC + senderIP + [0, 0, 0, 0, 0, 0] + targetIP)
    }
}

private func info(_ bytes: [UInt8]) throws -> FrameInfo { try #require(FrameInfo.parse(bytes)) }

private let vifMAC = MACAddress(octets: Wire.vifMAC)
private let otherMAC = MACAddress(octets: Wire.otherMAC)

/// netback's per-frame policies, one nested suite each (`swift test --filter NetPolicy`).
@Suite struct NetPolicyTests {}

extension NetPolicyTests {
    @Suite struct AntiSpoofTests {
        @Test func ipListParsing() throws {
            #expect(try AntiSpoof.parseIPList("10.0.0.2") == [IPv4Address(10, 0, 0, 2)])
            #expect(try AntiSpoof.parseIPList(" 10.0.0.2  192.168.1.7/24\t10.0.0.2 ") == [IPv4Address(10, 0, 0, 2), IPv4Address(192, 168, 1, 7)])
            #expect(try AntiSpoof.parseIPList("") == [])
            #expect(try AntiSpoof.parseIPList("   ") == [])
            for bad in ["10.0.0.x", "10.0.0.2,10.0.0.3", "10.0.0.2/33", "10.0.0", "fe80::1", "10.0.0.2/"] {
                #expect(throws: NetPolicyError.self, "\(bad)") { try AntiSpoof.parseIPList(bad) }
            }
            do {
                _ = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2 10.0.0.x")
                Issue.record("accepted 10.0.0.x")
            } catch let e as NetPolicyError {
                #expect(e.description == "ip=\"10.0.0.2 10.0.0.x\": \"10.0.0.x\" is not an IPv4 address (expected space-separated A.B.C.D or A.B.C.D/N)")
            }
            #expect(try AntiSpoof(mac: vifMAC, ip: "10.0.0.2/24").allowedIPs == [IPv4Address(10, 0, 0, 2)])
        }

        @Test func sourceMACMustBeTheVifs() throws {
            let open = AntiSpoof(mac: vifMAC)
            #expect(open.check(try info(Wire.udpFrame(ip: [1, 2, 3, 4]))) == .ok, "no ip=: any IPv4 source")
            #expect(open.check(try info(Wire.udpFrame(src: Wire.otherMAC, ip: [1, 2, 3, 4]))) == .forgedMAC(found: otherMAC))
            let ipv6 = Wire.ethernet(src: Wire.otherMAC, etherType: 0x86DD, payload: [0x60] + [UInt8](repeating: 0, count: 39))
            #expect(open.check(try info(ipv6)) == .forgedMAC(found: otherMAC))
            #expect(!SpoofVerdict.forgedMAC(found: otherMAC).isOK && SpoofVerdict.ok.isOK)
        }

        @Test func ipv4SourceMustBeAllowed() throws {
            let vif = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2 10.0.0.5/24")
            #expect(vif.check(try info(Wire.udpFrame(ip: [10, 0, 0, 2]))) == .ok)
            #expect(vif.check(try info(Wire.tcpFrame(ip: [10, 0, 0, 5], 40000, 80))) == .ok)
            #expect(vif.check(try info(Wire.udpFrame(ip: [10, 0, 0, 6]))) == .forgedIP(found: IPv4Address(10, 0, 0, 6)),
                    "the /24 does not widen what the vif may send from")
            #expect(vif.check(try info(Wire.udpFrame(ip: [10, 0, 0, 3], tags: [42]))) == .forgedIP(found: IPv4Address(10, 0, 0, 3)),
                    "a VLAN tag does not hide the source")
            #expect(vif.check(try info(Wire.udpFrame(src: Wire.otherMAC, ip: [10, 0, 0, 2]))) == .forgedMAC(found: otherMAC))
        }

        @Test func dhcpFromZeroIsTheOnlyException() throws {
            let vif = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2")
            #expect(vif.check(try info(Wire.udpFrame(ip: [0, 0, 0, 0], 68, 67))) == .ok)
            #expect(vif.check(try info(Wire.udpFrame(ip: [0, 0, 0, 0], 68, 68))) == .forgedIP(found: .any))
            #expect(vif.check(try info(Wire.udpFrame(ip: [0, 0, 0, 0], 67, 68))) == .forgedIP(found: .any))
            #expect(vif.check(try info(Wire.tcpFrame(ip: [0, 0, 0, 0], 68, 67))) == .forgedIP(found: .any))
            #expect(vif.check(try info(Wire.udpFrame(ip: [10, 9, 9, 9], 68, 67))) == .forgedIP(found: IPv4Address(10, 9, 9, 9)),
                    "DHCP does not excuse another address")
        }

        @Test func arpSenderMustBeTheVif() throws {
            let vif = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2")
            #expect(vif.check(try info(Wire.arpFrame(senderIP: [10, 0, 0, 2]))) == .ok)
            #expect(vif.check(try info(Wire.arpFrame(senderIP: [0, 0, 0, 0], targetIP: [10, 0, 0, 2]))) == .ok, "RFC 5227 probe")
            #expect(vif.check(try info(Wire.arpFrame(senderIP: [10, 0, 0, 1]))) == .forgedARP(senderMAC: vifMAC, senderIP: IPv4Address(10, 0, 0, 1)))
            #expect(vif.check(try info(Wire.arpFrame(senderMAC: Wire.otherMAC, senderIP: [10, 0, 0, 2])))
                    == .forgedARP(senderMAC: otherMAC, senderIP: IPv4Address(10, 0, 0, 2)))
            let open = AntiSpoof(mac: vifMAC)
            #expect(open.check(try info(Wire.arpFrame(senderMAC: Wire.otherMAC, senderIP: [1, 1, 1, 1]))) == .ok, "no ip=: ARP unchecked")
        }

        @Test func malformedOrHiddenL3FromAnIPRestrictedVifIsDropped() throws {
            let vif = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2")
            let open = AntiSpoof(mac: vifMAC)
            let cutIPv4 = Array(Wire.udpFrame(ip: [10, 0, 0, 2]).prefix(14 + 16))
            let cutARP = Array(Wire.arpFrame(senderIP: [10, 0, 0, 2]).prefix(14 + 20))
            let stacked = Wire.udpFrame(ip: [6, 6, 6, 6], tags: [1, 2])
            let cutTag = Wire.broadcastMAC + Wire.vifMAC + [0x81, 0x00, 0x00]
            for frame in [cutIPv4, cutARP, stacked, cutTag] {
                #expect(vif.check(try info(frame)) == .malformed)
                #expect(open.check(try info(frame)) == .ok)
            }
            let ipv6 = Wire.ethernet(etherType: 0x86DD, payload: [0x60] + [UInt8](repeating: 0, count: 39))
            #expect(vif.check(try info(ipv6)) == .ok, "as Xen's vif-common.sh, only IPv4 and ARP are restricted")
        }

        @Test func fuzzCheckNeverCrashes() throws {
            let vif = try AntiSpoof(mac: vifMAC, ip: "10.0.0.2")
            var rng = SplitMix64(state: 7)
            let seeds = [Wire.udpFrame(ip: [10, 0, 0, 2], 68, 67), Wire.arpFrame(senderIP: [10, 0, 0, 2]), Wire.udpFrame(ip: [10, 0, 0, 2], tags: [3])]
            var ok = 0
            for i in 0..<20_000 {
                var bytes = seeds[i % seeds.count]
                for _ in 0..<Int.random(in: 0...3, using: &rng) {
                    bytes[Int.random(in: 12..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
                guard let f = FrameInfo.parse(bytes) else { continue }
                if vif.check(f) == .ok { ok += 1 }
            }
            #expect(ok > 0)
        }
    }
}

/// The table's contract in the simplest terms: entries in least-recently-learned order.
private struct ReferenceTable {
    var entries: [(mac: UInt64, port: Int, learned: UInt64)] = []
    let capacity: Int
    let ageing: UInt64

    mutating func learn(_ mac: UInt64, _ port: Int, _ now: UInt64) {
        if let i = entries.firstIndex(where: { $0.mac == mac }) { entries.remove(at: i) } else if entries.count == capacity { entries.removeFirst() }
        entries.append((mac, port, now))
    }

    mutating func lookup(_ mac: UInt64, _ now: UInt64) -> Int? {
        guard let i = entries.firstIndex(where: { $0.mac == mac }) else { return nil }
        if entries[i].learned + ageing <= now {
            entries.remove(at: i)
            return nil
        }
        return entries[i].port
    }
}

extension NetPolicyTests {
    @Suite struct MACTableTests {
        @Test func learnsAndLooksUp() {
            let t = MACTable()
            #expect(t.lookup(vifMAC, now: 0) == nil)
            #expect(t.learn(vifMAC, port: 3, now: 1 * second))
            #expect(t.lookup(vifMAC, now: 2 * second) == 3)
            #expect(t.lookup(otherMAC, now: 2 * second) == nil)
            #expect(t.learn(vifMAC, port: 5, now: 3 * second), "a station that moved")
            #expect(t.lookup(vifMAC, now: 3 * second) == 5)
            #expect(t.count == 1)
        }

        @Test func groupAndZeroSourcesAreNeverLearned() {
            let t = MACTable()
            for mac in [MACAddress.broadcast, MACAddress("01:00:5e:00:00:fb")!, MACAddress("33:33:00:00:00:01")!, MACAddress(value: 0)] {
                #expect(!t.learn(mac, port: 1, now: 0), "\(mac)")
                #expect(t.lookup(mac, now: 0) == nil)
            }
            #expect(t.count == 0)
        }

        @Test func entriesAgeAfterThreeHundredSeconds() {
            let t = MACTable()
            #expect(MACTable.defaultAgeingTime == 300 * second)
            t.learn(vifMAC, port: 1, now: 10 * second)
            #expect(t.lookup(vifMAC, now: 310 * second - 1) == 1)
            #expect(t.lookup(vifMAC, now: 310 * second) == nil)
            #expect(t.count == 0, "the aged entry is removed")
            t.learn(vifMAC, port: 1, now: 400 * second)
            t.learn(vifMAC, port: 1, now: 600 * second)
            #expect(t.lookup(vifMAC, now: 850 * second) == 1, "learning again restarts the age")

            let short = MACTable(ageingTime: 5 * second)
            short.learn(vifMAC, port: 2, now: 0)
            short.learn(otherMAC, port: 2, now: 3 * second)
            short.expire(now: 5 * second)
            #expect(short.count == 1)
            #expect(short.lookup(otherMAC, now: 5 * second) == 2)
        }

        @Test func fullTableEvictsTheLeastRecentlyLearned() {
            let t = MACTable(capacity: 4)
            let macs = (1...6).map { MACAddress(value: 0x0200_0000_0000 + UInt64($0)) }
            for i in 0..<4 { t.learn(macs[i], port: i, now: UInt64(i) * second) }
            t.learn(macs[4], port: 4, now: 5 * second)
            #expect(t.count == 4 && t.evictions == 1)
            #expect(t.lookup(macs[0], now: 5 * second) == nil)
            #expect(t.lookup(macs[1], now: 5 * second) == 1)
            t.learn(macs[1], port: 1, now: 6 * second)  // refreshed: macs[2] is now the oldest
            t.learn(macs[5], port: 5, now: 7 * second)
            #expect(t.lookup(macs[2], now: 7 * second) == nil)
            #expect(t.lookup(macs[1], now: 7 * second) == 1)
            #expect(t.lookup(macs[5], now: 7 * second) == 5)
            #expect(t.evictions == 2)
        }

        @Test func aFloodOfSourceMACsIsBounded() {
            let t = MACTable()
            for i in 0..<100_000 { t.learn(MACAddress(value: 0x0200_0000_0000 + UInt64(i)), port: 9, now: UInt64(i)) }
            #expect(t.count == MACTable.defaultCapacity)
            #expect(t.evictions == UInt64(100_000 - MACTable.defaultCapacity))
            t.learn(vifMAC, port: 1, now: 200_000)
            #expect(t.lookup(vifMAC, now: 200_001) == 1)
            #expect(t.count == MACTable.defaultCapacity)
        }

        @Test func forgetRemovesOnePortsEntries() {
            let t = MACTable(capacity: 8)
            for i in 0..<6 { t.learn(MACAddress(value: 0x0200_0000_0000 + UInt64(i)), port: i % 2, now: UInt64(i)) }
            t.forget(port: 0)
            #expect(t.count == 3)
            for i in 0..<6 { #expect(t.lookup(MACAddress(value: 0x0200_0000_0000 + UInt64(i)), now: 10) == (i % 2 == 0 ? nil : 1)) }
            for i in 10..<15 { t.learn(MACAddress(value: 0x0200_0000_0000 + UInt64(i)), port: 2, now: 20) }
            #expect(t.count == 8 && t.evictions == 0, "forgotten slots are reused before anything is evicted")
            t.removeAll()
            #expect(t.count == 0)
            t.learn(vifMAC, port: 4, now: 30)
            #expect(t.lookup(vifMAC, now: 30) == 4)
        }

        @Test func agreesWithAReferenceModel() {
            var rng = SplitMix64(state: 42)
            let t = MACTable(capacity: 16, ageingTime: 50)
            var model = ReferenceTable(capacity: 16, ageing: 50)
            var now: UInt64 = 0
            for step in 0..<50_000 {
                now += UInt64.random(in: 0...2, using: &rng)
                let mac = 0x0200_0000_0000 + UInt64.random(in: 0..<40, using: &rng)
                switch UInt8.random(in: 0..<10, using: &rng) {
                case 0..<5:
                    let port = Int.random(in: 0..<4, using: &rng)
                    t.learn(MACAddress(value: mac), port: port, now: now)
                    model.learn(mac, port, now)
                case 5..<9:
                    #expect(t.lookup(MACAddress(value: mac), now: now) == model.lookup(mac, now), "step \(step)")
                default:
                    let port = Int.random(in: 0..<4, using: &rng)
                    t.forget(port: port)
                    model.entries.removeAll { $0.port == port }
                }
                #expect(t.count == model.entries.count, "step \(step)")
            }
        }
    }
}

extension NetPolicyTests {
    @Suite struct CreditSchedulerTests {
        /// Offers packets of `size` at `now` until one is refused; returns how many passed.
        private func drain(_ c: inout CreditScheduler, size: Int, now: UInt64) -> Int {
            var n = 0
            while c.consume(size, now: now) { n += 1 }
            return n
        }

        @Test func handComputedSchedule() {
            // 10 kB every 50 ms, 1500-byte packets. Credit left after each window: 1000, 500, 0, 1000...
            var c = CreditScheduler(bytesPerInterval: 10_000, intervalMicroseconds: 50_000)
            #expect(c.burst == 131_072)
            #expect(drain(&c, size: 1500, now: 0) == 6)
            #expect(c.remainingCredit == 1000)
            #expect(c.nextCreditTime == 50 * ms)
            do { let passed = c.consume(1500, now: 49 * ms); #expect(!passed) }
            do { let passed = c.consume(100, now: 49 * ms); #expect(!passed, "nothing passes while the credit timer is pending (Linux keeps ring order)") }
            var counts: [Int] = []
            for k in 1...6 {
                counts.append(drain(&c, size: 1500, now: UInt64(k) * 50 * ms))
                #expect(c.nextCreditTime == UInt64(k + 1) * 50 * ms)
            }
            #expect(counts == [7, 7, 6, 7, 7, 6])
        }

        @Test func holdsTheRateOverSimulatedSecondsWithLateTimers() {
            // rate=10kB/s@50ms is 200 kB/s. A sender that always has something to send, arbitrary
            // packet sizes, a timer that fires up to 2 ms late.
            var c = CreditScheduler(bytesPerInterval: 10_000, intervalMicroseconds: 50_000)
            var rng = SplitMix64(state: 1)
            var now: UInt64 = 0
            var sent: UInt64 = 0
            var size = 1514
            let end = 10 * second
            while now < end {
                if c.consume(size, now: now) {
                    sent += UInt64(size)
                    size = Int.random(in: 60...1514, using: &rng)
                    now += 1000  // 1 us per packet
                } else {
                    now = max(now, c.nextCreditTime) + UInt64.random(in: 0...(2 * ms), using: &rng)
                }
            }
            let expected: Double = 200_000 * 10
            #expect(abs(Double(sent) - expected) / expected < 0.01, "sent \(sent) bytes in 10 s")
        }

        @Test func holdsTheRateWithATimerAtExactlyTheCreditTime() {
            var c = CreditScheduler(bytesPerInterval: 125_000, intervalMicroseconds: 10_000)  // 100 Mbit/s
            var now: UInt64 = 0
            var sent: UInt64 = 0
            while now < 5 * second {
                if c.consume(9000, now: now) { sent += 9000 } else { now = c.nextCreditTime }
            }
            let expected: Double = 12_500_000 * 5
            #expect(abs(Double(sent) - expected) / expected < 0.01, "sent \(sent)")
        }

        @Test func creditIsCappedAtTheBurst() {
            // 50 kB per 50 ms: the cap is 131072, not what accumulates while a big packet waits.
            var c = CreditScheduler(bytesPerInterval: 50_000, intervalMicroseconds: 50_000)
            do { let passed = c.consume(140_000, now: 0); #expect(!passed) }
            do { let passed = c.consume(140_000, now: 50 * ms); #expect(!passed) }  // 100000
            do { let passed = c.consume(140_000, now: 100 * ms); #expect(passed) }  // min(150000, 131072) = 131072: full, passes as a jumbo
            #expect(c.remainingCredit == 131_072 - 140_000)
            do { let passed = c.consume(1000, now: 100 * ms); #expect(!passed) }
            #expect(c.nextCreditTime == 150 * ms)
            do { let passed = c.consume(1000, now: 150 * ms); #expect(passed) }
            #expect(c.remainingCredit == 131_072 - 140_000 + 50_000 - 1000)

            let big = CreditScheduler(bytesPerInterval: 200_000, intervalMicroseconds: 50_000)
            #expect(big.burst == 200_000)
        }

        @Test func a64KiBPacketPassesOnceEnoughCreditAccumulates() {
            // Linux's reason for the 128 KiB floor: 10 kB per 50 ms, one 64 KiB packet.
            var c = CreditScheduler(bytesPerInterval: 10_000, intervalMicroseconds: 50_000)
            var now: UInt64 = 0
            var tries = 0
            while !c.consume(65_536, now: now) {
                now = c.nextCreditTime
                tries += 1
                if tries > 100 { break }
            }
            #expect(now == 300 * ms, "credit 10000, 20000, ... 70000 at 300 ms")
            #expect(c.remainingCredit == 70_000 - 65_536)
        }

        @Test func aPacketLargerThanTheBurstPassesAndIsRepaid() {
            // 1000 bytes per ms; 200000-byte packets are larger than the 131072 cap. They pass when
            // the credit is full and the debt keeps the long-run rate.
            var c = CreditScheduler(bytesPerInterval: 1000, intervalMicroseconds: 1000)
            var now: UInt64 = 0
            var sent: UInt64 = 0
            var firstPass: UInt64?
            while now < 10 * second {
                if c.consume(200_000, now: now) {
                    sent += 200_000
                    if firstPass == nil { firstPass = now }
                } else {
                    now = c.nextCreditTime
                }
                #expect(c.remainingCredit <= 131_072)
            }
            #expect(firstPass == 131 * ms, "1000 at 0 ms, 131000 at 130 ms, 131072 (capped) at 131 ms")
            #expect(sent >= 9_800_000 && sent <= 10_200_000, "sent \(sent)")
        }

        @Test func afterIdleTheCreditWindowRestarts() {
            var c = CreditScheduler(bytesPerInterval: 10_000, intervalMicroseconds: 50_000)
            #expect(drain(&c, size: 1000, now: 0) == 10)
            #expect(c.nextCreditTime == 50 * ms)
            // Ten seconds later: the pending timer adds 10000, then the window restarts at now with
            // another 10000 (Linux's tx_credit_exceeded), and the next credit is 50 ms after now.
            #expect(drain(&c, size: 1000, now: 10 * second) == 20)
            #expect(c.nextCreditTime == 10 * second + 50 * ms)
        }

        @Test func unlimited() {
            var c = CreditScheduler.unlimited
            #expect(c.isUnlimited)
            for _ in 0..<1000 { do { let passed = c.consume(65_536, now: 0); #expect(passed) } }
            var zeroInterval = CreditScheduler(bytesPerInterval: 1, intervalMicroseconds: 0)
            #expect(zeroInterval.isUnlimited)
            do { let passed = zeroInterval.consume(1_000_000, now: 0); #expect(passed) }
            #expect(!CreditScheduler(bytesPerInterval: 1, intervalMicroseconds: 1).isUnlimited)
        }

        @Test func rateKeyParsing() throws {
            let r = try CreditScheduler.parseRate("10000,50000")
            #expect(r.bytesPerInterval == 10_000 && r.intervalMicroseconds == 50_000)
            let max = try CreditScheduler.parseRate("18446744073709551615,4294967295")
            #expect(max.bytesPerInterval == UInt64.max && max.intervalMicroseconds == 4_294_967_295)
            let c = try CreditScheduler(rate: "1250000,50000", now: 7)
            #expect(c.bytesPerInterval == 1_250_000 && c.intervalMicroseconds == 50_000 && c.windowStart == 7)
            for bad in ["", "10000", "10000,", ",50000", "10000,50000,1", "1e4,50000", "-1,50000", "+1,50000", " 10000,50000",
                        "10000,50000\n", "10000;50000", "0x10,50000", "18446744073709551616,1", "0,50000", "10000,5e4"] {
                #expect(throws: NetPolicyError.self, "\(bad)") { try CreditScheduler.parseRate(bad) }
            }
            do {
                _ = try CreditScheduler.parseRate("fast")
                Issue.record("accepted fast")
            } catch let e as NetPolicyError {
                #expect(e.description.hasPrefix("rate=\"fast\": "))
                #expect(e.description.contains("BYTES,MICROSECONDS"))
            }
            do {
                _ = try CreditScheduler.parseRate("0,50000")
                Issue.record("accepted 0 bytes")
            } catch let e as NetPolicyError {
                #expect(e.description.contains("0 bytes per interval"))
            }
        }
    }
}

extension NetPolicyTests {
    @Suite struct FrameRateLimiterTests {
        @Test func burstThenRate() {
            var l = FrameRateLimiter(framesPerSecond: 100, burst: 10)
            for _ in 0..<10 { do { let allowed = l.allow(now: 0); #expect(allowed) } }
            do { let allowed = l.allow(now: 0); #expect(!allowed) }
            do { let allowed = l.allow(now: 10 * ms - 1); #expect(!allowed) }
            do { let allowed = l.allow(now: 10 * ms); #expect(allowed) }
            do { let allowed = l.allow(now: 10 * ms); #expect(!allowed) }
            #expect(l.dropped == 3)
        }

        @Test func heldOverTenSeconds() {
            var l = FrameRateLimiter(framesPerSecond: 100, burst: 10)
            var allowed = 0
            for k in 0..<UInt64(10_000) {
                if l.allow(now: k * ms) { allowed += 1 }
            }
            // 10 from the burst plus 999.9 tokens earned by 9.999 s.
            #expect(allowed == 1009)
            #expect(l.dropped == UInt64(10_000 - 1009))
        }

        @Test func idleTimeRefillsOnlyUpToTheBurst() {
            var l = FrameRateLimiter(framesPerSecond: 1000, burst: 5)
            for _ in 0..<5 { _ = l.allow(now: 0) }
            var n = 0
            while l.allow(now: 3600 * second) { n += 1 }
            #expect(n == 5)
        }

        @Test func edgeCases() {
            var noRefill = FrameRateLimiter(framesPerSecond: 0, burst: 3)
            for _ in 0..<3 { do { let allowed = noRefill.allow(now: 0); #expect(allowed) } }
            do { let allowed = noRefill.allow(now: 1000 * second); #expect(!allowed) }
            var zeroBurst = FrameRateLimiter(framesPerSecond: 10, burst: 0)
            #expect(zeroBurst.burst == 1)
            do { let first = zeroBurst.allow(now: 0), second = zeroBurst.allow(now: 0); #expect(first && !second) }
            var backwards = FrameRateLimiter(framesPerSecond: 1, burst: 1, now: 10 * second)
            do { let allowed = backwards.allow(now: 10 * second); #expect(allowed) }
            do { let allowed = backwards.allow(now: 5 * second); #expect(!allowed, "a clock that goes back refills nothing") }
            do { let allowed = backwards.allow(now: 11 * second); #expect(allowed) }
            var huge = FrameRateLimiter(framesPerSecond: .max, burst: .max)
            do { let allowed = huge.allow(now: .max); #expect(allowed) }
        }
    }
}
