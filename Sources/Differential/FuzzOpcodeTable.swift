import Disassembler
import Machine

/// The integer instruction forms `tandem fuzz` generates: one entry per opcode (and ModRM
/// /digit for group opcodes) of the one-byte and 0F two-byte maps, with how its operands
/// are encoded. The generator walks this table; `FuzzOpcodeTable.exclusions` names every
/// opcode it leaves out and why, and `FuzzOpcodeTable.unaccounted(bits:)` walks all
/// opcodes through Capstone to find any it decodes that is neither here nor excluded.
struct OpcodeEntry: Sendable {
    /// How the operands are encoded (and which of them the instruction writes).
    enum Shape: Sendable, Equatable {
        /// op r/m (a /digit group member).
        case rm(writes: Bool)
        /// op r/m, reg.
        case rmReg(writesRM: Bool, writesReg: Bool)
        /// op reg, r/m.
        case regRM(writesReg: Bool)
        /// op r/m, imm (imm8, or imm16/32 sign-extended for `wideImmediate`).
        case rmImm(writes: Bool, wideImmediate: Bool)
        /// imul reg, r/m, imm.
        case regRMImm(wideImmediate: Bool)
        /// shld/shrd r/m, reg, imm8 or CL.
        case doubleShift(byCL: Bool)
        /// A shift or rotate of r/m by 1, by CL or by imm8.
        case shift(Count)
        /// AL/AX/EAX/RAX, imm.
        case accImm(wideImmediate: Bool)
        /// The register in the opcode's low three bits (push, pop, inc, dec, xchg, bswap).
        case opcodeReg(writes: Bool)
        /// mov reg, imm with the register in the opcode (imm64 with REX.W).
        case opcodeRegImm
        /// mov between the accumulator and an absolute address (moffs).
        case moffs
        /// mov r/m, Sreg.
        case fromSegment
        /// No explicit operands.
        case implicit
        /// An immediate only (push imm, aam/aad imm8).
        case imm(wide: Bool)
        /// A branch (or call) to the very next instruction: displacement 0, so the
        /// condition and side effects are tested without control leaving the sequence.
        case branchToNext(wide: Bool)
    }
    enum Count: Sendable, Equatable { case one, cl, imm8 }
    /// Operand sizes: one byte, the full range (16/32, and 64 in 64-bit mode), the stack's
    /// (16 and 32, or 16 and 64 in 64-bit mode), 32/64 only, 16 only, or none to vary.
    enum Width: Sendable, Equatable { case byte, full, stack, dword, word, fixed }
    /// Which modes the opcode exists in.
    enum Modes: Sendable, Equatable { case all, legacy, long }

    var opcode: [UInt8]
    var digit: UInt8?
    var mnemonic: String
    var shape: Shape
    var width: Width
    var modes: Modes = .all
    /// Only a memory operand is valid (lea, cmpxchg8b, bound, prefetch).
    var memoryOnly = false
    /// LOCK is valid with a memory destination.
    var lockable = false
    /// The 16 condition codes are the opcode's low four bits (jcc, setcc, cmovcc).
    var conditionCodes = false

    /// Reads a segment selector (mov r/m, Sreg; push Sreg): under PVM, CPL 3 code sees the host's.
    var readsSegmentSelector: Bool { shape == .fromSegment || (mnemonic == "push" && shape == .implicit) }

    /// Every opcode the entry stands for: with each condition code, or each register in the opcode.
    var opcodes: [[UInt8]] {
        let variants: Int
        switch shape {
        case .opcodeReg, .opcodeRegImm: variants = 8
        default: variants = conditionCodes ? 16 : 1
        }
        return (0..<variants).map { Array(opcode.dropLast()) + [opcode[opcode.count - 1] + UInt8($0)] }
    }
}

/// An opcode the generator leaves out, and why.
struct OpcodeExclusion: Sendable {
    /// The opcode bytes (one byte, or 0F and one byte); `digits` nil: every /digit.
    var opcodes: [[UInt8]]
    var digits: [UInt8]? = nil
    var reason: String
}

public enum FuzzOpcodeTable {
    static let entries: [OpcodeEntry] = {
        var t: [OpcodeEntry] = []
        // The eight classic ALU operations: r/m,reg; reg,r/m; acc,imm.
        for (i, m) in ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"].enumerated() {
            let base = UInt8(i * 8), writes = m != "cmp"
            t.append(OpcodeEntry(opcode: [base], mnemonic: m, shape: .rmReg(writesRM: writes, writesReg: false), width: .byte, lockable: writes))
            t.append(OpcodeEntry(opcode: [base + 1], mnemonic: m, shape: .rmReg(writesRM: writes, writesReg: false), width: .full, lockable: writes))
            t.append(OpcodeEntry(opcode: [base + 2], mnemonic: m, shape: .regRM(writesReg: writes), width: .byte))
            t.append(OpcodeEntry(opcode: [base + 3], mnemonic: m, shape: .regRM(writesReg: writes), width: .full))
            t.append(OpcodeEntry(opcode: [base + 4], mnemonic: m, shape: .accImm(wideImmediate: false), width: .byte))
            t.append(OpcodeEntry(opcode: [base + 5], mnemonic: m, shape: .accImm(wideImmediate: true), width: .full))
            // Group 1: 80 (imm8), 81 (imm16/32), 82 (80's alias outside 64-bit mode), 83 (sign-extended imm8).
            t.append(OpcodeEntry(opcode: [0x80], digit: UInt8(i), mnemonic: m, shape: .rmImm(writes: writes, wideImmediate: false), width: .byte, lockable: writes))
            t.append(OpcodeEntry(opcode: [0x81], digit: UInt8(i), mnemonic: m, shape: .rmImm(writes: writes, wideImmediate: true), width: .full, lockable: writes))
            t.append(OpcodeEntry(opcode: [0x82], digit: UInt8(i), mnemonic: m, shape: .rmImm(writes: writes, wideImmediate: false), width: .byte, modes: .legacy, lockable: writes))
            t.append(OpcodeEntry(opcode: [0x83], digit: UInt8(i), mnemonic: m, shape: .rmImm(writes: writes, wideImmediate: false), width: .full, lockable: writes))
        }
        for (op, m) in [(0x06, "push"), (0x0E, "push"), (0x16, "push"), (0x1E, "push")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [op], mnemonic: m, shape: .implicit, width: .fixed, modes: .legacy))
        }
        for (op, m) in [(0x27, "daa"), (0x2F, "das"), (0x37, "aaa"), (0x3F, "aas"), (0xD6, "salc"), (0xCE, "into")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [op], mnemonic: m, shape: .implicit, width: .fixed, modes: .legacy))
        }
        t.append(OpcodeEntry(opcode: [0x40], mnemonic: "inc", shape: .opcodeReg(writes: true), width: .full, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0x48], mnemonic: "dec", shape: .opcodeReg(writes: true), width: .full, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0x50], mnemonic: "push", shape: .opcodeReg(writes: false), width: .stack))
        t.append(OpcodeEntry(opcode: [0x58], mnemonic: "pop", shape: .opcodeReg(writes: true), width: .stack))
        t.append(OpcodeEntry(opcode: [0x60], mnemonic: "pusha", shape: .implicit, width: .full, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0x62], mnemonic: "bound", shape: .regRM(writesReg: false), width: .full, modes: .legacy, memoryOnly: true))
        t.append(OpcodeEntry(opcode: [0x63], mnemonic: "arpl", shape: .rmReg(writesRM: true, writesReg: false), width: .word, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0x63], mnemonic: "movsxd", shape: .regRM(writesReg: true), width: .full, modes: .long))
        t.append(OpcodeEntry(opcode: [0x68], mnemonic: "push", shape: .imm(wide: true), width: .stack))
        t.append(OpcodeEntry(opcode: [0x6A], mnemonic: "push", shape: .imm(wide: false), width: .stack))
        t.append(OpcodeEntry(opcode: [0x69], mnemonic: "imul", shape: .regRMImm(wideImmediate: true), width: .full))
        t.append(OpcodeEntry(opcode: [0x6B], mnemonic: "imul", shape: .regRMImm(wideImmediate: false), width: .full))
        t.append(OpcodeEntry(opcode: [0x70], mnemonic: "jcc", shape: .branchToNext(wide: false), width: .fixed, conditionCodes: true))
        t.append(OpcodeEntry(opcode: [0x84], mnemonic: "test", shape: .rmReg(writesRM: false, writesReg: false), width: .byte))
        t.append(OpcodeEntry(opcode: [0x85], mnemonic: "test", shape: .rmReg(writesRM: false, writesReg: false), width: .full))
        t.append(OpcodeEntry(opcode: [0x86], mnemonic: "xchg", shape: .rmReg(writesRM: true, writesReg: true), width: .byte, lockable: true))
        t.append(OpcodeEntry(opcode: [0x87], mnemonic: "xchg", shape: .rmReg(writesRM: true, writesReg: true), width: .full, lockable: true))
        t.append(OpcodeEntry(opcode: [0x88], mnemonic: "mov", shape: .rmReg(writesRM: true, writesReg: false), width: .byte))
        t.append(OpcodeEntry(opcode: [0x89], mnemonic: "mov", shape: .rmReg(writesRM: true, writesReg: false), width: .full))
        t.append(OpcodeEntry(opcode: [0x8A], mnemonic: "mov", shape: .regRM(writesReg: true), width: .byte))
        t.append(OpcodeEntry(opcode: [0x8B], mnemonic: "mov", shape: .regRM(writesReg: true), width: .full))
        t.append(OpcodeEntry(opcode: [0x8C], mnemonic: "mov", shape: .fromSegment, width: .full))
        t.append(OpcodeEntry(opcode: [0x8D], mnemonic: "lea", shape: .regRM(writesReg: true), width: .full, memoryOnly: true))
        t.append(OpcodeEntry(opcode: [0x8F], digit: 0, mnemonic: "pop", shape: .rm(writes: true), width: .stack))
        t.append(OpcodeEntry(opcode: [0x90], mnemonic: "nop", shape: .implicit, width: .fixed))
        t.append(OpcodeEntry(opcode: [0x90], mnemonic: "xchg", shape: .opcodeReg(writes: true), width: .full))
        t.append(OpcodeEntry(opcode: [0x98], mnemonic: "cbw", shape: .implicit, width: .full))
        t.append(OpcodeEntry(opcode: [0x99], mnemonic: "cwd", shape: .implicit, width: .full))
        t.append(OpcodeEntry(opcode: [0x9C], mnemonic: "pushf", shape: .implicit, width: .stack))
        t.append(OpcodeEntry(opcode: [0x9E], mnemonic: "sahf", shape: .implicit, width: .fixed))
        t.append(OpcodeEntry(opcode: [0x9F], mnemonic: "lahf", shape: .implicit, width: .fixed))
        t.append(OpcodeEntry(opcode: [0xA0], mnemonic: "mov", shape: .moffs, width: .byte))
        t.append(OpcodeEntry(opcode: [0xA1], mnemonic: "mov", shape: .moffs, width: .full))
        t.append(OpcodeEntry(opcode: [0xA2], mnemonic: "mov", shape: .moffs, width: .byte))
        t.append(OpcodeEntry(opcode: [0xA3], mnemonic: "mov", shape: .moffs, width: .full))
        for (op, m) in [(0xA4, "movs"), (0xA6, "cmps"), (0xAA, "stos"), (0xAC, "lods"), (0xAE, "scas")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [op], mnemonic: m, shape: .implicit, width: .byte))
            t.append(OpcodeEntry(opcode: [op + 1], mnemonic: m, shape: .implicit, width: .full))
        }
        t.append(OpcodeEntry(opcode: [0xA8], mnemonic: "test", shape: .accImm(wideImmediate: false), width: .byte))
        t.append(OpcodeEntry(opcode: [0xA9], mnemonic: "test", shape: .accImm(wideImmediate: true), width: .full))
        t.append(OpcodeEntry(opcode: [0xB0], mnemonic: "mov", shape: .opcodeRegImm, width: .byte))
        t.append(OpcodeEntry(opcode: [0xB8], mnemonic: "mov", shape: .opcodeRegImm, width: .full))
        // Group 2: shifts and rotates (/6 is SAL, an alias of SHL).
        for (d, m) in ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"].enumerated() {
            for (op, count, width) in [(0xC0, .imm8, .byte), (0xC1, .imm8, .full), (0xD0, .one, .byte), (0xD1, .one, .full),
                                       (0xD2, .cl, .byte), (0xD3, .cl, .full)] as [(UInt8, OpcodeEntry.Count, OpcodeEntry.Width)] {
                t.append(OpcodeEntry(opcode: [op], digit: UInt8(d), mnemonic: m, shape: .shift(count), width: width))
            }
        }
        t.append(OpcodeEntry(opcode: [0xC6], digit: 0, mnemonic: "mov", shape: .rmImm(writes: true, wideImmediate: false), width: .byte))
        t.append(OpcodeEntry(opcode: [0xC7], digit: 0, mnemonic: "mov", shape: .rmImm(writes: true, wideImmediate: true), width: .full))
        t.append(OpcodeEntry(opcode: [0xD4], mnemonic: "aam", shape: .imm(wide: false), width: .fixed, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0xD5], mnemonic: "aad", shape: .imm(wide: false), width: .fixed, modes: .legacy))
        t.append(OpcodeEntry(opcode: [0xD7], mnemonic: "xlatb", shape: .implicit, width: .fixed))
        for (op, m) in [(0xE0, "loopne"), (0xE1, "loope"), (0xE2, "loop"), (0xE3, "jcxz"), (0xEB, "jmp")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [op], mnemonic: m, shape: .branchToNext(wide: false), width: .fixed))
        }
        t.append(OpcodeEntry(opcode: [0xE8], mnemonic: "call", shape: .branchToNext(wide: true), width: .fixed))
        t.append(OpcodeEntry(opcode: [0xE9], mnemonic: "jmp", shape: .branchToNext(wide: true), width: .fixed))
        for (op, m) in [(0xF5, "cmc"), (0xF8, "clc"), (0xF9, "stc"), (0xFC, "cld"), (0xFD, "std")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [op], mnemonic: m, shape: .implicit, width: .fixed))
        }
        // Group 3: test (/1 is an alias of /0), not, neg, mul, imul, div, idiv.
        for (d, m) in ["test", "test", "not", "neg", "mul", "imul", "div", "idiv"].enumerated() {
            let shape: OpcodeEntry.Shape = m == "test" ? .rmImm(writes: false, wideImmediate: false) : .rm(writes: m == "not" || m == "neg")
            let wide: OpcodeEntry.Shape = m == "test" ? .rmImm(writes: false, wideImmediate: true) : shape
            t.append(OpcodeEntry(opcode: [0xF6], digit: UInt8(d), mnemonic: m, shape: shape, width: .byte, lockable: m == "not" || m == "neg"))
            t.append(OpcodeEntry(opcode: [0xF7], digit: UInt8(d), mnemonic: m, shape: wide, width: .full, lockable: m == "not" || m == "neg"))
        }
        // Groups 4 and 5: inc, dec (and push r/m).
        for (d, m) in ["inc", "dec"].enumerated() {
            t.append(OpcodeEntry(opcode: [0xFE], digit: UInt8(d), mnemonic: m, shape: .rm(writes: true), width: .byte, lockable: true))
            t.append(OpcodeEntry(opcode: [0xFF], digit: UInt8(d), mnemonic: m, shape: .rm(writes: true), width: .full, lockable: true))
        }
        t.append(OpcodeEntry(opcode: [0xFF], digit: 6, mnemonic: "push", shape: .rm(writes: false), width: .stack))

        // The 0F map.
        t.append(OpcodeEntry(opcode: [0x0F, 0x0D], digit: 1, mnemonic: "prefetchw", shape: .rm(writes: false), width: .fixed, memoryOnly: true))
        for (d, m) in ["prefetchnta", "prefetcht0", "prefetcht1", "prefetcht2"].enumerated() {
            t.append(OpcodeEntry(opcode: [0x0F, 0x18], digit: UInt8(d), mnemonic: m, shape: .rm(writes: false), width: .fixed, memoryOnly: true))
        }
        t.append(OpcodeEntry(opcode: [0x0F, 0x1F], digit: 0, mnemonic: "nop", shape: .rm(writes: false), width: .full))
        t.append(OpcodeEntry(opcode: [0x0F, 0x40], mnemonic: "cmovcc", shape: .regRM(writesReg: true), width: .full, conditionCodes: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0x80], mnemonic: "jcc", shape: .branchToNext(wide: true), width: .fixed, conditionCodes: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0x90], mnemonic: "setcc", shape: .rm(writes: true), width: .byte, conditionCodes: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0xA0], mnemonic: "push", shape: .implicit, width: .fixed))
        t.append(OpcodeEntry(opcode: [0x0F, 0xA8], mnemonic: "push", shape: .implicit, width: .fixed))
        for (op, m) in [(0xA3, "bt"), (0xAB, "bts"), (0xB3, "btr"), (0xBB, "btc")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [0x0F, op], mnemonic: m, shape: .rmReg(writesRM: m != "bt", writesReg: false), width: .full, lockable: m != "bt"))
        }
        for (d, m) in ["bt", "bts", "btr", "btc"].enumerated() {
            t.append(OpcodeEntry(opcode: [0x0F, 0xBA], digit: UInt8(4 + d), mnemonic: m, shape: .rmImm(writes: m != "bt", wideImmediate: false), width: .full, lockable: m != "bt"))
        }
        for (op, m, byCL) in [(0xA4, "shld", false), (0xA5, "shld", true), (0xAC, "shrd", false), (0xAD, "shrd", true)] as [(UInt8, String, Bool)] {
            t.append(OpcodeEntry(opcode: [0x0F, op], mnemonic: m, shape: .doubleShift(byCL: byCL), width: .full))
        }
        t.append(OpcodeEntry(opcode: [0x0F, 0xB0], mnemonic: "cmpxchg", shape: .rmReg(writesRM: true, writesReg: false), width: .byte, lockable: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0xB1], mnemonic: "cmpxchg", shape: .rmReg(writesRM: true, writesReg: false), width: .full, lockable: true))
        for (op, m) in [(0xAF, "imul"), (0xB6, "movzx"), (0xB7, "movzx"), (0xBE, "movsx"), (0xBF, "movsx"), (0xBC, "bsf"), (0xBD, "bsr")] as [(UInt8, String)] {
            t.append(OpcodeEntry(opcode: [0x0F, op], mnemonic: m, shape: .regRM(writesReg: true), width: .full))
        }
        t.append(OpcodeEntry(opcode: [0x0F, 0xC0], mnemonic: "xadd", shape: .rmReg(writesRM: true, writesReg: true), width: .byte, lockable: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0xC1], mnemonic: "xadd", shape: .rmReg(writesRM: true, writesReg: true), width: .full, lockable: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0xC7], digit: 1, mnemonic: "cmpxchg8b", shape: .rm(writes: true), width: .dword, memoryOnly: true, lockable: true))
        t.append(OpcodeEntry(opcode: [0x0F, 0xC8], mnemonic: "bswap", shape: .opcodeReg(writes: true), width: .dword))
        return t
    }()

    /// Everything else Capstone decodes in the one-byte and 0F maps, by reason.
    static let exclusions: [OpcodeExclusion] = [
        OpcodeExclusion(opcodes: [[0x26], [0x2E], [0x36], [0x3E], [0x64], [0x65], [0x66], [0x67], [0xF0], [0xF2], [0xF3], [0x0F]] + (0x40...0x4F).map { [$0] },
                        reason: "prefixes and escapes (REX in 64-bit mode): the generator emits them as parts of instructions"),
        OpcodeExclusion(opcodes: [[0x07], [0x17], [0x1F], [0x8E], [0xC4], [0xC5], [0x0F, 0xA1], [0x0F, 0xA9], [0x0F, 0xB2], [0x0F, 0xB4], [0x0F, 0xB5]],
                        reason: "segment register loads (pop Sreg, mov Sreg, les/lds/lss/lfs/lgs): random selectors only fault; the guests test segment loading"),
        OpcodeExclusion(opcodes: [[0x61]], reason: "popa overwrites the base registers that keep memory operands inside the sandbox"),
        OpcodeExclusion(opcodes: [[0x9D]], reason: "popf can set TF and AC from random stack contents: a trap or alignment check after the next instruction, sandbox control rather than data"),
        OpcodeExclusion(opcodes: [[0xC8], [0xC9]], reason: "enter/leave load RSP from RBP, which holds a random value: the stack would leave the sandbox"),
        OpcodeExclusion(opcodes: [[0x9A], [0xC2], [0xC3], [0xCA], [0xCB], [0xCF], [0xEA]], reason: "far transfers and returns: control would leave the sandbox"),
        OpcodeExclusion(opcodes: [[0xFF]], digits: [2, 3, 4, 5], reason: "indirect calls and jumps: control would leave the sandbox"),
        OpcodeExclusion(opcodes: [[0xCC], [0xCD], [0xF1]], reason: "software interrupts (int3, int n, int1): INT n at CPL 3 triple-faults under PVM; exceptions are tested by the guests"),
        OpcodeExclusion(opcodes: [[0x6C], [0x6D], [0x6E], [0x6F], [0xE4], [0xE5], [0xE6], [0xE7], [0xEC], [0xED], [0xEE], [0xEF]], reason: "port I/O"),
        OpcodeExclusion(opcodes: [[0xF4], [0xFA], [0xFB]], reason: "privileged (hlt, cli, sti): hlt ends the sandbox; IF belongs to the sandbox"),
        OpcodeExclusion(opcodes: (0xD8...0xDF).map { [$0] } + [[0x9B]], reason: "x87 (and fwait): generated apart, in user64 only (FuzzX87.swift), where KVM runs them on the CPU"),
        OpcodeExclusion(opcodes: [[0x8F], [0xC6], [0xC7]], digits: [1, 2, 3, 4, 5, 6, 7], reason: "XOP prefix (8F), RTM xabort/xbegin (C6 F8, C7 F8): not integer instructions of this CPU"),
        OpcodeExclusion(opcodes: [[0xFE]], digits: [2, 3, 4, 5, 6, 7], reason: "undefined in group 4"),
        OpcodeExclusion(opcodes: [[0x0F, 0x00], [0x0F, 0x01], [0x0F, 0x02], [0x0F, 0x03]],
                        reason: "descriptor-table instructions (sldt, str, lldt, ltr, verr, verw, sgdt, sidt, lgdt, lidt, smsw, lmsw, invlpg, swapgs, rdtscp, monitor, ..., lar, lsl): privileged, or they read the host's tables under PVM at CPL 3"),
        OpcodeExclusion(opcodes: [[0x0F, 0x05], [0x0F, 0x06], [0x0F, 0x07], [0x0F, 0x08], [0x0F, 0x09], [0x0F, 0x30], [0x0F, 0x32], [0x0F, 0x33], [0x0F, 0x34], [0x0F, 0x35], [0x0F, 0x37], [0x0F, 0xAA]],
                        reason: "system instructions (syscall, sysret, sysenter, sysexit, clts, invd, wbinvd, wrmsr, rdmsr, rdpmc, getsec, rsm): privileged or leave the sandbox"),
        OpcodeExclusion(opcodes: [[0x0F, 0x31], [0x0F, 0xA2], [0x0F, 0xC7]], digits: nil,
                        reason: "rdtsc, cpuid, rdrand/rdseed (0F C7 /6 /7): results are host-specific (cmpxchg8b, 0F C7 /1, is in the table)"),
        OpcodeExclusion(opcodes: [[0x0F, 0x0B], [0x0F, 0xB9], [0x0F, 0xFF]], reason: "ud2, ud1, ud0: defined to raise #UD"),
        OpcodeExclusion(opcodes: [[0x0F, 0x0D], [0x0F, 0x18]], digits: nil, reason: "reserved prefetch hints (0F 0D /0 /2-/7, 0F 18 /4-/7): only the named hints are in the table"),
        OpcodeExclusion(opcodes: (0x19...0x1E).map { [0x0F, $0] } + [[0x0F, 0x1F]], digits: nil,
                        reason: "reserved hint NOPs (0F 19-1E; 0F 1F /1-/7): reserved for new instructions (endbr64, bnd*), only 0F 1F /0 is in the table"),
        OpcodeExclusion(opcodes: (0x10...0x17).map { [0x0F, $0] } + (0x28...0x2F).map { [0x0F, $0] } + (0x50...0x7F).map { [0x0F, $0] }
                        + (0xC2...0xC6).map { [0x0F, $0] } + (0xD0...0xFE).map { [0x0F, $0] } + [[0x0F, 0x0E], [0x0F, 0x0F], [0x0F, 0xAE], [0x0F, 0x78], [0x0F, 0x79]],
                        reason: "SSE, MMX, 3DNow!, fxsave/ldmxcsr/fences (0F AE), vmread/vmwrite: MMX/SSE forms are generated by FuzzSSE.swift (user64)"),
        OpcodeExclusion(opcodes: [[0x0F, 0x20], [0x0F, 0x21], [0x0F, 0x22], [0x0F, 0x23], [0x0F, 0x24], [0x0F, 0x26]], reason: "control and debug register moves: privileged"),
        OpcodeExclusion(opcodes: [[0x0F, 0xA6], [0x0F, 0xA7]], reason: "VIA PadLock (montmul, xsha*, xcrypt*, xstore): not on x86 CPUs from Intel or AMD"),
        OpcodeExclusion(opcodes: [[0x0F, 0x38], [0x0F, 0x3A]], reason: "three-byte maps (movbe, crc32, SSSE3/SSE4): outside the one-byte and 0F maps"),
        OpcodeExclusion(opcodes: [[0x0F, 0xB8], [0x0F, 0xBC], [0x0F, 0xBD]], digits: nil,
                        reason: "F3-prefixed popcnt, tzcnt, lzcnt (and jmpe): the interpreter does not implement them (bsf/bsr, 0F BC/BD without F3, are in the table)"),
    ]

    /// The entries that exist in `mode`.
    static func entries(for mode: FuzzMode) -> [OpcodeEntry] {
        entries.filter { e in
            switch e.modes {
            case .all: true
            case .legacy: mode.bits != 64
            case .long: mode.bits == 64
            }
        }
    }

    /// Opcodes (with /digit) that Capstone decodes in `bits`-bit code which neither an entry
    /// nor an exclusion accounts for: the table's completeness check.
    public static func unaccounted(bits: Int, disassembler: Disassembler = Disassembler()) -> [String] {
        let mode: FuzzMode = bits == 64 ? .user64 : bits == 32 ? .prot32 : .real16
        let table = entries(for: mode)
        var out: [String] = []
        let maps: [[UInt8]] = (0...255).map { [UInt8($0)] } + (0...255).map { [0x0F, UInt8($0)] }
        for opcode in maps {
            for digit in UInt8(0)...7 {
                // A register form and a memory form (mod 1, disp8), an immediate's worth of zeros after.
                let forms = [[0xC0 | digit << 3], [0x40 | digit << 3, 0x10]].map { opcode + $0 + [UInt8](repeating: 0, count: 8) }
                let decoded = forms.compactMap { disassembler.disassemble($0, address: 0, bits: bits) }
                guard !decoded.isEmpty else { continue }
                let inTable = table.contains { e in e.opcodes.contains(opcode) && (e.digit == nil || e.digit == digit) }
                let excluded = exclusions.contains { x in x.opcodes.contains(opcode) && (x.digits == nil || x.digits!.contains(digit)) }
                if !inTable && !excluded {
                    out.append(opcode.map(byteHex).joined(separator: " ") + " /\(digit): " + decoded[0].text)
                }
            }
        }
        return out
    }
}
