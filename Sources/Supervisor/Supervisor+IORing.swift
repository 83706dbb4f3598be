import LinuxHost

extension Supervisor {
    /// `io_uring_setup` from a driver domain, which its bound hands to the supervisor rather than
    /// to the kernel: the supervisor makes the ring itself, disabled and restricted to the
    /// backends' operations on registered files (`IORingPolicy`), writes the kernel's
    /// io_uring_params back into the caller's structure, and installs the ring as the call's
    /// return value. The domain never holds a ring it made: io_uring's OPENAT, SOCKET, FTRUNCATE
    /// and plain descriptors are refused by construction. (An io_uring descriptor cannot travel
    /// over SCM_RIGHTS; seccomp's ADDFD puts it straight into the caller's table.)
    func ioRingSetup(_ dom: DomainRecord, _ call: SeccompNotification.Call, listener: FileDescriptor) {
        func refuse(_ errno: Errno, _ why: String) {
            SeccompNotification.fail(listener, call, errno)
            logger.notice("io_uring_setup refused", metadata: ["domid": "\(dom.domid)", "why": "\(why)"])
        }
        let size = IORingPolicy.paramsSize
        let address = call.args[1]
        let params: [UInt8]
        do {
            params = try RemoteMemory.read(pid: call.pid, address: address, count: size)
        } catch {
            return refuse(.badAddress, "reading its io_uring_params: \(error)")
        }
        // The pid read above may have been recycled if the caller died: only a pending call counts.
        guard SeccompNotification.isPending(listener, call) else { return }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(params[o + $1]) << (8 * $1) } }
        let flags = u32(8)
        let request = IORingPolicy.Request(entries: UInt32(truncatingIfNeeded: call.args[0]), flags: flags,
                                           completionEntries: flags & IORingPolicy.completionSizeFlag != 0 ? u32(4) : 0)
        if let why = request.refusal { return refuse(.invalidArgument, why) }
        if let held = try? IORingPolicy.ringsHeld(by: dom.pid), held >= IORingPolicy.maxRingsPerDomain {
            log("\(dom.label): io_uring_setup refused: it holds \(held) rings, the most a driver domain may")
            return refuse(.tooManyOpenFiles, "\(held) rings held")
        }
        let ring: IORingPolicy.Ring
        do {
            ring = try IORingPolicy.create(request)
        } catch let e as SystemError {
            // EPERM/ENOSYS where the kernel refuses io_uring: the backend falls back to its threads.
            return refuse(e.errno, "\(e)")
        } catch {
            return refuse(.invalidArgument, "\(error)")
        }
        defer { ring.fd.close() }
        do {
            try RemoteMemory.write(pid: call.pid, address: address, ring.params)
            guard SeccompNotification.isPending(listener, call) else { return }
            let fd = try SeccompNotification.returnDescriptor(listener, call, ring.fd)
            logger.debug("io_uring ring made for a driver domain", metadata: ["domid": "\(dom.domid)", "fd": "\(fd)", "request": "\(request)"])
        } catch {
            refuse(.badAddress, "handing the ring over: \(error)")
        }
    }
}
