// balloon-demo: gives memory back to the host and takes it again, printing what the host sees
// (the pages really backing the domain's RAM) and what the supervisor accounts.
import DomainRuntime
import Glibc

let domain = Domain.start()
let mem = domain.memory
func show(_ what: String) {
    print("\(what): host backs \(mem.hostBytes >> 20) MiB, reservation \(mem.currentReservation / 256) MiB of max \(mem.maximumReservation / 256) MiB")
}
let populated = Int(mem.currentReservation)
memset(mem.base, 0xA5, populated * 4096)  // use all of it
show("using all memory")
let chunk = populated / 2
let top = (populated - chunk)..<populated
mem.decreaseReservation(top.map { PFN(UInt64($0)) })
show("ballooned out \(chunk / 256) MiB")
mem.populate(top.map { PFN(UInt64($0)) })
show("populated again (not yet touched)")
memset(mem.base + top.lowerBound * 4096, 0x5A, chunk * 4096)
show("touched again")
domain.shutdown(.poweroff)
