import GuestMemory
import X86

/// Multiboot v1: the header (ELF32 program headers, or the a.out kludge when flag bit 16
/// is set) and the information structure handed to the kernel in EBX.
///
/// Placement: the info structure, its strings, module list and memory map, and a flat
/// GDT go in the lowest free RAM from 0x1000; modules go page-aligned after the kernel.
/// None of them ever covers a segment of the image or the firmware tables' range
/// (0xE0000-0xFFFFF, reserved in the memory map; see `FirmwareTables`).
enum Multiboot {
    static let bootloaderMagic: UInt32 = 0x2BAD_B002
    /// Header flags Tandem understands: 0 (page-align modules), 1 (memory info),
    /// 2 (video mode: accepted, no framebuffer is offered), 16 (a.out kludge).
    static let knownRequiredFlags: UInt32 = 0b111

    static func load(_ image: [UInt8], name: String, memory: GuestMemoryMap, options: LoadOptions) throws(ImageError) -> BootPlan {
        guard let h = ImageFormat.multibootHeaderOffset(image) else {
            throw .malformed("\(name) has no Multiboot header (magic 0x1BADB002) in its first 8 KiB")
        }
        let r = ByteReader(bytes: image, what: "\(name)'s Multiboot header")
        let flags = try r.u32(h + 4)
        let checksum = try r.u32(h + 8)
        guard 0x1BAD_B002 &+ flags &+ checksum == 0 else {
            throw .malformed("\(name): bad Multiboot checksum at offset \(hex(h)) (magic + flags + checksum = \(hex(0x1BAD_B002 &+ flags &+ checksum)), must be 0)")
        }
        let unknown = flags & 0xFFFF & ~knownRequiredFlags
        guard unknown == 0 else {
            throw .malformed("\(name): the Multiboot header requires features Tandem does not offer (flags \(hex(unknown)))")
        }
        var placement = Placement(memory: memory)
        let entry: UInt64
        if flags & (1 << 16) != 0 {
            entry = try loadAOut(image, name: name, header: h, reader: r, memory: memory, placement: &placement)
        } else {
            let elf = try ELFImage(image, what: name)
            guard !elf.is64, elf.machine == ELFImage.machineI386 else {
                throw .malformed("\(name) has a Multiboot header but is not an ELF32 i386 file and does not set the a.out kludge (flag bit 16)")
            }
            try Loader.placeSegments(elf, image: image, memory: memory, name: name, placement: &placement)
            entry = elf.physicalEntry
        }
        let kernelEnd = placement.occupied.map(\.upperBound).max() ?? 0x100000
        // The firmware tables claim their range before modules, the info structure and the
        // GDT look for room, so none of those can land on them.
        let tables = FirmwareTables.install(cpuCount: options.cpuCount, memory: memory, placement: &placement)
        let memoryMap = FirmwareTables.memoryMap(of: memory, tablesInstalled: tables != nil)
        // The information structure holds 32-bit addresses: everything it points to stays below 4 GiB.
        let addressLimit: UInt64 = 1 << 32

        // Modules, page-aligned after the kernel.
        var moduleRanges: [(UInt64, UInt64)] = []
        for (i, module) in options.modules.enumerated() {
            let start = try placement.allocate(UInt64(max(module.bytes.count, 1)), from: kernelEnd, below: addressLimit, what: "module \(i + 1)")
            try Loader.place(module.bytes[...], at: start, memory: memory, what: "module \(i + 1)")
            moduleRanges.append((start, start + UInt64(module.bytes.count)))
        }

        // The information structure and everything it points to, in one block.
        var strings: [UInt8] = []
        func addString(_ s: String) -> Int { let o = strings.count; strings += Array(s.utf8) + [0]; return o }
        let cmdlineOffset = addString(options.commandLine)
        let nameOffset = addString("Tandem")
        let moduleStringOffsets = options.modules.map { addString($0.string) }
        let ramRegions = memory.regions.filter { $0.kind == .ram }
        let infoSize = 0x80, moduleListSize = 16 * options.modules.count, mmapSize = 24 * memoryMap.count
        let total = UInt64(infoSize + moduleListSize + mmapSize + strings.count)
        let info = try placement.allocate(total, from: 0x1000, below: addressLimit, what: "Multiboot information")
        let moduleList = info + UInt64(infoSize)
        let mmap = moduleList + UInt64(moduleListSize)
        let stringBase = mmap + UInt64(mmapSize)

        let lowEnd = ramRegions.first.map { $0.end } ?? 0
        let lowRAMTop = memory.regions.filter { $0.kind == .ram && $0.start < PhysicalLayout.lowRAMLimit }.map(\.end).max() ?? 0
        var block = [UInt8](repeating: 0, count: Int(total))
        func put32(_ offset: Int, _ v: UInt64) { for i in 0..<4 { block[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        func put64(_ offset: Int, _ v: UInt64) { put32(offset, v); put32(offset + 4, v >> 32) }
        // flags: mem (0), cmdline (2), mods (3), mmap (6), boot loader name (9)
        put32(0, 1 << 0 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9)
        put32(4, min(640, lowEnd / 1024))
        put32(8, (lowRAMTop - min(lowRAMTop, PhysicalLayout.firstMiB)) / 1024)
        put32(12, 0xFFFF_FFFF)   // boot_device: none
        put32(16, stringBase + UInt64(cmdlineOffset))
        put32(20, UInt64(options.modules.count))
        put32(24, moduleList)
        put32(44, UInt64(mmapSize))
        put32(48, mmap)
        put32(64, stringBase + UInt64(nameOffset))
        for (i, range) in moduleRanges.enumerated() {
            let o = infoSize + 16 * i
            put32(o, range.0)
            put32(o + 4, range.1)
            put32(o + 8, stringBase + UInt64(moduleStringOffsets[i]))
        }
        // One mmap entry per RAM region, with the firmware tables' range cut out as reserved.
        for (i, entry) in memoryMap.enumerated() {
            let o = infoSize + moduleListSize + 24 * i
            put32(o, 20)
            put64(o + 4, entry.start)
            put64(o + 12, entry.length)
            put32(o + 20, UInt64(entry.kind.rawValue))
        }
        block.replaceSubrange(Int(stringBase - info)..., with: strings)
        try Loader.place(block[...], at: info, memory: memory, what: "Multiboot information")

        // A flat GDT: null, code 0x08, data 0x10. The kernel must load its own; this one
        // just makes the state consistent.
        let gdt = try placement.allocate(24, align: 8, from: 0x1000, below: addressLimit, what: "GDT")
        for (i, d) in [UInt64(0), 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF].enumerated() {
            memory.write(gdt + UInt64(i * 8), d)
        }

        var s = CPUState()
        s.cs = SegmentRegister(selector: 0x08, base: 0, limit: 0xFFFF_FFFF,
                               attributes: SegmentRegister.attributes(type: 0xB, s: true, big: true, granularity: true))
        let data = SegmentRegister(selector: 0x10, base: 0, limit: 0xFFFF_FFFF,
                                   attributes: SegmentRegister.attributes(type: 0x3, s: true, big: true, granularity: true))
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.gdtr = DescriptorTable(base: gdt, limit: 23)
        s.cr0 = CR0.pe | CR0.et
        s[.rax] = UInt64(bootloaderMagic)
        s[.rbx] = info
        s.rip = entry
        return BootPlan(format: .multiboot, startsAllCPUs: false, state: s, ramSize: memory.ramSize,
                        placements: [("entry", entry), ("Multiboot info", info), ("GDT", gdt)] + moduleRanges.enumerated().map { ("module \($0.offset + 1)", $0.element.0) }
                            + Loader.tablePlacements(tables),
                        firmwareTables: tables, memoryMap: memoryMap)
    }

    /// The a.out kludge: the header's own address fields say what to load where.
    static func loadAOut(_ image: [UInt8], name: String, header h: Int, reader r: ByteReader, memory: GuestMemoryMap,
                         placement: inout Placement) throws(ImageError) -> UInt64 {
        let headerAddr = UInt64(try r.u32(h + 12))
        let loadAddr = UInt64(try r.u32(h + 16))
        var loadEnd = UInt64(try r.u32(h + 20))
        let bssEnd = UInt64(try r.u32(h + 24))
        let entry = UInt64(try r.u32(h + 28))
        guard headerAddr >= loadAddr, headerAddr - loadAddr <= UInt64(h) else {
            throw .malformed("\(name): Multiboot header_addr \(hex(headerAddr)) and load_addr \(hex(loadAddr)) do not match the header's offset \(hex(h)) in the file")
        }
        let fileStart = UInt64(h) - (headerAddr - loadAddr)
        if loadEnd == 0 { loadEnd = loadAddr + UInt64(image.count) - fileStart }
        guard loadEnd >= loadAddr else { throw .malformed("\(name): Multiboot load_end_addr \(hex(loadEnd)) is below load_addr \(hex(loadAddr))") }
        let data = try ByteReader(bytes: image, what: name).slice(fileStart, loadEnd - loadAddr, field: "the a.out kludge's load range")
        let end = max(loadEnd, bssEnd)
        guard bssEnd == 0 || bssEnd >= loadEnd else { throw .malformed("\(name): Multiboot bss_end_addr \(hex(bssEnd)) is below load_end_addr \(hex(loadEnd))") }
        guard memory.isRAM(loadAddr, length: end - loadAddr) else {
            throw .doesNotFit("\(name): the kernel at \(hex(loadAddr))-\(hex(end - 1)) lies outside guest RAM (\(memory.ramSize >> 20) MiB)")
        }
        try Loader.place(data, at: loadAddr, memory: memory, what: name)
        if bssEnd > loadEnd { try Loader.zero(loadEnd, count: bssEnd - loadEnd, memory: memory) }
        placement.reserve(loadAddr..<end)
        guard entry >= loadAddr, entry < end else {
            throw .malformed("\(name): Multiboot entry_addr \(hex(entry)) is outside the loaded kernel \(hex(loadAddr))-\(hex(end - 1))")
        }
        return entry
    }
}
