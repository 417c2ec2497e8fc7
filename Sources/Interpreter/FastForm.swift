import X86

/// The form of a decoded instruction, chosen once when it is decoded, for the hottest
/// families with general-register and immediate operands: the operation family, the
/// operand shape and the width in one value, so that `executeFast` runs it without
/// looking at operand kinds, AH-BH, prefixes or widths again (each case is its handler
/// inlined with a constant width). Everything else is `.generic` and goes through
/// `execute`'s switch over `Op`. A translator (see Documentation/Interpreter.md) would
/// read the same field to pick its code template.
enum FastForm: UInt8 {
    case generic
    case movRR8, movRR16, movRR32, movRR64 // mov reg, reg
    case movRI8, movRI16, movRI32, movRI64 // mov reg, imm
    case movRM8, movRM16, movRM32, movRM64 // mov reg, [mem]
    case movMR8, movMR16, movMR32, movMR64 // mov [mem], reg
    case aluRR8, aluRR16, aluRR32, aluRR64 // add/adc/sub/sbb/and/or/xor/cmp/test reg, reg
    case aluRI8, aluRI16, aluRI32, aluRI64 // the same, reg, imm
    case incR8, incR16, incR32, incR64 // inc reg
    case decR8, decR16, decR32, decR64 // dec reg
    case negR8, negR16, negR32, negR64 // neg reg
    case aluRM8, aluRM16, aluRM32, aluRM64 // add/adc/sub/sbb/and/or/xor/cmp/test reg, [mem]
    case shiftRI8, shiftRI16, shiftRI32, shiftRI64 // shl/sal/shr/sar/rol/ror reg, imm or 1
    case leaR8, leaR16, leaR32, leaR64 // lea reg, [mem] (no 8-bit form exists)
    case movMI8, movMI16, movMI32, movMI64 // mov [mem], imm
    case aluMR8, aluMR16, aluMR32, aluMR64 // add/adc/sub/sbb/and/or/xor/cmp/test [mem], reg
    case aluMI8, aluMI16, aluMI32, aluMI64 // the same, [mem], imm
    case pushR8, pushR16, pushR32, pushR64 // push reg (no 8-bit form exists)
    case popR8, popR16, popR32, popR64 // pop reg (no 8-bit form exists)
    case imulRR8, imulRR16, imulRR32, imulRR64 // imul reg, reg (no 8-bit form exists)
    case imulRM8, imulRM16, imulRM32, imulRM64 // imul reg, [mem]
    case imulRRI8, imulRRI16, imulRRI32, imulRRI64 // imul reg, reg, imm
    case imulRMI8, imulRMI16, imulRMI32, imulRMI64 // imul reg, [mem], imm
    case cmovRR8, cmovRR16, cmovRR32, cmovRR64 // cmovcc reg, reg (no 8-bit form exists)
    case cmovRM8, cmovRM16, cmovRM32, cmovRM64 // cmovcc reg, [mem]
    /// setcc reg8 (the condition from `op`).
    case setccR
    /// movzx reg32/64, reg8/16 or [mem8/16]: the same write for both widths (a 32-bit write
    /// clears bits 63-32, and the zero-extended value has them clear).
    case movzxRB, movzxRW, movzxMB, movzxMW
    /// movsx reg32/64, reg8/16 or [mem8/16]; movsxd reg64, reg32 or [mem32].
    case movsxRB32, movsxRB64, movsxRW32, movsxRW64, movsxMB32, movsxMB64, movsxMW32, movsxMW64, movsxdR, movsxdM
    /// jcc rel, by condition (the encoding's tttn: jo, jno, jb, ... jg), and jmp rel.
    case jo, jno, jb, jae, je, jne, jbe, ja, js, jns, jp, jnp, jl, jge, jle, jg
    case jmpRel

    /// jcc rel or jmp rel: the last instruction of a trace whose successor can be found
    /// without a lookup (`successor`).
    /// (Through the stored byte: `rawValue` stayed a call in the run loop.)
    @_transparent
    var isRelativeBranch: Bool {
        let v = unsafeBitCast(self, to: UInt8.self)
        return v >= unsafeBitCast(FastForm.jo, to: UInt8.self) && v <= unsafeBitCast(FastForm.jmpRel, to: UInt8.self)
    }

    /// The form of `d` (called once per decode).
    static func of(_ d: DecodedInstruction) -> FastForm {
        // LOCK is #UD (or a locked memory operation) on these: the generic path decides.
        guard d.prefixes & PrefixBits.lock == 0, d.operandCount >= 1 else { return .generic }
        let o0 = d.o0, o1 = d.o1
        let width: UInt8
        switch o0.size {
        case 1: width = 0
        case 2: width = 1
        case 4: width = 2
        case 8: width = 3
        default: width = 4   // (jcc and jmp only: the others need a width)
        }
        let gpr0 = o0.kind == .register && o0.reg < 16
        let gpr1 = o1.kind == .register && o1.reg < 16 && o1.size == o0.size
        let family: FastForm
        switch d.op {
        case .mov, .movabs:
            guard d.operandCount == 2 else { return .generic }
            if gpr0 && gpr1 { family = .movRR8 }
            else if gpr0 && o1.kind == .immediate { family = .movRI8 }
            else if gpr0 && o1.kind == .memory { family = .movRM8 }
            else if o0.kind == .memory && gpr1 { family = .movMR8 }
            else if o0.kind == .memory && o1.kind == .immediate { family = .movMI8 }
            else { return .generic }
        case .add, .adc, .sub, .sbb, .and, .or, .xor, .cmp, .test:
            guard d.operandCount == 2 else { return .generic }
            if gpr0 && gpr1 { family = .aluRR8 }
            else if gpr0 && o1.kind == .immediate { family = .aluRI8 }
            else if gpr0 && o1.kind == .memory { family = .aluRM8 }
            else if o0.kind == .memory && gpr1 { family = .aluMR8 }
            else if o0.kind == .memory && o1.kind == .immediate { family = .aluMI8 }
            else { return .generic }
        case .inc, .dec:
            guard d.operandCount == 1, gpr0 else { return .generic }
            family = d.op == .inc ? .incR8 : .decR8
        case .neg:
            guard d.operandCount == 1, gpr0 else { return .generic }
            family = .negR8
        case .shl, .sal, .shr, .sar, .rol, .ror:
            guard gpr0, d.operandCount == 1 || (d.operandCount == 2 && o1.kind == .immediate) else { return .generic }
            family = .shiftRI8
        case .lea:
            guard gpr0, d.operandCount == 2, o1.kind == .memory else { return .generic }
            family = .leaR8
        case .push, .pop:
            // The stack access is the register's width (`stackOperandSize` agrees when the
            // operand size is the register's: 2 or 8 in 64-bit code, 2 or 4 outside it; a
            // 64-bit register, only in 64-bit code, is pushed as 8 bytes though the
            // operand-size attribute without REX.W says 4).
            guard gpr0, d.operandCount == 1, o0.size == d.operandSize || o0.size == 8, o0.size >= 2 else { return .generic }
            family = d.op == .push ? .pushR8 : .popR8
        case .imul:
            // The two- and three-operand forms (the one-operand form writes rDX:rAX).
            guard gpr0, o0.size >= 2, d.operandCount >= 2 else { return .generic }
            let register = gpr1, memory = o1.kind == .memory
            if d.operandCount == 2 {
                if register { family = .imulRR8 } else if memory { family = .imulRM8 } else { return .generic }
            } else {
                guard d.o2.kind == .immediate else { return .generic }
                if register { family = .imulRRI8 } else if memory { family = .imulRMI8 } else { return .generic }
            }
        case .cmovo, .cmovno, .cmovb, .cmovae, .cmove, .cmovne, .cmovbe, .cmova, .cmovs, .cmovns, .cmovp, .cmovnp, .cmovl, .cmovge, .cmovle, .cmovg:
            guard gpr0, o0.size >= 2, d.operandCount == 2 else { return .generic }
            if gpr1 { family = .cmovRR8 } else if o1.kind == .memory { family = .cmovRM8 } else { return .generic }
        case .seto, .setno, .setb, .setae, .sete, .setne, .setbe, .seta, .sets, .setns, .setp, .setnp, .setl, .setge, .setle, .setg:
            return gpr0 && o0.size == 1 && d.operandCount == 1 ? .setccR : .generic
        case .movzx, .movsx:
            // (16-bit destinations keep bits 63-16: generic.)
            guard gpr0, o0.size >= 4, d.operandCount == 2, o1.size == 1 || o1.size == 2 else { return .generic }
            let register = o1.kind == .register && o1.reg < 16
            guard register || o1.kind == .memory else { return .generic }
            let byte = o1.size == 1, wide = o0.size == 8
            if d.op == .movzx {
                return register ? (byte ? .movzxRB : .movzxRW) : (byte ? .movzxMB : .movzxMW)
            }
            if register { return byte ? (wide ? .movsxRB64 : .movsxRB32) : (wide ? .movsxRW64 : .movsxRW32) }
            return byte ? (wide ? .movsxMB64 : .movsxMB32) : (wide ? .movsxMW64 : .movsxMW32)
        case .movsxd:
            // Only the REX.W form sign-extends (see `executeMore`).
            guard gpr0, d.operandSize == 8, o0.size == 8, d.operandCount == 2 else { return .generic }
            if o1.kind == .register && o1.reg < 16 && o1.size == 4 { return .movsxdR }
            return o1.kind == .memory ? .movsxdM : .generic
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg:
            return FastForm(rawValue: FastForm.jo.rawValue + UInt8(d.op.rawValue - Op.jo.rawValue))!
        case .jmp where d.opcode == 0xE9 || d.opcode == 0xEB:
            return .jmpRel
        default:
            return .generic
        }
        return width < 4 ? FastForm(rawValue: family.rawValue + width)! : .generic
    }
}

// `@_transparent`, not `@inline(__always)`: the optimiser declines to inline even
// always-inline functions into a caller as large as `step` (measured: every handler stayed
// a call with the width as a run-time argument); mandatory inlining always happens, so
// each case gets its handler with a constant width.
extension InterpreterVCPU {
    /// Runs `d` if it has a fast form (and sets RIP to `next`); false for `.generic`.
    @_transparent
    func executeFast(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) -> Bool {
        switch d.pointee.form {
        case .generic: return false
        case .movRR8: try movRR(d, 1, next: next)
        case .movRR16: try movRR(d, 2, next: next)
        case .movRR32: try movRR(d, 4, next: next)
        case .movRR64: try movRR(d, 8, next: next)
        case .movRI8: try movRI(d, 1, next: next)
        case .movRI16: try movRI(d, 2, next: next)
        case .movRI32: try movRI(d, 4, next: next)
        case .movRI64: try movRI(d, 8, next: next)
        case .movRM8: try movRM(d, 1, next: next)
        case .movRM16: try movRM(d, 2, next: next)
        case .movRM32: try movRM(d, 4, next: next)
        case .movRM64: try movRM(d, 8, next: next)
        case .movMR8: try movMR(d, 1, next: next)
        case .movMR16: try movMR(d, 2, next: next)
        case .movMR32: try movMR(d, 4, next: next)
        case .movMR64: try movMR(d, 8, next: next)
        case .aluRR8: try aluRR(d, 1, next: next)
        case .aluRR16: try aluRR(d, 2, next: next)
        case .aluRR32: try aluRR(d, 4, next: next)
        case .aluRR64: try aluRR(d, 8, next: next)
        case .aluRI8: try aluRI(d, 1, next: next)
        case .aluRI16: try aluRI(d, 2, next: next)
        case .aluRI32: try aluRI(d, 4, next: next)
        case .aluRI64: try aluRI(d, 8, next: next)
        case .incR8: try incR(d, 1, next: next)
        case .incR16: try incR(d, 2, next: next)
        case .incR32: try incR(d, 4, next: next)
        case .incR64: try incR(d, 8, next: next)
        case .decR8: try decR(d, 1, next: next)
        case .decR16: try decR(d, 2, next: next)
        case .decR32: try decR(d, 4, next: next)
        case .decR64: try decR(d, 8, next: next)
        case .negR8: try negR(d, 1, next: next)
        case .negR16: try negR(d, 2, next: next)
        case .negR32: try negR(d, 4, next: next)
        case .negR64: try negR(d, 8, next: next)
        case .aluRM8: try aluRM(d, 1, next: next)
        case .aluRM16: try aluRM(d, 2, next: next)
        case .aluRM32: try aluRM(d, 4, next: next)
        case .aluRM64: try aluRM(d, 8, next: next)
        case .shiftRI8: try shiftRI(d, 1, next: next)
        case .shiftRI16: try shiftRI(d, 2, next: next)
        case .shiftRI32: try shiftRI(d, 4, next: next)
        case .shiftRI64: try shiftRI(d, 8, next: next)
        case .leaR8: try leaR(d, 1, next: next)
        case .leaR16: try leaR(d, 2, next: next)
        case .leaR32: try leaR(d, 4, next: next)
        case .leaR64: try leaR(d, 8, next: next)
        case .movMI8: try movMI(d, 1, next: next)
        case .movMI16: try movMI(d, 2, next: next)
        case .movMI32: try movMI(d, 4, next: next)
        case .movMI64: try movMI(d, 8, next: next)
        case .aluMR8: try aluMR(d, 1, next: next)
        case .aluMR16: try aluMR(d, 2, next: next)
        case .aluMR32: try aluMR(d, 4, next: next)
        case .aluMR64: try aluMR(d, 8, next: next)
        case .aluMI8: try aluMI(d, 1, next: next)
        case .aluMI16: try aluMI(d, 2, next: next)
        case .aluMI32: try aluMI(d, 4, next: next)
        case .aluMI64: try aluMI(d, 8, next: next)
        case .pushR8, .popR8: return false   // (never chosen)
        case .pushR16: try push(readGPR(d.pointee.o0.reg, 2), 2)
        case .pushR32: try push(readGPR(d.pointee.o0.reg, 4), 4)
        case .pushR64: try push(readGPR(d.pointee.o0.reg, 8), 8)
        case .popR16: writeGPR(d.pointee.o0.reg, 2, try pop(2))
        case .popR32: writeGPR(d.pointee.o0.reg, 4, try pop(4))
        case .popR64: writeGPR(d.pointee.o0.reg, 8, try pop(8))
        case .imulRR8, .imulRM8, .imulRRI8, .imulRMI8, .cmovRR8, .cmovRM8: return false   // (never chosen)
        case .imulRR16: imulR(d, 2, readGPR(d.pointee.o1.reg, 2))
        case .imulRR32: imulR(d, 4, readGPR(d.pointee.o1.reg, 4))
        case .imulRR64: imulR(d, 8, readGPR(d.pointee.o1.reg, 8))
        case .imulRM16: imulR(d, 2, try readMemoryOperand(d, 2, next: next))
        case .imulRM32: imulR(d, 4, try readMemoryOperand(d, 4, next: next))
        case .imulRM64: imulR(d, 8, try readMemoryOperand(d, 8, next: next))
        case .imulRRI16: imulRI(d, 2, readGPR(d.pointee.o1.reg, 2))
        case .imulRRI32: imulRI(d, 4, readGPR(d.pointee.o1.reg, 4))
        case .imulRRI64: imulRI(d, 8, readGPR(d.pointee.o1.reg, 8))
        case .imulRMI16: imulRI(d, 2, try readMemoryOperand(d, 2, next: next))
        case .imulRMI32: imulRI(d, 4, try readMemoryOperand(d, 4, next: next))
        case .imulRMI64: imulRI(d, 8, try readMemoryOperand(d, 8, next: next))
        case .cmovRR16: cmovR(d, 2, readGPR(d.pointee.o1.reg, 2))
        case .cmovRR32: cmovR(d, 4, readGPR(d.pointee.o1.reg, 4))
        case .cmovRR64: cmovR(d, 8, readGPR(d.pointee.o1.reg, 8))
        case .cmovRM16: cmovR(d, 2, try readMemoryOperand(d, 2, next: next))   // (read, and faulting, either way)
        case .cmovRM32: cmovR(d, 4, try readMemoryOperand(d, 4, next: next))
        case .cmovRM64: cmovR(d, 8, try readMemoryOperand(d, 8, next: next))
        case .setccR:
            writeGPR(d.pointee.o0.reg, 1, condition(Int(d.pointee.condition)) ? 1 : 0)
        case .movzxRB: r[Int(d.pointee.o0.reg)] = readGPR(d.pointee.o1.reg, 1)
        case .movzxRW: r[Int(d.pointee.o0.reg)] = readGPR(d.pointee.o1.reg, 2)
        case .movzxMB: r[Int(d.pointee.o0.reg)] = try readMemoryOperand(d, 1, next: next)
        case .movzxMW: r[Int(d.pointee.o0.reg)] = try readMemoryOperand(d, 2, next: next)
        case .movsxRB32: writeGPR(d.pointee.o0.reg, 4, signExtend(readGPR(d.pointee.o1.reg, 1), 1))
        case .movsxRB64: r[Int(d.pointee.o0.reg)] = signExtend(readGPR(d.pointee.o1.reg, 1), 1)
        case .movsxRW32: writeGPR(d.pointee.o0.reg, 4, signExtend(readGPR(d.pointee.o1.reg, 2), 2))
        case .movsxRW64: r[Int(d.pointee.o0.reg)] = signExtend(readGPR(d.pointee.o1.reg, 2), 2)
        case .movsxMB32: writeGPR(d.pointee.o0.reg, 4, signExtend(try readMemoryOperand(d, 1, next: next), 1))
        case .movsxMB64: r[Int(d.pointee.o0.reg)] = signExtend(try readMemoryOperand(d, 1, next: next), 1)
        case .movsxMW32: writeGPR(d.pointee.o0.reg, 4, signExtend(try readMemoryOperand(d, 2, next: next), 2))
        case .movsxMW64: r[Int(d.pointee.o0.reg)] = signExtend(try readMemoryOperand(d, 2, next: next), 2)
        case .movsxdR: r[Int(d.pointee.o0.reg)] = signExtend(readGPR(d.pointee.o1.reg, 4), 4)
        case .movsxdM: r[Int(d.pointee.o0.reg)] = signExtend(try readMemoryOperand(d, 4, next: next), 4)
        case .jo: jumpIf(d, condition(0), next: next); return true
        case .jno: jumpIf(d, condition(1), next: next); return true
        case .jb: jumpIf(d, condition(2), next: next); return true
        case .jae: jumpIf(d, condition(3), next: next); return true
        case .je: jumpIf(d, condition(4), next: next); return true
        case .jne: jumpIf(d, condition(5), next: next); return true
        case .jbe: jumpIf(d, condition(6), next: next); return true
        case .ja: jumpIf(d, condition(7), next: next); return true
        case .js: jumpIf(d, condition(8), next: next); return true
        case .jns: jumpIf(d, condition(9), next: next); return true
        case .jp: jumpIf(d, condition(10), next: next); return true
        case .jnp: jumpIf(d, condition(11), next: next); return true
        case .jl: jumpIf(d, condition(12), next: next); return true
        case .jge: jumpIf(d, condition(13), next: next); return true
        case .jle: jumpIf(d, condition(14), next: next); return true
        case .jg: jumpIf(d, condition(15), next: next); return true
        case .jmpRel: jumpIf(d, true, next: next); return true
        }
        s.pointee.rip = next
        return true
    }

    /// A general register (0-15, never AH-BH) as `size` bytes.
    @_transparent
    func readGPR(_ reg: UInt8, _ size: Int) -> UInt64 { r[Int(reg)] & sizeMask(size) }

    /// Writes a general register (0-15) as hardware does: 8- and 16-bit writes keep the
    /// other bits, 32-bit writes zero the upper half (`writeReg` adds AH-BH).
    @_transparent
    func writeGPR(_ reg: UInt8, _ size: Int, _ v: UInt64) {
        let i = Int(reg)
        switch size {
        case 1: r[i] = r[i] & ~0xFF | v & 0xFF
        case 2: r[i] = r[i] & ~0xFFFF | v & 0xFFFF
        case 4: r[i] = v & 0xFFFF_FFFF
        default: r[i] = v
        }
    }

    @_transparent
    func movRR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        writeGPR(d.pointee.o0.reg, size, readGPR(d.pointee.o1.reg, size))
    }

    @_transparent
    func movRI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        writeGPR(d.pointee.o0.reg, size, UInt64(bitPattern: d.pointee.o1.value) & sizeMask(size))
    }

    @_transparent
    func movRM(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        writeGPR(d.pointee.o0.reg, size, try readMemoryOperand(d, size, next: next))
    }

    /// The second operand, memory, as `size` bytes.
    @_transparent
    func readMemoryOperand(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) -> UInt64 {
        let o1 = d.pointee.o1
        return try read(o1.segment, effectiveAddress(o1, d.pointee.addressSize, next: next), size)
    }

    /// imul reg, r/m: the truncated product of the register and `b`, flags deferred.
    @_transparent
    func imulR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ b: UInt64) {
        let reg = d.pointee.o0.reg
        let (res, overflow) = truncatedSignedProduct(readGPR(reg, size), b, size)
        writeGPR(reg, size, res)
        deferFlags(.multiply, 0, overflow ? 1 : 0, res, size)
    }

    /// imul reg, r/m, imm: the truncated product of `a` and the immediate, flags deferred.
    @_transparent
    func imulRI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ a: UInt64) {
        let (res, overflow) = truncatedSignedProduct(a, d.pointee.o2.aluImmediate(size), size)
        writeGPR(d.pointee.o0.reg, size, res)
        deferFlags(.multiply, 0, overflow ? 1 : 0, res, size)
    }

    /// cmovcc reg, r/m with the source already read: a 32-bit destination has bits 63-32
    /// cleared even when the condition is false.
    @_transparent
    func cmovR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ v: UInt64) {
        let reg = d.pointee.o0.reg
        if condition(Int(d.pointee.condition)) { writeGPR(reg, size, v) }
        else if size == 4 { writeGPR(reg, 4, readGPR(reg, 4)) }
    }

    @_transparent
    func movMR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let o0 = d.pointee.o0
        try write(o0.segment, effectiveAddress(o0, d.pointee.addressSize, next: next), size, readGPR(d.pointee.o1.reg, size))
    }

    @_transparent
    func aluRR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        aluOnRegister(d, size, readGPR(d.pointee.o1.reg, size))
    }

    @_transparent
    func aluRI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        aluOnRegister(d, size, d.pointee.o1.aluImmediate(size))
    }

    @_transparent
    func aluRM(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        aluOnRegister(d, size, try readMemoryOperand(d, size, next: next))
    }

    @_transparent
    func aluOnRegister(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ b: UInt64) {
        let op = d.pointee.op
        let reg = d.pointee.o0.reg
        let a = readGPR(reg, size)
        let carry = aluCarryIn(op)
        let res = aluValue(op, a, b, carry)
        if op != .cmp && op != .test { writeGPR(reg, size, res) }
        aluFlags(op, a, b, res, carry, size)
    }

    @_transparent
    func movMI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let o0 = d.pointee.o0
        try write(o0.segment, effectiveAddress(o0, d.pointee.addressSize, next: next), size, UInt64(bitPattern: d.pointee.o1.value) & sizeMask(size))
    }

    @_transparent
    func aluMR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        try aluOnMemory(d, size, readGPR(d.pointee.o1.reg, size), next: next)
    }

    @_transparent
    func aluMI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        try aluOnMemory(d, size, d.pointee.o1.aluImmediate(size), next: next)
    }

    /// As `arithmetic` does it for a memory destination: translated once (checked for
    /// writing unless cmp or test), read, written back, and the flags only then.
    @_transparent
    func aluOnMemory(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ b: UInt64, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let o0 = d.pointee.o0
        let writes = op != .cmp && op != .test
        let linear = try linearAddress(o0.segment, effectiveAddress(o0, d.pointee.addressSize, next: next), size, writes ? .write : .read)
        let a = try readLinear(linear, size)
        let carry = aluCarryIn(op)
        let res = aluValue(op, a, b, carry)
        if writes { try writeLinear(linear, size, res) }
        aluFlags(op, a, b, res, carry, size)
    }

    /// CF for adc and sbb (read from deferred flags without computing them), 0 for the
    /// other ALU operations (which do not read it).
    @_transparent
    func aluCarryIn(_ op: Op) -> UInt64 {
        (op == .adc || op == .sbb) && carryFlag() ? 1 : 0
    }

    /// The result of add, adc, sub, sbb, and, or, xor, cmp, test (`aluResult`'s, without
    /// the flags).
    @_transparent
    func aluValue(_ op: Op, _ a: UInt64, _ b: UInt64, _ carry: UInt64) -> UInt64 {
        switch op {
        case .add: a &+ b
        case .adc: a &+ b &+ carry
        case .sub, .cmp: a &- b
        case .sbb: a &- b &- carry
        case .and, .test: a & b
        case .or: a | b
        default: a ^ b
        }
    }

    /// The flags of `aluValue`, deferred (LazyFlags.swift): adc and sbb with the carry
    /// clear have add's and sub's.
    @_transparent
    func aluFlags(_ op: Op, _ a: UInt64, _ b: UInt64, _ res: UInt64, _ carry: UInt64, _ size: Int) {
        switch op {
        case .add: deferFlags(.add, a, b, res, size)
        case .sub, .cmp: deferFlags(.sub, a, b, res, size)
        case .adc: deferFlags(carry != 0 ? .addCarry : .add, a, b, res, size)
        case .sbb: deferFlags(carry != 0 ? .subBorrow : .sub, a, b, res, size)
        default: deferFlags(.logic, a, b, res, size)
        }
    }

    /// inc and dec keep CF: deferred flags before them are computed first (they are
    /// usually already, by the jcc between a compare and the next inc).
    @_transparent
    func incR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let reg = d.pointee.o0.reg
        let a = readGPR(reg, size)
        let res = a &+ 1
        writeGPR(reg, size, res)
        materializeFlags()
        deferFlags(.inc, a, 1, res, size)
    }

    @_transparent
    func decR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let reg = d.pointee.o0.reg
        let a = readGPR(reg, size)
        let res = a &- 1
        writeGPR(reg, size, res)
        materializeFlags()
        deferFlags(.dec, a, 1, res, size)
    }

    @_transparent
    func negR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let reg = d.pointee.o0.reg
        let a = readGPR(reg, size)
        let res = 0 &- a
        writeGPR(reg, size, res)
        deferFlags(.sub, 0, a, res, size)   // as `execute`'s neg: the flags of 0 - a
    }

    @_transparent
    func shiftRI(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        let reg = d.pointee.o0.reg
        let count = (d.pointee.operandCount > 1 ? UInt64(bitPattern: d.pointee.o1.value) : 1) & (size == 8 ? 0x3F : 0x1F)
        let a = readGPR(reg, size)
        if count == 0 {
            writeGPR(reg, size, a)   // flags untouched; a 32-bit write still clears bits 63-32
            return
        }
        let (res, f, flagMask) = shiftResult(d.pointee.op, a, count, size)
        writeGPR(reg, size, res)
        setFlags(flagMask, f)
    }

    @_transparent
    func leaR(_ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) {
        writeGPR(d.pointee.o0.reg, size, effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next))
    }

    /// A relative jump (jcc, jmp rel) that is taken when `taken`, as `execute` does it.
    @_transparent
    func jumpIf(_ d: UnsafeMutablePointer<DecodedInstruction>, _ taken: Bool, next: UInt64) {
        s.pointee.rip = taken ? maskIP(next &+ UInt64(bitPattern: d.pointee.relative), Int(d.pointee.operandSize)) : next
    }
}

extension Operand {
    /// An ALU instruction's immediate as `arithmetic` reads it, at `size` bytes: a shorter
    /// immediate is sign-extended to the width (the interpreter's forms and the
    /// translator's templates alike).
    @_transparent
    func aluImmediate(_ size: Int) -> UInt64 {
        self.size != 0 && Int(self.size) < size
            ? signExtend(UInt64(bitPattern: value), Int(self.size)) & sizeMask(size)
            : UInt64(bitPattern: value) & sizeMask(size)
    }
}
