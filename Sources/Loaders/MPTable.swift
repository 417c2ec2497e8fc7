/// The Intel MultiProcessor Specification 1.4 tables: the MP floating pointer structure
/// (16 bytes at 0xF0000, where every MP-aware OS scans) and the configuration table it
/// points to: processors, the ISA bus, the IOAPIC, the ISA interrupts' IOAPIC pins and
/// the local APICs' LINT0/LINT1. Addresses: `FirmwareTables`.
enum MPTable {
    static let oemID = "TANDEM"        // 8 bytes, space-padded
    static let productID = "TANDEM PC"   // 12 bytes, space-padded
    static let specRevision: UInt8 = 4   // 1.4

    /// The local APIC version register value (an integrated xAPIC, as QEMU's).
    static let localAPICVersion: UInt8 = 0x14
    /// CPUID.1 EAX a processor entry reports: family 6, model 15, stepping 1 (what the
    /// interpreter's CPUID says).
    static let cpuSignature: UInt32 = 0x0000_06F1
    /// CPUID.1 EDX a processor entry reports: FPU, PSE, TSC, MSR, PAE, CX8, APIC, CMOV:
    /// the features of the machine this table describes (an APIC is what it is about).
    static let cpuFeatures: UInt32 = 1 << 0 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 8 | 1 << 9 | 1 << 15

    // Entry types (MP spec table 4-3) and interrupt types (table 4-9).
    static let processorEntry: UInt8 = 0, busEntry: UInt8 = 1, ioapicEntry: UInt8 = 2
    static let ioInterruptEntry: UInt8 = 3, localInterruptEntry: UInt8 = 4
    static let intINT: UInt8 = 0, intNMI: UInt8 = 1, intExtINT: UInt8 = 3
    static let isaBus: UInt8 = 0

    static func build(cpuCount: Int) -> [(UInt64, [UInt8])] {
        [(FirmwareTables.mpFloatingPointerAddress, floatingPointer()),
         (FirmwareTables.mpConfigurationAddress, configurationTable(cpuCount: cpuCount))]
    }

    /// "_MP_", the configuration table's address, length 1 (paragraphs), revision 1.4, and
    /// feature bytes all 0: a configuration table is present (byte 1 = 0), and IMCRP
    /// (byte 2 bit 7) is clear: virtual-wire mode, no IMCR to program.
    static func floatingPointer() -> [UInt8] {
        var t = TableBytes()
        t.ascii("_MP_", width: 4)
        t.u32(UInt32(FirmwareTables.mpConfigurationAddress))
        t.u8(1)
        t.u8(specRevision)
        t.u8(0)                                             // checksum
        t.zeros(5)                                          // feature bytes 1-5
        t.fixChecksum(at: 10, over: 0..<16)
        return t.bytes
    }

    /// The ISA IRQs the table routes to the IOAPIC, with their pin: IRQ 0 (the PIT) on pin
    /// 2, the others on their own pin. IRQ 2 is left out: on a PC it is the 8259A cascade,
    /// no device drives it, and its pin is the PIT's.
    static let isaRoutes: [(irq: UInt8, pin: UInt8)] = [(0, 2)] + (1...15).filter { $0 != 2 }.map { (UInt8($0), UInt8($0)) }

    static func configurationTable(cpuCount: Int) -> [UInt8] {
        typealias F = FirmwareTables
        let ioapicID = F.ioapicID(cpuCount: cpuCount)
        var t = TableBytes()
        t.ascii("PCMP", width: 4)
        t.u16(0)                                            // base table length, set below
        t.u8(specRevision)
        t.u8(0)                                             // checksum, set below
        t.ascii(oemID, width: 8)
        t.ascii(productID, width: 12)
        t.u32(0)                                            // OEM table pointer: none
        t.u16(0)                                            // OEM table size
        t.u16(0)                                            // entry count, set below
        t.u32(UInt32(F.localAPICAddress))
        t.u16(0)                                            // extended table length: none
        t.u8(0)                                             // extended table checksum
        t.u8(0)
        var entries = 0
        // Processors. APIC ID 255 would be the xAPIC broadcast address and the table has
        // no wider form, so a 256th vCPU is described by the MADT alone.
        for cpu in 0..<min(cpuCount, 255) {
            t.u8(processorEntry)
            t.u8(UInt8(cpu))                                // local APIC ID
            t.u8(localAPICVersion)
            t.u8(cpu == 0 ? 0b11 : 0b01)                    // EN, and BP on the bootstrap processor
            t.u32(cpuSignature)
            t.u32(cpuFeatures)
            t.zeros(8)
            entries += 1
        }
        t.u8(busEntry); t.u8(isaBus); t.ascii("ISA", width: 6)
        entries += 1
        t.u8(ioapicEntry); t.u8(ioapicID); t.u8(F.ioapicVersion); t.u8(1)   // EN
        t.u32(UInt32(F.ioapicAddress))
        entries += 1
        for route in isaRoutes {
            // Flags 0: polarity and trigger "as the bus": ISA is edge, active high. The
            // SCI is level, active high (PO = 01, EL = 11), as the MADT says too.
            let flags: UInt16 = route.irq == F.sciIRQ ? 0x000D : 0
            t.u8(ioInterruptEntry); t.u8(intINT); t.u16(flags)
            t.u8(isaBus); t.u8(route.irq); t.u8(ioapicID); t.u8(route.pin)
            entries += 1
        }
        // Every local APIC (0xFF): LINT0 takes the 8259A's output as ExtINT (virtual wire),
        // LINT1 is NMI.
        for (type, lint) in [(intExtINT, UInt8(0)), (intNMI, UInt8(1))] {
            t.u8(localInterruptEntry); t.u8(type); t.u16(0)
            t.u8(isaBus); t.u8(0); t.u8(0xFF); t.u8(lint)
            entries += 1
        }
        t.set16(UInt16(t.count), at: 4)
        t.set16(UInt16(entries), at: 34)
        t.fixChecksum(at: 7, over: 0..<t.count)
        return t.bytes
    }
}
