import X86

extension InterpreterVCPU {
    @inline(__always)
    func readReg(_ reg: UInt8, _ size: Int) -> UInt64 {
        if _slowPath(reg >= 16) { return (r[Int(reg - 16)] >> 8) & 0xFF }
        return readGPR(reg, size)
    }

    /// Writes a register as hardware does: 8- and 16-bit writes keep the other bits,
    /// 32-bit writes zero the upper half.
    @inline(__always)
    func writeReg(_ reg: UInt8, _ size: Int, _ v: UInt64) {
        if _slowPath(reg >= 16) {
            let i = Int(reg - 16)
            r[i] = r[i] & ~0xFF00 | (v & 0xFF) << 8
            return
        }
        writeGPR(reg, size, v)
    }

    /// The offset part of a memory operand, wrapped to the address size.
    @inline(__always)
    func effectiveAddress(_ o: Operand, _ addressSize: UInt8, next: UInt64) -> UInt64 {
        var a = UInt64(bitPattern: o.value)
        if o.base != Operand.noRegister {
            a &+= o.base == Operand.ripBase ? next : r[Int(o.base)]
        }
        if o.index != Operand.noRegister {
            a &+= r[Int(o.index)] &* UInt64(o.scale)
        }
        switch addressSize {
        case 2: return a & 0xFFFF
        case 4: return a & 0xFFFF_FFFF
        default: return a
        }
    }

    @inline(__always)
    func readOperand(_ o: Operand, _ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, next: UInt64) throws(Fault) -> UInt64 {
        switch o.kind {
        case .register: return readReg(o.reg, size)
        case .immediate: return UInt64(bitPattern: o.value) & sizeMask(size)
        case .memory: return try read(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size)
        case .segment: return UInt64(seg[Int(o.reg)].pointee.selector)
        default: throw .ud()
        }
    }

    @inline(__always)
    func writeOperand(_ o: Operand, _ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ value: UInt64, next: UInt64) throws(Fault) {
        switch o.kind {
        case .register: writeReg(o.reg, size, value)
        case .memory: try write(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, value)
        default: throw .ud()
        }
    }

    /// The linear address of a memory operand, checked for `access` (for read-modify-write).
    @inline(__always)
    func operandLinear(_ o: Operand, _ d: UnsafeMutablePointer<DecodedInstruction>, _ size: Int, _ access: Access, next: UInt64) throws(Fault) -> UInt64 {
        try linearAddress(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, access)
    }

    /// Sets the `mask` bits of RFLAGS to `values`'s. Deferred flags (LazyFlags.swift) that
    /// these do not all replace are computed first.
    @inline(__always)
    func setFlags(_ mask: UInt64, _ values: UInt64) {
        if _slowPath(lazyFlags != .none) {
            if mask & Flag.arithmetic == Flag.arithmetic { lazyFlags = .none } else { materializeFlagsSlow() }
        }
        s.pointee.rflags = s.pointee.rflags & ~mask | (values & mask)
    }

    @inline(__always)
    func flag(_ f: UInt64) -> Bool {
        materializeFlags()
        return s.pointee.rflags & f != 0
    }

    /// Condition `cc` (the tttn encoding) against RFLAGS.
    @_transparent
    func condition(_ cc: Int) -> Bool {
        if lazyFlags != .none, let v = lazyCondition(cc) { return v }
        materializeFlags()
        let f = s.pointee.rflags
        let v: Bool
        switch cc >> 1 {
        case 0: v = f & Flag.of != 0
        case 1: v = f & Flag.cf != 0
        case 2: v = f & Flag.zf != 0
        case 3: v = f & (Flag.cf | Flag.zf) != 0
        case 4: v = f & Flag.sf != 0
        case 5: v = f & Flag.pf != 0
        case 6: v = (f & Flag.sf != 0) != (f & Flag.of != 0)
        default: v = f & Flag.zf != 0 || (f & Flag.sf != 0) != (f & Flag.of != 0)
        }
        return cc & 1 == 0 ? v : !v
    }

    /// RIP masked to the code size.
    @inline(__always)
    func maskIP(_ ip: UInt64, _ operandSize: Int) -> UInt64 {
        codeBits == 64 && operandSize != 2 ? ip : (operandSize == 2 ? ip & 0xFFFF : ip & 0xFFFF_FFFF)
    }

    /// Size of a push/pop: 64-bit mode defaults to 8 bytes.
    @inline(__always)
    func stackOperandSize(_ d: UnsafeMutablePointer<DecodedInstruction>) -> Int {
        codeBits == 64 ? (d.pointee.operandSize == 2 ? 2 : 8) : Int(d.pointee.operandSize)
    }
}
