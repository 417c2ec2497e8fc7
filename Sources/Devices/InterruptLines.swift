import Synchronization

/// Something with numbered interrupt input pins: the 8259A pair (IRQ 0-15), the IOAPIC
/// (pins 0-23).
public protocol InterruptPins: AnyObject, Sendable {
    /// Drives input `pin` high or low. Edge-triggered inputs act on the rising edge.
    func setPin(_ pin: Int, high: Bool)
    /// A rising edge on `pin` from a source whose output stays high long enough for the
    /// request to be acknowledged (the PIT's OUT), then low again.
    func pulsePin(_ pin: Int)
    /// From now on `handler(pin)` is called, on the acknowledging vCPU's thread and outside
    /// the controller's lock, whenever a CPU takes an edge-triggered request of input `pin`
    /// (`InterruptRouter.onAcknowledge`). Set before any vCPU runs.
    func setAcknowledgeHandler(_ handler: @escaping @Sendable (Int) -> Void)
}

extension InterruptPins {
    public func pulsePin(_ pin: Int) {
        setPin(pin, high: true)
        setPin(pin, high: false)
    }

    public func setAcknowledgeHandler(_ handler: @escaping @Sendable (Int) -> Void) {}
}

/// The machine's interrupt wiring, as on a PC: global system interrupt (GSI) n < 16 is ISA
/// IRQ n and drives both the 8259A input n and IOAPIC pin n, except that ISA IRQ 0 (the
/// PIT) reaches IOAPIC pin 2 (the interrupt source override the MADT and MP table
/// describe); GSIs 16-23 reach the IOAPIC only. Devices hold an `IRQLine` from `line(_:)`.
public final class InterruptRouter: @unchecked Sendable {
    public static let isaIRQs = 16
    public static let gsiCount = 24

    private let pic: (any InterruptPins)?
    /// Set once, before any vCPU runs (the IOAPIC is built after the router).
    public private(set) var ioapic: (any InterruptPins)?
    /// Per GSI, the level last driven (for `level(_:)` and tests).
    private let levels = Mutex<UInt32>(0)
    /// Per GSI, who hears that a CPU took its request (`onAcknowledge`). Written before
    /// any vCPU runs, read-only after.
    private var acknowledgeListeners = [(@Sendable () -> Void)?](repeating: nil, count: InterruptRouter.gsiCount)

    public init(pic: (any InterruptPins)?) {
        self.pic = pic
    }

    /// Connects the IOAPIC; before vCPUs start.
    public func attachIOAPIC(_ ioapic: any InterruptPins) {
        self.ioapic = ioapic
    }

    /// The IOAPIC pin that ISA IRQ `irq` arrives on.
    public static func ioapicPin(forISA irq: Int) -> Int { irq == 0 ? 2 : irq }

    /// Drives `gsi` (an ISA IRQ number below 16) high or low.
    public func set(_ gsi: Int, high: Bool) {
        precondition((0..<Self.gsiCount).contains(gsi), "GSI \(gsi) does not exist")
        levels.withLock { l in if high { l |= 1 << gsi } else { l &= ~(1 << gsi) } }
        if gsi < Self.isaIRQs {
            pic?.setPin(gsi, high: high)
            ioapic?.setPin(Self.ioapicPin(forISA: gsi), high: high)
        } else {
            ioapic?.setPin(gsi, high: high)
        }
    }

    /// A rising edge on `gsi`, then low again (edge-triggered sources: see `InterruptPins.pulsePin`).
    public func pulse(_ gsi: Int) {
        precondition((0..<Self.gsiCount).contains(gsi), "GSI \(gsi) does not exist")
        levels.withLock { $0 &= ~(1 << gsi) }
        if gsi < Self.isaIRQs {
            pic?.pulsePin(gsi)
            ioapic?.pulsePin(Self.ioapicPin(forISA: gsi))
        } else {
            ioapic?.pulsePin(gsi)
        }
    }

    /// The GSI that IOAPIC pin `pin` receives (the inverse of `ioapicPin(forISA:)`; pin 0,
    /// which nothing drives, has none).
    static func gsi(forIOAPICPin pin: Int) -> Int? { pin == 2 ? 0 : pin == 0 ? nil : pin }

    /// From now on `listener` is called whenever a CPU takes a request of edge-triggered
    /// `gsi` from the 8259A (its INTA, or a poll) or from the IOAPIC (the local APIC moving
    /// the pin's vector to its ISR): for a source that makes up late edges one at a time
    /// (the PIT with `--timer-slack`), as KVM's in-kernel PIT uses its IRQ ack notifiers.
    /// Called on the vCPU's thread, with no controller's lock held. Before any vCPU runs.
    public func onAcknowledge(_ gsi: Int, _ listener: @escaping @Sendable () -> Void) {
        precondition((0..<Self.gsiCount).contains(gsi), "GSI \(gsi) does not exist")
        acknowledgeListeners[gsi] = listener
        pic?.setAcknowledgeHandler { [unowned self] irq in self.acknowledgeListeners[irq]?() }
        ioapic?.setAcknowledgeHandler { [unowned self] pin in
            if let gsi = Self.gsi(forIOAPICPin: pin) { self.acknowledgeListeners[gsi]?() }
        }
    }

    /// Whether `gsi` is driven high now.
    public func level(_ gsi: Int) -> Bool { levels.withLock { $0 & (1 << gsi) != 0 } }

    /// The line a device drives for ISA IRQ / GSI `gsi`.
    public func line(_ gsi: Int) -> IRQLine { IRQLine(gsi: gsi, router: self) }
}

/// One interrupt output of a device (a "trigger object", as Firecracker's legacy devices
/// have): level devices `set` it, edge devices `pulse` it.
public struct IRQLine: Sendable {
    public let gsi: Int
    let router: InterruptRouter

    public func set(_ high: Bool) { router.set(gsi, high: high) }
    public func raise() { set(true) }
    public func lower() { set(false) }
    /// A rising edge followed by the line's return to low (edge-triggered sources).
    public func pulse() { router.pulse(gsi) }

    /// `listener(device)` is called whenever a CPU takes this line's request
    /// (`InterruptRouter.onAcknowledge`); it reaches `device` the way a device timer's
    /// handler does (`TimerService.makeTimer(_:owner:handler:holder:fire:)`): through a
    /// holder that only the device keeps, in `holder`. Before any vCPU runs.
    public func onAcknowledge<Device: AnyObject>(handler device: Device, holder: inout AnyObject?,
                                                 _ listener: @escaping @Sendable (Device) -> Void) {
        let target = DeviceReference(device)
        holder = target
        router.onAcknowledge(gsi) { [weak target] in if let target { listener(target.device) } }
    }
}
