import Foundation
import GuestMemory
import Loaders
import Machine
import Testing

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

// MARK: Images and loading

/// A Multiboot ELF32 kernel at 1 MiB (`cli; hlt`).
private let multibootKernel = ELFFile(is64: false, machine: 3, entry: 0x100000,
                                      segments: [.init(at: 0x100000, [0xFA, 0xF4], memorySize: 0x3000)],
                                      blob: multibootHeader(flags: 0x3)).bytes
/// An x86-64 executable at 2 MiB.
private let elf64Program = ELFFile(entry: 0x200000, segments: [.init(at: 0x200000, [0xF4, 0xEB, 0xFD], memorySize: 0x2000)]).bytes
private let bootSectorImage = bootSector([0xF4])

/// The three formats that get tables, each with an image.
private let tableFormats: [(ImageFormat, [UInt8])] = [(.multiboot, multibootKernel), (.elf64, elf64Program), (.boot, bootSectorImage)]

private func load(_ bytes: [UInt8], as format: ImageFormat, cpus: Int = 1, ram: UInt64 = 128 * MiB) throws -> (GuestMemoryMap, BootPlan) {
    let memory = try GuestMemoryMap(ramSize: ram, romSize: Loader.romSize(for: format, image: bytes))
    var options = LoadOptions()
    options.cpuCount = cpus
    return (memory, try Loader.load(bytes, name: "image", as: format, into: memory, options: options))
}

// MARK: Reading the tables back as an OS does

/// Throws (failing the test that reads the tables) with `message` unless `condition` holds.
private struct TableError: Error, CustomStringConvertible { var description: String }
private func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw TableError(description: message()) }
}

private func sum(_ bytes: [UInt8]) -> UInt8 { bytes.reduce(0) { $0 &+ $1 } }
private func u16(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(b[o]) | UInt64(b[o + 1]) << 8 }
private func u32(_ b: [UInt8], _ o: Int) -> UInt64 { u16(b, o) | u16(b, o + 2) << 16 }
private func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }
private func ascii(_ b: [UInt8], _ o: Int, _ n: Int) -> String { String(decoding: b[o..<(o + n)], as: UTF8.self) }

/// An ACPI system description table: its bytes, length and checksum verified.
private struct SDT {
    let address: UInt64
    let bytes: [UInt8]
    var signature: String { ascii(bytes, 0, 4) }
    var revision: UInt8 { bytes[8] }

    init(_ memory: GuestMemoryMap, at address: UInt64, expecting signature: String? = nil) throws {
        let header = memory.bytes(at: address, count: 36)
        let length = Int(u32(header, 4))
        try check(length >= 36 && length < 0x10000, "table at \(hex(address, width: 1)): length \(length)")
        self.address = address
        bytes = memory.bytes(at: address, count: length)
        try check(sum(bytes) == 0, "\(ascii(header, 0, 4)) at \(hex(address, width: 1)): checksum does not sum to 0")
        if let signature { try check(ascii(bytes, 0, 4) == signature, "expected \(signature), found \(ascii(bytes, 0, 4))") }
        try check(ascii(bytes, 10, 6) == "TANDEM", "OEM ID \(ascii(bytes, 10, 6))")
    }
}

/// Every 16-byte-aligned address in `range` where `signature` starts.
private func scan(_ memory: GuestMemoryMap, _ range: Range<UInt64>, for signature: String) -> [UInt64] {
    let bytes = memory.bytes(at: range.lowerBound, count: Int(range.count))
    let sig = Array(signature.utf8)
    return stride(from: 0, to: bytes.count - sig.count, by: 16).filter { Array(bytes[$0..<($0 + sig.count)]) == sig }
        .map { range.lowerBound + UInt64($0) }
}

/// What an ACPI-aware OS finds: the RSDP by scanning 0xE0000-0xFFFFF, then XSDT → tables.
private struct ACPIView {
    var rsdp: UInt64
    var rsdt: SDT
    var xsdt: SDT
    var fadt: SDT
    var madt: SDT
    var dsdt: SDT
    var facs: [UInt8]
    var facsAddress: UInt64

    init(_ memory: GuestMemoryMap) throws {
        // The RSDP: "RSD PTR " on a 16-byte boundary with a valid ACPI 1.0 checksum.
        let candidates = scan(memory, 0xE0000..<0x100000, for: "RSD PTR ").filter { sum(memory.bytes(at: $0, count: 20)) == 0 }
        try check(candidates.count == 1, "found \(candidates.count) RSDPs in 0xE0000-0xFFFFF")
        let rsdp = candidates[0]
        let r = memory.bytes(at: rsdp, count: 36)
        try check(r[15] == 2, "RSDP revision \(r[15]), expected 2")
        try check(u32(r, 20) == 36, "RSDP length \(u32(r, 20))")
        try check(sum(r) == 0, "RSDP extended checksum")
        try check(ascii(r, 9, 6) == "TANDEM", "RSDP OEM ID")
        let rsdt = try SDT(memory, at: u32(r, 16), expecting: "RSDT")
        let xsdt = try SDT(memory, at: u64(r, 24), expecting: "XSDT")
        // Both roots list the same tables.
        try check((rsdt.bytes.count - 36) % 4 == 0 && (xsdt.bytes.count - 36) % 8 == 0, "root table lengths")
        let rsdtEntries = stride(from: 36, to: rsdt.bytes.count, by: 4).map { u32(rsdt.bytes, $0) }
        let xsdtEntries = stride(from: 36, to: xsdt.bytes.count, by: 8).map { u64(xsdt.bytes, $0) }
        try check(rsdtEntries == xsdtEntries, "RSDT \(rsdtEntries) and XSDT \(xsdtEntries) differ")
        let tables = try xsdtEntries.map { try SDT(memory, at: $0) }
        try check(Set(tables.map(\.signature)) == ["FACP", "APIC"], "XSDT lists \(tables.map(\.signature))")
        let fadt = tables.first { $0.signature == "FACP" }!
        let madt = tables.first { $0.signature == "APIC" }!
        let f = fadt.bytes
        try check(fadt.revision >= 3 && f.count >= 244, "FADT revision \(fadt.revision), length \(f.count)")
        // The 64-bit pointers win where set; the 32-bit ones must agree with them.
        try check(u64(f, 140) == u32(f, 40), "X_DSDT \(u64(f, 140)) and DSDT \(u32(f, 40)) differ")
        try check(u64(f, 132) == u32(f, 36), "X_FIRMWARE_CTRL and FIRMWARE_CTRL differ")
        let dsdt = try SDT(memory, at: u64(f, 140), expecting: "DSDT")
        let facsAddress = u64(f, 132)
        let facs = memory.bytes(at: facsAddress, count: 64)
        try check(facsAddress % 64 == 0, "FACS at \(facsAddress) is not 64-byte aligned")
        try check(ascii(facs, 0, 4) == "FACS" && u32(facs, 4) == 64, "FACS header")
        (self.rsdp, self.rsdt, self.xsdt, self.fadt, self.madt, self.dsdt, self.facs, self.facsAddress) =
            (rsdp, rsdt, xsdt, fadt, madt, dsdt, facs, facsAddress)
    }

    /// The MADT's interrupt controller structures: (type, bytes).
    func madtEntries() throws -> [(UInt8, [UInt8])] {
        var entries: [(UInt8, [UInt8])] = []
        var o = 44
        while o < madt.bytes.count {
            let length = Int(madt.bytes[o + 1])
            try check(length >= 2 && o + length <= madt.bytes.count, "MADT entry at \(o) has length \(length)")
            entries.append((madt.bytes[o], Array(madt.bytes[o..<(o + length)])))
            o += length
        }
        return entries
    }
}

/// A generic address structure in the FADT at `o`: (space, bit width, access size, address).
private func gas(_ b: [UInt8], _ o: Int) -> (UInt8, UInt8, UInt8, UInt64) { (b[o], b[o + 1], b[o + 3], u64(b, o + 4)) }

// MARK: A minimal AML reader (top-level terms of a definition block)

/// Decodes a PkgLength at `o`: (value, bytes it takes).
private func pkgLength(_ a: [UInt8], _ o: Int) -> (Int, Int) {
    let lead = Int(a[o]), follow = lead >> 6
    if follow == 0 { return (lead & 0x3F, 1) }
    var value = lead & 0x0F
    for i in 0..<follow { value |= Int(a[o + 1 + i]) << (4 + 8 * i) }
    return (value, 1 + follow)
}

/// The DSDT's top-level objects: Scope names, and Name objects whose value is a package
/// of integers. Anything else fails the test: the DSDT holds only what the docs say.
private func readAML(_ aml: [UInt8]) throws -> (scopes: [String], packages: [String: [UInt64]]) {
    var scopes: [String] = [], packages: [String: [UInt64]] = [:]
    var o = 0
    while o < aml.count {
        switch aml[o] {
        case 0x10:   // ScopeOp PkgLength NameString TermList
            let (length, n) = pkgLength(aml, o + 1)
            var name = o + 1 + n
            var text = ""
            if aml[name] == 0x5C { text = "\\"; name += 1 }
            text += ascii(aml, name, 4)
            scopes.append(text)
            o += 1 + length
        case 0x08:   // NameOp NameSeg DataRefObject
            let name = ascii(aml, o + 1, 4)
            var p = o + 5
            try check(aml[p] == 0x12, "\(name) is not a package (opcode \(aml[p]))")
            let (length, n) = pkgLength(aml, p + 1)
            let end = p + 1 + length
            let count = Int(aml[p + 1 + n])
            p += 2 + n
            var values: [UInt64] = []
            while p < end {
                switch aml[p] {
                case 0x00: values.append(0); p += 1                       // ZeroOp
                case 0x01: values.append(1); p += 1                       // OneOp
                case 0x0A: values.append(UInt64(aml[p + 1])); p += 2      // BytePrefix
                case 0x0B: values.append(u16(aml, p + 1)); p += 3         // WordPrefix
                case 0x0C: values.append(u32(aml, p + 1)); p += 5         // DWordPrefix
                default: throw TableError(description: "unexpected package element opcode \(aml[p])")
                }
            }
            try check(p == end, "package \(name) runs past its PkgLength")
            try check(values.count == count, "package \(name): NumElements \(count), \(values.count) elements")
            packages[name] = values
            o = end
        default:
            throw TableError(description: "unexpected AML opcode \(hex(aml[o], width: 2)) at \(o)")
        }
    }
    return (scopes, packages)
}

// MARK: The MP table, as an MP-aware OS reads it

private struct MPView {
    var pointer: UInt64
    var table: [UInt8]
    /// (type, bytes) per entry, in order.
    var entries: [(UInt8, [UInt8])] = []

    init(_ memory: GuestMemoryMap) throws {
        // The floating pointer: "_MP_" on a 16-byte boundary in 0xF0000-0xFFFFF (the BIOS
        // ROM area, the last place the spec names) with a valid checksum.
        let found = scan(memory, 0xF0000..<0x100000, for: "_MP_").filter { sum(memory.bytes(at: $0, count: 16)) == 0 }
        try check(found.count == 1, "found \(found.count) MP floating pointers")
        pointer = found[0]
        let f = memory.bytes(at: pointer, count: 16)
        try check(f[8] == 1 && f[9] == 4, "floating pointer length \(f[8]) revision \(f[9])")
        try check(f[11] == 0, "feature byte 1 is \(f[11]): a default configuration instead of a table")
        try check(f[12] & 0x80 == 0, "IMCRP set: PIC mode")
        let header = memory.bytes(at: u32(f, 4), count: 44)
        try check(ascii(header, 0, 4) == "PCMP", "configuration table signature")
        table = memory.bytes(at: u32(f, 4), count: Int(u16(header, 4)))
        try check(sum(table) == 0, "configuration table checksum")
        try check(table[6] == 4, "spec revision \(table[6])")
        try check(ascii(table, 8, 8) == "TANDEM  ", "OEM ID '\(ascii(table, 8, 8))'")
        try check(u32(table, 36) == 0xFEE0_0000, "local APIC address")
        try check(u16(table, 40) == 0, "extended table length")
        var o = 44
        for _ in 0..<Int(u16(table, 34)) {
            try check(o < table.count, "entry count runs past the base table")
            let size = table[o] == 0 ? 20 : 8
            try check(table[o] <= 4 && o + size <= table.count, "entry type \(table[o]) at \(o)")
            entries.append((table[o], Array(table[o..<(o + size)])))
            o += size
        }
        try check(o == table.count, "entries end at \(o), the base table at \(table.count)")
    }
}

// MARK: Tests

@Suite("Firmware tables (ACPI, MP)")
struct FirmwareTableTests {
    @Test("ACPI: RSDP → RSDT/XSDT → FADT, FACS, DSDT, MADT with every checksum and length",
          arguments: [1, 4, 64])
    func acpi(cpus: Int) throws {
        for (format, image) in tableFormats {
            let (m, plan) = try load(image, as: format, cpus: cpus)
            let acpi = try ACPIView(m)
            #expect(plan.firmwareTables?.rsdp == acpi.rsdp)
            #expect(acpi.rsdp % 16 == 0)

            let f = acpi.fadt.bytes
            #expect(u16(f, 46) == 9)                                  // SCI_INT
            #expect(u32(f, 48) == 0)                                  // SMI_CMD: always in ACPI mode
            #expect(u32(f, 56) == 0x600 && f[88] == 4)                // PM1a_EVT_BLK, PM1_EVT_LEN
            #expect(u32(f, 64) == 0x604 && f[89] == 2)                // PM1a_CNT_BLK, PM1_CNT_LEN
            #expect(u32(f, 76) == 0x608 && f[91] == 4)                // PM_TMR_BLK, PM_TMR_LEN
            #expect(u32(f, 60) == 0 && u32(f, 68) == 0)               // no PM1b blocks
            #expect(f[108] == 0x32)                                   // CENTURY
            #expect(u16(f, 109) & 0x2 != 0)                           // IAPC_BOOT_ARCH: 8042
            let flags = u32(f, 112)
            #expect(flags & (1 << 10) != 0)                           // RESET_REG_SUP
            #expect(flags & (1 << 8) == 0)                            // TMR_VAL_EXT clear: 24-bit timer
            #expect(flags & (1 << 20) == 0)                           // not hardware-reduced
            #expect(gas(f, 116) == (1, 8, 1, 0xCF9) && f[128] == 0x06)   // RESET_REG, RESET_VALUE
            #expect(gas(f, 148) == (1, 32, 0, 0x600))                 // X_PM1a_EVT_BLK
            #expect(gas(f, 172) == (1, 16, 0, 0x604))                 // X_PM1a_CNT_BLK
            #expect(gas(f, 208) == (1, 32, 0, 0x608))                 // X_PM_TMR_BLK

            // The DSDT: \_SB and \_S5 = {5, 5, 0, 0}.
            let aml = try readAML(Array(acpi.dsdt.bytes[36...]))
            #expect(aml.scopes == ["\\_SB_"])
            #expect(aml.packages == ["_S5_": [5, 5, 0, 0]])

            // The MADT.
            let madt = acpi.madt.bytes
            #expect(u32(madt, 36) == 0xFEE0_0000)
            #expect(u32(madt, 40) & 1 == 1)                           // PCAT_COMPAT
            let entries = try acpi.madtEntries()
            let lapics = entries.filter { $0.0 == 0 }.map(\.1)
            #expect(lapics.count == cpus)
            for (i, e) in lapics.enumerated() {
                #expect(e.count == 8 && e[2] == UInt8(i) && e[3] == UInt8(i) && u32(e, 4) == 1, "local APIC entry \(i): \(e)")
            }
            let ioapics = entries.filter { $0.0 == 1 }.map(\.1)
            #expect(ioapics.count == 1)
            if let io = ioapics.first {
                #expect(io[2] == UInt8(cpus) && u32(io, 4) == 0xFEC0_0000 && u32(io, 8) == 0)
            }
            let overrides = entries.filter { $0.0 == 2 }.map { e in (bus: e.1[2], irq: e.1[3], gsi: u32(e.1, 4), flags: u16(e.1, 8)) }
            #expect(overrides.count == 2)
            #expect(overrides.contains { $0 == (0, 0, 2, 0) })        // IRQ 0 → GSI 2, ISA defaults
            #expect(overrides.contains { $0 == (0, 9, 9, 0x000D) })   // SCI: level, active high
            let nmis = entries.filter { $0.0 == 4 }.map(\.1)
            #expect(nmis.count == 1 && nmis.first == [4, 6, 0xFF, 0, 0, 1])   // all processors, LINT1
            #expect(Set(entries.map(\.0)).isSubset(of: [0, 1, 2, 4]))
        }
    }

    @Test("MP 1.4: floating pointer → configuration table: processors, ISA bus, IOAPIC, IRQ routes, LINT0/LINT1",
          arguments: [1, 4, 64])
    func mpTable(cpus: Int) throws {
        for (format, image) in tableFormats {
            let (m, plan) = try load(image, as: format, cpus: cpus)
            let mp = try MPView(m)
            #expect(plan.firmwareTables?.mpFloatingPointer == mp.pointer)
            let processors = mp.entries.filter { $0.0 == 0 }.map(\.1)
            #expect(processors.count == cpus)
            for (i, p) in processors.enumerated() {
                #expect(p[1] == UInt8(i))                             // APIC ID = vCPU index
                #expect(p[3] == (i == 0 ? 0b11 : 0b01))               // enabled; BP only on 0
                #expect(p[2] >= 0x10)                                 // an integrated APIC
                #expect(u32(p, 8) & (1 << 9) != 0)                    // CPUID feature flags: APIC
                #expect(u32(p, 4) >> 8 & 0xF == 6)                    // family 6
            }
            let buses = mp.entries.filter { $0.0 == 1 }.map(\.1)
            #expect(buses.count == 1 && buses.first.map { $0[1] == 0 && ascii($0, 2, 6) == "ISA   " } == true)
            let ioapics = mp.entries.filter { $0.0 == 2 }.map(\.1)
            #expect(ioapics == [[2, UInt8(cpus), 0x20, 1, 0x00, 0x00, 0xC0, 0xFE]])
            // I/O interrupts: every ISA IRQ but the cascade (2), IRQ 0 on pin 2.
            var routes: [UInt8: UInt8] = [:]
            for e in mp.entries.filter({ $0.0 == 3 }).map(\.1) {
                #expect(e[1] == 0 && e[4] == 0 && e[6] == UInt8(cpus), "I/O interrupt entry \(e)")
                #expect(routes[e[5]] == nil, "IRQ \(e[5]) listed twice")
                routes[e[5]] = e[7]
                #expect(u16(e, 2) == (e[5] == 9 ? 0x000D : 0), "IRQ \(e[5]) flags \(u16(e, 2))")
            }
            var expected: [UInt8: UInt8] = [0: 2]
            for irq in UInt8(1)...15 where irq != 2 { expected[irq] = irq }
            #expect(routes == expected)
            #expect(Set(routes.values).count == routes.count)          // no pin serves two IRQs
            let locals = mp.entries.filter { $0.0 == 4 }.map(\.1)
            #expect(locals.map { [$0[1], $0[6], $0[7]] } == [[3, 0xFF, 0], [1, 0xFF, 1]])   // ExtINT LINT0, NMI LINT1
        }
    }

    @Test("256 vCPUs: the last one gets an x2APIC MADT entry and is left out of the MP table; every table stays in its slot")
    func largestMachine() throws {
        let (m, _) = try load(elf64Program, as: .elf64, cpus: 256)
        let acpi = try ACPIView(m)
        let entries = try acpi.madtEntries()
        #expect(entries.filter { $0.0 == 0 }.count == 255)
        let x2 = entries.filter { $0.0 == 9 }.map(\.1)
        #expect(x2.count == 1 && x2.first.map { u32($0, 4) == 255 && u32($0, 8) == 1 && u32($0, 12) == 255 } == true)
        #expect(entries.contains { $0.0 == 0x0A && u32($0.1, 4) == 0xFFFF_FFFF && $0.1[8] == 1 })
        #expect(entries.first { $0.0 == 1 }?.1[2] == 255)            // IOAPIC ID: one byte
        // Each table ends before the next one's fixed address.
        #expect(acpi.madt.address + UInt64(acpi.madt.bytes.count) <= 0xF0000)
        #expect(acpi.dsdt.address + UInt64(acpi.dsdt.bytes.count) <= acpi.madt.address)
        let mp = try MPView(m)
        #expect(mp.entries.filter { $0.0 == 0 }.count == 255)
        #expect(u32(m.bytes(at: mp.pointer, count: 16), 4) + UInt64(mp.table.count) <= 0x100000)
    }

    @Test("the memory map reserves 0xE0000-0xFFFFF; the loader's own structures keep out of it")
    func memoryMap() throws {
        for (format, image) in tableFormats {
            let (_, plan) = try load(image, as: format)
            #expect(plan.memoryMap == [
                MemoryMapEntry(start: 0, length: 0xE0000, kind: .usable),
                MemoryMapEntry(start: 0xE0000, length: 0x20000, kind: .reserved),
                MemoryMapEntry(start: MiB, length: 127 * MiB, kind: .usable),
            ], "\(format)")
        }
        // 256 GiB of RAM: 258 pages of identity tables from 0x1000 would run through the
        // table range; they must go around it and leave the tables intact.
        let (m, plan) = try load(elf64Program, as: .elf64, ram: 256 * GiB)
        let start = plan.placements.first { $0.0 == "page tables" }!.1, end = plan.placements.first { $0.0 == "page tables end" }!.1
        let gdt = plan.placements.first { $0.0 == "GDT" }!.1
        #expect(!(start..<end).overlaps(0xE0000..<0x100000), "page tables at \(hex(start, width: 1))-\(hex(end, width: 1))")
        #expect(!(gdt..<(gdt + 0x1000)).overlaps(0xE0000..<0x100000))
        _ = try ACPIView(m)
        _ = try MPView(m)
        #expect(plan.memoryMap.filter { $0.kind == .reserved } == [MemoryMapEntry(start: 0xE0000, length: 0x20000, kind: .reserved)])
        #expect(plan.memoryMap.last == MemoryMapEntry(start: 4 * GiB, length: 253 * GiB, kind: .usable))

        // Multiboot: modules after a kernel low in memory skip the range.
        let lowKernel = ELFFile(is64: false, machine: 3, entry: 0x10000, segments: [.init(at: 0x10000, [0xF4], memorySize: 0xC0000)],
                                blob: multibootHeader(flags: 0x3)).bytes
        let memory = try GuestMemoryMap(ramSize: 128 * MiB)
        var options = LoadOptions()
        options.modules = [([UInt8](repeating: 0xAB, count: 0x30000), "big module")]
        let mb = try Loader.load(lowKernel, name: "low.elf", as: .multiboot, into: memory, options: options)
        let module = mb.placements.first { $0.0 == "module 1" }!.1
        #expect(!(module..<(module + 0x30000)).overlaps(0xE0000..<0x100000), "module at \(hex(module, width: 1))")
        _ = try ACPIView(memory)
    }

    @Test("a bios image gets no tables and no reserved range")
    func biosGetsNone() throws {
        let (m, plan) = try load(biosROM(), as: .bios, cpus: 4)
        #expect(plan.firmwareTables == nil)
        #expect(scan(m, 0xE0000..<0x100000, for: "RSD PTR ").isEmpty)
        #expect(scan(m, 0xE0000..<0x100000, for: "_MP_").isEmpty)
        #expect(!plan.memoryMap.contains { $0.kind == .reserved })
        #expect(!plan.placements.contains { $0.0.contains("RSDP") })
    }

    @Test("an image that covers the range keeps it: no tables, no reserved entry, the image's bytes intact; so does a range that is not RAM")
    func imageOverTheRange() throws {
        let code = [UInt8](repeating: 0x90, count: 0x100) + [0xF4]
        let program = ELFFile(entry: 0xF0000, segments: [.init(at: 0xF0000, code)]).bytes
        let (m, plan) = try load(program, as: .elf64)
        #expect(plan.firmwareTables == nil)
        #expect(m.bytes(at: 0xF0000, count: code.count) == code)
        #expect(scan(m, 0xE0000..<0x100000, for: "RSD PTR ").isEmpty)
        #expect(plan.memoryMap == [MemoryMapEntry(start: 0, length: 128 * MiB, kind: .usable)])

        // Where the range is not all RAM (a memory map laid out with a ROM there), the
        // loader skips the tables too instead of writing half of them.
        let withROM = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 128 << 10)
        let boot = try Loader.load(bootSectorImage, name: "b.img", as: .boot, into: withROM)
        #expect(boot.firmwareTables == nil)
        #expect(scan(withROM, 0xE0000..<0x100000, for: "RSD PTR ").isEmpty)
        #expect(!boot.memoryMap.contains { $0.kind == .reserved })
    }

    @Test("iasl disassembles every ACPI table without errors and reads back what we wrote",
          .enabled(if: FileManager.default.isExecutableFile(atPath: iaslPath ?? ""), "iasl not installed (apt-get install -y acpica-tools)"))
    func iasl() throws {
        let (m, _) = try load(elf64Program, as: .elf64, cpus: 4)
        let acpi = try ACPIView(m)
        func disassemble(_ bytes: [UInt8], name: String) throws -> String {
            let path = try writeScratchFile(bytes, name: "\(name).dat")
            let r = try runProcess(iaslPath!, ["-d", path])
            #expect(r.status == 0, "iasl -d \(name): \(r.stdout) \(r.stderr)")
            let combined = r.stdout + r.stderr
            let dsl = try String(contentsOfFile: String(path.dropLast(4)) + ".dsl", encoding: .utf8)
            // iasl exits 0 even on bad AML or a bad checksum: it says so in its output.
            for complaint in ["Error", "Invalid", "Incorrect", "Could not", "Warning"] {
                #expect(!combined.contains(complaint) && !dsl.contains(complaint), "iasl on \(name): \(combined)\n\(dsl)")
            }
            return dsl
        }
        let dsdt = try disassemble(acpi.dsdt.bytes, name: "dsdt")
        #expect(dsdt.contains("DefinitionBlock"))
        #expect(dsdt.contains("Scope (\\_SB)"))
        // iasl prints the package as Name (_S5, Package (0x04) { 0x05, 0x05, Zero, Zero }),
        // with comments between: drop those and the white space.
        let compact = dsdt.components(separatedBy: "\n").map { $0.components(separatedBy: "//")[0] }.joined().filter { !$0.isWhitespace }
        #expect(compact.contains("Name(_S5,Package(0x04){0x05,0x05,Zero,Zero})"), "\(dsdt)")

        let madt = try disassemble(acpi.madt.bytes, name: "apic")
        #expect(madt.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count - 1 == 4)
        #expect(madt.contains("Local Apic Address : FEE00000"))
        #expect(madt.contains("Address : FEC00000"))
        let fadt = try disassemble(acpi.fadt.bytes, name: "facp")
        #expect(fadt.contains("PM1A Event Block Address : 00000600"))
        #expect(fadt.contains("PM Timer Block Address : 00000608"))
        #expect(fadt.contains("Value to cause reset : 06"))
        for table in [acpi.rsdt, acpi.xsdt] {
            _ = try disassemble(table.bytes, name: table.signature.lowercased())
        }
        _ = try disassemble(acpi.facs, name: "facs")
    }
}

/// Guests/acpi-cpus.asm: a Multiboot kernel that finds the RSDP, the MADT and the MP
/// table itself and counts the processors they list.
@Suite("acpi-cpus guest")
struct ACPIGuestTests {
    @Test("the guest finds the RSDP, MADT and MP table and counts every vCPU", arguments: backends(), [1, 4])
    func counts(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("acpi-cpus.elf"), backend: backend, cpus: cpus)
        #expect(r.output == "acpi: cpus=\(cpus)\nmp: cpus=\(cpus)\n")
        #expect(r.status == 0)
    }

    @Test("64 vCPUs on the interpreter")
    func many() throws {
        let r = runGuest(try guest("acpi-cpus.elf"), backend: .interp, cpus: 64)
        #expect(r.output == "acpi: cpus=64\nmp: cpus=64\n")
        #expect(r.status == 0)
    }

    @Test("the guest checks what it reads: a corrupted MADT checksum or MP pointer fails it", arguments: backends())
    func corrupted(backend: BackendKind) throws {
        let madt = runGuest(try guest("acpi-cpus.elf"), backend: backend, cpus: 2, prepare: { machine in
            let a = FirmwareTables.madtAddress + 44 + 2   // the first processor's UID: breaks the checksum
            machine.memory.write(a, machine.memory.read(a, as: UInt8.self) &+ 1)
        })
        #expect(madt.output == "acpi: FAIL MADT checksum\n")
        #expect(madt.status == 1)
        let mp = runGuest(try guest("acpi-cpus.elf"), backend: backend, cpus: 2, prepare: { machine in
            machine.memory.write(FirmwareTables.mpFloatingPointerAddress, UInt32(0))   // no "_MP_"
        })
        #expect(mp.output == "acpi: cpus=2\nmp: FAIL no floating pointer\n")
        #expect(mp.status == 1)
    }
}

/// Where iasl is, if installed.
private let iaslPath: String? = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first { FileManager.default.isExecutableFile(atPath: $0) }
