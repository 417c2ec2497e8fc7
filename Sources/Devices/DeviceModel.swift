import GuestMemory

/// The devices every Tandem machine has, on one port bus and one MMIO bus that both
/// backends' exits are answered by.
public final class DeviceModel: Sendable {
    public let ports = PortIOBus()
    public let mmio = MMIOBus()
    public let console: Console
    public let serial: Serial16550

    /// Builds COM1, the 0xE9 debug console, the 0xF4 exit device and, given the memory
    /// whose A20 line it drives, the port 0x92 A20 gate.
    public init(console: Console, input: ConsoleInput, memory: GuestMemoryMap? = nil, onExit: @escaping @Sendable (UInt8) -> Void) {
        self.console = console
        serial = Serial16550(console: console, input: input)
        ports.attach(serial, ports: serial.ports)
        ports.attach(DebugConsole(console: console), ports: DebugConsole.port...DebugConsole.port)
        ports.attach(ExitDevice(onExit: onExit), ports: ExitDevice.port...ExitDevice.port)
        if let memory {
            ports.attach(A20Gate(memory: memory), ports: A20Gate.port...A20Gate.port)
        }
    }
}
