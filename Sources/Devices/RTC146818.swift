#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import X86

/// The MC146818 real-time clock and its 128 bytes of CMOS RAM at 0x70 (index; bit 7 masks
/// NMI) and 0x71 (data).
///
/// The time and date are the host's UTC time plus an offset the guest sets by writing the
/// time registers, in BCD or binary (register B DM) and 12- or 24-hour form (B 24/12, bit 7
/// of the hour = PM). Nothing ticks: the registers, the update-in-progress bit (set for the
/// 244 µs before each update) and the interrupt flags are computed from the machine clock
/// when read. Registers A (UIP, divider, rate select), B (SET, PIE, AIE, UIE, SQWE, DM,
/// 24/12, DSE: stored, no daylight saving is applied), C (IRQF, PF, AF, UF: cleared by
/// reading, which lowers IRQ 8) and D (VRT) behave as the datasheet says; the periodic,
/// alarm (with don't-care values 0xC0-0xFF) and update-ended interrupts drive ISA IRQ 8
/// through one `DeviceTimer`, armed only while an enabled interrupt is ahead and IRQF is
/// clear. SET=1 or a divider other than 010 (32.768 kHz) stops the update cycle; the time
/// registers then hold what they showed, plus whatever the guest writes, and the clock
/// resumes from them (with SET: in phase with the old second; after a divider reset: with
/// the first update 500 ms later).
///
/// The CMOS bytes describe the machine as PC firmware does (see `layout`).
public final class RTC146818: PortDevice, @unchecked Sendable {
    public static let ports: ClosedRange<UInt16> = 0x70...0x71
    public static let irq = 8
    /// CMOS offsets of the time registers the update cycle owns (and the century byte).
    static let timeRegisters: Set<Int> = [0, 2, 4, 6, 7, 8, 9, 0x32]
    static let updateLead: Int64 = 244_000
    static let second: Int64 = 1_000_000_000

    struct State {
        var index = 0
        var nmiMasked = false
        var cmos = [UInt8](repeating: 0, count: 128)
        var a: UInt8 = 0x26   // 32.768 kHz time base, 1024 Hz periodic rate
        var b: UInt8 = 0x02   // 24-hour, BCD
        /// PF, AF and UF (register C bits 6-4), as the update cycle and divider set them.
        var flags: UInt8 = 0
        /// RTC time is kept as whole Unix seconds `base` plus "local" nanoseconds
        /// L = machine time + `offset`, so that any date the registers can hold (years
        /// 0-9999) is exact: Unix nanoseconds would overflow after 2262. Everything below
        /// that takes "RTC time" takes L.
        var base: Int64 = 0
        var offset: Int64 = 0
        /// The time registers while the update cycle is stopped, by CMOS offset.
        var held: [Int: UInt8]?
        /// RTC time (L) up to which flags have been computed.
        var evaluated: Int64 = 0
        var line = false
        /// The last periodic edge (its index at the periodic rate) whose interrupt was
        /// raised, and, with a timer slack, the edges since that came while the timer slept
        /// to the slack's multiple or while IRQ 8 was still up: raised again one at each
        /// read of register C, the periodic interrupt's acknowledge; never more than a
        /// slack's worth. Neither is kept in snapshots.
        var periodicTaken: Int64?
        var latePeriodic = 0

        var bcd: Bool { b & 0x04 == 0 }
        var twentyFourHour: Bool { b & 0x02 != 0 }
        var dividerRunning: Bool { (a >> 4) & 7 == 2 }
        var updating: Bool { dividerRunning && b & 0x80 == 0 }
        var irqf: Bool { flags & b & 0x70 != 0 }

        /// The Unix second of RTC time `l`.
        func second(_ l: Int64) -> Int64 { base + floorDiv(l, RTC146818.second) }

        /// The periodic rate's period in 32.768 kHz cycles, or nil (RS = 0).
        var periodicCycles: Int64? {
            let rs = Int64(a & 0x0F)
            guard rs != 0 else { return nil }
            return 1 << ((rs < 3 ? rs + 7 : rs) - 1)
        }

        func encode(_ v: Int) -> UInt8 { bcd ? UInt8((v / 10) << 4 | v % 10) : UInt8(truncatingIfNeeded: v) }
        func decode(_ v: UInt8) -> Int { bcd ? Int(v >> 4) * 10 + Int(v & 0x0F) : Int(v) }

        func encodeHour(_ h: Int) -> UInt8 {
            if twentyFourHour { return encode(h) }
            let h12 = h % 12 == 0 ? 12 : h % 12
            return encode(h12) | (h >= 12 ? 0x80 : 0)
        }

        /// The time registers for RTC second `s`.
        func registers(_ s: Int64) -> [Int: UInt8] {
            let days = floorDiv(s, 86_400), sod = Int(s - days * 86_400)
            let (y, m, d) = civil(fromDays: days)
            return [0: encode(sod % 60), 2: encode(sod / 60 % 60), 4: encodeHour(sod / 3600),
                    6: encode(Int(floorMod(days + 4, 7)) + 1),   // 1 January 1970 was a Thursday (5)
                    7: encode(d), 8: encode(m), 9: encode(y % 100), 0x32: encode(y / 100 % 100)]
        }

        /// The second the registers `r` describe; out-of-range fields are clamped (the day of
        /// the week is derived from the date, not read back).
        func seconds(_ r: [Int: UInt8]) -> Int64 {
            func field(_ i: Int, _ range: ClosedRange<Int>) -> Int { min(max(decode(r[i] ?? 0), range.lowerBound), range.upperBound) }
            var hour: Int
            if twentyFourHour {
                hour = field(4, 0...23)
            } else {
                let raw = r[4] ?? 0
                hour = min(max(decode(raw & 0x7F), 1), 12) % 12 + (raw & 0x80 != 0 ? 12 : 0)
            }
            hour = min(hour, 23)
            let year = field(0x32, 0...99) * 100 + field(9, 0...99)
            let days = daysFromCivil(year: year, month: field(8, 1...12), day: field(7, 1...31))
            return days * 86_400 + Int64(hour * 3600 + field(2, 0...59) * 60 + field(0, 0...59))
        }

        /// Whether the alarm registers match RTC second `s` (0xC0-0xFF: any value).
        func alarmMatches(hour: Int, minute: Int, second: Int) -> Bool {
            func match(_ alarm: UInt8, _ value: UInt8) -> Bool { alarm & 0xC0 == 0xC0 || alarm == value }
            return match(cmos[5], encodeHour(hour)) && match(cmos[3], encode(minute)) && match(cmos[1], encode(second))
        }

        /// The first second after `s` at which the alarm matches, looking one day ahead.
        func nextAlarm(after s: Int64) -> Int64? {
            var t = s + 1
            while t <= s + 86_400 {
                let sod = Int(floorMod(t, 86_400))
                // Skip a whole hour or minute that cannot match.
                if !hourMatches(sod / 3600) {
                    t += Int64(3600 - sod % 3600); continue
                }
                if !(cmos[3] & 0xC0 == 0xC0 || cmos[3] == encode(sod / 60 % 60)) {
                    t += Int64(60 - sod % 60); continue
                }
                if alarmMatches(hour: sod / 3600, minute: sod / 60 % 60, second: sod % 60) { return t }
                t += 1
            }
            return nil
        }

        func hourMatches(_ h: Int) -> Bool { cmos[5] & 0xC0 == 0xC0 || cmos[5] == encodeHour(h) }

        /// Sets PF, UF and AF for what happened between `evaluated` and RTC time `now`.
        mutating func catchUp(to now: Int64) {
            defer { evaluated = max(evaluated, now) }
            guard now > evaluated, dividerRunning else { return }
            if let p = periodicCycles, floorDiv(cycles32k(now), p) > floorDiv(cycles32k(evaluated), p) {
                flags |= 0x40
            }
            guard b & 0x80 == 0 else { return }
            let last = floorDiv(evaluated, RTC146818.second), current = floorDiv(now, RTC146818.second)
            if current > last {
                flags |= 0x10
                if let alarm = nextAlarm(after: base + last), alarm <= base + current { flags |= 0x20 }
            }
        }

        /// The next RTC time at which an enabled interrupt's flag will be set, if any.
        func nextEvent(after now: Int64) -> Int64? {
            guard dividerRunning, !irqf else { return nil }
            var next: Int64?
            func consider(_ t: Int64) { next = min(next ?? t, t) }
            if b & 0x40 != 0, let p = periodicCycles {
                let edge = (floorDiv(cycles32k(now), p) + 1) * p
                // The first nanosecond of that 32.768 kHz cycle (in two parts: edge * 10^9
                // would overflow).
                let whole = floorDiv(edge, 32_768)
                consider(whole * RTC146818.second + ceilDiv((edge - whole * 32_768) * RTC146818.second, 32_768))
            }
            if b & 0x80 == 0 {
                let current = floorDiv(now, RTC146818.second)
                if b & 0x10 != 0 { consider((current + 1) * RTC146818.second) }
                if b & 0x20 != 0, let alarm = nextAlarm(after: base + current) { consider((alarm - base) * RTC146818.second) }
            }
            return next
        }
    }

    private let state = Mutex(State())
    private let clock: MachineClock
    private let irq: IRQLine?
    private var timer: DeviceTimer?
    private var timerHolder: AnyObject?

    /// `epochNanoseconds`: the Unix time at machine time 0 (tests); by default the host's
    /// CLOCK_REALTIME now.
    public init(clock: MachineClock, timers: TimerService?, irq: IRQLine?, ramSize: UInt64, cpuCount: Int,
                epochNanoseconds: Int64? = nil) {
        self.clock = clock
        self.irq = irq
        // Host wall time (Unix nanoseconds) at machine time 0.
        let epoch: Int64
        if let epochNanoseconds {
            epoch = epochNanoseconds
        } else {
            var t = timespec()
            clock_gettime(CLOCK_REALTIME, &t)
            // On a virtual clock (`--clock instructions`) the seconds start on a whole
            // second, so where the update cycle falls (update-in-progress, the update-ended
            // interrupt) does not depend on when the host started the run.
            let fraction = clock.isVirtual ? 0 : Int64(t.tv_nsec)
            epoch = Int64(t.tv_sec) * Self.second + fraction - Int64(clock.now())
        }
        let layout = Self.layout(ramSize: ramSize, cpuCount: cpuCount)
        let now = Int64(clock.now())
        state.withLock { s in
            for (i, v) in layout { s.cmos[i] = v }
            s.base = floorDiv(epoch, Self.second)
            s.offset = floorMod(epoch, Self.second)
            s.evaluated = now + s.offset
        }
        if let timers {
            timer = timers.makeTimer("rtc", handler: self, holder: &timerHolder) { $0.update() }
        }
    }

    /// The CMOS bytes PC firmware reads (offset → value): equipment, base memory (640 KiB),
    /// extended memory above 1 MiB in KiB (0x17/0x18 and 0x30/0x31, at most 0xFFFF), memory
    /// above 16 MiB below 4 GiB in 64 KiB units (0x34/0x35), memory above 4 GiB in 64 KiB
    /// units (0x5B-0x5D, as SeaBIOS reads QEMU's), the CPU count minus one (0x5F, QEMU's
    /// convention), and the IBM AT checksum of 0x10-0x2D at 0x2E (high) / 0x2F (low).
    static func layout(ramSize: UInt64, cpuCount: Int) -> [Int: UInt8] {
        let low = min(ramSize, 3 << 30)   // PhysicalLayout.lowRAMLimit: the rest is above 4 GiB
        let extendedKiB = min(low > 1 << 20 ? (low - (1 << 20)) / 1024 : 0, 0xFFFF)
        let above16M = min(low > 16 << 20 ? (low - (16 << 20)) / 65536 : 0, 0xFFFF)
        let above4G = min((ramSize - low) / 65536, 0xFF_FFFF)
        var bytes: [Int: UInt8] = [
            0x10: 0x00,   // no floppy drives
            0x12: 0x00,   // no hard disks
            0x14: 0x02,   // equipment: no floppy, math coprocessor, EGA/VGA-class display bits 00
            0x15: 0x80, 0x16: 0x02,   // 640 KiB base memory
            0x17: UInt8(extendedKiB & 0xFF), 0x18: UInt8(extendedKiB >> 8),
            0x30: UInt8(extendedKiB & 0xFF), 0x31: UInt8(extendedKiB >> 8),
            0x34: UInt8(above16M & 0xFF), 0x35: UInt8(above16M >> 8),
            0x5B: UInt8(above4G & 0xFF), 0x5C: UInt8((above4G >> 8) & 0xFF), 0x5D: UInt8(above4G >> 16),
            0x5F: UInt8(truncatingIfNeeded: max(cpuCount, 1) - 1),
        ]
        var sum = 0
        for i in 0x10...0x2D { sum += Int(bytes[i] ?? 0) }
        bytes[0x2E] = UInt8((sum >> 8) & 0xFF)
        bytes[0x2F] = UInt8(sum & 0xFF)
        return bytes
    }

    /// Whether the guest has masked NMI (port 0x70 bit 7, last written).
    public var nmiMasked: Bool { state.withLock { $0.nmiMasked } }

    /// RTC time now (L: see `State.base`).
    private func rtcNow(_ s: State) -> Int64 { Int64(clock.now()) + s.offset }

    // MARK: Ports

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        guard port == 0x71 else { return 0xFF }   // the index register is write-only
        var lower = false, raise = false
        let value = state.withLock { s -> UInt8 in
            let now = rtcNow(s)
            s.catchUp(to: now)
            switch s.index {
            case 0x0A:
                let uip = s.updating && floorMod(now, Self.second) >= Self.second - Self.updateLead
                return s.a | (uip ? 0x80 : 0)
            case 0x0B: return s.b
            case 0x0C:
                let c = s.flags | (s.irqf ? 0x80 : 0)
                s.flags = 0
                if s.line { s.line = false; lower = true }
                if s.latePeriodic > 0 && s.b & 0x40 != 0 {
                    // The next late tick: PF again, and the line up again once lowered.
                    s.latePeriodic -= 1
                    s.flags = 0x40
                    s.line = true
                    raise = true
                }
                return c
            case 0x0D: return 0x80   // valid RAM and time: the battery is good
            case let i where Self.timeRegisters.contains(i):
                if let held = s.held { return held[i] ?? 0 }
                return s.registers(s.second(now))[i] ?? 0
            case let i: return s.cmos[i]
            }
        }
        if lower { irq?.lower() }
        if raise { irq?.raise() }
        if lower || raise { rearm() }
        return UInt32(value)
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        if port == 0x70 {
            state.withLock { s in
                s.index = Int(v & 0x7F)
                s.nmiMasked = v & 0x80 != 0
            }
            return
        }
        let raise = state.withLock { s -> Bool in
            let now = rtcNow(s)
            s.catchUp(to: now)
            let before = s
            let wasUpdating = s.updating, wasRunning = s.dividerRunning
            switch s.index {
            case 0x0A:
                s.a = v & 0x7F   // UIP is read-only
            case 0x0B:
                // Setting SET stops the update cycle and clears UIE.
                s.b = v & 0x80 != 0 ? v & ~0x10 : v
            case 0x0C, 0x0D:
                break   // read-only
            case let i where Self.timeRegisters.contains(i):
                if s.held != nil {
                    s.held![i] = v
                } else {
                    // A write while the clock runs sets it from the register at once.
                    var r = s.registers(s.second(now))
                    r[i] = v
                    setTime(&s, second: s.seconds(r), fraction: floorMod(now, Self.second), now: now)
                }
            case let i:
                s.cmos[i] = v
            }
            if wasUpdating && !s.updating {
                // The registers keep what they showed, in the format they showed it in.
                s.held = before.registers(before.second(now))
            } else if !wasUpdating && s.updating, let held = s.held {
                s.held = nil
                // After a divider reset the first update comes 500 ms later; after SET, the
                // second keeps its phase.
                let fraction = wasRunning ? floorMod(now, Self.second) : Self.second / 2
                setTime(&s, second: s.seconds(held), fraction: fraction, now: now)
            }
            if s.a != before.a || (s.b ^ before.b) & 0x40 != 0 {
                // A new rate, or the periodic interrupt switched: no tick is owed.
                s.latePeriodic = 0
                s.periodicTaken = s.periodicCycles.map { floorDiv(cycles32k(now), $0) }
            }
            let irqf = s.irqf
            defer { s.line = irqf }
            return irqf && !s.line
        }
        if raise { irq?.raise() }
        rearm()
    }

    /// Makes RTC time `now` read as Unix second `second` plus `fraction` nanoseconds, with
    /// nothing to catch up.
    private func setTime(_ s: inout State, second: Int64, fraction: Int64, now: Int64) {
        s.base = second
        s.offset += fraction - now   // L is now `fraction`
        s.evaluated = fraction
    }

    // MARK: Interrupts

    /// Arms the timer for the next enabled event (under the state lock, so that concurrent
    /// re-arms cannot leave a stale deadline), or disarms it.
    private func rearm() {
        guard let timer else { return }
        state.withLock { s in
            if let event = s.nextEvent(after: rtcNow(s)) {
                // With the periodic interrupt on, edges a late timer passes over are made up (`update`).
                timer.arm(at: UInt64(max(event - s.offset, 0)), catchesUp: s.b & 0x40 != 0 && s.periodicCycles != nil)
            } else {
                timer.disarm()
            }
        }
    }

    private func update() {
        let slack = timer?.slack ?? 0
        let raise = state.withLock { s -> Bool in
            let now = rtcNow(s)
            s.catchUp(to: now)
            let irqf = s.irqf
            defer { s.line = irqf }
            let raising = irqf && !s.line
            if raising, s.flags & 0x40 != 0, s.b & 0x40 != 0, let p = s.periodicCycles {
                // Edges after the last one raised, up to now: merged into this interrupt,
                // unless a timer slack let the timer sleep past them; then those of the last
                // slack are raised later, one per read of register C.
                let edge = floorDiv(cycles32k(now), p)
                if slack > 0, let taken = s.periodicTaken, edge > taken + 1, let timer {
                    let owedLimit = Int64(timer.owedTicksLimit(period: UInt64(p) * UInt64(Self.second) / 32_768))
                    s.latePeriodic = Int(min(Int64(s.latePeriodic) + edge - taken - 1, owedLimit))
                }
                s.periodicTaken = edge
            }
            return raising
        }
        if raise { irq?.raise() }
        rearm()
    }
}

// MARK: Calendar arithmetic (proleptic Gregorian, days since 1970-01-01)

func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }
func floorMod(_ a: Int64, _ b: Int64) -> Int64 { a - floorDiv(a, b) * b }
func ceilDiv(_ a: Int64, _ b: Int64) -> Int64 { -floorDiv(-a, b) }

/// 32.768 kHz cycles of the RTC's divider chain up to RTC time `ns`.
func cycles32k(_ ns: Int64) -> Int64 {
    floorDiv(ns, RTC146818.second) * 32_768 + floorMod(ns, RTC146818.second) * 32_768 / RTC146818.second
}

func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
    let y = Int64(month <= 2 ? year - 1 : year)
    let era = floorDiv(y, 400)
    let yoe = y - era * 400
    let mp = Int64((month + 9) % 12)
    let doy = (153 * mp + 2) / 5 + Int64(day) - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146_097 + doe - 719_468
}

func civil(fromDays days: Int64) -> (year: Int, month: Int, day: Int) {
    let z = days + 719_468
    let era = floorDiv(z, 146_097)
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let day = Int(doy - (153 * mp + 2) / 5 + 1)
    let month = Int(mp < 10 ? mp + 3 : mp - 9)
    return (Int(yoe + era * 400) + (month <= 2 ? 1 : 0), month, day)
}

// MARK: Snapshot

extension RTC146818 {
    /// The index, the CMOS bytes, registers A-C, the clock's base and offset (so the guest's
    /// date goes on from the snapshot's, not from the host's), the held time registers and
    /// the timer (as the time left after `now`).
    public func saveState(_ w: inout StateWriter, now: UInt64) {
        let s = state.withLock { $0 }
        w.int(s.index); w.bool(s.nmiMasked); w.data(s.cmos)
        w.u8(s.a); w.u8(s.b); w.u8(s.flags); w.i64(s.base); w.i64(s.offset)
        w.optional(s.held) { w, held in
            w.u32(UInt32(held.count))
            for (k, v) in held.sorted(by: { $0.key < $1.key }) { w.int(k); w.u8(v) }
        }
        w.i64(s.evaluated); w.bool(s.line)
        w.optional(timer) { w, t in t.saveDeadline(&w, now: now) }
    }

    public func restoreState(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        var s = State()
        s.index = try r.int(in: 0...127); s.nmiMasked = try r.bool()
        s.cmos = try r.data()
        guard s.cmos.count == 128 else { throw SnapshotError("\(r.what): \(s.cmos.count) CMOS bytes, not 128") }
        s.a = try r.u8(); s.b = try r.u8(); s.flags = try r.u8(); s.base = try r.i64(); s.offset = try r.i64()
        s.held = try r.optional { (r) throws(SnapshotError) -> [Int: UInt8] in
            var held: [Int: UInt8] = [:]
            for _ in 0..<min(Int(try r.u32()), 128) { held[try r.int(in: 0...127)] = try r.u8() }
            return held
        }
        s.evaluated = try r.i64(); s.line = try r.bool()
        state.withLock { $0 = s }
        if try r.bool() {
            guard let timer else { throw SnapshotError("\(r.what): a timer this machine's RTC does not have") }
            try timer.restoreDeadline(&r, now: now)
        }
    }
}

// MARK: Reset

extension RTC146818 {
    /// The 128 bytes of CMOS RAM (the time registers and A-D, the clock's own, are not in
    /// it). A PC's RTC runs from its battery, so a reset leaves them as they were: a guest
    /// restarted after a reset (`tandem run --reboot restart`) gets them back with
    /// `restoreCMOSRAM` on its new machine's RTC, while its clock and registers A-D start
    /// afresh from the host's time (a date the guest set before the reset is not kept).
    public var cmosRAM: [UInt8] { state.withLock { $0.cmos } }

    public func restoreCMOSRAM(_ bytes: [UInt8]) {
        precondition(bytes.count == 128, "CMOS RAM is 128 bytes")
        state.withLock { $0.cmos = bytes }
    }
}

extension RTC146818 {
    /// For `monitor info devices`: the time as the guest reads it, registers A-C, the index.
    public func describeState() -> [String] {
        state.withLock { s in
            let now = rtcNow(s)
            let r = s.held ?? s.registers(s.second(now))
            func f(_ i: Int) -> String { hex2(r[i] ?? 0) }
            let time = "\(f(0x32))\(f(9))-\(f(8))-\(f(7)) \(f(4)):\(f(2)):\(f(0))"
            return ["RTC: time registers \(time) (\(s.bcd ? "BCD" : "binary"), \(s.twentyFourHour ? "24" : "12")-hour\(s.held != nil ? ", update stopped" : "")), "
                    + "A \(hex2(s.a)), B \(hex2(s.b)), C flags \(hex2(s.flags)), IRQ 8 \(s.line ? "raised" : "low"), index 0x\(hex2(UInt8(s.index))), NMI \(s.nmiMasked ? "masked" : "enabled")"]
        }
    }
}
