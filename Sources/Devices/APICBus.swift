import Synchronization
import X86

/// The interrupt fabric of the machine: every vCPU's local APIC, the IOAPIC and the 8259A
/// pair (through the bootstrap processor's LINT0 in virtual-wire mode). It is the
/// `InterruptController` both engines ask at instruction boundaries, carries IPIs and
/// IOAPIC messages between APICs, and tells the machine (`onRequest`) which vCPU should
/// look for an event: the machine kicks that vCPU out of its engine or wakes it from HLT.
public final class APICBus: InterruptController, @unchecked Sendable {
    public let clock: MachineClock
    /// Set in `init`, then only read (by every vCPU at every turn of its loop: no dynamic
    /// exclusivity check on it).
    @exclusivity(unchecked) public private(set) var lapics: [LocalAPIC] = []
    public let pic: PIC8259Pair
    public private(set) var ioapic: IOAPIC!
    /// Whether CPUID offers x2APIC (then IA32_APIC_BASE may enable it).
    public let x2APICAvailable: Bool
    private let onRequest: @Sendable (Int) -> Void
    /// Per vCPU, the offset that turns machine nanoseconds into its TSC (set by the engine
    /// that owns the TSC), for TSC-deadline mode.
    private let tscOffsets: Mutex<[Int64]>
    /// A vCPU saw the PIC's INTR and has not acknowledged it yet (see `acknowledgeInterrupt`).
    private let picRequestSeen = Atomic<Bool>(false)

    /// `output`: what `pic` calls when its INTR rises; the bus connects it to its local APICs.
    public init(cpus: Int, pic: PIC8259Pair, output: PICOutput = PICOutput(), timers: TimerService, x2APICAvailable: Bool,
                onRequest: @escaping @Sendable (Int) -> Void) {
        clock = timers.clock
        self.pic = pic
        self.x2APICAvailable = x2APICAvailable
        self.onRequest = onRequest
        tscOffsets = Mutex(Array(repeating: 0, count: cpus))
        lapics = (0..<cpus).map { LocalAPIC(index: $0, bus: self, timers: timers) }
        // The ID the MADT and MP table give it (FirmwareTables.ioapicID): the CPU count.
        ioapic = IOAPIC(id: UInt8(min(cpus, 255)), bus: self)
        output.connect(lapics, notify: onRequest)
    }

    /// Asks vCPU `index` to look at its events.
    func notify(_ index: Int) { onRequest(index) }

    // MARK: InterruptController

    public func hasPendingInterrupt(vcpu: Int) -> Bool {
        let l = lapics[vcpu]
        if l.deliverableVector() != nil { return true }
        guard l.acceptsPICInterrupts, pic.hasPendingInterrupt(vcpu: 0) else { return false }
        picRequestSeen.store(true, ordering: .relaxed)
        return true
    }

    /// Once a vCPU has seen the PIC's INTR (`hasPendingInterrupt` said yes for it), its
    /// INTA cycle runs even if the request has gone away since, and the 8259A then answers
    /// the spurious IRQ 7 (or 15).
    public func acknowledgeInterrupt(vcpu: Int) -> UInt8? {
        let l = lapics[vcpu]
        if let v = l.acknowledge() {
            ioapic.vectorTaken(v)
            return v
        }
        let seen = picRequestSeen.exchange(false, ordering: .relaxed)
        guard l.acceptsPICInterrupts, seen || pic.hasPendingInterrupt(vcpu: 0) else { return nil }
        return pic.acknowledgeInterrupt(vcpu: 0)
    }

    public func takeNMI(vcpu: Int) -> Bool { lapics[vcpu].takeNMI() }

    public func hasNMI(vcpu: Int) -> Bool { lapics[vcpu].hasNMI }

    /// Takes a pending INIT for `vcpu` (its APIC has already reset itself).
    public func takeINIT(vcpu: Int) -> Bool { lapics[vcpu].takeINIT() }

    /// Takes a pending start-up IPI's vector for `vcpu`.
    public func takeSIPI(vcpu: Int) -> UInt8? { lapics[vcpu].takeSIPI() }

    public func hasStartupEvent(vcpu: Int) -> Bool { lapics[vcpu].hasStartupEvent }

    public func taskPriority(vcpu: Int) -> UInt8 { lapics[vcpu].taskPriority }

    public func setTaskPriority(vcpu: Int, _ tpr: UInt8) {
        if lapics[vcpu].taskPriority != tpr { lapics[vcpu].taskPriority = tpr }
    }

    // MARK: Messages

    /// Sends a message from `source` (nil: the IOAPIC) to the APICs it addresses.
    func send(_ m: InterruptMessage, from source: Int?, shorthand: UInt32 = 0) {
        var targets: [LocalAPIC]
        switch shorthand {
        case 1: targets = source.map { [lapics[$0]] } ?? []
        case 2: targets = lapics
        case 3: targets = lapics.filter { $0.index != source }
        default: targets = lapics.filter { $0.matches(destination: m.destination, logical: m.logical) }
        }
        if m.mode == .lowestPriority, targets.count > 1 {
            // Arbitration: the lowest task priority wins, the lowest APIC ID breaking ties
            // (the SDM leaves the choice among equals to the chipset).
            targets = [targets.min { ($0.taskPriority, $0.apicID) < ($1.taskPriority, $1.apicID) }!]
        }
        for t in targets where t.accept(m) { notify(t.index) }
    }

    /// An EOI for a level-triggered vector: the IOAPIC clears the remote IRR of the pins
    /// that delivered it.
    func broadcastEOI(_ vector: UInt8) { ioapic.endOfInterrupt(vector) }

    // MARK: Register access from the engines

    /// Whether `address` falls in vCPU `vcpu`'s xAPIC MMIO page.
    public func isLocalAPIC(_ address: UInt64, vcpu: Int) -> Bool {
        guard let base = lapics[vcpu].mmioBase else { return false }
        return address & ~0xFFF == base
    }

    public func mmioRead(vcpu: Int, _ address: UInt64, size: Int) -> UInt64 {
        let offset = UInt32(address & 0xFF0)
        // Registers are 32 bits wide at 16-byte strides; other bytes read as zero.
        guard address & 0xF < 4 else { return 0 }
        let value = lapics[vcpu].readRegister(offset, now: clock.now())
        return UInt64(value >> ((UInt32(address) & 3) * 8))
    }

    public func mmioWrite(vcpu: Int, _ address: UInt64, size: Int, value: UInt64) {
        guard address & 0xF == 0 else { return }
        let offset = UInt32(address & 0xFF0)
        if let (m, shorthand) = lapics[vcpu].writeRegister(offset, UInt32(truncatingIfNeeded: value), now: clock.now()) {
            send(m, from: vcpu, shorthand: shorthand)
        }
    }

    /// RDMSR for the MSRs the APIC owns: IA32_APIC_BASE, IA32_TSC_DEADLINE and, in x2APIC
    /// mode, 0x800-0x8FF. nil: not an APIC MSR, or one that faults (#GP) now.
    public func readMSR(vcpu: Int, _ index: UInt32) -> UInt64? {
        let l = lapics[vcpu]
        switch index {
        case MSR.apicBase: return l.baseMSR
        case MSR.tscDeadline: return l.tscDeadline
        case 0x800...0x8FF:
            guard l.isX2APIC else { return nil }
            let offset = (index - 0x800) << 4
            switch offset {
            case 0x300:
                let low = l.readRegister(0x300, now: clock.now())
                return UInt64(l.registers.withLock { $0.icrHigh }) << 32 | UInt64(low)
            case 0xB0, 0x310, 0x3F0, 0xE0: return nil   // write-only or absent in x2APIC mode
            case 0x20, 0x30, 0x80, 0xA0, 0xD0, 0xF0, 0x100...0x270, 0x280, 0x2F0, 0x320...0x390, 0x3E0:
                return UInt64(l.readRegister(offset, now: clock.now()))
            default: return nil
            }
        default: return nil
        }
    }

    /// WRMSR for the APIC's MSRs. `tscNow` is the vCPU's TSC now, ticking at `tscKHz`
    /// (TSC-deadline mode). Returns false when the write faults (#GP), nil when the MSR is
    /// not the APIC's.
    public func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64, tscNow: UInt64, tscKHz: UInt64 = 1_000_000) -> Bool? {
        let l = lapics[vcpu]
        switch index {
        case MSR.apicBase: return l.writeBase(value, x2APICAvailable: x2APICAvailable)
        case MSR.tscDeadline:
            let now = clock.now()
            let ticks = value > tscNow ? value - tscNow : 0
            let nanoseconds = Double(ticks) * 1e6 / Double(max(tscKHz, 1))
            l.writeTSCDeadline(value, machineTime: now &+ UInt64(min(nanoseconds, 1.8e19)))
            return true
        case 0x800...0x8FF:
            guard l.isX2APIC else { return nil }
            let offset = (index - 0x800) << 4
            switch offset {
            case 0x300:
                l.registers.withLock { $0.icrHigh = UInt32(value >> 32) }
                fallthrough
            case 0x80, 0xB0, 0xF0, 0x280, 0x2F0, 0x320...0x380, 0x3E0, 0x3F0:
                if offset == 0xB0 && value != 0 { return false }
                if let (m, shorthand) = l.writeRegister(offset, UInt32(truncatingIfNeeded: value), now: clock.now()) {
                    send(m, from: vcpu, shorthand: shorthand)
                }
                return true
            default: return false
            }
        default: return nil
        }
    }

    /// Whether some vCPU has an NMI, INIT or start-up IPI waiting: events that end HLT even
    /// with IF clear (sent just before its sender halted, to a vCPU not yet awake to take it).
    public func anyNonMaskableEvent() -> Bool {
        lapics.contains { $0.hasNMI || $0.hasStartupEvent }
    }

    /// Whether an interrupt could still arrive for a halted machine: an armed timer is
    /// the caller's to check; this covers pending requests already latched anywhere.
    public func anyPending() -> Bool {
        anyNonMaskableEvent() || lapics.contains { $0.deliverableVector() != nil } || pic.hasPendingInterrupt(vcpu: 0)
    }
}

/// Where the 8259A pair's INTR goes: to whichever vCPUs accept ExtINT on LINT0. The PIC
/// is built before the bus and its APICs, which connect this once, before any vCPU runs
/// (then it is only read). It holds the APICs and the bus's notifier rather than the bus:
/// the bus owns the PIC, so a strong reference back would be a cycle, and a weak one would
/// give the bus a side table, sending every retain of it — several on each exit, the
/// engines ask it for interrupts — down Swift's slow reference-counting path.
public final class PICOutput: @unchecked Sendable {
    private var lapics: [LocalAPIC] = []
    private var notify: @Sendable (Int) -> Void = { _ in }

    public init() {}

    func connect(_ lapics: [LocalAPIC], notify: @escaping @Sendable (Int) -> Void) {
        self.lapics = lapics
        self.notify = notify
    }

    /// The 8259A pair's INTR changed.
    public func raised() {
        for l in lapics where l.acceptsPICInterrupts { notify(l.index) }
    }
}

// MARK: Snapshot

extension APICBus {
    /// Each local APIC, the IOAPIC, the TSC offsets for TSC-deadline mode, and whether a
    /// vCPU has seen the PIC's request (the 8259A pair is saved on its own).
    public func saveState(_ w: inout StateWriter, now: UInt64) {
        for l in lapics { l.saveState(&w, now: now) }
        ioapic.saveState(&w)
        for o in tscOffsets.withLock({ $0 }) { w.i64(o) }
        w.bool(picRequestSeen.load(ordering: .relaxed))
    }

    public func restoreState(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        for l in lapics { try l.restoreState(&r, now: now) }
        try ioapic.restoreState(&r)
        var offsets: [Int64] = []
        for _ in lapics { offsets.append(try r.i64()) }
        tscOffsets.withLock { $0 = offsets }
        picRequestSeen.store(try r.bool(), ordering: .relaxed)
    }
}
