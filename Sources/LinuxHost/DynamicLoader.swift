import Glibc

/// What the dynamic loader needs from an ELF file: its interpreter, the libraries it names and
/// where it says to look for them. Read with pread from the program and dynamic headers only.
public struct ELFDependencies: Sendable, Equatable {
    /// PT_INTERP: the loader the kernel maps for this program (nil for static programs and libraries).
    public var interpreter: String?
    /// DT_NEEDED, in order.
    public var needed: [String]
    /// DT_RPATH and DT_RUNPATH entries, split on ':' (tokens such as $ORIGIN unexpanded).
    public var rpath: [String]
    public var runpath: [String]

    public struct FormatError: Error, CustomStringConvertible {
        public var path: String
        public var why: String
        public var description: String { "\(path): \(why)" }
    }

    /// Parses `path`; only 64-bit little-endian x86-64 ELF files are accepted (the domain ABI).
    public static func read(_ path: String) throws -> ELFDependencies {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw SystemError("open", path, errno: .current) }
        defer { Glibc.close(fd) }
        func bytes(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
            guard count >= 0, count <= 16 << 20 else { throw FormatError(path: path, why: "implausible header size \(count)") }
            var buf = [UInt8](repeating: 0, count: count)
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            if n < 0 { throw SystemError("pread", path, errno: .current) }
            guard n == count else { throw FormatError(path: path, why: "truncated ELF file") }
            return buf
        }
        let h = try? bytes(0, 64)
        guard let h, h[0] == 0x7f, h[1] == 0x45, h[2] == 0x4c, h[3] == 0x46 else {
            throw FormatError(path: path, why: "not an ELF file (a domain kernel must be an x86-64 ELF executable, not a script)")
        }
        guard h[4] == 2, h[5] == 1 else { throw FormatError(path: path, why: "not a 64-bit little-endian ELF file") }
        guard le16(h, 18) == 62 else { throw FormatError(path: path, why: "not an x86-64 ELF file (e_machine \(le16(h, 18)))") }
        let phoff = le64(h, 32), phentsize = Int(le16(h, 54)), phnum = Int(le16(h, 56))
        guard phentsize >= 56, phnum <= 4096 else { throw FormatError(path: path, why: "bad program header table") }
        let ph = try bytes(phoff, phentsize * phnum)
        var loads: [(vaddr: UInt64, offset: UInt64, filesz: UInt64)] = []
        var dynamic: (offset: UInt64, size: UInt64)?
        var interpreter: String?
        for i in 0..<phnum {
            let b = i * phentsize
            let type = le32(ph, b)
            let offset = le64(ph, b + 8), vaddr = le64(ph, b + 16), filesz = le64(ph, b + 32)
            switch type {
            case 1: loads.append((vaddr, offset, filesz))                        // PT_LOAD
            case 2: dynamic = (offset, filesz)                                   // PT_DYNAMIC
            case 3:                                                              // PT_INTERP
                let s = try bytes(offset, Int(min(filesz, 4096)))
                interpreter = String(decoding: s.prefix { $0 != 0 }, as: UTF8.self)
            default: break
            }
        }
        var result = ELFDependencies(interpreter: interpreter, needed: [], rpath: [], runpath: [])
        guard let dynamic else { return result }
        let dyn = try bytes(dynamic.offset, Int(min(dynamic.size, 1 << 20)))
        var strtabAddr: UInt64?, strsz: UInt64 = 0
        var needed: [UInt64] = [], rpath: [UInt64] = [], runpath: [UInt64] = []
        var i = 0
        while i + 16 <= dyn.count {
            let tag = le64(dyn, i), val = le64(dyn, i + 8)
            i += 16
            switch tag {
            case 0: i = dyn.count                  // DT_NULL
            case 1: needed.append(val)             // DT_NEEDED
            case 5: strtabAddr = val               // DT_STRTAB (an address)
            case 10: strsz = val                   // DT_STRSZ
            case 15: rpath.append(val)             // DT_RPATH
            case 29: runpath.append(val)           // DT_RUNPATH
            default: break
            }
        }
        guard let strtabAddr, strsz > 0 else { return result }
        guard let seg = loads.first(where: { strtabAddr >= $0.vaddr && strtabAddr < $0.vaddr + $0.filesz }) else {
            throw FormatError(path: path, why: "DT_STRTAB outside every PT_LOAD segment")
        }
        let strtab = try bytes(strtabAddr - seg.vaddr + seg.offset, Int(min(strsz, 16 << 20)))
        func string(_ off: UInt64) throws -> String {
            guard off < UInt64(strtab.count) else { throw FormatError(path: path, why: "dynamic string offset out of range") }
            return String(decoding: strtab[Int(off)...].prefix { $0 != 0 }, as: UTF8.self)
        }
        result.needed = try needed.map(string)
        result.rpath = try rpath.flatMap { try string($0).split(separator: ":").map(String.init) }
        result.runpath = try runpath.flatMap { try string($0).split(separator: ":").map(String.init) }
        return result
    }

    static func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
    static func le32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
    static func le64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }
}

/// Finds the files a dynamically linked program loads, as glibc's loader does (DT_RPATH, DT_RUNPATH
/// with $ORIGIN, /etc/ld.so.cache, the system directories), and says where each must sit in a jail
/// that has no /proc and no ld.so.cache for the loader to find it there.
public struct DynamicLoader: Sendable {
    /// glibc's compiled-in search path on x86-64 Debian (`ld.so --help`).
    public static let systemDirectories = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"]

    /// One file of the program's image: the host file and the path the jailed loader opens.
    public struct File: Sendable, Equatable {
        public var source: String
        public var jailPath: String
        public init(source: String, jailPath: String) {
            self.source = source
            self.jailPath = jailPath
        }
    }

    public struct ResolveError: Error, CustomStringConvertible {
        public var description: String
    }

    /// soname -> path from /etc/ld.so.cache (x86-64 libc6 entries without hwcaps).
    let cache: [String: String]

    public init(cachePath: String = "/etc/ld.so.cache") {
        cache = Self.readCache(cachePath)
    }

    /// The program itself (at its real path), its interpreter and every library it needs,
    /// transitively, in the loader's breadth-first order.
    public func resolve(program: String) throws -> [File] {
        guard let exe = Self.realPath(program) else { throw ResolveError(description: "\(program): no such file") }
        let root = try ELFDependencies.read(exe)
        var files = [File(source: exe, jailPath: exe)]
        if let interp = root.interpreter {
            guard let real = Self.realPath(interp) else {
                throw ResolveError(description: "\(program): its loader \(interp) does not exist on this host")
            }
            files.append(File(source: real, jailPath: interp))
        }
        // (object path, its dependencies, whether it is the executable, its RPATH chain for deps without RUNPATH)
        var queue: [(path: String, deps: ELFDependencies, isMain: Bool, chain: [(String, [String])])] =
            [(exe, root, true, [])]
        var loaded: Set<String> = []
        var head = 0
        while head < queue.count {
            let object = queue[head]
            head += 1
            let chain = object.chain + [(object.path, object.deps.rpath)]
            for name in object.deps.needed where !loaded.contains(name) {
                loaded.insert(name)
                let (found, usableInJail) = try find(name, for: object.path, deps: object.deps, isMain: object.isMain, chain: chain)
                guard let real = Self.realPath(found) else { throw ResolveError(description: "\(found): vanished while resolving \(program)") }
                let jailPath = usableInJail ? found : Self.systemDirectories[0] + "/" + Self.baseName(name)
                if !files.contains(where: { $0.jailPath == jailPath }) {
                    files.append(File(source: real, jailPath: jailPath))
                }
                let deps = try ELFDependencies.read(real)
                queue.append((found, deps, false, deps.runpath.isEmpty ? chain : []))
            }
        }
        return files
    }

    /// The first match in the loader's order, and whether the jailed loader would find it at the
    /// same path (it cannot expand the executable's $ORIGIN without /proc, and has no cache).
    func find(_ name: String, for object: String, deps: ELFDependencies, isMain: Bool,
              chain: [(String, [String])]) throws -> (String, Bool) {
        if name.contains("/") {
            guard FileIO.exists(name) else { throw ResolveError(description: "\(object) needs \(name), which does not exist") }
            return (name, true)
        }
        var searched: [String] = []
        func look(_ dirs: [String], origin: String, originUsable: Bool) -> (String, Bool)? {
            for entry in dirs {
                let usesOrigin = entry.contains("$ORIGIN") || entry.contains("${ORIGIN}")
                let dir = entry.replacing("${ORIGIN}", with: origin).replacing("$ORIGIN", with: origin)
                searched.append(dir)
                let candidate = dir + "/" + name
                if FileIO.exists(candidate) { return (candidate, !usesOrigin || originUsable) }
            }
            return nil
        }
        if deps.runpath.isEmpty {
            // DT_RPATH of the object, then of each object that loaded it, up to the executable.
            for (loader, rpath) in chain.reversed() {
                if let hit = look(rpath, origin: Self.dirName(loader), originUsable: loader != chain.first?.0) { return hit }
            }
        } else if let hit = look(deps.runpath, origin: Self.dirName(object), originUsable: !isMain) {
            return hit
        }
        if let path = cache[name], FileIO.exists(path) {
            return (path, Self.systemDirectories.contains(Self.dirName(path)))
        }
        if let hit = look(Self.systemDirectories, origin: "", originUsable: true) { return hit }
        throw ResolveError(description: "\(object) needs \(name), not found (searched \(searched.joined(separator: ":")), /etc/ld.so.cache)")
    }

    /// Parses glibc's "glibc-ld.so.cache1.1" format; an unreadable or older cache gives no entries.
    static func readCache(_ path: String) -> [String: String] {
        guard let b = try? FileIO.read(path, limit: 64 << 20), b.count >= 48 else { return [:] }
        let magic = Array("glibc-ld.so.cache1.1".utf8)
        guard Array(b[0..<20]) == magic else { return [:] }
        let nlibs = Int(ELFDependencies.le32(b, 20))
        var out: [String: String] = [:]
        func string(_ off: UInt32) -> String? {
            let o = Int(off)
            guard o < b.count else { return nil }
            return String(decoding: b[o...].prefix { $0 != 0 }, as: UTF8.self)
        }
        for i in 0..<nlibs {
            let e = 48 + i * 24
            guard e + 24 <= b.count else { break }
            let flags = ELFDependencies.le32(b, e)
            let hwcap = ELFDependencies.le64(b, e + 16)
            // FLAG_ELF_LIBC6 (3) with FLAG_X8664_LIB64 (0x0300); entries for glibc-hwcaps subdirectories carry a hwcap.
            guard flags & 0xff == 3, flags & 0xff00 == 0x0300, hwcap == 0 else { continue }
            guard let key = string(ELFDependencies.le32(b, e + 4)), let value = string(ELFDependencies.le32(b, e + 8)) else { continue }
            if out[key] == nil { out[key] = value }
        }
        return out
    }

    public static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    static func dirName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func baseName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}
