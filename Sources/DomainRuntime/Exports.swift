// Guests get the Xen vocabulary (ShutdownReason, VIRQ, GrantCopy, GNTST …) with DomainRuntime.
@_exported import ProcvisorABI

import LinuxHost

/// Xen's system time: nanoseconds of a monotonic clock (the clock `set_timer_op` deadlines use).
public enum SystemTime {
    @inline(__always) public static func nanoseconds() -> UInt64 { MonotonicClock.nanoseconds() }
}
