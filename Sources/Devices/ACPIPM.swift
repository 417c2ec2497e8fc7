import Synchronization
import X86

/// The ACPI fixed power-management registers a FADT points at, laid out as QEMU's PIIX4 PM
/// function has them at I/O base 0x600:
///
/// | port | register | FADT field |
/// |---|---|---|
/// | 0x600 (4 bytes) | PM1a event block: PM1_STS (0x600, 16-bit), PM1_EN (0x602, 16-bit) | PM1a_EVT_BLK, PM1_EVT_LEN = 4 |
/// | 0x604 (2 bytes) | PM1a control: SCI_EN (bit 0), SLP_TYP (bits 10-12), SLP_EN (bit 13) | PM1a_CNT_BLK, PM1_CNT_LEN = 2 |
/// | 0x608 (4 bytes) | PM timer: 24-bit, 3.579545 MHz, read as 32 bits | PM_TMR_BLK, PM_TMR_LEN = 4, TMR_VAL_EXT = 0 |
///
/// SCI_EN reads 1 from the start: the machine is always in ACPI mode (the FADT has no
/// SMI_CMD). PM1_STS bits are cleared by writing 1s; TMR_STS (bit 0) is set each time
/// bit 23 of the timer changes and, with TMR_EN, raises the SCI (ISA IRQ 9, level, as on
/// PIIX4) through one timer armed only then. Writing SLP_EN with SLP_TYP 5 (the value the
/// DSDT's `_S5` gives) or 0 (PIIX4's soft-off, what guests written for QEMU write) calls
/// `onPowerOff`; other sleep types are ignored (no sleep states).
public final class ACPIPM: PortDevice, @unchecked Sendable {
    public static let base: UInt16 = 0x600
    public static let pm1aEventBlock: UInt16 = 0x600
    public static let pm1aControlBlock: UInt16 = 0x604
    public static let pmTimerBlock: UInt16 = 0x608
    public static let ports: ClosedRange<UInt16> = 0x600...0x60B
    public static let sciIRQ = 9
    public static let timerFrequency: UInt64 = 3_579_545
    /// The SLP_TYP values that power off.
    public static let softOffTypes: Set<UInt16> = [5, 0]

    private struct State {
        var status: UInt16 = 0
        var enable: UInt16 = 0
        var control: UInt16 = 0x0001   // SCI_EN
        /// The timer's bit-23 period (2^23 ticks) last seen, for TMR_STS.
        var timerPeriod: UInt64 = 0
        var sci = false
    }
    private let state: Mutex<State>
    private let clock: MachineClock
    private let sci: IRQLine?
    private var timer: DeviceTimer?
    private var timerHolder: AnyObject?
    private let onPowerOff: @Sendable () -> Void

    public init(clock: MachineClock, timers: TimerService?, sci: IRQLine?, onPowerOff: @escaping @Sendable () -> Void) {
        self.clock = clock
        self.sci = sci
        self.onPowerOff = onPowerOff
        state = Mutex(State(timerPeriod: Self.ticks(clock.now()) >> 23))
        if let timers {
            timer = timers.makeTimer("acpi-pm", handler: self, holder: &timerHolder) { $0.update() }
        }
    }

    /// PM timer ticks in `ns` machine nanoseconds (not yet cut to 24 bits).
    static func ticks(_ ns: UInt64) -> UInt64 {
        UInt64(1_000_000_000).dividingFullWidth(ns.multipliedFullWidth(by: timerFrequency)).quotient
    }

    /// Sets TMR_STS when bit 23 changed since last looked at.
    private static func catchUp(_ s: inout State, ticks: UInt64) {
        let period = ticks >> 23
        if period != s.timerPeriod {
            s.status |= 0x0001
            s.timerPeriod = period
        }
    }

    /// The SCI level for the status and enables (TMR, GBL, PWRBTN, RTC).
    private static func sciLevel(_ s: State) -> Bool { s.status & s.enable & 0x0521 != 0 }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        let now = clock.now()
        let ticks = Self.ticks(now)
        return state.withLock { s -> UInt32 in
            Self.catchUp(&s, ticks: ticks)
            var v: UInt32 = 0
            for i in 0..<size {
                let p = Int(port) + i
                guard p <= Int(Self.ports.upperBound) else { break }
                v |= UInt32(Self.byte(s, offset: p - Int(Self.base), ticks: ticks)) << (8 * i)
            }
            return v
        }
    }

    private static func byte(_ s: State, offset: Int, ticks: UInt64) -> UInt8 {
        switch offset {
        case 0: return UInt8(s.status & 0xFF)
        case 1: return UInt8(s.status >> 8)
        case 2: return UInt8(s.enable & 0xFF)
        case 3: return UInt8(s.enable >> 8)
        case 4: return UInt8(s.control & 0xFF)
        case 5: return UInt8((s.control >> 8) & ~0x20)   // SLP_EN is write-only
        case 8...11: return UInt8(truncatingIfNeeded: (ticks & 0xFF_FFFF) >> (8 * UInt64(offset - 8)))
        default: return 0   // 0x606-0x607: reserved
        }
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let ticks = Self.ticks(clock.now())
        var powerOff = false
        var line: Bool?
        state.withLock { s in
            Self.catchUp(&s, ticks: ticks)
            for i in 0..<size {
                let p = Int(port) + i
                guard p <= Int(Self.ports.upperBound) else { break }
                let b = UInt16(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))))
                switch p - Int(Self.base) {
                case 0: s.status &= ~b   // write 1 to clear
                case 1: s.status &= ~(b << 8)
                case 2: s.enable = (s.enable & 0xFF00) | (b & 0x21)   // TMR_EN, GBL_EN
                case 3: s.enable = (s.enable & 0x00FF) | ((b << 8) & 0x0500)   // PWRBTN_EN, RTC_EN
                case 4: s.control = (s.control & 0xFF00) | (b & 0x07)   // SCI_EN, BM_RLD, GBL_RLS
                case 5:
                    s.control = (s.control & 0x00FF) | ((b << 8) & 0x1C00)   // SLP_TYP
                    if b & 0x20 != 0 && Self.softOffTypes.contains((s.control >> 10) & 7) { powerOff = true }
                default: break   // reserved bytes and the read-only timer
                }
            }
            let level = Self.sciLevel(s)
            if level != s.sci { s.sci = level; line = level }
        }
        if let line { sci?.set(line) }
        rearm()
        if powerOff { onPowerOff() }
    }

    /// Arms the timer for the next bit-23 change while TMR_EN is set and TMR_STS clear
    /// (under the state lock, so that concurrent re-arms cannot leave a stale deadline).
    private func rearm() {
        guard let timer else { return }
        state.withLock { s in
            guard s.enable & 0x0001 != 0, s.status & 0x0001 == 0 else { timer.disarm(); return }
            // The first nanosecond at which the next period's ticks have passed.
            let next = (s.timerPeriod + 1) << 23
            let (q, r) = Self.timerFrequency.dividingFullWidth(next.multipliedFullWidth(by: 1_000_000_000))
            timer.arm(at: q + (r != 0 ? 1 : 0))
        }
    }

    private func update() {
        let ticks = Self.ticks(clock.now())
        let line = state.withLock { s -> Bool? in
            Self.catchUp(&s, ticks: ticks)
            let level = Self.sciLevel(s)
            guard level != s.sci else { return nil }
            s.sci = level
            return level
        }
        if let line { sci?.set(line) }
        rearm()
    }
}

// MARK: Snapshot

extension ACPIPM {
    public func saveState(_ w: inout StateWriter, now: UInt64) {
        let s = state.withLock { $0 }
        w.u16(s.status); w.u16(s.enable); w.u16(s.control); w.u64(s.timerPeriod); w.bool(s.sci)
        w.optional(timer) { w, t in t.saveDeadline(&w, now: now) }
    }

    public func restoreState(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        let s = State(status: try r.u16(), enable: try r.u16(), control: try r.u16(), timerPeriod: try r.u64(), sci: try r.bool())
        state.withLock { $0 = s }
        if try r.bool() {
            guard let timer else { throw SnapshotError("\(r.what): a timer this machine's ACPI PM block does not have") }
            try timer.restoreDeadline(&r, now: now)
        }
    }
}
