import GuestMemory

/// The devices every Tandem machine has, on one port bus and one MMIO bus that both
/// backends' exits are answered by.
public final class DeviceModel: Sendable {
    public let ports = PortIOBus()
    public let mmio = MMIOBus()
    public let console: Console
    public let serial: Serial16550
    /// The 8259A pair; its output is vCPU 0's external interrupt input.
    public let pic: PIC8259Pair
    /// The interrupt wiring devices raise their lines on (ISA IRQs / GSIs).
    public let router: InterruptRouter
    /// Every vCPU's local APIC, the IOAPIC, and the PIC's path to vCPU 0: the interrupt
    /// controller both engines ask.
    public let apic: APICBus
    /// Machine time, shared by devices and vCPUs.
    public let clock: MachineClock
    /// Device timers: the one timer thread, and the local APIC timers each vCPU fires itself.
    public let timers: TimerService
    /// PC platform devices (Documentation/Devices.md lists their ports).
    public let pit: PIT8254
    public let rtc: RTC146818
    public let keyboardController: I8042
    public let fwCfg: FwCfg
    public let acpiPM: ACPIPM
    /// Port 0x80: `postCodes.postCodes` / `postCodes.observe(_:)` for the trace.
    public let postCodes = PostCodePort()

    /// Builds the 8259A pair, COM1 (on IRQ 4), the 0xE9 debug console, the 0xF4 exit
    /// device and, given the memory whose A20 line it drives, the port 0x92 A20 gate.
    /// `onInterruptRequest(n)` is called when vCPU n may have an event to take (the
    /// machine kicks it out of its engine, or wakes it from HLT). `ramSize` (default: the
    /// memory's) and `cpus` are what the CMOS and fw_cfg report. `onReset` is called when
    /// the guest resets the machine (i8042 0xFE or output port bit 0, 0xCF9), `onPowerOff`
    /// when it enters ACPI S5; both end the run. `clock`: machine time (default: the
    /// host's); a virtual clock gets a manual timer service its owner drives with
    /// `timers.fireDue()`. `timerSlack`: `--timer-slack` in nanoseconds (`TimerService`).
    public init(console: Console, input: ConsoleInput, memory: GuestMemoryMap? = nil, ramSize: UInt64? = nil, cpus: Int = 1,
                x2APIC: Bool = true, clock: MachineClock? = nil, timerSlack: UInt64 = 0, onInterruptRequest: @escaping @Sendable (Int) -> Void = { _ in },
                onReset: @escaping @Sendable () -> Void = {}, onPowerOff: @escaping @Sendable () -> Void = {},
                onExit: @escaping @Sendable (UInt8) -> Void) {
        self.console = console
        // The PIC is built before the fabric it reports to (see `PICOutput`).
        let picOutput = PICOutput()
        let pic = PIC8259Pair { picOutput.raised() }
        self.pic = pic
        let clock = clock ?? MachineClock()
        self.clock = clock
        // A local APIC timer armed by another thread than its vCPU's: that vCPU looks again.
        timers = TimerService(clock: clock, manual: clock.isVirtual, slack: timerSlack, wakeOwner: onInterruptRequest)
        apic = APICBus(cpus: cpus, pic: pic, output: picOutput, timers: timers, x2APICAvailable: x2APIC, onRequest: onInterruptRequest)
        let router = InterruptRouter(pic: pic)
        router.attachIOAPIC(apic.ioapic)
        self.router = router
        mmio.attach(apic.ioapic, range: IOAPIC.range)
        ports.attach(pic, ports: PIC8259Pair.masterPorts)
        ports.attach(pic, ports: PIC8259Pair.slavePorts)
        ports.attach(pic, ports: PIC8259Pair.elcrPorts)
        let com1 = router.line(Serial16550.com1IRQ)
        serial = Serial16550(console: console, input: input) { high in com1.set(high) }
        ports.attach(serial, ports: serial.ports)
        ports.attach(DebugConsole(console: console), ports: DebugConsole.port...DebugConsole.port)
        ports.attach(ExitDevice(onExit: onExit), ports: ExitDevice.port...ExitDevice.port)
        if let memory {
            ports.attach(A20Gate(memory: memory), ports: A20Gate.port...A20Gate.port)
        }
        let ram = ramSize ?? memory?.ramSize ?? 0
        pit = PIT8254(clock: clock, timers: timers, irq0: router.line(PIT8254.irq))
        ports.attach(pit, ports: PIT8254.ports)
        ports.attach(pit, ports: PIT8254.portB...PIT8254.portB)
        rtc = RTC146818(clock: clock, timers: timers, irq: router.line(RTC146818.irq), ramSize: ram, cpuCount: cpus)
        ports.attach(rtc, ports: RTC146818.ports)
        keyboardController = I8042(memory: memory, keyboardIRQ: router.line(I8042.keyboardIRQ), auxIRQ: router.line(I8042.auxIRQ), onReset: onReset)
        ports.attach(keyboardController, ports: I8042.dataPort...I8042.dataPort)
        ports.attach(keyboardController, ports: I8042.commandPort...I8042.commandPort)
        ports.attach(ResetControl(onReset: onReset), ports: ResetControl.port...ResetControl.port)
        ports.attach(postCodes, ports: PostCodePort.port...PostCodePort.port)
        fwCfg = FwCfg(ramSize: ram, cpuCount: cpus)
        ports.attach(fwCfg, ports: FwCfg.ports)
        acpiPM = ACPIPM(clock: clock, timers: timers, sci: router.line(ACPIPM.sciIRQ), onPowerOff: onPowerOff)
        ports.attach(acpiPM, ports: ACPIPM.ports)
    }
}

extension DeviceModel {
    /// An MMIO read by vCPU `vcpu`: its own local APIC's page (xAPIC mode), else the MMIO bus.
    public func mmioRead(vcpu: Int, _ address: UInt64, size: Int) -> UInt64 {
        apic.isLocalAPIC(address, vcpu: vcpu) ? apic.mmioRead(vcpu: vcpu, address, size: size) : mmio.read(address, size: size)
    }

    /// An MMIO write by vCPU `vcpu` (see `mmioRead`).
    public func mmioWrite(vcpu: Int, _ address: UInt64, size: Int, value: UInt64) {
        if apic.isLocalAPIC(address, vcpu: vcpu) {
            apic.mmioWrite(vcpu: vcpu, address, size: size, value: value)
        } else {
            mmio.write(address, size: size, value: value)
        }
    }

    /// Whether an interrupt can still arrive while every vCPU sleeps: an armed timer, a
    /// request latched in an interrupt controller, or serial input still to come.
    public var mayStillInterrupt: Bool {
        timers.anyArmed || apic.anyPending() || serial.mayInterrupt
    }
}
