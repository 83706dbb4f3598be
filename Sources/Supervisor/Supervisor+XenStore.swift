import LinuxHost
import ProcvisorABI
import XenStore

/// A domain's XenStore connection: its `xenstore_domain_interface` page, the eventfd it kicks
/// domain-0 services with, and its store port (bound to domain 0, as `store_evtchn` in Xen).
final class DomainStore {
    let page: SharedPage
    let kick: FileDescriptor
    let port: EvtchnPort

    init(domid: DomID, port: EvtchnPort) throws {
        page = try SharedPage(name: "pv-xenstore-\(domid)")
        kick = try FileDescriptor.eventfd()  // (the page's descriptor is closed with it if this fails)
        self.port = port
    }

    /// The connection a live update handed over.
    init(page: SharedPage, kick: FileDescriptor, port: EvtchnPort) {
        self.page = page
        self.kick = kick
        self.port = port
    }
}

extension Supervisor {
    /// Xen's permissions for a domain's own tree (libxl's `roperm`/`rwperm`).
    static func readOnly(for domid: UInt16) -> [XSPermission] { [XSPermission(domid: 0, access: .none), XSPermission(domid: domid, access: .read)] }
    static func readWrite(for domid: UInt16) -> [XSPermission] { [XSPermission(domid: domid, access: .none)] }

    func writeDom0Tree() {
        let none = [XSPermission(domid: 0, access: .none)]
        store { e in
            var out = try e.mkdir("/local", perms: [XSPermission(domid: 0, access: .read)])
            out += try e.mkdir("/local/domain", perms: [XSPermission(domid: 0, access: .read)])
            out += try e.mkdir("/vm", perms: none)
            out += try e.mkdir("/tool", perms: none)
            out += try e.write("/local/domain/0/name", Array("Domain-0".utf8))
            out += try e.write("/local/domain/0/domid", Array("0".utf8))
            return out
        }
    }

    /// Runs toolstack writes against the engine and delivers the watch events they fire. A write
    /// the engine refuses is a bug in the supervisor, logged with the path's error.
    func store(_ body: (XenStoreEngine) throws -> [(XSConnectionID, XSMessage)]) {
        do {
            xenstore.deliver(try body(xenstore.engine))
        } catch {
            logger.error("xenstore update failed", metadata: ["error": "\(error)"])
        }
    }

    /// Connects a new domain to XenStore: ring page, kick eventfd, store port; writes the tree
    /// libxl writes at domain creation and fires @introduceDomain.
    func setUpStore(_ dom: DomainRecord) throws {
        guard let port = eventChannels.bindToDom0(dom.domid) else { throw CreateError("dom\(dom.domid): no event channel for XenStore") }
        let s = try DomainStore(domid: dom.domid, port: port)
        dom.store = s
        do {
            try xenstore.attach(domid: dom.domid.rawValue, page: s.page.mapping, kick: s.kick) { [weak self, weak dom] in
                guard let self, let dom, dom.hasProcess else { return }
                self.eventChannels.raise(dom.domid, port: port, peer: 0)
            }
        } catch {
            s.kick.close()
            throw error
        }
        writeDomainTree(dom)
        xenstore.deliver(xenstore.engine.introduceDomain(dom.domid.rawValue))
    }

    /// What libxl writes for a new domain (libxl__domain_make and the build), with its permissions.
    func writeDomainTree(_ dom: DomainRecord) {
        let d = dom.domid, path = "/local/domain/\(d)", vm = "/vm/\(dom.uuid)"
        let ro = Self.readOnly(for: d.rawValue), rw = Self.readWrite(for: d.rawValue)
        let c = dom.config
        store { e in
            var out = try e.mkdir(path, perms: ro)
            out += try e.mkdir(vm, perms: ro)
            out += try e.write(vm + "/uuid", Array(dom.uuid.utf8))
            out += try e.write(vm + "/name", Array(dom.name.utf8))
            out += try e.write(vm + "/start_time", Array("\(WallClock.now().seconds).00".utf8))
            out += try e.write(path + "/vm", Array(vm.utf8))
            out += try e.write(path + "/name", Array(dom.name.utf8))
            out += try e.write(path + "/domid", Array("\(d)".utf8))
            out += try e.mkdir(path + "/device", perms: ro)
            // The guest publishes its suspend event channel here (libxl__domain_make).
            out += try e.mkdir(path + "/device/suspend/event-channel", perms: rw)
            out += try e.mkdir(path + "/control", perms: ro)
            for key in ["shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq", "platform-feature-multiprocessor-suspend",
                        "platform-feature-xs_reset_watches"] {
                out += try e.mkdir(path + "/control/" + key, perms: rw)
            }
            for key in ["data", "drivers", "feature", "attr", "error"] { out += try e.mkdir(path + "/" + key, perms: rw) }
            out += try e.write(path + "/memory/static-max", Array("\(c.maxmem * 1024)".utf8), perms: ro)
            out += try e.write(path + "/memory/target", Array("\(c.memory * 1024)".utf8), perms: ro)
            out += try e.write(path + "/memory/videoram", Array("-1".utf8), perms: ro)
            out += try e.write(path + "/store/port", Array("\(dom.store?.port ?? 0)".utf8), perms: ro)
            out += try e.write(path + "/cpu/0/availability", Array("online".utf8), perms: ro)
            for v in 1..<max(1, c.maxvcpus) {
                out += try e.write(path + "/cpu/\(v)/availability", Array((v < c.vcpus ? "online" : "offline").utf8), perms: ro)
            }
            return out
        }
    }

    /// The domain's process is gone: its ring is disconnected and @releaseDomain fires (as
    /// xenstored does on VIRQ_DOM_EXC). Its tree stays until the domain is destroyed.
    func releaseStore(_ dom: DomainRecord) {
        guard dom.store != nil else { return }
        xenstore.detach(domid: dom.domid.rawValue)
        dom.store = nil
        xenstore.deliver(xenstore.engine.releaseDomain(dom.domid.rawValue))
    }

    /// A driver domain that is restarted in place: its ring connection goes (its watches and
    /// transactions with it), but it stays introduced and keeps its nodes, among them the
    /// backend directories of the devices it serves, for the next incarnation.
    func detachStore(_ dom: DomainRecord) {
        guard dom.store != nil else { return }
        xenstore.detach(domid: dom.domid.rawValue)
        dom.store = nil
        dom.process.storeKept = true
    }

    /// The domain whose store was kept for a restart in place is not coming back after all: it
    /// is released now (its nodes go, @releaseDomain fires).
    func releaseKeptStore(_ dom: DomainRecord) {
        guard dom.process.storeKept else { return }
        dom.process.storeKept = false
        xenstore.deliver(xenstore.engine.releaseDomain(dom.domid.rawValue))
    }

    /// The domain is destroyed: remove what libxl removes (`/local/domain/N`, `/vm/<uuid>`).
    func removeDomainTree(_ dom: DomainRecord) {
        // A migration to this same supervisor leaves two records with one uuid for a moment: the
        // source's end must not take the copy's /vm/<uuid> with it.
        let shared = domains.values.contains { $0 !== dom && $0.uuid == dom.uuid }
        store { e in
            var out = (try? e.rm("/local/domain/\(dom.domid)")) ?? []
            if !shared { out += (try? e.rm("/vm/\(dom.uuid)")) ?? [] }
            return out
        }
    }

    /// A domain kicked a port bound to domain 0 through the slow path (a hypercall): service its store.
    func kickDom0Services(_ dom: DomainRecord) {
        guard let s = dom.store else { return }
        EventFD(s.kick).signal()
    }
}
