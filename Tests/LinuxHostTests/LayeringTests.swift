import Foundation
import Testing

/// LinuxHost is the only door to the C library. These rules are checked on the source tree, so a
/// change that breaks one fails here rather than in review: nothing above LinuxHost imports the
/// C target, and nothing above it locks or waits with raw pthread mutexes and condition
/// variables (LinuxHost's `Lock` and `Condition` have stable addresses and check every call).
@Suite struct LayeringTests {
    static let sources: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources")

    /// Every Swift file of the targets above LinuxHost, with its text.
    static func filesAboveLinuxHost() throws -> [(String, String)] {
        let fm = FileManager.default
        var out: [(String, String)] = []
        for target in try fm.contentsOfDirectory(atPath: sources.path).sorted() where !["LinuxHost", "CProcvisor"].contains(target) {
            let dir = sources.appendingPathComponent(target)
            guard let walker = fm.enumerator(atPath: dir.path) else { continue }
            for case let file as String in walker where file.hasSuffix(".swift") {
                out.append(("\(target)/\(file)", try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)))
            }
        }
        return out
    }

    @Test func theTreeIsThere() throws {
        #expect(try Self.filesAboveLinuxHost().count > 50)
    }

    @Test func nothingAboveLinuxHostImportsTheCTarget() throws {
        for (path, text) in try Self.filesAboveLinuxHost() {
            let imports = text.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("import CProcvisor") }
            #expect(imports.isEmpty, "\(path) imports CProcvisor")
        }
    }

    @Test func nothingAboveLinuxHostUsesRawPthreadLocks() throws {
        let raw = ["pthread_mutex_", "pthread_cond_", "pthread_rwlock_", "pthread_spin_"]
        for (path, text) in try Self.filesAboveLinuxHost() {
            for word in raw where text.contains(word) {
                Issue.record("\(path) calls \(word)*: use LinuxHost's Lock and Condition")
            }
        }
    }
}
