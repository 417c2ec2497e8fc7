/// The x86-64 host code the translator emits, encoded by hand: only the handful of forms
/// its templates use (moves, ALU operations, shifts, lea, imul, movzx/movsx, setcc, jumps,
/// lock cmpxchg), each with a register or a [base + index * scale + disp32] operand.
///
/// Byte-sized register operands are only ever RAX, RCX and RDX (AL, CL, DL), so that a REX
/// prefix never turns AH-BH into SPL-DIL or the other way round.
struct HostAssembler {
    enum Register: UInt8 {
        case rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15
        var low: UInt8 { rawValue & 7 }
        var extended: Bool { rawValue >= 8 }
    }

    /// A memory operand: [base + index * scale + disp].
    struct Memory {
        var base: Register
        var index: Register? = nil
        var scale: UInt8 = 1
        var disp: Int32 = 0
    }

    /// A register or memory operand (ModRM's r/m).
    enum RM {
        case register(Register)
        case memory(Memory)
    }

    var code: [UInt8] = []

    var position: Int { code.count }

    mutating func byte(_ b: UInt8) { code.append(b) }

    mutating func int32(_ v: Int32) {
        let u = UInt32(bitPattern: v)
        for i in 0..<4 { code.append(UInt8(truncatingIfNeeded: u >> (8 * UInt32(i)))) }
    }

    mutating func int64(_ v: UInt64) {
        for i in 0..<8 { code.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }

    /// Emits [66] [REX] opcode ModRM [SIB] [disp] for operand size `size` (1, 2, 4, 8; 1
    /// and 4 need no prefix, the caller picks the byte opcode), `reg` in ModRM.reg.
    mutating func instruction(_ opcode: [UInt8], size: Int, reg: UInt8, _ rm: RM) {
        if size == 2 { byte(0x66) }
        var rex: UInt8 = size == 8 ? 0x48 : 0x40
        if reg >= 8 { rex |= 4 }
        switch rm {
        case .register(let r): if r.extended { rex |= 1 }
        case .memory(let m):
            if m.base.extended { rex |= 1 }
            if let i = m.index, i.extended { rex |= 2 }
        }
        if rex != 0x40 { byte(rex) }
        code.append(contentsOf: opcode)
        switch rm {
        case .register(let r):
            byte(0xC0 | (reg & 7) << 3 | r.low)
        case .memory(let m):
            // Always with a displacement (mod 01 or 10): then RBP and R13 as bases need
            // no special case, and RSP or R12 as a base, or any index, take a SIB byte.
            let small = m.disp >= -128 && m.disp <= 127
            let mod: UInt8 = small ? 0x40 : 0x80
            if m.index != nil || m.base.low == 4 {
                byte(mod | (reg & 7) << 3 | 4)
                let scaleBits: UInt8 = m.scale == 8 ? 3 : m.scale == 4 ? 2 : m.scale == 2 ? 1 : 0
                let index = m.index?.low ?? 4   // (4 without REX.X: no index)
                byte(scaleBits << 6 | index << 3 | m.base.low)
            } else {
                byte(mod | (reg & 7) << 3 | m.base.low)
            }
            if small { byte(UInt8(bitPattern: Int8(m.disp))) } else { int32(m.disp) }
        }
    }

    // MARK: Moves

    /// Loads `size` bytes at `m` into `r`, zero-extended to 64 bits.
    mutating func load(_ r: Register, _ m: Memory, size: Int) {
        switch size {
        case 1: instruction([0x0F, 0xB6], size: 4, reg: r.rawValue, .memory(m))
        case 2: instruction([0x0F, 0xB7], size: 4, reg: r.rawValue, .memory(m))
        case 4: instruction([0x8B], size: 4, reg: r.rawValue, .memory(m))
        default: instruction([0x8B], size: 8, reg: r.rawValue, .memory(m))
        }
    }

    /// Loads `size` bytes at `m` into `r`, sign-extended to `to` (4 or 8) bytes.
    mutating func loadSigned(_ r: Register, _ m: Memory, size: Int, to: Int) {
        switch size {
        case 1: instruction([0x0F, 0xBE], size: to, reg: r.rawValue, .memory(m))
        case 2: instruction([0x0F, 0xBF], size: to, reg: r.rawValue, .memory(m))
        default: instruction([0x63], size: 8, reg: r.rawValue, .memory(m))   // movsxd
        }
    }

    /// Stores the low `size` bytes of `r` at `m`.
    mutating func store(_ m: Memory, _ r: Register, size: Int) {
        instruction([size == 1 ? 0x88 : 0x89], size: size, reg: r.rawValue, .memory(m))
    }

    /// Stores a sign-extended 32-bit immediate as `size` (1, 2, 4, 8) bytes at `m`.
    mutating func storeImmediate(_ m: Memory, _ value: Int32, size: Int) {
        instruction([size == 1 ? 0xC6 : 0xC7], size: size, reg: 0, .memory(m))
        switch size {
        case 1: byte(UInt8(truncatingIfNeeded: value))
        case 2: byte(UInt8(truncatingIfNeeded: value)); byte(UInt8(truncatingIfNeeded: value >> 8))
        default: int32(value)
        }
    }

    /// mov dst, src (4: the upper half cleared; 8: all of it).
    mutating func move(_ dst: Register, _ src: Register, size: Int = 8) {
        instruction([0x89], size: size, reg: src.rawValue, .register(dst))
    }

    /// Sets `r` to `value` in the shortest form.
    mutating func moveImmediate(_ r: Register, _ value: UInt64) {
        if value <= 0xFFFF_FFFF {
            if r.extended { byte(0x41) }
            byte(0xB8 | r.low)
            int32(Int32(bitPattern: UInt32(value)))
        } else if Int64(bitPattern: value) >= Int64(Int32.min) && Int64(bitPattern: value) < 0 {
            instruction([0xC7], size: 8, reg: 0, .register(r))
            int32(Int32(truncatingIfNeeded: Int64(bitPattern: value)))
        } else {
            byte(r.extended ? 0x49 : 0x48)
            byte(0xB8 | r.low)
            int64(value)
        }
    }

    /// lea dst, [m] at address size `size` (4 truncates and zero-extends, 8 does not).
    mutating func lea(_ dst: Register, _ m: Memory, size: Int = 8) {
        instruction([0x8D], size: size, reg: dst.rawValue, .memory(m))
    }

    /// movzx/movsx dst (`to` bytes), src's low `size` bytes (register form).
    mutating func extend(_ dst: Register, _ src: Register, size: Int, to: Int, signed: Bool) {
        switch (size, signed) {
        case (1, false): instruction([0x0F, 0xB6], size: 4, reg: dst.rawValue, .register(src))
        case (2, false): instruction([0x0F, 0xB7], size: 4, reg: dst.rawValue, .register(src))
        case (4, false): move(dst, src, size: 4)
        case (1, true): instruction([0x0F, 0xBE], size: to, reg: dst.rawValue, .register(src))
        case (2, true): instruction([0x0F, 0xBF], size: to, reg: dst.rawValue, .register(src))
        case (4, true): instruction([0x63], size: 8, reg: dst.rawValue, .register(src))
        default: if dst != src { move(dst, src) }
        }
    }

    // MARK: Arithmetic

    /// The ALU operations by their ModRM /digit (81 /n) and the opcode of "op r/m, reg".
    enum ALU: UInt8 {
        case add = 0, or = 1, adc = 2, sbb = 3, and = 4, sub = 5, xor = 6, cmp = 7
        var registerOpcode: UInt8 { rawValue << 3 | 1 }   // 01, 09, ... 39 (8-bit: one less)
    }

    /// op dst, src at `size` bytes.
    mutating func alu(_ op: ALU, _ dst: Register, _ src: Register, size: Int = 8) {
        instruction([op.registerOpcode - (size == 1 ? 1 : 0)], size: size, reg: src.rawValue, .register(dst))
    }

    /// op dst, [m] at `size` bytes (the "reg, r/m" direction: opcode + 2).
    mutating func alu(_ op: ALU, _ dst: Register, _ m: Memory, size: Int = 8) {
        instruction([op.registerOpcode + (size == 1 ? 1 : 2)], size: size, reg: dst.rawValue, .memory(m))
    }

    /// op r/m, imm32 (sign-extended; 8-bit: imm8).
    mutating func alu(_ op: ALU, _ rm: RM, immediate: Int32, size: Int = 8) {
        if size == 1 {
            instruction([0x80], size: 1, reg: op.rawValue, rm)
            byte(UInt8(truncatingIfNeeded: immediate))
        } else if immediate >= -128 && immediate <= 127 {
            instruction([0x83], size: size, reg: op.rawValue, rm)
            byte(UInt8(bitPattern: Int8(immediate)))
        } else {
            instruction([0x81], size: size, reg: op.rawValue, rm)
            if size == 2 { byte(UInt8(truncatingIfNeeded: immediate)); byte(UInt8(truncatingIfNeeded: immediate >> 8)) } else { int32(immediate) }
        }
    }

    /// test a, b at `size` bytes.
    mutating func test(_ a: Register, _ b: Register, size: Int = 8) {
        instruction([size == 1 ? 0x84 : 0x85], size: size, reg: b.rawValue, .register(a))
    }

    /// test r/m, imm (`size` 1 or 4).
    mutating func test(_ rm: RM, immediate: UInt32, size: Int) {
        instruction([size == 1 ? 0xF6 : 0xF7], size: size, reg: 0, rm)
        if size == 1 { byte(UInt8(truncatingIfNeeded: immediate)) } else { int32(Int32(bitPattern: immediate)) }
    }

    enum Shift: UInt8 { case rol = 0, ror = 1, shl = 4, shr = 5, sar = 7 }

    /// shift r, count (count 1 ... 63).
    mutating func shift(_ kind: Shift, _ r: Register, _ count: UInt8, size: Int = 8) {
        instruction([size == 1 ? 0xC0 : 0xC1], size: size, reg: kind.rawValue, .register(r))
        byte(count)
    }

    /// shl/shr r by CL.
    mutating func shiftByCL(_ kind: Shift, _ r: Register, size: Int = 8) {
        instruction([size == 1 ? 0xD2 : 0xD3], size: size, reg: kind.rawValue, .register(r))
    }

    /// imul dst, src at `size` (2, 4, 8) bytes.
    mutating func imul(_ dst: Register, _ src: Register, size: Int) {
        instruction([0x0F, 0xAF], size: size, reg: dst.rawValue, .register(src))
    }

    /// imul dst, src, imm32 at `size` (4, 8) bytes.
    mutating func imul(_ dst: Register, _ src: Register, immediate: Int32, size: Int) {
        instruction([0x69], size: size, reg: dst.rawValue, .register(src))
        int32(immediate)
    }

    /// inc r or dec r.
    mutating func incrementOrDecrement(_ r: Register, decrement: Bool, size: Int) {
        instruction([size == 1 ? 0xFE : 0xFF], size: size, reg: decrement ? 1 : 0, .register(r))
    }

    /// neg r.
    mutating func neg(_ r: Register, size: Int = 8) {
        instruction([size == 1 ? 0xF6 : 0xF7], size: size, reg: 3, .register(r))
    }

    /// setcc r8 (condition in the encoding's tttn order).
    mutating func set(_ condition: UInt8, _ r: Register) {
        instruction([0x0F, 0x90 | condition], size: 1, reg: 0, .register(r))
    }

    /// lock cmpxchg [m], r (64-bit; compares with RAX).
    mutating func lockCompareExchange(_ m: Memory, _ r: Register) {
        byte(0xF0)
        instruction([0x0F, 0xB1], size: 8, reg: r.rawValue, .memory(m))
    }

    // MARK: Control

    /// A forward jump whose target is set later (`patch`): returns where its rel32 is.
    mutating func jump(if condition: UInt8? = nil) -> Int {
        if let condition { byte(0x0F); byte(0x80 | condition) } else { byte(0xE9) }
        int32(0)
        return position - 4
    }

    /// Points the rel32 at `at` to `target` (a position).
    mutating func patch(_ at: Int, to target: Int) {
        let rel = Int32(target - (at + 4))
        let u = UInt32(bitPattern: rel)
        for i in 0..<4 { code[at + i] = UInt8(truncatingIfNeeded: u >> (8 * UInt32(i))) }
    }

    mutating func push(_ r: Register) {
        if r.extended { byte(0x41) }
        byte(0x50 | r.low)
    }

    mutating func pop(_ r: Register) {
        if r.extended { byte(0x41) }
        byte(0x58 | r.low)
    }

    mutating func ret() { byte(0xC3) }

    /// call r (indirect).
    mutating func call(_ r: Register) {
        instruction([0xFF], size: 4, reg: 2, .register(r))
    }

    /// jmp r (indirect).
    mutating func jump(to r: Register) {
        instruction([0xFF], size: 4, reg: 4, .register(r))
    }
}
