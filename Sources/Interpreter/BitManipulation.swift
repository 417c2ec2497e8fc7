import X86

extension InterpreterVCPU {
    /// POPCNT, LZCNT, TZCNT; BMI1 (andn bextr blsi blsmsk blsr tzcnt), BMI2 (bzhi mulx pdep
    /// pext rorx sarx shlx shrx); ADX (adcx adox). Flags as the SDM defines them; those it
    /// leaves undefined are cleared (as this machine's CPU does at CPL 3).
    func bitManipulation(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let size = Int(d.pointee.o0.size)
        let bits = UInt64(size * 8)
        let m = sizeMask(size)
        let o0 = d.pointee.o0, o1 = d.pointee.o1, o2 = d.pointee.o2
        switch op {
        case .popcnt:
            let v = try readOperand(o1, d, size, next: next)
            writeReg(o0.reg, size, UInt64(v.nonzeroBitCount))
            setFlags(Flag.arithmetic, v == 0 ? Flag.zf : 0)
        case .lzcnt, .tzcnt:
            let v = try readOperand(o1, d, size, next: next)
            let count = v == 0 ? bits : op == .lzcnt ? UInt64(v.leadingZeroBitCount) - (64 - bits) : UInt64(v.trailingZeroBitCount)
            writeReg(o0.reg, size, count)
            setFlags(Flag.arithmetic, (v == 0 ? Flag.cf : 0) | (count == 0 ? Flag.zf : 0))
        case .andn:
            let res = ~readReg(o1.reg, size) & (try readOperand(o2, d, size, next: next)) & m
            writeReg(o0.reg, size, res)
            setFlags(Flag.arithmetic, logicFlags(res, size))
        case .bextr:
            let v = try readOperand(o1, d, size, next: next)
            let control = readReg(o2.reg, size)
            let start = control & 0xFF, length = (control >> 8) & 0xFF
            var res = start >= bits ? 0 : v >> start
            if length < 64 { res &= (1 << length) &- 1 }
            writeReg(o0.reg, size, res & m)
            setFlags(Flag.arithmetic, res & m == 0 ? Flag.zf : 0)
        case .blsi, .blsmsk, .blsr:
            let v = try readOperand(o1, d, size, next: next)
            let res: UInt64
            switch op {
            case .blsi: res = (0 &- v) & v & m
            case .blsmsk: res = ((v &- 1) ^ v) & m
            default: res = (v &- 1) & v & m
            }
            writeReg(o0.reg, size, res)
            // blsi: CF = source non-zero; blsmsk, blsr: CF = source zero. blsmsk clears ZF.
            let cf = op == .blsi ? v & m != 0 : v & m == 0
            var f = logicFlags(res, size) | (cf ? Flag.cf : 0)
            if op == .blsmsk { f &= ~Flag.zf }
            setFlags(Flag.arithmetic, f)
        case .bzhi:
            let v = try readOperand(o1, d, size, next: next)
            let index = readReg(o2.reg, size) & 0xFF
            let res = index < bits ? v & ((1 << index) &- 1) : v
            writeReg(o0.reg, size, res & m)
            setFlags(Flag.arithmetic, logicFlags(res & m, size) | (index >= bits ? Flag.cf : 0))
        case .pdep, .pext:
            let source = readReg(o1.reg, size)
            let mask = try readOperand(o2, d, size, next: next)
            writeReg(o0.reg, size, op == .pdep ? depositBits(source, mask) : extractBits(source, mask))
        case .rorx:
            let v = try readOperand(o1, d, size, next: next)
            let count = UInt64(bitPattern: o2.value) & (bits - 1)
            writeReg(o0.reg, size, count == 0 ? v : ((v >> count) | (v << (bits - count))) & m)
        case .sarx, .shlx, .shrx:
            let v = try readOperand(o1, d, size, next: next)
            let count = readReg(o2.reg, size) & (bits - 1)
            let res: UInt64
            switch op {
            case .sarx: res = UInt64(bitPattern: Int64(bitPattern: signExtend(v, size)) >> Int64(count))
            case .shlx: res = v << count
            default: res = v >> count
            }
            writeReg(o0.reg, size, res & m)
        case .mulx:
            let v = try readOperand(o2, d, size, next: next)
            let product = readReg(2, size).multipliedFullWidth(by: v)
            let (high, low) = size == 8 ? (product.high, product.low) : (product.low >> 32, product.low & m)
            // The low half first: when both destinations are one register, the high half wins.
            writeReg(o1.reg, size, low)
            writeReg(o0.reg, size, high)
        default: // adcx, adox: an add with carry through CF or OF only
            let flag = op == .adcx ? Flag.cf : Flag.of
            let a = readReg(o0.reg, size), b = try readOperand(o1, d, size, next: next)
            let carry: UInt64 = s.pointee.rflags & flag != 0 ? 1 : 0
            let res = (a &+ b &+ carry) & m
            let out = res < a || (carry == 1 && res == a)
            writeReg(o0.reg, size, res)
            setFlags(flag, out ? flag : 0)
        }
    }

    /// MOVBE: a load or store with the bytes reversed.
    func moveByteSwapped(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let size = Int(d.pointee.o0.size)
        let v = try readOperand(d.pointee.o1, d, size, next: next)
        let swapped = v.byteSwapped >> UInt64(64 - size * 8)
        try writeOperand(d.pointee.o0, d, size, swapped, next: next)
    }

    /// SF and ZF of a logical result (CF and OF cleared; AF and PF, undefined, cleared).
    @inline(__always)
    func logicFlags(_ res: UInt64, _ size: Int) -> UInt64 {
        resultFlags(res, size) & (Flag.zf | Flag.sf)
    }

    /// PDEP: the low bits of `source`, in order, into the positions of `mask`'s set bits.
    func depositBits(_ source: UInt64, _ mask: UInt64) -> UInt64 {
        var res: UInt64 = 0, m = mask, k: UInt64 = 0
        while m != 0 {
            let lowest = m & (0 &- m)
            if source & (1 << k) != 0 { res |= lowest }
            m &= m &- 1
            k += 1
        }
        return res
    }

    /// PEXT: the bits of `source` at `mask`'s set bits, packed into the low bits.
    func extractBits(_ source: UInt64, _ mask: UInt64) -> UInt64 {
        var res: UInt64 = 0, m = mask, k: UInt64 = 0
        while m != 0 {
            let lowest = m & (0 &- m)
            if source & lowest != 0 { res |= 1 << k }
            m &= m &- 1
            k += 1
        }
        return res
    }
}
