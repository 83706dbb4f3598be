import CProcvisor

/// CRC-32C (Castagnoli), the checksum of save files: the crc32 instruction where the CPU has
/// SSE4.2 (8 bytes a step), a table otherwise. `crc32c(b, crc32c(a))` is the checksum of a
/// followed by b, so a stream is checksummed piece by piece.
public enum Checksum {
    @inlinable
    public static func crc32c(_ bytes: UnsafeRawBufferPointer, _ crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return pv_crc32c(crc, base, bytes.count)
    }

    public static func crc32c(_ bytes: [UInt8], _ crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32c($0, crc) }
    }
}
