import Foundation
import Glibc
import LinuxHost
import Testing

/// examples/guest-template as a guest author uses it: copied outside this repository, its
/// Package.swift pointed at the checkout, built with `swift build`, and run under xl with a disk
/// and a vif: it writes and reads back its disk, and another guest pings it.
@Suite struct GuestTemplateTests {
    @Test func aGuestPackageBuiltOutsideTheRepositoryRunsAsADomain() throws {
        let repository = InstallTests.repository
        var template = Array("/tmp/pvguest.XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Errno.current }
        let top = String(cString: template)
        defer { try? FileManager.default.removeItem(atPath: top) }
        chmod(top, 0o755)  // the domain's own user reads the kernel through it
        let package = top + "/my-guest"
        // What a guest author copies (not a .build of the template's own), with this checkout's
        // pinned dependency versions.
        try FileManager.default.createDirectory(atPath: package, withIntermediateDirectories: false)
        for item in ["Package.swift", "Sources", "my-guest.cfg"] {
            try FileManager.default.copyItem(atPath: repository + "/examples/guest-template/" + item, toPath: package + "/" + item)
        }
        if FileIO.exists(repository + "/Package.resolved") {
            try FileManager.default.copyItem(atPath: repository + "/Package.resolved", toPath: package + "/Package.resolved")
        }
        let manifest = package + "/Package.swift"
        let text = try String(contentsOfFile: manifest, encoding: .utf8)
        #expect(text.contains("path: \"../..\""))
        try text.replacingOccurrences(of: "path: \"../..\"", with: "path: \"\(repository)\"").write(toFile: manifest, atomically: false, encoding: .utf8)

        let swift = ProcessInfo.processInfo.environment["PATH"].flatMap { path in
            path.split(separator: ":").map { $0 + "/swift" }.first(where: { FileIO.isExecutable(String($0)) }).map(String.init)
        } ?? "/opt/swift/usr/bin/swift"
        let build = try runCommand(swift, ["build", "--package-path", package], env: ProcessInfo.processInfo.environment, timeout: 900)
        #expect(build.ok, "\(build.stdout.suffix(3000))\(build.stderr.suffix(3000))")
        let kernel = package + "/.build/debug/my-guest"
        try #require(FileIO.isExecutable(kernel))

        let h = try SupervisorHarness()
        defer { h.stop() }
        let image = h.runDirectory + "/my-guest.img"
        _ = FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
        let bridge = "pg\(getpid() % 100_000)"
        // The template's own config, with its paths and bridge made this test's.
        var cfg = try String(contentsOfFile: package + "/my-guest.cfg", encoding: .utf8)
        cfg = cfg.replacingOccurrences(of: "\".build/release/my-guest\"", with: "\"\(kernel)\"")
            .replacingOccurrences(of: "/var/tmp/my-guest.img", with: image)
            .replacingOccurrences(of: "bridge=xenbr0", with: "bridge=\(bridge)")
        let path = h.runDirectory + "/my-guest.cfg"
        try cfg.write(toFile: path, atomically: false, encoding: .utf8)
        let r = try h.xl("create", path)
        #expect(r.ok, "\(r.stderr)")
        #expect(eventually(timeout: 60) { h.consoleLog("my-guest").contains("answers ping") }, "\(h.consoleLog("my-guest"))")
        let log = h.consoleLog("my-guest")
        #expect(log.contains("my-guest: dom"), "\(log)")
        #expect(log.contains("command line 'hello'"), "\(log)")
        #expect(log.contains("xvda: sector 0 reads back as written"), "\(log)")
        #expect(log.contains("eth0 10.0.0.40 answers ping"), "\(log)")
        // What it wrote is on the image.
        let sector = try #require(FileManager.default.contents(atPath: image)?.prefix(14))
        #expect(String(decoding: sector, as: UTF8.self) == "written by dom", "\(Array(sector))")
        // Another guest reaches it across the bridge.
        let pinger = h.config("pinger", kernel: Products.path("ping"), "extra = \"target=10.0.0.40 count=3 interval=1\"\n"
                              + "vif = [ 'mac=00:16:3e:00:00:41, ip=10.0.0.41/24, bridge=\(bridge)' ]\n")
        #expect(try h.xl("create", "-q", pinger).ok)
        #expect(eventually(timeout: 60) { h.consoleLog("pinger").contains("packets transmitted") }, "\(h.consoleLog("pinger"))")
        #expect(h.consoleLog("pinger").contains("3 packets transmitted, 3 received"), "\(h.consoleLog("pinger"))")
        #expect(try h.xl("shutdown", "-w", "my-guest").ok)
        #expect(h.consoleLog("my-guest").contains("my-guest: shutting down"))
    }
}
