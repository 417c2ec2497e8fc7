import Devices
import GuestMemory
import Machine
import RunLoop

// How `tandem diff` answers each side's port and MMIO accesses through the one exit
// handler (RunLoop's `ExitHandler`): one device model answers KVM, once; the interpreter
// is given the same answers, and its writes must be KVM's.

/// KVM's side: the machine's devices answer, and what they answered is kept — the values
/// read, to replay to the interpreter, and the writes, to compare with its own.
struct RecordingBuses: ExitAnswering {
    var devices: DeviceBuses
    var reads: [UInt64] = []
    var writes: [(UInt16, Int, UInt32)] = []
    var mmioWrites: [(UInt64, Int, UInt64)] = []

    init(_ devices: DeviceModel) { self.devices = DeviceBuses(devices, vcpu: 0) }

    mutating func portIn(_ port: UInt16, size: Int) -> UInt32 {
        let v = devices.portIn(port, size: size)
        reads.append(UInt64(v))
        return v
    }

    mutating func portOut(_ port: UInt16, size: Int, value: UInt32) {
        devices.portOut(port, size: size, value: value)
        writes.append((port, size, value))
    }

    mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        let v = devices.mmioRead(address, size: size)
        // The interpreter reads unmapped memory without an exit: only device reads are
        // replayed to it.
        if PhysicalLayout.deviceWindow.contains(address) { reads.append(v) }
        return v
    }

    mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        devices.mmioWrite(address, size: size, value: value)
        // The interpreter writes unmapped memory without an exit (see reads).
        if PhysicalLayout.deviceWindow.contains(address) { mmioWrites.append((address, size, value)) }
    }
}

/// The interpreter's side: KVM's reads replayed in order, its writes compared with KVM's
/// (the first difference is kept in `mismatch`, and nothing after it is compared). Where
/// KVM could not run the instruction (`live`), the devices answer the interpreter itself.
struct ReplayingBuses: ExitAnswering {
    var live: DeviceBuses?
    var reads: ArraySlice<UInt64>
    let writes: [(UInt16, Int, UInt32)]
    /// KVM's port writes the interpreter has made so far.
    var writesMatched = 0
    /// KVM's MMIO writes the interpreter has not made yet.
    var mmioWrites: ArraySlice<(UInt64, Int, UInt64)>
    var mismatch: String?

    init(replaying kvm: RecordingBuses, live: DeviceModel?) {
        self.live = live.map { DeviceBuses($0, vcpu: 0) }
        reads = kvm.reads[...]
        writes = kvm.writes
        mmioWrites = kvm.mmioWrites[...]
    }

    mutating func portIn(_ port: UInt16, size: Int) -> UInt32 {
        if live != nil { return live!.portIn(port, size: size) }
        return reads.popFirst().map { UInt32(truncatingIfNeeded: $0) } ?? 0xFFFF_FFFF
    }

    mutating func portOut(_ port: UInt16, size: Int, value: UInt32) {
        if live != nil { return live!.portOut(port, size: size, value: value) }
        guard mismatch == nil else { return }
        guard writesMatched < writes.count, writes[writesMatched] == (port, size, value) else {
            let kvmWrote = writesMatched < writes.count ? ", KVM wrote \(hex(writes[writesMatched].2)) to port \(hex(writes[writesMatched].0))" : ", KVM wrote nothing"
            mismatch = "port output differs: interpreter wrote \(hex(value)) to port \(hex(port)) (\(size) bytes)\(kvmWrote)"
            return
        }
        writesMatched += 1
    }

    mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        if live != nil { return live!.mmioRead(address, size: size) }
        return reads.popFirst() ?? .max
    }

    mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        if live != nil { return live!.mmioWrite(address, size: size, value: value) }
        guard mismatch == nil else { return }
        // KVM's write reached the device; the interpreter's must be the same one.
        guard let first = mmioWrites.first, first == (address, size, value) else {
            let kvmWrote = mmioWrites.first.map { "KVM wrote \(hex($0.2)) to \(hex($0.0)) (\($0.1) bytes)" } ?? "KVM wrote nothing"
            mismatch = "MMIO output differs: the interpreter wrote \(hex(value)) to \(hex(address)) (\(size) bytes), \(kvmWrote)"
            return
        }
        mmioWrites.removeFirst()
    }
}
