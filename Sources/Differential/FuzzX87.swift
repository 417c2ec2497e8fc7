import Machine
import X86

/// x87 forms for `tandem fuzz --mode user64`: random encodings of the whole D8-DF space
/// (register forms and every memory /digit), with operands from edge values the data
/// page holds (signed zeros, denormals, pseudo-denormals, unnormals, infinities,
/// pseudo-infinities, quiet and signalling NaNs, the indefinite, values a half-ulp from a
/// rounding boundary of single and double precision, integers and BCD), run under every
/// precision and rounding control and sometimes with exceptions unmasked.
extension InstructionGenerator {
    /// One x87 instruction, with a setup that may load a random control word and push
    /// values from the data page.
    mutating func x87Instruction() -> FuzzInstruction {
        var setup: [UInt8] = []
        if chance(30) {
            // push imm32; fldcw [rsp]; lea rsp, [rsp + 8] (no flags change: FCMOVcc reads them).
            setup += [0x68] + FuzzSandbox.le(UInt64(x87ControlWord()), 4) + [0xD9, 0x2C, 0x24, 0x48, 0x8D, 0x64, 0x24, 0x08]
        }
        if chance(50) {
            for _ in 0..<(1 + rng.next() % 3) {
                // fld m80 / m64 / m32, fild m16 / m32 / m64, fbld: DB/5, DD/0, D9/0, DF/0, DB/0, DF/5, DF/4
                let (op, digit) = pick([(0xDB, 5), (0xDB, 5), (0xDD, 0), (0xD9, 0), (0xDF, 0), (0xDB, 0), (0xDF, 5), (0xDF, 4)] as [(UInt8, UInt8)])
                let m = rm(write: false, memory: true)
                setup += [op, m.modrmLowBits | digit << 3] + m.disp
            }
        }
        var bytes: [UInt8]
        var form: String
        if chance(3) {
            bytes = [0x9B]
            form = "x87 9B"
        } else if chance(55) {
            let op = 0xD8 + UInt8(rng.next() % 8)
            let modrm = 0xC0 | byte()
            bytes = [op, modrm]
            form = "x87 " + byteHex(op) + byteHex(modrm)
        } else {
            let op = 0xD8 + UInt8(rng.next() % 8)
            let digit = UInt8(rng.next() % 8)
            let m = rm(write: true, memory: true)
            // A 66 prefix selects the 14- and 94-byte environment formats.
            let prefix: [UInt8] = chance(10) ? [0x66] : []
            bytes = prefix + [op, m.modrmLowBits | digit << 3] + m.disp
            form = "x87 " + byteHex(op) + "/\(digit) m" + (prefix.isEmpty ? "" : " 66")
        }
        return FuzzInstruction(setup: setup, bytes: bytes, mnemonic: "x87", form: form, undefinedFlags: 0)
    }

    /// Every precision (including the reserved 01) and rounding control; exceptions
    /// mostly masked, sometimes not (the next waiting instruction then takes #MF); now
    /// and then the reserved bits set.
    mutating func x87ControlWord() -> UInt16 {
        var cw = UInt16(rng.next() % 4) << 8 | UInt16(rng.next() % 4) << 10 | 0x40
        cw |= chance(80) ? 0x3F : UInt16(rng.next() & 0x3F)
        if chance(5) { cw |= UInt16(truncatingIfNeeded: rng.next()) & 0xE080 }
        return cw
    }
}

enum X87EdgeValues {
    /// 16 bytes for a data-page slot: an 80-bit value, two doubles, four floats, a BCD
    /// number or integers, each an edge case half the time.
    static func slot(_ rng: inout SplitMix64) -> [UInt8] {
        func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
        switch rng.next() % 5 {
        case 0, 1:
            let (significand, signExponent) = extended(&rng)
            return FuzzSandbox.le(significand, 8) + FuzzSandbox.le(UInt64(signExponent), 2) + FuzzSandbox.le(rng.next(), 6)
        case 2:
            return FuzzSandbox.le(double(&rng), 8) + FuzzSandbox.le(double(&rng), 8)
        case 3:
            return (0..<4).flatMap { _ in FuzzSandbox.le(UInt64(single(&rng)), 4) }
        default:
            // Packed BCD: 18 digits and a sign byte; sometimes a digit above 9.
            var digits: UInt64 = 0
            var high: UInt64 = 0
            let count = pick([1, 2, 5, 10, 18])
            for k in 0..<count {
                let digit = rng.next() % 100 < 3 ? 10 + rng.next() % 6 : rng.next() % 10
                if k < 16 { digits |= digit << UInt64(4 * k) } else { high |= digit << UInt64(4 * (k - 16)) }
            }
            let sign: UInt64 = rng.next() % 2 == 0 ? 0 : pick([0x80, 0xFF, 0x7F])
            return FuzzSandbox.le(digits, 8) + [UInt8(high), UInt8(sign)] + FuzzSandbox.le(rng.next(), 6)
        }
    }

    static func extended(_ rng: inout SplitMix64) -> (UInt64, UInt16) {
        let sign: UInt16 = rng.next() % 2 == 0 ? 0 : 0x8000
        let randomFraction = rng.next() & ~(UInt64(1) << 63)
        let nearOne = UInt16(0x3FFF - 70 + Int(rng.next() % 140))
        let choices: [(UInt64, UInt16)] = [
            (0, 0),                                             // zero
            (1 << 63, 0x7FFF),                                  // infinity
            (0xC000_0000_0000_0000, 0x7FFF),                    // QNaN (with the sign: the indefinite)
            (0xC000_0000_0000_0000 | randomFraction >> 2, 0x7FFF),
            (0x8000_0000_0000_0001 | randomFraction >> 2, 0x7FFF),   // SNaN
            (randomFraction >> UInt64(rng.next() % 63), 0),     // denormal
            (1 << 63 | randomFraction, 0),                      // pseudo-denormal
            (randomFraction, nearOne),                          // unnormal
            (0, 0x7FFF), (randomFraction | 1, 0x7FFF),          // pseudo-infinity, pseudo-NaN
            (.max, 0x7FFE), (1 << 63, 1), (1 << 63, 0x3FFF),    // max, min normal, one
            (1 << 63 | 0x400, nearOne), (1 << 63 | 0x3FF, nearOne), (1 << 63 | 0xC00, nearOne),        // double half-ulps
            (1 << 63 | 0x80_0000_0000, nearOne), (1 << 63 | 0x180_0000_0000, nearOne),                 // single half-ulps
            (1 << 63 | randomFraction, nearOne), (1 << 63 | randomFraction, nearOne),
            (1 << 63 | randomFraction, UInt16(rng.next() % 0x7FFF)),
            (1 << 63 | randomFraction, UInt16(0x3FFF + 62 + Int(rng.next() % 4))),   // near the integer limits
            (rng.next(), UInt16(truncatingIfNeeded: rng.next()) & 0x7FFF),
        ]
        let (significand, exponent) = choices[Int(rng.next() % UInt64(choices.count))]
        return (significand, exponent | sign)
    }

    static func double(_ rng: inout SplitMix64) -> UInt64 {
        let sign: UInt64 = rng.next() % 2 == 0 ? 0 : 1 << 63
        let fraction = rng.next() & 0x000F_FFFF_FFFF_FFFF
        let choices: [UInt64] = [0, 0x7FF0_0000_0000_0000, 0x7FF8_0000_0000_0000 | fraction, 0x7FF0_0000_0000_0001 | fraction >> 1,
                                 1, fraction, 0x000F_FFFF_FFFF_FFFF, 0x0010_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF,
                                 0x3FF0_0000_0000_0000, 0x3FF0_0000_0000_0001, 0x4330_0000_0000_0001,
                                 UInt64(0x3FF - 60 + rng.next() % 120) << 52 | fraction, rng.next() & ~(1 << 63)]
        return choices[Int(rng.next() % UInt64(choices.count))] | sign
    }

    static func single(_ rng: inout SplitMix64) -> UInt32 {
        let sign: UInt32 = rng.next() % 2 == 0 ? 0 : 1 << 31
        let fraction = UInt32(truncatingIfNeeded: rng.next()) & 0x7F_FFFF
        let choices: [UInt32] = [0, 0x7F80_0000, 0x7FC0_0000 | fraction, 0x7F80_0001 | fraction >> 1, 1, fraction, 0x0080_0000,
                                 0x7F7F_FFFF, 0x3F80_0000, 0x3F80_0001, 0x4B00_0001,
                                 UInt32(0x7F - 30 + rng.next() % 60) << 23 | fraction, UInt32(truncatingIfNeeded: rng.next()) & ~(1 << 31)]
        return choices[Int(rng.next() % UInt64(choices.count))] | sign
    }
}

extension FuzzCampaign {
    /// The x87 state both backends must agree on: FCW, FSW, the abridged tags, the eight
    /// physical registers (empty ones too: their contents survive and FNSAVE shows them),
    /// and the last instruction pointer and opcode. FDP is compared too: this CPU
    /// (CPUID.7.EBX FDP_EXCPTN_ONLY) changes it only with an unmasked exception, and the
    /// interpreter does the same. FCS and FDS are not: kvm_fpu does not carry them.
    static func x87Differences(_ k: FPUState, _ i: FPUState) -> [(String, String, String)] {
        var out: [(String, String, String)] = []
        func field(_ name: String, _ a: UInt64, _ b: UInt64) { if a != b { out.append((name, hex(a), hex(b))) } }
        field("fcw", UInt64(k.fcw), UInt64(i.fcw))
        field("fsw", UInt64(k.fsw), UInt64(i.fsw))
        field("ftw", UInt64(k.ftw), UInt64(i.ftw))
        for r in 0..<8 {
            field("r\(r).significand", k.st[r].significand, i.st[r].significand)
            field("r\(r).exponent", UInt64(k.st[r].signExponent), UInt64(i.st[r].signExponent))
        }
        field("fop", UInt64(k.fop), UInt64(i.fop))
        field("fip", k.fip, i.fip)
        field("fdp", k.fdp, i.fdp)
        return out
    }
}
