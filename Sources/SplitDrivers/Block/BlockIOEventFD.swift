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
    @inline(__always) static func drain(_ fd: FileDescriptor) {
        EventFD(fd).consume()
    }

    @inline(__always) static func signal(_ fd: FileDescriptor) {
        EventFD(fd).signal()
    }
}
