import SplitDrivers
import Testing

// The driver domains' settings: the KEY=VALUE words of blkback's and netback's command lines read
// into BlkbackSettings and NetbackSettings. Defaults, the values taken, bounds (clamped, with a
// warning), and bad values (ignored, with a warning that names the key and the value).

/// The settings and the warnings for `words`.
private func blkback(_ words: [String]) -> (BlkbackSettings, [String]) {
    var warnings: [String] = []
    let s = DriverSettings.blkback(words) { warnings.append($0) }
    return (s, warnings)
}

private func netback(_ words: [String]) -> (NetbackSettings, [String]) {
    var warnings: [String] = []
    let s = DriverSettings.netback(words) { warnings.append($0) }
    return (s, warnings)
}

@Suite struct DriverSettingsTests {
    @Test func wordsBecomeADictionary() {
        #expect(DriverSettings.parse(["blkback", "spin=1", "a=b=c", "=x", "spin=2", "flag", "e="])
                    == ["spin": "2", "a": "b=c"])
    }

    @Test func blkbackDefaults() {
        let (s, warnings) = blkback(["/blkback", "console=hvc0"])
        #expect(warnings.isEmpty)
        #expect(s == BlkbackSettings())
        #expect(s.queueMode == .owned)
        #expect(s.io.forceThreadPool == false)
        #expect(s.maxQueues == nil)
        #expect(s.spin == 0)
        #expect(s.pollNs == nil)
        #expect(s.stagingBytes == 16 << 20)
        #expect(s.directIO)
        #expect(s.fixedBuffers)
        #expect(s.bounceMinBytes == 64 << 10)
        #expect(s.submitChunk == 4)
        // One queue per vCPU, 1…16.
        #expect(s.maxQueues(vcpus: 4) == 4)
        #expect(s.maxQueues(vcpus: 0) == 1)
        #expect(s.maxQueues(vcpus: 64) == 16)
    }

    @Test func blkbackValuesAreTaken() {
        let (s, warnings) = blkback([
            "PROCVISOR_FORCE_NO_IOURING=1", "max-queues=3", "dispatch=1", "spin=2000", "poll-us=50", "staging-mib=0",
            "direct-io=0", "fixed-buffers=0", "bounce-min=128", "submit-chunk=8", "fail-submit=40",
        ])
        #expect(warnings.isEmpty, "\(warnings)")
        #expect(s.io.forceThreadPool)
        #expect(s.maxQueues == 3)
        #expect(s.maxQueues(vcpus: 8) == 3)
        #expect(s.queueMode == .dispatched)
        #expect(s.spin == 2000)
        #expect(s.pollNs == 50_000)
        #expect(s.stagingBytes == 0)
        #expect(!s.directIO)
        #expect(!s.fixedBuffers)
        #expect(s.bounceMinBytes == 128 << 10)
        #expect(s.submitChunk == 8)
        #expect(s.failSubmit == 40)
        // The explicit "on" values are what no setting gives.
        let (on, onWarnings) = blkback(["PROCVISOR_FORCE_NO_IOURING=0", "dispatch=0", "direct-io=1", "fixed-buffers=1"])
        #expect(onWarnings.isEmpty)
        #expect(on == BlkbackSettings())
    }

    @Test(arguments: [
        (["dispatch=1"], BlkbackSettings.QueueMode.dispatched),
        (["submit=queue"], .queueThreadSubmits),
        (["submit=queue", "dispatch=1"], .queueThreadSubmits),
        (["dispatch=0"], .owned),
    ])
    func blkbackQueueModes(_ words: [String], _ mode: BlkbackSettings.QueueMode) {
        let (s, warnings) = blkback(words)
        #expect(s.queueMode == mode)
        #expect(warnings.isEmpty)
    }

    /// Numbers out of range are clamped (max-queues below 1 is ignored), with a warning.
    @Test func blkbackBounds() {
        let (s, warnings) = blkback(["spin=-5", "poll-us=20000", "staging-mib=5000", "bounce-min=1", "submit-chunk=0", "max-queues=99"])
        #expect(s.spin == 0)
        #expect(s.pollNs == 10_000_000)
        #expect(s.stagingBytes == 1024 << 20)
        #expect(s.bounceMinBytes == 4 << 10)
        #expect(s.submitChunk == 1)
        #expect(s.maxQueues == 16)
        #expect(warnings.count == 6, "\(warnings)")
        for key in ["spin=-5", "poll-us=20000", "staging-mib=5000", "bounce-min=1", "submit-chunk=0", "max-queues=99"] {
            #expect(warnings.contains { $0.hasPrefix(key + ":") }, "\(key): \(warnings)")
        }
        #expect(blkback(["staging-mib=-1"]).0.stagingBytes == 0)
        #expect(blkback(["poll-us=0"]).0.pollNs == 0)
        let (low, lowWarnings) = blkback(["max-queues=0"])
        #expect(low.maxQueues == nil)
        #expect(low.maxQueues(vcpus: 2) == 2)
        #expect(lowWarnings.count == 1 && lowWarnings[0].hasPrefix("max-queues=0:"), "\(lowWarnings)")
        // In range: no warning.
        #expect(blkback(["spin=0", "poll-us=10000", "staging-mib=1024", "bounce-min=4", "submit-chunk=1", "max-queues=16"]).1.isEmpty)
    }

    /// A value its key cannot take leaves the default, with a warning naming key and value.
    @Test(arguments: [
        "spin=abc", "poll-us=-5", "poll-us=1.5", "staging-mib=lots", "bounce-min=", "submit-chunk=4k", "max-queues=many",
        "dispatch=yes", "submit=dispatcher", "direct-io=no", "fixed-buffers=off", "PROCVISOR_FORCE_NO_IOURING=true", "fail-submit=soon",
    ])
    func blkbackBadValues(_ word: String) {
        let (s, warnings) = blkback([word])
        if word.hasSuffix("=") {
            // `bounce-min=` has no value: not a setting at all.
            #expect(warnings.isEmpty)
        } else {
            #expect(warnings.count == 1, "\(warnings)")
            #expect(warnings.first?.hasPrefix(word + ":") == true, "\(warnings)")
        }
        #expect(s == BlkbackSettings(), "\(word) keeps every default")
    }

    @Test func netbackDefaults() {
        let (s, warnings) = netback(["/netback"])
        #expect(warnings.isEmpty)
        #expect(s == NetbackSettings())
        #expect(s.forceNoIOUring == false)
        #expect(s.maxQueues == nil)
        #expect(s.spin == 0)
        #expect(s.budget == 64)
        #expect(s.backlog == 256)
        #expect(s.broadcastPPS == 20_000)
        #expect(s.maxQueues(vcpus: 4) == 4)
        #expect(s.maxQueues(vcpus: 0) == 1)
        #expect(s.maxQueues(vcpus: 64) == 8)
    }

    @Test func netbackValuesAreTaken() {
        let (s, warnings) = netback(["PROCVISOR_FORCE_NO_IOURING=1", "max-queues=2", "spin=100", "budget=128", "backlog=0",
                                     "broadcast-pps=5"])
        #expect(warnings.isEmpty, "\(warnings)")
        #expect(s.forceNoIOUring)
        #expect(s.maxQueues == 2)
        #expect(s.spin == 100)
        #expect(s.budget == 128)
        #expect(s.backlog == 0)
        #expect(s.broadcastPPS == 5)
    }

    @Test func netbackBounds() {
        let (s, warnings) = netback(["spin=-1", "budget=0", "backlog=-3", "broadcast-pps=0", "max-queues=9"])
        #expect(s.spin == 0)
        #expect(s.budget == 1)
        #expect(s.backlog == 0)
        #expect(s.broadcastPPS == 1)
        #expect(s.maxQueues == 8)
        #expect(warnings.count == 5, "\(warnings)")
        #expect(netback(["max-queues=-2"]).0.maxQueues == nil)
    }

    @Test(arguments: ["spin=x", "budget=many", "backlog=1e3", "broadcast-pps=fast", "max-queues=all", "PROCVISOR_FORCE_NO_IOURING=on"])
    func netbackBadValues(_ word: String) {
        let (s, warnings) = netback([word])
        #expect(warnings.count == 1 && warnings[0].hasPrefix(word + ":"), "\(warnings)")
        #expect(s == NetbackSettings(), "\(word) keeps every default")
    }

    /// blkback's keys mean nothing to netback and the other way round.
    @Test func otherKeysAreIgnored() {
        #expect(netback(["poll-us=50", "dispatch=1", "staging-mib=2"]) == (NetbackSettings(), []))
        #expect(blkback(["budget=1", "backlog=2", "broadcast-pps=3"]) == (BlkbackSettings(), []))
    }
}
