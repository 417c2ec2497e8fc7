// The MC146818 RTC/CMOS: register-level behaviour on a hand-driven clock and a fixed
// wall-clock origin, so every date, flag and interrupt edge is exact.
import Devices
import Machine
import Testing

@Suite("MC146818 RTC and CMOS")
struct RTCTests {
    /// 2024-02-29 23:59:58 UTC, a Thursday.
    static let leapEve: Int64 = 1_709_251_198
    static let second: UInt64 = 1_000_000_000

    struct Rig {
        let time: TestTime
        let pins = PinRecorder()
        let rtc: RTC146818
        init(epoch: Int64 = RTCTests.leapEve, ramSize: UInt64 = 128 << 20, cpus: Int = 1, slack: UInt64 = 0) {
            time = TestTime(slack: slack)
            let router = InterruptRouter(pic: pins)
            rtc = RTC146818(clock: time.clock, timers: time.timers, irq: router.line(8), ramSize: ramSize,
                            cpuCount: cpus, epochNanoseconds: epoch * 1_000_000_000)
        }
        func read(_ index: UInt32) -> UInt32 {
            rtc.portWrite(0x70, size: 1, value: index)
            return rtc.portRead(0x71, size: 1)
        }
        func write(_ index: UInt32, _ v: UInt32) {
            rtc.portWrite(0x70, size: 1, value: index)
            rtc.portWrite(0x71, size: 1, value: v)
        }
        /// Seconds, minutes, hours, day of week, day, month, year, century.
        var clock: [UInt32] { [0, 2, 4, 6, 7, 8, 9, 0x32].map { read($0) } }
    }

    @Test("time and date from the host clock in BCD, 24-hour: across a leap day at midnight")
    func bcdTime() {
        let r = Rig()
        #expect(r.clock == [0x58, 0x59, 0x23, 5, 0x29, 0x02, 0x24, 0x20])
        r.time.advance(by: 2 * RTCTests.second)
        #expect(r.clock == [0x00, 0x00, 0x00, 6, 0x01, 0x03, 0x24, 0x20])
        #expect(r.read(0x0B) == 0x02 && r.read(0x0A) == 0x26 && r.read(0x0D) == 0x80, "power-on A, B, D")
    }

    @Test("binary mode and 12-hour mode with the PM bit")
    func binaryAnd12Hour() {
        let r = Rig()
        r.write(0x0B, 0x04)   // binary, 12-hour
        #expect(r.clock == [58, 59, 0x80 | 11, 5, 29, 2, 24, 20])
        r.time.advance(by: 2 * RTCTests.second)
        #expect(r.read(4) == 12, "midnight is 12 AM")
        r.write(0x0B, 0x00)   // BCD, 12-hour
        r.time.advance(by: 12 * 3600 * RTCTests.second)
        #expect(r.read(4) == 0x92, "noon is 12 PM")
        r.time.advance(by: 3600 * RTCTests.second)
        #expect(r.read(4) == 0x81)
    }

    @Test("UIP is set for the 244 µs before each update, and never while SET stops updates")
    func updateInProgress() {
        let r = Rig()
        r.time.advance(to: RTCTests.second - 245_000)
        #expect(r.read(0x0A) == 0x26)
        r.time.advance(to: RTCTests.second - 244_000)
        #expect(r.read(0x0A) == 0xA6)
        #expect(r.read(0) == 0x58, "the old second until the update")
        r.time.advance(to: RTCTests.second)
        #expect(r.read(0x0A) == 0x26)
        #expect(r.read(0) == 0x59)
        r.write(0x0A, 0xA6)   // UIP is read-only
        r.write(0x0B, 0x82)
        r.time.advance(to: 2 * RTCTests.second - 1000)
        #expect(r.read(0x0A) == 0x26)
    }

    @Test("SET stops the clock; the guest's time registers set it, in phase with the old second")
    func setTime() {
        let r = Rig()
        r.time.advance(to: RTCTests.second / 4)
        r.write(0x0B, 0x92)   // SET, UIE, 24-hour BCD: SET clears UIE
        #expect(r.read(0x0B) == 0x82)
        r.time.advance(by: 5 * RTCTests.second)
        #expect(r.read(0) == 0x58, "frozen while SET")
        for (i, v) in [(0, 0x30), (2, 0x20), (4, 0x10), (7, 0x15), (8, 0x06), (9, 0x99), (0x32, 0x19)] as [(UInt32, UInt32)] {
            r.write(i, v)
        }
        #expect(r.read(2) == 0x20)
        r.write(0x0B, 0x02)
        // 1999-06-15 was a Tuesday (3).
        #expect(r.clock == [0x30, 0x20, 0x10, 3, 0x15, 0x06, 0x99, 0x19])
        let now = r.time.now   // 5.25 s: the next update comes at 6 s, as before
        r.time.advance(to: now + 3 * RTCTests.second / 4 - 1)
        #expect(r.read(0) == 0x30)
        r.time.advance(to: now + 3 * RTCTests.second / 4)
        #expect(r.read(0) == 0x31)
        // A write while the clock runs takes effect at once.
        r.write(2, 0x45)
        #expect(r.read(2) == 0x45 && r.read(0) == 0x31)
    }

    @Test("any date the registers hold works: 9999-12-31 23:59:59 rolls over to (100)00-01-01")
    func farDates() {
        let r = Rig()
        r.write(0x0B, 0x82)
        for (i, v) in [(0, 0x59), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99), (0x32, 0x99)] as [(UInt32, UInt32)] {
            r.write(i, v)
        }
        r.write(0x0B, 0x02)
        // 9999-12-31 was a Friday (6).
        #expect(r.clock == [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x99])
        r.time.advance(by: RTCTests.second)
        #expect(r.clock == [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x00])
        // And year 0000 (century 0): 0000-03-01 was a Wednesday (4).
        r.write(0x0B, 0x82)
        r.write(8, 0x03)
        r.write(0x0B, 0x02)
        #expect(r.clock == [0x00, 0x00, 0x00, 4, 0x01, 0x03, 0x00, 0x00])
    }

    @Test("a divider reset stops the clock; restarting it puts the first update 500 ms later")
    func dividerReset() {
        let r = Rig()
        r.write(0x0A, 0x76)
        r.time.advance(by: 10 * RTCTests.second)
        #expect(r.read(0) == 0x58)
        r.write(0x0A, 0x26)
        r.time.advance(by: RTCTests.second / 2 - 1)
        #expect(r.read(0) == 0x58)
        r.time.advance(by: 1)
        #expect(r.read(0) == 0x59)
    }

    @Test("update-ended interrupt: UF and IRQF, IRQ 8 rises, reading C clears and lowers it")
    func updateInterrupt() {
        let r = Rig()
        r.time.advance(to: RTCTests.second / 2)
        #expect(r.read(0x0C) == 0x40, "PF is set at the periodic rate even with PIE clear")
        r.write(0x0A, 0x20)   // no periodic rate, so that only UF shows
        #expect(r.read(0x0C) == 0x00)
        #expect(r.time.timers.nextDeadline() == nil, "no interrupt enabled: nothing armed")
        r.write(0x0B, 0x12)   // UIE
        #expect(r.time.timers.nextDeadline() == RTCTests.second)
        r.time.advance(to: RTCTests.second)
        #expect(r.pins.rises(8) == 1 && r.pins.level(8))
        #expect(r.time.timers.nextDeadline() == nil, "IRQF set: nothing to arm until C is read")
        r.time.advance(to: 3 * RTCTests.second)
        #expect(r.pins.rises(8) == 1)
        #expect(r.read(0x0C) == 0xB0, "UF, and AF: the alarm registers hold 00:00:00, and midnight passed")
        #expect(!r.pins.level(8))
        #expect(r.read(0x0C) == 0x00)
        r.time.advance(to: 4 * RTCTests.second)
        #expect(r.pins.rises(8) == 2)
        // UF without UIE: the flag, no IRQF, no interrupt.
        r.write(0x0B, 0x02)
        _ = r.read(0x0C)
        r.time.advance(to: 5 * RTCTests.second)
        #expect(r.read(0x0C) == 0x10)
        #expect(r.pins.rises(8) == 2)
    }

    @Test("--timer-slack: periodic edges a late timer passed over are raised again one per read of register C, up to the slack's worth; a rate change or PIE off drops them; without a slack they merge")
    func latePeriodic() {
        for slack: UInt64 in [0, 10_000_000] {
            let r = Rig(slack: slack)
            r.write(0x0B, 0x42)   // PIE, 1024 Hz: edges at 0.977, 1.953, 2.930 ms
            r.time.jump(to: 3_500_000)
            #expect(r.pins.rises(8) == 1)
            var taken = 0
            while taken < 100 && r.read(0x0C) == 0xC0 { taken += 1 }
            #expect(taken == (slack == 0 ? 1 : 3), "slack \(slack)")
            #expect(r.pins.rises(8) == taken && !r.pins.level(8), "slack \(slack)")
            // The next edge, on time: one interrupt.
            r.time.advance(to: 3_906_250)
            #expect(r.pins.rises(8) == taken + 1)
            #expect(r.read(0x0C) == 0xC0 && r.read(0x0C) == 0)
            // A second late: the last slack's edges only (10 ms at 1024 Hz: 10 or 11).
            r.time.jump(to: 1_003_906_250 + 500_000)
            var more = 0
            while more < 100 && r.read(0x0C) & 0xC0 == 0xC0 { more += 1 }   // (UF too: a second passed)
            #expect(slack == 0 ? more == 1 : (11...12).contains(more), "slack \(slack): \(more)")
        }
        // Owed ticks end with a new rate.
        let r = Rig(slack: 10_000_000)
        r.write(0x0B, 0x42)
        r.time.jump(to: 3_500_000)
        #expect(r.read(0x0C) == 0xC0)             // one taken, two owed
        r.write(0x0A, 0x2F)                        // 2 Hz
        #expect(r.read(0x0C) == 0xC0)             // the one already raised at that read
        #expect(r.read(0x0C) == 0)                 // and no more
    }

    @Test("periodic interrupt at the rate register A selects")
    func periodic() {
        let r = Rig()
        r.write(0x0B, 0x42)   // PIE, rate 6: 1024 Hz
        #expect(r.time.timers.nextDeadline() == 976_563, "32 cycles of 32.768 kHz")
        r.time.advance(to: 976_562)
        #expect(r.pins.rises(8) == 0)
        r.time.advance(to: 976_563)
        #expect(r.pins.rises(8) == 1)
        #expect(r.read(0x0C) == 0xC0)
        r.write(0x0A, 0x2F)   // rate 15: 2 Hz
        r.time.advance(to: RTCTests.second / 2 - 1)
        #expect(r.pins.rises(8) == 1)
        r.time.advance(to: RTCTests.second / 2)
        #expect(r.pins.rises(8) == 2)
        #expect(r.read(0x0C) & 0xC0 == 0xC0)
        r.write(0x0A, 0x20)   // rate 0: no periodic interrupt
        r.time.advance(to: 5 * RTCTests.second)
        #expect(r.read(0x0C) & 0x40 == 0)
        r.write(0x0A, 0x21)   // rate 1 = rate 8: 256 Hz
        _ = r.read(0x0C)
        r.time.advance(by: 3_906_250 - 1)
        #expect(r.pins.rises(8) == 2)
        r.time.advance(by: 1)
        #expect(r.pins.rises(8) == 3)
    }

    @Test("alarm interrupt with exact and don't-care values")
    func alarm() {
        let r = Rig()
        r.write(0x0A, 0x20)
        r.write(1, 0x05); r.write(3, 0xFF); r.write(5, 0xC0)   // every minute at :05
        r.write(0x0B, 0x22)   // AIE
        #expect(r.time.timers.nextDeadline() == 7 * RTCTests.second, "00:00:05 is 7 s away")
        r.time.advance(to: 7 * RTCTests.second - 1)
        #expect(r.pins.rises(8) == 0)
        r.time.advance(to: 7 * RTCTests.second)
        #expect(r.pins.rises(8) == 1)
        #expect(r.read(0x0C) == 0xB0, "AF with UF (an update happened too)")
        #expect(r.time.timers.nextDeadline() == 67 * RTCTests.second)
        // An exact alarm: 01:00:00.
        r.write(1, 0x00); r.write(3, 0x00); r.write(5, 0x01)
        #expect(r.time.timers.nextDeadline() == 3602 * RTCTests.second)
        // A value that can never match (minute 0x75 in BCD): nothing armed.
        r.write(3, 0x75)
        #expect(r.time.timers.nextDeadline() == nil)
        // AF without AIE: set by the update that matched.
        r.write(3, 0xFF); r.write(5, 0xFF); r.write(1, 0xFF)
        r.write(0x0B, 0x02)
        _ = r.read(0x0C)
        r.time.advance(by: RTCTests.second)
        #expect(r.read(0x0C) == 0x30)
    }

    @Test("port 0x70 bit 7 masks NMI; CMOS storage bytes; C and D are read-only")
    func indexAndStorage() {
        let r = Rig()
        #expect(!r.rtc.nmiMasked)
        r.rtc.portWrite(0x70, size: 1, value: 0x80 | 0x40)
        #expect(r.rtc.nmiMasked)
        r.rtc.portWrite(0x71, size: 1, value: 0xA5)
        r.rtc.portWrite(0x70, size: 1, value: 0x40)
        #expect(!r.rtc.nmiMasked)
        #expect(r.rtc.portRead(0x71, size: 1) == 0xA5)
        #expect(r.rtc.portRead(0x70, size: 1) == 0xFF, "the index register is write-only")
        r.write(0x7F, 0x11)
        #expect(r.read(0x7F) == 0x11)
        r.write(0x0D, 0x00)
        #expect(r.read(0x0D) == 0x80)
        r.write(0x0C, 0xF0)
        #expect(r.read(0x0C) == 0x00)
    }

    @Test("the CMOS memory bytes, CPU count and checksum, as PC firmware reads them",
          arguments: [(UInt64(128) << 20, 1), (UInt64(8) << 30, 4), (UInt64(2) << 20, 256)])
    func memoryLayout(ram: UInt64, cpus: Int) {
        let r = Rig(ramSize: ram, cpus: cpus)
        func word(_ lo: UInt32) -> UInt32 { r.read(lo) | r.read(lo + 1) << 8 }
        let low = min(ram, 3 << 30)
        #expect(word(0x15) == 640)
        #expect(word(0x17) == UInt32(min((low - (1 << 20)) / 1024, 0xFFFF)))
        #expect(word(0x30) == word(0x17))
        #expect(word(0x34) == UInt32(low > 16 << 20 ? min((low - (16 << 20)) / 65536, 0xFFFF) : 0))
        #expect(r.read(0x5B) | r.read(0x5C) << 8 | r.read(0x5D) << 16 == UInt32((ram - low) / 65536))
        #expect(r.read(0x5F) == UInt32(cpus - 1))
        #expect(r.read(0x14) == 0x02)
        let sum = (0x10...0x2D).reduce(UInt32(0)) { $0 + r.read(UInt32($1)) }
        #expect(r.read(0x2E) << 8 | r.read(0x2F) == sum)
        if ram == 8 << 30 {
            #expect(word(0x17) == 0xFFFF && word(0x34) == 0xBF00)
            #expect([r.read(0x5B), r.read(0x5C), r.read(0x5D)] == [0x00, 0x40, 0x01])
        }
    }

    @Test("a real-mode guest takes periodic RTC interrupts on IRQ 8 through the cascaded PIC", arguments: backends())
    func guestPeriodicInterrupts(backend: BackendKind) throws {
        let r = try runImage(try assemble("""
        bits 16
        org 0x7c00
                cli
                xor ax, ax
                mov ds, ax
                mov ss, ax
                mov sp, 0x7c00
                mov word [0x70 * 4], handler   ; IRQ 8 = vector 0x70
                mov word [0x70 * 4 + 2], 0
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
                mov al, 0xFB                   ; master: only the cascade (IRQ 2)
                out 0x21, al
                mov al, 0xFE                   ; slave: only IRQ 8
                out 0xA1, al
                mov al, 0x8A                   ; NMI masked, register A: 1024 Hz
                out 0x70, al
                mov al, 0x26
                out 0x71, al
                mov al, 0x8B                   ; register B: PIE, 24-hour, BCD
                out 0x70, al
                mov al, 0x42
                out 0x71, al
                mov al, 0x8C                   ; clear any flag already set
                out 0x70, al
                in al, 0x71
                sti
        .wait:  cmp byte [count], 5
                jb .wait
                cli
                mov al, 10
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        handler:
                push ax
                mov al, 0x8C                   ; reading C acknowledges the RTC (IRQF, PF)
                out 0x70, al
                in al, 0x71
                and al, 0xC0
                jz .eoi                        ; the edge latched while PIE was being enabled, before C was cleared
                cmp al, 0xC0
                jne .bad
                inc byte [count]
                mov al, 'P'
                out 0xe9, al
        .eoi:   mov al, 0x20
                out 0xA0, al
                out 0x20, al
                pop ax
                iret
        .bad:   mov al, 1
                out 0xf4, al
        count:  db 0
        """), backend: backend, name: "rtc-periodic.bin", timeout: 30)
        #expect(r.output == "PPPPP\n", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }
}
