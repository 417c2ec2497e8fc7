import CSSEHost

// Decoding of the MMX/SSE..SSE4.2 instructions (and FXSAVE/XSAVE, XGETBV/XSETBV).
//
// These are identified from the instruction bytes rather than Capstone's mnemonics: the
// SDM describes them by map (0F, 0F 38, 0F 3A), mandatory prefix (none, 66, F3, F2) and
// opcode, and one opcode's four prefix forms are usually four related operations
// (ADDPS/ADDPD/ADDSS/ADDSD) that share their operand shape. Capstone still validates the
// instruction, gives its length and computes the memory operand. The result is a
// `SIMDForm` in the decode cache; `executeSIMD` (SSE.swift) runs it, and the arithmetic
// runs on the host's SSE unit through CSSEHost, keyed by the same encoding.

/// How `executeSIMD` moves operands for an instruction.
enum SIMDKind: UInt8 {
    case invalid
    /// reg (xmm/mm) = host(reg, rm); rm is xmm/mm or memory of `memSize` bytes.
    case host
    /// rm register = host(rm register, imm8): the PSRLW/PSRAW/PSLLW... immediate groups.
    case hostShiftImm
    /// reg (general register) = host(rm): CVT*2SI, MOVMSKPS/PD, PMOVMSKB, PEXTRW (0F C5).
    case hostToGPR
    /// reg (xmm/mm) = host(reg, general register or memory of `memSize`): CVTSI2SS/SD, PINSR*.
    case hostFromGPR
    /// rm (general register or memory of `memSize`) = host(reg): PEXTRB/W/D/Q, EXTRACTPS.
    case hostToRM
    /// RFLAGS = host(reg, rm): COMISS/UCOMISS/COMISD/UCOMISD, PTEST.
    case hostFlags
    /// PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM: ECX or XMM0 and RFLAGS.
    case hostString
    /// CRC32 reg, r/m (accumulator in the general register).
    case crc32
    // Moves (SSEMoves.swift).
    case movFull, storeFull, movScalar, storeScalar, movLowQ, storeLowQ, movLow, movHigh, storeLow, storeHigh
    case movFromGPR, storeToGPR, movq2dq, movdq2q, movnti, maskmov, dupLow, dupHigh, dupDouble
    // State (SaveRestore.swift).
    case emms, ldmxcsr, stmxcsr, fxsave, fxrstor, xsave, xsaveopt, xsavec, xrstor, xgetbv, xsetbv
}

/// Operand-shape bits of a `SIMDForm`.
enum SIMDBits {
    /// A 16-byte memory operand must be 16-byte aligned (#GP(0) otherwise).
    static let aligned: UInt8 = 1
    /// ModRM.reg names an MMX register.
    static let regMMX: UInt8 = 2
    /// ModRM.rm (register form) names an MMX register.
    static let rmMMX: UInt8 = 4
    /// Only MMX registers: CR4.OSFXSR does not matter.
    static let mmxOnly: UInt8 = 8
    /// REX.W.
    static let w: UInt8 = 16
    /// ModRM.mod == 3: rm is a register.
    static let register: UInt8 = 32
    /// The 0x66 prefix is present as well (CRC32's 16-bit form).
    static let opsize: UInt8 = 64
}

/// A decoded SIMD instruction.
struct SIMDForm {
    /// TANDEM_SSE_ENC(map, prefix, opcode, w) of the host operation (for MMX forms, the
    /// SSE2 operation run on the low quadword).
    var encoding: UInt16 = 0
    var kind: SIMDKind = .invalid
    var memSize: UInt8 = 16
    var bits: UInt8 = 0
    /// ModRM.reg and ModRM.rm with REX.R and REX.B.
    var reg: UInt8 = 0
    var rm: UInt8 = 0
    var imm: UInt8 = 0
    /// How an MMX form's inputs are rearranged for the 128-bit host operation (`MMXAdjust`).
    var mmxAdjust: UInt8 = 0
}

enum MMXAdjust {
    static let none: UInt8 = 0
    /// Packs and horizontal adds/subtracts: the host sees dst:src as one 128-bit register.
    static let concatenate: UInt8 = 1
    /// High unpacks: both inputs shifted right 32 bits, then the low unpack.
    static let highHalves: UInt8 = 2
    /// PSHUFB: an MMX index selects among 8 bytes (bits 0-2; bit 7 zeroes).
    static let shuffleIndex: UInt8 = 3
}

/// The raw prefix/opcode structure of an instruction, as far as SIMD decoding needs it.
private struct RawForm {
    var prefix: Int = 0   // mandatory: 0 none, 1 66, 2 F3, 3 F2
    var opsize = false
    var rex: UInt8 = 0
    var map: Int = 0      // 1 = 0F, 2 = 0F 38, 3 = 0F 3A
    var opcode: UInt8 = 0
    var modrm: UInt8 = 0
}

private func rawForm(_ bytes: UnsafeRawBufferPointer, length: Int, bits: Int) -> RawForm? {
    var f = RawForm()
    var i = 0
    var lastRep: UInt8 = 0
    while i < length {
        let b = bytes[i]
        switch b {
        case 0x66: f.opsize = true; f.rex = 0
        case 0xF2, 0xF3: lastRep = b; f.rex = 0
        case 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67, 0xF0: f.rex = 0
        case 0x40...0x4F where bits == 64: f.rex = b
        default:
            guard b == 0x0F, i + 1 < length else { return nil }
            var j = i + 1
            switch bytes[j] {
            case 0x38: f.map = 2; j += 1
            case 0x3A: f.map = 3; j += 1
            default: f.map = 1
            }
            guard j < length else { return nil }
            f.opcode = bytes[j]
            f.modrm = j + 1 < length ? bytes[j + 1] : 0
            f.prefix = lastRep == 0xF3 ? 2 : lastRep == 0xF2 ? 3 : f.opsize ? 1 : 0
            return f
        }
        i += 1
    }
    return nil
}

extension Decoder {
    /// The SIMD form of an instruction Capstone decoded (`d`: its length and operands), or
    /// nil when it is not one of the instructions SSEDecode handles.
    func simdForm(_ bytes: UnsafeRawBufferPointer, _ d: inout DecodedInstruction, bits: Int) -> SIMDForm? {
        let length = Int(d.length)
        guard let raw = rawForm(bytes, length: length, bits: bits), raw.map != 0 else { return nil }
        var f = SIMDForm()
        let mod3 = raw.modrm >> 6 == 3
        let w = raw.rex & 8 != 0
        let regField = (raw.modrm >> 3) & 7
        f.reg = regField | (raw.rex & 4) << 1
        f.rm = raw.modrm & 7 | (raw.rex & 1) << 3
        if mod3 { f.bits |= SIMDBits.register }
        if w { f.bits |= SIMDBits.w }
        if raw.opsize { f.bits |= SIMDBits.opsize }
        f.imm = bytes[length - 1]
        let p = raw.prefix
        let op = raw.opcode
        f.encoding = simdEncoding(UInt32(raw.map), UInt32(p), UInt32(op), 0)
        // Shorthands for the shapes below.
        func host(_ size: UInt8, aligned: Bool = true) { f.kind = .host; f.memSize = size; if aligned && size == 16 { f.bits |= SIMDBits.aligned } }
        func mmx(_ adjust: UInt8 = MMXAdjust.none) {
            // The MMX form of a 66-prefixed SSE2 integer operation: run as that operation.
            f.kind = .host; f.memSize = 8
            f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly
            f.encoding |= 0x100
            f.mmxAdjust = adjust
        }
        func kind(_ k: SIMDKind, _ size: UInt8, aligned: Bool = false) { f.kind = k; f.memSize = size; if aligned { f.bits |= SIMDBits.aligned } }
        func withW() { if w { f.encoding |= 0x1000 } }
        var valid = true
        switch (raw.map, op) {
        case (1, 0x01):
            // 0F 01 D0/D1: XGETBV/XSETBV; the rest of 0F 01 is not SIMD.
            guard raw.modrm == 0xD0 || raw.modrm == 0xD1 else { return nil }
            valid = p == 0
            f.kind = raw.modrm == 0xD0 ? .xgetbv : .xsetbv
        case (1, 0x10): if p <= 1 { kind(.movFull, 16) } else { kind(.movScalar, p == 2 ? 4 : 8) }
        case (1, 0x11): if p <= 1 { kind(.storeFull, 16) } else { kind(.storeScalar, p == 2 ? 4 : 8) }
        case (1, 0x12):
            switch p {
            case 0: kind(.movLow, 8)
            case 1: valid = !mod3; kind(.movLow, 8)
            case 2: kind(.dupLow, 16, aligned: true)
            default: kind(.dupDouble, 8)
            }
        case (1, 0x13), (1, 0x17): valid = p <= 1 && !mod3; kind(op == 0x13 ? .storeLow : .storeHigh, 8)
        case (1, 0x14), (1, 0x15): valid = p <= 1; host(16)
        case (1, 0x16):
            switch p {
            case 0: kind(.movHigh, 8)
            case 1: valid = !mod3; kind(.movHigh, 8)
            case 2: kind(.dupHigh, 16, aligned: true)
            default: valid = false
            }
        case (1, 0x28): valid = p <= 1; kind(.movFull, 16, aligned: true)
        case (1, 0x29): valid = p <= 1; kind(.storeFull, 16, aligned: true)
        case (1, 0x2A):
            if p <= 1 { host(8); f.bits |= SIMDBits.rmMMX } else { kind(.hostFromGPR, w ? 8 : 4); withW() }
        case (1, 0x2B): valid = p <= 1 && !mod3; kind(.storeFull, 16, aligned: true)
        case (1, 0x2C), (1, 0x2D):
            switch p {
            case 0: host(8); f.bits |= SIMDBits.regMMX
            case 1: host(16); f.bits |= SIMDBits.regMMX
            default: kind(.hostToGPR, p == 2 ? 4 : 8); withW()
            }
        case (1, 0x2E), (1, 0x2F): valid = p <= 1; kind(.hostFlags, p == 0 ? 4 : 8)
        case (1, 0x50): valid = p <= 1 && mod3; kind(.hostToGPR, 16)
        case (1, 0x51), (1, 0x58), (1, 0x59), (1, 0x5C), (1, 0x5D), (1, 0x5E), (1, 0x5F):
            host(p <= 1 ? 16 : p == 2 ? 4 : 8)
        case (1, 0x52), (1, 0x53): valid = p == 0 || p == 2; host(p == 0 ? 16 : 4)
        case (1, 0x54), (1, 0x55), (1, 0x56), (1, 0x57): valid = p <= 1; host(16)
        case (1, 0x5A): host(p == 1 ? 16 : p == 2 ? 4 : 8)
        case (1, 0x5B): valid = p <= 2; host(16)
        case (1, 0x60...0x6B), (1, 0x74...0x76), (1, 0xD1...0xD5), (1, 0xD8...0xDF), (1, 0xE0...0xE5),
             (1, 0xE8...0xEF), (1, 0xF1...0xF6), (1, 0xF8...0xFE):
            switch p {
            case 0:
                switch op {
                case 0x63, 0x67, 0x6B: mmx(MMXAdjust.concatenate)
                case 0x68...0x6A: mmx(MMXAdjust.highHalves); f.encoding -= 8   // punpckl* on the high halves
                default: mmx()
                }
            case 1: host(16)
            default: valid = false
            }
        case (1, 0x6C), (1, 0x6D): valid = p == 1; host(16)
        case (1, 0x6E):
            valid = p <= 1; kind(.movFromGPR, w ? 8 : 4)
            if p == 0 { f.bits |= SIMDBits.regMMX | SIMDBits.mmxOnly }
        case (1, 0x6F):
            switch p {
            case 0: kind(.movFull, 8); f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly
            case 1: kind(.movFull, 16, aligned: true)
            case 2: kind(.movFull, 16)
            default: valid = false
            }
        case (1, 0x70):
            if p == 0 { host(8); f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly } else { host(16) }
        case (1, 0x71), (1, 0x72), (1, 0x73):
            // Shift groups by imm8: /2 logical right, /4 arithmetic right, /6 left; 73 /3 and
            // /7 are PSRLDQ/PSLLDQ (66 only). Run as the shift-by-register operation.
            valid = mod3 && p <= 1
            let base: UInt8 = op == 0x71 ? 0xD1 : op == 0x72 ? 0xD2 : 0xD3
            var opcode: UInt8 = 0
            switch regField {
            case 2: opcode = base
            case 4: valid = valid && op != 0x73; opcode = base + 0x10
            case 6: opcode = base + 0x20
            case 3, 7: valid = valid && op == 0x73 && p == 1; opcode = 0x73
            default: valid = false
            }
            f.kind = .hostShiftImm
            f.encoding = simdEncoding(1, 1, UInt32(opcode), regField == 7 ? 1 : 0)
            if p == 0 { f.bits |= SIMDBits.rmMMX | SIMDBits.mmxOnly }
        case (1, 0x77): valid = p == 0; f.kind = .emms; f.bits |= SIMDBits.mmxOnly
        case (1, 0x7C), (1, 0x7D), (1, 0xD0): valid = p == 1 || p == 3; host(16)
        case (1, 0x7E):
            switch p {
            case 0: kind(.storeToGPR, w ? 8 : 4); f.bits |= SIMDBits.regMMX | SIMDBits.mmxOnly
            case 1: kind(.storeToGPR, w ? 8 : 4)
            case 2: kind(.movLowQ, 8)
            default: valid = false
            }
        case (1, 0x7F):
            switch p {
            case 0: kind(.storeFull, 8); f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly
            case 1: kind(.storeFull, 16, aligned: true)
            case 2: kind(.storeFull, 16)
            default: valid = false
            }
        case (1, 0xAE):
            // 0F AE with a memory operand and no prefix: the state instructions; the register
            // forms are the fences and the F3 forms RDFSBASE..., decoded elsewhere.
            guard !mod3 && p == 0 && regField <= 6 else { return nil }
            let kinds: [SIMDKind] = [.fxsave, .fxrstor, .ldmxcsr, .stmxcsr, .xsave, .xrstor, .xsaveopt]
            f.kind = kinds[Int(regField)]
            f.memSize = regField == 2 || regField == 3 ? 4 : 0
        case (1, 0xC2): host(p <= 1 ? 16 : p == 2 ? 4 : 8)
        case (1, 0xC3): valid = p == 0 && !mod3; kind(.movnti, w ? 8 : 4)
        case (1, 0xC4):
            valid = p <= 1; kind(.hostFromGPR, 2)
            if p == 0 { f.bits |= SIMDBits.regMMX | SIMDBits.mmxOnly }
        case (1, 0xC5):
            valid = p <= 1 && mod3; kind(.hostToGPR, 16)
            if p == 0 { f.bits |= SIMDBits.rmMMX | SIMDBits.mmxOnly }
        case (1, 0xC6): valid = p <= 1; host(16)
        case (1, 0xC7):
            guard regField == 4 && !mod3 && p == 0 else { return nil }
            f.kind = .xsavec; f.memSize = 0
        case (1, 0xD6):
            switch p {
            case 1: kind(.storeLowQ, 8)
            case 2: valid = mod3; f.kind = .movq2dq; f.bits |= SIMDBits.rmMMX
            case 3: valid = mod3; f.kind = .movdq2q; f.bits |= SIMDBits.regMMX
            default: valid = false
            }
        case (1, 0xD7):
            valid = p <= 1 && mod3; kind(.hostToGPR, 16)
            if p == 0 { f.bits |= SIMDBits.rmMMX | SIMDBits.mmxOnly; f.encoding |= 0x100 }
        case (1, 0xE6): valid = p >= 1; host(p == 2 ? 8 : 16)
        case (1, 0xE7):
            valid = p <= 1 && !mod3
            if p == 0 { kind(.storeFull, 8); f.bits |= SIMDBits.regMMX | SIMDBits.mmxOnly } else { kind(.storeFull, 16, aligned: true) }
        case (1, 0xF0): valid = p == 3 && !mod3; kind(.movFull, 16)
        case (1, 0xF7):
            valid = p <= 1 && mod3; f.kind = .maskmov
            if p == 0 { f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly }
        case (2, 0x00...0x0B), (2, 0x1C...0x1E):
            switch p {
            case 0:
                switch op {
                case 0x01...0x03, 0x05...0x07: mmx(MMXAdjust.concatenate)
                case 0x00: mmx(MMXAdjust.shuffleIndex)
                default: mmx()
                }
            case 1: host(16)
            default: valid = false
            }
        case (2, 0x10), (2, 0x14), (2, 0x15), (2, 0x28), (2, 0x29), (2, 0x2B), (2, 0x37...0x41):
            valid = p == 1; host(16)
        case (2, 0x17): valid = p == 1; kind(.hostFlags, 16, aligned: true)
        case (2, 0x20...0x25), (2, 0x30...0x35):
            valid = p == 1
            let sizes: [UInt8] = [8, 4, 2, 8, 4, 8]
            host(sizes[Int(op & 0xF)])
        case (2, 0x2A): valid = p == 1 && !mod3; kind(.movFull, 16, aligned: true)
        case (2, 0xF0), (2, 0xF1):
            // F2: CRC32; otherwise MOVBE, decoded elsewhere.
            guard p == 3 else { return nil }
            f.kind = .crc32
            f.memSize = op == 0xF0 ? 1 : w ? 8 : raw.opsize ? 2 : 4
            // A byte register without any REX prefix: 4-7 are AH, CH, DH, BH (readReg's 16-19).
            if op == 0xF0 && mod3 && raw.rex == 0 && f.rm >= 4 { f.rm += 12 }
            f.encoding = simdEncoding(2, 3, UInt32(op), 0)
        case (3, 0x08), (3, 0x09), (3, 0x0C), (3, 0x0D), (3, 0x0E), (3, 0x40), (3, 0x41), (3, 0x42):
            valid = p == 1; host(16)
        case (3, 0x0A), (3, 0x0B): valid = p == 1; host(op == 0x0A ? 4 : 8)
        case (3, 0x0F):
            if p == 0 { host(8); f.bits |= SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly } else { valid = p == 1; host(16) }
        case (3, 0x14), (3, 0x15), (3, 0x16), (3, 0x17):
            valid = p == 1
            kind(.hostToRM, op == 0x14 ? 1 : op == 0x15 ? 2 : op == 0x16 && w ? 8 : 4)
            if op == 0x16 { withW() }
        case (3, 0x20), (3, 0x22):
            valid = p == 1
            kind(.hostFromGPR, op == 0x20 ? 1 : w ? 8 : 4)
            if op == 0x22 { withW() }
        case (3, 0x21):
            valid = p == 1; host(mod3 ? 16 : 4)
            if !mod3 { f.encoding |= 0x1000 }   // INSERTPS m32: the memory dword, not imm[7:6]'s
        case (3, 0x60...0x63): valid = p == 1; kind(.hostString, 16)
        default:
            return nil
        }
        if !valid { f.kind = .invalid }
        // The memory operand, wherever Capstone listed it, goes to o1.
        if !mod3 {
            if d.o0.kind == .memory { d.o1 = d.o0 } else if d.o2.kind == .memory { d.o1 = d.o2 }
        }
        return f
    }
}

/// TANDEM_SSE_ENC of sse_host.h: how CSSEHost names an operation.
func simdEncoding<A: BinaryInteger, B: BinaryInteger, C: BinaryInteger, D: BinaryInteger>(_ map: A, _ prefix: B, _ opcode: C, _ w: D) -> UInt16 {
    UInt16(w) << 12 | UInt16(map) << 10 | UInt16(prefix) << 8 | UInt16(opcode)
}
