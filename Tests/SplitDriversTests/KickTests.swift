import Glibc
import LinuxHost
@testable import SplitDrivers
import Testing

/// The kick eventfds of blkback's devices and queues and netback's vifs. XenStore watch
/// callbacks and other threads can raise one after its owner closed it; such a raise once wrote
/// a 64-bit 1 into a grant page's memfd that had just taken the closed descriptor number, and a
/// frontend's data page carried it to the disk.
@Suite struct KickTests {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Runs `body` on a thread of its own and waits for it.
    private func onAnotherThread(_ body: @escaping () -> Void) {
        var tid = pthread_t()
        let box = Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, box)
        guard rc == 0 else { Unmanaged<Body>.fromOpaque(box).release(); body(); return }
        pthread_join(tid, nil)
    }

    /// An eventfd's counter, read without blocking (0 when nothing is pending).
    private func pending(_ fd: FileDescriptor) -> UInt64 {
        var v: UInt64 = 0
        return Glibc.read(fd.rawValue, &v, 8) == 8 ? v : 0
    }

    @Test func raiseWakesUntilClosed() throws {
        let kick = Kick()
        #expect(kick.valid)
        kick.raise()
        kick.raise()
        #expect(pending(kick.fd) == 2)
        #expect(pending(kick.fd) == 0)  // non-blocking: nothing left
        kick.close()
        kick.close()  // idempotent
        kick.raise()  // ignored, not an error
    }

    @Test func raiseAfterCloseLeavesTheFileThatTookTheNumberAlone() throws {
        // A new descriptor takes the lowest free number (F_DUPFD: the lowest from the kick's):
        // when nothing else in this process grabbed it meanwhile, the memfd now has the kick's
        // old number, as a grant page received from the supervisor would. Tried until that
        // happens (other tests open files concurrently); every late raise must miss the page.
        var checked = 0
        for _ in 0..<200 where checked < 20 {
            let kick = Kick()
            let number = kick.fd.rawValue
            kick.close()
            var page = try MemFD.create(name: "kick-test", size: 4096)
            if page.rawValue != number {
                let moved = fcntl(page.rawValue, F_DUPFD_CLOEXEC, number)
                page.close()
                guard moved >= 0 else { continue }
                page = FileDescriptor(rawValue: moved)
            }
            let reused = page
            defer { reused.close() }
            guard reused.rawValue == number else { continue }
            checked += 1
            // A watch callback late by one event, and one from another thread.
            kick.raise()
            onAnotherThread { kick.raise() }
            var head = [UInt8](repeating: 0xff, count: 16)
            #expect(pread(reused.rawValue, &head, 16, 0) == 16)
            #expect(head == [UInt8](repeating: 0, count: 16), "a closed kick wrote into the file holding its old number: \(head)")
        }
        #expect(checked > 0, "the kick's descriptor number was never free to reuse")
    }
}
