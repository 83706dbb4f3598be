// Guests get the Xen vocabulary (ShutdownReason, VIRQ, GrantCopy, GNTST …) with DomainRuntime.
@_exported import ProcvisorABI
