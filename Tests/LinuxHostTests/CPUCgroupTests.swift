import Glibc
import LinuxHost
import Testing

/// Xen's weights and caps as the kernel's cpu controller takes them.
@Suite struct CPUCgroupTests {
    @Test("Xen weights: 256 is each version's default, proportions are kept, the ends fit",
          arguments: [(256, 1024, 100), (512, 2048, 200), (128, 512, 50), (1, 4, 1), (65535, 262140, 10000), (25600, 102400, 10000)])
    func weights(xen: Int, v1: Int, v2: Int) {
        #expect(CPUCgroup.kernelWeight(xenWeight: xen, version: .v1) == v1)
        #expect(CPUCgroup.kernelWeight(xenWeight: xen, version: .v2) == v2)
    }

    @Test func capsArePercentOfOneCPUPerPeriodAndZeroIsNone() {
        #expect(CPUCgroup.quotaMicroseconds(cap: 0) == nil)
        #expect(CPUCgroup.quotaMicroseconds(cap: 50) == 50_000)
        #expect(CPUCgroup.quotaMicroseconds(cap: 1) == 1_000)
        #expect(CPUCgroup.quotaMicroseconds(cap: 250) == 250_000, "a cap above 100 spans several CPUs")
        #expect(CPUCgroup.periodMicroseconds == 100_000)
    }

    /// Where the host lets us, the values land in the kernel's files and the cgroup goes away.
    @Test func setWeightAndCapReachTheKernel() throws {
        let cg: CPUCgroup
        do {
            cg = try CPUCgroup(name: "pv-test-\(getpid())-cpu")
        } catch {
            print("CPUCgroupTests: no writable cpu controller here (\(error)); only the mapping is checked")
            return
        }
        defer { cg.remove() }
        try cg.setWeight(xen: 768)
        try cg.setCap(percent: 30)
        #expect(cg.enforced.weight == CPUCgroup.kernelWeight(xenWeight: 768, version: cg.version))
        #expect(cg.enforced.quotaMicroseconds == 30_000)
        try cg.setCap(percent: 0)
        #expect(cg.enforced.quotaMicroseconds == nil)
        #expect(CPUCgroup(existing: "pv-test-\(getpid())-cpu")?.path == cg.path)
        #expect(cg.remove())
        #expect(CPUCgroup(existing: "pv-test-\(getpid())-cpu") == nil)
    }
}
