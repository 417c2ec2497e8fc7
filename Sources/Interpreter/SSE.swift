import CSSEHost
import X86

// MMX and SSE..SSE4.2: the executor. SSEDecode.swift turns the bytes into a `SIMDForm`;
// this file checks CR0/CR4, fetches the operands (XMM/MMX registers, general registers,
// memory with the alignment rules), runs the operation on the host's SSE unit under the
// guest's MXCSR (CSSEHost: sse_arithmetic.c, sse_integer.c, sse_convert.c, sse4.c,
// string_compare.c), raises unmasked SIMD exceptions and commits. Moves are in
// SSEMoves.swift, FXSAVE/XSAVE/XGETBV/XSETBV and LDMXCSR/STMXCSR in SaveRestore.swift.

enum CR4Bits {
    static let osfxsr: UInt64 = 1 << 9
    static let osxmmexcpt: UInt64 = 1 << 10
    static let osxsave: UInt64 = 1 << 18
    static let umip: UInt64 = 1 << 11
    static let fsgsbase: UInt64 = 1 << 16
    static let pcide: UInt64 = 1 << 17
    static let smep: UInt64 = 1 << 20
    static let smap: UInt64 = 1 << 21
}

extension InterpreterVCPU {
    // MARK: Registers

    @inline(__always) func xmmRead(_ i: UInt8) -> XMMRegister { s.pointee.fpu.xmm[Int(i & 15)] }
    @inline(__always) func xmmWrite(_ i: UInt8, _ v: XMMRegister) { s.pointee.fpu.xmm[Int(i & 15)] = v }

    /// MMi is the significand of physical x87 register i.
    @inline(__always) func mmRead(_ i: UInt8) -> UInt64 { s.pointee.fpu.st[Int(i & 7)].significand }

    /// Writing MMi sets the register's exponent and sign to all ones, as hardware does.
    @inline(__always) func mmWrite(_ i: UInt8, _ v: UInt64) {
        s.pointee.fpu.st[Int(i & 7)] = X87Register(significand: v, signExponent: 0xFFFF)
    }

    /// Every MMX instruction (except EMMS) puts the x87 unit in MMX state: TOP = 0, all
    /// registers tagged valid.
    @inline(__always) func mmxTransition() {
        s.pointee.fpu.fsw &= ~0x3800
        s.pointee.fpu.ftw = 0xFF
    }

    // MARK: Memory

    /// Reads a SIMD memory operand of `size` bytes (1-16), zero-extended to 128 bits.
    /// `aligned`: 16-byte operands of the instructions that require it raise #GP(0) when
    /// misaligned (checked on the linear address, before any access).
    @inline(__always)
    func readVector(_ o: Operand, _ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, aligned: Bool, next: UInt64) throws(Fault) -> XMMRegister {
        let la = try linearAddress(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, .read)
        if _slowPath(aligned && la & 15 != 0) { throw .gp() }
        if size <= 8 { return XMMRegister(low: try readLinear(la, size), high: 0) }
        return XMMRegister(low: try readLinear(la, 8), high: try readLinear(la &+ 8, 8))
    }

    /// Writes the low `size` bytes of `v`; a 16-byte store is checked on both halves first,
    /// so a fault leaves memory unchanged.
    @inline(__always)
    func writeVector(_ o: Operand, _ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ v: XMMRegister, aligned: Bool, next: UInt64) throws(Fault) {
        let la = try linearAddress(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, .write)
        if _slowPath(aligned && la & 15 != 0) { throw .gp() }
        if size <= 8 { return try writeLinear(la, size, v.low) }
        if paging && (la & 0xFFF) > 0xFF0 {
            _ = try translateLinear(la, .write)
            _ = try translateLinear(la &+ 15, .write)
        }
        try writeLinear(la, 8, v.low)
        try writeLinear(la &+ 8, 8, v.high)
    }

    /// The ModRM.rm source: an XMM or MMX register, or memory of the form's size.
    @inline(__always)
    func simdSource(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) -> XMMRegister {
        let f = d.pointee.simd
        if f.bits & SIMDBits.register != 0 {
            return f.bits & SIMDBits.rmMMX != 0 ? XMMRegister(low: mmRead(f.rm), high: 0) : xmmRead(f.rm)
        }
        return try readVector(d.pointee.o1, d, Int(f.memSize), aligned: f.bits & SIMDBits.aligned != 0, next: next)
    }

    /// The ModRM.reg register as an operand (XMM, or MMX zero-extended).
    @inline(__always)
    func simdRegister(_ f: SIMDForm) -> XMMRegister {
        f.bits & SIMDBits.regMMX != 0 ? XMMRegister(low: mmRead(f.reg), high: 0) : xmmRead(f.reg)
    }

    @inline(__always)
    func setSIMDRegister(_ f: SIMDForm, _ v: XMMRegister) {
        if f.bits & SIMDBits.regMMX != 0 { mmWrite(f.reg, v.low) } else { xmmWrite(f.reg, v) }
    }

    /// Whether the instruction touches an MMX register (and so enters MMX state).
    @inline(__always)
    func usesMMX(_ f: SIMDForm) -> Bool {
        f.bits & SIMDBits.regMMX != 0 || (f.bits & SIMDBits.rmMMX != 0 && f.bits & SIMDBits.register != 0)
    }

    // MARK: Exceptions

    /// Adds the exception flags an operation raised to MXCSR, or, when one of them is
    /// unmasked, raises #XM (CR4.OSXMMEXCPT) or #UD without committing the result. The host
    /// ran with every exception masked, so `raised` holds what each lane signalled; as on
    /// hardware, an unmasked invalid/denormal/divide-by-zero (detected before the
    /// computation) reports only those, otherwise all flags are reported.
    @inline(__always)
    func simdExceptions(_ raised: UInt32) throws(Fault) {
        if _fastPath(raised == 0) { return }
        try simdExceptionsSlow(raised)
    }

    @inline(never)
    func simdExceptionsSlow(_ raised: UInt32) throws(Fault) {
        let mxcsr = s.pointee.fpu.mxcsr
        let unmasked = raised & ~(mxcsr >> 7) & 0x3F
        if unmasked == 0 {
            s.pointee.fpu.mxcsr = mxcsr | raised
            return
        }
        let preComputation: UInt32 = 0x7   // IE, DE, ZE
        s.pointee.fpu.mxcsr = mxcsr | (unmasked & preComputation != 0 ? raised & preComputation : raised)
        throw s.pointee.cr4 & CR4Bits.osxmmexcpt != 0 ? .xm() : .ud()
    }

    // MARK: Dispatch

    @inline(never)
    func executeSIMD(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        switch f.kind {
        case .fxsave, .fxrstor, .xsave, .xsaveopt, .xsavec, .xrstor, .xgetbv, .xsetbv:
            try saveRestore(d, next: next)
            s.pointee.rip = next
            return
        case .crc32, .movnti:
            break   // general-register instructions: no FPU/SSE state checks
        default:
            // SDM 13.1 / 22.x: CR0.EM makes every MMX/SSE instruction #UD; SSE ones also need
            // CR4.OSFXSR; then CR0.TS raises #NM (the OS's lazy FPU switch).
            let cr0 = s.pointee.cr0
            if cr0 & CR0.em != 0 { throw .ud() }
            if f.bits & SIMDBits.mmxOnly == 0 && s.pointee.cr4 & CR4Bits.osfxsr == 0 { throw .ud() }
            if cr0 & CR0.ts != 0 { throw .nm() }
            // MMX instructions (and EMMS) report a pending unmasked x87 exception first:
            // #MF with CR0.NE (the legacy FERR# signalling is not modelled). Pending means an
            // FSW exception flag whose FCW mask is clear; FSW.ES alone does not count (the
            // fuzz against this CPU shows both after FXRSTOR of such values).
            let fsw = s.pointee.fpu.fsw
            if _slowPath(fsw & ~s.pointee.fpu.fcw & 0x3F != 0) && cr0 & CR0.ne != 0
                && (f.bits & (SIMDBits.regMMX | SIMDBits.rmMMX | SIMDBits.mmxOnly) != 0 || f.kind == .emms) {
                throw Fault(vector: 16)
            }
        }
        switch f.kind {
        case .host: try simdHost(d, next: next)
        case .hostShiftImm, .hostToGPR, .hostFromGPR, .hostToRM, .hostFlags, .hostString, .crc32:
            try simdHostOther(d, next: next)
        case .emms:
            s.pointee.fpu.ftw = 0
        case .ldmxcsr, .stmxcsr:
            try saveRestore(d, next: next)
        case .invalid:
            throw .ud()
        default:
            try simdMove(d, next: next)
        }
        s.pointee.rip = next
    }

    /// reg = op(reg, rm): the bulk of SSE and MMX.
    @inline(__always)
    func simdHost(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        var dst = simdRegister(f)
        var src = try simdSource(d, next: next)
        switch f.mmxAdjust {
        case MMXAdjust.concatenate:
            dst.high = src.low
            src = dst
        case MMXAdjust.highHalves:
            dst.low >>= 32
            src.low >>= 32
        case MMXAdjust.shuffleIndex:
            src.low &= 0x8787_8787_8787_8787
        default: break
        }
        var a = tandem_sse_args()
        a.d = (dst.low, dst.high)
        a.s = (src.low, src.high)
        let x0 = xmmRead(0)
        a.x0 = (x0.low, x0.high)
        a.mxcsr = s.pointee.fpu.mxcsr
        a.imm = UInt32(f.imm)
        let out = tandem_sse_execute(UInt32(f.encoding), &a)
        if _slowPath(out & TANDEM_SSE_OUT_DST == 0) { throw .ud() }
        try simdExceptions(a.raised)
        setSIMDRegister(f, XMMRegister(low: a.d.0, high: a.d.1))
        if usesMMX(f) { mmxTransition() }
    }

    /// The forms with general registers, flags or implicit operands.
    @inline(never)
    func simdHostOther(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        let isRegister = f.bits & SIMDBits.register != 0
        var a = tandem_sse_args()
        a.mxcsr = s.pointee.fpu.mxcsr
        a.imm = UInt32(f.imm)
        switch f.kind {
        case .hostShiftImm:
            // The register is in ModRM.rm; the count is the immediate.
            let v = f.bits & SIMDBits.rmMMX != 0 ? XMMRegister(low: mmRead(f.rm), high: 0) : xmmRead(f.rm)
            a.d = (v.low, v.high)
            a.s = (UInt64(f.imm), 0)
        case .hostToGPR:
            let v = try simdSource(d, next: next)
            a.d = (v.low, v.high)
            a.s = (v.low, v.high)
        case .hostFromGPR:
            let v = simdRegister(f)
            a.d = (v.low, v.high)
            let size = Int(f.memSize)
            a.gpr = isRegister ? readReg(f.rm, max(size, 4)) : try read(d.pointee.o1.segment, effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next), size)
        case .hostToRM:
            let v = xmmRead(f.reg)
            a.d = (v.low, v.high)
        case .hostFlags, .hostString:
            let v = xmmRead(f.reg)
            a.d = (v.low, v.high)
            let src = try simdSource(d, next: next)
            a.s = (src.low, src.high)
            if f.kind == .hostString {
                // PCMPESTRx: |EAX| and |EDX| (|RAX|, |RDX| with REX.W), saturated to the
                // element count, so the host's 32-bit form computes the same thing.
                let limit: UInt64 = f.imm & 1 != 0 ? 8 : 16
                let wide = f.bits & SIMDBits.w != 0
                func length(_ v: UInt64) -> UInt64 {
                    let signed = wide ? Int64(bitPattern: v) : Int64(Int32(truncatingIfNeeded: v))
                    return min(signed.magnitude, limit)
                }
                a.rax = length(r[0])
                a.rdx = length(r[2])
            }
        case .crc32:
            a.gpr = readReg(f.reg, 4)
            let size = Int(f.memSize)
            a.s.0 = isRegister ? readReg(f.rm, size) : try read(d.pointee.o1.segment, effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next), size)
            a.imm = UInt32(size)
        default:
            throw .ud()
        }
        let out = tandem_sse_execute(UInt32(f.encoding), &a)
        if _slowPath(out == TANDEM_SSE_UNKNOWN) { throw .ud() }
        try simdExceptions(a.raised)
        switch f.kind {
        case .hostShiftImm:
            let v = XMMRegister(low: a.d.0, high: a.d.1)
            if f.bits & SIMDBits.rmMMX != 0 { mmWrite(f.rm, v.low); mmxTransition() } else { xmmWrite(f.rm, v) }
            return
        case .hostToGPR, .crc32:
            writeReg(f.reg, f.bits & SIMDBits.w != 0 ? 8 : 4, a.gpr)
        case .hostFromGPR:
            setSIMDRegister(f, XMMRegister(low: a.d.0, high: a.d.1))
        case .hostToRM:
            let size = Int(f.memSize)
            if isRegister {
                writeReg(f.rm, size == 8 ? 8 : 4, a.gpr)
            } else {
                try write(d.pointee.o1.segment, effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next), size, a.gpr)
            }
        default:
            break
        }
        if out & TANDEM_SSE_OUT_EFLAGS != 0 { setFlags(Flag.arithmetic, UInt64(a.eflags)) }
        if out & TANDEM_SSE_OUT_ECX != 0 { writeReg(1, 4, a.gpr) }
        if out & TANDEM_SSE_OUT_XMM0 != 0 { xmmWrite(0, XMMRegister(low: a.d.0, high: a.d.1)) }
        if usesMMX(f) { mmxTransition() }
    }
}
