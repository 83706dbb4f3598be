import Foundation
import Testing
import Toolstack

/// The example configs Debian's xen-utils-common installs in /etc/xen must load as xl loads
/// them. They are read from the system on purpose: a missing package fails the test rather
/// than skipping it, so the check cannot silently stop running.
@Suite("Xen's example configs")
struct ConfigXenExampleTests {
    private func load(_ name: String) throws -> (DomainConfig, [String]) {
        let path = "/etc/xen/" + name
        try #require(
            FileManager.default.fileExists(atPath: path),
            "\(path) is missing: install xen-utils-common (scripts/install-deps.sh)")
        var warnings: [String] = []
        let config = try DomainConfig.load(path: path, extraSettings: [], warnings: &warnings)
        return (config, warnings)
    }

    @Test("xlexample.pvlinux")
    func pvLinux() throws {
        let (config, warnings) = try load("xlexample.pvlinux")
        #expect(warnings.isEmpty)
        #expect(config.name == "example.pvlinux")
        #expect(config.type == "pv")
        #expect(config.uuid == nil)
        #expect(config.kernel == "/boot/vmlinuz")
        #expect(config.ramdisk == nil)
        #expect(config.extra == "root=/dev/xvda1")
        #expect(config.commandLine == "root=/dev/xvda1")
        #expect(config.memory == 128)
        #expect(config.maxmem == 128)
        #expect(config.vcpus == 2)
        #expect(config.maxvcpus == 2)
        #expect(config.onPoweroff == .destroy && config.onReboot == .restart && config.onCrash == .destroy)
        #expect(config.vifs == [VifSpec(spec: "")])
        #expect(config.disks == [DiskSpec(
            target: "/dev/vg/guest-volume", format: .raw, vdev: "xvda", access: .readWrite,
            spec: "/dev/vg/guest-volume,raw,xvda,rw")])
        #expect(config.disks.first?.vdevNumber == 51712)
    }

    @Test("xlexample.hvm")
    func hvm() throws {
        let (config, warnings) = try load("xlexample.hvm")
        #expect(warnings.isEmpty)  // sdl is a Xen key: accepted silently
        #expect(config.name == "example.hvm")
        #expect(config.type == "hvm")
        #expect(config.kernel == nil)
        #expect(config.commandLine == "")
        #expect(config.memory == 128)
        #expect(config.maxmem == 128)
        #expect(config.vcpus == 2)
        #expect(config.vifs == [VifSpec(spec: "")])
        #expect(config.disks == [DiskSpec(
            target: "/dev/vg/guest-volume", format: .raw, vdev: "xvda", access: .readWrite,
            spec: "/dev/vg/guest-volume,raw,xvda,rw")])
    }

    @Test("xlexample.pvhlinux")
    func pvhLinux() throws {
        let (config, warnings) = try load("xlexample.pvhlinux")
        #expect(warnings.isEmpty)
        #expect(config.name == "example.pvhlinux")
        #expect(config.type == "pvh")
        #expect(config.kernel == "/boot/vmlinuz")
        #expect(config.commandLine == "root=/dev/xvda1")
        #expect(config.memory == 512)
        #expect(config.maxmem == 512)
        #expect(config.vcpus == 4)
        #expect(config.maxvcpus == 4)
        #expect(config.vifs == [VifSpec(spec: "")])
        #expect(config.disks == [DiskSpec(
            target: "/dev/zvol/tank/guest-volume", format: .raw, vdev: "xvda", access: .readWrite,
            spec: "/dev/zvol/tank/guest-volume,raw,xvda,rw")])
    }

    @Test("command-line settings override the file, as with xl create")
    func overrides() throws {
        let path = "/etc/xen/xlexample.pvlinux"
        try #require(FileManager.default.fileExists(atPath: path), "\(path) is missing: install xen-utils-common (scripts/install-deps.sh)")
        var warnings: [String] = []
        let config = try DomainConfig.load(
            path: path, extraSettings: ["memory=256", "name=\"renamed\"", "vif += [ 'bridge=xenbr1' ]"],
            warnings: &warnings)
        #expect(config.name == "renamed")
        #expect(config.memory == 256)
        #expect(config.maxmem == 256)
        #expect(config.vifs.map(\.bridge) == [nil, "xenbr1"])
    }
}
