/// A small deterministic PRNG (SplitMix64): a fixed seed gives the same campaign.
public struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476C_E5B9_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The CPU mode a fuzz campaign runs its sequences in.
public enum FuzzMode: String, CaseIterable, Sendable {
    /// 64-bit code at CPL 3: KVM runs it natively even on PVM hosts (a hardware oracle).
    case user64
    /// 64-bit code at CPL 0.
    case long64
    /// 32-bit protected mode at CPL 0.
    case prot32
    /// Real mode.
    case real16

    var bits: Int { self == .real16 ? 16 : self == .prot32 ? 32 : 64 }
}

/// One generated instruction: its bytes, and whether it leaves flags undefined.
struct FuzzInstruction: Sendable {
    var bytes: [UInt8]
    var leavesFlagsUndefined: Bool
}

/// Generates random, valid integer instructions whose memory operands stay inside the
/// sandbox's data page: they address memory only through rBX, rSI and rDI (which point
/// into it and are never written, except by short string instructions) plus an 8-bit
/// displacement, and write only the "free" registers.
struct InstructionGenerator {
    let mode: FuzzMode
    var rng: SplitMix64

    /// Registers instructions may write: rAX, rCX, rDX, rBP, and R8-R15 in 64-bit mode.
    var freeRegisters: [UInt8] { mode.bits == 64 ? [0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15] : [0, 1, 2, 5] }
    /// Registers that hold addresses in the data page.
    static let baseRegisters: [UInt8] = [3, 6, 7]

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: rng.next()) }

    /// Operand size for this instruction: 1, 2, 4 or 8 bytes (8 only in 64-bit mode).
    mutating func operandSize(allowByte: Bool = true) -> Int {
        var sizes = [2, 4]
        if allowByte { sizes.append(1) }
        if mode.bits == 64 { sizes += [8, 8] }
        return pick(sizes)
    }

    /// A ModRM operand: a free register (mod 3) or [base + disp8].
    struct RM { var modrmLowBits: UInt8; var rexB: Bool; var isMemory: Bool; var disp: [UInt8] }

    mutating func rm(write: Bool, allowMemory: Bool = true) -> RM {
        if allowMemory && chance(45) {
            let base = pick(Self.baseRegisters)
            let disp = UInt8(truncatingIfNeeded: Int8.random(in: -64...63, using: &rng))
            if mode.bits == 16 {
                let rm16: [UInt8: UInt8] = [3: 7, 6: 4, 7: 5]   // [bx], [si], [di]
                return RM(modrmLowBits: 0x40 | rm16[base]!, rexB: false, isMemory: true, disp: [disp])
            }
            return RM(modrmLowBits: 0x40 | base, rexB: false, isMemory: true, disp: [disp])
        }
        let r = write ? pick(freeRegisters) : pick(freeRegisters + Self.baseRegisters)
        return RM(modrmLowBits: 0xC0 | (r & 7), rexB: r >= 8, isMemory: false, disp: [])
    }

    /// Prefixes (operand size, REX) and the assembled instruction.
    func assemble(size: Int, opcode: [UInt8], reg: UInt8, rm: RM, immediate: [UInt8] = [], rexR: Bool = false, forceREX: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        let defaultSize = mode.bits == 16 ? 2 : 4
        if size == 2 && defaultSize == 4 { out.append(0x66) }
        if size == 4 && defaultSize == 2 { out.append(0x66) }
        if mode.bits == 64 {
            var rex: UInt8 = 0x40
            if size == 8 { rex |= 8 }
            if rexR || reg >= 8 { rex |= 4 }
            if rm.rexB { rex |= 1 }
            if rex != 0x40 || forceREX { out.append(rex) }
        }
        out += opcode
        out.append(rm.modrmLowBits | (reg & 7) << 3)
        out += rm.disp
        out += immediate
        return out
    }

    mutating func immediate(_ size: Int) -> [UInt8] {
        (0..<min(size, 4)).map { _ in byte() }
    }

    /// One random instruction.
    mutating func next() -> FuzzInstruction {
        let choice = rng.next() % 100
        let cc = UInt8(rng.next() % 16)
        switch choice {
        case 0..<22:   // ALU: add or adc sbb and sub xor cmp, both directions
            let op = UInt8(rng.next() % 8)
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            if chance(50) {
                let target = rm(write: op != 7)
                let src = pick(freeRegisters + Self.baseRegisters)
                return FuzzInstruction(bytes: assemble(size: size, opcode: [op << 3 | w], reg: src, rm: target), leavesFlagsUndefined: op == 1 || op == 4 || op == 6)
            }
            let dst = pick(freeRegisters)
            return FuzzInstruction(bytes: assemble(size: size, opcode: [op << 3 | 2 | w], reg: dst, rm: rm(write: false)), leavesFlagsUndefined: op == 1 || op == 4 || op == 6)
        case 22..<34:  // ALU with immediates
            let op = UInt8(rng.next() % 8)
            let size = operandSize()
            let target = rm(write: op != 7)
            if size == 1 { return FuzzInstruction(bytes: assemble(size: 1, opcode: [0x80], reg: op, rm: target, immediate: immediate(1)), leavesFlagsUndefined: op == 1 || op == 4 || op == 6) }
            if chance(50) { return FuzzInstruction(bytes: assemble(size: size, opcode: [0x83], reg: op, rm: target, immediate: immediate(1)), leavesFlagsUndefined: op == 1 || op == 4 || op == 6) }
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0x81], reg: op, rm: target, immediate: immediate(size == 2 ? 2 : 4)), leavesFlagsUndefined: op == 1 || op == 4 || op == 6)
        case 34..<44:  // mov
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            if chance(50) { return FuzzInstruction(bytes: assemble(size: size, opcode: [0x88 | w], reg: pick(freeRegisters + Self.baseRegisters), rm: rm(write: true)), leavesFlagsUndefined: false) }
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0x8A | w], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: false)
        case 44..<52:  // shifts and rotates
            let op = pick([0, 1, 2, 3, 4, 5, 7] as [UInt8])
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            switch rng.next() % 3 {
            case 0: return FuzzInstruction(bytes: assemble(size: size, opcode: [0xD0 | w], reg: op, rm: rm(write: true)), leavesFlagsUndefined: true)
            case 1: return FuzzInstruction(bytes: assemble(size: size, opcode: [0xC0 | w], reg: op, rm: rm(write: true), immediate: [byte() & 0x3F]), leavesFlagsUndefined: true)
            default: return FuzzInstruction(bytes: assemble(size: size, opcode: [0xD2 | w], reg: op, rm: rm(write: true)), leavesFlagsUndefined: true)
            }
        case 52..<58:  // inc dec not neg
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            if chance(50) { return FuzzInstruction(bytes: assemble(size: size, opcode: [0xFE | w], reg: UInt8(rng.next() % 2), rm: rm(write: true)), leavesFlagsUndefined: false) }
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0xF6 | w], reg: UInt8(2 + rng.next() % 2), rm: rm(write: true)), leavesFlagsUndefined: false)
        case 58..<63:  // mul imul div idiv (one operand)
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0xF6 | w], reg: UInt8(4 + rng.next() % 4), rm: rm(write: false)), leavesFlagsUndefined: true)
        case 63..<66:  // imul r, r/m (, imm)
            let size = operandSize(allowByte: false)
            switch rng.next() % 3 {
            case 0: return FuzzInstruction(bytes: assemble(size: size, opcode: [0x0F, 0xAF], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: true)
            case 1: return FuzzInstruction(bytes: assemble(size: size, opcode: [0x6B], reg: pick(freeRegisters), rm: rm(write: false), immediate: [byte()]), leavesFlagsUndefined: true)
            default: return FuzzInstruction(bytes: assemble(size: size, opcode: [0x69], reg: pick(freeRegisters), rm: rm(write: false), immediate: immediate(size == 2 ? 2 : 4)), leavesFlagsUndefined: true)
            }
        case 66..<70:  // test
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0x84 | w], reg: pick(freeRegisters + Self.baseRegisters), rm: rm(write: false)), leavesFlagsUndefined: true)
        case 70..<74:  // movzx movsx
            let size = operandSize(allowByte: false)
            let op: UInt8 = pick([0xB6, 0xB7, 0xBE, 0xBF])
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0x0F, op], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: false)
        case 74..<78:  // cmovcc, setcc
            if chance(50) {
                return FuzzInstruction(bytes: assemble(size: operandSize(allowByte: false), opcode: [0x0F, 0x40 | cc], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: false)
            }
            return FuzzInstruction(bytes: assemble(size: 1, opcode: [0x0F, 0x90 | cc], reg: 0, rm: rm(write: true)), leavesFlagsUndefined: false)
        case 78..<82:  // bt bts btr btc with an immediate bit, bsf bsr
            let size = operandSize(allowByte: false)
            if chance(60) {
                return FuzzInstruction(bytes: assemble(size: size, opcode: [0x0F, 0xBA], reg: UInt8(4 + rng.next() % 4), rm: rm(write: true), immediate: [byte()]), leavesFlagsUndefined: true)
            }
            return FuzzInstruction(bytes: assemble(size: size, opcode: [0x0F, pick([0xBC, 0xBD] as [UInt8])], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: true)
        case 82..<85:  // xadd cmpxchg xchg
            let size = operandSize()
            let w: UInt8 = size == 1 ? 0 : 1
            let target = rm(write: true)
            let lock: [UInt8] = target.isMemory && chance(50) ? [0xF0] : []
            switch rng.next() % 3 {
            case 0: return FuzzInstruction(bytes: lock + assemble(size: size, opcode: [0x0F, 0xC0 | w], reg: pick(freeRegisters), rm: target), leavesFlagsUndefined: false)
            case 1: return FuzzInstruction(bytes: lock + assemble(size: size, opcode: [0x0F, 0xB0 | w], reg: pick(freeRegisters), rm: target), leavesFlagsUndefined: false)
            default: return FuzzInstruction(bytes: assemble(size: size, opcode: [0x86 | w], reg: pick(freeRegisters), rm: target), leavesFlagsUndefined: false)
            }
        case 85..<88:  // lea, cbw/cwd families, flag instructions
            switch rng.next() % 4 {
            case 0:
                let size = operandSize(allowByte: false)
                var m = rm(write: false)
                if !m.isMemory { m = RM(modrmLowBits: mode.bits == 16 ? 0x47 : 0x43, rexB: false, isMemory: true, disp: [byte()]) }
                return FuzzInstruction(bytes: assemble(size: size, opcode: [0x8D], reg: pick(freeRegisters), rm: m), leavesFlagsUndefined: false)
            case 1:
                let size = operandSize(allowByte: false)
                var b: [UInt8] = []
                if size == 2 && mode.bits != 16 { b.append(0x66) }
                if size == 4 && mode.bits == 16 { b.append(0x66) }
                if size == 8 { b.append(0x48) }
                return FuzzInstruction(bytes: b + [pick([0x98, 0x99] as [UInt8])], leavesFlagsUndefined: false)
            case 2:
                let ops: [UInt8] = mode.bits == 64 ? [0xF5, 0xF8, 0xF9] : [0xF5, 0xF8, 0xF9, 0x9E, 0x9F]
                return FuzzInstruction(bytes: [pick(ops)], leavesFlagsUndefined: false)
            default:
                // jcc to the next instruction: tests the condition without moving control.
                return FuzzInstruction(bytes: [0x70 | cc, 0x00], leavesFlagsUndefined: false)
            }
        case 88..<92:  // shld shrd, bswap
            if mode.bits != 16 && chance(70) {
                let size = mode.bits == 64 && chance(50) ? 8 : 4
                let op: UInt8 = pick([0xA4, 0xA5, 0xAC, 0xAD])
                let imm: [UInt8] = op & 1 == 0 ? [byte() & 0x3F] : []
                return FuzzInstruction(bytes: assemble(size: size, opcode: [0x0F, op], reg: pick(freeRegisters + Self.baseRegisters), rm: rm(write: true), immediate: imm), leavesFlagsUndefined: true)
            }
            let r = pick(freeRegisters)
            var b: [UInt8] = mode.bits == 16 ? [0x66] : []
            if mode.bits == 64 { b.append(0x48 | (r >= 8 ? 1 : 0)) }
            return FuzzInstruction(bytes: b + [0x0F, 0xC8 | (r & 7)], leavesFlagsUndefined: false)
        case 92..<95:  // movsxd / mov r, imm
            if mode.bits == 64 && chance(50) {
                return FuzzInstruction(bytes: assemble(size: 8, opcode: [0x63], reg: pick(freeRegisters), rm: rm(write: false)), leavesFlagsUndefined: false)
            }
            let r = pick(freeRegisters)
            let size = operandSize(allowByte: false)
            var b: [UInt8] = []
            if size == 2 && mode.bits != 16 { b.append(0x66) }
            if size == 4 && mode.bits == 16 { b.append(0x66) }
            if mode.bits == 64 && (size == 8 || r >= 8) { b.append(0x40 | (size == 8 ? 8 : 0) | (r >= 8 ? 1 : 0)) }
            let immSize = size == 8 ? 8 : size
            return FuzzInstruction(bytes: b + [0xB8 | (r & 7)] + (0..<immSize).map { _ in byte() }, leavesFlagsUndefined: false)
        default:       // a short REP string instruction: a small count first
            let op: UInt8 = pick([0xA4, 0xA5, 0xAA, 0xAB, 0xAC, 0xAD, 0xA6, 0xA7, 0xAE, 0xAF])
            let count = UInt8(rng.next() % 6)
            let setCount: [UInt8] = mode.bits == 16 ? [0xB9, count, 0] : [0xB9, count, 0, 0, 0]
            let rep: UInt8 = (op == 0xA6 || op == 0xA7 || op == 0xAE || op == 0xAF) ? pick([0xF3, 0xF2] as [UInt8]) : 0xF3
            return FuzzInstruction(bytes: setCount + [0xFC, rep, op], leavesFlagsUndefined: false)
        }
    }
}
