/// Builds runnable images that load a register state and run an instruction sequence:
/// an ELF64 (user64, long64), a Multiboot a.out-kludge kernel (prot32) or a boot image
/// (real16). Every exception vector lands on its own `hlt`, so where a run stops says
/// which exception (if any) ended it.
struct FuzzSandbox {
    let mode: FuzzMode

    /// Where the image is loaded.
    var base: UInt64 {
        switch mode {
        case .user64, .long64: 0x20_0000
        case .prot32: 0x10_0000
        case .real16: 0x7C00
        }
    }
    /// Offsets inside the image.
    static let handlers: UInt64 = 0x800      // 32 vectors × 16 bytes, a hlt each
    static let gdt: UInt64 = 0x1000
    static let tss: UInt64 = 0x1100
    static let idt: UInt64 = 0x1200
    static let stateBlock: UInt64 = 0x2000   // 16 registers + flags
    static let pml4: UInt64 = 0x3000
    static let pdpt: UInt64 = 0x4000
    static let pd: UInt64 = 0x5000
    static let data: UInt64 = 0x6000         // the data page the sequence works on
    static let records: UInt64 = 0x7000      // RFLAGS after each instruction, 8 bytes each
    static let maxRecords = 64
    static let userStack: UInt64 = 0x7800
    static let kernelStack: UInt64 = 0x9000
    static let size = 0x9000
    /// user64: the MMX/SSE state loaded before the sequence (XMM0-15, MM0-7, MXCSR) and
    /// where it is stored after it (FuzzSSE.swift).
    static let vectorState: UInt64 = 0x8200
    static let vectorDump: UInt64 = 0x8400
    static let vectorStateSize = 16 * 16 + 8 * 8 + 8

    /// The image for `sequence` starting from `registers` (RAX...R15) and `flags`, with
    /// `dataBytes` (4 KiB) in the data page.
    func image(sequence: [UInt8], registers: [UInt64], flags: UInt64, dataBytes: [UInt8], vectorState: [UInt8] = []) -> [UInt8] {
        var img = [UInt8](repeating: 0, count: Self.size)
        func put(_ offset: UInt64, _ bytes: [UInt8]) { img.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes) }
        let le = Self.le
        for v in 0..<32 { put(Self.handlers + UInt64(v) * 16, [0xF4]) }
        put(Self.data, dataBytes)
        for (i, r) in registers.enumerated() { put(Self.stateBlock + UInt64(i) * 8, le(r, 8)) }
        put(Self.stateBlock + 128, le(flags, 8))
        let code: [UInt8]
        switch mode {
        case .user64, .long64:
            // GDT: null, code64 0x08, data 0x10, user code64 0x18, user data 0x20, TSS 0x28.
            let tss = base + Self.tss
            let tssLow: UInt64 = 0x67 | (tss & 0xFFFF) << 16 | ((tss >> 16) & 0xFF) << 32 | 0x89 << 40 | ((tss >> 24) & 0xFF) << 56
            for (i, d) in [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00AF_FB00_0000_FFFF, 0x00CF_F300_0000_FFFF, tssLow, tss >> 32].enumerated() {
                put(Self.gdt + UInt64(i * 8), le(UInt64(d), 8))
            }
            put(Self.gdt + 0x40, le(0x37, 2) + le(base + Self.gdt, 8))          // GDTR
            put(Self.tss + 4, le(base + Self.kernelStack, 8))                      // RSP0
            for v in 0..<32 {
                let handler = base + Self.handlers + UInt64(v) * 16
                let low: UInt64 = handler & 0xFFFF | 0x08 << 16 | 0x8E << 40 | (handler >> 16 & 0xFFFF) << 48
                put(Self.idt + UInt64(v) * 16, le(low, 8) + le(handler >> 32, 8))
            }
            put(Self.idt + 0x200, le(0x1FF, 2) + le(base + Self.idt, 8))          // IDTR
            // Page tables: 0-2 MiB supervisor, 2-4 MiB (this image) user.
            put(Self.pml4, le(base + Self.pdpt | 7, 8))
            put(Self.pdpt, le(base + Self.pd | 7, 8))
            put(Self.pd, le(0x83, 8) + le(0x20_0000 | 0x87, 8))
            var c: [UInt8] = []
            c += [0x48, 0xBC] + le(base + Self.kernelStack, 8)                     // mov rsp, kernel stack
            c += [0x48, 0xB8] + le(base + Self.gdt + 0x40, 8) + [0x0F, 0x01, 0x10] // lgdt [rax]
            c += [0x48, 0xB8] + le(base + Self.idt + 0x200, 8) + [0x0F, 0x01, 0x18] // lidt [rax]
            c += [0x48, 0xB8] + le(base + Self.pml4, 8) + [0x0F, 0x22, 0xD8]       // mov cr3, rax
            c += [0x66, 0xB8, 0x28, 0x00, 0x0F, 0x00, 0xD8]                        // ltr 0x28
            if !vectorState.isEmpty {
                // CR4.OSFXSR | OSXMMEXCPT: SSE enabled, unmasked SIMD exceptions are #XM.
                c += [0x0F, 0x20, 0xE0, 0x48, 0x0D, 0x00, 0x06, 0x00, 0x00, 0x0F, 0x22, 0xE0]
            }
            var load: [UInt8] = [0x48, 0xB8] + le(base + Self.stateBlock, 8)       // mov rax, state block
            for r in 1..<16 where r != 4 {
                let rex: UInt8 = 0x48 | (r >= 8 ? 4 : 0)
                load += [rex, 0x8B, 0x40 | UInt8(r & 7) << 3, UInt8(r * 8)]        // mov r, [rax + 8r]
            }
            load += [0x48, 0x8B, 0x00]                                             // mov rax, [rax]
            if mode == .user64 {
                // User data selectors in DS/ES/FS/GS, so the IRETQ to CPL 3 keeps them
                // (it nulls data segments more privileged than the new CPL).
                c += [0x66, 0xB8, 0x23, 0x00, 0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xE0, 0x8E, 0xE8]
                let start = base + UInt64(c.count) + 5 * 5 + UInt64(load.count) + 2
                c += [0x68] + le(0x23, 4)                                          // ss
                c += [0x68] + le(base + Self.userStack, 4)                         // rsp
                // IF set: PVM runs CPL 3 code with interrupts enabled whatever the guest's
                // IF, and PUSHF there shows it (Documentation/HostLimitations.md).
                c += [0x68] + le(flags & 0xFFFF_FFFF | 0x200, 4)                   // rflags
                c += [0x68] + le(0x1B, 4)                                          // cs
                c += [0x68] + le(start, 4)                                         // rip
                c += load + [0x48, 0xCF]                                           // iretq to CPL 3
            } else {
                c += [0x68] + le(flags & 0xFFFF_FFFF, 4) + [0x9D]                  // popfq
                c += [0x48, 0xBC] + le(base + Self.userStack, 8)                   // rsp: the same stack as user64
                c += load
            }
            code = c
        case .prot32:
            // Multiboot header (a.out kludge) at the start; GDT: null, code 0x08, data 0x10.
            let header = le(0x1BAD_B002, 4) + le(0x0001_0003, 4) + le(UInt64(UInt32(bitPattern: -Int32(bitPattern: 0x1BAD_B002 &+ 0x0001_0003))), 4)
                + le(base, 4) + le(base, 4) + le(base + UInt64(Self.size), 4) + le(base + UInt64(Self.size), 4) + le(base + 0x20, 4)
            put(0, header)
            for (i, d) in [UInt64(0), 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF].enumerated() { put(Self.gdt + UInt64(i * 8), le(d, 8)) }
            put(Self.gdt + 0x40, le(0x17, 2) + le(base + Self.gdt, 4))
            for v in 0..<32 {
                let handler = base + Self.handlers + UInt64(v) * 16
                put(Self.idt + UInt64(v) * 8, le(handler & 0xFFFF | 0x08 << 16 | 0x8E << 40 | (handler >> 16 & 0xFFFF) << 48, 8))
            }
            put(Self.idt + 0x200, le(0xFF, 2) + le(base + Self.idt, 4))
            var c: [UInt8] = [0xBC] + le(base + Self.kernelStack, 4)              // mov esp
            c += [0x0F, 0x01, 0x15] + le(base + Self.gdt + 0x40, 4)                // lgdt
            c += [0x0F, 0x01, 0x1D] + le(base + Self.idt + 0x200, 4)               // lidt
            c += [0x68] + le(flags & 0xFFFF_FFFF, 4) + [0x9D]                      // popfd
            c += [0xBC] + le(base + Self.userStack, 4)                             // the sequence's stack
            for r in 1..<8 where r != 4 {
                c += [0x8B, 0x05 | UInt8(r) << 3] + le(base + Self.stateBlock + UInt64(r * 8), 4)
            }
            c += [0xA1] + le(base + Self.stateBlock, 4)                            // mov eax
            code = [UInt8](repeating: 0x90, count: 0x20) + c                       // after the header
        case .real16:
            // The IDT register points at a real-mode vector table inside the image.
            for v in 0..<32 { put(Self.idt + UInt64(v) * 4, le(base + Self.handlers + UInt64(v) * 16, 2) + [0, 0]) }
            put(Self.idt + 0x200, le(0x7F, 2) + le(base + Self.idt, 4))
            var c: [UInt8] = [0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0]  // cli; ds = es = ss = 0
            c += [0xBC] + le(base + Self.userStack, 2)                             // below 64 KiB
            c += [0x0F, 0x01, 0x1E] + le(base + Self.idt + 0x200, 2)               // lidt
            c += [0x68] + le(flags & 0xFFFF, 2) + [0x9D]                           // popf
            for r in 1..<8 where r != 4 {
                c += [0x66, 0x8B, 0x06 | UInt8(r) << 3] + le(base + Self.stateBlock + UInt64(r * 8), 2)
            }
            c += [0x66, 0xA1] + le(base + Self.stateBlock, 2)
            code = c
        }
        var all = code + sequence + [0xF4]
        if !vectorState.isEmpty {
            put(Self.vectorState, vectorState)
            all = code + vectorTransfer(load: true) + sequence + vectorTransfer(load: false) + [0xF4]
        }
        if mode == .prot32 { all.replaceSubrange(0..<0x20, with: img[0..<0x20]) }
        precondition(all.count <= Int(Self.handlers), "sequence too long for the sandbox")
        put(0, all)
        if mode == .user64 || mode == .long64 { return elf64(img) }
        return img
    }

    /// After the instruction numbered `index`: clears the RFLAGS bits it left undefined (in
    /// RFLAGS itself, so no later instruction, exception frame or final state depends on
    /// them), then stores RFLAGS in record `index`, which the memory comparison covers: every
    /// flag the instruction defines is compared, whatever the instructions after it do.
    func flagRecord(index: Int, undefinedFlags: UInt64) -> [UInt8] {
        precondition(index < Self.maxRecords, "too many instructions for the flag records")
        let address = base + Self.records + UInt64(index) * 8
        let le = Self.le
        var out: [UInt8] = []
        switch mode.bits {
        case 64:
            if undefinedFlags != 0 { out += [0x9C, 0x48, 0x81, 0x24, 0x24] + le(~undefinedFlags, 4) + [0x9D] }   // pushfq; and qword [rsp], ~u; popfq
            out += [0x9C, 0x8F, 0x04, 0x25] + le(address, 4)                                                       // pushfq; pop qword [address]
        case 32:
            if undefinedFlags != 0 { out += [0x9C, 0x81, 0x24, 0x24] + le(~undefinedFlags, 4) + [0x9D] }
            out += [0x9C, 0x8F, 0x05] + le(address, 4)
        default:
            if undefinedFlags != 0 { out += [0x9C, 0x67, 0x81, 0x24, 0x24] + le(~undefinedFlags, 2) + [0x9D] }   // and word [esp], ~u
            out += [0x9C, 0x8F, 0x06] + le(address, 2)
        }
        return out
    }

    /// At CPL 3 (KVM runs it natively, so no KVM_GET_FPU is needed): MOVDQU XMM0-15, MOVQ
    /// MM0-7 and LDMXCSR from the state area (`load`), or the same stores to the dump area
    /// and EMMS. Absolute [disp32] addresses, so no register is involved.
    func vectorTransfer(load: Bool) -> [UInt8] {
        let area = base + (load ? Self.vectorState : Self.vectorDump)
        let le = Self.le
        var out: [UInt8] = []
        for i in 0..<16 {
            out += [0xF3] + (i >= 8 ? [0x44] : []) + [0x0F, load ? 0x6F : 0x7F, 0x04 | UInt8(i & 7) << 3, 0x25] + le(area + UInt64(i * 16), 4)
        }
        for i in 0..<8 {
            out += [0x0F, load ? 0x6F : 0x7F, 0x04 | UInt8(i) << 3, 0x25] + le(area + 256 + UInt64(i * 8), 4)
        }
        out += [0x0F, 0xAE, load ? 0x14 : 0x1C, 0x25] + le(area + 320, 4)
        if !load { out += [0x0F, 0x77] }
        return out
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    /// Wraps the image in an ELF64 executable with one PT_LOAD at `base`.
    func elf64(_ body: [UInt8]) -> [UInt8] {
        let le = Self.le
        var h: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += le(2, 2) + le(62, 2) + le(1, 4) + le(base, 8) + le(64, 8) + le(0, 8) + le(0, 4)
        h += le(64, 2) + le(56, 2) + le(1, 2) + le(64, 2) + le(0, 2) + le(0, 2)
        let offset: UInt64 = 0x1000
        h += le(1, 4) + le(7, 4) + le(offset, 8) + le(base, 8) + le(base, 8) + le(UInt64(body.count), 8) + le(UInt64(body.count), 8) + le(0x1000, 8)
        h += [UInt8](repeating: 0, count: Int(offset) - h.count)
        return h + body
    }

}
