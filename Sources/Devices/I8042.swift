import GuestMemory
import Synchronization
import X86

/// The minimum of the PC's 8042 keyboard controller at 0x60 (data) and 0x64 (status /
/// command) that firmware and kernels rely on without a keyboard attached: the status
/// register, the command byte and the controller RAM (0x20-0x3F / 0x60-0x7F), self-tests
/// (0xAA → 0x55, 0xAB and 0xA9 → 0x00), keyboard and auxiliary port enables (0xAD/0xAE,
/// 0xA7/0xA8), the output port (0xD0 read, 0xD1 write: bit 1 is A20, bit 0 = 0 resets),
/// 0xD2/0xD3 (a byte into the output buffer as if from the keyboard / mouse), 0xDD/0xDF
/// (A20 off/on), 0xE0 (test inputs → 0) and the output-port pulses 0xF0-0xFF (0xFE: reset).
///
/// There is no keyboard behind it beyond acknowledgements: 0xFF (reset) answers 0xFA 0xAA
/// and every other byte sent to the keyboard answers 0xFA. Bytes for the auxiliary device
/// (0xD4) are answered 0xFE on its behalf: there is no mouse. The output buffer raises
/// IRQ 1 (keyboard data) or IRQ 12 (auxiliary data) when the command byte enables them, as
/// on PCs. A reset calls `onReset`, which ends the run.
public final class I8042: PortDevice, @unchecked Sendable {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    public static let keyboardIRQ = 1
    public static let auxIRQ = 12

    struct State {
        /// The output buffer and the bytes queued behind it (auxiliary data marked).
        var output: [(byte: UInt8, aux: Bool)] = []
        var lastRead: UInt8 = 0
        /// Controller RAM; byte 0 is the command byte. As a BIOS leaves it: keyboard
        /// interrupt on, system flag, scan-code translation.
        var ram: [UInt8] = [0x45] + [UInt8](repeating: 0, count: 31)
        /// A controller command waiting for its data byte on port 0x60.
        var pendingCommand: UInt8?
        /// Status bit 3: the last write went to the command port.
        var lastWriteWasCommand = false
        /// Status bit 2, set by a passed self-test or by the command byte.
        var systemFlag = true
        /// Output port bits 2, 3, 6 and 7 as last written (bits 0, 1, 4, 5 are live).
        var outputPortRest: UInt8 = 0xCC
        /// A20 when no memory map is attached.
        var a20 = true
        var keyboardLine = false
        var auxLine = false

        var commandByte: UInt8 {
            get { ram[0] }
            set { ram[0] = newValue }
        }

        var status: UInt8 {
            var s: UInt8 = 0x10   // keyboard not inhibited (keylock open)
            if let head = output.first {
                s |= 0x01
                if head.aux { s |= 0x20 }
            }
            if systemFlag { s |= 0x04 }
            if lastWriteWasCommand { s |= 0x08 }
            return s
        }

        mutating func queue(_ bytes: UInt8..., aux: Bool = false) {
            for b in bytes where output.count < 16 { output.append((b, aux)) }
        }
    }

    private let state = Mutex(State())
    private let memory: GuestMemoryMap?
    private let keyboardIRQ: IRQLine?
    private let auxIRQ: IRQLine?
    private let onReset: @Sendable () -> Void

    public init(memory: GuestMemoryMap?, keyboardIRQ: IRQLine?, auxIRQ: IRQLine?, onReset: @escaping @Sendable () -> Void) {
        self.memory = memory
        self.keyboardIRQ = keyboardIRQ
        self.auxIRQ = auxIRQ
        self.onReset = onReset
    }

    private func a20(_ s: State) -> Bool { memory?.a20Enabled.load(ordering: .relaxed) ?? s.a20 }

    private func setA20(_ s: inout State, _ on: Bool) {
        s.a20 = on
        memory?.a20Enabled.store(on, ordering: .relaxed)
    }

    /// What the guest did that the machine must see, and the IRQ line changes to drive.
    private struct Effects {
        var reset = false
        var keyboard: [Bool] = []
        var aux: [Bool] = []
    }

    /// The interrupt outputs follow the output buffer. A byte taken with more behind it
    /// drops the line and raises it again, as the controller does when it loads the next
    /// byte, so that an edge-triggered PIC sees each one.
    private func updateLines(_ s: inout State, _ e: inout Effects, took: Bool) {
        let head = s.output.first
        let keyboard = head.map { !$0.aux } ?? false && s.commandByte & 0x01 != 0
        let aux = head.map { $0.aux } ?? false && s.commandByte & 0x02 != 0
        if s.keyboardLine && (!keyboard || took) { e.keyboard.append(false); s.keyboardLine = false }
        if s.auxLine && (!aux || took) { e.aux.append(false); s.auxLine = false }
        if keyboard && !s.keyboardLine { e.keyboard.append(true); s.keyboardLine = true }
        if aux && !s.auxLine { e.aux.append(true); s.auxLine = true }
    }

    private func apply(_ e: Effects) {
        for level in e.keyboard { keyboardIRQ?.set(level) }
        for level in e.aux { auxIRQ?.set(level) }
        if e.reset { onReset() }
    }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        var e = Effects()
        let v = state.withLock { s -> UInt8 in
            if port == Self.commandPort { return s.status }
            guard !s.output.isEmpty else { return s.lastRead }
            s.lastRead = s.output.removeFirst().byte
            updateLines(&s, &e, took: true)
            return s.lastRead
        }
        apply(e)
        return UInt32(v)
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        var e = Effects()
        state.withLock { s in
            if port == Self.commandPort {
                s.lastWriteWasCommand = true
                s.pendingCommand = nil
                command(v, &s, &e)
            } else {
                s.lastWriteWasCommand = false
                if let c = s.pendingCommand {
                    s.pendingCommand = nil
                    commandData(c, v, &s, &e)
                } else {
                    // A byte for the keyboard: an acknowledgement, and after a reset the
                    // passed basic assurance test.
                    if v == 0xFF { s.queue(0xFA, 0xAA) } else { s.queue(0xFA) }
                }
            }
            updateLines(&s, &e, took: false)
        }
        apply(e)
    }

    private func outputPort(_ s: State) -> UInt8 {
        var p = (s.outputPortRest & 0xCC) | 0x01
        if a20(s) { p |= 0x02 }
        if let head = s.output.first { p |= head.aux ? 0x20 : 0x10 }
        return p
    }

    private func command(_ c: UInt8, _ s: inout State, _ e: inout Effects) {
        switch c {
        case 0x20...0x3F: s.queue(s.ram[Int(c & 0x1F)])
        case 0x60...0x7F, 0xD1, 0xD2, 0xD3, 0xD4: s.pendingCommand = c
        case 0xA7: s.commandByte |= 0x20
        case 0xA8: s.commandByte &= ~0x20
        case 0xA9, 0xAB: s.queue(0x00)   // interface tests: no fault
        case 0xAA:
            s.systemFlag = true
            s.queue(0x55)
        case 0xAD: s.commandByte |= 0x10
        case 0xAE: s.commandByte &= ~0x10
        case 0xD0: s.queue(outputPort(s))
        case 0xDD: setA20(&s, false)
        case 0xDF: setA20(&s, true)
        case 0xE0: s.queue(0x00)
        case 0xF0...0xFF:
            // Pulses the output port bits whose command bit is 0; bit 0 is the CPU reset line.
            if c & 0x01 == 0 { e.reset = true }
        default: break   // not implemented (e.g. 0xC0 input port, password commands): ignored
        }
    }

    private func commandData(_ c: UInt8, _ v: UInt8, _ s: inout State, _ e: inout Effects) {
        switch c {
        case 0x60:
            s.commandByte = v
            s.systemFlag = v & 0x04 != 0
        case 0x61...0x7F: s.ram[Int(c & 0x1F)] = v
        case 0xD1:
            s.outputPortRest = v & 0xCC
            setA20(&s, v & 0x02 != 0)
            if v & 0x01 == 0 { e.reset = true }
        case 0xD2: s.queue(v)
        case 0xD3: s.queue(v, aux: true)
        case 0xD4:
            // For the auxiliary device, which is absent: the controller answers for it with
            // 0xFE (resend), so that a mouse probe fails at once instead of timing out.
            s.queue(0xFE, aux: true)
        default: break
        }
    }
}

/// The reset control register at 0xCF9, as on Intel's PIIX chipsets (what a FADT's reset
/// register points at): a write with bit 2 (reset CPU) set resets the machine, through
/// `onReset`; bits 1 (system reset) and 3 (full reset) are stored and read back.
public final class ResetControl: PortDevice, @unchecked Sendable {
    public static let port: UInt16 = 0xCF9
    private let value = Mutex<UInt8>(0)
    private let onReset: @Sendable () -> Void

    public init(onReset: @escaping @Sendable () -> Void) { self.onReset = onReset }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 { UInt32(value.withLock { $0 }) }

    public func portWrite(_ port: UInt16, size: Int, value v: UInt32) {
        let byte = UInt8(truncatingIfNeeded: v)
        if byte & 0x04 != 0 {
            onReset()
        } else {
            value.withLock { $0 = byte & 0x0A }
        }
    }
}

/// Port 0x80, where firmware and kernels write POST codes (and Linux's I/O delays write
/// anything): each byte written is stored (a read returns the last one) and kept, with
/// its order, for the trace: `postCodes` (the most recent `historyLimit`) and `observe`.
public final class PostCodePort: PortDevice, @unchecked Sendable {
    public static let port: UInt16 = 0x80
    public static let historyLimit = 4096

    private struct State {
        var last: UInt8 = 0
        var history: [UInt8] = []
        var observer: (@Sendable (UInt8) -> Void)?
    }
    private let state = Mutex(State())

    public init() {}

    /// The codes written so far, oldest first (at most `historyLimit`).
    public var postCodes: [UInt8] { state.withLock { $0.history } }

    /// Calls `observer` with every code written from now on (on the writing vCPU's thread).
    public func observe(_ observer: @escaping @Sendable (UInt8) -> Void) {
        state.withLock { $0.observer = observer }
    }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 { UInt32(state.withLock { $0.last }) }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let code = UInt8(truncatingIfNeeded: value)
        let observer = state.withLock { s -> (@Sendable (UInt8) -> Void)? in
            s.last = code
            if s.history.count == Self.historyLimit { s.history.removeFirst(Self.historyLimit / 4) }
            s.history.append(code)
            return s.observer
        }
        observer?(code)
    }
}

// MARK: Snapshot

extension I8042 {
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        w.u32(UInt32(s.output.count))
        for o in s.output { w.u8(o.byte); w.bool(o.aux) }
        w.u8(s.lastRead); w.data(s.ram)
        w.optional(s.pendingCommand) { $0.u8($1) }
        for b in [s.lastWriteWasCommand, s.systemFlag] { w.bool(b) }
        w.u8(s.outputPortRest)
        for b in [s.a20, s.keyboardLine, s.auxLine] { w.bool(b) }
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        var s = State()
        let count = Int(try r.u32())
        guard count <= 16 else { throw SnapshotError("\(r.what): \(count) bytes in a 16-byte output queue") }
        s.output = []
        for _ in 0..<count { s.output.append((try r.u8(), try r.bool())) }
        s.lastRead = try r.u8(); s.ram = try r.data()
        guard s.ram.count == 32 else { throw SnapshotError("\(r.what): \(s.ram.count) bytes of controller RAM, not 32") }
        s.pendingCommand = try r.optional { (r) throws(SnapshotError) in try r.u8() }
        s.lastWriteWasCommand = try r.bool(); s.systemFlag = try r.bool()
        s.outputPortRest = try r.u8()
        s.a20 = try r.bool(); s.keyboardLine = try r.bool(); s.auxLine = try r.bool()
        state.withLock { $0 = s }
    }
}
