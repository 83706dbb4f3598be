import DomainRuntime
import NetStack

extension Netfront {
    /// Connects vif `devid` and puts a guest stack on it, configured from the vif's `ip` and
    /// `gateway` keys, announced with a gratuitous ARP (what every network guest starts with).
    public static func connectWithStack(domain: Domain, devid: UInt32 = 0, timeout: Double = 30,
                                        options: NetfrontOptions = NetfrontOptions()) throws -> (Netfront, NetStack) {
        let front = try connect(domain: domain, devid: devid, timeout: timeout, options: options)
        guard let ip = front.ipText else {
            front.close(timeout: 5)
            throw NetfrontError.badConfig(device: front.label, reason: "no ip= in the vif spec (\(front.device.frontendPath)/ip is missing)")
        }
        do {
            let stack = NetStack(link: front, config: try NetStackConfig.parse(ip: ip, gateway: front.gatewayText))
            stack.announce()
            return (front, stack)
        } catch {
            front.close(timeout: 5)
            throw error
        }
    }
}
