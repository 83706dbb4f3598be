/// What to do when a domain powers off, reboots or crashes (`on_poweroff`, `on_reboot`,
/// `on_crash`), spelled as in xl.cfg(5).
///
/// Xen also knows `coredump-destroy`, `coredump-restart` and `soft-reset`; Procvisor does not
/// support them, and `DomainConfig` rejects them with a message listing these cases.
public enum ShutdownAction: String, Codable, Sendable, CaseIterable {
    /// Destroy the domain.
    case destroy
    /// Destroy the domain and immediately create a new one with the same configuration.
    case restart
    /// Keep the domain (for inspection); it must be destroyed by hand.
    case preserve
    /// Rename the old domain and create a new one with the same name and configuration.
    case renameRestart = "rename-restart"

    /// Every action xl accepts, in xl's order; the ones not in `allCases` are unsupported here.
    static let xenActionNames = [
        "destroy", "restart", "rename-restart", "preserve",
        "coredump-destroy", "coredump-restart", "soft-reset",
    ]

    /// The supported names, for error messages.
    static var supportedList: String { allCases.map(\.rawValue).joined(separator: ", ") }
}
