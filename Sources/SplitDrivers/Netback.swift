import DomainRuntime
import Glibc
import ProcvisorABI

/// netback (being written: this first version only reports that it serves nothing yet).
public final class Netback {
    let domain: Domain
    let log: (String) -> Void
    let environment: [String: String]

    public init(domain: Domain, environment: [String: String] = [:], log: @escaping (String) -> Void) {
        self.domain = domain
        self.environment = environment
        self.log = log
    }

    public func run() -> Never {
        log("netback: dom\(domain.domid): the data path is not built yet")
        domain.shutdown(.crash)
    }
}
