import Synchronization
import X86

/// A 16550A UART with its full register set, as Linux's 8250 driver and simple polled
/// drivers expect: divisor latch, FIFO control and identification, modem control and
/// status with loopback, scratch register. Transmit is instantaneous (LSR always
/// reports the transmitter empty); received bytes come from a `ConsoleInput`, whose
/// 16-byte FIFO is the receive FIFO (a loopback byte that finds it full sets LSR.OE).
public final class Serial16550: PortDevice {
    public static let com1Base: UInt16 = 0x3F8
    public static let com1IRQ = 4

    private struct Registers {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0
        var mcr: UInt8 = 0
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C   // 9600 baud, the BIOS default
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var msr: UInt8 = 0
        var thrInterruptPending = false
        /// LSR bit 1 (OE): a loopback byte found the receive FIFO full and was lost.
        var overrun = false
        var lastIRQLevel = false
    }

    private let base: UInt16
    private let console: Console
    private let input: ConsoleInput
    private let registers = Mutex(Registers())
    /// Called with the new level when the interrupt output changes (the interrupt
    /// controller hooks in here).
    private let irq: @Sendable (Bool) -> Void

    public init(base: UInt16 = com1Base, console: Console, input: ConsoleInput, irq: @escaping @Sendable (Bool) -> Void = { _ in }) {
        self.base = base
        self.console = console
        self.input = input
        self.irq = irq
        // Unowned: the handler is removed in `deinit`, and ConsoleInput runs it under the
        // lock that removal takes, so it never runs on a freed UART. (A weak reference would
        // give the UART a side table, and every retain of it — one per port access, from
        // the port bus — would take Swift's slow reference-counting path.)
        input.onArrival(for: self) { [unowned(unsafe) self] in self.inputArrived() }
    }

    deinit { input.removeArrival(for: self) }

    /// Received data arrived asynchronously: raise the interrupt if IER asks for it.
    private func inputArrived() {
        let level = registers.withLock { updateIRQ(&$0) }
        if let level { irq(level) }
    }

    /// Whether the UART could still interrupt: receive interrupts enabled (with OUT2) and
    /// input that has not ended, or its line is up now.
    public var mayInterrupt: Bool {
        registers.withLock { r in r.lastIRQLevel || (r.mcr & 0x08 != 0 && r.ier & 0x01 != 0 && input.mayReceive) }
    }

    public var ports: ClosedRange<UInt16> { base...(base + 7) }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        let (value, level) = registers.withLock { r -> (UInt8, Bool?) in
            let v = read(port - base, &r)
            return (v, updateIRQ(&r))
        }
        if let level { irq(level) }
        return UInt32(value)
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let (transmit, level) = registers.withLock { r -> (UInt8?, Bool?) in
            let t = write(port - base, UInt8(truncatingIfNeeded: value), &r)
            return (t, updateIRQ(&r))
        }
        if let transmit { console.write(transmit) }
        if let level { irq(level) }
    }

    private func read(_ offset: UInt16, _ r: inout Registers) -> UInt8 {
        switch offset {
        case 0:
            if r.lcr & 0x80 != 0 { return r.dll }
            return input.take() ?? 0
        case 1:
            return r.lcr & 0x80 != 0 ? r.dlm : r.ier
        case 2:
            var iir: UInt8 = r.fifoEnabled ? 0xC0 : 0
            if r.ier & 0x01 != 0 && input.hasByte() {
                iir |= 0x04
            } else if r.ier & 0x02 != 0 && r.thrInterruptPending {
                iir |= 0x02
                r.thrInterruptPending = false   // reading IIR acknowledges THRE
            } else {
                iir |= 0x01
            }
            return iir
        case 3: return r.lcr
        case 4: return r.mcr
        case 5:
            defer { r.overrun = false }   // reading LSR clears OE
            return 0x60 | (r.overrun ? 0x02 : 0) | (input.hasByte() ? 0x01 : 0)   // THRE | TEMT | OE | DR
        case 6:
            let status: UInt8
            if r.mcr & 0x10 != 0 {
                // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
                let m = r.mcr
                status = (m & 0x02 != 0 ? 0x10 : 0) | (m & 0x01 != 0 ? 0x20 : 0)
                    | (m & 0x04 != 0 ? 0x40 : 0) | (m & 0x08 != 0 ? 0x80 : 0)
            } else {
                status = 0xB0   // CTS, DSR, DCD: a connected terminal
            }
            let delta = (status ^ r.msr) >> 4
            r.msr = status
            return status | (delta & 0x0F)
        default: return r.scr
        }
    }

    /// Returns a byte to transmit, if any.
    private func write(_ offset: UInt16, _ v: UInt8, _ r: inout Registers) -> UInt8? {
        switch offset {
        case 0:
            if r.lcr & 0x80 != 0 { r.dll = v; return nil }
            r.thrInterruptPending = true   // transmitted at once: THR is empty again
            if r.mcr & 0x10 != 0 {
                if !input.push(v) { r.overrun = true }
                return nil
            }
            return v
        case 1:
            if r.lcr & 0x80 != 0 { r.dlm = v; return nil }
            let enablingTHRE = r.ier & 0x02 == 0 && v & 0x02 != 0
            r.ier = v & 0x0F
            if enablingTHRE { r.thrInterruptPending = true }
        case 2:
            r.fifoEnabled = v & 0x01 != 0
            if v & 0x02 != 0 && r.mcr & 0x10 != 0 { input.clear() }
        case 3: r.lcr = v
        case 4: r.mcr = v & 0x1F
        case 7: r.scr = v
        default: break   // LSR and MSR are read-only
        }
        return nil
    }

    /// The interrupt output: OUT2 gates it, as on PCs. Returns the new level when it changed.
    private func updateIRQ(_ r: inout Registers) -> Bool? {
        let pending = (r.ier & 0x01 != 0 && input.hasByte()) || (r.ier & 0x02 != 0 && r.thrInterruptPending)
        let level = pending && r.mcr & 0x08 != 0
        guard level != r.lastIRQLevel else { return nil }
        r.lastIRQLevel = level
        return level
    }
}

/// The debug console at port 0xE9 (Bochs, QEMU isa-debugcon): writes go to the console,
/// reads return 0xE9.
public final class DebugConsole: PortDevice {
    public static let port: UInt16 = 0xE9
    private let console: Console
    public init(console: Console) { self.console = console }
    public func portRead(_ port: UInt16, size: Int) -> UInt32 { 0xE9 }
    public func portWrite(_ port: UInt16, size: Int, value: UInt32) { console.write(UInt8(truncatingIfNeeded: value)) }
}

/// The exit device at port 0xF4: writing v stops the machine with status v & 0xFF
/// (not QEMU's (v << 1) | 1).
public final class ExitDevice: PortDevice {
    public static let port: UInt16 = 0xF4
    private let onExit: @Sendable (UInt8) -> Void
    public init(onExit: @escaping @Sendable (UInt8) -> Void) { self.onExit = onExit }
    public func portRead(_ port: UInt16, size: Int) -> UInt32 { .max }
    public func portWrite(_ port: UInt16, size: Int, value: UInt32) { onExit(UInt8(truncatingIfNeeded: value)) }
}

// MARK: Snapshot

extension Serial16550 {
    /// The registers and the receive FIFO's bytes.
    public func saveState(_ w: inout StateWriter) {
        let r = registers.withLock { $0 }
        for v in [r.ier, r.lcr, r.mcr, r.scr, r.dll, r.dlm, r.msr] { w.u8(v) }
        for b in [r.fifoEnabled, r.thrInterruptPending, r.overrun, r.lastIRQLevel] { w.bool(b) }
        w.data(input.received)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        var g = Registers()
        g.ier = try r.u8(); g.lcr = try r.u8(); g.mcr = try r.u8(); g.scr = try r.u8()
        g.dll = try r.u8(); g.dlm = try r.u8(); g.msr = try r.u8()
        g.fifoEnabled = try r.bool(); g.thrInterruptPending = try r.bool(); g.overrun = try r.bool(); g.lastIRQLevel = try r.bool()
        let fifo = try r.data()
        guard fifo.count <= ConsoleInput.capacity else { throw SnapshotError("\(r.what): \(fifo.count) bytes in a \(ConsoleInput.capacity)-byte FIFO") }
        registers.withLock { $0 = g }
        input.restoreReceived(fifo)
    }
}

extension Serial16550 {
    /// For `monitor info devices`: the line settings, interrupt enables and the FIFO.
    public func describeState() -> [String] {
        let r = registers.withLock { $0 }
        let divisor = Int(r.dlm) << 8 | Int(r.dll)
        let bits = 5 + Int(r.lcr & 3), parity = r.lcr & 8 == 0 ? "N" : ["O", "E", "M", "S"][Int(r.lcr >> 4 & 3)], stop = r.lcr & 4 != 0 ? "2" : "1"
        return ["UART 0x\(String(base, radix: 16)): divisor \(divisor) (\(divisor == 0 ? 0 : 115_200 / divisor) baud), \(bits)\(parity)\(stop), IER \(hex2(r.ier)), MCR \(hex2(r.mcr))"
                + "\(r.mcr & 0x10 != 0 ? " (loopback)" : ""), FIFO \(r.fifoEnabled ? "on" : "off"), interrupt line \(r.lastIRQLevel ? "high" : "low")"
                + (r.thrInterruptPending ? ", THR empty interrupt pending" : "") + (r.overrun ? ", overrun" : "")]
    }
}
