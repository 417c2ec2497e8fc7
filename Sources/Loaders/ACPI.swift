/// The ACPI tables (ACPI 2.0 and later, laid out as QEMU's PCs lay theirs out): an RSDP
/// of revision 2 pointing at both an RSDT and an XSDT, which list the FADT and the MADT;
/// the FADT points at the FACS and the DSDT. Addresses: `FirmwareTables`.
enum ACPITables {
    static let oemID = "TANDEM"          // 6 bytes
    static let oemTableID = "TANDEMPC"   // 8 bytes
    static let oemRevision: UInt32 = 1
    static let creatorID = "TNDM"        // 4 bytes: the "compiler" that made the tables
    static let creatorRevision: UInt32 = 1

    /// Every table of a machine with `cpuCount` vCPUs, with its address.
    static func build(cpuCount: Int) -> [(UInt64, [UInt8])] {
        typealias F = FirmwareTables
        return [
            (F.rsdpAddress, rsdp()),
            (F.facsAddress, facs()),
            (F.rsdtAddress, rootTable(signature: "RSDT", entries: [F.fadtAddress, F.madtAddress], entrySize: 4)),
            (F.xsdtAddress, rootTable(signature: "XSDT", entries: [F.fadtAddress, F.madtAddress], entrySize: 8)),
            (F.fadtAddress, fadt()),
            (F.dsdtAddress, dsdt()),
            (F.madtAddress, madt(cpuCount: cpuCount)),
        ]
    }

    /// The Root System Description Pointer, revision 2 (36 bytes): the first 20 bytes
    /// carry the ACPI 1.0 checksum, all 36 the extended one.
    static func rsdp() -> [UInt8] {
        var t = TableBytes()
        t.ascii("RSD PTR ", width: 8)
        t.u8(0)                                             // checksum (first 20 bytes)
        t.ascii(oemID, width: 6)
        t.u8(2)                                             // revision: 2 = ACPI 2.0+, XSDT present
        t.u32(UInt32(FirmwareTables.rsdtAddress))
        t.u32(36)                                           // length of the whole structure
        t.u64(FirmwareTables.xsdtAddress)
        t.u8(0)                                             // extended checksum (all 36 bytes)
        t.zeros(3)
        t.fixChecksum(at: 8, over: 0..<20)
        t.fixChecksum(at: 32, over: 0..<36)
        return t.bytes
    }

    /// The 36-byte header every system description table starts with; length and
    /// checksum are filled in by `finish`.
    static func header(_ signature: String, revision: UInt8) -> TableBytes {
        var t = TableBytes()
        t.ascii(signature, width: 4)
        t.u32(0)                                            // length, set by finish
        t.u8(revision)
        t.u8(0)                                             // checksum, set by finish
        t.ascii(oemID, width: 6)
        t.ascii(oemTableID, width: 8)
        t.u32(oemRevision)
        t.ascii(creatorID, width: 4)
        t.u32(creatorRevision)
        return t
    }

    static func finish(_ table: TableBytes) -> [UInt8] {
        var t = table
        t.set32(UInt32(t.count), at: 4)
        t.fixChecksum(at: 9, over: 0..<t.count)
        return t.bytes
    }

    /// The RSDT (32-bit entries) or XSDT (64-bit entries).
    static func rootTable(signature: String, entries: [UInt64], entrySize: Int) -> [UInt8] {
        var t = header(signature, revision: 1)
        for e in entries {
            if entrySize == 4 { t.u32(UInt32(e)) } else { t.u64(e) }
        }
        return finish(t)
    }

    /// The Firmware ACPI Control Structure (64 bytes, no checksum). Nothing here sleeps to
    /// S1-S4 or has a global lock owner, so apart from its signature, length and version it
    /// is zero; parsers require it to exist, aligned to 64 bytes.
    static func facs() -> [UInt8] {
        var t = TableBytes()
        t.ascii("FACS", width: 4)
        t.u32(64)
        t.u32(0)                                            // hardware signature
        t.u32(0)                                            // firmware waking vector
        t.u32(0)                                            // global lock
        t.u32(0)                                            // flags: no S4BIOS, no 64-bit wake
        t.u64(0)                                            // X firmware waking vector
        t.u8(1)                                             // version 1: the ACPI 2.0 layout
        t.zeros(31)
        return t.bytes
    }

    /// A Generic Address Structure (12 bytes) in system I/O space.
    static func ioGAS(_ t: inout TableBytes, port: UInt16, bitWidth: UInt8, accessSize: UInt8) {
        t.u8(bitWidth == 0 ? 0 : 1)                         // address space: 1 = system I/O
        t.u8(bitWidth)
        t.u8(0)                                             // bit offset
        t.u8(accessSize)                                    // 0 undefined (legacy), 1 byte, 2 word, 3 dword
        t.u64(UInt64(port))
    }

    /// The Fixed ACPI Description Table, revision 3 (244 bytes: ACPI 2.0's layout with the
    /// 64-bit X_ fields), describing the PM registers at 0x600, the reset register at 0xCF9
    /// and the SCI on IRQ 9.
    static func fadt() -> [UInt8] {
        typealias F = FirmwareTables
        var t = header("FACP", revision: 3)
        t.u32(UInt32(F.facsAddress))                        // 36 FIRMWARE_CTRL
        t.u32(UInt32(F.dsdtAddress))                        // 40 DSDT
        t.u8(0)                                             // 44 reserved (ACPI 1.0 INT_MODEL)
        t.u8(0)                                             // 45 preferred PM profile: unspecified
        t.u16(UInt16(F.sciIRQ))                             // 46 SCI_INT
        // SMI_CMD = 0: there is no SMM to hand ACPI over; the machine is always in ACPI
        // mode (PM1_CNT.SCI_EN reads 1), so ACPI_ENABLE/DISABLE are 0 too.
        t.u32(0)                                            // 48 SMI_CMD
        t.u8(0); t.u8(0)                                    // 52 ACPI_ENABLE, 53 ACPI_DISABLE
        t.u8(0); t.u8(0)                                    // 54 S4BIOS_REQ, 55 PSTATE_CNT
        t.u32(UInt32(F.pm1aEventBlock))                     // 56 PM1a_EVT_BLK
        t.u32(0)                                            // 60 PM1b_EVT_BLK
        t.u32(UInt32(F.pm1aControlBlock))                   // 64 PM1a_CNT_BLK
        t.u32(0)                                            // 68 PM1b_CNT_BLK
        t.u32(0)                                            // 72 PM2_CNT_BLK
        t.u32(UInt32(F.pmTimerBlock))                       // 76 PM_TMR_BLK
        t.u32(0); t.u32(0)                                  // 80 GPE0_BLK, 84 GPE1_BLK: none
        t.u8(4)                                             // 88 PM1_EVT_LEN
        t.u8(2)                                             // 89 PM1_CNT_LEN
        t.u8(0)                                             // 90 PM2_CNT_LEN
        t.u8(4)                                             // 91 PM_TMR_LEN
        t.u8(0); t.u8(0); t.u8(0)                           // 92 GPE0/GPE1 lengths, 94 GPE1_BASE
        t.u8(0)                                             // 95 CST_CNT
        // Latencies above 100 and 1000 say C2 and C3 are not supported: only HLT (C1).
        t.u16(0x0FFF)                                       // 96 P_LVL2_LAT
        t.u16(0x0FFF)                                       // 98 P_LVL3_LAT
        t.u16(0); t.u16(0)                                  // 100 FLUSH_SIZE, 102 FLUSH_STRIDE
        t.u8(0); t.u8(0)                                    // 104 DUTY_OFFSET, 105 DUTY_WIDTH
        t.u8(0); t.u8(0)                                    // 106 DAY_ALRM, 107 MON_ALRM: no RTC alarm extension
        t.u8(F.centuryIndex)                                // 108 CENTURY
        // IA-PC boot architecture: legacy (ISA/LPC) devices present, an 8042 present.
        t.u16(1 << 0 | 1 << 1)                              // 109 IAPC_BOOT_ARCH
        t.u8(0)                                             // 111 reserved
        // WBINVD works (bit 0), C1 supported (bit 2), no fixed sleep button (bit 5),
        // PM timer 24 bits (bit 8 clear), RESET_REG supported (bit 10).
        t.u32(1 << 0 | 1 << 2 | 1 << 5 | 1 << 10)           // 112 flags
        ioGAS(&t, port: F.resetPort, bitWidth: 8, accessSize: 1)   // 116 RESET_REG
        t.u8(F.resetValue)                                  // 128 RESET_VALUE
        t.zeros(3)                                          // 129 reserved
        t.u64(F.facsAddress)                                // 132 X_FIRMWARE_CTRL
        t.u64(F.dsdtAddress)                                // 140 X_DSDT
        ioGAS(&t, port: F.pm1aEventBlock, bitWidth: 32, accessSize: 0)   // 148 X_PM1a_EVT_BLK
        ioGAS(&t, port: 0, bitWidth: 0, accessSize: 0)                   // 160 X_PM1b_EVT_BLK
        ioGAS(&t, port: F.pm1aControlBlock, bitWidth: 16, accessSize: 0) // 172 X_PM1a_CNT_BLK
        ioGAS(&t, port: 0, bitWidth: 0, accessSize: 0)                   // 184 X_PM1b_CNT_BLK
        ioGAS(&t, port: 0, bitWidth: 0, accessSize: 0)                   // 196 X_PM2_CNT_BLK
        ioGAS(&t, port: F.pmTimerBlock, bitWidth: 32, accessSize: 0)     // 208 X_PM_TMR_BLK
        ioGAS(&t, port: 0, bitWidth: 0, accessSize: 0)                   // 220 X_GPE0_BLK
        ioGAS(&t, port: 0, bitWidth: 0, accessSize: 0)                   // 232 X_GPE1_BLK
        precondition(t.count == 244, "the revision 3 FADT is 244 bytes")
        return finish(t)
    }

    /// The DSDT: a definition block whose AML opens `\_SB` (empty) and names `\_S5` as
    /// Package(4) { 5, 5, 0, 0 }: the SLP_TYPa/SLP_TYPb values that put the machine in S5
    /// (soft off) when written to PM1a_CNT with SLP_EN. Hand-assembled; see `aml`.
    static func dsdt() -> [UInt8] {
        var t = header("DSDT", revision: 2)   // revision 2: 64-bit AML integers
        t.append(aml)
        return finish(t)
    }

    /// The DSDT's AML term list (ACPI spec, chapter 20, "AML encoding").
    static let aml: [UInt8] = {
        var a: [UInt8] = []
        // Scope (\_SB) { }: ScopeOp, PkgLength (itself + the name = 6), "\" "_SB_".
        a += [0x10, 0x06, 0x5C] + Array("_SB_".utf8)
        // Name (_S5, Package (4) { 5, 5, 0, 0 }):
        // NameOp, NameSeg "_S5_", PackageOp, PkgLength, NumElements 4,
        // BytePrefix 5, BytePrefix 5, ZeroOp, ZeroOp. The PkgLength (one byte: < 64) counts
        // itself, NumElements and the 6 element bytes: 8.
        let s5 = FirmwareTables.s5SleepType
        let elements: [UInt8] = [0x0A, s5, 0x0A, s5, 0x00, 0x00]
        a += [0x08] + Array("_S5_".utf8) + [0x12, UInt8(1 + 1 + elements.count), 0x04] + elements
        return a
    }()

    /// The Multiple APIC Description Table: the local APIC address, PCAT_COMPAT (there are
    /// 8259As too), one local APIC per vCPU (APIC ID = processor UID = vCPU index), the
    /// IOAPIC with GSIs 0-23, ISA IRQ 0 → GSI 2 and the SCI (IRQ 9) as level/active high,
    /// and LINT1 as NMI on every processor.
    static func madt(cpuCount: Int) -> [UInt8] {
        typealias F = FirmwareTables
        var t = header("APIC", revision: 3)
        t.u32(UInt32(F.localAPICAddress))
        t.u32(1)                                            // flags: PCAT_COMPAT
        for cpu in 0..<cpuCount {
            if cpu < 255 {
                t.u8(0); t.u8(8)                            // Processor Local APIC
                t.u8(UInt8(cpu))                            // ACPI processor UID
                t.u8(UInt8(cpu))                            // APIC ID
                t.u32(1)                                    // enabled
            } else {
                // APIC ID 255 is the xAPIC broadcast address: ACPI describes processors
                // with IDs of 255 and above only with x2APIC entries.
                t.u8(9); t.u8(16)                           // Processor Local x2APIC
                t.u16(0)
                t.u32(UInt32(cpu))                          // x2APIC ID
                t.u32(1)                                    // enabled
                t.u32(UInt32(cpu))                          // ACPI processor UID
            }
        }
        t.u8(1); t.u8(12)                                   // I/O APIC
        t.u8(F.ioapicID(cpuCount: cpuCount))
        t.u8(0)
        t.u32(UInt32(F.ioapicAddress))
        t.u32(0)                                            // GSI base
        // ISA IRQ 0 (the PIT) is wired to IOAPIC pin 2; the flags 0 say "as the ISA bus":
        // edge, active high.
        interruptSourceOverride(&t, irq: 0, gsi: 2, flags: 0)
        // The SCI is level-triggered, active high (polarity 01, trigger mode 11).
        interruptSourceOverride(&t, irq: F.sciIRQ, gsi: UInt32(F.sciIRQ), flags: 0x000D)
        t.u8(4); t.u8(6)                                    // Local APIC NMI
        t.u8(0xFF)                                          // every processor
        t.u16(0)                                            // flags: as the bus (edge, high)
        t.u8(1)                                             // LINT1
        if cpuCount > 255 {
            t.u8(0x0A); t.u8(12)                            // Local x2APIC NMI
            t.u16(0)
            t.u32(0xFFFF_FFFF)                              // every processor
            t.u8(1)                                         // LINT1
            t.zeros(3)
        }
        return finish(t)
    }

    static func interruptSourceOverride(_ t: inout TableBytes, irq: UInt8, gsi: UInt32, flags: UInt16) {
        t.u8(2); t.u8(10)
        t.u8(0)                                             // bus: ISA
        t.u8(irq)
        t.u32(gsi)
        t.u16(flags)
    }
}
