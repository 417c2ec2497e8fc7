import Synchronization
import X86

/// 256 interrupt-vector bits (IRR, ISR, TMR).
struct VectorSet {
    var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    subscript(_ vector: UInt8) -> Bool {
        get {
            let bit = UInt64(1) << (vector & 63)
            switch vector >> 6 {
            case 0: return words.0 & bit != 0
            case 1: return words.1 & bit != 0
            case 2: return words.2 & bit != 0
            default: return words.3 & bit != 0
            }
        }
        set {
            let bit = UInt64(1) << (vector & 63)
            switch vector >> 6 {
            case 0: words.0 = newValue ? words.0 | bit : words.0 & ~bit
            case 1: words.1 = newValue ? words.1 | bit : words.1 & ~bit
            case 2: words.2 = newValue ? words.2 | bit : words.2 & ~bit
            default: words.3 = newValue ? words.3 | bit : words.3 & ~bit
            }
        }
    }

    /// The highest vector set, or nil.
    var highest: UInt8? {
        if words.3 != 0 { return UInt8(192 + 63 - words.3.leadingZeroBitCount) }
        if words.2 != 0 { return UInt8(128 + 63 - words.2.leadingZeroBitCount) }
        if words.1 != 0 { return UInt8(64 + 63 - words.1.leadingZeroBitCount) }
        if words.0 != 0 { return UInt8(63 - words.0.leadingZeroBitCount) }
        return nil
    }

    /// Bits 32k..32k+31, as the APIC's register k of IRR/ISR/TMR shows them.
    func register(_ k: Int) -> UInt32 {
        let word: UInt64
        switch k >> 1 {
        case 0: word = words.0
        case 1: word = words.1
        case 2: word = words.2
        default: word = words.3
        }
        return UInt32(truncatingIfNeeded: word >> (UInt64(k & 1) * 32))
    }
}

/// An interrupt message on the APIC bus (from an IOAPIC, an IPI or an LVT entry).
public struct InterruptMessage: Sendable, Equatable {
    public enum DeliveryMode: UInt8, Sendable {
        case fixed = 0, lowestPriority = 1, smi = 2, nmi = 4, initialize = 5, startup = 6, extINT = 7
    }
    public var vector: UInt8
    public var mode: DeliveryMode
    public var logical: Bool
    public var level: Bool
    public var destination: UInt32
    public init(vector: UInt8, mode: DeliveryMode, logical: Bool = false, level: Bool = false, destination: UInt32) {
        self.vector = vector
        self.mode = mode
        self.logical = logical
        self.level = level
        self.destination = destination
    }
}

/// A local APIC: one per vCPU, in xAPIC mode (MMIO at 0xFEE00000) or x2APIC mode (MSRs
/// 0x800-0x8FF), as IA32_APIC_BASE selects. The register set of the SDM (vol. 3A ch. 11)
/// with interrupt acceptance (IRR/ISR/TMR, TPR/PPR, EOI with broadcast to the IOAPIC),
/// the LVT, the timer (one-shot, periodic, TSC-deadline; a 1 GHz bus clock through the
/// divide register), the ICR (fixed, lowest priority, NMI, INIT, SIPI, SMI ignored; physical
/// and logical destinations; shorthands) and the error status register.
public final class LocalAPIC: @unchecked Sendable {
    public static let defaultBase: UInt64 = 0xFEE0_0000
    public static let mmioRange: ClosedRange<UInt64> = 0xFEE0_0000...0xFEE0_0FFF
    /// The APIC timer's input clock before the divider: 1 GHz, one count per nanosecond.
    public static let busHz: UInt64 = 1_000_000_000
    public static let version: UInt32 = 0x0005_0014   // version 0x14, 6 LVT entries (max LVT 5)

    enum LVT: Int { case cmci = 0, timer, thermal, performance, lint0, lint1, error }
    static let lvtMasked: UInt32 = 1 << 16

    struct Registers {
        var base: UInt64
        var tpr: UInt8 = 0
        var ldr: UInt32 = 0
        var dfr: UInt32 = 0xFFFF_FFFF
        var svr: UInt32 = 0xFF
        var irr = VectorSet()
        var isr = VectorSet()
        var tmr = VectorSet()
        var esr: UInt32 = 0
        var pendingESR: UInt32 = 0
        var lvt: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000, 0x10000)
        var icrLow: UInt32 = 0
        var icrHigh: UInt32 = 0
        var divide: UInt32 = 0
        var initialCount: UInt32 = 0
        /// Machine time when the current count was last loaded with the initial count.
        var timerStart: UInt64 = 0
        var timerRunning = false
        /// Periodic mode: the periods since `timerStart` already turned into interrupts.
        var periodsCounted: UInt64 = 0
        /// Periodic mode with a timer slack: ticks that fell due before the timer fired
        /// (a halted vCPU sleeping to the slack's next multiple) or while one waited in the
        /// IRR, raised one at each EOI of the timer's vector; never more than a slack's
        /// worth (slack / period + 1). Not kept in snapshots.
        var lateTicks: UInt64 = 0
        var tscDeadline: UInt64 = 0
        var nmiPending = false
        var initPending = false
        var sipiVector: UInt8?

        var x2APIC: Bool { base & (1 << 10) != 0 }
        var globallyEnabled: Bool { base & (1 << 11) != 0 }
        var softwareEnabled: Bool { svr & 0x100 != 0 }

        func lvt(_ e: LVT) -> UInt32 {
            switch e {
            case .cmci: lvt.0
            case .timer: lvt.1
            case .thermal: lvt.2
            case .performance: lvt.3
            case .lint0: lvt.4
            case .lint1: lvt.5
            case .error: lvt.6
            }
        }

        mutating func setLVT(_ e: LVT, _ v: UInt32) {
            switch e {
            case .cmci: lvt.0 = v
            case .timer: lvt.1 = v
            case .thermal: lvt.2 = v
            case .performance: lvt.3 = v
            case .lint0: lvt.4 = v
            case .lint1: lvt.5 = v
            case .error: lvt.6 = v
            }
        }

        /// PPR: the higher of the TPR and the in-service vector's priority class.
        var ppr: UInt8 {
            let isrv = isr.highest ?? 0
            return tpr >> 4 >= isrv >> 4 ? tpr : isrv & 0xF0
        }

        var timerMode: UInt32 { lvt.1 >> 17 & 3 }
        var divisor: UInt64 {
            let bits = (divide & 3) | (divide >> 1 & 4)
            return bits == 7 ? 1 : UInt64(2) << bits
        }
    }

    public let index: Int
    public let apicID: UInt32
    let registers: Mutex<Registers>
    unowned let bus: APICBus
    private var timer: DeviceTimer!
    private var timerHolder: AnyObject?

    init(index: Int, bus: APICBus, timers: TimerService) {
        self.index = index
        self.apicID = UInt32(index)
        self.bus = bus
        var r = Registers(base: Self.defaultBase | (1 << 11) | (index == 0 ? 1 << 8 : 0))
        Self.resetLVT(&r, bootstrap: index == 0)
        registers = Mutex(r)
        timer = timers.makeTimer("lapic\(index)", owner: index, handler: self, holder: &timerHolder) { $0.timerFired() }
    }

    /// The LVT after reset: all masked, except that the bootstrap processor's LINT0 is an
    /// unmasked ExtINT and LINT1 an NMI — the virtual-wire mode PC firmware leaves behind,
    /// so that a guest that only programs the 8259A pair still receives its interrupts.
    static func resetLVT(_ r: inout Registers, bootstrap: Bool) {
        for e in [LVT.cmci, .timer, .thermal, .performance, .lint0, .lint1, .error] { r.setLVT(e, lvtMasked) }
        if bootstrap {
            r.setLVT(.lint0, 0x700)
            r.setLVT(.lint1, 0x400)
        }
    }

    // MARK: Interrupt acceptance (any thread)

    /// Accepts a message addressed to this APIC. Returns true when the vCPU should look.
    func accept(_ m: InterruptMessage) -> Bool {
        registers.withLock { r -> Bool in
            guard r.globallyEnabled else { return false }
            switch m.mode {
            case .fixed, .lowestPriority:
                guard r.softwareEnabled else { return false }
                guard m.vector >= 16 else {
                    r.pendingESR |= 1 << 6   // receive illegal vector
                    return false
                }
                r.irr[m.vector] = true
                r.tmr[m.vector] = m.level
                return true
            case .nmi:
                r.nmiPending = true
                return true
            case .initialize:
                // INIT level de-assert (level 0, level-triggered) does nothing on P6 and later.
                if m.level == false && m.vector == 0xFF { return false }
                r.initPending = true
                r.sipiVector = nil   // a start-up IPI from before the INIT is void
                return true
            case .startup:
                r.sipiVector = m.vector
                return true
            case .smi, .extINT:
                return false
            }
        }
    }

    /// The highest pending vector the vCPU would take now (above the PPR's class), or nil.
    func deliverableVector() -> UInt8? {
        registers.withLock { r -> UInt8? in
            guard let v = r.irr.highest, v >> 4 > r.ppr >> 4 else { return nil }
            return v
        }
    }

    /// Whether the 8259A's INTR reaches the vCPU: LINT0 is an unmasked ExtINT, or the APIC
    /// is globally disabled (then the pin is wired straight through).
    var acceptsPICInterrupts: Bool {
        registers.withLock { r in
            !r.globallyEnabled || (r.lvt(.lint0) & Self.lvtMasked == 0 && r.lvt(.lint0) >> 8 & 7 == 7)
        }
    }

    /// INTA: moves the highest deliverable vector from IRR to ISR.
    func acknowledge() -> UInt8? {
        registers.withLock { r -> UInt8? in
            guard let v = r.irr.highest, v >> 4 > r.ppr >> 4 else { return nil }
            r.irr[v] = false
            r.isr[v] = true
            return v
        }
    }

    func takeNMI() -> Bool {
        registers.withLock { r in
            defer { r.nmiPending = false }
            return r.nmiPending
        }
    }

    /// Takes a pending INIT: the APIC returns to its power-on state (keeping its ID and
    /// base), as the vCPU does. A start-up IPI still latched came after the INIT (`accept`
    /// voids earlier ones) and stays for the vCPU that now waits for it: an AP whose
    /// thread first looks after the INIT-SIPI-SIPI has been sent (a loaded host) starts.
    func takeINIT() -> Bool {
        let taken = registers.withLock { r -> Bool in
            guard r.initPending else { return false }
            let base = r.base, startup = r.sipiVector
            r = Registers(base: base)
            Self.resetLVT(&r, bootstrap: false)
            r.sipiVector = startup
            return true
        }
        if taken { timer.disarm() }
        return taken
    }

    func takeSIPI() -> UInt8? {
        registers.withLock { r in
            defer { r.sipiVector = nil }
            return r.sipiVector
        }
    }

    var hasStartupEvent: Bool { registers.withLock { $0.initPending || $0.sipiVector != nil } }
    var hasNMI: Bool { registers.withLock { $0.nmiPending } }

    // MARK: TPR (CR8)

    public var taskPriority: UInt8 {
        get { registers.withLock { $0.tpr } }
        set {
            registers.withLock { $0.tpr = newValue }
            if bus.hasPendingInterrupt(vcpu: index) { bus.notify(index) }
        }
    }

    // MARK: Registers

    /// Reads register `offset` (the xAPIC MMIO offset; x2APIC MSR 0x800 + n is offset n << 4).
    func readRegister(_ offset: UInt32, now: UInt64) -> UInt32 {
        registers.withLock { r -> UInt32 in
            switch offset {
            case 0x20: return r.x2APIC ? apicID : apicID << 24
            case 0x30: return Self.version
            case 0x80: return UInt32(r.tpr)
            case 0x90: return 0   // APR: arbitration priority (not modelled beyond zero)
            case 0xA0: return UInt32(r.ppr)
            case 0xD0: return r.x2APIC ? x2APICLogicalID : r.ldr
            case 0xE0: return r.dfr
            case 0xF0: return r.svr
            case 0x100...0x170: return r.isr.register(Int(offset - 0x100) >> 4)
            case 0x180...0x1F0: return r.tmr.register(Int(offset - 0x180) >> 4)
            case 0x200...0x270: return r.irr.register(Int(offset - 0x200) >> 4)
            case 0x280: return r.esr
            case 0x2F0: return r.lvt(.cmci)
            case 0x300: return r.icrLow & ~(1 << 12)   // delivery is immediate: never "send pending"
            case 0x310: return r.icrHigh
            case 0x320: return r.lvt(.timer)
            case 0x330: return r.lvt(.thermal)
            case 0x340: return r.lvt(.performance)
            case 0x350: return r.lvt(.lint0)
            case 0x360: return r.lvt(.lint1)
            case 0x370: return r.lvt(.error)
            case 0x380: return r.initialCount
            case 0x390: return Self.currentCount(r, now: now)
            case 0x3E0: return r.divide
            default: return 0
            }
        }
    }

    /// The x2APIC logical ID: cluster (ID bits 31:4) in bits 31:16, one bit per member.
    var x2APICLogicalID: UInt32 { (apicID >> 4) << 16 | 1 << (apicID & 15) }

    static func currentCount(_ r: Registers, now: UInt64) -> UInt32 {
        guard r.timerRunning, r.initialCount != 0, r.timerMode != 2 else { return 0 }
        let ticks = (now &- r.timerStart) / r.divisor
        if r.timerMode == 1 { return r.initialCount - UInt32(ticks % UInt64(r.initialCount)) }
        return ticks >= UInt64(r.initialCount) ? 0 : r.initialCount - UInt32(ticks)
    }

    /// Writes register `offset`. Returns an IPI to send (the ICR was written) or nil.
    func writeRegister(_ offset: UInt32, _ value: UInt32, now: UInt64) -> (InterruptMessage, shorthand: UInt32)? {
        var ipi: (InterruptMessage, shorthand: UInt32)?
        var timerDeadline: UInt64?? = .none   // .some(nil): disarm
        var timerPeriodic = false
        var eoiVector: UInt8?
        var reevaluate = false
        registers.withLock { r in
            switch offset {
            case 0x20 where !r.x2APIC: break   // the ID is fixed by the machine (read-only here)
            case 0x80:
                r.tpr = UInt8(value & 0xFF)
                reevaluate = true
            case 0xB0:
                if let v = r.isr.highest {
                    r.isr[v] = false
                    if r.tmr[v] && r.svr & (1 << 12) == 0 { eoiVector = v }
                    if r.lateTicks > 0 { Self.raiseLateTick(&r, after: v) }
                }
                reevaluate = true
            case 0xD0 where !r.x2APIC: r.ldr = value & 0xFF00_0000
            case 0xE0 where !r.x2APIC: r.dfr = value | 0x0FFF_FFFF
            case 0xF0:
                r.svr = value & 0x11FF
                if !r.softwareEnabled {
                    // Software disable masks every LVT entry.
                    for e in [LVT.cmci, .timer, .thermal, .performance, .lint0, .lint1, .error] {
                        r.setLVT(e, r.lvt(e) | Self.lvtMasked)
                    }
                }
                reevaluate = true
            case 0x280:
                r.esr = r.pendingESR
                r.pendingESR = 0
            case 0x2F0: r.setLVT(.cmci, Self.maskedIfDisabled(r, value & 0x1_07FF))
            case 0x300:
                r.icrLow = value & 0x000C_CFFF
                ipi = Self.decodeICR(r.icrLow, high: r.icrHigh, x2APIC: r.x2APIC)
            case 0x310 where !r.x2APIC: r.icrHigh = value & 0xFF00_0000
            case 0x320:
                let old = r.timerMode
                r.setLVT(.timer, Self.maskedIfDisabled(r, value & 0x7_10FF))
                if old != r.timerMode {
                    // A mode change stops the timer (the SDM: counts and the deadline clear).
                    r.timerRunning = false
                    r.tscDeadline = 0
                    r.lateTicks = 0
                    timerDeadline = .some(nil)
                }
            case 0x330: r.setLVT(.thermal, Self.maskedIfDisabled(r, value & 0x1_07FF))
            case 0x340: r.setLVT(.performance, Self.maskedIfDisabled(r, value & 0x1_07FF))
            case 0x350:
                r.setLVT(.lint0, Self.maskedIfDisabled(r, value & 0x1_F7FF))
                reevaluate = true
            case 0x360: r.setLVT(.lint1, Self.maskedIfDisabled(r, value & 0x1_F7FF))
            case 0x370: r.setLVT(.error, Self.maskedIfDisabled(r, value & 0x1_00FF))
            case 0x380:
                guard r.timerMode != 2 else { break }   // ignored in TSC-deadline mode
                r.initialCount = value
                r.timerStart = now
                r.timerRunning = value != 0
                r.periodsCounted = 0
                r.lateTicks = 0
                timerPeriodic = r.timerMode == 1
                timerDeadline = .some(value != 0 ? now &+ UInt64(value) &* r.divisor : nil)
            case 0x3E0:
                // The count continues at the new rate from its current value.
                let current = Self.currentCount(r, now: now)
                r.divide = value & 0xB
                if r.timerRunning, r.timerMode != 2, current != 0 {
                    r.timerStart = now &- (UInt64(r.initialCount - current) &* r.divisor)
                    r.periodsCounted = 0   // less than a period since the (new) start
                    timerPeriodic = r.timerMode == 1
                    timerDeadline = .some(now &+ UInt64(current) &* r.divisor)
                }
            case 0x3F0 where r.x2APIC:
                // SELF IPI.
                ipi = (InterruptMessage(vector: UInt8(value & 0xFF), mode: .fixed, destination: 0), shorthand: 1)
            default:
                if offset != 0x20 && offset != 0x30 && !(0x90...0xA0).contains(offset) && offset < 0x400 {
                    r.pendingESR |= 1 << 7   // illegal register address
                }
            }
        }
        if let deadline = timerDeadline {
            if let deadline { timer.arm(at: deadline, catchesUp: timerPeriodic) } else { timer.disarm() }
        }
        if let eoiVector { bus.broadcastEOI(eoiVector) }
        // An EOI, TPR or SVR change may let a held-back interrupt through.
        if reevaluate && bus.hasPendingInterrupt(vcpu: index) { bus.notify(index) }
        return ipi
    }

    private static func maskedIfDisabled(_ r: Registers, _ v: UInt32) -> UInt32 {
        r.softwareEnabled ? v : v | lvtMasked
    }

    static func decodeICR(_ low: UInt32, high: UInt32, x2APIC: Bool) -> (InterruptMessage, shorthand: UInt32) {
        let mode = InterruptMessage.DeliveryMode(rawValue: UInt8(low >> 8 & 7)) ?? .fixed
        var m = InterruptMessage(vector: UInt8(low & 0xFF), mode: mode, logical: low & (1 << 11) != 0,
                                 level: low & (1 << 14) != 0, destination: x2APIC ? high : high >> 24)
        // INIT level de-assert: trigger = level, level = de-assert.
        if mode == .initialize && low & (1 << 15) != 0 && low & (1 << 14) == 0 { m.vector = 0xFF; m.level = false }
        else if mode == .initialize { m.level = true }
        return (m, shorthand: low >> 18 & 3)
    }

    /// Whether a message with this destination addresses this APIC.
    func matches(destination: UInt32, logical: Bool) -> Bool {
        registers.withLock { r in
            if r.x2APIC {
                if destination == 0xFFFF_FFFF { return true }
                if !logical { return destination == apicID }
                let id = x2APICLogicalID
                return destination >> 16 == id >> 16 && destination & id & 0xFFFF != 0
            }
            let d = destination & 0xFF
            if d == 0xFF { return true }
            if !logical { return d == apicID & 0xFF }
            let ldr = r.ldr >> 24
            if r.dfr >> 28 == 0xF { return d & ldr != 0 }   // flat model
            return d >> 4 == ldr >> 4 && d & ldr & 0xF != 0   // cluster model
        }
    }

    // MARK: MSRs (x2APIC, APIC base, TSC deadline)

    public var baseMSR: UInt64 { registers.withLock { $0.base } }
    public var isX2APIC: Bool { registers.withLock { $0.x2APIC } }
    public var mmioBase: UInt64? {
        registers.withLock { r in r.globallyEnabled && !r.x2APIC ? r.base & 0xF_FFFF_F000 : nil }
    }

    /// IA32_APIC_BASE write. Returns false for a transition the SDM calls invalid (#GP).
    func writeBase(_ value: UInt64, x2APICAvailable: Bool) -> Bool {
        let reserved: UInt64 = ~(0xF_FFFF_F000 | 1 << 11 | 1 << 10 | 1 << 8)
        guard value & reserved == 0 else { return false }
        let ok = registers.withLock { r -> Bool in
            let enable = value & (1 << 11) != 0, x2 = value & (1 << 10) != 0
            if x2 && !x2APICAvailable { return false }
            if x2 && !enable { return false }
            if r.x2APIC && enable && !x2 { return false }   // x2APIC → xAPIC only through disabled
            if r.globallyEnabled == false && x2 { return false }   // disabled → x2APIC directly is invalid
            let wasEnabled = r.globallyEnabled
            r.base = value & ~(1 << 8) | r.base & (1 << 8)
            if wasEnabled && !enable {
                let base = r.base
                r = Registers(base: base)
                Self.resetLVT(&r, bootstrap: false)
            }
            if x2 && !r.x2APIC { r.ldr = x2APICLogicalID }
            return true
        }
        bus.notify(index)
        return ok
    }

    /// The IA32_TSC_DEADLINE MSR, in the vCPU's TSC units; `deadlineNanoseconds` converts.
    func writeTSCDeadline(_ value: UInt64, machineTime: UInt64?) {
        let arm = registers.withLock { r -> Bool in
            guard r.timerMode == 2 else { return false }
            r.tscDeadline = value
            return true
        }
        guard arm else { return }
        if value == 0 { timer.disarm() } else if let t = machineTime { timer.arm(at: t) }
    }

    var tscDeadline: UInt64 { registers.withLock { $0.timerMode == 2 ? $0.tscDeadline : 0 } }

    // MARK: Timer

    private func timerFired() {
        let now = bus.clock.now()
        let slack = timer.slack
        let fire = registers.withLock { r -> UInt32? in
            let lvt = r.lvt(.timer)
            var late: UInt64 = 0, owedLimit: UInt64 = 0
            switch r.timerMode {
            case 1:
                guard r.timerRunning, r.initialCount != 0 else { return nil }
                // Next period, measured from the start so that periods do not drift.
                let period = UInt64(r.initialCount) &* r.divisor
                let passed = (now &- r.timerStart) / period
                timer.arm(at: r.timerStart &+ (passed + 1) &* period, catchesUp: true)
                // Ticks due before this one (it fired late): merged into this interrupt, as
                // QEMU's and KVM's local APICs do, unless a timer slack let the vCPU sleep
                // past them; then they are owed, at most a slack's worth, and raised later,
                // one per EOI. So is this one while the one before still waits in the IRR
                // (a tick due during a burst of owed ones).
                if slack > 0 {
                    owedLimit = timer.owedTicksLimit(period: period)
                    late = passed > r.periodsCounted + 1 ? passed - r.periodsCounted - 1 : 0
                    if r.irr[UInt8(truncatingIfNeeded: lvt)] { late += 1 }
                }
                r.periodsCounted = passed
            case 2:
                guard r.tscDeadline != 0 else { return nil }
                r.tscDeadline = 0
            default:
                guard r.timerRunning else { return nil }
                r.timerRunning = false   // the current count reads 0 from here on
            }
            guard lvt & Self.lvtMasked == 0, r.softwareEnabled, lvt & 0xFF >= 16 else { return nil }
            r.lateTicks = min(r.lateTicks &+ late, owedLimit)
            return lvt
        }
        if let lvt = fire, accept(InterruptMessage(vector: UInt8(lvt & 0xFF), mode: .fixed, destination: apicID)) {
            bus.notify(index)
        }
    }

    /// At the EOI of `vector`: if it is the periodic timer's (still unmasked), the next late
    /// tick goes to the IRR, to be taken once the vCPU can (after the IRET, with IF set) —
    /// unless a tick already waits there (one that came due meanwhile): then at the next EOI.
    private static func raiseLateTick(_ r: inout Registers, after vector: UInt8) {
        let lvt = r.lvt(.timer)
        // A timer that stopped or was masked owes nothing any more.
        guard r.timerMode == 1, r.timerRunning, lvt & lvtMasked == 0 else { r.lateTicks = 0; return }
        guard UInt8(lvt & 0xFF) == vector, !r.irr[vector] else { return }
        r.lateTicks -= 1
        r.irr[vector] = true
        r.tmr[vector] = false
    }

    /// LINT1 (wired to NMI on the bootstrap processor) and LINT0 inputs from the board.
    func localInterrupt(_ pin: LVT) {
        let lvt = registers.withLock { $0.lvt(pin) }
        guard lvt & Self.lvtMasked == 0 else { return }
        let mode = InterruptMessage.DeliveryMode(rawValue: UInt8(lvt >> 8 & 7)) ?? .fixed
        if mode == .extINT { bus.notify(index); return }
        if accept(InterruptMessage(vector: UInt8(lvt & 0xFF), mode: mode, level: lvt & (1 << 15) != 0, destination: apicID)) {
            bus.notify(index)
        }
    }
}

// MARK: Snapshot

extension VectorSet {
    func encode(_ w: inout StateWriter) { w.u64(words.0); w.u64(words.1); w.u64(words.2); w.u64(words.3) }
    init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init()
        words = (try r.u64(), try r.u64(), try r.u64(), try r.u64())
    }
}

extension LocalAPIC {
    /// Every register, the pending NMI/INIT/SIPI, and the timer (as the time left after `now`).
    public func saveState(_ w: inout StateWriter, now: UInt64) {
        let r = registers.withLock { $0 }
        w.u64(r.base); w.u8(r.tpr); w.u32(r.ldr); w.u32(r.dfr); w.u32(r.svr)
        r.irr.encode(&w); r.isr.encode(&w); r.tmr.encode(&w)
        w.u32(r.esr); w.u32(r.pendingESR)
        for v in [r.lvt.0, r.lvt.1, r.lvt.2, r.lvt.3, r.lvt.4, r.lvt.5, r.lvt.6] { w.u32(v) }
        w.u32(r.icrLow); w.u32(r.icrHigh); w.u32(r.divide); w.u32(r.initialCount)
        w.u64(r.timerStart); w.bool(r.timerRunning); w.u64(r.tscDeadline)
        w.bool(r.nmiPending); w.bool(r.initPending)
        w.optional(r.sipiVector) { $0.u8($1) }
        timer.saveDeadline(&w, now: now)
    }

    public func restoreState(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        var g = Registers(base: try r.u64())
        g.tpr = try r.u8(); g.ldr = try r.u32(); g.dfr = try r.u32(); g.svr = try r.u32()
        g.irr = try VectorSet(decoding: &r); g.isr = try VectorSet(decoding: &r); g.tmr = try VectorSet(decoding: &r)
        g.esr = try r.u32(); g.pendingESR = try r.u32()
        g.lvt = (try r.u32(), try r.u32(), try r.u32(), try r.u32(), try r.u32(), try r.u32(), try r.u32())
        g.icrLow = try r.u32(); g.icrHigh = try r.u32(); g.divide = try r.u32(); g.initialCount = try r.u32()
        g.timerStart = try r.u64(); g.timerRunning = try r.bool(); g.tscDeadline = try r.u64()
        g.nmiPending = try r.bool(); g.initPending = try r.bool()
        g.sipiVector = try r.optional { (r) throws(SnapshotError) in try r.u8() }
        if g.timerMode == 1, g.timerRunning, g.initialCount != 0 {
            g.periodsCounted = (now &- g.timerStart) / (UInt64(g.initialCount) &* g.divisor)
        }
        registers.withLock { $0 = g }
        try timer.restoreDeadline(&r, now: now)
    }
}

extension VectorSet {
    /// The vectors set, lowest first.
    var vectors: [UInt8] { (0...255).compactMap { self[UInt8($0)] ? UInt8($0) : nil } }
}

extension LocalAPIC {
    /// For `monitor info devices`: the mode, TPR/PPR, IRR and ISR, the timer and the LVT.
    public func describeState(now: UInt64) -> [String] {
        let r = registers.withLock { $0 }
        func list(_ v: VectorSet) -> String { v.vectors.isEmpty ? "-" : v.vectors.map { "0x" + hex2($0) }.joined(separator: " ") }
        let mode = !r.globallyEnabled ? "disabled" : r.x2APIC ? "x2APIC" : "xAPIC at 0x\(String(r.base & ~0xFFF, radix: 16))"
        let timerModes = ["one-shot", "periodic", "TSC-deadline", "reserved"]
        var timer = "timer \(timerModes[Int(r.timerMode)]) vector 0x\(hex2(UInt8(truncatingIfNeeded: r.lvt.1)))"
        if r.lvt.1 & Self.lvtMasked != 0 { timer += " masked" }
        if r.timerMode == 2 {
            timer += ", deadline \(r.tscDeadline)"
        } else {
            timer += ", divide by \(r.divisor), initial count \(r.initialCount), current count \(Self.currentCount(r, now: now))"
        }
        let lvt = [("LINT0", r.lvt.4), ("LINT1", r.lvt.5), ("error", r.lvt.6)].map { "\($0.0) 0x\(String($0.1, radix: 16))" }.joined(separator: ", ")
        return ["LAPIC \(index) (ID \(apicID)): \(mode), \(r.softwareEnabled ? "enabled" : "software-disabled") (SVR 0x\(String(r.svr, radix: 16))), TPR 0x\(hex2(r.tpr)), PPR 0x\(hex2(r.ppr)), IRR \(list(r.irr)), ISR \(list(r.isr))"
                    + (r.nmiPending ? ", NMI pending" : "") + (r.initPending ? ", INIT pending" : "") + (r.sipiVector.map { ", SIPI 0x\(hex2($0)) pending" } ?? ""),
                "  \(timer); \(lvt)"]
    }
}
