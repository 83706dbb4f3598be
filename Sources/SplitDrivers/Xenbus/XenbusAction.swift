/// What an end does when the other end's state changes: the transitions of Linux's blkfront
/// (`blkback_changed`) and blkback (`frontend_changed`), which netfront/netback share.
public enum XenbusAction: Equatable, Sendable {
    /// Nothing to do.
    case none
    /// Frontend: the backend waits (InitWait) — publish the transport (ring-ref, event-channel,
    /// features) and switch to Initialised (`talk_to_blkback`). Also the first half of a
    /// reconnection after Closed.
    case initialise
    /// Frontend: the backend is Connected — read its properties and switch to Connected
    /// (`blkfront_connect`; again when the backend rewrites Connected, e.g. a resize).
    /// Backend: the frontend is Initialised or Connected — map its rings and switch to
    /// Connected (`connect_ring`, `connect`).
    case connect
    /// Backend: the frontend is closing — switch to Closing (in-flight requests complete).
    case closing
    /// Disconnect and switch to Closed: the frontend when the backend closes
    /// (`blkfront_closing`), the backend when the frontend is Closed.
    case close
    /// Backend: the frontend came back to Initialising after Closed — switch to InitWait
    /// ("prepare for reconnect").
    case reconnect
    /// Backend: the frontend is gone (Unknown), or Closed while the toolstack has set the
    /// device offline (`online` = 0, a detach) — disconnect, switch to Closed and release it.
    case remove
    /// Frontend: a restarted backend is back at Initialising while this end was set up —
    /// disconnect and return to Initialising, to connect again at its InitWait.
    case reset
    /// Frontend: a restarted backend already waits (InitWait) while this end was Connected —
    /// disconnect, publish a new transport and switch to Initialised.
    case reinitialise

    /// The frontend's reaction to the backend entering `backend` while it is in `own`.
    public static func frontend(own: XenbusState, backend: XenbusState) -> XenbusAction {
        switch backend {
        case .initWait:
            switch own {
            case .initialising, .closed: return .initialise
            // A backend goes from Connected back to InitWait only by restarting; Linux would
            // stall here when the watch coalesced away its Initialising.
            case .connected: return .reinitialise
            default: return .none
            }
        case .initialising:
            return own == .initialised || own == .connected ? .reset : .none
        case .connected:
            return own == .closing || own == .closed ? .none : .connect
        case .closing, .closed:
            return own == .closed ? .none : .close
        case .unknown, .initialised, .reconfiguring, .reconfigured:
            return .none
        }
    }

    /// The backend's reaction to the frontend entering `frontend` while it is in `own`.
    /// `online` is the backend's `online` node: a device the toolstack still wants survives its
    /// frontend closing, so the frontend can reconnect.
    public static func backend(own: XenbusState, frontend: XenbusState, online: Bool = true) -> XenbusAction {
        switch frontend {
        case .initialising:
            return own == .closed ? .reconnect : .none
        case .initialised, .connected:
            return own == .connected || own == .closing ? .none : .connect
        case .closing:
            return own == .closing || own == .closed ? .none : .closing
        case .closed:
            if !online { return .remove }
            return own == .closed ? .none : .close
        case .unknown:
            return .remove
        case .initWait, .reconfiguring, .reconfigured:
            return .none
        }
    }
}
