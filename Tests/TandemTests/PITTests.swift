// The 8254 PIT and port 0x61: register-level behaviour on a hand-driven clock, so every
// count and OUT level is exact. Also the helpers the RTC and platform device tests share.
import Devices
import Machine
import Synchronization
import Testing

// MARK: Shared helpers

/// Machine time the test sets; a `MachineClock` and a thread-less `TimerService` run on it.
final class TestTime: Sendable {
    final class Cell: Sendable { let ns = Atomic<UInt64>(0) }
    private let cell = Cell()
    let clock: MachineClock
    let timers: TimerService

    init(_ start: UInt64 = 0, slack: UInt64 = 0) {
        let cell = self.cell
        cell.ns.store(start, ordering: .relaxed)
        clock = MachineClock(source: { cell.ns.load(ordering: .relaxed) })
        timers = TimerService(clock: clock, manual: true, slack: slack)
    }

    var now: UInt64 { cell.ns.load(ordering: .relaxed) }
    private func set(_ t: UInt64) { cell.ns.store(max(now, t), ordering: .relaxed) }

    /// Moves to `t` (never backwards) and fires every timer due by then, in order, each at
    /// its own deadline (so a periodic device sees each period).
    func advance(to t: UInt64) {
        while let next = timers.nextDeadline(), next <= t {
            set(next)
            timers.fireDue()
        }
        set(t)
        timers.fireDue()
    }

    func advance(by d: UInt64) { advance(to: now + d) }

    /// Moves to `t` (never backwards) and fires what is due by then once, at `t`: a timer
    /// that woke late (`--timer-slack`).
    func jump(to t: UInt64) {
        set(t)
        timers.fireDue()
    }
}

/// An interrupt controller stand-in: records every level driven on each pin.
final class PinRecorder: InterruptPins, @unchecked Sendable {
    private let events = Mutex<[(pin: Int, high: Bool)]>([])
    func setPin(_ pin: Int, high: Bool) { events.withLock { $0.append((pin, high)) } }
    /// Rising edges seen on `pin`.
    func rises(_ pin: Int) -> Int {
        events.withLock { e in
            var level = false, count = 0
            for x in e where x.pin == pin {
                if x.high && !level { count += 1 }
                level = x.high
            }
            return count
        }
    }
    func level(_ pin: Int) -> Bool { events.withLock { $0.last { $0.pin == pin }?.high ?? false } }
}

// MARK: PIT

@Suite("8254 PIT and port 0x61")
struct PITTests {
    /// The first machine nanosecond of PIT input tick `k`.
    static func at(_ k: UInt64) -> UInt64 { (k * 1_000_000_000 + 1_193_181) / 1_193_182 }

    struct Rig {
        let time = TestTime()
        let pins = PinRecorder()
        let pit: PIT8254
        init() {
            let router = InterruptRouter(pic: pins)
            pit = PIT8254(clock: time.clock, timers: time.timers, irq0: router.line(0))
        }
        func tick(_ k: UInt64) { time.advance(to: PITTests.at(k)) }
        func out(_ port: UInt16, _ v: UInt32) { pit.portWrite(port, size: 1, value: v) }
        func read(_ port: UInt16) -> UInt32 { pit.portRead(port, size: 1) }
        /// Latches and reads a lo/hi channel's count.
        func latched(_ channel: UInt16) -> UInt32 {
            out(0x43, UInt32(channel) << 6)
            return read(0x40 + channel) | read(0x40 + channel) << 8
        }
        var out2: Bool { read(0x61) & 0x20 != 0 }
    }

    @Test("the tick conversion is exact at 1.193182 MHz")
    func frequency() {
        #expect(PIT8254.frequency == 1_193_182)
        let r = Rig()
        r.tick(5)
        r.out(0x43, 0x34)   // channel 0, lo/hi, mode 2
        r.out(0x40, 0); r.out(0x40, 0)   // 65536
        // One second later, 1,193,182 ticks have passed: count = 65536 - (1193182 - 1) mod 65536.
        r.time.advance(to: PITTests.at(5) + 1_000_000_000)
        #expect(r.latched(0) == UInt32((65536 - (1_193_182 - 1) % 65536) % 65536))
    }

    @Test("mode 0 on channel 2, gated by 0x61 bit 0, OUT on 0x61 bit 5: Linux's TSC calibration")
    func mode0Calibration() {
        let r = Rig()
        r.tick(100)
        r.out(0x61, (r.read(0x61) & ~0x02) | 0x01)   // gate on, speaker off
        r.out(0x43, 0xB0)                             // channel 2, lo/hi, mode 0, binary
        #expect(!r.out2, "mode 0 OUT is low after the control word")
        r.out(0x42, 1000 & 0xFF)
        r.out(0x42, 1000 >> 8)
        #expect(!r.out2)
        // The count is loaded on the next clock (tick 101) and reaches 0 at tick 1101.
        r.tick(101)
        #expect(r.latched(2) == 1000)
        r.tick(601)
        #expect(r.latched(2) == 500)
        r.tick(1100)
        #expect(!r.out2)
        r.tick(1101)
        #expect(r.out2, "OUT rises N+1 clocks after the count was written")
        r.tick(1105)
        #expect(r.out2, "and stays high")
        #expect(r.latched(2) == 0x10000 - 4, "the counter keeps wrapping down")
    }

    @Test("read-back: status before count, null count until the load, a second latch is ignored")
    func readBack() {
        let r = Rig()
        r.out(0x61, 0x01)
        r.tick(10)
        r.out(0x43, 0xB0)
        r.out(0x43, 0xE8)   // read-back status of channel 2
        #expect(r.read(0x42) == 0x70, "OUT low, null count, lo/hi, mode 0")
        r.out(0x42, 0x34); r.out(0x42, 0x12)
        r.out(0x43, 0xE8)
        #expect(r.read(0x42) == 0x70, "null count until the next clock")
        r.tick(11)
        r.out(0x43, 0xC8)   // read-back count and status of channel 2
        r.tick(20)
        r.out(0x43, 0xC8)   // ignored: both latches are still full
        #expect(r.read(0x42) == 0x30, "status first: OUT low, count loaded")
        #expect(r.read(0x42) == 0x34)
        #expect(r.read(0x42) == 0x12, "the count latched at tick 11")
        #expect(r.read(0x42) | r.read(0x42) << 8 == 0x1234 - 9, "latch released: live count")
        // Mode 2 with BCD, channel 0: the status byte reflects the control word.
        r.out(0x43, 0x15)   // channel 0, LSB only, mode 2, BCD
        r.out(0x43, 0xE2)
        #expect(r.read(0x40) == 0x40 | 0x80 | 0x15)
    }

    @Test("mode 2: OUT low for one clock per period; channel 0 raises IRQ 0 on each rising edge")
    func mode2() {
        let r = Rig()
        #expect(r.time.timers.nextDeadline() == nil, "nothing armed before the guest programs channel 0")
        r.out(0x43, 0x34)
        r.out(0x40, 100); r.out(0x40, 0)   // loaded at tick 1
        #expect(r.time.timers.nextDeadline() == PITTests.at(101))
        r.tick(99)
        #expect(r.pit.out(0))
        #expect(r.latched(0) == 2)
        r.tick(100)
        #expect(!r.pit.out(0), "low while the count is 1")
        #expect(r.latched(0) == 1)
        #expect(r.pins.rises(0) == 0)
        r.tick(101)
        #expect(r.pit.out(0))
        #expect(r.latched(0) == 100, "reloaded")
        #expect(r.pins.rises(0) == 1)
        r.tick(501)
        #expect(r.pins.rises(0) == 5)
        #expect(!r.pins.level(0), "a pulse: the line returns low")
        // A new count takes effect at the end of the current period.
        r.tick(550)
        r.out(0x40, 50); r.out(0x40, 0)
        r.tick(600)
        #expect(r.latched(0) == 1, "still the old sequence")
        r.tick(601)
        #expect(r.latched(0) == 50)
        #expect(r.pins.rises(0) == 6)
        r.tick(651)
        #expect(r.pins.rises(0) == 7)
        #expect(r.time.timers.nextDeadline() == PITTests.at(701))
    }

    @Test("mode 3: a square wave, odd counts high one clock longer; counting down by two")
    func mode3() {
        let r = Rig()
        r.out(0x43, 0x36)
        r.out(0x40, 4); r.out(0x40, 0)   // loaded at tick 1
        var levels: [Bool] = [], counts: [UInt32] = []
        for k in UInt64(1)...8 { r.tick(k); levels.append(r.pit.out(0)); counts.append(r.latched(0)) }
        #expect(levels == [true, true, false, false, true, true, false, false])
        #expect(counts == [4, 2, 4, 2, 4, 2, 4, 2])
        #expect(r.pins.rises(0) == 1, "rose at tick 5")
        r.out(0x43, 0x36)
        r.out(0x40, 5); r.out(0x40, 0)   // loaded at tick 9
        levels = []; counts = []
        for k in UInt64(9)...18 { r.tick(k); levels.append(r.pit.out(0)); counts.append(r.latched(0)) }
        #expect(levels == [true, true, true, false, false, true, true, true, false, false])
        #expect(counts == [5, 4, 2, 5, 2, 5, 4, 2, 5, 2])
    }

    @Test("mode 4: OUT low for one clock at terminal count, once; the timer then disarms")
    func mode4() {
        let r = Rig()
        r.out(0x43, 0x38)
        r.out(0x40, 10); r.out(0x40, 0)   // loaded at tick 1, terminal count at tick 11
        r.tick(10)
        #expect(r.pit.out(0))
        r.tick(11)
        #expect(!r.pit.out(0))
        #expect(r.pins.rises(0) == 0)
        r.tick(12)
        #expect(r.pit.out(0))
        #expect(r.pins.rises(0) == 1)
        #expect(r.time.timers.nextDeadline() == nil)
        r.tick(70_000)
        #expect(r.pit.out(0) && r.pins.rises(0) == 1, "no second strobe after wrapping")
    }

    @Test("modes 1 and 5 wait for a gate trigger on channel 2, and retrigger")
    func gateTriggered() {
        let r = Rig()
        r.out(0x61, 0x00)
        r.out(0x43, 0xB2)   // channel 2, lo/hi, mode 1
        r.out(0x42, 20); r.out(0x42, 0)
        r.tick(50)
        #expect(r.out2, "mode 1 OUT stays high until triggered")
        r.out(0x61, 0x01)   // trigger at tick 50: loaded at 51, OUT low until 71
        r.tick(51)
        #expect(!r.out2)
        #expect(r.latched(2) == 20)
        r.tick(60)
        r.out(0x61, 0x00); r.out(0x61, 0x01)   // retrigger at tick 60: until 81
        r.tick(75)
        #expect(!r.out2)
        r.tick(81)
        #expect(r.out2)
        // Mode 5: a strobe one clock long, N clocks after the trigger's load.
        r.out(0x61, 0x00)
        r.out(0x43, 0xBA)
        r.out(0x42, 5); r.out(0x42, 0)
        r.tick(100)
        #expect(r.out2)
        r.out(0x61, 0x01)   // loaded at 101; low at 106
        r.tick(105)
        #expect(r.out2)
        r.tick(106)
        #expect(!r.out2)
        r.tick(107)
        #expect(r.out2)
    }

    @Test("mode 0: a low gate pauses counting; the first byte of a lo/hi write stops it and drops OUT")
    func mode0Gate() {
        let r = Rig()
        r.out(0x61, 0x01)
        r.out(0x43, 0xB0)
        r.out(0x42, 100); r.out(0x42, 0)   // loaded at tick 1
        r.tick(11)
        #expect(r.latched(2) == 90)
        r.out(0x61, 0x00)
        r.tick(500)
        #expect(r.latched(2) == 90, "paused")
        #expect(!r.out2)
        r.out(0x61, 0x01)
        r.tick(589)
        #expect(r.latched(2) == 1)
        #expect(!r.out2)
        r.tick(590)
        #expect(r.latched(2) == 0)
        #expect(r.out2, "high from terminal count on")
        r.out(0x42, 7)   // first byte
        #expect(!r.out2, "OUT low at once")
        let held = r.latched(2)
        r.tick(700)
        #expect(r.latched(2) == held, "counting stopped")
        r.out(0x42, 0)   // second byte: 7, loaded on the next clock
        r.tick(708)
        #expect(r.out2)
    }

    @Test("BCD counting and the LSB-only and MSB-only access modes")
    func bcdAndAccess() {
        let r = Rig()
        r.out(0x61, 0x01)
        r.out(0x43, 0xB1)   // channel 2, lo/hi, mode 0, BCD
        r.out(0x42, 0x00); r.out(0x42, 0x10)   // 1000 decimal
        r.tick(2)
        #expect(r.latched(2) == 0x0999)
        r.tick(1001)
        #expect(r.latched(2) == 0x0000)
        r.tick(1002)
        #expect(r.latched(2) == 0x9999, "BCD wraps at 10,000")
        r.out(0x43, 0x91)   // LSB only, mode 0, BCD
        r.out(0x42, 0x00)   // 0 = 10,000 in BCD
        r.tick(1004)
        #expect(r.read(0x42) == 0x99, "LSB of 9999")
        #expect(r.read(0x42) == 0x99, "LSB only: no toggle")
        r.out(0x43, 0xA0)   // MSB only, mode 0, binary
        r.out(0x42, 0x12)   // 0x1200
        r.tick(1005 + 0x100)
        #expect(r.read(0x42) == 0x11)
        r.out(0x43, 0x90)   // LSB only, binary
        r.out(0x42, 0x80)
        r.tick(1005 + 0x100 + 0x10)
        #expect(r.read(0x42) == 0x71)
        // Live lo/hi reads toggle independently of writes; the control word resets them.
        r.out(0x43, 0xB0)
        r.out(0x42, 0x00); r.out(0x42, 0x20)
        r.tick(2000)
        _ = r.read(0x42)
        r.out(0x43, 0xB0)
        r.out(0x42, 0x00); r.out(0x42, 0x20)
        r.tick(2001)
        #expect(r.read(0x42) == 0x00 && r.read(0x42) == 0x20)
    }

    @Test("port 0x61: refresh bit toggles per read, speaker and check enables stored, 6-7 clear")
    func portB() {
        let r = Rig()
        r.out(0x61, 0xFE)
        let a = r.read(0x61), b = r.read(0x61)
        #expect(a & 0x10 != b & 0x10)
        #expect(a & 0xCF == 0x0E, "gate 0, speaker 1, bits 2-3 stored, 6-7 read 0")
        #expect(r.read(0x43) == 0, "the control word is write-only")
    }

    @Test("mode 2 with gate low holds OUT high; the rising gate reloads")
    func mode2Gate() {
        let r = Rig()
        r.out(0x61, 0x01)
        r.out(0x43, 0xB4)
        r.out(0x42, 10); r.out(0x42, 0)   // loaded at 1
        r.tick(10)
        #expect(!r.out2)
        r.out(0x61, 0x00)
        #expect(r.out2, "gate low forces OUT high")
        r.tick(40)
        #expect(r.latched(2) == 1, "held")
        r.out(0x61, 0x01)   // reload at 41
        r.tick(41)
        #expect(r.latched(2) == 10)
        r.tick(50)
        #expect(!r.out2)
    }

    @Test("a real-mode guest: Linux's channel 2 calibration poll, then IRQ 0 ticks through the PIC waited for in HLT, then the RTC",
          arguments: backends())
    func guestTicks(backend: BackendKind) throws {
        let r = try runImage(try assemble("""
        bits 16
        org 0x7c00
                cli
                xor ax, ax
                mov ds, ax
                mov ss, ax
                mov sp, 0x7c00
                in al, 0x61                    ; channel 2 gate on, speaker off
                and al, 0xFD
                or al, 0x01
                out 0x61, al
                mov al, 0xB0                   ; channel 2, lo/hi, mode 0
                out 0x43, al
                mov al, 0x9C                   ; 11932: 10 ms
                out 0x42, al
                mov al, 0x2E
                out 0x42, al
                in al, 0x61
                test al, 0x20
                jnz .bad                       ; OUT starts low
        .poll:  in al, 0x61
                test al, 0x20
                jz .poll
                mov al, 'C'
                out 0xe9, al
                mov word [8 * 4], handler      ; IRQ 0 = vector 8
                mov word [8 * 4 + 2], 0
                mov al, 0x11
                out 0x20, al
                out 0xA0, al
                mov al, 0x08
                out 0x21, al
                mov al, 0x70
                out 0xA1, al
                mov al, 0x04
                out 0x21, al
                mov al, 0x02
                out 0xA1, al
                mov al, 0x01
                out 0x21, al
                out 0xA1, al
                mov al, 0xFE                   ; only IRQ 0
                out 0x21, al
                mov al, 0xFF
                out 0xA1, al
                mov al, 0x34                   ; channel 0, lo/hi, mode 2: 1 kHz
                out 0x43, al
                mov al, 0xA9
                out 0x40, al
                mov al, 0x04
                out 0x40, al
                sti
        .wait:  hlt                            ; waits for the next tick
                cmp byte [ticks], 5
                jb .wait
                cli
                mov al, 'T'
                out 0xe9, al
                mov al, 0x0B                   ; RTC register B: BCD, 24-hour
                out 0x70, al
                in al, 0x71
                cmp al, 0x02
                jne .bad
                mov al, 0x00                   ; seconds: valid BCD
                out 0x70, al
                in al, 0x71
                cmp al, 0x60
                jae .bad
                mov al, 10
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        .bad:   mov al, 1
                out 0xf4, al
        handler:
                inc byte [ticks]
                push ax
                mov al, 0x20
                out 0x20, al
                pop ax
                iret
        ticks:  db 0
        """), backend: backend, name: "pit-ticks.bin", timeout: 30)
        #expect(r.output == "CT\n", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// IRQ 0 requests a guest takes after a machine on a hand-driven clock with `slack`
    /// jumps to `late` ns with channel 0 in mode 2 at 1 kHz (1193 counts): through the
    /// 8259A (INTA, then a non-specific EOI), or through IOAPIC pin 2 to the local APIC
    /// (vector 0x30, acknowledged, then its EOI) — as a handler would, until none is
    /// pending; then the same after the next period.
    /// With `duringBurst`, machine time moves there (and the timer fires, if due) after the
    /// first request is taken: a rise while owed ones are being taken.
    static func irq0Taken(afterJumpTo late: UInt64, slack: UInt64, ioapic: Bool, duringBurst: UInt64? = nil) throws -> (first: Int, later: Int) {
        let time = Atomic<UInt64>(0)
        let model = DeviceModel(console: try Console(.capture), input: .none(), cpus: 1,
                                clock: MachineClock { time.load(ordering: .relaxed) }, timerSlack: slack) { _ in }
        func out(_ port: UInt16, _ v: UInt8) { model.ports.write(port, size: 1, value: UInt32(v)) }
        if ioapic {
            out(0x21, 0xFF)                                        // the 8259A masked
            model.apic.mmioWrite(vcpu: 0, LocalAPIC.defaultBase + 0xF0, size: 4, value: 0x1FF)
            model.mmio.write(IOAPIC.base, size: 4, value: 0x14)     // pin 2, low word
            model.mmio.write(IOAPIC.base + 0x10, size: 4, value: 0x30)   // edge, fixed, vector 0x30, to APIC 0
        } else {
            for (port, v): (UInt16, UInt8) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)] { out(port, v) }
        }
        out(0x43, 0x34)
        out(0x40, UInt8(1193 & 0xFF))
        out(0x40, UInt8(1193 >> 8))
        func takeAll(duringBurst: UInt64? = nil) -> Int {
            var n = 0
            while n < 10_000 {
                if ioapic {
                    guard let v = model.apic.acknowledgeInterrupt(vcpu: 0) else { break }
                    #expect(v == 0x30)
                    model.apic.mmioWrite(vcpu: 0, LocalAPIC.defaultBase + 0xB0, size: 4, value: 0)
                } else {
                    guard model.pic.hasPendingInterrupt(vcpu: 0), let v = model.pic.acknowledgeInterrupt(vcpu: 0) else { break }
                    #expect(v == 0x20)
                    out(0x20, 0x20)
                }
                n += 1
                if n == 1, let t = duringBurst {
                    time.store(t, ordering: .relaxed)
                    model.timers.fireDue()
                }
            }
            return n
        }
        time.store(late, ordering: .relaxed)
        #expect(model.timers.fireDue() == 1)
        let first = takeAll(duringBurst: duringBurst)
        time.store(max(late, duringBurst ?? 0) + 1_000_000, ordering: .relaxed)
        #expect(model.timers.fireDue() == 1)
        return (first, takeAll())
    }

    @Test("--timer-slack: channel 0 rises a late timer passed over (modes 2 and 3) are pulsed again one per acknowledge of IRQ 0, through the 8259A and through the IOAPIC, up to the slack's worth; without a slack they merge")
    func lateRises() throws {
        for ioapic in [false, true] {
            // 1193 counts = 0.99985 ms: rises at ~1, 2 and 3 ms before 3.5 ms.
            #expect(try Self.irq0Taken(afterJumpTo: 3_500_000, slack: 10_000_000, ioapic: ioapic) == (3, 1), "ioapic \(ioapic)")
            #expect(try Self.irq0Taken(afterJumpTo: 3_500_000, slack: 0, ioapic: ioapic) == (1, 1), "ioapic \(ioapic)")
            // Rise 4 (4.0 ms) while rise 2's request waits: owed too, not merged.
            #expect(try Self.irq0Taken(afterJumpTo: 3_500_000, slack: 10_000_000, ioapic: ioapic, duringBurst: 4_200_000) == (4, 1), "ioapic \(ioapic)")
            #expect(try Self.irq0Taken(afterJumpTo: 3_500_000, slack: 0, ioapic: ioapic, duringBurst: 4_200_000) == (2, 1), "ioapic \(ioapic)")
            // A second late: only the last slack's rises (10 ms: 10 of them) are owed.
            #expect(try Self.irq0Taken(afterJumpTo: 1_000_500_000, slack: 10_000_000, ioapic: ioapic) == (11, 1), "ioapic \(ioapic)")
        }
    }

    @Test("idle-pit: 2,000 PIT ticks through the 8259A reach a real-mode CPU in STI;HLT, on time or with --timer-slack late but none lost", arguments: backends())
    func idlePIT(backend: BackendKind) throws {
        for slack: UInt64 in [0, 10_000_000] {
            let r = runGuest(try guest("idle-pit.bin"), backend: backend, timeout: 60) { $0.timerSlack = slack }
            #expect(r.status == 0, "slack \(slack): \(r.message ?? "")")
            // "idle-pit: ticks=T ms=M"
            let fields = r.output.dropLast().split(separator: " ")
            let ticks = fields.count == 3 ? Int(fields[1].dropFirst(6)) : nil
            let ms = fields.count == 3 ? Int(fields[2].dropFirst(3)) : nil
            #expect(fields.first == "idle-pit:" && (ticks ?? 0) >= 2000, "slack \(slack): \(r.output)")
            // At least the 1,999.7 ms the ticks take; 20 s if a 10 ms slack lost them.
            #expect((1999..<10_000).contains(ms ?? 0), "slack \(slack): \(r.output)")
        }
    }
}
