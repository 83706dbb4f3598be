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

    /// Copies `count` bytes from `source` to `destination` and returns their CRC-32C, in one
    /// pass (cache-sized chunks checksummed right after they are copied): the checksum is of the
    /// bytes that landed, even if another thread writes `source` meanwhile.
    @inlinable
    public static func copyCRC32C(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, count: Int, _ crc: UInt32 = 0) -> UInt32 {
        pv_copy_crc32c(crc, destination, source, count)
    }

    public static func crc32c(_ bytes: [UInt8], _ crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32c($0, crc) }
    }
}
