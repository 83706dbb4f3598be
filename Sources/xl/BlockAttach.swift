import ArgumentParser
import Toolstack

struct BlockAttach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: SplitDeviceType.block.attachCommand,
        abstract: "Create a new virtual block device and attach it to a running domain.",
        discussion: "The disk is given as for disk= in xl.cfg (xl-disk-configuration(5)); several arguments are parts of one spec, e.g. 'xl block-attach guest format=raw vdev=xvdb access=rw target=/img'.")
    @Argument(help: "Domain name or id.") var domain: String
    @Argument(parsing: .captureForPassthrough, help: "The disk spec, in one or more parts.") var spec: [String] = []

    func run() throws {
        guard !spec.isEmpty else { throw ValidationError("'xl block-attach' requires at least 2 arguments: DOMAIN DISK-SPEC...") }
        var client = ControlClient.connect()
        // As xl: the domain is resolved first, then the spec is parsed (xlu_disk_parse).
        guard let domid = client.domains([domain]).first?.domid else { fail("\(domain) is an invalid domain identifier") }
        let disk: DiskSpec
        do {
            disk = try DiskSpec.parse(components: spec)
        } catch {
            fail("\(error)")
        }
        switch client.request(.blockAttach(domain: String(domid), disk: disk)) {
        case .ok:
            return
        case let .error(msg):
            if msg.hasSuffix("is an invalid domain identifier") { fail(msg) }
            fail(msg + "\nlibxl_device_\(SplitDeviceType.block.libxlName)_add failed.")
        case let other:
            fail("xl: unexpected reply \(other)")
        }
    }
}
