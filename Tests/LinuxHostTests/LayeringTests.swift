import Foundation
import Testing

/// LinuxHost is the only door to the C library. These rules are checked on the source tree, so a
/// change that breaks one fails here rather than in review: nothing above LinuxHost imports the
/// C target; nothing above it locks or waits with raw pthread mutexes and condition variables
/// (LinuxHost's `Lock` and `Condition` have stable addresses and check every call); nothing
/// above it makes the raw memory, poll, positional I/O, stat, socket-message or eventfd calls
/// LinuxHost wraps; and only the files on a documented allow-list import Glibc at all.
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

    /// A package outside this repository can depend on DomainRuntime, SplitDrivers and NetStack
    /// only if no target it pulls in carries `unsafeFlags` (SwiftPM refuses them in dependencies).
    @Test func noTargetCarriesUnsafeFlags() throws {
        let manifest = try String(contentsOf: Self.sources.deletingLastPathComponent().appendingPathComponent("Package.swift"), encoding: .utf8)
        let code = manifest.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("//") }
        for line in code where line.contains("unsafeFlags") {
            Issue.record("Package.swift: \(line.trimmingCharacters(in: .whitespaces))")
        }
        #expect(code.count > 20)
    }

    @Test func theTreeIsThere() throws {
        #expect(try Self.filesAboveLinuxHost().count > 50)
    }

    /// Full Foundation brings ICU with it: about 7 ms more to start each procvisord (a live
    /// update's pause pays it), xl and domain kernel. FoundationEssentials has what the sources
    /// use (JSON coding, Data).
    @Test func noShippedTargetImportsAllOfFoundation() throws {
        for (path, text) in try Self.filesAboveLinuxHost() {
            let imports = text.split(separator: "\n").filter {
                let t = $0.trimmingCharacters(in: .whitespaces)
                return t == "import Foundation" || t.hasPrefix("import Foundation.") || t.hasSuffix(" import Foundation")
            }
            #expect(imports.isEmpty, "\(path) imports Foundation (use FoundationEssentials)")
        }
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

    // MARK: raw C calls

    /// A C call: the bare name (not a method `.name(`, not a declaration `func name(`) or one
    /// qualified with `Glibc.`, followed by its opening parenthesis.
    static func cCall(_ names: [String]) -> String {
        #"(?<!func )(?:\bGlibc\.|(?<![\w.]))(?:"# + names.joined(separator: "|") + #")\("#
    }

    /// The C calls LinuxHost wraps, and the wrapper to use instead.
    static let rawCalls: [(what: String, pattern: String, instead: String)] = [
        ("mmap/munmap/mremap", cCall(["mmap", "mmap64", "munmap", "mremap"]), "SharedMapping (or its static map/unmap)"),
        // poll(2) only: its first argument is a pointer (`&fds`) or a plain expression followed by
        // a comma, which tells it from Swift methods named poll (labelled arguments).
        ("poll", #"(?<!func )(?:\bGlibc\.poll\(|(?<![\w.])poll\(\s*(?:&|[\w$.]+\s*,))"#, "Poll"),
        ("ppoll/select", cCall(["ppoll", "select", "pselect"]), "Poll"),
        ("pread/pwrite/preadv/pwritev", cCall(["pread", "pread64", "pwrite", "pwrite64", "preadv", "preadv2", "pwritev", "pwritev2"]),
         "FileDescriptor.read(into:at:), write(from:at:), read(vector:count:at:), write(vector:count:at:)"),
        ("stat/fstat/lstat", cCall(["stat", "stat64", "fstat", "fstat64", "lstat", "lstat64", "fstatat", "statx"]), "FileStatus"),
        ("recv/recvmsg/sendmsg", cCall(["recv", "recvfrom", "recvmsg", "recvmmsg", "sendmsg", "sendmmsg", "sendto"]),
         "FileDescriptor.receive(into:dontWait:), UnixSocket.send/receive"),
        // send is a common Swift method name: only the qualified C call is caught.
        ("send", #"\bGlibc\.send\("#, "FileDescriptor.send(_:dontWait:)"),
        ("eventfd", cCall(["eventfd", "eventfd_read", "eventfd_write"]), "EventFD"),
    ]

    /// Swift code only: comments and string literals blanked (string interpolations stay, they are
    /// code), newlines kept so line numbers hold.
    static func codeOnly(_ text: String) -> String {
        enum Mode { case code, string(multiline: Bool), interpolation(depth: Int) }
        let b = Array(text.utf8)
        var out = b
        var stack: [Mode] = [.code]
        var i = 0
        func at(_ k: Int, _ s: String) -> Bool {
            let u = Array(s.utf8)
            return k + u.count <= b.count && Array(b[k..<(k + u.count)]) == u
        }
        func blank(_ from: Int, _ to: Int) {
            for k in from..<min(to, b.count) where b[k] != UInt8(ascii: "\n") { out[k] = UInt8(ascii: " ") }
        }
        while i < b.count {
            switch stack[stack.count - 1] {
            case .code, .interpolation:
                if at(i, "//") {
                    var j = i
                    while j < b.count && b[j] != UInt8(ascii: "\n") { j += 1 }
                    blank(i, j); i = j
                } else if at(i, "/*") {
                    var j = i + 2
                    while j < b.count && !at(j, "*/") { j += 1 }
                    blank(i, j + 2); i = j + 2
                } else if at(i, "\"\"\"") {
                    stack.append(.string(multiline: true)); blank(i, i + 3); i += 3
                } else if b[i] == UInt8(ascii: "\"") {
                    stack.append(.string(multiline: false)); blank(i, i + 1); i += 1
                } else {
                    if case let .interpolation(depth) = stack[stack.count - 1] {
                        if b[i] == UInt8(ascii: "(") { stack[stack.count - 1] = .interpolation(depth: depth + 1) }
                        if b[i] == UInt8(ascii: ")") {
                            if depth == 0 { stack.removeLast(); blank(i, i + 1); i += 1; continue }
                            stack[stack.count - 1] = .interpolation(depth: depth - 1)
                        }
                    }
                    i += 1
                }
            case let .string(multiline):
                if b[i] == UInt8(ascii: "\\") {
                    if at(i + 1, "(") { stack.append(.interpolation(depth: 0)) }
                    blank(i, i + 2); i += 2
                } else if multiline && at(i, "\"\"\"") {
                    stack.removeLast(); blank(i, i + 3); i += 3
                } else if !multiline && (b[i] == UInt8(ascii: "\"") || b[i] == UInt8(ascii: "\n")) {
                    stack.removeLast(); blank(i, i + 1); i += 1
                } else {
                    blank(i, i + 1); i += 1
                }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The raw calls in `text`: (line number, what, the wrapper to use).
    static func rawCallSites(in text: String) throws -> [(line: Int, what: String, instead: String)] {
        let regexes = try rawCalls.map { (try NSRegularExpression(pattern: $0.pattern), $0.what, $0.instead) }
        var found: [(Int, String, String)] = []
        for (n, line) in codeOnly(text).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let s = String(line)
            for (re, what, instead) in regexes where re.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) != nil {
                found.append((n + 1, what, instead))
            }
        }
        return found
    }

    /// No exemptions: every file above LinuxHost is held to `rawCalls`.
    @Test func nothingAboveLinuxHostMakesRawCallsLinuxHostWraps() throws {
        for (path, text) in try Self.filesAboveLinuxHost() {
            for site in try Self.rawCallSites(in: text) {
                Issue.record("\(path):\(site.line) calls \(site.what) directly: use LinuxHost's \(site.instead)")
            }
        }
    }

    /// The rule's patterns catch what they should and nothing else, comments and strings aside.
    @Test func rawCallPatternsTellCFunctionsFromSwiftMethods() throws {
        let caught = [
            "let p = mmap(nil, 4096, PROT_READ, MAP_SHARED, fd, 0)", "munmap(p, 4096)", "_ = Glibc.munmap(p, 4096)",
            "_ = poll(&fds, 2, -1)", "let n = Glibc.poll(p, 1, 0)", "poll(fds, nfds_t(1), 0)",
            "var st = stat()", "guard stat(path, &st) == 0", "fstat(fd.rawValue, &st)", "lstat(path, &st)",
            "pread(fd, buf, 512, 0)", "let rc = preadv(disk, v, n, off)", "pwritev(disk, v, n, off)", "pwrite(fd, p, 1, 0)",
            "let n = Glibc.recv(fd, p, 10, 0)", "recvmsg(fd, &msg, 0)", "sendmsg(fd, &msg, 0)", "Glibc.send(fd, p, n, 0)",
            "let fd = eventfd(0, 0)",
        ]
        let passed = [
            "public func poll() -> [Port] {", "func poll(timeoutNs: Int64) -> Int", "poll(timeoutNs: deadline.remainingNs())",
            "link.poll(timeoutNs: t) { frame in }", "try p.wait(timeoutMs: -1)", "let st = try FileStatus(path: p)",
            "try FileDescriptor.eventfd()", "SharedMapping.map(fd, length: 4096)", "SharedMapping.unmap(base, length: 4096)",
            "c.send(.error(\"x\"))", "fd.receive(into: p, dontWait: true)", "statFields(pid)", "ProcFS.stat(pid)",
            "// mmap(nil, 4096, …) in a comment", "let s = \"mmap(MAP_FIXED): \\(e)\"", "/// fstat() as glibc implements it",
        ]
        for line in caught { #expect(try !Self.rawCallSites(in: line).isEmpty, "not caught: \(line)") }
        for line in passed { #expect(try Self.rawCallSites(in: line).isEmpty, "caught wrongly: \(line)") }
        // Interpolated code is code.
        #expect(try !Self.rawCallSites(in: #"print("\(mmap(nil, 1, 0, 0, -1, 0)!)")"#).isEmpty)
        #expect(try Self.rawCallSites(in: "let a = 1\n/* munmap(p, 1)\n */ let b = 2\nmunmap(p, 1)").map(\.line) == [4])
    }

    // MARK: import Glibc

    /// The files above LinuxHost that may still import Glibc, and why. Everything else uses
    /// LinuxHost's Swift types; a file that needs something more of the C library gets it added
    /// to LinuxHost rather than an entry here, unless the need is its own (a portable target).
    static let glibcAllowList: [String: String] = [:]

    static func importsGlibc(_ text: String) -> Bool {
        text.split(separator: "\n").contains { line in
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                .filter { !$0.hasPrefix("@") }  // @_implementationOnly, @preconcurrency …
            guard words.first == "import", words.count >= 2 else { return false }
            // `import Glibc`, `import func Glibc.mmap`, `import struct Glibc.stat` …
            let module = (words.count >= 3 ? words[2] : words[1]).split(separator: ".").first
            return module == "Glibc"
        }
    }

    @Test func onlyAllowListedFilesAboveLinuxHostImportGlibc() throws {
        var importing: [String] = []
        for (path, text) in try Self.filesAboveLinuxHost() where Self.importsGlibc(text) {
            importing.append(path)
            if Self.glibcAllowList[path] == nil {
                Issue.record("\(path) imports Glibc: use LinuxHost's Swift types (add what is missing to LinuxHost), or put it on glibcAllowList with the reason")
            }
        }
        for path in Set(Self.glibcAllowList.keys).subtracting(importing).sorted() {
            Issue.record("\(path) is on glibcAllowList but does not import Glibc (any more): take it off")
        }
        #expect(importing.count == Self.glibcAllowList.count, "files above LinuxHost importing Glibc: \(importing.sorted())")
    }

    @Test func glibcImportsAreRecognised() {
        #expect(Self.importsGlibc("import Glibc\n"))
        #expect(Self.importsGlibc("#if canImport(Glibc)\n  import Glibc\n#endif"))
        #expect(Self.importsGlibc("@_implementationOnly import Glibc"))
        #expect(Self.importsGlibc("import func Glibc.mmap"))
        #expect(!Self.importsGlibc("import LinuxHost\nimport GlibcExtras\n// import Glibc\n"))
    }
}

/// The README and docs/ describe what is built and stand alone: a reader has only this
/// repository, so they point at nothing outside it (no design file of the team's, no issue
/// tracker) and every relative link between them leads to a file that is there.
@Suite struct DocsStandAloneTests {
    static let root = LayeringTests.sources.deletingLastPathComponent()

    static func documents() throws -> [(String, String)] {
        let docs = root.appendingPathComponent("docs")
        var out = [("README.md", try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8))]
        for f in try FileManager.default.contentsOfDirectory(atPath: docs.path).sorted() where f.hasSuffix(".md") {
            out.append(("docs/" + f, try String(contentsOf: docs.appendingPathComponent(f), encoding: .utf8)))
        }
        return out
    }

    @Test func docsPointAtNothingOutsideTheRepository() throws {
        let docs = try Self.documents()
        #expect(docs.count > 10)
        for (name, text) in docs {
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let lower = line.lowercased()
                for word in ["design.md", "style.md", "../shared", "issues show", "issue #"] where lower.contains(word) {
                    Issue.record("\(name):\(i + 1) points outside the repository (\(word)): \(line)")
                }
                // "issue 12", "issues 3 and 4": the tracker's numbers mean nothing to a reader.
                let words = lower.split(whereSeparator: { !$0.isLetter && !$0.isNumber })
                for (a, b) in zip(words, words.dropFirst()) where (a == "issue" || a == "issues") && Int(b) != nil {
                    Issue.record("\(name):\(i + 1) names an issue number: \(line)")
                }
            }
        }
    }

    @Test func relativeLinksLeadToFilesThatAreThere() throws {
        for (name, text) in try Self.documents() {
            let base = name.contains("/") ? Self.root.appendingPathComponent("docs") : Self.root
            var rest = Substring(text)
            while let open = rest.range(of: "](") {
                let after = rest[open.upperBound...]
                guard let close = after.firstIndex(of: ")") else { break }
                let target = String(after[..<close]).split(separator: "#").first.map(String.init) ?? ""
                rest = after[close...]
                if target.isEmpty || target.contains("://") || target.hasPrefix("mailto:") { continue }
                let path = base.appendingPathComponent(target).path
                #expect(FileManager.default.fileExists(atPath: path), "\(name) links to \(target), which is not there")
            }
        }
    }
}
