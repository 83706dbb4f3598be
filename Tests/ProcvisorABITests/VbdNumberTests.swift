import ProcvisorABI
import Testing

/// Xen's vbd numbers (docs/misc/vbd-interface.txt), encoded and named back.
@Suite struct VbdNumberTests {
    @Test func eachSchemeEncodesAndNamesBack() {
        let cases: [(UInt32, String)] = [
            (VbdNumber.xvd(disk: 0, partition: 0), "xvda"), (VbdNumber.xvd(disk: 1, partition: 3), "xvdb3"),
            (VbdNumber.xvd(disk: 15, partition: 15), "xvdp15"), (VbdNumber.xvd(disk: 16, partition: 0), "xvdq"),
            (VbdNumber.xvd(disk: 26, partition: 1), "xvdaa1"), (VbdNumber.xvd(disk: 701, partition: 255), "xvdzz255"),
            (VbdNumber.ide(disk: 0, partition: 0), "hda"), (VbdNumber.ide(disk: 3, partition: 63), "hdd63"),
            (VbdNumber.scsi(disk: 2, partition: 0), "sdc"), (VbdNumber.scsi(disk: 15, partition: 15), "sdp15"),
        ]
        for (devid, name) in cases { #expect(VbdNumber.name(of: devid) == name, "\(devid)") }
        #expect(VbdNumber.xvd(disk: 0, partition: 0) == 51712 && VbdNumber.xvd(disk: 1, partition: 0) == 51728)
        #expect(VbdNumber.xvd(disk: 16, partition: 0) == 1 << 28 | 16 << 8, "past 15 disks: the extended form")
        #expect(VbdNumber.ide(disk: 2, partition: 0) == 22 << 8 && VbdNumber.scsi(disk: 0, partition: 0) == 8 << 8)
    }

    @Test func numbersOfNoSchemeHaveNoName() {
        for devid: UInt32 in [0, 1, 7 << 8, 3 << 8 | 2 << 6, 2 << 28, 0x1_0000] {
            #expect(VbdNumber.name(of: devid) == nil, "\(devid)")
        }
    }

    @Test func driveLettersCountInBijectiveBase26() {
        #expect(VbdNumber.letters(0) == "a" && VbdNumber.letters(25) == "z" && VbdNumber.letters(26) == "aa")
        #expect(VbdNumber.letters(51) == "az" && VbdNumber.letters(52) == "ba" && VbdNumber.letters(701) == "zz")
        #expect(VbdNumber.letters(702) == "aaa")
    }
}
