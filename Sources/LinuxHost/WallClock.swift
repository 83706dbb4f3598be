import Glibc

/// The real-time clock (CLOCK_REALTIME: calendar time, which can jump when the host's clock is
/// set; measure durations with `MonotonicClock`) and its calendar breakdown.
public enum WallClock {
    /// Now: seconds and nanoseconds since the epoch (clock_gettime(CLOCK_REALTIME)).
    public static func now() -> (seconds: Int, nanoseconds: Int) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (Int(ts.tv_sec), Int(ts.tv_nsec))
    }

    /// A moment broken into calendar fields (`struct tm`, with a real year and a month from 1).
    public struct Calendar: Equatable, Sendable {
        public var year: Int
        /// 1 to 12.
        public var month: Int
        /// 1 to 31.
        public var day: Int
        public var hour: Int
        public var minute: Int
        /// 0 to 60 (a leap second).
        public var second: Int

        public init(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
            (self.year, self.month, self.day, self.hour, self.minute, self.second) = (year, month, day, hour, minute, second)
        }
    }

    /// `seconds` since the epoch as calendar fields, in UTC (gmtime_r) or in the local time zone
    /// (localtime_r: TZ, else /etc/localtime).
    public static func calendar(_ seconds: Int, utc: Bool = true) -> Calendar {
        let tm = breakDown(seconds, utc: utc)
        return Calendar(year: Int(tm.tm_year) + 1900, month: Int(tm.tm_mon) + 1, day: Int(tm.tm_mday),
                        hour: Int(tm.tm_hour), minute: Int(tm.tm_min), second: Int(tm.tm_sec))
    }

    /// `seconds` since the epoch formatted by strftime(3) `pattern` ("%H:%M:%S"), in UTC or local
    /// time; "" when the result would exceed 255 bytes.
    public static func format(_ seconds: Int, _ pattern: String, utc: Bool = true) -> String {
        var tm = breakDown(seconds, utc: utc)
        var buf = [CChar](repeating: 0, count: 256)
        let n = strftime(&buf, buf.count, pattern, &tm)
        return n == 0 ? "" : String(cString: buf)
    }

    private static func breakDown(_ seconds: Int, utc: Bool) -> tm {
        var t = time_t(seconds)
        var out = tm()
        if utc { gmtime_r(&t, &out) } else { localtime_r(&t, &out) }
        return out
    }
}
