import GuestMemory
import Loaders
import Machine
import Testing
import X86

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// Detects (for `.auto`) and loads `bytes` into a fresh memory map of `ram` bytes.
private func load(
    _ bytes: [UInt8], name: String, as format: ImageFormat = .auto, ram: UInt64 = 128 << 20,
    options: LoadOptions = LoadOptions(), prepare: (GuestMemoryMap) -> Void = { _ in }
) throws(ImageError) -> (memory: GuestMemoryMap, plan: BootPlan) {
    let f = format == .auto ? try ImageFormat.detect(bytes, name: name) : format
    guard let m = try? GuestMemoryMap(ramSize: ram, romSize: Loader.romSize(for: f, image: bytes)) else {
        fatalError("cannot lay out \(ram) bytes of guest memory")
    }
    prepare(m)
    return (m, try Loader.load(bytes, name: name, as: f, into: m, options: options))
}

/// The error loading `bytes` gives (nil: it loaded).
private func loadError(_ bytes: [UInt8], name: String, as format: ImageFormat = .auto, ram: UInt64 = 128 << 20) -> ImageError? {
    do { _ = try load(bytes, name: name, as: format, ram: ram); return nil } catch { return error }
}

/// A small x86-64 executable: `hlt` at 2 MiB with some bss.
private func elf64(at address: UInt64 = 0x200000, machine: UInt16 = 62) -> ELFFile {
    ELFFile(is64: true, machine: machine, entry: address, segments: [.init(at: address, [0xF4, 0xEB, 0xFD], memorySize: 0x2000)])
}

/// A small Multiboot ELF32 kernel at 1 MiB with a header right after the program headers.
private func multibootELF(flags: UInt32 = 0x3, checksumError: UInt32 = 0) -> ELFFile {
    ELFFile(is64: false, machine: 3, entry: 0x100000,
            segments: [.init(at: 0x100000, [0xFA, 0xF4], memorySize: 0x3000)],
            blob: multibootHeader(flags: flags, checksumError: checksumError))
}

/// A flat a.out-kludge kernel: the header at offset 0 describes a load at 1 MiB.
private func aoutKernel(loadAddress: UInt32 = 0x100000, headerAddress: UInt32 = 0x100000, bss: UInt32 = 0x1000,
                        codeSize: Int = 100) -> [UInt8] {
    let size = UInt32(32 + codeSize)
    var image = multibootHeader(flags: 0x0001_0003, aout: (
        header: headerAddress, load: loadAddress, loadEnd: loadAddress + size, bssEnd: loadAddress + size + bss,
        entry: loadAddress + 32))
    image += (0..<codeSize).map { UInt8(truncatingIfNeeded: $0 | 0x80) }
    return image
}

private func string(_ memory: GuestMemoryMap, at address: UInt64) -> String {
    var bytes: [UInt8] = []
    var a = address
    while bytes.count < 4096, case let b = memory.read(a, as: UInt8.self), b != 0 {
        bytes.append(b)
        a += 1
    }
    return String(decoding: bytes, as: UTF8.self)
}

@Suite("Image format detection")
struct DetectionTests {
    @Test("each format is recognised from the bytes and the name")
    func detection() throws {
        #expect(try ImageFormat.detect(bootSector([0xF4]), name: "boot.img") == .boot)
        #expect(try ImageFormat.detect([0xEB, 0xFE], name: "tiny") == .boot)
        #expect(try ImageFormat.detect(biosROM(), name: "x.rom") == .bios)
        #expect(try ImageFormat.detect(biosROM(size: 128 << 10), name: "X.BIN") == .bios)
        #expect(try ImageFormat.detect(biosROM(size: 256 << 10), name: "x.Rom") == .bios)
        #expect(try ImageFormat.detect(multibootELF().bytes, name: "k.elf") == .multiboot)
        #expect(try ImageFormat.detect(aoutKernel(), name: "k.bin") == .multiboot)
        #expect(try ImageFormat.detect(elf64().bytes, name: "k.elf") == .elf64)
    }

    @Test("a ROM-sized file is a bios image only when named *.rom/*.bin and holding a far jump")
    func romRules() throws {
        // 64 KiB fits a boot image, so without the name or the far jump it is one.
        #expect(try ImageFormat.detect(biosROM(), name: "x.img") == .boot)
        #expect(try ImageFormat.detect([UInt8](repeating: 0xFF, count: 64 << 10), name: "x.rom") == .boot)
        // A far jump after cli / o32 prefixes still counts.
        var rom = biosROM()
        rom.replaceSubrange((64 << 10) - 16..<(64 << 10) - 9, with: [0xFA, 0x66, 0xEA, 0, 0, 0, 0xF0])
        #expect(try ImageFormat.detect(rom, name: "x.rom") == .bios)
        // 128 KiB with the wrong name is too big for a boot image.
        #expect(throws: ImageError.doesNotFit("x.img is 131072 bytes: a raw boot image is at most 64 KiB (a BIOS ROM is 64, 128 or 256 KiB named *.rom or *.bin with a far jump at its reset vector)")) {
            try ImageFormat.detect(biosROM(size: 128 << 10), name: "x.img")
        }
    }

    @Test("a Multiboot header counts only 32-bit aligned within the first 8 KiB")
    func multibootSearch() throws {
        let header = multibootHeader(flags: 0x3)
        #expect(try ImageFormat.detect([0, 0, 0, 0] + header, name: "a") == .multiboot)
        #expect(try ImageFormat.detect([0, 0] + header + [0, 0], name: "a") == .boot)
        #expect(try ImageFormat.detect([UInt8](repeating: 0, count: 8188) + header, name: "a") == .multiboot)
        #expect(try ImageFormat.detect([UInt8](repeating: 0, count: 8192) + header, name: "a") == .boot)
    }

    @Test("an ELF64 with a Multiboot header is a Multiboot image (and then rejected)")
    func elf64WithMultibootHeader() throws {
        var elf = elf64()
        elf.blob = multibootHeader(flags: 0x3)
        #expect(try ImageFormat.detect(elf.bytes, name: "k.elf") == .multiboot)
        #expect(loadError(elf.bytes, name: "k.elf") == .malformed(
            "k.elf has a Multiboot header but is not an ELF32 i386 file and does not set the a.out kludge (flag bit 16)"))
    }

    @Test("the guests of Guests/README.md are detected as their formats")
    func guests() throws {
        for (name, format) in [
            ("hello-boot.bin", ImageFormat.boot), ("hello-bios.rom", .bios), ("hello-multiboot.elf", .multiboot),
            ("hello-multiboot-aout.bin", .multiboot), ("loop32.elf", .multiboot), ("hello-elf64.elf", .elf64),
            ("smp-counter.elf", .elf64), ("smc.elf", .multiboot), ("bcd16.bin", .boot), ("exceptions32.elf", .multiboot),
            ("paging32.elf", .multiboot), ("paging64.elf", .elf64),
        ] {
            let path = try guest(name)
            #expect(try ImageFormat.detect(readFileBytes(path), name: path) == format, "\(name)")
        }
    }
}

@Suite("Malformed and oversized images")
struct RejectionTests {
    @Test("empty file")
    func empty() {
        #expect(loadError([], name: "e.bin") == .malformed("e.bin is empty"))
        #expect(loadError([], name: "e.bin", as: .boot) == .malformed("e.bin is empty"))
    }

    @Test("truncated ELF header")
    func truncatedHeader() throws {
        let bytes = Array(elf64().bytes.prefix(40))
        #expect(try ImageFormat.detect(bytes, name: "k.elf") == .elf64)
        #expect(loadError(bytes, name: "k.elf") == .malformed("k.elf is truncated: needs 2 bytes at offset 0x36, the file has 40"))
        #expect(loadError(Array(bytes.prefix(10)), name: "k.elf") == .malformed("k.elf is a truncated ELF file (10 bytes)"))
    }

    @Test("truncated program header table")
    func truncatedProgramHeaders() {
        let bytes = Array(elf64().bytes.prefix(64 + 30))
        #expect(loadError(bytes, name: "k.elf") == .malformed(
            "k.elf is truncated: the program header table needs bytes 0x40-0x78 but the file has 94"))
    }

    @Test("segment data past the end of the file")
    func truncatedSegment() {
        let full = elf64().bytes   // 3 bytes of code at offset 0x80
        #expect(full.count == 0x83)
        #expect(loadError(Array(full.dropLast()), name: "k.elf") == .malformed(
            "k.elf is truncated: segment 0 needs bytes 0x80-0x83 but the file has 130"))
    }

    @Test("ELF32 without a Multiboot header")
    func elf32WithoutMultiboot() {
        var elf = multibootELF()
        elf.blob = []
        #expect(loadError(elf.bytes, name: "k.elf") == .malformed(
            "k.elf is a 32-bit ELF file without a Multiboot header; Tandem loads 32-bit kernels through Multiboot"))
    }

    @Test("ELF64 for another machine")
    func foreignMachine() {
        #expect(loadError(elf64(machine: 183).bytes, name: "k.elf") == .malformed(
            "k.elf is an ELF file for machine 183, not x86-64 (62)"))
    }

    @Test("bad Multiboot checksum")
    func badChecksum() {
        let elf = multibootELF(checksumError: 1)
        #expect(elf.blobOffset == 0x54)
        #expect(loadError(elf.bytes, name: "k.elf") == .malformed(
            "k.elf: bad Multiboot checksum at offset 0x54 (magic + flags + checksum = 0x1, must be 0)"))
    }

    @Test("a Multiboot header requiring unknown features")
    func unknownRequiredFlags() throws {
        #expect(loadError(multibootELF(flags: 0x13).bytes, name: "k.elf") == .malformed(
            "k.elf: the Multiboot header requires features Tandem does not offer (flags 0x10)"))
        #expect(loadError(multibootELF(flags: 0x8003).bytes, name: "k.elf") == .malformed(
            "k.elf: the Multiboot header requires features Tandem does not offer (flags 0x8000)"))
        // Bits 16-31 are optional features: unknown ones are ignored. Bit 2 (video mode) is accepted.
        #expect(loadError(multibootELF(flags: 0x0004_0007).bytes, name: "k.elf") == nil)
    }

    @Test("a.out kludge with inconsistent addresses")
    func aoutInconsistent() {
        #expect(loadError(aoutKernel(loadAddress: 0x100010), name: "k.bin") == .malformed(
            "k.bin: Multiboot header_addr 0x100000 and load_addr 0x100010 do not match the header's offset 0x0 in the file"))
        var loadEndBelowLoad = aoutKernel()
        loadEndBelowLoad.put32(0xFFFF0, at: 20)
        #expect(loadError(loadEndBelowLoad, name: "k.bin") == .malformed(
            "k.bin: Multiboot load_end_addr 0xffff0 is below load_addr 0x100000"))
        var pastFile = aoutKernel()
        pastFile.put32(0x100000 + 0x1000, at: 20)
        #expect(loadError(pastFile, name: "k.bin") == .malformed(
            "k.bin is truncated: the a.out kludge's load range needs bytes 0x0-0x1000 but the file has 132"))
        var bssBelowLoadEnd = aoutKernel()
        bssBelowLoadEnd.put32(0x100010, at: 24)
        #expect(loadError(bssBelowLoadEnd, name: "k.bin") == .malformed(
            "k.bin: Multiboot bss_end_addr 0x100010 is below load_end_addr 0x100084"))
        var entryOutside = aoutKernel()
        entryOutside.put32(0x200000, at: 28)
        #expect(loadError(entryOutside, name: "k.bin") == .malformed(
            "k.bin: Multiboot entry_addr 0x200000 is outside the loaded kernel 0x100000-0x101083"))
    }

    @Test("a segment outside RAM does not fit")
    func segmentOutsideRAM() {
        #expect(loadError(elf64(at: 0x800_0000).bytes, name: "k.elf") == .doesNotFit(
            "k.elf: segment 0 at 0x8000000-0x8001fff lies outside guest RAM (128 MiB)"))
        // In the 3-4 GiB hole of an 8 GiB machine.
        #expect(loadError(elf64(at: 0xD000_0000).bytes, name: "k.elf", ram: 8 * GiB) == .doesNotFit(
            "k.elf: segment 0 at 0xd0000000-0xd0001fff lies outside guest RAM (8192 MiB)"))
        // ... but above 4 GiB it is RAM.
        #expect(loadError(elf64(at: 0x1_0000_0000).bytes, name: "k.elf", ram: 8 * GiB) == nil)
        #expect(loadError(aoutKernel(loadAddress: 0x7FF_F000, headerAddress: 0x7FF_F000), name: "k.bin") == .doesNotFit(
            "k.bin: the kernel at 0x7fff000-0x8000083 lies outside guest RAM (128 MiB)"))
    }

    @Test("a raw file over 64 KiB does not fit")
    func rawTooBig() {
        let bytes = [UInt8](repeating: 0x90, count: (64 << 10) + 1)
        #expect(loadError(bytes, name: "big.img") == .doesNotFit(
            "big.img is 65537 bytes: a raw boot image is at most 64 KiB (a BIOS ROM is 64, 128 or 256 KiB named *.rom or *.bin with a far jump at its reset vector)"))
        #expect(loadError(bytes, name: "big.img", as: .boot) == .doesNotFit("big.img is 65537 bytes: a boot image is at most 64 KiB"))
    }

    @Test("a bios ROM of the wrong size is refused")
    func badROM() {
        #expect(loadError([UInt8](repeating: 0xEA, count: 4096), name: "x.rom", as: .bios) == .malformed(
            "x.rom is 4096 bytes: a BIOS ROM is 64, 128 or 256 KiB"))
    }

    /// The reset vector holds a short jump back to `mov al, 42; out 0xf4, al`.
    @Test("--format bios runs a ROM whose reset vector is not a far jump; auto does not take it for one")
    func romWithoutFarJump() throws {
        var rom = [UInt8](repeating: 0xFF, count: 64 << 10)
        rom.replaceSubrange(0xFFE0..<0xFFE4, with: [0xB0, 42, 0xE6, 0xF4])
        rom.replaceSubrange(0xFFF0..<0xFFF2, with: [0xEB, 0xEE])   // jmp short 0xFFE0
        let explicit = try runImage(rom, backend: .interp, name: "nearjump.rom") { $0.format = .bios }
        #expect(explicit.status == 42, "\(explicit.message ?? "")")
        #expect(try ImageFormat.detect(rom, name: "nearjump.rom") != .bios)
    }

    @Test("a bios image needs a ROM in the memory map")
    func romMissing() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB)
        #expect(throws: ImageError.doesNotFit("the memory map has no ROM of 65536 bytes for x.rom")) {
            try Loader.load(biosROM(), name: "x.rom", as: .bios, into: m)
        }
    }
}

@Suite("Loading: placement and initial state")
struct LoadingTests {
    @Test("boot: the image at 0x7C00 and the real-mode entry state")
    func boot() throws {
        let image = bootSector([0xFA, 0xF4])
        let (m, plan) = try load(image, name: "b.img")
        #expect(plan.format == .boot)
        #expect(!plan.startsAllCPUs)
        #expect(m.bytes(at: 0x7C00, count: 512) == image)
        let s = plan.initialState(cpu: 0, of: 1)
        #expect(s.mode == .real)
        #expect(s.cs.selector == 0 && s.cs.base == 0 && s.rip == 0x7C00)
        #expect([s.ds, s.es, s.ss].allSatisfy { $0.selector == 0 && $0.base == 0 })
        #expect(s[.rsp] == 0x7C00)
        #expect(s[.rdx] & 0xFF == 0x80)
        #expect(!s.interruptsEnabled)
    }

    @Test("bios: the ROM at both addresses and the reset state")
    func bios() throws {
        let image = biosROM([0xFA, 0xF4, 0x12, 0x34])
        let (m, plan) = try load(image, name: "x.rom")
        #expect(plan.format == .bios)
        #expect(m.bytes(at: 0xF0000, count: 64 << 10) == image)
        #expect(m.bytes(at: 0xFFFF_0000, count: 64 << 10) == image)
        #expect(m.read(0xFFFF_FFF0, as: UInt8.self) == 0xEA)
        let s = plan.initialState(cpu: 0, of: 1)
        #expect(s.mode == .real)
        #expect(s.cs.selector == 0xF000 && s.cs.base == 0xFFFF_0000 && s.rip == 0xFFF0)
        #expect(s.cr0 & CR0.pe == 0)
    }

    @Test("multiboot: the information structure, modules and memory map")
    func multibootInfo() throws {
        var options = LoadOptions()
        options.commandLine = "root=/dev/x quiet"
        let moduleA = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        let moduleB: [UInt8] = [7, 8, 9]
        options.modules = [(moduleA, "modA arg1 arg2"), (moduleB, "modB")]
        let kernel = multibootELF()
        let (m, plan) = try load(kernel.bytes, name: "k.elf", options: options) { m in
            m.write(0x100002, UInt64.max)   // stale bytes in the bss: the loader must zero them
        }
        #expect(plan.format == .multiboot)
        #expect(!plan.startsAllCPUs)
        #expect(m.bytes(at: 0x100000, count: 2) == [0xFA, 0xF4])
        #expect(m.bytes(at: 0x100002, count: 0x2FFE).allSatisfy { $0 == 0 })

        let s = plan.initialState(cpu: 0, of: 2)
        #expect(s[.rax] == 0x2BAD_B002)
        #expect(s.rip == 0x100000)
        #expect(s.mode == .protected32)
        #expect(s.cr0 & CR0.pe != 0 && s.cr0 & CR0.pg == 0)
        #expect(!s.interruptsEnabled)
        for seg in [s.cs, s.ds, s.es, s.ss] {
            #expect(seg.base == 0 && seg.limit == 0xFFFF_FFFF && seg.defaultBig && seg.granularity)
        }
        #expect(s.cs.selector == 0x08 && s.ds.selector == 0x10)
        #expect(s.gdtr.limit == 23)
        #expect(m.read(s.gdtr.base + 8, as: UInt64.self) == 0x00CF_9A00_0000_FFFF)
        #expect(m.read(s.gdtr.base + 16, as: UInt64.self) == 0x00CF_9200_0000_FFFF)

        let info = s[.rbx]
        func u32(_ offset: UInt64) -> UInt64 { UInt64(m.read(info + offset, as: UInt32.self)) }
        #expect(info >= 0x1000 && info + 0x80 <= 0x100000, "info at 0x\(String(info, radix: 16))")
        #expect(u32(0) == 0x24D)                 // mem, cmdline, mods, mmap, boot loader name
        #expect(u32(4) == 640)
        #expect(u32(8) == (128 * MiB - MiB) / 1024)
        #expect(string(m, at: u32(16)) == "root=/dev/x quiet")
        #expect(string(m, at: u32(64)) == "Tandem")
        #expect(u32(20) == 2)
        let mods = u32(24)
        let startA = UInt64(m.read(mods, as: UInt32.self)), endA = UInt64(m.read(mods + 4, as: UInt32.self))
        let startB = UInt64(m.read(mods + 16, as: UInt32.self)), endB = UInt64(m.read(mods + 20, as: UInt32.self))
        // Page-aligned, after the kernel (1 MiB + 0x3000 with its bss), in order.
        #expect(startA == 0x103000 && endA == 0x103000 + 5000)
        #expect(startB == 0x105000 && endB == 0x105003)
        #expect(m.bytes(at: startA, count: 5000) == moduleA)
        #expect(m.bytes(at: startB, count: 3) == moduleB)
        #expect(string(m, at: UInt64(m.read(mods + 8, as: UInt32.self))) == "modA arg1 arg2")
        #expect(string(m, at: UInt64(m.read(mods + 24, as: UInt32.self))) == "modB")
        // Three memory-map entries: RAM below the firmware tables, their range (reserved),
        // the rest of RAM.
        #expect(u32(44) == 72)
        let mmap = u32(48)
        for (i, (base, length, type)) in [(0, 0xE0000, 1), (0xE0000, 0x20000, 2), (MiB, 127 * MiB, 1)].enumerated() {
            let e = mmap + UInt64(24 * i)
            #expect(m.read(e, as: UInt32.self) == 20)
            #expect(m.read(e + 4, as: UInt64.self) == UInt64(base))
            #expect(m.read(e + 12, as: UInt64.self) == UInt64(length))
            #expect(m.read(e + 20, as: UInt32.self) == UInt32(type))
        }
        #expect(plan.placements.map(\.0) == ["entry", "Multiboot info", "GDT", "module 1", "module 2", "ACPI RSDP", "MP floating pointer"])
    }

    @Test("multiboot with RAM above 4 GiB: an entry from 4 GiB, mem_upper up to 3 GiB")
    func multibootHighRAM() throws {
        let (m, plan) = try load(multibootELF().bytes, name: "k.elf", ram: 5 * GiB)
        let info = plan.initialState(cpu: 0, of: 1)[.rbx]
        #expect(m.read(info + 8, as: UInt32.self) == UInt32((3 * GiB - MiB) / 1024))
        #expect(m.read(info + 20, as: UInt32.self) == 0)     // no modules
        #expect(string(m, at: UInt64(m.read(info + 16, as: UInt32.self))) == "")
        #expect(m.read(info + 44, as: UInt32.self) == 96)
        let mmap = UInt64(m.read(info + 48, as: UInt32.self))
        // Below 1 MiB the firmware tables' range is cut out (see FirmwareTableTests).
        #expect(m.read(mmap + 48 + 4, as: UInt64.self) == MiB)
        #expect(m.read(mmap + 48 + 12, as: UInt64.self) == 3 * GiB - MiB)
        #expect(m.read(mmap + 72 + 4, as: UInt64.self) == 4 * GiB)
        #expect(m.read(mmap + 72 + 12, as: UInt64.self) == 2 * GiB)
        #expect(m.read(mmap + 72 + 20, as: UInt32.self) == 1)
    }

    @Test("multiboot modules stay below 4 GiB: the info structure holds 32-bit addresses")
    func multibootModulesBelow4GiB() throws {
        // A kernel whose last segment ends at 3 GiB: the next free RAM after it is at 4 GiB.
        let kernel = ELFFile(is64: false, machine: 3, entry: 0x100000, segments: [
            .init(at: 0x100000, [0xF4]), .init(at: 0xBFFF_F000, [0x90], memorySize: 0x1000),
        ], blob: multibootHeader(flags: 0x3))
        var options = LoadOptions()
        options.modules = [([UInt8](repeating: 0xAA, count: 16), "m")]
        #expect(throws: ImageError.doesNotFit(
            "no room in guest RAM below 4 GiB for the module 1 (16 bytes) beside the image; give the guest more --mem")) {
            try load(kernel.bytes, name: "k.elf", ram: 5 * GiB, options: options)
        }
        // Without modules it loads, its info structure low.
        let (_, plan) = try load(kernel.bytes, name: "k.elf", ram: 5 * GiB)
        #expect(plan.initialState(cpu: 0, of: 1)[.rbx] == 0x1000)
    }

    @Test("multiboot info never covers the kernel, even when the kernel sits low")
    func multibootLowKernel() throws {
        let kernel = ELFFile(is64: false, machine: 3, entry: 0x1000,
                             segments: [.init(at: 0x1000, [0xF4], memorySize: 0x2000)], blob: multibootHeader(flags: 0x3))
        let (_, plan) = try load(kernel.bytes, name: "k.elf")
        let s = plan.initialState(cpu: 0, of: 1)
        #expect(s[.rbx] >= 0x3000, "info at 0x\(String(s[.rbx], radix: 16))")
        #expect(s.gdtr.base >= 0x3000, "GDT at 0x\(String(s.gdtr.base, radix: 16))")
    }

    @Test("multiboot a.out kludge: loaded through the header's addresses, bss zeroed")
    func aout() throws {
        let image = aoutKernel()
        let (m, plan) = try load(image, name: "k.bin") { m in m.write(0x100000 + 132, UInt64.max) }
        #expect(m.bytes(at: 0x100000, count: image.count) == image)
        #expect(m.bytes(at: 0x100000 + 132, count: 0x1000).allSatisfy { $0 == 0 })
        #expect(plan.initialState(cpu: 0, of: 1).rip == 0x100000 + 32)

        // load_end_addr 0: the rest of the file. The header may sit after the load start.
        var tail = [UInt8](repeating: 0x90, count: 16) + aoutKernel(loadAddress: 0x200000, headerAddress: 0x200010)
        tail.put32(0, at: 16 + 20)
        tail.put32(0, at: 16 + 24)
        let (m2, plan2) = try load(tail, name: "k.bin")
        #expect(m2.bytes(at: 0x200000, count: tail.count) == tail)
        #expect(plan2.initialState(cpu: 0, of: 1).rip == 0x200000 + 32)
    }

    @Test("elf64: segments at their physical addresses, entry moved with its segment")
    func elf64Segments() throws {
        let elf = ELFFile(is64: true, machine: 62, entry: 0xFFFF_FFFF_8020_0010, segments: [
            .init(at: 0x200000, [UInt8](repeating: 0x90, count: 0x20), memorySize: 0x1000, virtualAddress: 0xFFFF_FFFF_8020_0000),
            .init(at: 0x400000, [1, 2, 3, 4], memorySize: 0x100),
        ])
        let (m, plan) = try load(elf.bytes, name: "k.elf") { m in m.write(0x400004, UInt32.max) }
        #expect(m.bytes(at: 0x200000, count: 0x20).allSatisfy { $0 == 0x90 })
        #expect(m.bytes(at: 0x400000, count: 8) == [1, 2, 3, 4, 0, 0, 0, 0])
        #expect(plan.initialState(cpu: 0, of: 1).rip == 0x200010)
    }

    @Test("elf64: long-mode state, per-CPU registers, GDT and TSS")
    func elf64State() throws {
        let (m, plan) = try load(elf64().bytes, name: "k.elf", ram: 64 * GiB)
        #expect(plan.format == .elf64)
        #expect(plan.startsAllCPUs)
        for cpu in 0..<4 {
            let s = plan.initialState(cpu: cpu, of: 4)
            #expect(s[.rdi] == UInt64(cpu))
            #expect(s[.rsi] == 4)
            #expect(s[.rdx] == 64 * GiB)
            #expect(s[.rsp] == 0)
            #expect(s.rip == 0x200000)
        }
        let s = plan.initialState(cpu: 0, of: 1)
        #expect(s.mode == .long64)
        #expect(s.cs.long && !s.cs.defaultBig && s.cs.dpl == 0 && s.cs.selector == 0x08)
        #expect(s.ds.selector == 0x10 && s.ss.selector == 0x10)
        #expect(s.cr0 & CR0.pg != 0 && s.cr0 & CR0.pe != 0)
        #expect(s.cr4 & CR4.pae != 0)
        #expect(s.efer & EFER.lma != 0 && s.efer & EFER.lme != 0)
        #expect(!s.interruptsEnabled)
        #expect(s.gdtr.limit == 0x27)
        #expect(m.read(s.gdtr.base + 8, as: UInt64.self) == 0x00AF_9A00_0000_FFFF)
        #expect(m.read(s.gdtr.base + 16, as: UInt64.self) == 0x00CF_9200_0000_FFFF)
        #expect(s.tr.selector == 0x18 && s.tr.base == s.gdtr.base + 0x100 && s.tr.limit == 0x67)
        let tss = m.read(s.gdtr.base + 24, as: UInt64.self)
        #expect(tss & 0xFFFF == 0x67 && (tss >> 40) & 0xFF == 0x89)
        #expect((tss >> 16) & 0xFF_FFFF | (tss >> 56) << 24 == s.tr.base)
    }

    @Test("elf64: identity page tables with 2 MiB pages up to the end of RAM",
          arguments: [(128 * MiB, 4 * GiB), (64 * GiB, 65 * GiB)])
    func identityMap(ram: UInt64, mappedEnd: UInt64) throws {
        let (m, plan) = try load(elf64().bytes, name: "k.elf", ram: ram)
        let cr3 = plan.initialState(cpu: 0, of: 1).cr3
        #expect(cr3 == 0x1000, "the tables start in the lowest free RAM")

        /// The 2 MiB page `address` is in, or nil where the walk stops at a non-present entry.
        func walk(_ address: UInt64) -> UInt64? {
            let pml4e = m.read(cr3 + ((address >> 39) & 511) * 8, as: UInt64.self)
            guard pml4e & 1 != 0 else { return nil }
            #expect(pml4e & 0x2 != 0)
            let pdpte = m.read((pml4e & 0x000F_FFFF_FFFF_F000) + ((address >> 30) & 511) * 8, as: UInt64.self)
            guard pdpte & 1 != 0 else { return nil }
            #expect(pdpte & 0x80 == 0, "no 1 GiB pages: this host's CPUID does not offer them")
            let pde = m.read((pdpte & 0x000F_FFFF_FFFF_F000) + ((address >> 21) & 511) * 8, as: UInt64.self)
            guard pde & 1 != 0 else { return nil }
            #expect(pde & 0x80 != 0, "a 2 MiB page")
            #expect(pde & 0x2 != 0, "writable")
            return pde & 0x000F_FFFF_FFE0_0000
        }
        var addresses: [UInt64] = [0, 0x1234, 0x200000, 0xB8000, 3 * GiB + 5, 0xFEE0_0000, 4 * GiB - 1, mappedEnd - 2 * MiB, mappedEnd - 1]
        if mappedEnd > 4 * GiB { addresses += [4 * GiB, 33 * GiB + 0x1234_5678] }
        for address in addresses {
            #expect(walk(address) == address & ~(2 * MiB - 1), "0x\(String(address, radix: 16))")
        }
        #expect(walk(mappedEnd) == nil)
        let tablesEnd = plan.placements.first { $0.0 == "page tables end" }!.1
        #expect(tablesEnd <= 0x200000, "the tables stay clear of the image")
    }

    @Test("elf64: the loader's tables go around a segment in low memory")
    func elf64LowSegment() throws {
        let elf = ELFFile(is64: true, machine: 62, entry: 0x1000, segments: [.init(at: 0x1000, [0xF4], memorySize: 0x3000)])
        let (m, plan) = try load(elf.bytes, name: "k.elf")
        let s = plan.initialState(cpu: 0, of: 1)
        #expect(s.cr3 == 0x4000)
        #expect(s.gdtr.base >= 0x4000)
        #expect(m.read(0x1000, as: UInt8.self) == 0xF4)
    }
}

/// A file shaped like a bzImage: a boot sector and `setupSectors` of setup code with the
/// setup header (boot protocol `version`), then `kernelSize` bytes of "protected-mode
/// kernel" (a byte pattern). Defaults as Debian 12's kernel has them.
func syntheticBzImage(version: UInt16 = 0x020F, xloadflags: UInt16 = 0x7F, setupSectors: UInt8 = 4, kernelSize: Int = 0x3000,
                      preferredAddress: UInt64 = 0x100_0000, initSize: UInt32 = 0x40_0000, relocatable: Bool = true,
                      alignment: UInt32 = 0x20_0000, initrdAddressMax: UInt32 = 0x7FFF_FFFF, commandLineSize: UInt32 = 2047) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: (Int(setupSectors) + 1) * 512)
    func set<T: FixedWidthInteger>(_ v: T, _ offset: Int) {
        for i in 0..<(T.bitWidth / 8) { b[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
    b[0x1F1] = setupSectors
    set(UInt16(0xAA55), 0x1FE)
    b[0x200] = 0xEB; b[0x201] = 0x6A   // jmp over the header: it ends at 0x26C
    set(UInt32(0x5372_6448), 0x202)      // "HdrS"
    set(version, 0x206)
    b[0x211] = 0x01                      // LOADED_HIGH
    set(UInt32(0x10_0000), 0x214)
    set(initrdAddressMax, 0x22C)
    set(alignment, 0x230)
    b[0x234] = relocatable ? 1 : 0
    b[0x235] = 21
    set(xloadflags, 0x236)
    set(commandLineSize, 0x238)
    set(preferredAddress, 0x258)
    set(initSize, 0x260)
    return b + (0..<kernelSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
}

/// The e820 table of the zero page at `zp` (an unknown type reads as reserved).
private func zeroPageE820(_ m: GuestMemoryMap, _ zp: UInt64) -> [MemoryMapEntry] {
    let count = Int(m.read(zp + 0x1E8, as: UInt8.self))
    return (0..<count).map { (i: Int) -> MemoryMapEntry in
        let entry = zp + 0x2D0 + UInt64(20 * i)
        let type = m.read(entry + 16, as: UInt32.self)
        return MemoryMapEntry(start: m.read(entry, as: UInt64.self), length: m.read(entry + 8, as: UInt64.self),
                              kind: MemoryMapEntry.Kind(rawValue: type) ?? .reserved)
    }
}

@Suite("Linux boot protocol")
struct LinuxLoaderTests {
    let initrd: [UInt8] = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }

    func options(commandLine: String = "console=ttyS0 quiet", initrd: [UInt8]? = nil, cpus: Int = 1) -> LoadOptions {
        var o = LoadOptions()
        o.commandLine = commandLine
        o.initrd = initrd
        o.cpuCount = cpus
        return o
    }

    @Test("a HdrS setup header makes the image linux")
    func detection() throws {
        #expect(try ImageFormat.detect(syntheticBzImage(), name: "vmlinuz") == .linux)
        #expect(try ImageFormat.detect(syntheticBzImage(version: 0x0200), name: "vmlinuz") == .linux)
        var noMagic = syntheticBzImage()
        noMagic[0x202] = 0
        #expect(try ImageFormat.detect(noMagic, name: "vmlinuz") != .linux)
    }

    @Test("the kernel at pref_address, the zero page, command line, initrd, e820 and the 64-bit entry")
    func layout() throws {
        let image = syntheticBzImage()
        let (m, plan) = try load(image, name: "vmlinuz", ram: 256 * MiB, options: options(initrd: initrd, cpus: 4))
        #expect(plan.format == .linux)
        #expect(!plan.startsAllCPUs, "the kernel starts its APs with INIT/SIPI")
        let kernel = Array(image[(5 * 512)...])
        #expect(m.bytes(at: 0x100_0000, count: kernel.count) == kernel)
        let s = plan.initialState(cpu: 0, of: 4)
        #expect(s.rip == 0x100_0200, "the 64-bit entry: load address + 0x200")
        #expect(s.mode == .long64 && !s.interruptsEnabled)
        #expect(s.cs.selector == 0x10 && s.cs.long && s.ds.selector == 0x18 && s.ss.selector == 0x18 && s.es.selector == 0x18)
        #expect(m.read(s.gdtr.base + 0x10, as: UInt64.self) == 0x00AF_9A00_0000_FFFF, "__BOOT_CS")
        #expect(m.read(s.gdtr.base + 0x18, as: UInt64.self) == 0x00CF_9200_0000_FFFF, "__BOOT_DS")
        #expect(s.tr.selector == 0x20 && s.gdtr.limit == 0x2F)

        let zp = s[.rsi]
        #expect(zp != 0 && zp % 0x1000 == 0 && zp < 0x10_0000)
        // The setup header copied, with the loader's fields filled in.
        let header = m.bytes(at: zp + 0x1F1, count: 0x26C - 0x1F1)
        for offset in 0x1F1..<0x26C where !(0x1FA..<0x1FC).contains(offset) && !(0x210..<0x218).contains(offset)
            && !(0x218..<0x220).contains(offset) && !(0x228..<0x22C).contains(offset) {
            #expect(header[offset - 0x1F1] == image[offset], "setup header byte \(String(offset, radix: 16))")
        }
        #expect(m.read(zp + 0x1FA, as: UInt16.self) == 0xFFFF, "vid_mode normal")
        #expect(m.read(zp + 0x210, as: UInt8.self) == 0xFF, "type_of_loader: undefined")
        #expect(m.read(zp + 0x211, as: UInt8.self) & 1 == 1, "LOADED_HIGH")
        #expect(m.read(zp + 0x214, as: UInt32.self) == 0x100_0000, "code32_start")
        #expect(string(m, at: UInt64(m.read(zp + 0x228, as: UInt32.self))) == "console=ttyS0 quiet")
        let ramdisk = UInt64(m.read(zp + 0x218, as: UInt32.self))
        #expect(m.read(zp + 0x21C, as: UInt32.self) == UInt32(initrd.count))
        #expect(ramdisk % 0x1000 == 0 && ramdisk + UInt64(initrd.count) <= 256 * MiB && ramdisk + UInt64(initrd.count) > 256 * MiB - 0x2000,
                "the initrd as high as it fits")
        #expect(m.bytes(at: ramdisk, count: initrd.count) == initrd)
        #expect(m.read(zp + 0x070, as: UInt64.self) == FirmwareTables.rsdpAddress, "acpi_rsdp_addr")
        // e820: the memory map, with the firmware tables' range reserved.
        let e820 = zeroPageE820(m, zp)
        #expect(e820 == plan.memoryMap)
        #expect(e820.contains(MemoryMapEntry(start: 0xE_0000, length: 0x2_0000, kind: .reserved)))
        let total: UInt64 = e820.reduce(0) { $0 + $1.length }
        #expect(total == 256 * MiB)
    }

    @Test("RAM above 3 GiB: e820 has the hole, the initrd stays below it and under initrd_addr_max")
    func highMemory() throws {
        let (m, plan) = try load(syntheticBzImage(initrdAddressMax: 0x3FFF_FFFF), name: "vmlinuz", ram: 5 * GiB,
                                 options: options(initrd: initrd))
        let zp = plan.initialState(cpu: 0, of: 1)[.rsi]
        let ramdisk = UInt64(m.read(zp + 0x218, as: UInt32.self))
        #expect(ramdisk + UInt64(initrd.count) <= 0x4000_0000 && ramdisk >= 0x4000_0000 - 0x4000)
        let e820 = zeroPageE820(m, zp)
        #expect(e820 == plan.memoryMap)
        #expect(e820.last?.start == 4 * GiB, "RAM above the hole starts at 4 GiB")
        #expect(plan.memoryMap.last?.end == 6 * GiB)
    }

    @Test("a relocatable kernel moves to an aligned address from 1 MiB when pref_address does not fit; a fixed one does not fit")
    func relocation() throws {
        let (m, plan) = try load(syntheticBzImage(initSize: 0x80_0000), name: "vmlinuz", ram: 16 * MiB, options: options())
        #expect(plan.initialState(cpu: 0, of: 1).rip == 0x20_0200, "2 MiB: the first kernel_alignment boundary above 1 MiB")
        #expect(m.read(0x20_0000, as: UInt8.self) == 3)
        #expect(loadError(syntheticBzImage(initSize: 0x80_0000, relocatable: false), name: "vmlinuz", ram: 16 * MiB) == .doesNotFit(
            "vmlinuz is not relocatable and needs 8 MiB of RAM at 0x1000000 (--mem is 16 MiB)"))
    }

    @Test("too old, 32-bit-only, truncated or malformed kernels: one line each (status 201)")
    func malformed() {
        #expect(loadError(syntheticBzImage(version: 0x020B), name: "old") == .malformed(
            "old uses Linux boot protocol 2.11; Tandem needs 2.12 or later (a 64-bit entry point)"))
        #expect(loadError(syntheticBzImage(version: 0x0204), name: "old") == .malformed(
            "old uses Linux boot protocol 2.04; Tandem needs 2.12 or later (a 64-bit entry point)"))
        #expect(loadError(syntheticBzImage(xloadflags: 0), name: "k32") == .malformed(
            "k32 is a Linux kernel without a 64-bit entry point (xloadflags bit 0 clear): Tandem boots 64-bit kernels"))
        #expect(loadError(Array(syntheticBzImage(setupSectors: 30).prefix(0x1000)), name: "cut") == .malformed(
            "cut is truncated: its setup code is 15872 bytes, the file has 4096"))
        #expect(loadError(syntheticBzImage(alignment: 0x30_0000), name: "odd") == .malformed(
            "odd: kernel_alignment 0x300000 is not a power of two"))
        #expect(loadError(bootSector([0xF4]), name: "boot.img", as: .linux) == .malformed(
            "boot.img is not a Linux kernel: no boot flag 0xAA55 and \"HdrS\" setup header at offset 0x1FE"))
    }

    @Test("a command line over cmdline_size or an initrd that does not fit: status 202")
    func doesNotFit() throws {
        let long = String(repeating: "x", count: 300)
        #expect(throws: ImageError.doesNotFit("the kernel command line is 300 bytes; vmlinuz takes at most 255")) {
            try load(syntheticBzImage(commandLineSize: 255), name: "vmlinuz", options: options(commandLine: long))
        }
        #expect(throws: ImageError.doesNotFit("the initrd (16384 KiB) does not fit in guest RAM below 0x1400000 beside the kernel; give the guest more --mem")) {
            try load(syntheticBzImage(), name: "vmlinuz", ram: 20 * MiB, options: options(initrd: [UInt8](repeating: 1, count: 16 << 20)))
        }
    }
}
