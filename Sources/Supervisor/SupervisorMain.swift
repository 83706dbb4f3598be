import LinuxHost
import Logging

/// Entry point of `procvisord`: daemonising, logging, and the supervisor's life.
public enum SupervisorMain {
    /// Exit codes: 0 clean stop, 1 failure, 3 another supervisor holds the run directory.
    /// `procvisord --check-live-update-state FD`: whether this binary can take over the state
    /// in memfd FD (a running supervisor asks before it executes this binary in its place).
    /// Prints `liveUpdateAcceptance` and returns 0 when it can; the reason and 1 when not.
    public static func checkLiveUpdateState(fd: Int32) -> Int32 {
        // The environment the takeover will run with is this one: its options must hold too.
        let options = SupervisorOptions(environment: Process.environment(), uid: Process.userID)
        if let problem = options.problems.first {
            print("procvisord: cannot take the state over: \(problem)")
            return 1
        }
        do {
            let image = try LiveUpdateImage.read(from: FileDescriptor(rawValue: fd))
            try image.validate()
            print("\(Supervisor.liveUpdateAcceptance) (version \(LiveUpdateImage.currentVersion), \(image.domains.count) domains)")
            return 0
        } catch {
            print("procvisord: cannot take the state over: \(error)")
            return 1
        }
    }

    public static func run(environment: [String: String], daemonize: Bool, liveUpdateState: Int32? = nil) -> Int32 {
        let options = SupervisorOptions(environment: environment, uid: Process.userID)
        if !options.problems.isEmpty {
            options.problems.forEach { FileDescriptor.standardError.writeUnchecked("procvisord: \($0)\n") }
            return 2
        }
        var ready: (read: FileDescriptor, write: FileDescriptor)?
        if daemonize {
            // The parent waits for one status byte so `xl` knows the socket is listening when it returns.
            guard let pipe = try? FileDescriptor.pipe(), let pid = try? Process.fork() else {
                FileDescriptor.standardError.writeUnchecked("procvisord: cannot daemonise\n")
                return 1
            }
            if pid > 0 {
                pipe.write.close()
                let status = (try? pipe.read.read(upTo: 1)) ?? []
                return status.first.map { Int32($0) } ?? 1
            }
            pipe.read.close()
            ready = pipe
        }
        func signalReady(_ code: UInt8) {
            if let r = ready { try? r.write.writeAll([code]); r.write.close(); ready = nil }
        }
        do {
            try FileIO.makeDirectories(options.runDirectory.path, mode: 0o700)
        } catch {
            FileDescriptor.standardError.writeUnchecked("procvisord: cannot create run directory \(options.runDirectory.path): \(error)\n")
            signalReady(1)
            return 1
        }
        let logFD: FileDescriptor
        do {
            logFD = try FileDescriptor.open(options.runDirectory.supervisorLog, [.writeOnly, .create, .append], mode: 0o600)
        } catch {
            FileDescriptor.standardError.writeUnchecked("procvisord: cannot open log \(options.runDirectory.supervisorLog): \(error)\n")
            signalReady(1)
            return 1
        }
        let sink = FileLogHandler.Sink(fd: logFD)
        let level = environment["PROCVISOR_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .info
        LoggingSystem.bootstrap { label in
            var h = FileLogHandler(label: label, sink: sink)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "procvisord")
        Process.setName("procvisord")
        if let fd = liveUpdateState {
            // A live update executed this binary in the old one's place: its domains are this
            // process's children, its descriptors are open. No way back from here: a failure
            // ends the supervisor (and, by their parent-death signal, its domains).
            do {
                let started = MonotonicClock.nanoseconds()
                let stateFD = FileDescriptor(rawValue: fd)
                let image = try LiveUpdateImage.read(from: stateFD)
                stateFD.close()
                let decoded = MonotonicClock.nanoseconds()
                let supervisor = try Supervisor(options: options, logger: logger, image: image)
                supervisor.environment = environment
                try supervisor.resume(image)
                let ms = { (a: UInt64, b: UInt64) in "\(Double(b &- a) / 1e6)" }
                logger.info("live update: where the pause went", metadata: [
                    "capture_exec_start_ms": "\(ms(image.handoverStart, started))", "decode_ms": "\(ms(started, decoded))",
                    "resume_ms": "\(ms(decoded, MonotonicClock.nanoseconds()))"])
                try supervisor.run()
                return 0
            } catch {
                logger.critical("live update: the new binary could not take over", metadata: ["error": "\(error)"])
                return 1
            }
        }
        do {
            let supervisor = try Supervisor(options: options, logger: logger)
            supervisor.environment = environment
            do {
                try supervisor.start()
            } catch let e as Supervisor.StartError {
                FileDescriptor.standardError.writeUnchecked("procvisord: \(e)\n")
                signalReady(3)
                return 3
            }
            if daemonize { Process.detachStdio() }
            signalReady(0)
            try supervisor.run()
            return 0
        } catch {
            logger.critical("supervisor failed", metadata: ["error": "\(error)"])
            FileDescriptor.standardError.writeUnchecked("procvisord: \(error)\n")
            signalReady(1)
            return 1
        }
    }
}
