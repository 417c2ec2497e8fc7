import GuestMemory
import X86

/// The Linux/x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry: a bzImage
/// whose setup header says "HdrS", protocol 2.12 or later with XLF_KERNEL_64.
///
/// The real-mode setup code is not run: like a 64-bit boot loader, Tandem fills the zero
/// page (boot_params) itself — the setup header copied from the image, the command line,
/// the initrd, an e820 table of the RAM layout and the ACPI RSDP — and enters the
/// protected-mode kernel at its 64-bit entry point (load address + 0x200) in long mode.
///
/// Placement: the kernel at `pref_address` when [pref_address, + init_size) is free RAM,
/// otherwise (a relocatable kernel) at the lowest `kernel_alignment`-aligned free RAM
/// from 1 MiB; the initrd page-aligned as high as it fits under `initrd_addr_max` and
/// below the 3 GiB hole (as QEMU and GRUB put it); the zero page, command line, identity
/// page tables and GDT in the lowest free RAM from 0x1000.
enum Linux {
    // Setup header offsets in the image and, copied, in the zero page.
    static let setupSectorsOffset = 0x1F1
    static let bootFlagOffset = 0x1FE
    static let headerMagicOffset = 0x202
    static let headerMagic: UInt32 = 0x5372_6448   // "HdrS"
    static let versionOffset = 0x206
    static let typeOfLoaderOffset = 0x210
    static let loadFlagsOffset = 0x211
    static let code32StartOffset = 0x214
    static let ramdiskImageOffset = 0x218
    static let ramdiskSizeOffset = 0x21C
    static let commandLinePointerOffset = 0x228
    static let initrdAddressMaxOffset = 0x22C
    static let kernelAlignmentOffset = 0x230
    static let relocatableOffset = 0x234
    static let xloadflagsOffset = 0x236
    static let commandLineSizeOffset = 0x238
    static let preferredAddressOffset = 0x258
    static let initSizeOffset = 0x260
    // boot_params fields outside the setup header.
    static let videoModeOffset = 0x1FA
    static let acpiRSDPOffset = 0x070
    static let e820EntriesOffset = 0x1E8
    static let e820TableOffset = 0x2D0
    static let e820MaxEntries = 128

    /// Protocol 2.12 added xloadflags, which says whether the 64-bit entry exists.
    static let minimumVersion: UInt16 = 0x020C
    static let xlfKernel64: UInt16 = 1 << 0
    static let loadedHigh: UInt8 = 1 << 0
    /// "Undefined" boot loader: Tandem has no ID of its own.
    static let undefinedLoader: UInt8 = 0xFF
    /// The 64-bit boot protocol's segments.
    static let bootCodeSelector: UInt16 = 0x10
    static let bootDataSelector: UInt16 = 0x18

    /// True when `bytes` carries a Linux setup header (the boot flag and "HdrS").
    static func hasSetupHeader(_ bytes: [UInt8]) -> Bool {
        let r = ByteReader(bytes: bytes, what: "")
        guard let flag = try? r.u16(bootFlagOffset), let magic = try? r.u32(headerMagicOffset) else { return false }
        return flag == 0xAA55 && magic == headerMagic
    }

    /// What the loader needs from the setup header, checked.
    struct Header {
        let version: UInt16
        let setupBytes: Int           // boot sector + setup sectors: the kernel follows
        let headerEnd: Int            // 0x202 + the jump's offset byte: the header's extent
        let initrdAddressMax: UInt64
        let alignment: UInt64
        let relocatable: Bool
        let commandLineSize: UInt64
        let preferredAddress: UInt64
        let initSize: UInt64

        init(_ image: [UInt8], name: String) throws(ImageError) {
            guard Linux.hasSetupHeader(image) else {
                throw .malformed("\(name) is not a Linux kernel: no boot flag 0xAA55 and \"HdrS\" setup header at offset 0x1FE")
            }
            let r = ByteReader(bytes: image, what: "\(name)'s Linux setup header")
            version = try r.u16(versionOffset)
            guard version >= minimumVersion else {
                let minor = version & 0xFF
                throw .malformed("\(name) uses Linux boot protocol \(version >> 8).\(minor < 10 ? "0" : "")\(minor); Tandem needs 2.12 or later (a 64-bit entry point)")
            }
            guard try r.u16(xloadflagsOffset) & xlfKernel64 != 0 else {
                throw .malformed("\(name) is a Linux kernel without a 64-bit entry point (xloadflags bit 0 clear): Tandem boots 64-bit kernels")
            }
            let sectors = Int(image[setupSectorsOffset])
            setupBytes = ((sectors == 0 ? 4 : sectors) + 1) * 512
            headerEnd = 0x202 + Int(image[0x201])
            guard setupBytes < image.count, headerEnd <= setupBytes else {
                throw .malformed("\(name) is truncated: its setup code is \(setupBytes) bytes, the file has \(image.count)")
            }
            initrdAddressMax = UInt64(try r.u32(initrdAddressMaxOffset))
            alignment = UInt64(try r.u32(kernelAlignmentOffset))
            relocatable = image[relocatableOffset] != 0
            commandLineSize = UInt64(try r.u32(commandLineSizeOffset))
            preferredAddress = try r.u64(preferredAddressOffset)
            initSize = UInt64(try r.u32(initSizeOffset))
            guard alignment != 0, alignment & (alignment - 1) == 0 else {
                throw .malformed("\(name): kernel_alignment \(hex(alignment)) is not a power of two")
            }
        }
    }

    static func load(_ image: [UInt8], name: String, memory: GuestMemoryMap, options: LoadOptions) throws(ImageError) -> BootPlan {
        let h = try Header(image, name: name)
        let kernel = image[h.setupBytes...]
        // The kernel decompresses itself inside [load address, + init_size).
        let footprint = max(h.initSize, UInt64(kernel.count))
        var placement = Placement(memory: memory)
        // The firmware tables first: the kernel's range must not cover them.
        let tables = FirmwareTables.install(cpuCount: options.cpuCount, memory: memory, placement: &placement)
        let loadAddress: UInt64
        if memory.isRAM(h.preferredAddress, length: footprint),
           !placement.occupied.contains(where: { $0.overlaps(h.preferredAddress..<(h.preferredAddress + footprint)) }) {
            loadAddress = h.preferredAddress
            placement.reserve(loadAddress..<(loadAddress + footprint))
        } else if h.relocatable {
            loadAddress = try placement.allocate(footprint, align: max(h.alignment, 0x1000), from: 0x10_0000,
                                                 below: 1 << 32, what: "kernel (init_size \(h.initSize >> 20) MiB)")
        } else {
            throw .doesNotFit("\(name) is not relocatable and needs \(footprint >> 20) MiB of RAM at \(hex(h.preferredAddress)) (--mem is \(memory.ramSize >> 20) MiB)")
        }
        try Loader.place(kernel, at: loadAddress, memory: memory, what: "\(name)'s kernel")

        let commandLine = Array(options.commandLine.utf8)
        guard UInt64(commandLine.count) <= h.commandLineSize else {
            throw .doesNotFit("the kernel command line is \(commandLine.count) bytes; \(name) takes at most \(h.commandLineSize)")
        }
        let zeroPage = try placement.allocate(0x1000, below: 1 << 32, what: "Linux zero page")
        let commandLineAddress = try placement.allocate(UInt64(commandLine.count + 1), below: 1 << 32, what: "kernel command line")
        try Loader.place((commandLine + [0])[...], at: commandLineAddress, memory: memory, what: "the kernel command line")

        var initrd: Range<UInt64>? = nil
        if let bytes = options.initrd {
            let address = try placeInitrd(bytes, header: h, memory: memory, placement: &placement)
            initrd = address..<(address + UInt64(bytes.count))
        }

        let memoryMap = FirmwareTables.memoryMap(of: memory, tablesInstalled: tables != nil)
        var params = [UInt8](repeating: 0, count: 0x1000)
        params.replaceSubrange(setupSectorsOffset..<h.headerEnd, with: image[setupSectorsOffset..<h.headerEnd])
        func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { params.replaceSubrange(offset..<(offset + $0.count), with: $0) }
        }
        set(UInt16(0xFFFF), at: videoModeOffset)   // "normal" text mode: the setup code is not run anyway
        set(undefinedLoader, at: typeOfLoaderOffset)
        set(params[loadFlagsOffset] | loadedHigh, at: loadFlagsOffset)
        set(UInt32(loadAddress), at: code32StartOffset)
        set(UInt32(commandLineAddress), at: commandLinePointerOffset)
        if let initrd {
            set(UInt32(initrd.lowerBound), at: ramdiskImageOffset)
            set(UInt32(initrd.count), at: ramdiskSizeOffset)
        }
        if let tables { set(tables.rsdp, at: acpiRSDPOffset) }
        for (i, entry) in memoryMap.prefix(e820MaxEntries).enumerated() {
            let base = e820TableOffset + 20 * i
            set(entry.start, at: base)
            set(entry.length, at: base + 8)
            set(entry.kind.rawValue, at: base + 16)
        }
        params[e820EntriesOffset] = UInt8(min(memoryMap.count, e820MaxEntries))
        try Loader.place(params[...], at: zeroPage, memory: memory, what: "the Linux zero page")

        var (s, entryPlacements) = try LongModeEntry.build(codeSelector: bootCodeSelector, dataSelector: bootDataSelector,
                                                           memory: memory, placement: &placement)
        s.rip = loadAddress + 0x200
        s[.rsi] = zeroPage
        var placements: [(String, UInt64)] = [("kernel", loadAddress), ("entry", s.rip), ("zero page", zeroPage),
                                              ("command line", commandLineAddress)]
        if let initrd { placements.append(("initrd", initrd.lowerBound)) }
        return BootPlan(format: .linux, startsAllCPUs: false, state: s, ramSize: memory.ramSize,
                        placements: placements + entryPlacements + Loader.tablePlacements(tables),
                        firmwareTables: tables, memoryMap: memoryMap)
    }

    /// The initrd, page-aligned, as high as it fits below `initrd_addr_max` and the end of
    /// the RAM below 4 GiB, clear of everything placed so far.
    static func placeInitrd(_ bytes: [UInt8], header h: Header, memory: GuestMemoryMap, placement: inout Placement) throws(ImageError) -> UInt64 {
        let size = UInt64(bytes.count)
        let lowRAMEnd = memory.regions.filter { $0.kind == .ram && $0.start < (1 << 32) }.map(\.end).max() ?? 0
        let top = min(lowRAMEnd, h.initrdAddressMax + 1, 1 << 32)
        var address = top >= size ? (top - size) & ~0xFFF : 0
        // Step below anything in the way (the kernel, when RAM is small).
        while address > 0, let clash = placement.occupied.first(where: { $0.overlaps(address..<(address + max(size, 1))) }) {
            address = clash.lowerBound >= size ? (clash.lowerBound - size) & ~0xFFF : 0
        }
        guard address > 0, memory.isRAM(address, length: size) else {
            throw .doesNotFit("the initrd (\(size >> 10) KiB) does not fit in guest RAM below \(hex(top)) beside the kernel; give the guest more --mem")
        }
        placement.reserve(address..<(address + size))
        try Loader.place(bytes[...], at: address, memory: memory, what: "the initrd")
        return address
    }
}
