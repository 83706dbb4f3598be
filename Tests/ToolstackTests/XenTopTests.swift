import Testing
import ProcvisorABI
import Toolstack

/// `xl top`'s layout, field by field as xentop prints it.
@Suite struct XenTopTests {
    static let host = HostInfo(host: "h", release: "6.1", version: "#1", machine: "x86_64", nrCPUs: 2, cpuMHz: 2445.4,
                               totalMemoryMB: 1000, freeMemoryMB: 900, xenMajor: 4, xenMinor: 17, xenExtra: "-procvisor",
                               xenCaps: "c", xenScheduler: "credit2", pageSize: 4096, commandline: "", supervisorPid: 1,
                               runDirectory: "/r", controlSocket: "/r/control", nrDomains: 2)

    static func domain(_ id: UInt16, _ name: String, cpuNs: UInt64, running: Bool = false, shutdown: Bool = false,
                       reason: ShutdownReason? = nil) -> DomainInfo {
        DomainInfo(domid: id, name: name, uuid: "u", currentMemoryKB: 16384, maxMemoryKB: 32768, vcpusOnline: 2, maxVCPUs: 2,
                   running: running, blocked: !running && !shutdown, paused: false, shutdown: shutdown, shutdownReason: reason,
                   dying: false, cpuTimeNs: cpuNs, startTime: 0, pid: 1)
    }

    @Test func rowsHaveXentopsFormatsAndCPUPercentComesFromTwoSamples() {
        let before = TopSample(host: Self.host, monotonicNs: 1_000_000_000, domains: [
            .init(info: Self.domain(3, "a-very-long-name", cpuNs: 2_000_000_000, running: true), nets: 1, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbd: nil),
        ])
        let after = TopSample(host: Self.host, monotonicNs: 3_000_000_000, domains: [
            .init(info: Self.domain(3, "a-very-long-name", cpuNs: 3_000_000_000, running: true), nets: 1,
                  netTxBytes: 123_456_789_012, netRxBytes: 2048, vbds: 1,
                  vbd: .init(oo: 0, rd: 12, wr: 34, rdSect: 96, wrSect: 272)),
            .init(info: Self.domain(4, "gone", cpuNs: 0, shutdown: true, reason: .crash), nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbd: nil),
        ])
        let lines = XenTop.table(after, previous: before).split(separator: "\n").map(String.init)
        // NETTX(k) widens to its 9-digit figure.
        #expect(lines[0] == "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS  NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID")
        // 1 s of CPU over 2 s: 50.0%; the name cut to 10 characters; MEM(%) of 1000 MiB.
        #expect(lines[1] == "a-very-lon -----r          3   50.0      16384    1.6      32768       3.2     2    1 120563270        2    1        0       12       34         96        272    0")
        // Crashed: shut down and crashed (xentop's s and c); no disks: '-'.
        #expect(lines[2] == "      gone -s-c--          0    0.0      16384    1.6      32768       3.2     2    0         0        0    0        -        -        -          -          -    0")
        #expect(XenTop.table(after, previous: before, fullName: true).contains("\na-very-long-name -----r "))
        // Without a previous sample, CPU(%) is 0.0.
        #expect(XenTop.table(after, previous: nil).split(separator: "\n")[1].contains("          3    0.0 "))
    }

    @Test func summaryLinesAreXentops() {
        let s = TopSample(host: Self.host, monotonicNs: 0, domains: [
            .init(info: Self.domain(0, "Domain-0", cpuNs: 0, running: true), nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbd: nil),
            .init(info: Self.domain(1, "b", cpuNs: 0), nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbd: nil),
        ])
        #expect(XenTop.summary(s, time: "12:34:56") == """
            xentop - 12:34:56   Xen 4.17-procvisor
            2 domains: 1 running, 1 blocked, 0 paused, 0 crashed, 0 dying, 0 shutdown 
            Mem: 1024000k total, 102400k used, 921600k free    CPUs: 2 @ 2445MHz

            """)
    }

    @Test func statisticsNodesParseAsKeyValuePairs() {
        #expect(TopSample.statistics("oo_req 0 rd_req 12 wr_req 34") == ["oo_req": 0, "rd_req": 12, "wr_req": 34])
        #expect(TopSample.statistics("tx-bytes 5 junk rx-bytes 7\n") == ["tx-bytes": 5, "rx-bytes": 7])
        #expect(TopSample.statistics("") == [:])
        #expect(TopSample.statistics("rd_req -1 wr_req 99999999999999999999999") == [:])
    }
}
