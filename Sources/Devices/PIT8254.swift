import Synchronization
import X86

/// The 8254 programmable interval timer at 0x40-0x43, and the PC's system control port B
/// (0x61) that gates its channel 2 and reads that channel's output.
///
/// Three channels, modes 0-5, binary and BCD counting, LSB/MSB/LSB-then-MSB access, the
/// counter latch and read-back commands (count and status latches, with the null-count
/// flag and the OUT pin in the status byte), as Intel's 8254 datasheet describes. The
/// counters are not stepped: every value (the counting element, OUT, null count) is
/// computed from the machine clock when it is read, at 1.193182 MHz. Channel 0's OUT
/// drives ISA IRQ 0 (a pulse on every rising edge) through one `DeviceTimer` armed for the
/// next rising edge only while one is ahead; channel 1 (DRAM refresh on old PCs) counts
/// but drives nothing; channel 2's gate is port 0x61 bit 0 and its OUT is port 0x61 bit 5,
/// which is how Linux calibrates its TSC (mode 0, polling bit 5) and runs its delay loops.
///
/// Channels start unprogrammed (no count loaded, nothing armed): a BIOS or the guest
/// programs them, and a guest that never does costs no timer wake-ups.
public final class PIT8254: PortDevice, @unchecked Sendable {
    public static let ports: ClosedRange<UInt16> = 0x40...0x43
    /// System control port B.
    public static let portB: UInt16 = 0x61
    public static let irq = 0
    /// Input clock of every channel, in Hz.
    public static let frequency: UInt64 = 1_193_182
    /// Channel 0's timer is never re-armed sooner than this after it fired: a guest that
    /// programs a rate the host cannot follow gets its edges coalesced (one IRQ 0 pulse per
    /// firing), as a PIC would merge requests its CPU did not acknowledge in time.
    static let minimumTimerInterval: UInt64 = 20_000

    struct Channel {
        // Programmed by the control word.
        /// The mode bits as written (6 and 7 are modes 2 and 3; the status byte shows them as written).
        var modeBits: UInt8 = 3
        var bcd = false
        /// 1: LSB only, 2: MSB only, 3: LSB then MSB.
        var access: UInt8 = 3
        // Writing the count register.
        var writeMSBNext = false
        var writeLSB: UInt8 = 0
        /// The count register (CR), in counts (1...65536, or 1...10000 in BCD; 0 is the maximum).
        var countRegister: Int64 = 0x10000
        var countWritten = false
        // Reading.
        var readMSBNext = false
        /// The output latch: the latched count, with which bytes are still to be read.
        var latchedCount: UInt16?
        var latchedReadMSBNext = false
        var latchedStatus: UInt8?
        /// Null count (status bit 6): set by a control word or count write, cleared when the
        /// count register reaches the counting element, at `transferTick`.
        var nullCount = true
        var transferTick: Int64?
        // The counting element, as a function of time.
        /// The count of the running sequence (1...65536 / 10000).
        var n: Int64 = 0x10000
        /// The tick at which the counting element held `n` (the sequence's origin); nil when
        /// no count is loaded (after a control word; modes 1 and 5 before their trigger).
        var loadTick: Int64?
        /// Ticks the gate held counting still since `loadTick` (modes 0 and 4), and since
        /// when it holds it now.
        var pausedTicks: Int64 = 0
        var gateLowSince: Int64?
        /// What the counting element reads while no sequence runs.
        var staleCE: Int64 = 0
        /// Modes 2 and 3: a count written while counting, which takes over at `at` with its
        /// sequence starting at `origin`.
        var pending: (n: Int64, at: Int64, origin: Int64)?
        var gate = true

        var mode: UInt8 { modeBits >= 6 ? modeBits - 4 : modeBits }
        var modulus: Int64 { bcd ? 10_000 : 0x10000 }
        var controlBits: UInt8 { (access << 4) | (modeBits << 1) | (bcd ? 1 : 0) }

        /// Ticks counted since the sequence's origin at tick `t` (negative before the load).
        func elapsed(_ t: Int64, origin: Int64) -> Int64 {
            let effective = gateLowSince.map { max($0, origin) } ?? t
            return min(effective, t) - origin - pausedTicks
        }

        /// Applies a pending count whose time has come.
        mutating func settle(_ t: Int64) {
            if let p = pending, t >= p.at {
                n = p.n
                loadTick = p.origin
                pausedTicks = 0
                pending = nil
            }
            if let at = transferTick, t >= at {
                nullCount = false
                transferTick = nil
            }
        }

        static func highHalf(_ n: Int64) -> Int64 { (n + 1) / 2 }

        /// The counting element at tick `t` (binary, 0...modulus-1).
        func counter(_ t: Int64) -> Int64 {
            guard let origin = loadTick else { return staleCE }
            let d = elapsed(t, origin: origin)
            guard d >= 0 else { return staleCE }
            let value: Int64
            switch mode {
            case 2:
                value = n - d % n
            case 3:
                // Counts down by two: an odd count spends one extra clock in the high half
                // (N, N-1, N-3, ... 2) and one less in the low half (N, N-3, ... 2).
                let phase = d % n
                let high = Self.highHalf(n)
                if n & 1 == 0 {
                    value = n - 2 * (phase < high ? phase : phase - high)
                } else if phase < high {
                    value = phase == 0 ? n : n - 1 - 2 * (phase - 1)
                } else {
                    let q = phase - high
                    value = q == 0 ? n : n - 3 - 2 * (q - 1)
                }
            default:
                value = n - d
            }
            return ((value % modulus) + modulus) % modulus
        }

        /// The OUT pin at tick `t`.
        func out(_ t: Int64) -> Bool {
            let m = mode
            if (m == 2 || m == 3) && gateLowSince != nil { return true }
            guard let origin = loadTick else { return m != 0 }
            let d = elapsed(t, origin: origin)
            switch m {
            case 0: return d >= n
            case 1: return d < 0 || d >= n
            case 2: return d < 0 || d % n != n - 1
            case 3: return d < 0 || d % n < Self.highHalf(n)
            default: return d != n   // 4, 5: low for the one clock at terminal count
            }
        }

        /// The first tick after `t` at which OUT rises, if one is ahead.
        func nextRise(after t: Int64) -> Int64? {
            let m = mode
            guard let origin = loadTick else { return nil }
            if gateLowSince != nil && m != 1 && m != 5 { return nil }   // counting held
            let d = elapsed(t, origin: origin)
            var rise: Int64?
            switch m {
            case 0, 1: rise = d < n ? origin + pausedTicks + n : nil
            case 4, 5: rise = d <= n ? origin + pausedTicks + n + 1 : nil
            default:   // 2, 3: every period boundary, when the period has a low part
                guard n >= 2 else { return nil }
                let k = d < 0 ? 1 : d / n + 1
                rise = origin + k * n
            }
            if let p = pending, let r = rise, r >= p.at {
                var next = self
                next.settle(p.at)
                // The switch itself is a rising edge when the old sequence was low just
                // before it and the new one starts high (mode 2, and mode 3 at a period end).
                if p.at > t && !out(p.at - 1) && next.out(p.at) { return p.at }
                return next.nextRise(after: max(t, p.at))
            }
            return rise
        }
    }

    private struct State {
        var channels = [Channel(), Channel(), Channel()]
        // Port 0x61.
        var speakerData = false
        /// Bits 2 and 3 (parity and channel check enables): stored.
        var checkEnables: UInt8 = 0
        var refreshToggle = false
        /// The channel 0 rise the timer is armed for.
        var armedRise: Int64?
        /// With a timer slack (modes 2 and 3): channel 0 rises that came while the timer
        /// thread slept to the slack's multiple, or while a pulse of ours still waited to be
        /// taken (`pulseOutstanding`), pulsed one at each acknowledge of IRQ 0; never more
        /// than a slack's worth. Not kept in snapshots.
        var lateRises = 0
        /// With a timer slack: IRQ 0 was pulsed and no CPU has taken the request yet, so a
        /// rise now would merge with it (it is owed instead).
        var pulseOutstanding = false
    }

    private let state = Mutex(State())
    private let clock: MachineClock
    private let irq0: IRQLine?
    private var timer: DeviceTimer?
    private var timerHolder: AnyObject?
    private var acknowledgeHolder: AnyObject?

    /// `irq0` receives channel 0's rising edges; `timers` runs the timer that finds them.
    public init(clock: MachineClock, timers: TimerService?, irq0: IRQLine?) {
        self.clock = clock
        self.irq0 = irq0
        if let timers, let irq0 {
            timer = timers.makeTimer("pit0", handler: self, holder: &timerHolder) { $0.timerFired() }
            if timers.slack > 0 {
                irq0.onAcknowledge(handler: self, holder: &acknowledgeHolder) { $0.irq0Acknowledged() }
            }
        }
    }

    // MARK: Time

    /// Whole input-clock ticks in `ns` machine nanoseconds.
    static func ticks(_ ns: UInt64) -> Int64 {
        let product = ns.multipliedFullWidth(by: frequency)
        return Int64(UInt64(1_000_000_000).dividingFullWidth(product).quotient)
    }

    /// The first machine nanosecond at which `tick` has begun.
    static func nanoseconds(_ tick: Int64) -> UInt64 {
        guard tick > 0 else { return 0 }
        guard tick < 1 << 53 else { return .max / 2 }   // centuries away: never in practice
        let product = UInt64(tick).multipliedFullWidth(by: 1_000_000_000)
        let (q, r) = frequency.dividingFullWidth(product)
        return q + (r != 0 ? 1 : 0)
    }

    private func currentTick() -> Int64 { Self.ticks(clock.now()) }

    // MARK: Observation (tests, port 0x61)

    /// Channel `channel`'s OUT pin now.
    public func out(_ channel: Int) -> Bool {
        let t = currentTick()
        return state.withLock { s in
            s.channels[channel].settle(t)
            return s.channels[channel].out(t)
        }
    }

    /// Drives channel `channel`'s gate (channel 2: port 0x61 bit 0; 0 and 1 are tied high on PCs).
    public func setGate(_ channel: Int, high: Bool) {
        let t = currentTick()
        state.withLock { s in Self.setGate(&s.channels[channel], high: high, t: t) }
        if channel == 0 { rearm() }
    }

    private static func setGate(_ c: inout Channel, high: Bool, t: Int64) {
        c.settle(t)
        guard high != c.gate else { return }
        c.gate = high
        let m = c.mode
        if !high {
            switch m {
            case 0, 4:   // counting pauses
                if c.loadTick != nil { c.gateLowSince = t }
            case 2, 3:   // counting stops and OUT goes high; the count is held
                c.staleCE = c.counter(t)
                c.gateLowSince = t
                c.pending = nil
            default: break   // 1, 5: only the rising edge matters
            }
            return
        }
        switch m {
        case 0, 4:
            if let since = c.gateLowSince, let origin = c.loadTick {
                c.pausedTicks += max(0, t - max(since, origin))
            }
            c.gateLowSince = nil
        default:
            // A trigger: modes 1, 2, 3 and 5 (re)load the count register on the next clock.
            c.gateLowSince = nil
            guard c.countWritten else { return }
            c.n = c.countRegister
            c.loadTick = t + 1
            c.pausedTicks = 0
            c.pending = nil
            if c.nullCount { c.transferTick = t + 1 }
        }
    }

    // MARK: Ports

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        let t = currentTick()
        return state.withLock { s -> UInt32 in
            if port == Self.portB {
                s.channels[2].settle(t)
                // Bit 4 is the refresh request toggle (channel 1 on old PCs): it flips on every
                // read, which is all that delay loops polling it need to see.
                s.refreshToggle.toggle()
                var v: UInt8 = s.checkEnables
                if s.channels[2].gate { v |= 0x01 }
                if s.speakerData { v |= 0x02 }
                if s.refreshToggle { v |= 0x10 }
                if s.channels[2].out(t) { v |= 0x20 }
                return UInt32(v)
            }
            guard port != 0x43 else { return 0 }   // the control word register cannot be read
            return UInt32(Self.readCounter(&s.channels[Int(port - 0x40)], t: t))
        }
    }

    private static func readCounter(_ c: inout Channel, t: Int64) -> UInt8 {
        c.settle(t)
        if let status = c.latchedStatus {
            c.latchedStatus = nil
            return status
        }
        let value: UInt16
        var msb: Bool
        if let latched = c.latchedCount {
            value = latched
            switch c.access {
            case 1: msb = false; c.latchedCount = nil
            case 2: msb = true; c.latchedCount = nil
            default:
                msb = c.latchedReadMSBNext
                c.latchedReadMSBNext.toggle()
                if msb { c.latchedCount = nil }
            }
        } else {
            value = c.bcd ? toBCD(c.counter(t)) : UInt16(truncatingIfNeeded: c.counter(t))
            switch c.access {
            case 1: msb = false
            case 2: msb = true
            default:
                msb = c.readMSBNext
                c.readMSBNext.toggle()
            }
        }
        return UInt8(truncatingIfNeeded: msb ? value >> 8 : value)
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        let t = currentTick()
        var touchesChannel0 = false
        state.withLock { s in
            switch port {
            case Self.portB:
                s.speakerData = v & 0x02 != 0
                s.checkEnables = v & 0x0C
                Self.setGate(&s.channels[2], high: v & 0x01 != 0, t: t)
            case 0x43:
                let select = Int(v >> 6)
                if select == 3 {   // read-back
                    for i in 0..<3 where v & (2 << i) != 0 {
                        Self.latch(&s.channels[i], count: v & 0x20 == 0, status: v & 0x10 == 0, t: t)
                    }
                } else if v & 0x30 == 0 {   // counter latch
                    Self.latch(&s.channels[select], count: true, status: false, t: t)
                } else {
                    Self.control(&s.channels[select], v, t: t)
                    touchesChannel0 = select == 0
                }
            default:
                let i = Int(port - 0x40)
                Self.writeCount(&s.channels[i], v, t: t)
                touchesChannel0 = i == 0
            }
        }
        if touchesChannel0 { rearm() }
    }

    private static func latch(_ c: inout Channel, count: Bool, status: Bool, t: Int64) {
        c.settle(t)
        // A second latch of either kind before the first was read is ignored.
        if count && c.latchedCount == nil {
            let ce = c.counter(t)
            c.latchedCount = c.bcd ? toBCD(ce) : UInt16(truncatingIfNeeded: ce)
            c.latchedReadMSBNext = false
        }
        if status && c.latchedStatus == nil {
            c.latchedStatus = (c.out(t) ? 0x80 : 0) | (c.nullCount ? 0x40 : 0) | c.controlBits
        }
    }

    /// A control word for this channel: every control logic resets, OUT takes the mode's
    /// initial state (low in mode 0, high otherwise), and no count counts until one is written.
    private static func control(_ c: inout Channel, _ v: UInt8, t: Int64) {
        c.settle(t)
        c.staleCE = c.counter(t)
        c.access = (v >> 4) & 3
        c.modeBits = (v >> 1) & 7
        c.bcd = v & 1 != 0
        c.writeMSBNext = false
        c.readMSBNext = false
        c.latchedCount = nil
        c.latchedStatus = nil
        c.nullCount = true
        c.transferTick = nil
        c.countWritten = false
        c.loadTick = nil
        c.pausedTicks = 0
        c.gateLowSince = nil
        c.pending = nil
    }

    private static func writeCount(_ c: inout Channel, _ v: UInt8, t: Int64) {
        c.settle(t)
        var raw: UInt16
        switch c.access {
        case 1: raw = UInt16(v)
        case 2: raw = UInt16(v) << 8
        default:
            if !c.writeMSBNext {
                c.writeLSB = v
                c.writeMSBNext = true
                // Mode 0: the first byte stops counting and drops OUT at once.
                if c.mode == 0 {
                    c.staleCE = c.counter(t)
                    c.loadTick = nil
                }
                return
            }
            c.writeMSBNext = false
            raw = UInt16(v) << 8 | UInt16(c.writeLSB)
        }
        var n = c.bcd ? fromBCD(raw) % 10_000 : Int64(raw)
        if n == 0 { n = c.modulus }
        c.countRegister = n
        c.countWritten = true
        c.nullCount = true
        let gateHigh = c.gate
        switch c.mode {
        case 0, 4:   // loaded on the next clock; counting continues from the new count
            c.n = n
            c.loadTick = t + 1
            c.pausedTicks = 0
            c.gateLowSince = gateHigh ? nil : t + 1
            c.transferTick = t + 1
        case 1, 5:   // waits for a gate trigger
            c.transferTick = nil
        default:   // 2, 3
            guard gateHigh else { c.transferTick = nil; return }
            guard let origin = c.loadTick else {
                c.n = n
                c.loadTick = t + 1
                c.pausedTicks = 0
                c.transferTick = t + 1
                return
            }
            // The running sequence finishes its period (mode 3: its half-cycle) first.
            let d = max(0, c.elapsed(t, origin: origin))
            let periodEnd = origin + (d / c.n + 1) * c.n
            if c.mode == 3 {
                let halfEnd = origin + (d / c.n) * c.n + Channel.highHalf(c.n)
                if halfEnd > t && halfEnd < periodEnd {
                    // Into the new count's low half.
                    c.pending = (n, halfEnd, halfEnd - Channel.highHalf(n))
                    c.transferTick = halfEnd
                    return
                }
            }
            c.pending = (n, periodEnd, periodEnd)
            c.transferTick = periodEnd
        }
    }

    // MARK: Channel 0's interrupt

    /// Arms the timer for channel 0's next rising edge, or disarms it when none is ahead.
    /// Done under the state lock (the timer service never calls back into a device while it
    /// holds its own lock), so that concurrent re-arms cannot leave a stale deadline.
    /// A guest's write to channel 0 (or its gate) ends a catch-up: `keepingLateRises` only
    /// for the timer's own re-arm.
    private func rearm(earliest: UInt64 = 0, keepingLateRises: Bool = false) {
        guard let timer else { return }
        let t = currentTick()
        state.withLock { s in
            s.channels[0].settle(t)
            if !keepingLateRises { s.lateRises = 0; s.pulseOutstanding = false }
            let rise = s.channels[0].nextRise(after: t)
            s.armedRise = rise
            if let rise {
                // Modes 2 and 3 are periodic, and rises passed over are made up (timerFired).
                let periodic = s.channels[0].mode == 2 || s.channels[0].mode == 3
                timer.arm(at: max(Self.nanoseconds(rise), earliest), catchesUp: periodic)
            } else {
                timer.disarm()
            }
        }
    }

    private func timerFired() {
        let now = clock.now()
        let t = Self.ticks(now)
        let slack = timer?.slack ?? 0
        let rose = state.withLock { s -> Bool in
            s.channels[0].settle(t)
            guard let r = s.armedRise, t >= r else { return false }
            s.armedRise = nil
            // Rises after the one armed for, up to now: merged into this pulse (as a PIC
            // merges requests not yet acknowledged), unless a timer slack let the timer
            // sleep past them; then those of the last slack are pulsed later, one at each
            // acknowledge of IRQ 0 (`irq0Acknowledged`). So is this one while our last
            // pulse is still to be taken (it is pulsed all the same: should the request
            // have gone — the 8259A initialised again — this one brings the ticks back).
            if slack > 0, let timer, s.channels[0].mode == 2 || s.channels[0].mode == 3 {
                var after = max(r, t - Self.ticks(slack))
                var late = s.pulseOutstanding ? 1 : 0
                let owedLimit = Int(timer.owedTicksLimit(period: Self.nanoseconds(s.channels[0].n)))
                while late < owedLimit, let next = s.channels[0].nextRise(after: after), next <= t {
                    late += 1
                    after = next
                }
                s.lateRises = min(s.lateRises + late, owedLimit)
                s.pulseOutstanding = true
            }
            return true
        }
        // Outside the lock: the PIC calls back into the machine.
        if rose { irq0?.pulse() }
        rearm(earliest: now &+ Self.minimumTimerInterval, keepingLateRises: true)
    }

    /// A CPU took IRQ 0's request (the 8259A's INTA or the IOAPIC pin's vector): the next
    /// late rise, if one is owed, is the next request, taken once the handler's EOI lets it.
    private func irq0Acknowledged() {
        let owed = state.withLock { s -> Bool in
            s.pulseOutstanding = s.lateRises > 0
            guard s.lateRises > 0 else { return false }
            s.lateRises -= 1
            return true
        }
        if owed { irq0?.pulse() }
    }
}

/// Packed BCD (four digits) to binary; digits above 9 count at face value, as a counter
/// fed a bad BCD value would.
func fromBCD(_ v: UInt16) -> Int64 {
    var result: Int64 = 0
    for shift in stride(from: 12, through: 0, by: -4) { result = result * 10 + Int64((v >> UInt16(shift)) & 0xF) }
    return result
}

/// Binary 0...9999 to four packed BCD digits.
func toBCD(_ v: Int64) -> UInt16 {
    var v = v % 10_000, result: UInt16 = 0
    for shift in stride(from: 0, through: 12, by: 4) {
        result |= UInt16(v % 10) << UInt16(shift)
        v /= 10
    }
    return result
}

// MARK: Snapshot

extension PIT8254.Channel {
    func encode(_ w: inout StateWriter) {
        w.u8(modeBits); w.bool(bcd); w.u8(access); w.bool(writeMSBNext); w.u8(writeLSB)
        w.i64(countRegister); w.bool(countWritten); w.bool(readMSBNext)
        w.optional(latchedCount) { $0.u16($1) }
        w.bool(latchedReadMSBNext)
        w.optional(latchedStatus) { $0.u8($1) }
        w.bool(nullCount)
        w.optional(transferTick) { $0.i64($1) }
        w.i64(n)
        w.optional(loadTick) { $0.i64($1) }
        w.i64(pausedTicks)
        w.optional(gateLowSince) { $0.i64($1) }
        w.i64(staleCE)
        w.optional(pending) { w, p in w.i64(p.n); w.i64(p.at); w.i64(p.origin) }
        w.bool(gate)
    }

    init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init()
        modeBits = try r.u8() & 7; bcd = try r.bool(); access = try r.u8() & 3; writeMSBNext = try r.bool(); writeLSB = try r.u8()
        countRegister = try r.i64(); countWritten = try r.bool(); readMSBNext = try r.bool()
        latchedCount = try r.optional { (r) throws(SnapshotError) in try r.u16() }
        latchedReadMSBNext = try r.bool()
        latchedStatus = try r.optional { (r) throws(SnapshotError) in try r.u8() }
        nullCount = try r.bool()
        transferTick = try r.optional { (r) throws(SnapshotError) in try r.i64() }
        n = try r.i64()
        loadTick = try r.optional { (r) throws(SnapshotError) in try r.i64() }
        pausedTicks = try r.i64()
        gateLowSince = try r.optional { (r) throws(SnapshotError) in try r.i64() }
        staleCE = try r.i64()
        pending = try r.optional { (r) throws(SnapshotError) in (try r.i64(), try r.i64(), try r.i64()) }
        gate = try r.bool()
        // Counts are 1...65536: anything else would divide by zero in the arithmetic of time.
        guard (1...0x10000).contains(n), (0...0x10000).contains(countRegister), pending.map({ (1...0x10000).contains($0.n) }) ?? true else {
            throw SnapshotError("\(r.what): a PIT count out of range")
        }
    }
}

extension PIT8254 {
    /// The three channels, port B and channel 0's timer (as the time left after `now`).
    public func saveState(_ w: inout StateWriter, now: UInt64) {
        let s = state.withLock { $0 }
        for c in s.channels { c.encode(&w) }
        w.bool(s.speakerData); w.u8(s.checkEnables); w.bool(s.refreshToggle)
        w.optional(s.armedRise) { $0.i64($1) }
        w.optional(timer) { w, t in t.saveDeadline(&w, now: now) }
    }

    public func restoreState(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        var s = State()
        for i in 0..<3 { s.channels[i] = try Channel(decoding: &r) }
        s.speakerData = try r.bool(); s.checkEnables = try r.u8(); s.refreshToggle = try r.bool()
        s.armedRise = try r.optional { (r) throws(SnapshotError) in try r.i64() }
        state.withLock { $0 = s }
        if try r.bool() {
            guard let timer else { throw SnapshotError("\(r.what): a timer this machine's PIT does not have") }
            try timer.restoreDeadline(&r, now: now)
        }
    }
}

extension PIT8254 {
    /// For `monitor info devices`: each channel's mode, count register, count now, gate and OUT.
    public func describeState() -> [String] {
        let t = currentTick()
        return state.withLock { s in
            (0..<3).map { i in
                s.channels[i].settle(t)
                let c = s.channels[i]
                var text = "PIT channel \(i): mode \(c.mode)\(c.bcd ? " BCD" : ""), "
                text += c.countWritten ? "count register \(c.countRegister)" : "no count written"
                if c.loadTick != nil { text += ", counting element \(c.counter(t))" }
                text += ", gate \(c.gate ? "high" : "low"), OUT \(c.out(t) ? "high" : "low")"
                return text
            } + ["PIT port 0x61: speaker data \(s.speakerData ? "on" : "off")"]
        }
    }
}
