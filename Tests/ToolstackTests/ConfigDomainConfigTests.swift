import Foundation
import Testing
import Toolstack

@Suite("DomainConfig")
struct ConfigDomainConfigTests {
    @Test("init(name:kernel:) uses xl's defaults")
    func defaults() {
        let config = DomainConfig(name: "d", kernel: "/k")
        #expect(config.type == "pv")
        #expect(config.memory == 32 && config.maxmem == 32)
        #expect(config.vcpus == 1 && config.maxvcpus == 1)
        #expect(config.onPoweroff == .destroy && config.onReboot == .restart && config.onCrash == .destroy)
        #expect(config.disks.isEmpty && config.vifs.isEmpty)
        #expect(config.commandLine == "")
    }

    @Test("commandLine: cmdline, else root= and extra joined", arguments: [
        (nil, nil, nil, ""), ("c", "/dev/r", "e", "c"), (nil, "/dev/r", nil, "root=/dev/r"),
        (nil, nil, "quiet", "quiet"), (nil, "/dev/r", "quiet ro", "root=/dev/r quiet ro"),
    ] as [(String?, String?, String?, String)])
    func commandLine(cmdline: String?, root: String?, extra: String?, expected: String) {
        var config = DomainConfig(name: "d", kernel: "/k")
        config.cmdline = cmdline
        config.root = root
        config.extra = extra
        #expect(config.commandLine == expected)
    }

    @Test("cpu_weight and cap: libxl's ranges, the cap's bound following maxvcpus")
    func schedParams() throws {
        var warnings: [String] = []
        func load(_ extra: String) throws -> DomainConfig {
            try DomainConfig.load(text: "name='a'\nkernel='/k'\n" + extra, file: "a.cfg", extraSettings: [], warnings: &warnings)
        }
        let plain = try load("")
        #expect(plain.cpuWeight == nil && plain.cap == nil)
        let set = try load("cpu_weight = 512\ncap = 150\nmaxvcpus = 2\n")
        #expect(set.cpuWeight == 512 && set.cap == 150)
        #expect(warnings.isEmpty, "\(warnings)")
        for (extra, message) in [("cpu_weight = 0\n", "parameter 'cpu_weight' is 0 but must be between 1 and 65535"),
                                 ("cpu_weight = 65536\n", "parameter 'cpu_weight' is 65536 but must be between 1 and 65535"),
                                 ("cap = \"-1\"\n", "parameter 'cap' is -1 but must be between 0 and 100"),
                                 ("cap = 101\n", "parameter 'cap' is 101 but must be between 0 and 100"),
                                 ("cap = 301\nvcpus = 3\n", "parameter 'cap' is 301 but must be between 0 and 300"),
                                 ("cap = 'half'\n", "parameter 'cap' is not a valid number")] {
            #expect(throws: XLConfigError.self, "\(extra)") { try load(extra) }
            do { _ = try load(extra) } catch { #expect("\(error)".contains(message), "\(extra): \(error)") }
        }
        // Carried in the dry run as libxl's sched_params.
        #expect(XLFormat.dryRun(set).contains("\"sched_params\": {\n            \"weight\": 512,\n            \"cap\": 150\n        }"))
        #expect(!XLFormat.dryRun(plain).contains("sched_params"))
    }

    @Test("actions: supported ones parse, Xen-only ones are refused with the list")
    func actions() throws {
        var warnings: [String] = []
        for action in ShutdownAction.allCases {
            let config = try DomainConfig.load(
                text: "name='a'\nkernel='/k'\non_reboot='\(action.rawValue)'\n", file: "a.cfg", extraSettings: [],
                warnings: &warnings)
            #expect(config.onReboot == action)
        }
        for unsupported in ["coredump-destroy", "coredump-restart", "soft-reset"] {
            #expect(throws: XLConfigError(
                "on_poweroff action \"\(unsupported)\" is not supported by Procvisor (supported: destroy, restart, preserve, rename-restart)",
                at: XLConfigLocation(file: "a.cfg", line: 3, column: 1))) {
                try DomainConfig.load(
                    text: "name='a'\nkernel='/k'\non_poweroff='\(unsupported)'\n", file: "a.cfg", extraSettings: [],
                    warnings: &warnings)
            }
        }
    }

    @Test("driver_domain: 0 or 1, anything else is refused")
    func driverDomain() throws {
        var warnings: [String] = []
        func load(_ line: String) throws -> DomainConfig {
            try DomainConfig.load(text: "name='a'\nkernel='/k'\n" + line, file: "a.cfg", extraSettings: [], warnings: &warnings)
        }
        #expect(try load("").driverDomain == false)
        #expect(try load("driver_domain = 1\n").driverDomain == true)
        #expect(try load("driver_domain = 0\n").driverDomain == false)
        #expect(throws: XLConfigError.self) { try load("driver_domain = 2\n") }
        #expect(throws: XLConfigError.self) { try load("driver_domain = \"yes\"\n") }
    }

    @Test("load(path:) reads the file, adds command-line settings after it and names them in errors")
    func loadPath() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cfgload-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("g.cfg").path
        try "name = 'g'\nkernel = '/k'\nmemory = 64\ndisk = [ '/a,raw,xvda' ]\n".write(toFile: path, atomically: true, encoding: .utf8)

        var warnings: [String] = []
        let config = try DomainConfig.load(
            path: path, extraSettings: ["vcpus=2", "disk += [ '/b,raw,xvdb' ]", "colour = 'red'"], warnings: &warnings)
        #expect(config.memory == 64)
        #expect(config.vcpus == 2)
        #expect(config.disks.map(\.vdev) == ["xvda", "xvdb"])
        #expect(warnings == ["command line:3: warning: unknown key 'colour' ignored"])

        #expect(throws: XLConfigError(
            "expected a value (string, number or list) after '=' but found end of file",
            at: XLConfigLocation(file: "command line", line: 2, column: 8))) {
            try DomainConfig.load(path: path, extraSettings: ["vcpus=2", "memory="], warnings: &warnings)
        }
        #expect(throws: XLConfigError(
            "config parsing error in disk specification: unknown value for format: near `bad' in `/c,bad,xvdc' (supported: raw, qcow, qcow2, vhd, qed, empty)",
            at: XLConfigLocation(file: "command line", line: 1, column: 11))) {
            try DomainConfig.load(path: path, extraSettings: ["disk += [ '/c,bad,xvdc' ]"], warnings: &warnings)
        }
        let missing = directory.appendingPathComponent("nope.cfg").path
        #expect(throws: XLConfigError("\(missing): unable to open configuration file: No such file or directory")) {
            try DomainConfig.load(path: missing, extraSettings: [], warnings: &warnings)
        }
    }

    @Test("names: no '/', no control characters, not all digits, at most 64 bytes")
    func names() throws {
        var warnings: [String] = []
        let long = String(repeating: "n", count: 64)
        #expect(try DomainConfig.load(text: "name='\(long)'\nkernel='/k'", file: "n.cfg", extraSettings: [], warnings: &warnings).name == long)
        #expect(throws: XLConfigError(
            "domain name is 65 bytes long; the limit is 64", at: XLConfigLocation(file: "n.cfg", line: 1, column: 1))) {
            try DomainConfig.load(text: "name='\(long)n'\nkernel='/k'", file: "n.cfg", extraSettings: [], warnings: &warnings)
        }
        #expect(throws: XLConfigError(
            "domain name \"a\\tb\" must not contain control characters", at: XLConfigLocation(file: "n.cfg", line: 1, column: 1))) {
            try DomainConfig.load(text: "name='a\\tb'\nkernel='/k'", file: "n.cfg", extraSettings: [], warnings: &warnings)
        }
        // Bytes, not characters: 22 three-byte characters are 66 bytes.
        let wide = String(repeating: "\u{20AC}", count: 22)
        #expect(DomainConfig.nameProblem(wide) == "domain name is 66 bytes long; the limit is 64")
        #expect(DomainConfig.nameProblem(String(repeating: "\u{20AC}", count: 21)) == nil)
        #expect(throws: XLConfigError(
            "domain name \"123\" is all digits and would be taken for a domid", at: XLConfigLocation(file: "n.cfg", line: 1, column: 1))) {
            try DomainConfig.load(text: "name='123'\nkernel='/k'", file: "n.cfg", extraSettings: [], warnings: &warnings)
        }
        #expect(DomainConfig.nameProblem("web1") == nil)
    }

    @Test("Codable round trip")
    func codable() throws {
        var warnings: [String] = []
        let config = try DomainConfig.load(
            text: """
                name = "c"; kernel = "/k"; memory = 100; on_crash = "rename-restart"
                disk = [ '/a,qcow2,xvda,ro,discard', ',,hdc:cdrom,r' ]
                vif = [ 'mac=00:16:3e:00:00:02,rate=1MB/s,mtu=1400' ]
                """, file: "c.cfg", extraSettings: [], warnings: &warnings)
        let decoded = try JSONDecoder().decode(DomainConfig.self, from: JSONEncoder().encode(config))
        #expect(decoded == config)
        #expect(decoded.onCrash == .renameRestart)
    }
}
