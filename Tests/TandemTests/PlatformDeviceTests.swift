// The i8042 minimum, the 0xCF9 reset register, port 0x80, QEMU's fw_cfg and the ACPI PM
// registers: register-level behaviour (PM timer on a hand-driven clock).
import Devices
import GuestMemory
import HostOS
import Testing

@Suite("PC platform devices")
struct PlatformDeviceTests {
    struct Keyboard {
        let pins = PinRecorder()
        let resets = Recorder<Int>()
        let memory: GuestMemoryMap
        let kbc: I8042
        init() throws {
            memory = try GuestMemoryMap(ramSize: 2 << 20)
            let router = InterruptRouter(pic: pins)
            let resets = self.resets
            kbc = I8042(memory: memory, keyboardIRQ: router.line(1), auxIRQ: router.line(12)) { resets.append(1) }
        }
        func command(_ c: UInt32) { kbc.portWrite(0x64, size: 1, value: c) }
        func data(_ d: UInt32) { kbc.portWrite(0x60, size: 1, value: d) }
        var status: UInt32 { kbc.portRead(0x64, size: 1) }
        var a20: Bool { memory.a20Enabled.load(ordering: .relaxed) }
        func read() -> UInt32 { kbc.portRead(0x60, size: 1) }
    }

    @Test("i8042: status, command byte, self-tests, the output buffer and its reads")
    func i8042Basics() throws {
        let k = try Keyboard()
        #expect(k.status == 0x14, "empty output buffer, system flag, not inhibited")
        k.command(0x20)
        #expect(k.status == 0x1D, "output buffer full, last write a command")
        #expect(k.read() == 0x45)
        #expect(k.status & 0x01 == 0)
        #expect(k.read() == 0x45, "an empty buffer reads the last byte again")
        k.command(0x60); k.data(0x20)   // command byte: interrupts off, system flag clear
        #expect(k.status & 0x0C == 0, "system flag from the command byte; last write was data")
        k.command(0xAA)
        #expect(k.read() == 0x55)
        #expect(k.status & 0x04 != 0, "self-test sets the system flag")
        k.command(0xAB)
        #expect(k.read() == 0x00)
        k.command(0xAD)
        k.command(0x20)
        #expect(k.read() == 0x30, "0xAD disables the keyboard (bit 4)")
        k.command(0xAE)
        k.command(0x20)
        #expect(k.read() == 0x20)
        // Controller RAM beyond the command byte.
        k.command(0x65); k.data(0x5A)
        k.command(0x25)
        #expect(k.read() == 0x5A)
        // The keyboard: reset answers ACK and BAT passed; other commands ACK.
        k.data(0xFF)
        #expect(k.read() == 0xFA)
        #expect(k.read() == 0xAA)
        k.data(0xF4)
        #expect(k.read() == 0xFA)
        #expect(k.status & 0x01 == 0)
        // 0xD2/0xD3 put a byte in the output buffer as keyboard / auxiliary data.
        k.command(0xD3); k.data(0x77)
        #expect(k.status & 0x21 == 0x21)
        #expect(k.read() == 0x77)
        // No mouse: a byte for it is answered 0xFE (resend) as auxiliary data.
        k.command(0xD4); k.data(0xFF)
        #expect(k.status & 0x21 == 0x21)
        #expect(k.read() == 0xFE)
        #expect(k.resets.all.isEmpty)
    }

    @Test("i8042: IRQ 1 and IRQ 12 follow the output buffer as the command byte enables them")
    func i8042Interrupts() throws {
        let k = try Keyboard()   // command byte 0x45: keyboard interrupt on
        k.data(0xFF)
        #expect(k.pins.rises(1) == 1 && k.pins.level(1))
        _ = k.read()
        #expect(k.pins.rises(1) == 2, "a new edge for the byte behind")
        _ = k.read()
        #expect(!k.pins.level(1))
        k.command(0x60); k.data(0x46)   // aux interrupt only... plus system flag
        k.command(0xD3); k.data(0x01)
        #expect(k.pins.rises(12) == 1)
        #expect(k.pins.rises(1) == 2)
        _ = k.read()
        #expect(!k.pins.level(12))
    }

    @Test("i8042: the output port drives A20; bit 0 clear, 0xFE and 0xF0-pulses reset")
    func i8042OutputPort() throws {
        let k = try Keyboard()
        k.command(0xD0)
        #expect(k.read() == 0xCF, "reset high, A20 on, no output buffer bits")
        k.command(0xDD)
        #expect(!k.a20)
        k.command(0xD0)
        #expect(k.read() == 0xCD)
        k.command(0xDF)
        #expect(k.a20)
        k.command(0xD1); k.data(0xDD)   // A20 off, reset line high
        #expect(!k.a20)
        #expect(k.resets.all.isEmpty)
        k.command(0xD1); k.data(0xDE)   // bit 0 low: reset
        #expect(k.resets.all.count == 1)
        #expect(k.a20)
        k.command(0xFF)   // pulses nothing
        #expect(k.resets.all.count == 1)
        k.command(0xFE)
        #expect(k.resets.all.count == 2)
        k.command(0xF0)
        #expect(k.resets.all.count == 3)
    }

    @Test("0xCF9: bit 2 resets; bits 1 and 3 are stored")
    func resetControl() {
        let resets = Recorder<Int>()
        let rcr = ResetControl { resets.append(1) }
        rcr.portWrite(0xCF9, size: 1, value: 0x02)
        #expect(rcr.portRead(0xCF9, size: 1) == 0x02)
        #expect(resets.all.isEmpty)
        rcr.portWrite(0xCF9, size: 1, value: 0x06)
        #expect(resets.all.count == 1)
        rcr.portWrite(0xCF9, size: 1, value: 0xF9)
        #expect(rcr.portRead(0xCF9, size: 1) == 0x08)
    }

    @Test("port 0x80: the last byte reads back; every code is kept in order and observed")
    func postCodes() {
        let port = PostCodePort()
        let seen = Recorder<UInt8>()
        port.observe { seen.append($0) }
        #expect(port.portRead(0x80, size: 1) == 0)
        for v: UInt32 in [0x10, 0x20, 0x1FF] { port.portWrite(0x80, size: 1, value: v) }
        #expect(port.portRead(0x80, size: 1) == 0xFF)
        #expect(port.postCodes == [0x10, 0x20, 0xFF])
        #expect(seen.all == [0x10, 0x20, 0xFF])
        for _ in 0..<PostCodePort.historyLimit { port.portWrite(0x80, size: 1, value: 1) }
        #expect(port.postCodes.count <= PostCodePort.historyLimit && port.postCodes.last == 1)
    }

    /// Selects `key` and reads `count` bytes of fw_cfg data.
    func fwcfg(_ f: FwCfg, _ key: UInt32, _ count: Int) -> [UInt8] {
        f.portWrite(0x510, size: 2, value: key)
        return (0..<count).map { _ in UInt8(f.portRead(0x511, size: 1)) }
    }

    @Test("fw_cfg: signature, ID, UUID, RAM size, CPU counts; rewinding, reading past the end")
    func fwCfgItems() {
        let f = FwCfg(ramSize: 6 << 30, cpuCount: 4)
        #expect(fwcfg(f, 0x0000, 6) == Array("QEMU".utf8) + [0, 0], "zeros past the end")
        #expect(fwcfg(f, 0x0000, 2) == Array("QE".utf8), "selecting rewinds")
        #expect(fwcfg(f, 0x0001, 4) == [1, 0, 0, 0], "traditional interface, no DMA")
        #expect(fwcfg(f, 0x0002, 16) == [UInt8](repeating: 0, count: 16))
        #expect(fwcfg(f, 0x0003, 8) == [0, 0, 0, 0x80, 1, 0, 0, 0])
        #expect(fwcfg(f, 0x0004, 2) == [1, 0])
        #expect(fwcfg(f, 0x0005, 2) == [4, 0])
        #expect(fwcfg(f, 0x000F, 2) == [4, 0])
        #expect(fwcfg(f, 0x4000, 4) == Array("QEMU".utf8), "the write bit does not change the item")
        #expect(fwcfg(f, 0x8000, 2) == [0, 0], "architecture items are separate keys")
        #expect(fwcfg(f, 0x1234, 2) == [0, 0], "no such item")
        // As QEMU decodes the 2-byte block: byte writes are (ignored) data writes, 32-bit
        // writes and wide reads are not decoded; a byte read at 0x510 reads data too, and a
        // 16-bit write at 0x511 selects.
        f.portWrite(0x510, size: 2, value: 0x0000)
        f.portWrite(0x510, size: 1, value: 0x05)
        f.portWrite(0x511, size: 1, value: 0x99)
        f.portWrite(0x510, size: 4, value: 0x05)
        #expect(f.portRead(0x511, size: 2) == 0)
        #expect(f.portRead(0x511, size: 1) == UInt32(UInt8(ascii: "Q")))
        #expect(f.portRead(0x510, size: 1) == UInt32(UInt8(ascii: "E")))
        f.portWrite(0x511, size: 2, value: 0x0005)
        #expect(f.portRead(0x511, size: 1) == 4)
    }

    @Test("fw_cfg: the file directory is big-endian, sorted by name, files from selector 0x20")
    func fwCfgFiles() {
        let f = FwCfg(ramSize: 1 << 20, cpuCount: 1)
        #expect(fwcfg(f, 0x0019, 5) == [0, 0, 0, 0, 0], "an empty directory: count 0")
        f.addFile(name: "etc/zeta", bytes: [1, 2, 3])
        f.addFile(name: "etc/alpha", bytes: Array(repeating: 7, count: 300))
        let dir = fwcfg(f, 0x0019, 4 + 2 * 64)
        #expect(dir[0..<4] == [0, 0, 0, 2])
        func entry(_ i: Int) -> (size: Int, select: Int, name: String) {
            let e = Array(dir[(4 + 64 * i)..<(4 + 64 * (i + 1))])
            let size = e[0..<4].reduce(0) { $0 << 8 | Int($1) }
            let select = Int(e[4]) << 8 | Int(e[5])
            #expect(e[6] == 0 && e[7] == 0)
            return (size, select, String(decoding: e[8...].prefix { $0 != 0 }, as: UTF8.self))
        }
        #expect(entry(0) == (300, 0x20, "etc/alpha"))
        #expect(entry(1) == (3, 0x21, "etc/zeta"))
        #expect(fwcfg(f, 0x0021, 4) == [1, 2, 3, 0])
        #expect(fwcfg(f, 0x0020, 300) == Array(repeating: 7, count: 300))
        f.addFile(name: "etc/zeta", bytes: [9])
        #expect(fwcfg(f, 0x0019, 4) == [0, 0, 0, 2], "replacing keeps the count")
        #expect(fwcfg(f, 0x0021, 2) == [9, 0])
    }

    @Test("ACPI PM: the 24-bit 3.579545 MHz timer, PM1 status/enable, SCI, S5 power-off")
    func acpiPM() {
        let time = TestTime()
        let pins = PinRecorder()
        let router = InterruptRouter(pic: pins)
        let offs = Recorder<Int>()
        let pm = ACPIPM(clock: time.clock, timers: time.timers, sci: router.line(9)) { offs.append(1) }
        #expect(pm.portRead(0x608, size: 4) == 0)
        time.advance(to: 1_000_000_000)
        #expect(pm.portRead(0x608, size: 4) == 3_579_545)
        #expect(pm.portRead(0x608, size: 1) == 3_579_545 & 0xFF)
        #expect(pm.portRead(0x609, size: 2) == (3_579_545 >> 8) & 0xFFFF)
        time.advance(to: 5_000_000_000)
        #expect(pm.portRead(0x608, size: 4) == (5 * 3_579_545) & 0xFF_FFFF, "wraps at 24 bits")
        #expect(pm.portRead(0x604, size: 2) == 1, "SCI_EN: always in ACPI mode")
        #expect(pm.portRead(0x600, size: 2) == 1, "TMR_STS: bit 23 changed")
        pm.portWrite(0x600, size: 2, value: 1)
        #expect(pm.portRead(0x600, size: 2) == 0, "write 1 to clear")
        // TMR_EN: the SCI (IRQ 9) rises at the next bit-23 change, after 3 * 2^23 ticks.
        pm.portWrite(0x602, size: 2, value: 1)
        #expect(pm.portRead(0x600, size: 4) == 0x0001_0000, "PM1_EN reads back in the upper half")
        #expect(time.timers.nextDeadline() == 7_030_453_312)   // ceil(3 * 2^23 / 3.579545 MHz)
        time.advance(to: 7_030_453_312)
        #expect(pins.rises(9) == 1 && pins.level(9))
        pm.portWrite(0x600, size: 2, value: 1)
        #expect(!pins.level(9))
        pm.portWrite(0x602, size: 2, value: 0)
        #expect(time.timers.nextDeadline() == nil)
        // Sleep types other than S5 do nothing; S5 (5, or PIIX4's 0) powers off.
        pm.portWrite(0x604, size: 2, value: 0x2000 | 1 << 10 | 1)
        #expect(offs.all.isEmpty)
        #expect(pm.portRead(0x604, size: 2) == 0x0401, "SLP_TYP stored, SLP_EN write-only")
        pm.portWrite(0x604, size: 2, value: 0x2000 | 5 << 10)
        #expect(offs.all.count == 1)
        pm.portWrite(0x604, size: 2, value: 0x2000)
        #expect(offs.all.count == 2)
        #expect(pm.portRead(0x606, size: 2) == 0)
    }

    @Test("the device model wires the platform devices to their ports, RAM size and CPU count")
    func wiring() throws {
        let resets = Recorder<Int>(), offs = Recorder<Int>()
        let memory = try GuestMemoryMap(ramSize: 64 << 20)
        let model = DeviceModel(console: try Console(.capture), input: .none(), memory: memory, cpus: 3,
                                onReset: { resets.append(1) }, onPowerOff: { offs.append(1) }) { _ in }
        model.ports.write(0x510, size: 2, value: 5)
        #expect(model.ports.read(0x511, size: 1) == 3)
        model.ports.write(0x510, size: 2, value: 3)
        #expect((0..<8).map { _ in model.ports.read(0x511, size: 1) } == [0, 0, 0, 4, 0, 0, 0, 0])
        model.ports.write(0x70, size: 1, value: 0x5F)
        #expect(model.ports.read(0x71, size: 1) == 2)
        model.ports.write(0x70, size: 1, value: 0x18)
        #expect(model.ports.read(0x71, size: 1) == 0xFC, "63 MiB above 1 MiB: 0xFC00 KiB")
        model.ports.write(0x64, size: 1, value: 0xFE)
        model.ports.write(0xCF9, size: 1, value: 0x06)
        #expect(resets.all.count == 2)
        model.ports.write(0x604, size: 2, value: 0x3400)
        #expect(offs.all.count == 1)
        model.ports.write(0x80, size: 1, value: 0x42)
        #expect(model.postCodes.postCodes == [0x42])
        model.ports.write(0x43, size: 1, value: 0xB0)
        model.ports.write(0x43, size: 1, value: 0xE8)
        #expect(model.ports.read(0x42, size: 1) == 0x70)
        #expect(model.ports.read(0x61, size: 1) & 0x20 == 0)
    }

    @Test("any guest port traffic on two threads, with the timer thread firing: no crash, no deadlock")
    func concurrentFuzz() throws {
        struct SplitMix: RandomNumberGenerator {
            var state: UInt64
            mutating func next() -> UInt64 {
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                return z ^ (z >> 31)
            }
        }
        let memory = try GuestMemoryMap(ramSize: 16 << 20)
        let model = DeviceModel(console: try Console(.capture), input: .none(), memory: memory, cpus: 2) { _ in }
        // Fast interrupt sources, so the timer thread is busy while the guest threads poke.
        model.ports.write(0x43, size: 1, value: 0x34)
        model.ports.write(0x40, size: 1, value: 2); model.ports.write(0x40, size: 1, value: 0)
        model.ports.write(0x70, size: 1, value: 0x0A); model.ports.write(0x71, size: 1, value: 0x23)
        model.ports.write(0x70, size: 1, value: 0x0B); model.ports.write(0x71, size: 1, value: 0x72)
        model.ports.write(0x602, size: 2, value: 1)
        let ports: [UInt16] = [0x40, 0x41, 0x42, 0x43, 0x61, 0x60, 0x64, 0x70, 0x71, 0x80, 0xCF9, 0x510, 0x511,
                               0x600, 0x601, 0x602, 0x603, 0x604, 0x605, 0x606, 0x608, 0x609, 0x60A, 0x60B]
        let threads = (0..<2).map { seed in
            HostThread.spawn(name: "fuzz\(seed)") { [model] in
                var rng = SplitMix(state: UInt64(seed) &+ 1)
                for _ in 0..<200_000 {
                    let port = ports[Int(rng.next() % UInt64(ports.count))]
                    let size = [1, 2, 4][Int(rng.next() % 3)]
                    if rng.next() & 1 == 0 {
                        _ = model.ports.read(port, size: size)
                    } else {
                        model.ports.write(port, size: size, value: UInt32(truncatingIfNeeded: rng.next()))
                    }
                }
            }
        }
        for t in threads { t.join() }
        model.timers.stop()
        #expect(model.router.level(0) == false, "IRQ 0 is pulsed, never left high")
    }
}
