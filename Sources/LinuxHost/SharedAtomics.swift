import CProcvisor

/// Atomic operations on words in memory shared with other processes (event pages, grant
/// entries). Swift's own atomics need their storage in Swift; these work on any mapped address.
public enum SharedAtomic {
    @inlinable @inline(__always) public static func load(_ p: UnsafeMutablePointer<UInt64>) -> UInt64 { pv_atomic_load_u64(p) }
    @inlinable @inline(__always) public static func store(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) { pv_atomic_store_u64(p, v) }
    @inlinable @inline(__always) @discardableResult
    public static func fetchOr(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) -> UInt64 { pv_atomic_fetch_or_u64(p, v) }
    @inlinable @inline(__always) @discardableResult
    public static func fetchAnd(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) -> UInt64 { pv_atomic_fetch_and_u64(p, v) }
    @inlinable @inline(__always) public static func load(_ p: UnsafeMutablePointer<UInt32>) -> UInt32 { pv_atomic_load_u32(p) }
    @inlinable @inline(__always) public static func store(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) { pv_atomic_store_u32(p, v) }
    /// A release store: the loads and stores before it in program order are done before it, by the
    /// compiler and the CPU (a plain move on x86, no fence). Makes a record written just before it
    /// valid, for another thread, or for the next process to map the memory after this one died
    /// between any two instructions.
    @inlinable @inline(__always)
    public static func storeRelease(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) { pv_atomic_store_release_u32(p, v) }
    @inlinable @inline(__always) @discardableResult
    public static func fetchAdd(_ p: UnsafeMutablePointer<UInt32>, _ v: UInt32) -> UInt32 { pv_atomic_fetch_add_u32(p, v) }
    @inlinable @inline(__always) public static func load(_ p: UnsafeMutablePointer<UInt16>) -> UInt16 { pv_atomic_load_u16(p) }
    /// Compare-and-swap; returns the value that was there (equal to `expected` on success).
    @inlinable @inline(__always)
    public static func compareExchange(_ p: UnsafeMutablePointer<UInt16>, expected: UInt16, desired: UInt16) -> UInt16 {
        pv_atomic_cmpxchg_u16(p, expected, desired)
    }
    /// Compare-and-swap of 32 bits; returns the value that was there.
    @inlinable @inline(__always)
    public static func compareExchange(_ p: UnsafeMutablePointer<UInt32>, expected: UInt32, desired: UInt32) -> UInt32 {
        pv_atomic_cmpxchg_u32(p, expected, desired)
    }
    /// A full memory fence (sequentially consistent): no load or store before it is moved after
    /// it, or the reverse, by the compiler or the CPU. Orders plain stores into shared or saved
    /// memory (a record written completely before the word that makes it valid).
    @inlinable @inline(__always) public static func fence() { pv_atomic_fence() }
    /// A pause hint for spin loops.
    @inlinable @inline(__always) public static func relax() { pv_cpu_relax() }
}
