import Foundation
import Toolstack

/// Where the golden files live, found from this source file so the tests work from any
/// package that compiles them.
enum ConfigFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let configDirectory = directory.appendingPathComponent("config")

    /// Every `Fixtures/config/*.cfg` name without extension, sorted: adding a file adds a case.
    static func configCaseNames() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: configDirectory.path)) ?? []
        return files.filter { $0.hasSuffix(".cfg") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// Set UPDATE_GOLDEN=1 to rewrite `.expected` files from the current output (then review the diff).
    static var updating: Bool { ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] == "1" }
}

/// The deterministic rendering a golden `.expected` file holds.
struct ConfigGoldenResult: Encodable {
    /// Every statement (file then command line) as "FILE:LINE:COL key = value".
    var settings: [String]?
    var config: DomainConfig?
    var commandLine: String?
    var warnings: [String]?
    var error: String?

    /// Parses `text` (plus `extraSettings`, as `xl create cfg KEY=VALUE...`) and renders the result.
    static func render(text: String, file: String, extraSettings: [String]) -> String {
        var result = ConfigGoldenResult()
        if let parsed = try? XLConfigParser.parse(text, file: file),
           let extras = try? XLConfigParser.parse(extraSettings.joined(separator: "\n"), file: "command line"),
           let merged = try? parsed.appending(extras) {
            result.settings = merged.settings.map {
                "\($0.location) \($0.key) \($0.isAppend ? "+=" : "=") \($0.value.configText)"
            }
        }
        var warnings: [String] = []
        do {
            let config = try DomainConfig.load(text: text, file: file, extraSettings: extraSettings, warnings: &warnings)
            result.config = config
            result.commandLine = config.commandLine
        } catch {
            result.error = String(describing: error)
        }
        result.warnings = warnings
        return encode(result)
    }

    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = try! encoder.encode(value)
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
