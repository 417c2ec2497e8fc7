import GuestMemory
import X86

/// What `tandem run` asks of a loader besides the image itself.
public struct LoadOptions: Sendable {
    /// The kernel command line (Multiboot's, or Linux's `cmd_line_ptr`).
    public var commandLine: String = ""
    /// Multiboot modules: each is a file's bytes and its string (path and arguments).
    public var modules: [(bytes: [UInt8], string: String)] = []
    /// A Linux initrd (initramfs).
    public var initrd: [UInt8]? = nil
    public var cpuCount: Int = 1
    public init() {}
}

/// An image in memory and the CPU state it starts in.
public struct BootPlan: Sendable {
    public let format: ImageFormat
    /// Whether every vCPU starts at the entry (elf64) or only vCPU 0 (the others wait for INIT/SIPI).
    public let startsAllCPUs: Bool
    /// The bootstrap CPU's state; per-CPU registers are filled in by `initialState(cpu:of:)`.
    let state: CPUState
    let ramSize: UInt64
    /// Where the loader put things, for `--verbose` and the docs: ("page tables", address).
    public let placements: [(String, UInt64)]
    /// The firmware tables (ACPI, MP), when the loader installed them: never for `bios`,
    /// and not when the image covers their range (see `FirmwareTables`).
    public var firmwareTables: FirmwareTables.Installed? = nil
    /// The physical memory map the guest is told about (Multiboot's mmap; an e820 table):
    /// RAM, with the firmware tables' range reserved when they are installed.
    public var memoryMap: [MemoryMapEntry] = []

    /// The state vCPU `cpu` of `count` starts in.
    public func initialState(cpu: Int, of count: Int) -> CPUState {
        var s = state
        if format == .elf64 {
            s[.rdi] = UInt64(cpu)
            s[.rsi] = UInt64(count)
            s[.rdx] = ramSize
        }
        return s
    }
}

extension BootPlan {
    /// The plan of a machine restored from a snapshot: its memory and every vCPU's state
    /// come from the snapshot, so there is nothing to load and every vCPU starts (in the
    /// run state the snapshot gives it).
    public static func restored(format: ImageFormat, ramSize: UInt64) -> BootPlan {
        BootPlan(format: format, startsAllCPUs: true, state: CPUState(), ramSize: ramSize, placements: [])
    }
}

/// Loads images of the contract's four formats into guest memory.
public enum Loader {
    /// The ROM size a `bios` image needs in the memory layout (0 for other formats).
    public static func romSize(for format: ImageFormat, image: [UInt8]) -> Int {
        format == .bios ? image.count : 0
    }

    /// Places `image` in `memory` as `format` (not `.auto`: call `ImageFormat.detect` first)
    /// and returns the initial CPU state.
    public static func load(_ image: [UInt8], name: String, as format: ImageFormat, into memory: GuestMemoryMap,
                            options: LoadOptions = LoadOptions()) throws(ImageError) -> BootPlan {
        switch format {
        case .auto: return try load(image, name: name, as: try ImageFormat.detect(image, name: name), into: memory, options: options)
        case .boot: return try loadBoot(image, name: name, memory: memory, options: options)
        case .bios: return try loadBIOS(image, name: name, memory: memory)
        case .multiboot: return try Multiboot.load(image, name: name, memory: memory, options: options)
        case .elf64: return try loadELF64(image, name: name, memory: memory, options: options)
        case .linux: return try Linux.load(image, name: name, memory: memory, options: options)
        }
    }

    static func loadBoot(_ image: [UInt8], name: String, memory: GuestMemoryMap, options: LoadOptions) throws(ImageError) -> BootPlan {
        guard !image.isEmpty else { throw .malformed("\(name) is empty") }
        guard image.count <= ImageFormat.maxBootImage else {
            throw .doesNotFit("\(name) is \(image.count) bytes: a boot image is at most 64 KiB")
        }
        try place(image[...], at: 0x7C00, memory: memory, what: name)
        // The image ends below 0x17C00, so the tables' range (0xE0000-0xFFFFF) is always free.
        var placement = Placement(memory: memory)
        placement.reserve(0x7C00..<(0x7C00 + UInt64(image.count)))
        let tables = FirmwareTables.install(cpuCount: options.cpuCount, memory: memory, placement: &placement)
        var s = CPUState()
        s.cs = .realMode(0, code: true)
        s.ds = .realMode(0); s.es = .realMode(0); s.ss = .realMode(0); s.fs = .realMode(0); s.gs = .realMode(0)
        s.rip = 0x7C00
        s[.rsp] = 0x7C00
        s[.rdx] = 0x80
        s.cr0 = CR0.et   // as a BIOS leaves it: caches on, real mode
        return BootPlan(format: .boot, startsAllCPUs: false, state: s, ramSize: memory.ramSize,
                        placements: [("image", 0x7C00)] + tablePlacements(tables),
                        firmwareTables: tables, memoryMap: FirmwareTables.memoryMap(of: memory, tablesInstalled: tables != nil))
    }

    /// A `bios` image is its own firmware: it gets no ACPI or MP tables from the loader.
    static func loadBIOS(_ image: [UInt8], name: String, memory: GuestMemoryMap) throws(ImageError) -> BootPlan {
        guard GuestMemoryROMSizes.contains(image.count) else {
            throw .malformed("\(name) is \(image.count) bytes: a BIOS ROM is 64, 128 or 256 KiB")
        }
        // Any code may sit at the reset vector: the far-jump test is only how `auto`
        // recognises a ROM (ImageFormat.detect).
        guard memory.regions.contains(where: { $0.kind == .rom && $0.size == UInt64(image.count) }) else {
            throw .doesNotFit("the memory map has no ROM of \(image.count) bytes for \(name)")
        }
        memory.loadROM(image)
        var s = CPUState()   // the x86 reset state
        s.cs = SegmentRegister(selector: 0xF000, base: 0xFFFF_0000, limit: 0xFFFF,
                               attributes: SegmentRegister.attributes(type: 0xB, s: true))
        s.ds = .realMode(0); s.es = .realMode(0); s.ss = .realMode(0); s.fs = .realMode(0); s.gs = .realMode(0)
        s.rip = 0xFFF0
        s[.rdx] = 0x600
        return BootPlan(format: .bios, startsAllCPUs: false, state: s, ramSize: memory.ramSize,
                        placements: [("ROM", PhysicalLayout.firstMiB - UInt64(image.count)), ("ROM alias", (1 << 32) - UInt64(image.count))],
                        memoryMap: FirmwareTables.memoryMap(of: memory, tablesInstalled: false))
    }

    /// The placements entries for installed firmware tables.
    static func tablePlacements(_ tables: FirmwareTables.Installed?) -> [(String, UInt64)] {
        guard let tables else { return [] }
        return [("ACPI RSDP", tables.rsdp), ("MP floating pointer", tables.mpFloatingPointer)]
    }

    /// Copies `bytes` to `address`, which must be RAM.
    static func place(_ bytes: ArraySlice<UInt8>, at address: UInt64, memory: GuestMemoryMap, what: String) throws(ImageError) {
        do { try memory.load(bytes, at: address) } catch {
            throw .doesNotFit("\(what) does not fit: \(error)")
        }
    }

    /// Copies ELF segments (zero-filling the bss part) after checking each lies in RAM.
    static func placeSegments(_ elf: ELFImage, image: [UInt8], memory: GuestMemoryMap, name: String, placement: inout Placement) throws(ImageError) {
        for (i, s) in elf.segments.enumerated() where s.memorySize > 0 {
            let (end, overflow) = s.physicalAddress.addingReportingOverflow(s.memorySize)
            guard !overflow, memory.isRAM(s.physicalAddress, length: s.memorySize) else {
                throw .doesNotFit("\(name): segment \(i) at \(hex(s.physicalAddress))-\(hex(s.physicalAddress &+ s.memorySize &- 1)) lies outside guest RAM (\(memory.ramSize >> 20) MiB)")
            }
            let data = image[Int(s.fileOffset)..<Int(s.fileOffset + s.fileSize)]
            try place(data, at: s.physicalAddress, memory: memory, what: "\(name) segment \(i)")
            if s.memorySize > s.fileSize {
                try zero(s.physicalAddress + s.fileSize, count: s.memorySize - s.fileSize, memory: memory)
            }
            placement.reserve(s.physicalAddress..<end)
        }
    }

    static func zero(_ address: UInt64, count: UInt64, memory: GuestMemoryMap) throws(ImageError) {
        // Fresh guest RAM is already zero, but a segment may overlap an earlier one's data;
        // `zero` leaves untouched pages untouched (a 2 GiB .bss must not cost 2 GiB).
        guard memory.zero(address, count: count) else {
            throw .doesNotFit("bss at \(hex(address)) crosses a memory region boundary")
        }
    }

    static func loadELF64(_ image: [UInt8], name: String, memory: GuestMemoryMap, options: LoadOptions) throws(ImageError) -> BootPlan {
        let elf = try ELFImage(image, what: name)
        guard elf.is64 else { throw .malformed("\(name) is not a 64-bit ELF file") }
        guard elf.machine == ELFImage.machineX8664 else {
            throw .malformed("\(name) is an ELF file for machine \(elf.machine), not x86-64 (62)")
        }
        var placement = Placement(memory: memory)
        try placeSegments(elf, image: image, memory: memory, name: name, placement: &placement)
        // Before the page tables and GDT, which then keep out of the tables' range.
        let tables = FirmwareTables.install(cpuCount: options.cpuCount, memory: memory, placement: &placement)
        var (s, entryPlacements) = try LongModeEntry.build(codeSelector: 0x08, dataSelector: 0x10, memory: memory, placement: &placement)
        s.rip = elf.physicalEntry
        return BootPlan(format: .elf64, startsAllCPUs: true, state: s, ramSize: memory.ramSize,
                        placements: [("entry", s.rip)] + entryPlacements + tablePlacements(tables),
                        firmwareTables: tables, memoryMap: FirmwareTables.memoryMap(of: memory, tablesInstalled: tables != nil))
    }
}

/// The long-mode entry state of `elf64` and `linux` images: CPL 0, paging on with the
/// identity map below, a GDT in its own 4 KiB page holding a 64-bit code descriptor at
/// `codeSelector`, a flat data descriptor at `dataSelector` (the other slots below null)
/// and a 16-byte 64-bit TSS descriptor right after the data one, the 104-byte TSS at
/// +0x100 (all zero). Interrupts off, IDTR empty.
enum LongModeEntry {
    static func build(codeSelector: UInt16, dataSelector: UInt16, memory: GuestMemoryMap,
                      placement: inout Placement) throws(ImageError) -> (CPUState, [(String, UInt64)]) {
        let (pml4, tablesSize) = try IdentityPageTables.build(memory: memory, placement: &placement)
        let gdt = try placement.allocate(0x1000, what: "GDT and TSS")
        let tss = gdt + 0x100
        let tssSelector = dataSelector + 8
        let tssLow: UInt64 = 0x67 | (tss & 0xFFFF) << 16 | ((tss >> 16) & 0xFF) << 32 | 0x89 << 40 | ((tss >> 24) & 0xFF) << 56
        let descriptors: [UInt16: UInt64] = [codeSelector: 0x00AF_9A00_0000_FFFF, dataSelector: 0x00CF_9200_0000_FFFF,
                                             tssSelector: tssLow, tssSelector + 8: tss >> 32]
        for (selector, d) in descriptors { memory.write(gdt + UInt64(selector), d) }
        var s = CPUState()
        s.cs = SegmentRegister(selector: codeSelector, base: 0, limit: 0xFFFF_FFFF,
                               attributes: SegmentRegister.attributes(type: 0xB, s: true, long: true, granularity: true))
        let data = SegmentRegister(selector: dataSelector, base: 0, limit: 0xFFFF_FFFF,
                                   attributes: SegmentRegister.attributes(type: 0x3, s: true, big: true, granularity: true))
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.tr = SegmentRegister(selector: tssSelector, base: tss, limit: 0x67, attributes: SegmentRegister.attributes(type: 0xB, s: false))
        s.gdtr = DescriptorTable(base: gdt, limit: tssSelector + 15)
        s.idtr = DescriptorTable(base: 0, limit: 0)
        s.cr0 = CR0.pe | CR0.mp | CR0.et | CR0.ne | CR0.wp | CR0.pg
        s.cr3 = pml4
        s.cr4 = CR4.pae
        s.efer = EFER.lme | EFER.lma
        return (s, [("page tables", pml4), ("page tables end", pml4 + tablesSize), ("GDT", gdt), ("TSS", tss)])
    }
}

/// The long-mode entry's identity map: every address from 0 to the end of RAM (at least
/// 4 GiB, rounded up to a GiB) maps to itself with 2 MiB pages, read/write, supervisor.
enum IdentityPageTables {
    static func build(memory: GuestMemoryMap, placement: inout Placement) throws(ImageError) -> (pml4: UInt64, size: UInt64) {
        let gib: UInt64 = 1 << 30
        let end = max(memory.ramEnd, 4 * gib)
        let gibs = (end + gib - 1) / gib
        let pdpts = (gibs + 511) / 512
        let pages = 1 + pdpts + gibs
        let base = try placement.allocate(pages * 0x1000, what: "identity page tables")
        guard let tables = memory.hostPointer(base, length: pages * 0x1000, kind: .ram) else {
            throw .doesNotFit("the identity page tables cross a memory region boundary")
        }
        let entries = tables.bindMemory(to: UInt64.self, capacity: Int(pages) * 512)
        entries.initialize(repeating: 0, count: Int(pages) * 512)
        let pml4 = base, firstPDPT = base + 0x1000, firstPD = firstPDPT + pdpts * 0x1000
        for i in 0..<Int(pdpts) {
            entries[i] = (firstPDPT + UInt64(i) * 0x1000) | 0x3
        }
        for g in 0..<Int(gibs) {
            entries[512 + g] = (firstPD + UInt64(g) * 0x1000) | 0x3   // PDPT entries follow the PML4 page
            let pd = 512 * (1 + Int(pdpts) + g)
            for j in 0..<512 {
                entries[pd + j] = (UInt64(g) * gib + UInt64(j) << 21) | 0x83   // present, writable, 2 MiB
            }
        }
        return (pml4, pages * 0x1000)
    }
}
