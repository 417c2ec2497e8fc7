import Machine

/// MMX and SSE..SSE4.2 for `tandem fuzz --mode user64`: the forms, generated with XMM and
/// MXCSR state that KVM runs natively at CPL 3 (this machine's CPU is the oracle).
///
/// The sandbox (FuzzSandbox) loads XMM0-15 and MXCSR at CPL 3 before the sequence, from
/// `vectorState`, and stores them after it to the dump area, which the memory comparison
/// covers; so no KVM_GET_FPU is needed, and a sequence that faults (#XM, #GP for a
/// misaligned operand) compares its exception and the memory it wrote so far.
struct SSEFuzzEntry: Sendable {
    enum Shape: Sendable {
        /// xmm, xmm/m (memSize bytes)
        case xx
        /// xmm, xmm/m, imm8
        case xxImm
        /// mm, mm/m64
        case mm
        /// mm, mm/m64, imm8
        case mmImm
        /// xmm, r/m32|64 (REX.W random)
        case xFromGPR
        /// r32|64, xmm/m (a general-register destination)
        case gprFromX
        /// r32, xmm (register only), imm8 or not
        case gprFromXReg(imm: Bool)
        /// r/m (memSize), xmm, imm8: PEXTRx/EXTRACTPS
        case extract
        /// xmm, r32/m (memSize), imm8: PINSRx
        case insert
        /// xmm/m, xmm (stores)
        case store
        /// shift groups: 0F 71/72/73 /digit xmm or mm, imm8
        case shiftImm(digit: UInt8, mmx: Bool)
        /// crc32 r32|64, r/m
        case crc32
        /// maskmovq/maskmovdqu: register only, writes [rdi]
        case maskmov(mmx: Bool)
        /// 0F AE /digit with an aligned memory operand: FXSAVE, FXRSTOR (REX.W random),
        /// LDMXCSR, STMXCSR
        case state(digit: UInt8)
    }
    var prefix: UInt8      // 0, 0x66, 0xF3, 0xF2
    var opcode: [UInt8]    // after 0F: [op], [0x38, op] or [0x3A, op]
    var mnemonic: String
    var shape: Shape
    var memSize: Int = 16
    /// A 16-byte memory operand must be aligned (legacy SSE rule).
    var aligned: Bool = true
}

enum SSEFuzzTable {
    static let entries: [SSEFuzzEntry] = build()

    private static func build() -> [SSEFuzzEntry] {
        var t: [SSEFuzzEntry] = []
        func x(_ p: UInt8, _ op: [UInt8], _ m: String, _ size: Int = 16, aligned: Bool = true) {
            t.append(SSEFuzzEntry(prefix: p, opcode: op, mnemonic: m, shape: .xx, memSize: size, aligned: aligned))
        }
        func xi(_ p: UInt8, _ op: [UInt8], _ m: String, _ size: Int = 16, aligned: Bool = true) {
            t.append(SSEFuzzEntry(prefix: p, opcode: op, mnemonic: m, shape: .xxImm, memSize: size, aligned: aligned))
        }
        // Floating point, the four prefixes: ps pd ss sd.
        let fourWay: [(UInt8, String)] = [(0x51, "sqrt"), (0x58, "add"), (0x59, "mul"), (0x5C, "sub"), (0x5D, "min"), (0x5E, "div"), (0x5F, "max")]
        for (op, m) in fourWay {
            x(0, [op], m + "ps"); x(0x66, [op], m + "pd"); x(0xF3, [op], m + "ss", 4); x(0xF2, [op], m + "sd", 8)
        }
        x(0, [0x52], "rsqrtps"); x(0xF3, [0x52], "rsqrtss", 4); x(0, [0x53], "rcpps"); x(0xF3, [0x53], "rcpss", 4)
        for (op, m) in [(UInt8(0x54), "and"), (0x55, "andn"), (0x56, "or"), (0x57, "xor"), (0x14, "unpckl"), (0x15, "unpckh")] {
            x(0, [op], m + "ps"); x(0x66, [op], m + "pd")
        }
        xi(0, [0xC2], "cmpps"); xi(0x66, [0xC2], "cmppd"); xi(0xF3, [0xC2], "cmpss", 4); xi(0xF2, [0xC2], "cmpsd", 8)
        xi(0, [0xC6], "shufps"); xi(0x66, [0xC6], "shufpd")
        x(0, [0x2E], "ucomiss", 4); x(0x66, [0x2E], "ucomisd", 8); x(0, [0x2F], "comiss", 4); x(0x66, [0x2F], "comisd", 8)
        x(0, [0x5A], "cvtps2pd", 8); x(0x66, [0x5A], "cvtpd2ps"); x(0xF3, [0x5A], "cvtss2sd", 4); x(0xF2, [0x5A], "cvtsd2ss", 8)
        x(0, [0x5B], "cvtdq2ps"); x(0x66, [0x5B], "cvtps2dq"); x(0xF3, [0x5B], "cvttps2dq")
        x(0x66, [0xE6], "cvttpd2dq"); x(0xF3, [0xE6], "cvtdq2pd", 8); x(0xF2, [0xE6], "cvtpd2dq")
        x(0x66, [0x7C], "haddpd"); x(0xF2, [0x7C], "haddps"); x(0x66, [0x7D], "hsubpd"); x(0xF2, [0x7D], "hsubps")
        x(0x66, [0xD0], "addsubpd"); x(0xF2, [0xD0], "addsubps")
        x(0xF3, [0x12], "movsldup"); x(0xF3, [0x16], "movshdup"); x(0xF2, [0x12], "movddup", 8)
        // Moves (loads).
        x(0, [0x10], "movups", aligned: false); x(0x66, [0x10], "movupd", aligned: false); x(0xF3, [0x10], "movss", 4); x(0xF2, [0x10], "movsd", 8)
        x(0, [0x28], "movaps"); x(0x66, [0x28], "movapd"); x(0x66, [0x6F], "movdqa"); x(0xF3, [0x6F], "movdqu", aligned: false)
        x(0xF3, [0x7E], "movq", 8)
        // Stores.
        for (p, op, m, size, a) in [(UInt8(0), UInt8(0x11), "movups", 16, false), (0x66, 0x11, "movupd", 16, false), (0xF3, 0x11, "movss", 4, false),
                                    (0xF2, 0x11, "movsd", 8, false), (0, 0x29, "movaps", 16, true), (0x66, 0x7F, "movdqa", 16, true),
                                    (0xF3, 0x7F, "movdqu", 16, false), (0x66, 0xD6, "movq", 8, false)] {
            t.append(SSEFuzzEntry(prefix: p, opcode: [op], mnemonic: m, shape: .store, memSize: size, aligned: a))
        }
        // Packed integers: 66 = xmm, no prefix = mmx.
        let integer: [UInt8] = Array(0x60...0x6B) + [0x74, 0x75, 0x76] + Array(0xD1...0xD5) + Array(0xD8...0xDF) + Array(0xE0...0xE5)
            + Array(0xE8...0xEF) + Array(0xF1...0xF6) + Array(0xF8...0xFE)
        for op in integer {
            x(0x66, [op], "pint\(op)")
            t.append(SSEFuzzEntry(prefix: 0, opcode: [op], mnemonic: "mmx\(op)", shape: .mm, memSize: 8))
        }
        x(0x66, [0x6C], "punpcklqdq"); x(0x66, [0x6D], "punpckhqdq")
        xi(0x66, [0x70], "pshufd"); xi(0xF3, [0x70], "pshufhw"); xi(0xF2, [0x70], "pshuflw")
        t.append(SSEFuzzEntry(prefix: 0, opcode: [0x70], mnemonic: "pshufw", shape: .mmImm, memSize: 8))
        for (op, digits) in [(UInt8(0x71), [2, 4, 6]), (0x72, [2, 4, 6]), (0x73, [2, 6])] {
            for d in digits {
                t.append(SSEFuzzEntry(prefix: 0x66, opcode: [op], mnemonic: "pshift\(op)/\(d)", shape: .shiftImm(digit: UInt8(d), mmx: false)))
                t.append(SSEFuzzEntry(prefix: 0, opcode: [op], mnemonic: "mshift\(op)/\(d)", shape: .shiftImm(digit: UInt8(d), mmx: true)))
            }
        }
        t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0x73], mnemonic: "psrldq", shape: .shiftImm(digit: 3, mmx: false)))
        t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0x73], mnemonic: "pslldq", shape: .shiftImm(digit: 7, mmx: false)))
        // SSSE3.
        for op in Array(UInt8(0x00)...0x0B) + [0x1C, 0x1D, 0x1E] {
            x(0x66, [0x38, op], "ssse3-\(op)")
            t.append(SSEFuzzEntry(prefix: 0, opcode: [0x38, op], mnemonic: "ssse3mmx-\(op)", shape: .mm, memSize: 8))
        }
        xi(0x66, [0x3A, 0x0F], "palignr")
        t.append(SSEFuzzEntry(prefix: 0, opcode: [0x3A, 0x0F], mnemonic: "palignr mm", shape: .mmImm, memSize: 8))
        // SSE4.1 / SSE4.2.
        for op in [UInt8(0x10), 0x14, 0x15, 0x17, 0x28, 0x29, 0x2B] + Array(UInt8(0x37)...0x41) { x(0x66, [0x38, op], "sse4-\(op)") }
        for (op, size) in [(UInt8(0x20), 8), (0x21, 4), (0x22, 2), (0x23, 8), (0x24, 4), (0x25, 8)] {
            x(0x66, [0x38, op], "pmovsx\(op)", size); x(0x66, [0x38, op + 0x10], "pmovzx\(op)", size)
        }
        for op in [UInt8(0x08), 0x09, 0x0C, 0x0D, 0x0E, 0x40, 0x41, 0x42] { xi(0x66, [0x3A, op], "sse4i-\(op)") }
        xi(0x66, [0x3A, 0x0A], "roundss", 4); xi(0x66, [0x3A, 0x0B], "roundsd", 8); xi(0x66, [0x3A, 0x21], "insertps", 4)
        for op in [UInt8(0x60), 0x61, 0x62, 0x63] { xi(0x66, [0x3A, op], "pcmp\(op)", aligned: false) }
        // General-register forms.
        for (p, op, m, size) in [(UInt8(0xF3), UInt8(0x2A), "cvtsi2ss", 4), (0xF2, 0x2A, "cvtsi2sd", 4), (0x66, 0x6E, "movd", 4)] {
            t.append(SSEFuzzEntry(prefix: p, opcode: [op], mnemonic: m, shape: .xFromGPR, memSize: size))
        }
        for (p, op, m, size) in [(UInt8(0xF3), UInt8(0x2C), "cvttss2si", 4), (0xF3, 0x2D, "cvtss2si", 4), (0xF2, 0x2C, "cvttsd2si", 8), (0xF2, 0x2D, "cvtsd2si", 8)] {
            t.append(SSEFuzzEntry(prefix: p, opcode: [op], mnemonic: m, shape: .gprFromX, memSize: size))
        }
        for (p, op) in [(UInt8(0), UInt8(0x50)), (0x66, 0x50), (0x66, 0xD7)] {
            t.append(SSEFuzzEntry(prefix: p, opcode: [op], mnemonic: "mask\(op)", shape: .gprFromXReg(imm: false)))
        }
        t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0xC5], mnemonic: "pextrw", shape: .gprFromXReg(imm: true)))
        for (op, size) in [(UInt8(0x14), 1), (0x15, 2), (0x16, 4), (0x17, 4)] {
            t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0x3A, op], mnemonic: "extract\(op)", shape: .extract, memSize: size))
        }
        for (op, size) in [(UInt8(0x20), 1), (0x22, 4)] {
            t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0x3A, op], mnemonic: "insert\(op)", shape: .insert, memSize: size))
        }
        t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0xC4], mnemonic: "pinsrw", shape: .insert, memSize: 2))
        t.append(SSEFuzzEntry(prefix: 0xF2, opcode: [0x38, 0xF0], mnemonic: "crc32", shape: .crc32, memSize: 1))
        t.append(SSEFuzzEntry(prefix: 0xF2, opcode: [0x38, 0xF1], mnemonic: "crc32", shape: .crc32, memSize: 4))
        t.append(SSEFuzzEntry(prefix: 0x66, opcode: [0xF7], mnemonic: "maskmovdqu", shape: .maskmov(mmx: false)))
        t.append(SSEFuzzEntry(prefix: 0, opcode: [0xF7], mnemonic: "maskmovq", shape: .maskmov(mmx: true)))
        for (digit, m, size) in [(UInt8(0), "fxsave", 512), (1, "fxrstor", 512), (2, "ldmxcsr", 4), (3, "stmxcsr", 4)] {
            t.append(SSEFuzzEntry(prefix: 0, opcode: [0xAE], mnemonic: m, shape: .state(digit: digit), memSize: size))
        }
        return t
    }
}

/// Floating-point edges: zeros, denormals, infinities, NaNs (quiet and signalling), the
/// integer-conversion limits and values halfway between integers.
enum FloatEdges {
    static let singles: [UInt32] = [0, 0x8000_0000, 1, 0x8000_0001, 0x007F_FFFF, 0x0080_0000, 0x3F80_0000, 0xBF80_0000, 0x3FC0_0000,
                                    0x4020_0000, 0xC060_0000, 0x7F7F_FFFF, 0xFF7F_FFFF, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0000,
                                    0x7FA0_0000, 0xFF80_0001, 0x4F00_0000, 0xCF00_0000, 0x5F00_0000, 0xDF00_0000, 0x4B80_0001, 0x3F00_0000,
                                    0x0000_FFFF, 0x3EAA_AAAB]
    static let doubles: [UInt64] = [0, 0x8000_0000_0000_0000, 1, 0x000F_FFFF_FFFF_FFFF, 0x0010_0000_0000_0000, 0x3FF0_0000_0000_0000,
                                    0xBFF8_0000_0000_0000, 0x4004_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000,
                                    0xFFF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0xFFF8_0000_0000_0000, 0x7FF4_0000_0000_0000,
                                    0x41E0_0000_0000_0000, 0xC1E0_0000_0010_0000, 0x43E0_0000_0000_0000, 0xC3E0_0000_0000_0000,
                                    0x3FE0_0000_0000_0000, 0x4330_0000_0000_0001, 0x36A0_0000_0000_0000, 0x3FD5_5555_5555_5555]

    /// 16 bytes: float lanes, double lanes, integer edges or random bits.
    static func vector(_ rng: inout SplitMix64) -> [UInt8] {
        var out: [UInt8] = []
        switch rng.next() % 4 {
        case 0:
            for _ in 0..<4 { out += FuzzSandbox.le(UInt64(rng.next() % 3 == 0 ? UInt32(truncatingIfNeeded: rng.next()) : singles[Int(rng.next() % UInt64(singles.count))]), 4) }
        case 1:
            for _ in 0..<2 { out += FuzzSandbox.le(rng.next() % 3 == 0 ? rng.next() : doubles[Int(rng.next() % UInt64(doubles.count))], 8) }
        case 2:
            for _ in 0..<2 { out += FuzzSandbox.le(EdgeValues.register(&rng), 8) }
        default:
            for _ in 0..<2 { out += FuzzSandbox.le(rng.next(), 8) }
        }
        return out
    }

    /// MXCSR: every rounding mode, DAZ and FTZ, usually all exceptions masked.
    static func mxcsr(_ rng: inout SplitMix64) -> UInt32 {
        var m = UInt32(rng.next() % 4) << 13
        if rng.next() % 4 == 0 { m |= 1 << 6 }
        if rng.next() % 4 == 0 { m |= 1 << 15 }
        m |= rng.next() % 5 == 0 ? UInt32(truncatingIfNeeded: rng.next()) & 0x1F80 : 0x1F80
        if rng.next() % 4 == 0 { m |= UInt32(truncatingIfNeeded: rng.next()) & 0x3F }
        return m
    }
}

extension InstructionGenerator {
    /// One MMX/SSE instruction with its operands: XMM0-15 anywhere, memory through an
    /// absolute [disp32] into the data page's first KiB (aligned nine times in ten for
    /// the forms that require it), general-register destinations among the free registers.
    mutating func nextSSE() -> FuzzInstruction {
        let entry = pick(SSEFuzzTable.entries)
        let dataBase = FuzzSandbox(mode: mode).base + FuzzSandbox.data
        var reg = UInt8(rng.next() % 16)
        var rmReg = UInt8(rng.next() % 16)
        var memory = chance(40)
        var w = false
        var imm: [UInt8] = []
        var prefix: [UInt8] = entry.prefix == 0 ? [] : [entry.prefix]
        switch entry.shape {
        case .xx, .store:
            break
        case .xxImm:
            imm = [pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x1B, 0x4E, 0xFF, byte(), byte()] as [UInt8])]
        case .mm:
            reg &= 7; rmReg &= 7
        case .mmImm:
            reg &= 7; rmReg &= 7
            imm = [byte()]
        case .xFromGPR:
            w = chance(50)
            rmReg = pick(freeRegisters + Self.baseRegisters)
        case .gprFromX:
            w = chance(50)
            reg = pick(freeRegisters)
        case .gprFromXReg(let hasImm):
            memory = false
            reg = pick(freeRegisters)
            if hasImm { imm = [byte()] }
        case .extract:
            w = entry.opcode == [0x3A, 0x16] && chance(50)
            if !memory { rmReg = pick(freeRegisters) }
            imm = [byte()]
        case .insert:
            w = entry.opcode == [0x3A, 0x22] && chance(50)
            if !memory { rmReg = pick(freeRegisters + Self.baseRegisters) }
            imm = [byte()]
        case .shiftImm(let digit, let mmx):
            memory = false
            reg = digit
            if mmx { rmReg &= 7 }
            imm = [pick([0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, byte()] as [UInt8])]
        case .crc32:
            reg = pick(freeRegisters)
            w = entry.opcode == [0x38, 0xF1] && chance(33)
            if entry.opcode == [0x38, 0xF1] && !w && chance(40) { prefix = [0x66] + prefix }   // 16-bit data
            if !memory { rmReg = pick(freeRegisters + Self.baseRegisters) }
        case .maskmov(let mmx):
            memory = false
            if mmx { reg &= 7; rmReg &= 7 }
        case .state(let digit):
            memory = true
            reg = digit
            w = digit <= 1 && chance(50)
        }
        var rex: UInt8 = 0x40
        if w { rex |= 8 }
        if reg >= 8 { rex |= 4 }
        if !memory && rmReg >= 8 { rex |= 1 }
        var modrm: [UInt8]
        if memory {
            var offset = (rng.next() % 0x3F) * 16
            let size = entry.memSize
            if case .state = entry.shape {
                // FXSAVE/FXRSTOR: aligned (PVM turns the misaligned #GP into #UD, and only
                // SSE forms are classified); LDMXCSR/STMXCSR: any dword.
                if size == 4 { offset += rng.next() % 13 }
            } else if !entry.aligned || size < 16 || chance(4) {
                offset += rng.next() % 16
            }
            modrm = [0x04 | (reg & 7) << 3, 0x25] + FuzzSandbox.le(dataBase + offset, 4)
        } else {
            modrm = [0xC0 | (reg & 7) << 3 | (rmReg & 7)]
        }
        let bytes = prefix + (rex != 0x40 ? [rex] : []) + [0x0F] + entry.opcode + modrm + imm
        let form = (entry.prefix == 0 ? "" : byteHex(entry.prefix) + " ") + "0F " + entry.opcode.map(byteHex).joined(separator: " ")
            + (w ? " W" : "") + (memory ? " m" : " r")
        return FuzzInstruction(bytes: bytes, mnemonic: entry.mnemonic, form: form, undefinedFlags: 0)
    }
}
