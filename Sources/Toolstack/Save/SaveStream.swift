import LinuxHost
import ProcvisorABI

/// The save file and migration stream (docs/save-restore.md). Xen's layout in three layers:
///
/// 1. xl's header (`xl_saverestore.c`): 32 bytes of magic, the byte-order word 0x01020304,
///    mandatory flags, optional flags, the optional-data length; then the optional data: a u32
///    config length, the config (JSON, `XL_MANDATORY_FLAG_JSON`), and a CRC-32C of everything
///    before it (Procvisor's addition; a reader that does not know it skips it as xl does).
/// 2. libxc's image header (big-endian: marker ~0, id "XENF", version 3, options) and domain
///    header (type, page shift, Xen version), as in libxc's migration stream v3.
/// 3. Records: u32 type (bit 31: optional), u32 body length, the body, zero padding to 8 bytes.
///    PAGE_DATA is libxc's (count, then pfns with the page type in bits 60–63, then the pages
///    that carry data). Every record is followed by an optional CHECKSUM record holding the
///    CRC-32C of the record it follows (header, body and padding), so a flipped byte anywhere is
///    found and named by record and offset.
public enum SaveFormat {
    /// xl's `savefileheader_magic`.
    public static let xlMagic: [UInt8] = Array("Xen saved domain, xl format\n \0 \r".utf8)
    public static let byteOrder: UInt32 = 0x0102_0304
    /// `XL_MANDATORY_FLAG_JSON`: the config is libxl JSON (here: the toolstack's config as JSON).
    public static let mandatoryJSON: UInt32 = 1 << 0
    /// `XL_MANDATORY_FLAG_STREAMv2`: a v2-or-later stream follows the header.
    public static let mandatoryStreamV2: UInt32 = 1 << 1
    public static let knownMandatory: UInt32 = mandatoryJSON | mandatoryStreamV2
    public static let xlHeaderSize = 48
    /// libxc's image header.
    public static let imageMarker: UInt64 = ~0
    public static let imageID: UInt32 = 0x5845_4E46  // "XENF"
    public static let version: UInt32 = 3
    public static let oldestVersion: UInt32 = 2
    /// libxl's own stream ident ("LibxlFmt"), which Xen's xl writes where this format has the
    /// image header: recognised only to name a file Xen wrote.
    public static let libxlIdent: UInt64 = 0x4C69_6278_6C46_6D74
    /// The domain type of a Procvisor domain, after libxc's x86 PV (1), HVM (2), PVH (3), ARM (4).
    public static let domainType: UInt32 = 0x0100
    public static let pageShift: UInt16 = 12
    public static let pageSize = 4096
    /// Pages per PAGE_DATA record (libxc's `MAX_BATCH_SIZE` is 1024; 512 keeps a record and its
    /// header within one writev).
    public static let maxBatch = 512
    /// The largest body of a record that is not PAGE_DATA.
    public static let maxRecordBody = 16 << 20
    /// The largest config in the xl header.
    public static let maxConfig = 1 << 20

    public static func domainTypeName(_ t: UInt32) -> String {
        switch t {
        case 0: return "invalid"
        case 1: return "x86 PV"
        case 2: return "x86 HVM"
        case 3: return "x86 PVH"
        case 4: return "ARM"
        case domainType: return "Procvisor PV"
        default: return "unknown"
        }
    }
}

/// A record type: libxc's numbers where libxc has the record, Procvisor's from 0x10000 on.
public struct SaveRecordType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let optionalBit: UInt32 = 0x8000_0000
    public var isOptional: Bool { rawValue & Self.optionalBit != 0 }

    public static let end = SaveRecordType(rawValue: 0x0000_0000)
    public static let pageData = SaveRecordType(rawValue: 0x0000_0001)
    /// libxc's CHECKPOINT: the end of one round of a checkpointed stream.
    public static let checkpoint = SaveRecordType(rawValue: 0x0000_000E)
    /// The domain's identity as JSON (`SavedDomainInfo`).
    public static let domainInfo = SaveRecordType(rawValue: 0x0001_0001)
    /// u64 span pages, u64 maximum pages, u64 populated pages.
    public static let memory = SaveRecordType(rawValue: 0x0001_0002)
    /// The guest's XenStore nodes, as libxl's XENSTORE_DATA: `path\0value\0` pairs, paths
    /// relative to the domain's home.
    public static let xenstoreData = SaveRecordType(rawValue: 0x0001_0003)
    /// The console history, oldest byte first.
    public static let console = SaveRecordType(rawValue: 0x0001_0004)
    /// What the guest's suspend hook handed over, returned to it by `Domain.start()`.
    public static let resumeRecord = SaveRecordType(rawValue: 0x0001_0005)
    /// u32 CRC-32C of the record before it, u32 zero.
    public static let checksum = SaveRecordType(rawValue: 0x8001_0006)

    public var description: String {
        switch self {
        case .end: return "END"
        case .pageData: return "PAGE_DATA"
        case .checkpoint: return "CHECKPOINT"
        case .domainInfo: return "DOMAIN_INFO"
        case .memory: return "MEMORY"
        case .xenstoreData: return "XENSTORE_DATA"
        case .console: return "CONSOLE"
        case .resumeRecord: return "RESUME_RECORD"
        case .checksum: return "CHECKSUM"
        default: return "type 0x" + String(rawValue, radix: 16)
        }
    }
}

/// The type of a page in PAGE_DATA (libxc's `XEN_DOMCTL_PFINFO_*` >> 28).
public enum SavePageType: UInt8, Sendable {
    /// A page with contents (NOTAB).
    case normal = 0x0
    /// Populated, no contents sent: it reads as zero (XALLOC).
    case allocated = 0xE
    /// Not populated (XTAB): a later round says the page went away.
    case absent = 0xF

    public var carriesData: Bool { self == .normal }
    static let shift: UInt64 = 60
    static let pfnMask: UInt64 = (1 << 52) - 1
}

/// The domain's memory layout (the MEMORY record).
public struct SavedMemory: Codable, Equatable, Sendable {
    public var spanPages: UInt64
    public var maxPages: UInt64
    public var populatedPages: UInt64
    public init(spanPages: UInt64, maxPages: UInt64, populatedPages: UInt64) {
        self.spanPages = spanPages
        self.maxPages = maxPages
        self.populatedPages = populatedPages
    }
}

/// A refused stream: where and what.
public struct SaveStreamError: Error, CustomStringConvertible, Equatable {
    /// 1-based index of the record (CHECKSUM records count too); nil in the headers.
    public var record: Int?
    public var type: SaveRecordType?
    public var offset: UInt64
    public var problem: String

    public init(record: Int?, type: SaveRecordType?, offset: UInt64, problem: String) {
        self.record = record
        self.type = type
        self.offset = offset
        self.problem = problem
    }

    public var description: String {
        if let record {
            return "record \(record)\(type.map { " (\($0))" } ?? "") at offset \(offset): \(problem)"
        }
        return "offset \(offset): \(problem)"
    }
}

// MARK: writing

/// Where a writer's bytes go. `write` takes every piece, in order, or throws.
public protocol SaveStreamSink: AnyObject {
    func write(_ pieces: [UnsafeRawBufferPointer]) throws
}

/// Writes a stream piece by piece: small records are buffered, page contents go to the sink
/// straight from where they are (no copy).
public final class SaveStreamWriter {
    private let sink: SaveStreamSink
    private var buffer: [UInt8] = []
    public private(set) var offset: UInt64 = 0

    public init(sink: SaveStreamSink) {
        self.sink = sink
        buffer.reserveCapacity(64 << 10)
    }

    /// xl's header and the config.
    public func xlHeader(config: [UInt8]) {
        var w = WireWriter(capacity: SaveFormat.xlHeaderSize + config.count + 8)
        w.raw(SaveFormat.xlMagic)
        w.u32(SaveFormat.byteOrder)
        w.u32(SaveFormat.mandatoryJSON | SaveFormat.mandatoryStreamV2)
        w.u32(0)
        w.u32(UInt32(4 + config.count + 4))
        w.u32(UInt32(config.count))
        w.raw(config)
        w.u32(Checksum.crc32c(w.bytes))
        append(w.bytes)
    }

    /// libxc's image header and domain header.
    public func imageHeader(xenMajor: UInt32, xenMinor: UInt32) {
        var h: [UInt8] = []
        func be(_ v: UInt64, _ n: Int) { for i in (0..<n).reversed() { h.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        be(SaveFormat.imageMarker, 8)
        be(UInt64(SaveFormat.imageID), 4)
        be(UInt64(SaveFormat.version), 4)
        be(0, 2)  // options: bit 0 clear = little-endian records
        be(0, 6)
        var w = WireWriter(capacity: 16)
        w.u32(SaveFormat.domainType)
        w.u16(SaveFormat.pageShift)
        w.u16(0)
        w.u32(xenMajor)
        w.u32(xenMinor)
        append(h)
        append(w.bytes)
        // The headers' own checksum: nothing in the stream goes unchecked.
        appendChecksum(Checksum.crc32c(w.bytes, Checksum.crc32c(h)))
    }

    /// One record (not PAGE_DATA) and its checksum.
    public func record(_ type: SaveRecordType, _ body: [UInt8]) {
        var w = WireWriter(capacity: 8 + body.count + 8)
        w.u32(type.rawValue)
        w.u32(UInt32(body.count))
        w.raw(body)
        for _ in 0..<Self.padding(body.count) { w.u8(0) }
        let crc = Checksum.crc32c(w.bytes)
        append(w.bytes)
        appendChecksum(crc)
    }

    /// One PAGE_DATA record: `pages` in order, the contents of those that carry data lying one
    /// after the other from `data` (a buffer the caller filled, ideally still hot in the cache:
    /// it is checksummed in one pass and sent as one piece). At most `SaveFormat.maxBatch` pages.
    public func pages(_ pages: [(pfn: UInt64, type: SavePageType)], contiguous data: UnsafeRawPointer) throws {
        let (withData, headerCRC) = header(pages)
        let block = UnsafeRawBufferPointer(start: data, count: withData * SaveFormat.pageSize)
        let crc = Checksum.crc32c(block, headerCRC)
        // The body is a multiple of 8 already: no padding.
        try flush(then: withData > 0 ? [block] : [])
        appendChecksum(crc)
    }

    /// One PAGE_DATA record: `pages` in order, with `data(i)` giving the contents of the i-th
    /// page that carries data (pages that nothing writes while they are sent). At most
    /// `SaveFormat.maxBatch` pages.
    public func pages(_ pages: [(pfn: UInt64, type: SavePageType)], data: (Int) -> UnsafeRawPointer) throws {
        let (withData, headerCRC) = header(pages)
        var crc = headerCRC
        var pieces: [UnsafeRawBufferPointer] = []
        pieces.reserveCapacity(withData)
        for i in 0..<withData {
            let page = UnsafeRawBufferPointer(start: data(i), count: SaveFormat.pageSize)
            crc = Checksum.crc32c(page, crc)
            pieces.append(page)
        }
        try flush(then: pieces)
        appendChecksum(crc)
    }

    /// Buffers a PAGE_DATA record's header and pfn list; returns how many pages carry data and
    /// the checksum so far.
    private func header(_ pages: [(pfn: UInt64, type: SavePageType)]) -> (Int, UInt32) {
        precondition(pages.count <= SaveFormat.maxBatch && !pages.isEmpty)
        let withData = pages.reduce(0) { $0 + ($1.type.carriesData ? 1 : 0) }
        let bodyLength = 8 + 8 * pages.count + withData * SaveFormat.pageSize
        var w = WireWriter(capacity: 16 + 8 * pages.count)
        w.u32(SaveRecordType.pageData.rawValue)
        w.u32(UInt32(bodyLength))
        w.u32(UInt32(pages.count))
        w.u32(0)
        for p in pages { w.u64(p.pfn & SavePageType.pfnMask | UInt64(p.type.rawValue) << SavePageType.shift) }
        append(w.bytes)
        return (withData, Checksum.crc32c(w.bytes))
    }

    /// The END record; flushes.
    public func end() throws {
        record(.end, [])
        try flush()
    }

    /// Hands buffered bytes to the sink.
    public func flush() throws { try flush(then: []) }

    private func flush(then pieces: [UnsafeRawBufferPointer]) throws {
        let all = pieces.reduce(0) { $0 + $1.count }
        if buffer.isEmpty && pieces.isEmpty { return }
        try buffer.withUnsafeBytes { b in
            try sink.write(buffer.isEmpty ? pieces : [b] + pieces)
        }
        offset += UInt64(buffer.count + all)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Buffered until the next flush (`offset` counts bytes handed to the sink).
    private func append(_ bytes: [UInt8]) {
        buffer += bytes
    }

    private func appendChecksum(_ crc: UInt32) {
        var w = WireWriter(capacity: 16)
        w.u32(SaveRecordType.checksum.rawValue)
        w.u32(8)
        w.u32(crc)
        w.u32(0)
        append(w.bytes)
    }

    static func padding(_ n: Int) -> Int { (8 - n % 8) % 8 }
}

// MARK: reading

/// Where a reader's bytes come from: fills some of the buffer, 0 at the end of the stream.
public protocol SaveStreamSource: AnyObject {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Fills some of `buffers`, in order (a vectored read); 0 at the end of the stream.
    func read(into buffers: [UnsafeMutableRawBufferPointer]) throws -> Int
}

extension SaveStreamSource {
    public func read(into buffers: [UnsafeMutableRawBufferPointer]) throws -> Int {
        guard let first = buffers.first(where: { $0.count > 0 }) else { return 0 }
        return try read(into: first)
    }
}

/// xl's header as read.
public struct XLSaveHeader: Sendable {
    public var mandatoryFlags: UInt32
    public var optionalFlags: UInt32
    public var config: [UInt8]
    /// The config is JSON (`XL_MANDATORY_FLAG_JSON`), else xl.cfg text.
    public var isJSON: Bool { mandatoryFlags & SaveFormat.mandatoryJSON != 0 }
}

/// What `next` returns: a record, checked against its checksum.
public enum SaveRecord {
    /// A PAGE_DATA record; the pages' contents went where the reader's `pageDestination` said.
    case pages([(pfn: UInt64, type: SavePageType)])
    /// Any other record the reader knows, with its body.
    case data(SaveRecordType, [UInt8])
    case end
}

/// Reads a stream and refuses, naming the record and offset, anything truncated, corrupted,
/// foreign or newer than itself. It never reads past the END record, so what follows on a pipe
/// (the migration handshake) is left for the caller.
public final class SaveStreamReader {
    private let source: SaveStreamSource
    public private(set) var offset: UInt64 = 0
    public private(set) var recordIndex = 0
    private var current: SaveRecordType?

    public init(source: SaveStreamSource) {
        self.source = source
    }

    private func error(_ problem: String, at: UInt64? = nil) -> SaveStreamError {
        SaveStreamError(record: recordIndex > 0 ? recordIndex : nil, type: recordIndex > 0 ? current : nil, offset: at ?? offset, problem: problem)
    }

    /// Reads exactly `count` bytes into `p`.
    private func fill(_ p: UnsafeMutableRawBufferPointer, _ what: String, start: UInt64) throws {
        var done = 0
        while done < p.count {
            let n: Int
            do {
                n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: p[done...]))
            } catch {
                throw self.error("reading \(what): \(error)", at: start)
            }
            if n == 0 {
                throw self.error("truncated: \(what) needs \(p.count) bytes from offset \(offset - UInt64(done)), the stream ends at offset \(offset)", at: start)
            }
            done += n
            offset += UInt64(n)
        }
    }

    private func bytes(_ count: Int, _ what: String, start: UInt64) throws -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        try b.withUnsafeMutableBytes { try fill($0, what, start: start) }
        return b
    }

    /// xl's header and its config. Refuses another program's file, another byte order and
    /// mandatory flags this reader does not know.
    public func xlHeader() throws -> XLSaveHeader {
        let h = try bytes(SaveFormat.xlHeaderSize, "the xl header", start: 0)
        guard Array(h[0..<32]) == SaveFormat.xlMagic else {
            throw error("not an xl save file (its first 32 bytes are not xl's \"Xen saved domain, xl format\" magic)", at: 0)
        }
        var r = WireReader(Array(h[32...]), what: "xl header")
        let order = try r.u32()
        if order != SaveFormat.byteOrder {
            throw error("saved on a host of another byte order (byte-order word 0x\(String(order, radix: 16)))", at: 32)
        }
        let mandatory = try r.u32(), optional = try r.u32(), optionalLength = Int(try r.u32())
        if mandatory & ~SaveFormat.knownMandatory != 0 {
            throw error("mandatory flags 0x\(String(mandatory, radix: 16)) include ones this toolstack does not know (it knows 0x\(String(SaveFormat.knownMandatory, radix: 16)))", at: 36)
        }
        if mandatory & SaveFormat.mandatoryStreamV2 == 0 {
            throw error("a legacy (pre-v2) xl stream: only v2 and later streams are read", at: 36)
        }
        guard optionalLength >= 4, optionalLength <= SaveFormat.maxConfig + 8 else {
            throw error("optional data of \(optionalLength) bytes (the config must be there, at most \(SaveFormat.maxConfig) bytes)", at: 44)
        }
        let optionalData = try bytes(optionalLength, "the xl header's optional data", start: 48)
        var o = WireReader(optionalData, what: "xl optional data")
        let configLength = Int(try o.u32())
        guard configLength <= optionalLength - 4 else {
            throw error("the config is \(configLength) bytes but the optional data holds \(optionalLength - 4)", at: 48)
        }
        let config = Array(optionalData[4..<(4 + configLength)])
        if optionalLength == 4 + configLength {
            throw error("an xl header with no Procvisor checksum after the config: a file written by Xen's xl, or corrupted", at: 44)
        }
        guard optionalLength == 4 + configLength + 4 else {
            throw error("the xl header's optional data (\(optionalLength) bytes) is not the config (\(configLength) bytes) and its checksum: corrupted", at: 44)
        }
        do {
            let stored = UInt32(optionalData[4 + configLength]) | UInt32(optionalData[5 + configLength]) << 8
                | UInt32(optionalData[6 + configLength]) << 16 | UInt32(optionalData[7 + configLength]) << 24
            let computed = Checksum.crc32c(h + optionalData[..<(4 + configLength)])
            if stored != computed {
                throw error("the xl header or its config is corrupted (checksum 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))", at: 0)
            }
        }
        return XLSaveHeader(mandatoryFlags: mandatory, optionalFlags: optional, config: config)
    }

    /// libxc's image and domain headers; returns the writer's Xen version.
    @discardableResult
    public func imageHeader() throws -> (version: UInt32, xenMajor: UInt32, xenMinor: UInt32) {
        let start = offset
        let h = try bytes(24, "the image header", start: start)
        func be(_ from: Int, _ n: Int) -> UInt64 { h[from..<(from + n)].reduce(0) { $0 << 8 | UInt64($1) } }
        if be(0, 8) == SaveFormat.libxlIdent {
            throw error("a libxl stream written by Xen's xl: this toolstack restores Procvisor domains only", at: start)
        }
        guard be(0, 8) == SaveFormat.imageMarker, be(8, 4) == UInt64(SaveFormat.imageID) else {
            throw error("no migration stream image header (marker and \"XENF\" id) after the xl header", at: start)
        }
        let version = UInt32(be(12, 4))
        if version > SaveFormat.version {
            throw error("stream version \(version) is newer than this toolstack reads (\(SaveFormat.version))", at: start + 12)
        }
        if version < SaveFormat.oldestVersion {
            throw error("stream version \(version) is older than this toolstack reads (\(SaveFormat.oldestVersion)–\(SaveFormat.version))", at: start + 12)
        }
        if be(16, 2) & 1 != 0 { throw error("a big-endian stream (image header option bit 0)", at: start + 16) }
        let d = try bytes(16, "the domain header", start: offset)
        var r = WireReader(d, what: "domain header")
        let type = try r.u32(), shift = try r.u16()
        _ = try r.u16()
        let major = try r.u32(), minor = try r.u32()
        if be(18, 6) != 0 { throw error("the image header's reserved bytes are not zero", at: start + 18) }
        if type != SaveFormat.domainType {
            throw error("a foreign image: domain type 0x\(String(type, radix: 16)) (\(SaveFormat.domainTypeName(type))); this toolstack restores \(SaveFormat.domainTypeName(SaveFormat.domainType)) domains (0x\(String(SaveFormat.domainType, radix: 16)))", at: start + 24)
        }
        if shift != SaveFormat.pageShift {
            throw error("page shift \(shift) (pages of \(1 << Int(min(shift, 62))) bytes); Procvisor pages are 4096 bytes", at: start + 28)
        }
        recordIndex += 1
        current = .checksum
        let c = try bytes(16, "the headers' checksum", start: offset)
        var cr = WireReader(c, what: "checksum record")
        let ctype = try cr.u32(), clen = try cr.u32(), stored = try cr.u32(), reserved = try cr.u32()
        let computed = Checksum.crc32c(d, Checksum.crc32c(h))
        guard ctype == SaveRecordType.checksum.rawValue, clen == 8, stored == computed, reserved == 0 else {
            throw error("the image and domain headers are corrupted (their checksum does not match)", at: start)
        }
        return (version, major, minor)
    }

    /// The next record, its checksum verified. Page contents are read straight into
    /// `pageDestination(pfn, type)` (called once per page that carries data, in order; it may
    /// throw to refuse a pfn). A caller that sees an error discards everything it built.
    /// `willFill` sees a PAGE_DATA record's destinations before its pages are read (to fault
    /// them in at once).
    public func next(pageDestination: (UInt64, SavePageType) throws -> UnsafeMutableRawPointer,
                     willFill: ([UnsafeMutableRawBufferPointer]) -> Void = { _ in }) throws -> SaveRecord {
        while true {
            let start = offset
            recordIndex += 1
            current = nil
            let header = try bytes(8, "a record header", start: start)
            var r = WireReader(header, what: "record header")
            let type = SaveRecordType(rawValue: try r.u32())
            let length = Int(try r.u32())
            current = type
            var crc = Checksum.crc32c(header)
            let record: SaveRecord?
            switch type {
            case .pageData:
                record = .pages(try pageData(length: length, start: start, crc: &crc, destination: pageDestination, willFill: willFill))
            case .checksum:
                throw error("a CHECKSUM record with no record before it", at: start)
            default:
                guard length <= SaveFormat.maxRecordBody else {
                    throw error("body of \(length) bytes is more than the \(SaveFormat.maxRecordBody) a record may have", at: start + 4)
                }
                let body = try bytes(length, "the body", start: start)
                let pad = try bytes(SaveStreamWriter.padding(length), "the padding", start: start)
                crc = Checksum.crc32c(pad, Checksum.crc32c(body, crc))
                switch type {
                case .end: record = .end
                case .domainInfo, .memory, .xenstoreData, .console, .resumeRecord, .checkpoint: record = .data(type, body)
                default:
                    if !type.isOptional {
                        throw error("unknown mandatory record type 0x\(String(type.rawValue, radix: 16)) (written by a newer toolstack?)", at: start)
                    }
                    record = nil  // an optional record this reader does not know: skipped, as libxc does
                }
            }
            try verifyChecksum(of: type, recordIndex: recordIndex, start: start, crc: crc)
            if let record { return record }
        }
    }

    private func verifyChecksum(of type: SaveRecordType, recordIndex index: Int, start: UInt64, crc: UInt32) throws {
        let at = offset
        recordIndex += 1
        current = .checksum
        let c = try bytes(16, "the checksum of record \(index) (\(type)) at offset \(start)", start: at)
        var r = WireReader(c, what: "checksum record")
        let ctype = try r.u32(), clen = try r.u32(), stored = try r.u32(), reserved = try r.u32()
        guard ctype == SaveRecordType.checksum.rawValue, clen == 8, reserved == 0 else {
            recordIndex = index
            current = type
            throw error("not followed by its CHECKSUM record (found type 0x\(String(ctype, radix: 16)), length \(clen) at offset \(at)): the record or what follows it is corrupted", at: start)
        }
        if stored != crc {
            recordIndex = index
            current = type
            throw error("checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(crc, radix: 16))): the record is corrupted", at: start)
        }
    }

    private func pageData(length: Int, start: UInt64, crc: inout UInt32,
                          destination: (UInt64, SavePageType) throws -> UnsafeMutableRawPointer,
                          willFill: ([UnsafeMutableRawBufferPointer]) -> Void) throws -> [(pfn: UInt64, type: SavePageType)] {
        guard length >= 8 else { throw error("PAGE_DATA body of \(length) bytes is shorter than its 8-byte count", at: start + 4) }
        let head = try bytes(8, "the page count", start: start)
        crc = Checksum.crc32c(head, crc)
        var h = WireReader(head, what: "page data")
        let count = Int(try h.u32())
        guard count >= 1, count <= 1024 else {
            throw error("\(count) pages in one record (1 to 1024 allowed)", at: start + 8)
        }
        let list = try bytes(8 * count, "the pfn list", start: start)
        crc = Checksum.crc32c(list, crc)
        var lr = WireReader(list, what: "pfn list")
        var pages: [(pfn: UInt64, type: SavePageType)] = []
        pages.reserveCapacity(count)
        var withData = 0
        for i in 0..<count {
            let v = try lr.u64()
            guard let type = SavePageType(rawValue: UInt8(v >> SavePageType.shift)) else {
                throw error("pfn entry \(i) has page type 0x\(String(v >> SavePageType.shift, radix: 16)) (Procvisor pages are NOTAB, XALLOC or XTAB)", at: start + 16 + UInt64(8 * i))
            }
            if v & ~(SavePageType.pfnMask | 0xF << SavePageType.shift) != 0 {
                throw error("pfn entry \(i) (0x\(String(v, radix: 16))) has reserved bits set", at: start + 16 + UInt64(8 * i))
            }
            pages.append((v & SavePageType.pfnMask, type))
            if type.carriesData { withData += 1 }
        }
        let expected = 8 + 8 * count + withData * SaveFormat.pageSize
        guard length == expected else {
            throw error("PAGE_DATA body is \(length) bytes; \(count) pages of which \(withData) carry data make \(expected)", at: start + 4)
        }
        // Every destination first, then the pages in as few (vectored) reads as the source allows.
        var buffers: [UnsafeMutableRawBufferPointer] = []
        buffers.reserveCapacity(withData)
        for p in pages where p.type.carriesData {
            do {
                buffers.append(UnsafeMutableRawBufferPointer(start: try destination(p.pfn, p.type), count: SaveFormat.pageSize))
            } catch {
                throw self.error("pfn 0x\(String(p.pfn, radix: 16)): \(error)", at: offset)
            }
        }
        willFill(buffers)
        var next = 0, partial = 0
        while next < buffers.count {
            var pending = [UnsafeMutableRawBufferPointer(rebasing: buffers[next][partial...])]
            pending += buffers[(next + 1)...]
            let n: Int
            do {
                n = try source.read(into: pending)
            } catch {
                throw self.error("reading page 0x\(String(pages.filter(\.type.carriesData)[next].pfn, radix: 16)): \(error)", at: start)
            }
            if n == 0 {
                throw self.error("truncated: the pages of this record need \(withData * SaveFormat.pageSize) bytes, the stream ends at offset \(offset)", at: start)
            }
            offset += UInt64(n)
            partial += n
            while next < buffers.count, partial >= SaveFormat.pageSize {
                partial -= SaveFormat.pageSize
                next += 1
            }
        }
        for page in buffers { crc = Checksum.crc32c(UnsafeRawBufferPointer(page), crc) }
        return pages
    }
}

// MARK: bodies

extension SavedMemory {
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 24)
        w.u64(spanPages)
        w.u64(maxPages)
        w.u64(populatedPages)
        return w.bytes
    }

    public static func decode(_ body: [UInt8]) throws -> SavedMemory {
        guard body.count == 24 else { throw WireError.invalid("MEMORY record of \(body.count) bytes (24 expected)") }
        var r = WireReader(body, what: "MEMORY record")
        return SavedMemory(spanPages: try r.u64(), maxPages: try r.u64(), populatedPages: try r.u64())
    }
}

/// libxl's XENSTORE_DATA body: `path\0value\0` pairs.
public enum SavedXenStore {
    public static func encode(_ nodes: [(path: String, value: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for n in nodes {
            out += Array(n.path.utf8) + [0]
            out += n.value + [0]
        }
        return out
    }

    public static func decode(_ body: [UInt8]) throws -> [(path: String, value: [UInt8])] {
        let parts = body.split(separator: 0, omittingEmptySubsequences: false)
        guard body.last == 0 || body.isEmpty, (parts.count - 1) % 2 == 0 else {
            throw WireError.invalid("XENSTORE_DATA is not a list of NUL-terminated path/value pairs")
        }
        var nodes: [(path: String, value: [UInt8])] = []
        var i = 0
        while i + 1 < parts.count {
            guard let path = String(validating: parts[i], as: UTF8.self), !path.isEmpty, !path.hasPrefix("/"), !path.contains("..") else {
                throw WireError.invalid("XENSTORE_DATA pair \(i / 2 + 1): path is not a relative XenStore path")
            }
            nodes.append((path, Array(parts[i + 1])))
            i += 2
        }
        return nodes
    }
}
