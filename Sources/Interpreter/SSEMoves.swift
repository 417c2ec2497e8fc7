import X86

// MMX/SSE data movement: MOVAPS/MOVUPS/MOVDQA/MOVDQU/LDDQU/MOVNTDQA, MOVSS/MOVSD, MOVLPS/
// MOVHPS/MOVLPD/MOVHPD/MOVHLPS/MOVLHPS, MOVD/MOVQ (all forms), MOVQ2DQ/MOVDQ2Q, MOVNT*,
// MASKMOVQ/MASKMOVDQU, MOVSLDUP/MOVSHDUP/MOVDDUP. Pure bit copies: no MXCSR involvement.

extension InterpreterVCPU {
    @inline(never)
    func simdMove(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        let isRegister = f.bits & SIMDBits.register != 0
        let rmMMX = f.bits & SIMDBits.rmMMX != 0
        let size = Int(f.memSize)
        let aligned = f.bits & SIMDBits.aligned != 0
        let o = d.pointee.o1
        switch f.kind {
        case .movFull:
            setSIMDRegister(f, try simdSource(d, next: next))
        case .storeFull:
            let v = simdRegister(f)
            if isRegister {
                if rmMMX { mmWrite(f.rm, v.low) } else { xmmWrite(f.rm, v) }
            } else {
                try writeVector(o, d, size, v, aligned: aligned, next: next)
            }
        case .movScalar:
            // MOVSS/MOVSD: from memory the rest of the register is zeroed; between
            // registers only the low element moves.
            let src = try simdSource(d, next: next)
            if isRegister {
                var v = xmmRead(f.reg)
                v.low = size == 4 ? v.low & ~0xFFFF_FFFF | src.low & 0xFFFF_FFFF : src.low
                xmmWrite(f.reg, v)
            } else {
                xmmWrite(f.reg, src)
            }
        case .storeScalar:
            let v = xmmRead(f.reg)
            if isRegister {
                var t = xmmRead(f.rm)
                t.low = size == 4 ? t.low & ~0xFFFF_FFFF | v.low & 0xFFFF_FFFF : v.low
                xmmWrite(f.rm, t)
            } else {
                try writeVector(o, d, size, v, aligned: false, next: next)
            }
        case .movLowQ:
            // MOVQ xmm, xmm/m64 (F3 0F 7E): the low quadword, upper half zeroed.
            let src = try simdSource(d, next: next)
            xmmWrite(f.reg, XMMRegister(low: src.low, high: 0))
        case .storeLowQ:
            let v = xmmRead(f.reg)
            if isRegister { xmmWrite(f.rm, XMMRegister(low: v.low, high: 0)) } else { try writeVector(o, d, 8, v, aligned: false, next: next) }
        case .movLow:
            // MOVLPS/MOVLPD m64, or MOVHLPS (register: the source's high quadword).
            var v = xmmRead(f.reg)
            v.low = isRegister ? xmmRead(f.rm).high : try readVector(o, d, 8, aligned: false, next: next).low
            xmmWrite(f.reg, v)
        case .movHigh:
            // MOVHPS/MOVHPD m64, or MOVLHPS (register: the source's low quadword).
            var v = xmmRead(f.reg)
            v.high = isRegister ? xmmRead(f.rm).low : try readVector(o, d, 8, aligned: false, next: next).low
            xmmWrite(f.reg, v)
        case .storeLow:
            try writeVector(o, d, 8, xmmRead(f.reg), aligned: false, next: next)
        case .storeHigh:
            try writeVector(o, d, 8, XMMRegister(low: xmmRead(f.reg).high, high: 0), aligned: false, next: next)
        case .movFromGPR:
            // MOVD/MOVQ mm/xmm, r/m32/64: zero-extended.
            let v = isRegister ? readReg(f.rm, size) : try read(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size)
            setSIMDRegister(f, XMMRegister(low: v, high: 0))
        case .storeToGPR:
            let v = simdRegister(f).low & sizeMask(size)
            if isRegister { writeReg(f.rm, size, v) } else { try write(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, v) }
        case .movq2dq:
            xmmWrite(f.reg, XMMRegister(low: mmRead(f.rm), high: 0))
        case .movdq2q:
            mmWrite(f.reg, xmmRead(f.rm).low)
        case .movnti:
            try write(o.segment, effectiveAddress(o, d.pointee.addressSize, next: next), size, readReg(f.reg, size))
        case .maskmov:
            try maskedMove(d, next: next)
        case .dupLow, .dupHigh:
            // MOVSLDUP / MOVSHDUP: the even (odd) dwords, each twice.
            let src = try simdSource(d, next: next)
            let shift: UInt64 = f.kind == .dupLow ? 0 : 32
            let lo = (src.low >> shift) & 0xFFFF_FFFF, hi = (src.high >> shift) & 0xFFFF_FFFF
            xmmWrite(f.reg, XMMRegister(low: lo | lo << 32, high: hi | hi << 32))
        case .dupDouble:
            let src = try simdSource(d, next: next)
            xmmWrite(f.reg, XMMRegister(low: src.low, high: src.low))
        default:
            throw .ud()
        }
        if usesMMX(f) { mmxTransition() }
    }

    /// MASKMOVQ / MASKMOVDQU: the bytes of reg whose mask byte (in rm) has bit 7 set go to
    /// DS:rDI (segment overridable). Every byte is checked before any is written.
    @inline(never)
    func maskedMove(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        let mmx = f.bits & SIMDBits.regMMX != 0
        let data = simdRegister(f)
        let mask = mmx ? XMMRegister(low: mmRead(f.rm), high: 0) : xmmRead(f.rm)
        let count = mmx ? 8 : 16
        let addressMask: UInt64 = d.pointee.addressSize == 8 ? ~0 : d.pointee.addressSize == 4 ? 0xFFFF_FFFF : 0xFFFF
        let base = r[7] & addressMask
        func byte(_ v: XMMRegister, _ i: Int) -> UInt64 { (i < 8 ? v.low >> (8 * UInt64(i)) : v.high >> (8 * UInt64(i - 8))) & 0xFF }
        var selected: [(UInt64, UInt64)] = []
        for i in 0..<count where byte(mask, i) & 0x80 != 0 {
            let la = try linearAddress(d.pointee.dataSegment, (base &+ UInt64(i)) & addressMask, 1, .write)
            if paging { _ = try translateLinear(la, .write) }
            selected.append((la, byte(data, i)))
        }
        for (la, b) in selected { try writeLinear(la, 1, b) }
        if mmx { mmxTransition() }
    }
}
