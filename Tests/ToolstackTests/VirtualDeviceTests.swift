import Testing
import Toolstack

/// vdev names → Xen device numbers as `libxl__device_disk_dev_number` (tools/libs/light/
/// libxl_device.c) computes them, the examples of docs/misc/vbd-interface.txt, and the inverse
/// as `libxl__devid_to_vdev`.
@Suite struct VirtualDeviceTests {
    static let numbers: [(String, UInt32)] = [
        // xvd, 202 << 8 | disk << 4 | partition
        ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvda15", 51727), ("xvdb2", 51730), ("xvdp", 51952),
        ("xvdp15", 51967),
        // xvd beyond disk 15 or partition 15: 1 << 28 | disk << 8 | partition
        ("xvdq", 268_439_552), ("xvda16", 268_435_472), ("xvdz", (1 << 28) | 25 << 8), ("xvdaa", (1 << 28) | 26 << 8),
        ("xvdaz", (1 << 28) | 51 << 8), ("xvdba", (1 << 28) | 52 << 8), ("xvdtq37", (1 << 28) | 536 << 8 | 37),
        ("xvdq255", 268_439_807), ("xvdzz", (1 << 28) | 701 << 8), ("xvdaaa", (1 << 28) | 702 << 8),
        // d<disk>p<partition>, numbers in C %i syntax
        ("d0p0", 51712), ("d1p2", 51730), ("d536p37", (1 << 28) | 536 << 8 | 37), ("d0x10p0", 268_439_552),
        ("d010p1", 51841), ("d1048575p255", 0x1FFF_FFFF), ("d15p15", 51967), ("d0p16", 268_435_472),
        // hd: majors 3 (hda, hdb) and 22 (hdc, hdd), 64 minors a disk
        ("hda", 768), ("hdb", 832), ("hdc", 5632), ("hdd", 5696), ("hda1", 769), ("hdc2", 5634), ("hdd63", 5759),
        // sd: major 8, 16 minors a disk
        ("sda", 2048), ("sdb3", 2067), ("sdp", 2288), ("sdp15", 2303),
        // plain numbers, hex and octal too
        ("51712", 51712), ("0", 0), ("0x300", 768), ("010", 8), ("2147483647", 2_147_483_647),
    ]

    @Test(arguments: numbers)
    func namesEncodeAsLibxl(_ name: String, _ devid: UInt32) throws {
        #expect(try VirtualDevice.devid(name) == devid)
        #expect(try VirtualDevice(name).devid == devid)
    }

    @Test func theIssuesAndBriefsNumbers() throws {
        #expect(try VirtualDevice.devid("xvda") == 51712)
        #expect(try VirtualDevice.devid("xvdb") == 51728)
        #expect(try VirtualDevice.devid("hda") == 768)
        #expect(try VirtualDevice.devid("sda") == 2048)
        #expect(try VirtualDevice.devid("xvdq") == 268_439_552)
    }

    @Test func partsOfTheName() throws {
        let v = try VirtualDevice("xvdtq37")
        #expect(v.kind == .xvd && v.disk == 536 && v.partition == 37 && v.name == "xvdtq37" && "\(v)" == "xvdtq37")
        let h = try VirtualDevice("hdc2")
        #expect(h.kind == .ide && h.disk == 2 && h.partition == 2)
        let s = try VirtualDevice("sdb")
        #expect(s.kind == .scsi && s.disk == 1 && s.partition == 0)
        let n = try VirtualDevice("51712")
        #expect(n.kind == .number && n.disk == nil && n.partition == nil)
        #expect(try VirtualDevice("d1p2") == VirtualDevice("d1p2"))
        #expect(try VirtualDevice("d1p2").kind == .xvd)
    }

    static let invalid: [(String, String)] = [
        ("", "the name is empty"),
        ("xvd", "no disk letter (a-z) after 'xvd' (e.g. xvda)"),
        ("xvd1", "no disk letter (a-z) after 'xvd' (e.g. xvda)"),
        ("xvda99999", "partition 99999 is over 255, the most an xvd disk has"),
        ("xvda256", "partition 256 is over 255, the most an xvd disk has"),
        ("xvda0", "partition '0' has a leading zero (the whole disk is xvda)"),
        ("xvdb01", "partition '01' has a leading zero (the whole disk is xvdb)"),
        ("xvdA", "no disk letter (a-z) after 'xvd' (e.g. xvda)"),
        ("xvda1b", "'1b' after 'xvda' is not a partition number"),
        ("xvda 1", "' 1' after 'xvda' is not a partition number"),
        ("xvda-1", "'-1' after 'xvda' is not a partition number"),
        ("xvdzzzzz", "an xvd disk name goes up to xvdbgqcv (disk 1048575)"),
        ("hde", "an IDE (hd) disk name goes up to hdd (disk 3)"),
        ("hda64", "partition 64 is over 63, the most an IDE (hd) disk has"),
        ("sdq", "a SCSI (sd) disk name goes up to sdp (disk 15); use xvd names for more disks"),
        ("sdzzzz", "a SCSI (sd) disk name goes up to sdp (disk 15); use xvd names for more disks"),
        ("sda16", "partition 16 is over 15, the most a SCSI (sd) disk has"),
        ("d1048576p0", "disk 1048576 is over 1048575"),
        ("d0p256", "partition 256 is over 255"),
        ("2147483648", "device number 2147483648 is over 2147483647"),
        ("99999999999999999999999", "device number 99999999999999999999999 is over 2147483647"),
        ("-1", "not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)"),
        (" 1", "not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)"),
        ("d0", "not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)"),
        ("d-1p0", "not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)"),
        ("vda", "not a virtual device name (use xvdX[N] as xvda or xvdb1, hdX[N], sdX[N], dNpM, or a device number)"),
    ]

    @Test(arguments: invalid)
    func invalidNamesSayWhy(_ name: String, _ reason: String) throws {
        let e = try #require(throws: VirtualDeviceError.self) { try VirtualDevice(name) }
        #expect(e.vdev == name)
        #expect(e.reason == reason)
        #expect(e.description == "invalid virtual device '\(name)': \(reason)")
    }

    static let names: [(UInt32, String)] = [
        (51712, "xvda"), (51713, "xvda1"), (51728, "xvdb"), (51967, "xvdp15"), (268_439_552, "xvdq"),
        (268_435_472, "xvda16"), ((1 << 28) | 536 << 8 | 37, "xvdtq37"), ((1 << 28) | 702 << 8, "xvdaaa"),
        (0x1FFF_FFFF, "xvdbgqcv255"), (768, "hda"), (832, "hdb"), (5632, "hdc"), (5759, "hdd63"), (2048, "sda"), (2303, "sdp15"),
    ]

    @Test(arguments: names)
    func devidsNameBack(_ devid: UInt32, _ name: String) throws {
        #expect(VirtualDevice.name(forDevid: devid) == name)
        #expect(try VirtualDevice.devid(name) == devid)
    }

    @Test func devidsThatAreNoEncodingHaveNoName() {
        for devid: UInt32 in [0, 1, 0x0100, 0x2000, 201 << 8, 203 << 8, 3 << 8 | 128, 22 << 8 | 200, 0x10000, 2 << 28, UInt32.max] {
            #expect(VirtualDevice.name(forDevid: devid) == nil, "\(devid)")
        }
        // An extended number for a small disk still names it, as Linux's blkfront does.
        #expect(VirtualDevice.name(forDevid: 1 << 28 | 1 << 8 | 2) == "xvdb2")
    }

    /// Every xvd disk of the compact form and a sweep of extended ones survive the round trip.
    @Test func xvdRoundTrips() throws {
        for disk in Array(0..<800) + [1 << 19, (1 << 20) - 1] {
            for partition in [0, 1, 15, 16, 255] {
                let devid = try VirtualDevice.devid("d\(disk)p\(partition)")
                let name = try #require(VirtualDevice.name(forDevid: devid))
                #expect(try VirtualDevice.devid(name) == devid, "\(name)")
                let v = try VirtualDevice(name)
                #expect(v.disk == disk && v.partition == partition)
            }
        }
    }

    /// `DiskSpec.vdevNumber` (the config parser's duplicate check) agrees on every valid name.
    @Test func diskSpecAgrees() throws {
        for (name, devid) in Self.numbers {
            let spec = try DiskSpec.parse("vdev=\(name),target=/x")
            #expect(spec.vdevNumber == devid, "\(name)")
        }
    }
}
