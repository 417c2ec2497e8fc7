import Devices
import Machine
import X86

/// An interrupt a backend took from its controller at the start of a `tandem diff` step.
enum DiffDelivery: Equatable, CustomStringConvertible {
    case external(UInt8)
    case nmi

    var description: String {
        switch self {
        case .external(let v): "external interrupt vector \(hex(v))"
        case .nmi: "NMI"
        }
    }
}

/// What KVM asked the interrupt controller during one `tandem diff` step: the interrupt
/// it took (and injected), the APIC MSRs it read and wrote. The interpreter's
/// `ReplayedInterrupts` gets the same answers.
struct DiffControllerLog {
    var deliveries: [DiffDelivery] = []
    var msrReads: [(index: UInt32, value: UInt64?)] = []
    var msrWrites: [(index: UInt32, value: UInt64, result: Bool?)] = []
}

/// KVM's interrupt controller in `tandem diff`: the machine's real one (`APICBus`, with
/// the PIC, IOAPIC and timers behind it), logging what KVM takes. KVM may take an
/// interrupt only at the start of a step, before the instruction has touched a device
/// or an APIC MSR (`offering`): PVM completes an I/O instruction on re-entry and runs on, and an
/// injection there would land in the middle of what the interpreter sees as one step.
final class RecordedInterrupts: InterruptController, @unchecked Sendable {
    let bus: APICBus
    /// Set at the start of each step; cleared at its first device access and once an
    /// interrupt has been taken.
    var offering = true
    var log = DiffControllerLog()

    init(_ bus: APICBus) { self.bus = bus }

    /// A new step: KVM may take one interrupt before it runs.
    func beginStep() {
        offering = true
        log = DiffControllerLog()
    }

    func hasPendingInterrupt(vcpu: Int) -> Bool { offering && bus.hasPendingInterrupt(vcpu: vcpu) }

    func acknowledgeInterrupt(vcpu: Int) -> UInt8? {
        guard offering, let v = bus.acknowledgeInterrupt(vcpu: vcpu) else { return nil }
        log.deliveries.append(.external(v))
        offering = false
        return v
    }

    func takeNMI(vcpu: Int) -> Bool {
        guard offering, bus.takeNMI(vcpu: vcpu) else { return false }
        log.deliveries.append(.nmi)
        offering = false
        return true
    }

    // An MSR exit, like an I/O exit, is the middle of an instruction (RDMSR, WRMSR).
    func readMSR(vcpu: Int, _ index: UInt32) -> UInt64? {
        offering = false
        let v = bus.readMSR(vcpu: vcpu, index)
        log.msrReads.append((index, v))
        return v
    }

    func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64, tscNow: UInt64, tscKHz: UInt64) -> Bool? {
        offering = false
        let result = bus.writeMSR(vcpu: vcpu, index, value, tscNow: tscNow, tscKHz: tscKHz)
        log.msrWrites.append((index, value, result))
        return result
    }

    func taskPriority(vcpu: Int) -> UInt8 { bus.taskPriority(vcpu: vcpu) }
    func setTaskPriority(vcpu: Int, _ tpr: UInt8) { bus.setTaskPriority(vcpu: vcpu, tpr) }
}

/// The interpreter's interrupt controller in `tandem diff`: it does not decide anything.
/// It offers exactly the interrupt KVM took in this step (so the interpreter takes it at
/// the same instruction boundary, and the real controller is acknowledged once), answers
/// APIC MSR reads with KVM's values and checks the interpreter's MSR writes against
/// KVM's, without applying them a second time. Where the two disagree, `problems` says how.
final class ReplayedInterrupts: InterruptController, @unchecked Sendable {
    let bus: APICBus
    private var log = DiffControllerLog()
    private(set) var problems: [String] = []
    /// When KVM could not run the instruction, the interpreter runs it for both sides:
    /// its MSR accesses then go to the real controller.
    var live = false
    /// Testing the tester (`--inject-fault irq:vector`): replay each external interrupt
    /// with the next vector.
    var wrongVector = false

    init(_ bus: APICBus) { self.bus = bus }

    /// Replays `log` (what KVM did in this step).
    func replay(_ log: DiffControllerLog) {
        self.log = log
        problems = []
        live = false
    }

    /// The interrupt KVM took that the interpreter has not (yet) accepted.
    var undelivered: DiffDelivery? { log.deliveries.first }

    /// Checks that the interpreter made every APIC MSR write KVM made; adds a problem otherwise.
    func finishStep() {
        for w in log.msrWrites { problems.append("KVM wrote \(hex(w.value)) to APIC MSR \(hex(w.index)); the interpreter did not") }
        log.msrWrites = []
    }

    func hasPendingInterrupt(vcpu: Int) -> Bool {
        if case .external = log.deliveries.first { return true }
        return false
    }

    func acknowledgeInterrupt(vcpu: Int) -> UInt8? {
        guard case .external(let v) = log.deliveries.first else { return nil }
        log.deliveries.removeFirst()
        return wrongVector ? v &+ 1 : v
    }

    func takeNMI(vcpu: Int) -> Bool {
        guard log.deliveries.first == .nmi else { return false }
        log.deliveries.removeFirst()
        return true
    }

    func readMSR(vcpu: Int, _ index: UInt32) -> UInt64? {
        if live { return bus.readMSR(vcpu: vcpu, index) }
        if let first = log.msrReads.first, first.index == index {
            log.msrReads.removeFirst()
            return first.value
        }
        // A read KVM did not make (the interpreter reads IA32_APIC_BASE back after writing
        // it): the register's current value, which reading does not change.
        return bus.readMSR(vcpu: vcpu, index)
    }

    func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64, tscNow: UInt64, tscKHz: UInt64) -> Bool? {
        if live { return bus.writeMSR(vcpu: vcpu, index, value, tscNow: tscNow, tscKHz: tscKHz) }
        guard let first = log.msrWrites.first else {
            problems.append("the interpreter wrote \(hex(value)) to APIC MSR \(hex(index)); KVM wrote none")
            return true
        }
        log.msrWrites.removeFirst()
        if first.index != index || first.value != value {
            problems.append("the interpreter wrote \(hex(value)) to APIC MSR \(hex(index)); KVM wrote \(hex(first.value)) to \(hex(first.index))")
        }
        return first.result
    }

    // CR8: KVM's write has reached the APIC already; the interpreter's own CR8 is compared.
    func taskPriority(vcpu: Int) -> UInt8 { bus.taskPriority(vcpu: vcpu) }
    func setTaskPriority(vcpu: Int, _ tpr: UInt8) { if live { bus.setTaskPriority(vcpu: vcpu, tpr) } }
}
