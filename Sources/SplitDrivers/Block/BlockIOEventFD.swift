import Glibc
import LinuxHost

/// The engines' completion eventfd (`BlockIOEngine.completionFD`): made non-blocking, signalled
/// when completions are ready, drained by `reap`.
enum BlockIOEventFD {
    static func make() throws -> FileDescriptor {
        let fd = try FileDescriptor.eventfd()
        do {
            try fd.setNonBlocking()
        } catch {
            fd.close()
            throw error
        }
        return fd
    }

    /// Reads the eventfd to zero (non-blocking).
    static func drain(_ fd: FileDescriptor) {
        var value: UInt64 = 0
        _ = Glibc.read(fd.rawValue, &value, 8)
    }

    static func signal(_ fd: FileDescriptor) {
        var one: UInt64 = 1
        _ = Glibc.write(fd.rawValue, &one, 8)
    }
}
