import Glibc
import LinuxHost

/// Grant map+unmap latency (hypercall, entry validation, descriptor passing, mmap, munmap, the
/// supervisor's /proc check) against a local mmap+munmap of a memfd page; grant copy of 4 KiB
/// pages (batched 64 per hypercall) against memcpy between two local mappings.
enum GrantSuite {
    static func run(count: Int) throws -> [Result] {
        let rounds = max(count, 100) * 10
        let sup = try BenchSupervisor()
        defer { sup.stop() }
        try sup.create("granter", extra: "mode=grant-granter peer=2")
        try sup.create("mapper", extra: "mode=grant-bench peer=1 rounds=\(rounds)")
        let mapUnmap = try sup.awaitValue("mapper", key: "map_unmap_ns")
        let mapUnmapBatch = try sup.awaitValue("mapper", key: "map_unmap_batch_ns")
        let copyMBps = try sup.awaitValue("mapper", key: "copy_batch_mbps")
        let copySingle = try sup.awaitValue("mapper", key: "copy_single_ns")
        let mmapNs = try peerValue(try runPeer(["--mmap-peer", String(rounds)], fds: []), key: "ns")
        let memcpyMBps = try peerValue(try runPeer(["--memcpy-peer", String(rounds)], fds: []), key: "mbps")
        let memcpyNs = 4096 / memcpyMBps * 1000  // ns per 4 KiB page
        return [
            Result(name: "grant_map_unmap", unit: "us", procvisor: mapUnmap / 1000, peer: mmapNs / 1000,
                   peer_name: "mmap+munmap of a local memfd page", ratio: mapUnmap / mmapNs, higher_is_better: false),
            Result(name: "grant_map_unmap_batch16_per_page", unit: "us", procvisor: mapUnmapBatch / 1000, peer: mmapNs / 1000,
                   peer_name: "mmap+munmap of a local memfd page", ratio: mapUnmapBatch / mmapNs, higher_is_better: false),
            Result(name: "grant_copy_4k_batched", unit: "MB/s", procvisor: copyMBps, peer: memcpyMBps,
                   peer_name: "memcpy 4 KiB", ratio: copyMBps / memcpyMBps, higher_is_better: true),
            Result(name: "grant_copy_4k_single", unit: "us", procvisor: copySingle / 1000, peer: memcpyNs / 1000,
                   peer_name: "memcpy 4 KiB", ratio: copySingle / memcpyNs, higher_is_better: false),
        ]
    }
}
