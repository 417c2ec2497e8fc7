import GuestMemory

/// System control port A (0x92): bit 1 is the "fast A20" gate. Bit 0 (fast reset) is
/// read as 0 and ignored on write: Tandem has no machine reset yet.
public final class A20Gate: PortDevice {
    public static let port: UInt16 = 0x92
    private let memory: GuestMemoryMap

    public init(memory: GuestMemoryMap) { self.memory = memory }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        memory.a20Enabled.load(ordering: .relaxed) ? 0x02 : 0x00
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        memory.a20Enabled.store(value & 0x02 != 0, ordering: .relaxed)
    }
}
