import Devices
import Foundation
import Testing

/// A COM1 UART on a captured console, with `input` waiting to be received.
private struct UART {
    let console: Console
    let serial: Serial16550
    let irqs = Recorder<Bool>()

    init(input: [UInt8] = []) throws {
        console = try Console(.capture)
        let irqs = self.irqs
        serial = Serial16550(console: console, input: .bytes(input), irq: { irqs.append($0) })
    }

    // Register offsets from 0x3F8.
    static let rbr: UInt16 = 0, thr: UInt16 = 0, dll: UInt16 = 0, ier: UInt16 = 1, dlm: UInt16 = 1
    static let iir: UInt16 = 2, fcr: UInt16 = 2, lcr: UInt16 = 3, mcr: UInt16 = 4, lsr: UInt16 = 5, msr: UInt16 = 6, scr: UInt16 = 7

    func read(_ offset: UInt16) -> UInt32 { serial.portRead(0x3F8 + offset, size: 1) }
    func write(_ offset: UInt16, _ value: UInt32) { serial.portWrite(0x3F8 + offset, size: 1, value: value) }
    var output: [UInt8] { console.captured }
}

@Suite("16550A UART")
struct SerialTests {
    @Test("occupies 0x3F8-0x3FF")
    func ports() throws {
        #expect(try UART().serial.ports == 0x3F8...0x3FF)
    }

    @Test("DLAB switches offsets 0 and 1 between DLL/DLM and RBR/THR/IER")
    func divisorLatch() throws {
        let u = try UART(input: [0x41])
        u.write(UART.lcr, 0x80)
        #expect(u.read(UART.dll) == 0x0C)       // 9600 baud until programmed
        u.write(UART.dll, 0x01)
        u.write(UART.dlm, 0x02)
        #expect(u.read(UART.dll) == 0x01)
        #expect(u.read(UART.dlm) == 0x02)
        #expect(u.output.isEmpty, "a divisor write is not a transmit")
        #expect(u.read(UART.lsr) & 0x01 == 1, "reading DLL did not consume input")

        u.write(UART.lcr, 0x03)
        #expect(u.read(UART.ier) == 0x00)
        u.write(UART.ier, 0xFF)
        #expect(u.read(UART.ier) == 0x0F, "IER keeps its four defined bits")
        #expect(u.read(UART.rbr) == 0x41)
        u.write(UART.thr, 0x42)
        #expect(u.output == [0x42])

        u.write(UART.lcr, 0x83)
        #expect(u.read(UART.dll) == 0x01)
        #expect(u.read(UART.dlm) == 0x02)
        #expect(u.read(UART.lcr) == 0x83)
    }

    @Test("scratch, LCR and MCR read back")
    func readBack() throws {
        let u = try UART()
        u.write(UART.scr, 0x5A)
        #expect(u.read(UART.scr) == 0x5A)
        u.write(UART.lcr, 0x1B)
        #expect(u.read(UART.lcr) == 0x1B)
        u.write(UART.mcr, 0xFF)
        #expect(u.read(UART.mcr) == 0x1F, "MCR keeps its five defined bits")
        // LSR and MSR are read-only.
        u.write(UART.lsr, 0x00)
        #expect(u.read(UART.lsr) == 0x60)
    }

    @Test("IIR: FIFO bits, nothing pending")
    func iirIdle() throws {
        let u = try UART()
        #expect(u.read(UART.iir) == 0x01)
        u.write(UART.fcr, 0xC7)
        #expect(u.read(UART.iir) == 0xC1)
        u.write(UART.fcr, 0x00)
        #expect(u.read(UART.iir) == 0x01)
    }

    @Test("THRE interrupt: identified after IER bit 1 is set, acknowledged by reading IIR")
    func threInterrupt() throws {
        let u = try UART()
        u.write(UART.fcr, 0x01)
        u.write(UART.ier, 0x02)
        #expect(u.read(UART.iir) == 0xC2)
        #expect(u.read(UART.iir) == 0xC1)
        u.write(UART.thr, 0x21)
        #expect(u.read(UART.iir) == 0xC2, "THR is empty again at once")
        #expect(u.read(UART.iir) == 0xC1)
    }

    @Test("received data: LSR.DR, IIR identification, RBR")
    func receive() throws {
        let u = try UART(input: [1, 2, 3])
        u.write(UART.fcr, 0x01)
        u.write(UART.ier, 0x01)
        #expect(u.read(UART.lsr) == 0x61)
        #expect(u.read(UART.iir) == 0xC4)
        #expect(u.read(UART.rbr) == 1)
        #expect(u.read(UART.rbr) == 2)
        #expect(u.read(UART.lsr) == 0x61)
        #expect(u.read(UART.rbr) == 3)
        #expect(u.read(UART.lsr) == 0x60, "THRE | TEMT, no data")
        #expect(u.read(UART.iir) == 0xC1)
        #expect(u.read(UART.rbr) == 0, "an empty receiver reads 0")
    }

    @Test("loopback: THR to RBR, MCR bits to MSR")
    func loopback() throws {
        let u = try UART()
        u.write(UART.mcr, 0x10)
        #expect(u.read(UART.msr) == 0x00)
        u.write(UART.mcr, 0x11)                  // DTR -> DSR, with its delta bit
        #expect(u.read(UART.msr) == 0x22)
        #expect(u.read(UART.msr) == 0x20, "delta bits clear once read")
        u.write(UART.mcr, 0x1A)                  // RTS | OUT2 -> CTS | DCD: Linux's 8250 probe
        #expect(u.read(UART.msr) & 0xF0 == 0x90)
        u.write(UART.mcr, 0x1F)
        #expect(u.read(UART.msr) & 0xF0 == 0xF0)

        u.write(UART.thr, 0x55)
        #expect(u.output.isEmpty, "looped back, not transmitted")
        #expect(u.read(UART.lsr) == 0x61)
        #expect(u.read(UART.rbr) == 0x55)
        #expect(u.read(UART.lsr) == 0x60)

        u.write(UART.mcr, 0x0B)                  // loopback off: a connected terminal
        #expect(u.read(UART.msr) & 0xF0 == 0xB0)
        u.write(UART.thr, 0x56)
        #expect(u.output == [0x56])
    }

    @Test("THR writes reach the console in order")
    func transmit() throws {
        let u = try UART()
        for b in Array("Hi there\n".utf8) {
            #expect(u.read(UART.lsr) & 0x20 != 0)
            u.write(UART.thr, UInt32(b))
        }
        #expect(u.output == Array("Hi there\n".utf8))
    }

    @Test("the interrupt line follows pending interrupts, gated by OUT2")
    func irqLine() throws {
        let u = try UART()
        u.write(UART.ier, 0x02)                  // THRE pending, but OUT2 is off
        #expect(u.irqs.all == [])
        u.write(UART.mcr, 0x08)
        #expect(u.irqs.all == [true])
        _ = u.read(UART.iir)                     // acknowledges THRE
        #expect(u.irqs.all == [true, false])
    }
}

@Suite("Console, input, debug console, exit device, buses")
struct DeviceModelTests {
    @Test("ConsoleInput.bytes delivers its bytes once, then nothing")
    func input() {
        let input = ConsoleInput.bytes([7, 8])
        #expect(input.hasByte())
        #expect(input.take() == 7)
        #expect(input.push(9))
        #expect(input.take() == 8)
        #expect(input.take() == 9)
        #expect(!input.hasByte())
        #expect(input.take() == nil)
        #expect(ConsoleInput.none().take() == nil)
    }

    @Test("debug console: reads return 0xE9, writes reach the console")
    func debugConsole() throws {
        let console = try Console(.capture)
        let d = DebugConsole(console: console)
        #expect(DebugConsole.port == 0xE9)
        #expect(d.portRead(0xE9, size: 1) == 0xE9)
        d.portWrite(0xE9, size: 1, value: 0x41)
        d.portWrite(0xE9, size: 1, value: 0x142)  // only the low byte
        #expect(console.captured == [0x41, 0x42])
    }

    @Test("the device model: the 8259A pair, COM1, 0xE9, 0xF4, the PC platform devices and nothing else")
    func deviceModel() throws {
        let console = try Console(.capture)
        let exits = Recorder<UInt8>()
        let model = DeviceModel(console: console, input: .bytes([0x33])) { exits.append($0) }
        #expect(model.ports.read(0xE9, size: 1) == 0xE9)
        model.ports.write(0xE9, size: 1, value: 0x61)
        model.ports.write(0x3F8, size: 1, value: 0x62)
        #expect(model.ports.read(0x3F8, size: 1) == 0x33)
        #expect(console.captured == [0x61, 0x62])
        #expect(exits.all == [])

        // The exit device: any width, the low byte is the status.
        model.ports.write(0xF4, size: 1, value: 42)
        model.ports.write(0xF4, size: 2, value: 0x1FF)
        model.ports.write(0xF4, size: 4, value: 0x1234_5600)
        #expect(exits.all == [42, 0xFF, 0x00])
        #expect(model.ports.read(0xF4, size: 1) == 0xFF)

        let claimed = [UInt16(0xE9), 0xF4, 0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
                       0x60, 0x64, 0x80, 0xCF9, 0x510, 0x511] + Array(UInt16(0x3F8)...0x3FF) + Array(UInt16(0x600)...0x60B)
        for port in claimed { #expect(model.ports.isClaimed(port)) }
        for port: UInt16 in [0, 0x1F, 0x22, 0x3F, 0x44, 0x5F, 0x62, 0x63, 0x65, 0x6F, 0x72, 0x7F, 0x81, 0x9F, 0xA2, 0xE8, 0xEA, 0xF3,
                             0xF5, 0x2F8, 0x3F7, 0x400, 0x4CF, 0x4D2, 0x50F, 0x512, 0x514, 0x5FF, 0x60C, 0xCF8, 0xCFA, 0xCFC, 0xFFFF] {
            #expect(!model.ports.isClaimed(port))
        }
    }

    @Test("unclaimed ports read all ones per size and ignore writes")
    func unclaimedPorts() throws {
        let model = DeviceModel(console: try Console(.capture), input: .none()) { _ in }
        for port: UInt16 in [0x81, 0x2F8, 0xCFC, 0xFFFF] {
            model.ports.write(port, size: 4, value: 0)
            #expect(model.ports.read(port, size: 1) == 0xFF)
            #expect(model.ports.read(port, size: 2) == 0xFFFF)
            #expect(model.ports.read(port, size: 4) == 0xFFFF_FFFF)
        }
        // A claimed port's answer is cut to the access size.
        #expect(model.ports.read(0xF4, size: 2) == 0xFFFF)
        #expect(model.ports.read(0xE9, size: 4) == 0xE9)
    }

    @Test("unclaimed MMIO reads all ones per size; claimed ranges reach their device")
    func mmio() {
        final class Probe: MMIODevice {
            let writes = Recorder<UInt64>()
            func mmioRead(_ address: UInt64, size: Int) -> UInt64 { address & 0xFFFF }
            func mmioWrite(_ address: UInt64, size: Int, value: UInt64) { writes.append(value) }
        }
        let bus = MMIOBus()
        #expect(bus.read(0xFEE0_0000, size: 1) == 0xFF)
        #expect(bus.read(0xFEE0_0000, size: 2) == 0xFFFF)
        #expect(bus.read(0xFEE0_0000, size: 4) == 0xFFFF_FFFF)
        #expect(bus.read(0xFEE0_0000, size: 8) == .max)
        let probe = Probe()
        bus.attach(probe, range: 0xFEC0_0000...0xFEC0_0FFF)
        #expect(bus.read(0xFEC0_0010, size: 4) == 0x10)
        bus.write(0xFEC0_0020, size: 4, value: 5)
        bus.write(0xFEC0_1000, size: 4, value: 6)    // just outside
        #expect(probe.writes.all == [5])
        #expect(bus.read(0xFEC0_1000, size: 4) == 0xFFFF_FFFF)
    }

    @Test("console sinks: a file gets every byte, none gets nothing")
    func consoleSinks() throws {
        let path = scratchPath("console.txt")
        do {
            let console = try Console(.file(path))
            for b in Array("line 1\npartial".utf8) { console.write(b) }
            console.flush()
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "line 1\npartial")
        let none = try Console(.none)
        none.write(0x41)
        #expect(none.captured == [])
        #expect(throws: Console.OpenError.self) { try Console(.file("/nonexistent-dir/x")) }
        do { _ = try Console(.file("/nonexistent-dir/x")) } catch {
            #expect(error.description == "cannot open serial file /nonexistent-dir/x: No such file or directory")
        }
    }
}
