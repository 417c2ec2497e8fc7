import Synchronization
import X86

/// The I/O APIC at 0xFEC00000 (82093AA register set, version 0x20): 24 input pins, each
/// with a redirection-table entry (vector, delivery mode, physical or logical destination,
/// polarity, edge or level trigger with remote IRR, mask). Registers are reached through
/// IOREGSEL (offset 0x00) and IOWIN (0x10); a write to the EOI register (0x40) or a local
/// APIC's EOI broadcast ends a level-triggered interrupt.
public final class IOAPIC: MMIODevice, InterruptPins, @unchecked Sendable {
    public static let base: UInt64 = 0xFEC0_0000
    public static let range: ClosedRange<UInt64> = 0xFEC0_0000...0xFEC0_00FF
    public static let pins = 24
    static let version: UInt32 = 0x0017_0020   // 24 entries (max index 23), version 0x20

    struct State {
        var select: UInt8 = 0
        var id: UInt8
        /// Per pin: the 64-bit redirection entry (masked after reset).
        var table = [UInt64](repeating: 1 << 16, count: IOAPIC.pins)
        /// Per pin: the input level as driven (before polarity).
        var levels: UInt32 = 0
    }

    private let state: Mutex<State>
    private unowned let bus: APICBus

    init(id: UInt8, bus: APICBus) {
        state = Mutex(State(id: id))
        self.bus = bus
    }

    // MARK: Pins

    public func setPin(_ pin: Int, high: Bool) {
        guard (0..<Self.pins).contains(pin) else { return }
        let message = state.withLock { s -> InterruptMessage? in
            let was = s.levels & (1 << pin) != 0
            if high { s.levels |= 1 << pin } else { s.levels &= ~(1 << pin) }
            let entry = s.table[pin]
            let activeLow = entry & (1 << 13) != 0
            let asserted = high != activeLow
            if entry & (1 << 15) == 0 {
                // Edge: the transition to asserted.
                let wasAsserted = was != activeLow
                guard asserted, !wasAsserted else { return nil }
            }
            return Self.fire(&s, pin)
        }
        if let message { bus.send(message, from: nil) }
    }

    /// The message pin `pin` sends now, if it is asserted, unmasked and (level) not waiting
    /// for an EOI; sets the remote IRR of a level-triggered pin.
    private static func fire(_ s: inout State, _ pin: Int) -> InterruptMessage? {
        let entry = s.table[pin]
        let level = entry & (1 << 15) != 0
        let asserted = (s.levels & (1 << pin) != 0) != (entry & (1 << 13) != 0)
        guard entry & (1 << 16) == 0, asserted || !level else { return nil }
        if level {
            guard entry & (1 << 14) == 0 else { return nil }
            s.table[pin] |= 1 << 14
        }
        let mode = InterruptMessage.DeliveryMode(rawValue: UInt8(entry >> 8 & 7)) ?? .fixed
        return InterruptMessage(vector: UInt8(entry & 0xFF), mode: mode, logical: entry & (1 << 11) != 0,
                                level: level, destination: UInt32(entry >> 56))
    }

    /// `InterruptPins.setAcknowledgeHandler`: set before any vCPU runs, read-only after.
    private var acknowledged: (@Sendable (Int) -> Void)?

    public func setAcknowledgeHandler(_ handler: @escaping @Sendable (Int) -> Void) { acknowledged = handler }

    /// A local APIC moved `vector` to its ISR: the unmasked edge-triggered pins that send it
    /// hear so (`InterruptRouter.onAcknowledge`). Nothing to do, and no lock, without a
    /// listener.
    func vectorTaken(_ vector: UInt8) {
        guard let acknowledged else { return }
        var pins = state.withLock { s -> UInt32 in
            var mask: UInt32 = 0
            // Unmasked, edge-triggered, fixed or lowest-priority delivery, of this vector.
            for pin in 0..<Self.pins where s.table[pin] & 0xFF == UInt64(vector) && s.table[pin] & (1 << 15 | 1 << 16) == 0
                && s.table[pin] >> 8 & 7 <= 1 {
                mask |= 1 << pin
            }
            return mask
        }
        while pins != 0 {
            acknowledged(pins.trailingZeroBitCount)
            pins &= pins - 1
        }
    }

    /// An EOI for `vector`: level-triggered pins that delivered it may deliver again.
    func endOfInterrupt(_ vector: UInt8) {
        let messages = state.withLock { s -> [InterruptMessage] in
            var out: [InterruptMessage] = []
            for pin in 0..<Self.pins where s.table[pin] & 0xFF == UInt64(vector) && s.table[pin] & (1 << 14) != 0 {
                s.table[pin] &= ~(1 << 14)
                if let m = Self.fire(&s, pin) { out.append(m) }
            }
            return out
        }
        for m in messages { bus.send(m, from: nil) }
    }

    /// The redirection entry of `pin` (tests, traces).
    public func entry(_ pin: Int) -> UInt64 { state.withLock { $0.table[pin] } }

    // MARK: Registers

    public func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        let offset = address - Self.base
        return state.withLock { s -> UInt64 in
            switch offset & ~3 {
            case 0x00: return UInt64(s.select)
            case 0x10:
                let value: UInt32
                switch s.select {
                case 0x00: value = UInt32(s.id) << 24
                case 0x01: value = Self.version
                case 0x02: value = UInt32(s.id) << 24   // arbitration ID
                case 0x10...0x3F:
                    let e = s.table[Int(s.select - 0x10) / 2]
                    value = UInt32(truncatingIfNeeded: s.select & 1 == 0 ? e : e >> 32)
                default: value = 0
                }
                return UInt64(value >> (UInt32(offset & 3) * 8))
            default: return 0
            }
        }
    }

    public func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        let offset = address - Self.base
        let v = UInt32(truncatingIfNeeded: value)
        switch offset {
        case 0x00: state.withLock { $0.select = UInt8(truncatingIfNeeded: v) }
        case 0x40: endOfInterrupt(UInt8(truncatingIfNeeded: v))
        case 0x10:
            let message = state.withLock { s -> InterruptMessage? in
                switch s.select {
                case 0x00: s.id = UInt8(v >> 24)   // 8 bits, as the MADT and MP table give IDs
                case 0x10...0x3F:
                    let pin = Int(s.select - 0x10) / 2
                    var e = s.table[pin]
                    if s.select & 1 == 0 {
                        // Delivery status (12) and remote IRR (14) are read-only.
                        let writable: UInt64 = 0x1_AFFF
                        e = e & ~writable | UInt64(v) & writable
                    } else {
                        e = e & 0xFFFF_FFFF | UInt64(v & 0xFF00_0000) << 32
                    }
                    if e & (1 << 15) == 0 { e &= ~(1 << 14) }   // edge entries have no remote IRR
                    s.table[pin] = e
                    // Unmasking a level-triggered pin that is asserted delivers it.
                    if e & (1 << 15) != 0 { return Self.fire(&s, pin) }
                    return nil
                default: break
                }
                return nil
            }
            if let message { bus.send(message, from: nil) }
        default: break
        }
    }
}

// MARK: Snapshot

extension IOAPIC {
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        w.u8(s.select); w.u8(s.id)
        for e in s.table { w.u64(e) }
        w.u32(s.levels)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        var s = State(id: 0)
        s.select = try r.u8(); s.id = try r.u8()
        for i in 0..<Self.pins { s.table[i] = try r.u64() }
        s.levels = try r.u32()
        state.withLock { $0 = s }
    }
}

extension IOAPIC {
    /// For `monitor info devices`: the pins that are unmasked or driven high.
    public func describeState() -> [String] {
        let s = state.withLock { $0 }
        var lines = ["IOAPIC (ID \(s.id)) at 0x\(String(Self.base, radix: 16)): input levels 0x\(String(s.levels, radix: 16))"]
        for pin in 0..<Self.pins where s.table[pin] & 1 << 16 == 0 || s.levels & 1 << pin != 0 {
            let e = s.table[pin]
            let modes = ["fixed", "lowest-priority", "SMI", "reserved", "NMI", "INIT", "reserved", "ExtINT"]
            var text = "  pin \(pin): vector 0x\(hex2(UInt8(truncatingIfNeeded: e))) \(modes[Int(e >> 8 & 7)]), "
            text += "\(e & 1 << 11 != 0 ? "logical" : "physical") destination 0x\(String(e >> 56, radix: 16)), "
            text += "\(e & 1 << 15 != 0 ? "level" : "edge"), active \(e & 1 << 13 != 0 ? "low" : "high")"
            if e & 1 << 14 != 0 { text += ", remote IRR" }
            if e & 1 << 16 != 0 { text += ", masked" }
            lines.append(text)
        }
        return lines
    }
}
