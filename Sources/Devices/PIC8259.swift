import Synchronization
import X86

/// The PC's two cascaded 8259A programmable interrupt controllers: the master at
/// 0x20/0x21 (IRQ 0-7), the slave at 0xA0/0xA1 (IRQ 8-15) on the master's IRQ 2, and the
/// edge/level control registers (ELCR) at 0x4D0/0x4D1.
///
/// Implemented as the datasheet describes: ICW1-ICW4 (single or cascade, edge or level,
/// auto-EOI), OCW1 (mask), OCW2 (specific, non-specific and rotating EOIs, priority
/// rotation), OCW3 (IRR/ISR reads, poll, special mask mode); fully nested priority; a
/// spurious IRQ 7 (15) when the request went away before the acknowledge. The master's
/// output goes to vCPU 0 through `InterruptController` (the local APIC's LINT0 in virtual-
/// wire mode once there is one). Devices drive inputs with `setLine(_:high:)`.
public final class PIC8259Pair: PortDevice, InterruptController, InterruptPins, @unchecked Sendable {
    public static let masterPorts: ClosedRange<UInt16> = 0x20...0x21
    public static let slavePorts: ClosedRange<UInt16> = 0xA0...0xA1
    public static let elcrPorts: ClosedRange<UInt16> = 0x4D0...0x4D1

    /// One 8259A.
    struct Chip {
        var irr: UInt8 = 0
        var isr: UInt8 = 0
        var imr: UInt8 = 0
        /// Input levels as the devices drive them (edge detection, level mode).
        var lines: UInt8 = 0
        /// Per-input level triggering (ELCR, or ICW1.LTIM for all).
        var elcr: UInt8 = 0
        var levelTriggeredAll = false
        var vectorBase: UInt8 = 0
        /// The lowest-priority input; the highest is the next one (7: IRQ 0 first).
        var lowestPriority: UInt8 = 7
        var autoEOI = false
        var rotateOnAutoEOI = false
        var specialMask = false
        var readISR = false
        var poll = false
        /// Initialization: the next ICW expected on the odd port (2, 3, 4), 0 when done.
        var expectingICW = 0
        var needsICW4 = false
        var single = false

        var levelMask: UInt8 { levelTriggeredAll ? 0xFF : elcr }

        /// The input with the highest priority among `bits`, if any.
        func highest(_ bits: UInt8) -> Int? {
            guard bits != 0 else { return nil }
            for k in 1...8 {
                let irq = (Int(lowestPriority) + k) & 7
                if bits & (1 << irq) != 0 { return irq }
            }
            return nil
        }

        /// The input whose request would be delivered now (priority above every in-service
        /// one, except under special mask mode), if any.
        func pending() -> Int? {
            guard let irq = highest(irr & ~imr) else { return nil }
            let inService = specialMask ? isr & ~imr : isr
            if let current = highest(inService) {
                // Fully nested: only a higher priority than the one in service.
                let rank = { (i: Int) in (i - Int(lowestPriority) - 1 + 16) & 7 }
                if rank(irq) >= rank(current) { return nil }
            }
            return irq
        }

        /// An input changes. An edge-triggered request is latched on the rising edge and,
        /// as the datasheet requires the input to stay high until the acknowledge, dropped
        /// when the line falls first (the acknowledge then finds nothing: the spurious IRQ
        /// 7). `latchEdge`: keep the latched request when the line falls, as QEMU's i8259
        /// does for every edge input; used for the master's cascade input, so that a slave
        /// request that goes away leaves IRQ 2 requested and the acknowledge gets the
        /// slave's spurious IRQ 15 (with IRQ 2 in service on the master).
        mutating func setLine(_ irq: Int, high: Bool, latchEdge: Bool = false) {
            let bit = UInt8(1 << irq)
            let wasHigh = lines & bit != 0
            if high { lines |= bit } else { lines &= ~bit }
            if levelMask & bit != 0 {
                if high { irr |= bit } else { irr &= ~bit }
            } else if high && !wasHigh {
                irr |= bit
            } else if !high && wasHigh && !latchEdge {
                irr &= ~bit
            }
        }

        /// INTA: the vector of the highest request (or the spurious IRQ 7 vector).
        mutating func acknowledge() -> (vector: UInt8, irq: Int?) {
            guard let irq = pending() else { return (vectorBase | 7, nil) }
            let bit = UInt8(1 << irq)
            // An edge request is consumed; a level one stays as long as the line is high
            // (`setLine` keeps IRR equal to the line for those).
            if levelMask & bit == 0 { irr &= ~bit }
            if autoEOI {
                if rotateOnAutoEOI { lowestPriority = UInt8(irq) }
            } else {
                isr |= bit
            }
            return (vectorBase | UInt8(irq), irq)
        }

        mutating func writeCommand(_ v: UInt8) {
            if v & 0x10 != 0 {   // ICW1
                imr = 0; isr = 0
                lowestPriority = 7
                specialMask = false; readISR = false; poll = false; autoEOI = false; rotateOnAutoEOI = false
                levelTriggeredAll = v & 0x08 != 0
                single = v & 0x02 != 0
                needsICW4 = v & 0x01 != 0
                expectingICW = 2
                // Lines already high count as requests in level mode only.
                irr = lines & levelMask
            } else if v & 0x08 == 0 {   // OCW2
                let command = v >> 5
                switch command {
                case 0: rotateOnAutoEOI = false
                case 4: rotateOnAutoEOI = true
                case 1, 5:   // non-specific EOI (5: and rotate)
                    if let irq = highest(isr) {
                        isr &= ~UInt8(1 << irq)
                        if command == 5 { lowestPriority = UInt8(irq) }
                    }
                case 3, 7:   // specific EOI (7: and rotate)
                    let irq = Int(v & 7)
                    isr &= ~UInt8(1 << irq)
                    if command == 7 { lowestPriority = UInt8(irq) }
                case 6: lowestPriority = v & 7   // set priority
                default: break   // 2: no operation
                }
            } else {   // OCW3
                if v & 0x40 != 0 { specialMask = v & 0x20 != 0 }
                if v & 0x02 != 0 { readISR = v & 0x01 != 0 }
                poll = v & 0x04 != 0
            }
        }

        mutating func writeData(_ v: UInt8) {
            switch expectingICW {
            case 2:
                vectorBase = v & 0xF8
                expectingICW = single ? (needsICW4 ? 4 : 0) : 3
            case 3:
                expectingICW = needsICW4 ? 4 : 0
            case 4:
                autoEOI = v & 0x02 != 0
                expectingICW = 0
            default:
                imr = v   // OCW1
            }
        }
    }

    private let chips = Mutex<(master: Chip, slave: Chip)>((Chip(), Chip()))
    /// Called (outside the lock) when the output to vCPU 0 may have become active: the
    /// machine kicks the vCPU so that it looks.
    private let onRequest: @Sendable () -> Void

    public init(onRequest: @escaping @Sendable () -> Void = {}) {
        self.onRequest = onRequest
    }

    /// Drives input `irq` (0-15) high or low (an edge-triggered input requests on the
    /// rising edge; a level-triggered one while high).
    public func setLine(_ irq: Int, high: Bool) {
        let request = chips.withLock { c -> Bool in
            if irq < 8 { c.master.setLine(irq, high: high) } else { c.slave.setLine(irq - 8, high: high) }
            Self.cascade(&c)
            return c.master.pending() != nil
        }
        if request { onRequest() }
    }

    public func setPin(_ pin: Int, high: Bool) { setLine(pin, high: high) }

    /// A rising edge whose request stays latched when the line falls again: the PIT's OUT
    /// stays high for far longer than an acknowledge takes.
    public func pulsePin(_ pin: Int) {
        let request = chips.withLock { c -> Bool in
            if pin < 8 {
                c.master.setLine(pin, high: true)
                c.master.setLine(pin, high: false, latchEdge: true)
            } else {
                c.slave.setLine(pin - 8, high: true)
                c.slave.setLine(pin - 8, high: false, latchEdge: true)
            }
            Self.cascade(&c)
            return c.master.pending() != nil
        }
        if request { onRequest() }
    }

    /// The slave's output is the master's input 2.
    private static func cascade(_ c: inout (master: Chip, slave: Chip)) {
        c.master.setLine(2, high: c.slave.pending() != nil, latchEdge: true)
    }

    // MARK: InterruptController (vCPU 0 only: the 8259's output pin)

    public func hasPendingInterrupt(vcpu: Int) -> Bool {
        vcpu == 0 && chips.withLock { $0.master.pending() != nil }
    }

    public func acknowledgeInterrupt(vcpu: Int) -> UInt8? {
        guard vcpu == 0 else { return nil }
        let (result, taken) = chips.withLock { c -> (UInt8, Int?) in
            let (vector, irq) = c.master.acknowledge()
            if irq == 2 && !c.master.single {
                let (slaveVector, slaveIRQ) = c.slave.acknowledge()
                Self.cascade(&c)
                return (slaveVector, slaveIRQ.map { $0 + 8 })
            }
            Self.cascade(&c)
            return (vector, irq)
        }
        if let taken, let acknowledged { acknowledged(taken) }
        return result
    }

    /// `InterruptPins.setAcknowledgeHandler`: set before any vCPU runs, read-only after.
    private var acknowledged: (@Sendable (Int) -> Void)?

    public func setAcknowledgeHandler(_ handler: @escaping @Sendable (Int) -> Void) { acknowledged = handler }

    // MARK: Ports

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        let (value, polled) = chips.withLock { c -> (UInt32, Int?) in
            switch port {
            case 0x4D0: return (UInt32(c.master.elcr), nil)
            case 0x4D1: return (UInt32(c.slave.elcr), nil)
            default:
                let isSlave = port >= 0xA0
                var chip = isSlave ? c.slave : c.master
                let value: UInt8
                var polled: Int?
                if port & 1 != 0 {
                    value = chip.imr
                } else if chip.poll {
                    // Poll: an acknowledge by reading, bit 7 set when there was a request.
                    chip.poll = false
                    let had = chip.pending() != nil
                    let (vector, irq) = chip.acknowledge()
                    value = had ? 0x80 | (vector & 7) : 0
                    polled = irq.map { isSlave ? $0 + 8 : $0 }
                } else {
                    value = chip.readISR ? chip.isr : chip.irr
                }
                if isSlave { c.slave = chip } else { c.master = chip }
                Self.cascade(&c)
                return (UInt32(value), polled)
            }
        }
        if let polled, let acknowledged { acknowledged(polled) }
        return value
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        let request = chips.withLock { c -> Bool in
            switch port {
            case 0x4D0: c.master.elcr = v & 0xF8   // IRQ 0-2 are always edge-triggered
            case 0x4D1: c.slave.elcr = v & 0xDE    // and IRQ 8 and 13
            case 0x20: c.master.writeCommand(v)
            case 0x21: c.master.writeData(v)
            case 0xA0: c.slave.writeCommand(v)
            default: c.slave.writeData(v)
            }
            Self.cascade(&c)
            return c.master.pending() != nil
        }
        if request { onRequest() }
    }
}

// MARK: Snapshot

extension PIC8259Pair.Chip {
    func encode(_ w: inout StateWriter) {
        for v in [irr, isr, imr, lines, elcr, vectorBase, lowestPriority] { w.u8(v) }
        for b in [levelTriggeredAll, autoEOI, rotateOnAutoEOI, specialMask, readISR, poll, needsICW4, single] { w.bool(b) }
        w.int(expectingICW)
    }

    init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init()
        irr = try r.u8(); isr = try r.u8(); imr = try r.u8(); lines = try r.u8(); elcr = try r.u8()
        vectorBase = try r.u8(); lowestPriority = try r.u8() & 7
        levelTriggeredAll = try r.bool(); autoEOI = try r.bool(); rotateOnAutoEOI = try r.bool(); specialMask = try r.bool()
        readISR = try r.bool(); poll = try r.bool(); needsICW4 = try r.bool(); single = try r.bool()
        expectingICW = try r.int(in: 0...4)
    }
}

extension PIC8259Pair {
    public func saveState(_ w: inout StateWriter) {
        let c = chips.withLock { $0 }
        c.master.encode(&w)
        c.slave.encode(&w)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let master = try Chip(decoding: &r), slave = try Chip(decoding: &r)
        chips.withLock { $0 = (master, slave) }
    }
}

extension PIC8259Pair {
    /// For `monitor info devices`: each chip's registers, one line each.
    public func describeState() -> [String] {
        let (master, slave) = chips.withLock { ($0.master, $0.slave) }
        func line(_ name: String, _ c: Chip) -> String {
            var text = "\(name): vectors 0x\(hex2(c.vectorBase))-0x\(hex2(c.vectorBase | 7)), IMR \(hex2(c.imr)), IRR \(hex2(c.irr)), ISR \(hex2(c.isr)), level-triggered \(hex2(c.levelMask)), lines \(hex2(c.lines))"
            if c.expectingICW != 0 { text += ", initializing (expects ICW\(c.expectingICW))" }
            if c.autoEOI { text += ", auto-EOI" }
            if c.specialMask { text += ", special mask" }
            if let irq = c.pending() { text += ", requesting IRQ \(irq)" }
            return text
        }
        return [line("PIC master", master), line("PIC slave", slave)]
    }
}

/// Two hex digits.
func hex2(_ b: UInt8) -> String { b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16) }
