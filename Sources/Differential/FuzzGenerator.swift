import Machine

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

/// One generated instruction: the instructions that set up its operands (a shift count in
/// CL, a dividend and divisor, a bit offset, a string count), the instruction itself, and
/// the RFLAGS bits it leaves undefined for exactly these operands.
struct FuzzInstruction: Sendable {
    var setup: [UInt8] = []
    var bytes: [UInt8]
    var mnemonic: String
    /// Opcode, operand kinds and size: what the campaign's coverage counts.
    var form: String
    var undefinedFlags: UInt64
}

/// Values at the edges of a width, where carries, overflows and sign changes happen.
enum EdgeValues {
    /// 0, ±1, the signed and unsigned limits and their neighbours, and the nibble and byte
    /// boundaries that carry into AF and CF, truncated to `bits`.
    static func table(bits: Int) -> [UInt64] {
        let mask: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
        let signBit: UInt64 = 1 << UInt64(bits - 1)
        let all: [UInt64] = [0, 1, 2, mask, mask - 1, signBit, signBit - 1, signBit + 1, 0x0F, 0x10, 0x08, 0x7F, 0x80, 0xFF, 0x100,
                             0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000]
        var seen = Set<UInt64>()
        return all.map { $0 & mask }.filter { seen.insert($0).inserted }
    }
    /// The tables for 8, 16, 32 and 64 bits, built once.
    static let tables: [[UInt64]] = [8, 16, 32, 64].map { table(bits: $0) }

    /// Half the time an edge value of `bits`, otherwise uniformly random (both truncated).
    static func value(bits: Int, _ rng: inout SplitMix64) -> UInt64 {
        let mask: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
        guard rng.next() % 2 == 0 else { return rng.next() & mask }
        let edges = tables[bits.trailingZeroBitCount - 3]
        return edges[Int(rng.next() % UInt64(edges.count))]
    }

    /// A register-sized value: an edge of a random width (zero- or sign-extended) half the time.
    static func register(_ rng: inout SplitMix64) -> UInt64 {
        guard rng.next() % 2 == 0 else { return rng.next() }
        let bits = [8, 16, 32, 64][Int(rng.next() % 4)]
        let v = value(bits: bits, &rng)
        let signBit: UInt64 = 1 << UInt64(bits - 1)
        return rng.next() % 2 == 0 || bits == 64 || v & signBit == 0 ? v : v | ~((signBit << 1) &- 1)
    }

    /// Shift and rotate counts: 0, 1, width-1, width, width+1, the 5- and 6-bit mask edges.
    static func count(bits: Int, _ rng: inout SplitMix64) -> UInt8 {
        guard rng.next() % 4 != 0 else { return UInt8(truncatingIfNeeded: rng.next()) }
        let edges: [Int] = [0, 1, 2, bits - 1, bits, bits + 1, 31, 32, 33, 63, 64, 0xFF]
        return UInt8(edges[Int(rng.next() % UInt64(edges.count))] & 0xFF)
    }
}

/// Generates instructions by walking `FuzzOpcodeTable`, with memory operands that stay
/// inside the sandbox's data page: they address memory only through rBX, rSI and rDI
/// (which point into it and are never written, except by short string instructions) plus
/// an 8-bit displacement, and write only the "free" registers.
struct InstructionGenerator {
    let mode: FuzzMode
    var rng: SplitMix64
    let table: [OpcodeEntry]
    /// rBX's value, so cmpxchg16b can be given an aligned operand.
    var rbx: UInt64 = 0
    /// Percentage of x87 instructions (FuzzX87.swift): user64 only, where KVM runs them
    /// on the CPU; this host's kernel emulator cannot run x87 at all.
    var x87Share: UInt64 { mode == .user64 ? 30 : 0 }

    /// `hostSelectorsVisible`: CPL 3 code runs with the host's segment selectors (PVM), so
    /// reading one compares nothing of ours; those forms are left out.
    init(mode: FuzzMode, rng: SplitMix64, hostSelectorsVisible: Bool = false) {
        self.mode = mode
        self.rng = rng
        table = FuzzOpcodeTable.entries(for: mode).filter { !(hostSelectorsVisible && $0.readsSegmentSelector) }
    }

    /// Registers instructions may write: rAX, rCX, rDX, rBP, and R8-R15 in 64-bit mode.
    var freeRegisters: [UInt8] { mode.bits == 64 ? [0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15] : [0, 1, 2, 5] }
    /// Registers that hold addresses in the data page.
    static let baseRegisters: [UInt8] = [3, 6, 7]

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: rng.next()) }

    /// The operand sizes (bytes) an entry can have in this mode.
    func sizes(_ width: OpcodeEntry.Width) -> [Int] {
        switch width {
        case .byte: [1]
        case .full: mode.bits == 64 ? [2, 4, 8] : [2, 4]
        case .stack: mode.bits == 64 ? [2, 8] : [2, 4]
        case .dword: mode.bits == 64 ? [4, 8] : [4]
        case .word: [2]
        case .fixed: [mode.bits == 16 ? 2 : 4]
        }
    }

    /// A ModRM operand: a register (mod 3) or [base + disp8].
    struct RM { var modrmLowBits: UInt8; var rexB: Bool; var isMemory: Bool; var disp: [UInt8] }

    mutating func rm(write: Bool, memory: Bool) -> RM {
        if memory {
            let base = pick(Self.baseRegisters)
            let disp = UInt8(truncatingIfNeeded: Int8.random(in: -64...63, using: &rng))
            return memoryOperand(base: base, disp: disp)
        }
        let r = write ? pick(freeRegisters) : pick(freeRegisters + Self.baseRegisters)
        return RM(modrmLowBits: 0xC0 | (r & 7), rexB: r >= 8, isMemory: false, disp: [])
    }

    func memoryOperand(base: UInt8, disp: UInt8) -> RM {
        if mode.bits == 16 {
            let rm16: [UInt8: UInt8] = [3: 7, 6: 4, 7: 5]   // [bx], [si], [di]
            return RM(modrmLowBits: 0x40 | rm16[base]!, rexB: false, isMemory: true, disp: [disp])
        }
        return RM(modrmLowBits: 0x40 | base, rexB: false, isMemory: true, disp: [disp])
    }

    /// The operand-size prefix (66) and REX a `size`-byte operation needs in this mode.
    func prefixes(size: Int, width: OpcodeEntry.Width, rexR: Bool = false, rexB: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        let sized = width == .full || width == .stack || width == .dword
        let defaultSize = mode.bits == 16 ? 2 : 4
        if sized && size == 2 && defaultSize == 4 { out.append(0x66) }
        if sized && size == 4 && defaultSize == 2 { out.append(0x66) }
        if mode.bits == 64 {
            var rex: UInt8 = 0x40
            if sized && size == 8 && width != .stack { rex |= 8 }
            if rexR { rex |= 4 }
            if rexB { rex |= 1 }
            if rex != 0x40 { out.append(rex) }
        }
        return out
    }

    func assemble(size: Int, width: OpcodeEntry.Width, opcode: [UInt8], reg: UInt8, rm: RM, immediate: [UInt8] = []) -> [UInt8] {
        prefixes(size: size, width: width, rexR: reg >= 8, rexB: rm.rexB) + opcode + [rm.modrmLowBits | (reg & 7) << 3] + rm.disp + immediate
    }

    /// mov reg, value at the mode's full register width (the whole register, so the
    /// instruction's narrower operand sees exactly `value`'s low bits).
    func load(_ reg: UInt8, _ value: UInt64) -> [UInt8] {
        switch mode.bits {
        case 64: [0x48 | (reg >= 8 ? 1 : 0), 0xB8 | (reg & 7)] + FuzzSandbox.le(value, 8)
        case 32: [0xB8 | reg] + FuzzSandbox.le(value, 4)
        default: [0x66, 0xB8 | reg] + FuzzSandbox.le(value, 4)
        }
    }

    /// An immediate of `size` bytes (at most 4: 64-bit operations sign-extend imm32),
    /// half the time an edge value.
    mutating func immediate(_ size: Int) -> [UInt8] {
        FuzzSandbox.le(EdgeValues.value(bits: 8 * min(size, 4), &rng), min(size, 4))
    }

    /// One instruction of a random table entry.
    mutating func next() -> FuzzInstruction {
        if x87Share > 0 && chance(x87Share) { return x87Instruction() }
        if mode == .user64 && chance(50) { return nextSSE() }   // FuzzSSE.swift
        let entry = pick(table)
        let size = pick(sizes(entry.width))
        let bits = size * 8
        let memory = entry.memoryOnly || (chance(45) && !isRegisterOnly(entry.shape))
        var opcode = entry.opcode
        if entry.conditionCodes { opcode[opcode.count - 1] |= UInt8(rng.next() % 16) }
        let lock: [UInt8] = entry.lockable && memory && chance(50) ? [0xF0] : []
        var insn = FuzzInstruction(bytes: [], mnemonic: entry.mnemonic, form: "", undefinedFlags: 0)
        var kind: String
        // The shift or rotate count, where it decides which flags are defined.
        var count: Int? = nil
        switch entry.shape {
        case .rm(let writes):
            var target = rm(write: writes, memory: memory)
            if entry.mnemonic == "cmpxchg8b" && size == 8 && chance(50) {
                // cmpxchg16b needs a 16-byte aligned operand (#GP otherwise): half aligned.
                let disp = UInt8(truncatingIfNeeded: (0x30 &- (rbx & 0xF)) & 0x3F)
                target = memoryOperand(base: 3, disp: disp)
            }
            if entry.mnemonic == "div" || entry.mnemonic == "idiv", chance(60) {
                let divisor: UInt8 = size == 1 ? pick(mode.bits == 64 ? [1, 8, 9] : [1]) : pick(freeRegisters.filter { $0 != 0 && $0 != 2 })
                insn.setup = divisionSetup(signed: entry.mnemonic == "idiv", bits: bits, divisor: divisor)
                target = RM(modrmLowBits: 0xC0 | (divisor & 7), rexB: divisor >= 8, isMemory: false, disp: [])
            }
            // SETcc ignores the reg field: any value.
            insn.bytes = lock + assemble(size: size, width: entry.width, opcode: opcode, reg: entry.digit ?? UInt8(rng.next() % 8), rm: target)
            kind = "rm"
        case let .rmReg(writesRM, writesReg):
            let target = rm(write: writesRM, memory: memory)
            var reg = writesReg ? pick(freeRegisters) : pick(freeRegisters + Self.baseRegisters)
            if entry.mnemonic.hasPrefix("bt") {
                // The bit offset in a register: with a memory operand it addresses memory
                // (signed, in bits), so it is kept within a few bytes of the operand.
                reg = pick(freeRegisters)
                let offset = target.isMemory ? UInt64(bitPattern: Int64(pick([0, 1, -1, bits - 1, bits, -bits, Int.random(in: -256...255, using: &rng)])))
                                             : UInt64(pick([0, 1, bits - 1, bits, bits + 1, 63, 64, Int(byte())]))
                insn.setup = load(reg, offset)
            }
            insn.bytes = lock + assemble(size: size, width: entry.width, opcode: opcode, reg: reg, rm: target)
            kind = "rm,r"
        case .regRM(let writesReg):
            let reg = writesReg ? pick(freeRegisters) : pick(freeRegisters + Self.baseRegisters)
            insn.bytes = assemble(size: size, width: entry.width, opcode: opcode, reg: reg, rm: rm(write: false, memory: memory))
            kind = "r,rm"
        case let .rmImm(writes, wide):
            let target = rm(write: writes, memory: memory)
            let imm = entry.mnemonic.hasPrefix("bt") ? [EdgeValues.count(bits: bits, &rng)] : immediate(wide ? min(size, 4) : 1)
            insn.bytes = lock + assemble(size: size, width: entry.width, opcode: opcode, reg: entry.digit ?? 0, rm: target, immediate: imm)
            kind = wide ? "rm,imm" : "rm,imm8"
        case .regRMImm(let wide):
            insn.bytes = assemble(size: size, width: entry.width, opcode: opcode, reg: pick(freeRegisters),
                                  rm: rm(write: false, memory: memory), immediate: immediate(wide ? min(size, 4) : 1))
            kind = wide ? "r,rm,imm" : "r,rm,imm8"
        case .doubleShift(let byCL):
            var shiftCount = EdgeValues.count(bits: bits, &rng)
            // A count above a 16-bit operand's width leaves the result undefined: not generated.
            while bits == 16 && shiftCount & 0x1F > 16 { shiftCount = EdgeValues.count(bits: bits, &rng) }
            let target = rm(write: true, memory: memory)
            let reg = pick(freeRegisters + Self.baseRegisters)
            if byCL { insn.setup = [0xB1, shiftCount] }
            insn.bytes = assemble(size: size, width: entry.width, opcode: opcode, reg: reg, rm: target, immediate: byCL ? [] : [shiftCount])
            count = Int(shiftCount)
            kind = byCL ? "rm,r,cl" : "rm,r,imm8"
        case .shift(let source):
            let shiftCount: UInt8 = source == .one ? 1 : EdgeValues.count(bits: bits, &rng)
            if source == .cl { insn.setup = [0xB1, shiftCount] }
            insn.bytes = assemble(size: size, width: entry.width, opcode: opcode, reg: entry.digit ?? 0,
                                  rm: rm(write: true, memory: memory), immediate: source == .imm8 ? [shiftCount] : [])
            count = Int(shiftCount)
            kind = source == .one ? "rm,1" : source == .cl ? "rm,cl" : "rm,imm8"
        case .accImm(let wide):
            insn.bytes = prefixes(size: size, width: entry.width) + opcode + immediate(wide ? min(size, 4) : 1)
            kind = "acc,imm"
        case .opcodeReg(let writes):
            var r = writes ? pick(freeRegisters) : pick(freeRegisters + Self.baseRegisters)
            if entry.mnemonic == "xchg" && r == 0 { r = pick(Array(freeRegisters.dropFirst())) }   // 90 is nop
            opcode[opcode.count - 1] |= r & 7
            insn.bytes = prefixes(size: size, width: entry.width, rexB: r >= 8) + opcode
            kind = "r"
        case .opcodeRegImm:
            let r = pick(freeRegisters)
            opcode[opcode.count - 1] |= r & 7
            let immSize = size == 8 ? 8 : size
            insn.bytes = prefixes(size: size, width: entry.width, rexB: r >= 8) + opcode
                + FuzzSandbox.le(EdgeValues.value(bits: 8 * immSize, &rng), immSize)
            kind = "r,imm"
        case .moffs:
            let address = FuzzSandbox(mode: mode).base + FuzzSandbox.data + 0x400 + rng.next() % 0x800
            insn.bytes = prefixes(size: size, width: entry.width) + opcode + FuzzSandbox.le(address, mode.bits / 8)
            kind = "moffs"
        case .fromSegment:
            let target = rm(write: true, memory: memory)
            insn.bytes = assemble(size: target.isMemory ? 2 : size, width: target.isMemory ? .word : entry.width, opcode: opcode,
                                  reg: UInt8(rng.next() % 6), rm: target)
            kind = "rm,sreg"
        case .implicit:
            insn.bytes = prefixes(size: size, width: entry.width) + opcode
            if ["movs", "cmps", "stos", "lods", "scas"].contains(entry.mnemonic) {
                // A short count (0 is an edge: nothing happens), usually with a REP prefix.
                let count = UInt64(pick([0, 1, 2, 3, 5]))
                insn.setup = mode.bits == 16 ? [0xB9] + FuzzSandbox.le(count, 2) : [0xB9] + FuzzSandbox.le(count, 4)
                if chance(70) { insn.bytes = [entry.mnemonic == "cmps" || entry.mnemonic == "scas" ? pick([0xF3, 0xF2] as [UInt8]) : 0xF3] + insn.bytes }
            }
            kind = "implicit"
        case .imm(let wide):
            var imm = immediate(wide ? min(size, 4) : 1)
            if entry.mnemonic == "aam" || entry.mnemonic == "aad" { imm = [pick([0, 1, 10, 16, 0xFF, byte()])] }
            insn.bytes = prefixes(size: size, width: entry.width) + opcode + imm
            kind = wide ? "imm" : "imm8"
        case .branchToNext(let wide):
            insn.bytes = opcode + (wide ? [UInt8](repeating: 0, count: mode.bits == 16 ? 2 : 4) : [0])
            if ["loop", "loope", "loopne", "jcxz"].contains(entry.mnemonic) { insn.setup = load(1, UInt64(pick([0, 1, 2, 0x1_0000]))) }
            kind = "rel"
        }
        insn.undefinedFlags = UndefinedFlags.mask(for: entry.mnemonic, operandBits: bits, count: count)
        let digit = entry.digit.map { "/\($0)" } ?? ""
        insn.form = opcode.map(byteHex).joined() + digit + " \(kind)" + (entry.width == .fixed ? "" : " \(bits)") + (memory ? " m" : "")
        return insn
    }

    func isRegisterOnly(_ shape: OpcodeEntry.Shape) -> Bool {
        switch shape {
        case .rm, .rmReg, .regRM, .rmImm, .regRMImm, .doubleShift, .shift, .fromSegment: false
        default: true
        }
    }

    /// Loads a dividend (rDX:rAX, or AX for a byte divide) and a divisor register so that the
    /// quotient lands on an edge: the largest and smallest representable, one past them (#DE),
    /// 0 and ±1, with a zero or largest remainder; a zero divisor too (#DE).
    mutating func divisionSetup(signed: Bool, bits: Int, divisor reg: UInt8) -> [UInt8] {
        let w = UInt128(1) << UInt128(bits)
        var divisor: Int128, quotient: Int128
        if signed {
            let max = Int128(w / 2) - 1, min = -Int128(w / 2)
            divisor = pick([1, -1, 2, -2, 3, max, min, Int128(Int64.random(in: -1000...1000, using: &rng)), 0])
            quotient = pick([max, min, max + 1, min - 1, 0, 1, -1, Int128(Int64.random(in: -100...100, using: &rng))])
        } else {
            divisor = pick([1, 2, 3, Int128(w - 1), Int128(w - 2), Int128(w / 2), Int128(rng.next() % UInt64(clamping: w - 1)) + 1, 0])
            quotient = pick([Int128(w - 1), Int128(w - 2), Int128(w / 2), Int128(w), 0, 1, Int128(rng.next() % 1000)])
        }
        // A quotient of 2^64 times a 64-bit divisor does not fit even 128 bits: such a
        // dividend could not be loaded either, so the quotient becomes 1.
        let (full, overflow) = quotient.multipliedReportingOverflow(by: divisor)
        let product = overflow ? divisor : full
        // The remainder takes the dividend's sign and stays below the divisor's magnitude.
        let largest = divisor.magnitude > 0 ? Int128(divisor.magnitude - 1) : 0
        let remainder = chance(50) ? 0 : (product < 0 ? -largest : largest)
        var dividend = product.addingReportingOverflow(remainder).overflow ? product : product + remainder
        // The dividend register pair's range: 2w bits (the shift overflows to 0 at w = 64).
        let fits = bits == 64 ? (signed || dividend >= 0) : {
            let limit = Int128(w) * Int128(w)
            return signed ? dividend < limit / 2 && dividend >= -limit / 2 : dividend >= 0 && dividend < limit
        }()
        if !fits { dividend = product }
        let pattern = UInt128(bitPattern: dividend)
        let low = UInt64(truncatingIfNeeded: bits == 8 ? pattern & 0xFFFF : pattern & (w - 1))
        let high = UInt64(truncatingIfNeeded: pattern >> UInt128(bits))
        var setup = load(0, low)
        if bits > 8 { setup += load(2, high) }
        let divisorBits = UInt64(truncatingIfNeeded: UInt128(bitPattern: divisor) & (w - 1))
        return setup + load(reg, divisorBits)
    }
}
