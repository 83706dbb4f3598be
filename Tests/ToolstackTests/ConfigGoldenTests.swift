import Foundation
import Testing
import Toolstack

/// Each `Fixtures/config/NAME.cfg` is parsed into a `DomainConfig` (with the settings in
/// `NAME.args`, one per line, added as on `xl create`'s command line) and the rendering must
/// equal `NAME.expected`: the settings as parsed, the config as JSON, the warnings, or the
/// exact error text.
@Suite("xl.cfg golden files")
struct ConfigGoldenTests {
    @Test("fixture", arguments: ConfigFixtures.configCaseNames())
    func fixture(_ name: String) throws {
        let directory = ConfigFixtures.configDirectory
        let input = directory.appendingPathComponent(name + ".cfg")
        let argsFile = directory.appendingPathComponent(name + ".args")
        let expectedFile = directory.appendingPathComponent(name + ".expected")

        let data = try Data(contentsOf: input)
        let text = try #require(String(data: data, encoding: .utf8), "\(name).cfg is not UTF-8")
        var extras: [String] = []
        if let args = try? String(contentsOf: argsFile, encoding: .utf8) {
            extras = args.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        }
        let actual = ConfigGoldenResult.render(text: text, file: name + ".cfg", extraSettings: extras)
        if ConfigFixtures.updating {
            try actual.write(to: expectedFile, atomically: true, encoding: .utf8)
            return
        }
        let expected = try String(contentsOf: expectedFile, encoding: .utf8)
        #expect(actual == expected, "\(name): output differs from \(name).expected (UPDATE_GOLDEN=1 rewrites it)")
    }

    @Test("there are golden files")
    func fixturesExist() {
        #expect(ConfigFixtures.configCaseNames().count >= 30, "no fixtures found in \(ConfigFixtures.configDirectory.path)")
    }
}
