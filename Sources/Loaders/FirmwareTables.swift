import GuestMemory

/// One entry of the physical memory map a guest is told about (Multiboot's mmap; the
/// same entries serve an e820 table). Types are the e820/Multiboot ones.
public struct MemoryMapEntry: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable { case usable = 1, reserved = 2 }
    public let start: UInt64
    public let length: UInt64
    public let kind: Kind

    public init(start: UInt64, length: UInt64, kind: Kind) {
        self.start = start; self.length = length; self.kind = kind
    }
    public var end: UInt64 { start + length }
    public var description: String { "\(hex(start))-\(hex(end - 1)) \(kind)" }
}

/// The firmware tables that describe the machine to `boot`, `multiboot` and `elf64`
/// guests: an Intel MultiProcessor Specification 1.4 table and ACPI tables (RSDP, RSDT,
/// XSDT, FADT, FACS, DSDT, MADT). A `bios` image is its own firmware and builds its own
/// tables, so none are installed for it. Documentation/FirmwareTables.md has the layout.
///
/// Everything lives in one fixed range, 0xE0000-0xFFFFF, the PC's BIOS area: both
/// structures an OS scans for (the RSDP and the MP floating pointer) must lie there, and
/// keeping the tables beside them means one range to reserve and a layout that does not
/// depend on RAM size or on where the image went. The range is RAM on every machine
/// that can run a non-`bios` image (RAM starts at 0 and is at least 1 MiB), so the
/// tables only go missing when the image itself covers part of the range (a kernel
/// linked into the BIOS area): the image wins, no table is written, and the memory map
/// then shows that range as ordinary RAM.
public enum FirmwareTables {
    /// The reserved range: marked type 2 in the memory map when the tables are installed.
    public static let reservedRange: Range<UInt64> = 0xE_0000..<0x10_0000

    // Fixed addresses inside the range. Each table gets a slot big enough for the
    // largest machine (256 vCPUs), so no address moves with the CPU count.
    public static let rsdpAddress: UInt64 = 0xE_0000          // 36 bytes, 16-byte aligned
    public static let facsAddress: UInt64 = 0xE_0040          // 64 bytes, 64-byte aligned
    public static let rsdtAddress: UInt64 = 0xE_0080          // 44 bytes
    public static let xsdtAddress: UInt64 = 0xE_00C0          // 52 bytes
    public static let fadtAddress: UInt64 = 0xE_0100          // 244 bytes
    public static let dsdtAddress: UInt64 = 0xE_0200          // 57 bytes
    public static let madtAddress: UInt64 = 0xE_0400          // at most 2,150 bytes (256 vCPUs)
    public static let mpFloatingPointerAddress: UInt64 = 0xF_0000   // 16 bytes
    public static let mpConfigurationAddress: UInt64 = 0xF_0100     // at most 5,296 bytes (255+ vCPUs)

    // The platform the tables describe. The devices at these addresses and ports are
    // the device model's; these constants are the one place both sides read them from.
    public static let localAPICAddress: UInt64 = 0xFEE0_0000
    public static let ioapicAddress: UInt64 = 0xFEC0_0000
    public static let ioapicVersion: UInt8 = 0x20
    /// The IOAPIC's ID: the first ID after the vCPUs' local APIC IDs (0..cpuCount-1), as
    /// SeaBIOS numbers it, so no ID is shared on an APIC bus. IDs are one byte: with 255
    /// or 256 vCPUs it is 255.
    public static func ioapicID(cpuCount: Int) -> UInt8 { UInt8(min(max(cpuCount, 1), 255)) }
    /// The ACPI SCI: ISA IRQ 9, level-triggered, active high (as on QEMU's PCs).
    public static let sciIRQ: UInt8 = 9
    public static let pm1aEventBlock: UInt16 = 0x600     // PM1a_STS (2) + PM1a_EN (2)
    public static let pm1aControlBlock: UInt16 = 0x604   // PM1a_CNT (2)
    public static let pmTimerBlock: UInt16 = 0x608       // 24-bit PM timer (4)
    public static let resetPort: UInt16 = 0xCF9
    public static let resetValue: UInt8 = 0x06
    /// SLP_TYP for S5 (soft off) in PM1a_CNT, as the DSDT's `\_S5` says.
    public static let s5SleepType: UInt8 = 5
    /// CMOS index of the RTC century byte (FADT CENTURY).
    public static let centuryIndex: UInt8 = 0x32

    /// Where the tables went, for the boot plan and the tests.
    public struct Installed: Sendable, Equatable {
        public let rsdp: UInt64
        public let mpFloatingPointer: UInt64
        public let cpuCount: Int
    }

    /// Writes every table for a machine of `cpuCount` vCPUs into `memory` and reserves the
    /// range in `placement`, unless something already placed (the image's segments)
    /// overlaps the range: then nothing is written and nil is returned.
    static func install(cpuCount: Int, memory: GuestMemoryMap, placement: inout Placement) -> Installed? {
        guard memory.isRAM(reservedRange.lowerBound, length: UInt64(reservedRange.count)),
              !placement.occupied.contains(where: { $0.overlaps(reservedRange) }) else { return nil }
        placement.reserve(reservedRange)
        let cpus = min(max(cpuCount, 1), 256)
        // The whole range starts out zeroed, so stale bytes (a reloaded machine) can
        // never look like a second table to a scanning guest.
        _ = memory.zero(reservedRange.lowerBound, count: UInt64(reservedRange.count))
        for (address, bytes) in ACPITables.build(cpuCount: cpus) + MPTable.build(cpuCount: cpus) {
            bytes.withUnsafeBytes { memory.write(address, from: $0) }
        }
        return Installed(rsdp: rsdpAddress, mpFloatingPointer: mpFloatingPointerAddress, cpuCount: cpus)
    }

    /// The memory map of `memory`: every RAM region usable, except the tables' range,
    /// reserved, when `tablesInstalled`.
    public static func memoryMap(of memory: GuestMemoryMap, tablesInstalled: Bool) -> [MemoryMapEntry] {
        var map: [MemoryMapEntry] = []
        for region in memory.regions where region.kind == .ram {
            let r = region.start..<region.end
            guard tablesInstalled, r.overlaps(reservedRange) else {
                map.append(MemoryMapEntry(start: region.start, length: region.size, kind: .usable))
                continue
            }
            let hole = r.clamped(to: reservedRange)
            if hole.lowerBound > r.lowerBound {
                map.append(MemoryMapEntry(start: r.lowerBound, length: hole.lowerBound - r.lowerBound, kind: .usable))
            }
            map.append(MemoryMapEntry(start: hole.lowerBound, length: hole.upperBound - hole.lowerBound, kind: .reserved))
            if r.upperBound > hole.upperBound {
                map.append(MemoryMapEntry(start: hole.upperBound, length: r.upperBound - hole.upperBound, kind: .usable))
            }
        }
        return map
    }
}

/// Little-endian table assembly with checksum fix-ups.
struct TableBytes {
    var bytes: [UInt8] = []
    var count: Int { bytes.count }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { for i in 0..<2 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt16(i)))) } }
    mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    mutating func zeros(_ n: Int) { bytes += [UInt8](repeating: 0, count: n) }
    mutating func append(_ b: [UInt8]) { bytes += b }
    /// `text` as ASCII, cut or padded with `pad` to exactly `width` bytes.
    mutating func ascii(_ text: String, width: Int, pad: UInt8 = 0x20) {
        let b = Array(text.utf8.prefix(width))
        bytes += b + [UInt8](repeating: pad, count: width - b.count)
    }
    mutating func set16(_ v: UInt16, at offset: Int) {
        for i in 0..<2 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt16(i))) }
    }
    mutating func set32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    /// Makes the bytes of `range` sum to 0 mod 256 by setting the byte at `offset` (inside it).
    mutating func fixChecksum(at offset: Int, over range: Range<Int>) {
        bytes[offset] = 0
        let sum = bytes[range].reduce(UInt8(0)) { $0 &+ $1 }
        bytes[offset] = 0 &- sum
    }
}
