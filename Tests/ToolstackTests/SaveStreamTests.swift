import LinuxHost
import ProcvisorABI
import Testing
@testable import Toolstack

/// The save file format: what is written reads back exactly, and a file truncated anywhere,
/// with any byte flipped, foreign or newer is refused with the record and offset named.
@Suite struct SaveStreamTests {
    final class MemorySink: SaveStreamSink {
        var bytes: [UInt8] = []
        func write(_ pieces: [UnsafeRawBufferPointer]) throws { for p in pieces { bytes += p } }
    }

    final class MemorySource: SaveStreamSource {
        let bytes: [UInt8]
        var at = 0
        /// Hands out at most this many bytes per read (a pipe gives short reads).
        let chunk: Int
        init(_ bytes: [UInt8], chunk: Int = 1 << 20) {
            self.bytes = bytes
            self.chunk = chunk
        }
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            let n = min(buffer.count, bytes.count - at, chunk)
            if n > 0 { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes.withUnsafeBytes { $0 }[at..<(at + n)])) }
            at += n
            return n
        }
    }

    static let spanPages = 8
    static let config = Array(#"{"name":"kv","memory":32}"#.utf8)

    /// A stream of a domain with pages 0, 1 and 5 written (each filled with its own byte), page 2
    /// populated but never written, and every other record once.
    static func sampleStream(records: [(SaveRecordType, [UInt8])] = []) throws -> [UInt8] {
        let sink = MemorySink()
        let w = SaveStreamWriter(sink: sink)
        w.xlHeader(config: config)
        w.imageHeader(xenMajor: 4, xenMinor: 17)
        w.record(.domainInfo, Array(#"{"name":"kv","uuid":"u","domid":3}"#.utf8))
        w.record(.memory, SavedMemory(spanPages: UInt64(spanPages), maxPages: 8, populatedPages: 4).encode())
        for (t, b) in records { w.record(t, b) }
        var pages = [[UInt8]](repeating: [], count: spanPages)
        for pfn in [0, 1, 5] { pages[pfn] = [UInt8](repeating: UInt8(0x10 + pfn), count: 4096) }
        try pages.withUnsafeBufferPointerAll { ptrs in
            try w.pages([(0, .normal), (1, .normal)]) { ptrs[$0] }
            try w.pages([(2, .allocated), (5, .normal)]) { _ in ptrs[5] }
        }
        w.record(.xenstoreData, SavedXenStore.encode([("data/greeting", Array("hello".utf8))]))
        w.record(.console, Array("boot\n".utf8))
        w.record(.resumeRecord, [1, 2, 3])
        try w.end()
        #expect(w.offset == UInt64(sink.bytes.count))
        return sink.bytes
    }

    struct Parsed {
        var config: [UInt8] = []
        var records: [String] = []
        var ram = [UInt8](repeating: 0, count: SaveStreamTests.spanPages * 4096)
        var pages: [UInt64] = []
    }

    /// Reads a whole stream; throws what the reader throws.
    static func parse(_ bytes: [UInt8], chunk: Int = 1 << 20) throws -> Parsed {
        var p = Parsed()
        let reader = SaveStreamReader(source: MemorySource(bytes, chunk: chunk))
        p.config = try reader.xlHeader().config
        let v = try reader.imageHeader()
        #expect(v.version == 3 && v.xenMajor == 4 && v.xenMinor == 17)
        try p.ram.withUnsafeMutableBytes { ram in
            while true {
                let r = try reader.next { pfn, _ in
                    guard pfn < UInt64(spanPages) else { throw WireError.invalid("pfn \(pfn) out of range") }
                    return ram.baseAddress! + Int(pfn) * 4096
                }
                switch r {
                case let .pages(list):
                    p.records.append("PAGE_DATA")
                    p.pages += list.map(\.pfn)
                case let .data(type, body):
                    p.records.append("\(type):\(body.count)")
                case .end:
                    p.records.append("END")
                    return
                }
            }
        }
        return p
    }

    @Test func whatIsWrittenReadsBackExactly() throws {
        let bytes = try Self.sampleStream()
        #expect(Array(bytes[0..<32]) == SaveFormat.xlMagic)
        #expect(bytes.count % 8 == (48 + 4 + Self.config.count + 4) % 8)
        for chunk in [1 << 20, 1, 7, 4095] {
            let p = try Self.parse(bytes, chunk: chunk)
            #expect(p.config == Self.config)
            #expect(p.records == ["DOMAIN_INFO:34", "MEMORY:24", "PAGE_DATA", "PAGE_DATA", "XENSTORE_DATA:20", "CONSOLE:5", "RESUME_RECORD:3", "END"])
            #expect(p.pages == [0, 1, 2, 5])
            for pfn in 0..<Self.spanPages {
                let expected: UInt8 = [0, 1, 5].contains(pfn) ? UInt8(0x10 + pfn) : 0
                #expect(p.ram[pfn * 4096..<(pfn + 1) * 4096].allSatisfy { $0 == expected }, "page \(pfn)")
            }
        }
    }

    @Test func everyRecordIsEightByteAlignedAndFollowedByItsChecksum() throws {
        let bytes = try Self.sampleStream()
        var at = 48 + 4 + Self.config.count + 4 + 24 + 16 + 16  // headers and their checksum
        var types: [UInt32] = []
        while at < bytes.count {
            #expect((at - (48 + 4 + Self.config.count + 4)) % 8 == 0)
            let type = UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
            let length = Int(UInt32(bytes[at + 4]) | UInt32(bytes[at + 5]) << 8 | UInt32(bytes[at + 6]) << 16 | UInt32(bytes[at + 7]) << 24)
            types.append(type)
            at += 8 + length + (8 - length % 8) % 8
        }
        #expect(at == bytes.count)
        for (i, t) in types.enumerated() { #expect((t == SaveRecordType.checksum.rawValue) == (i % 2 == 1)) }
        #expect(types.first == SaveRecordType.domainInfo.rawValue)
        #expect(types[types.count - 2] == SaveRecordType.end.rawValue)
    }

    @Test func aStreamTruncatedAnywhereIsRefusedWithItsOffset() throws {
        let bytes = try Self.sampleStream()
        for cut in 0..<bytes.count where cut % 13 == 0 || cut < 160 || cut % 8 == 0 {
            do {
                _ = try Self.parse(Array(bytes[0..<cut]))
                Issue.record("a stream cut at \(cut) of \(bytes.count) bytes was accepted")
            } catch let e as SaveStreamError {
                #expect(e.problem.contains("truncated"), "cut at \(cut): \(e)")
                #expect(e.description.contains("the stream ends at offset \(cut)"), "cut at \(cut): \(e)")
            }
        }
    }

    @Test func aFlippedByteAnywhereIsRefused() throws {
        let bytes = try Self.sampleStream()
        for at in 0..<bytes.count where at < 400 || at % 61 == 0 || at >= bytes.count - 200 {
            var bad = bytes
            bad[at] ^= 0x04
            do {
                let p = try Self.parse(bad)
                Issue.record("a flip at offset \(at) was accepted (records \(p.records))")
            } catch let e as SaveStreamError {
                #expect(!e.description.isEmpty)
            } catch {
                Issue.record("a flip at offset \(at): not a SaveStreamError: \(error)")
            }
        }
    }

    @Test func aCorruptedPageIsNamedByRecordAndOffset() throws {
        var bytes = try Self.sampleStream()
        let firstPage = bytes.count - 1  // locate page 5's contents: the last 0x15 byte run
        let at = (0..<firstPage).last { bytes[$0] == 0x15 }! - 100
        bytes[at] ^= 0xff
        #expect {
            _ = try Self.parse(bytes)
        } throws: { e in
            let d = "\(e)"
            return d.contains("(PAGE_DATA)") && d.contains("checksum mismatch") && d.hasPrefix("record ")
        }
    }

    @Test func foreignAndNewerFilesAreRefused() throws {
        let good = try Self.sampleStream()
        let headerEnd = 48 + 4 + Self.config.count + 4
        func refused(_ bytes: [UInt8], _ words: String) {
            #expect { _ = try Self.parse(bytes) } throws: { "\($0)".contains(words) }
        }
        var notXL = good
        notXL[0] = UInt8(ascii: "Y")
        refused(notXL, "not an xl save file")
        var newer = good
        newer[headerEnd + 15] = 4  // big-endian version
        refused(newer, "stream version 4 is newer")
        var hvm = good
        hvm[headerEnd + 24] = 2
        hvm[headerEnd + 25] = 0
        refused(hvm, "a foreign image: domain type 0x2 (x86 HVM)")
        var libxl = good
        let ident: [UInt8] = Array("LibxlFmt".utf8)
        for i in 0..<8 { libxl[headerEnd + i] = ident[i] }
        refused(libxl, "a libxl stream written by Xen's xl")
        var flags = good
        flags[36] |= 0x80
        refused(flags, "mandatory flags")
    }

    @Test func unknownOptionalRecordsAreSkippedAndUnknownMandatoryOnesRefused() throws {
        let withOptional = try Self.sampleStream(records: [(SaveRecordType(rawValue: 0x8123_4567), [9, 9, 9])])
        #expect(try Self.parse(withOptional).records.count == 8)
        let withMandatory = try Self.sampleStream(records: [(SaveRecordType(rawValue: 0x0012_3456), [9])])
        #expect { _ = try Self.parse(withMandatory) } throws: { "\($0)".contains("unknown mandatory record type 0x123456") }
    }

    @Test func pagesSentFromOneBufferReadBackTheSame() throws {
        // xl reads a batch of pages into one buffer and checksums and sends it whole; the stream
        // is the same as one sent page by page.
        let pages = (0..<3).map { i in [UInt8]((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* (i + 3)) }) }
        func stream(contiguous: Bool) throws -> [UInt8] {
            let sink = MemorySink()
            let w = SaveStreamWriter(sink: sink)
            w.xlHeader(config: Self.config)
            w.imageHeader(xenMajor: 4, xenMinor: 17)
            w.record(.domainInfo, Array(#"{"name":"kv","uuid":"u","domid":3}"#.utf8))
            w.record(.memory, SavedMemory(spanPages: UInt64(Self.spanPages), maxPages: 8, populatedPages: 3).encode())
            let batch: [(pfn: UInt64, type: SavePageType)] = [(0, .normal), (2, .allocated), (4, .normal), (7, .normal)]
            if contiguous {
                let block = pages.flatMap { $0 }
                try block.withUnsafeBytes { try w.pages(batch, contiguous: $0.baseAddress!) }
            } else {
                try pages.withUnsafeBufferPointerAll { ptrs in try w.pages(batch) { ptrs[$0] } }
            }
            try w.end()
            return sink.bytes
        }
        let direct = try stream(contiguous: false), whole = try stream(contiguous: true)
        #expect(direct == whole)
        let p = try Self.parse(whole)
        #expect(p.pages == [0, 2, 4, 7])
        #expect(Array(p.ram[(2 * 4096)..<(3 * 4096)]) == [UInt8](repeating: 0, count: 4096))
        #expect(Array(p.ram[(4 * 4096)..<(5 * 4096)]) == pages[1])
    }

    @Test func pfnRunsCoverExactlyTheirPages() {
        #expect(PFNRun.runs(of: [5, 1, 2, 3, 9, 2, 10]) == [PFNRun(start: 1, count: 3), PFNRun(start: 5, count: 1), PFNRun(start: 9, count: 2)])
        #expect(PFNRun.runs(of: []).isEmpty)
    }

    @Test func xenstoreDataRefusesAbsoluteAndEscapingPaths() throws {
        let ok = SavedXenStore.encode([("data/a", Array("1".utf8)), ("attr/b", [])])
        #expect(try SavedXenStore.decode(ok).map(\.path) == ["data/a", "attr/b"])
        #expect(throws: WireError.self) { try SavedXenStore.decode(SavedXenStore.encode([("/local/domain/0/x", [])])) }
        #expect(throws: WireError.self) { try SavedXenStore.decode(SavedXenStore.encode([("data/../../x", [])])) }
        #expect(throws: WireError.self) { try SavedXenStore.decode(Array("data/a\0".utf8)) }
    }

    @Test func crc32cIsCastagnoli() {
        // RFC 3720 B.4: 32 bytes of zeros.
        #expect(Checksum.crc32c([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(Checksum.crc32c(Array("123456789".utf8)) == 0xE306_9283)
        let whole = Checksum.crc32c(Array("123456789".utf8))
        #expect(Checksum.crc32c(Array("6789".utf8), Checksum.crc32c(Array("12345".utf8))) == whole)
        // Long buffers go through three lanes joined by the zero-advance tables: they must agree
        // with the same bytes fed in pieces too short for lanes.
        var x: UInt64 = 0x1234_5678
        let long = (0..<20_011).map { _ -> UInt8 in
            x = x &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: x >> 33)
        }
        var piecewise: UInt32 = 0
        for start in stride(from: 0, to: long.count, by: 1000) {
            piecewise = Checksum.crc32c(Array(long[start..<min(start + 1000, long.count)]), piecewise)
        }
        for length in [3072, 3073, 4096, 6144, 9215, 20_011] {
            var pieces: UInt32 = 0
            for start in stride(from: 0, to: length, by: 700) { pieces = Checksum.crc32c(Array(long[start..<min(start + 700, length)]), pieces) }
            #expect(Checksum.crc32c(Array(long[0..<length])) == pieces, "length \(length)")
        }
        #expect(Checksum.crc32c(long) == piecewise)
    }
}

extension Array where Element == [UInt8] {
    /// Pointers to every inner array's storage, valid inside `body`.
    func withUnsafeBufferPointerAll<R>(_ body: ([UnsafeRawPointer]) throws -> R) rethrows -> R {
        func go(_ i: Int, _ acc: [UnsafeRawPointer]) throws -> R {
            if i == count { return try body(acc) }
            return try self[i].withUnsafeBytes { p in try go(i + 1, acc + [p.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!]) }
        }
        return try go(0, [])
    }
}
