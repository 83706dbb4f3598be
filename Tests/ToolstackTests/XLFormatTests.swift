import ProcvisorABI
import Testing
import Toolstack

/// `xl list`, `xl info` and `xl uptime` text, checked against what Xen 4.17's xl prints.
@Suite struct XLFormatTests {
    func info(_ name: String, domid: UInt16, memMB: UInt64 = 512, vcpus: Int = 2, cpu: UInt64 = 0,
              running: Bool = false, blocked: Bool = false, paused: Bool = false,
              shutdown: ShutdownReason? = nil, dying: Bool = false) -> DomainInfo {
        DomainInfo(domid: domid, name: name, uuid: "5a4bc0d2-1c3a-4e2b-9f7d-0123456789ab", currentMemoryKB: memMB * 1024,
                   maxMemoryKB: memMB * 1024, vcpusOnline: vcpus, maxVCPUs: vcpus, running: running, blocked: blocked,
                   paused: paused, shutdown: shutdown != nil, shutdownReason: shutdown, dying: dying, cpuTimeNs: cpu,
                   startTime: 0, pid: 1)
    }

    @Test func listMatchesXlByteForByte() {
        let text = XLFormat.list([
            info("Domain-0", domid: 0, memMB: 1024, vcpus: 4, cpu: 32_512_000_000, running: true),
            info("guest", domid: 3, memMB: 128, vcpus: 1, cpu: 1_250_000_000, blocked: true),
        ])
        #expect(text == """
        Name                                        ID   Mem VCPUs\tState\tTime(s)
        Domain-0                                     0  1024     4     r-----      32.5
        guest                                        3   128     1     -b----       1.2

        """)
    }

    @Test(arguments: [
        (ShutdownReason?.none, false, false, "------"),
        (ShutdownReason.poweroff, false, false, "---s--"),
        (ShutdownReason.reboot, false, false, "---sr-"),
        (ShutdownReason.suspend, false, false, "---ss-"),
        (ShutdownReason.crash, false, false, "---sc-"),
        (ShutdownReason.watchdog, false, false, "---sw-"),
        (ShutdownReason.softReset, false, false, "---sS-"),
        (ShutdownReason?.none, true, false, "--p---"),
        (ShutdownReason?.none, false, true, "-----d"),
    ])
    func stateLetters(_ reason: ShutdownReason?, _ paused: Bool, _ dying: Bool, _ expected: String) {
        #expect(XLFormat.stateLetters(info("d", domid: 1, paused: paused, shutdown: reason, dying: dying)) == expected)
    }

    @Test func verboseListAddsUUIDAndReason() {
        let row = XLFormat.listRow(info("c", domid: 9, shutdown: .crash), verbose: true)
        #expect(row.hasSuffix(" 5a4bc0d2-1c3a-4e2b-9f7d-0123456789ab        3                -"))
        let live = XLFormat.listRow(info("c", domid: 9, blocked: true), verbose: true)
        #expect(live.hasSuffix("0123456789ab        -                -"))
    }

    @Test func longNamesAreNotTruncated() {
        let name = String(repeating: "n", count: 50)
        #expect(XLFormat.listRow(info(name, domid: 2)).hasPrefix(name + "     2 "))
    }

    @Test(arguments: [
        (UInt64(0), false, " 0:00:00"), (59, false, " 0:00:59"), (3_661, false, " 1:01:01"),
        (86_400 + 5, false, "1 day,  0:00:05"), (3 * 86_400 + 7_200, false, "3 days,  2:00:00"),
        (3_661, true, " 1:01"), (86_400, true, "1 day,  0:00"),
    ])
    func uptimeStrings(_ seconds: UInt64, _ short: Bool, _ expected: String) {
        #expect(XLFormat.uptime(seconds, short: short) == expected)
    }

    @Test func uptimeRowLayout() {
        #expect(XLFormat.uptimeHeader == "Name                                ID Uptime")
        #expect(XLFormat.uptimeRow(name: "web", domid: 12, seconds: 75) == "web                                 12  0:01:15")
    }

    @Test func infoUsesXlsColumnsAndFieldFilter() {
        let h = HostInfo(host: "h", release: "6.1", version: "#1", machine: "x86_64", nrCPUs: 2, cpuMHz: 2596.118,
                         totalMemoryMB: 1000, freeMemoryMB: 900, xenMajor: 4, xenMinor: 17, xenExtra: "-procvisor",
                         xenCaps: "c", xenScheduler: "linux-cfs", pageSize: 4096, commandline: "", supervisorPid: 1,
                         runDirectory: "/r", controlSocket: "/r/control", nrDomains: 0, xenstoreSocket: "/r/xenstored/socket")
        let text = XLFormat.info(h)
        #expect(text.hasPrefix("host                   : h\nrelease                : 6.1\n"))
        #expect(text.contains("cpu_mhz                : 2596.118\n"))
        #expect(text.contains("xen_version            : 4.17-procvisor\n"))
        #expect(text.hasSuffix("xend_config_format     : 4\n"))
        #expect(text.contains("xenstore_socket        : /r/xenstored/socket\n"))
        #expect(XLFormat.infoField(h, "free_memory") == "900\n")
        #expect(XLFormat.infoField(h, "xen_m") == "4\n17\n")  // xl matches by prefix
    }

    @Test func fixedPointLikePrintf() {
        #expect(XLFormat.fixed1(0) == "0.0")
        #expect(XLFormat.fixed1(32.54) == "32.5")
        #expect(XLFormat.fixed1(1.25) == "1.2")   // %.1f rounds ties to even on binary halves
        #expect(XLFormat.fixed1(1234.56) == "1234.6")
    }

    /// `xl block-list`: xl_block.c's `%-5s %-3s %-6s %-5s %-6s %-8s %-30s` header and
    /// `%-5d %-3d %-6d %-5d %-6d %-8d %-30s` rows (checked against printf(1)).
    @Test func blockListMatchesXlByteForByte() {
        #expect(XLFormat.blockListHeader == "Vdev  BE  handle state evt-ch ring-ref BE-path                       ")
        let connected = BlockDeviceInfo(devid: 51712, vdev: "xvda", backendID: 1, frontendID: 2, state: 4, eventChannel: 5,
                                        ringRef: 8, backendPath: "/local/domain/1/backend/vbd/2/51712")
        #expect(XLFormat.blockListRow(connected) == "51712 1   2      4     5      8        /local/domain/1/backend/vbd/2/51712")
        // Wider values push the columns out as printf does; missing nodes are -1.
        let fresh = BlockDeviceInfo(devid: 268442112, vdev: "xvdq", backendID: 12, frontendID: 345, state: 1, eventChannel: -1,
                                    ringRef: -1, backendPath: "/local/domain/12/backend/vbd/345/268442112")
        #expect(XLFormat.blockListRow(fresh) == "268442112 12  345    1     -1     -1       /local/domain/12/backend/vbd/345/268442112")
        let short = BlockDeviceInfo(devid: 768, vdev: "hda", backendID: 0, frontendID: 3, state: 6, eventChannel: 17,
                                    ringRef: 2047, backendPath: "/x")
        #expect(XLFormat.blockListRow(short) == "768   0   3      6     17     2047     /x                            ")
    }

    /// `xl block-attach DOMAIN PART...`: the parts are one spec, scanned one by one as
    /// xlu_disk_parse does (positional parameters carry on; `target=` ends with its part).
    @Test func blockAttachSpecComponents() throws {
        let d = try DiskSpec.parse(components: ["phy:/dev/sdb", "xvdb", "w"])
        #expect(d.target == "/dev/sdb" && d.vdev == "xvdb" && d.access == .readWrite)
        let kv = try DiskSpec.parse(components: ["format=raw", "vdev=xvdc", "access=ro", "target=/img,with,commas"])
        #expect(kv.target == "/img,with,commas" && kv.vdev == "xvdc" && kv.access == .readOnly && kv.format == .raw)
        let targetFirst = try DiskSpec.parse(components: ["target=/a.img", "vdev=xvdd"])
        #expect(targetFirst.target == "/a.img" && targetFirst.vdev == "xvdd")
        #expect(try DiskSpec.parse(components: ["/b.img,raw", "xvde,r"]) == DiskSpec.parse("/b.img,raw,xvde,r"))
        #expect(throws: (any Error).self) { try DiskSpec.parse(components: ["vdev=xvdb", "vdev=xvdc", "target=/x"]) }
        do {
            _ = try DiskSpec.parse(components: ["vdev=xvdb", "format=zip", "target=/x"])
            Issue.record("format=zip accepted")
        } catch {
            #expect("\(error)".contains("unknown value for format: near `zip' in `format=zip'"), "\(error)")
        }
    }
}
