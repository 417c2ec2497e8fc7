#if canImport(Glibc)
import Glibc
#endif
import X86

extension InterpreterVCPU {
    /// The less frequent instructions. Each sets RIP itself.
    @inline(never)
    func executeMore(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        switch op {
        case .movzx, .movsx, .movsxd:
            var dsize = Int(d.pointee.o0.size), ssize = Int(d.pointee.o1.size)
            if op == .movsxd {
                // Capstone names the 64-bit form whatever the prefixes: without REX.W it is
                // a 32-bit move (zero-extending), with 66 a 16-bit one (upper bits kept).
                dsize = Int(d.pointee.operandSize)
                ssize = min(4, dsize)
            }
            var v = try readOperand(d.pointee.o1, d, ssize, next: next)
            if op != .movzx { v = signExtend(v, ssize) }
            writeReg(d.pointee.o0.reg, dsize, v & sizeMask(dsize))
        case .xchg:
            let size = Int(d.pointee.o0.size)
            // With a memory operand XCHG is always locked; between registers it takes no lock.
            let memoryOperand = d.pointee.o0.kind == .memory ? d.pointee.o0 : d.pointee.o1.kind == .memory ? d.pointee.o1 : nil
            if let m = memoryOperand {
                let register = d.pointee.o0.kind == .memory ? d.pointee.o1.reg : d.pointee.o0.reg
                try lockedReadModifyWrite(d, memory: m, register: register, size: size, operand: readReg(register, size), next: next)
                break
            }
            let a = readReg(d.pointee.o0.reg, size), b = readReg(d.pointee.o1.reg, size)
            writeReg(d.pointee.o1.reg, size, a)
            writeReg(d.pointee.o0.reg, size, b)
        case .xadd:
            let size = Int(d.pointee.o0.size)
            let b = readReg(d.pointee.o1.reg, size)
            if d.pointee.prefixes & PrefixBits.lock != 0 { try lockedReadModifyWrite(d, size: size, operand: b, next: next); break }
            let a = try readOperand(d.pointee.o0, d, size, next: next)
            let res = a &+ b
            // SRC ← DEST, then DEST ← sum: with one register as both, the sum wins.
            if d.pointee.o0.kind == .memory {
                try writeOperand(d.pointee.o0, d, size, res, next: next)
                writeReg(d.pointee.o1.reg, size, a)
            } else {
                writeReg(d.pointee.o1.reg, size, a)
                writeReg(d.pointee.o0.reg, size, res)
            }
            setFlags(Flag.arithmetic, addFlags(a, b, res, 0, size))
        case .cmpxchg:
            let size = Int(d.pointee.o0.size)
            let locked = d.pointee.prefixes & PrefixBits.lock != 0
            if locked {
                let linear = try operandLinear(d.pointee.o0, d, size, .write, next: next)
                if try lockedCompareExchange(linear: linear, size: size, source: readReg(d.pointee.o1.reg, size)) { break }
                atomicLock.lock()
            }
            defer { if locked { atomicLock.unlock() } }
            let dst = try readOperand(d.pointee.o0, d, size, next: next)
            let acc = readReg(0, size)
            let f = subFlags(acc, dst, acc &- dst, 0, size)
            if acc == dst {
                try writeOperand(d.pointee.o0, d, size, readReg(d.pointee.o1.reg, size), next: next)
            } else {
                // Memory is written back unchanged (the locked cycle); a register destination
                // is left alone, upper half included (as AMD and Intel hardware do; Linux's
                // instruction emulator zero-extends it: see Documentation/HostLimitations.md).
                if d.pointee.o0.kind == .memory { try writeOperand(d.pointee.o0, d, size, dst, next: next) }
                writeReg(0, size, dst)
            }
            setFlags(Flag.arithmetic, f)
        case .cmpxchg8b, .cmpxchg16b:
            guard d.pointee.o0.kind == .memory else { throw .ud() }
            let half = op == .cmpxchg8b ? 4 : 8
            let off = effectiveAddress(d.pointee.o0, d.pointee.addressSize, next: next)
            if half == 8 && off & 15 != 0 { throw .gp() }
            let locked = d.pointee.prefixes & PrefixBits.lock != 0
            if locked {
                let linear = try linearAddress(d.pointee.o0.segment, off, 2 * half, .write)
                if try lockedCompareExchangeDouble(linear: linear, half: half) { break }
                atomicLock.lock()
            }
            defer { if locked { atomicLock.unlock() } }
            let lo = try read(d.pointee.o0.segment, off, half)
            let hi = try read(d.pointee.o0.segment, off &+ UInt64(half), half)
            if lo == readReg(0, half) && hi == readReg(2, half) {
                try write(d.pointee.o0.segment, off, half, readReg(3, half))
                try write(d.pointee.o0.segment, off &+ UInt64(half), half, readReg(1, half))
                setFlags(Flag.zf, Flag.zf)
            } else {
                try write(d.pointee.o0.segment, off, half, lo)
                try write(d.pointee.o0.segment, off &+ UInt64(half), half, hi)
                writeReg(0, half, lo)
                writeReg(2, half, hi)
                setFlags(Flag.zf, 0)
            }
        case .bswap:
            let size = Int(d.pointee.o0.size)
            let v = readReg(d.pointee.o0.reg, size)
            let swapped: UInt64 = size == 8 ? v.byteSwapped : size == 4 ? UInt64(UInt32(truncatingIfNeeded: v).byteSwapped) : 0
            writeReg(d.pointee.o0.reg, size, swapped)
        case .pushaw, .pushal:
            let size = op == .pushal ? 4 : 2
            let sp = r[4]
            // Check the whole frame first: a fault must leave SP unchanged.
            let top = (r[4] &- UInt64(8 * size)) & stackMask
            _ = try probeWrite(Segment.ss, top, 8 * size)
            for i in 0..<8 { try push(i == 4 ? sp & sizeMask(size) : readReg(UInt8(i), size), size) }
        case .popaw, .popal:
            let size = op == .popal ? 4 : 2
            var values = [UInt64](repeating: 0, count: 8)
            for i in 0..<8 { values[7 - i] = try peek(UInt64(i * size), size) }
            for i in 0..<8 where i != 4 { writeReg(UInt8(i), size, values[i]) }
            setStackPointer((r[4] &+ UInt64(8 * size)) & stackMask)
        case .pushf, .pushfd, .pushfq:
            let size = stackOperandSize(d)
            if virtual8086 && (s.pointee.rflags & Flag.iopl) >> 12 < 3 { throw .gp() }
            try push(s.pointee.rflags & ~(Flag.vm | Flag.rf) & sizeMask(size), size)
        case .popf, .popfd, .popfq:
            let size = stackOperandSize(d)
            if virtual8086 && (s.pointee.rflags & Flag.iopl) >> 12 < 3 { throw .gp() }
            let v = try pop(size)
            writeFlags(v, size: size)
        case .lahf:
            writeReg(16, 1, s.pointee.rflags & 0xD5 | 2)
        case .sahf:
            setFlags(0xD5, readReg(16, 1))
        case .cbw: writeReg(0, 2, signExtend(readReg(0, 1), 1))
        case .cwde: writeReg(0, 4, signExtend(readReg(0, 2), 2))
        case .cdqe: writeReg(0, 8, signExtend(readReg(0, 4), 4))
        case .cwd: writeReg(2, 2, readReg(0, 2) & 0x8000 != 0 ? 0xFFFF : 0)
        case .cdq: writeReg(2, 4, readReg(0, 4) & 0x8000_0000 != 0 ? 0xFFFF_FFFF : 0)
        case .cqo: writeReg(2, 8, r[0] & (1 << 63) != 0 ? .max : 0)
        case .xlatb:
            let asz = Int(d.pointee.addressSize)
            let off = (r[3] &+ (r[0] & 0xFF)) & sizeMask(asz)
            writeReg(0, 1, try read(d.pointee.dataSegment, off, 1))
        case .enter:
            try enter(d)
        case .leave:
            let size = stackOperandSize(d)
            let bp = r[5] & stackMask
            let v = try read(Segment.ss, bp, size)
            setStackPointer(bp &+ UInt64(size))
            writeReg(5, size, v)
        case .lds, .les, .lfs, .lgs, .lss:
            let size = Int(d.pointee.o0.size)
            let off = effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next)
            guard d.pointee.o1.kind == .memory else { throw .ud() }
            let v = try read(d.pointee.o1.segment, off, size)
            let selector = try read(d.pointee.o1.segment, (off &+ UInt64(size)) & sizeMask(Int(d.pointee.addressSize)), 2)
            let target: UInt8 = op == .lds ? Segment.ds : op == .les ? Segment.es : op == .lfs ? Segment.fs : op == .lgs ? Segment.gs : Segment.ss
            try loadSegment(target, UInt16(selector))
            writeReg(d.pointee.o0.reg, size, v)
            if target == Segment.ss { s.pointee.events.interruptShadow = InterruptShadow.movSS }
        case .mul, .imul:
            try multiply(d, next: next)
        case .div, .idiv:
            try divide(d, next: next)
        case .daa, .das, .aaa, .aas, .aam, .aad, .salc:
            if codeBits == 64 { throw .ud() }
            try bcd(d)
        case .shld, .shrd:
            try doubleShift(d, next: next)
        case .bt, .bts, .btr, .btc:
            try bitTest(d, next: next)
        case .popcnt, .lzcnt, .tzcnt, .andn, .bextr, .blsi, .blsmsk, .blsr, .bzhi, .pdep, .pext, .rorx, .sarx, .shlx,
             .shrx, .mulx, .adcx, .adox:
            try bitManipulation(d, next: next)
        case .movbe:
            guard d.pointee.o0.kind == .memory || d.pointee.o1.kind == .memory else { throw .ud() }
            try moveByteSwapped(d, next: next)
        case .bsf, .bsr:
            let size = Int(d.pointee.o0.size)
            let v = try readOperand(d.pointee.o1, d, size, next: next)
            if v == 0 {
                setFlags(Flag.zf, Flag.zf)
            } else {
                let i = op == .bsf ? UInt64(v.trailingZeroBitCount) : UInt64(63 - v.leadingZeroBitCount)
                writeReg(d.pointee.o0.reg, size, i)
                setFlags(Flag.zf, 0)
            }
        case .movsb, .movsw, .movsd, .movsq, .cmpsb, .cmpsw, .cmpsd, .cmpsq, .stosb, .stosw, .stosd, .stosq,
             .lodsb, .lodsw, .lodsd, .lodsq, .scasb, .scasw, .scasd, .scasq, .insb, .insw, .insd, .outsb, .outsw, .outsd:
            try string(d, next: next)
            return
        case .clc: setFlags(Flag.cf, 0)
        case .stc: setFlags(Flag.cf, Flag.cf)
        case .cmc: s.pointee.rflags ^= Flag.cf
        case .cld: setFlags(Flag.df, 0)
        case .std: setFlags(Flag.df, Flag.df)
        case .cli:
            if protectedMode && cpl > iopl { throw .gp() }
            setFlags(Flag.if, 0)
        case .sti:
            if protectedMode && cpl > iopl { throw .gp() }
            if !flag(Flag.if) { interruptShadow = true }
            setFlags(Flag.if, Flag.if)
        case .hlt:
            if cpl != 0 { throw .gp() }
            s.pointee.rip = next
            pendingExit = .halt
            throw .exit
        case .in, .out:
            try portIO(d, next: next)
            return
        case .ljmp, .lcall, .retf, .retfq, .iret, .iretd, .iretq, .int, .int1, .int3, .into, .bound:
            try controlTransfer(d, next: next)
            return
        case .ud2, .ud0, .invalid:
            throw .ud()
        case .wait:
            try x87Wait()
        case .x87:
            try x87(d, next: next)
        case .sse:
            try executeSIMD(d, next: next)
            return
        case .unimplemented:
            try unimplemented(d)
        default:
            try system(d, next: next)
            return
        }
        s.pointee.rip = next
    }

    var iopl: UInt8 { UInt8((s.pointee.rflags >> 12) & 3) }

    /// PAUSE in a spin loop: let another vCPU thread (perhaps the lock holder) run, then
    /// end the block, so that an interrupt that came meanwhile is taken before the loop
    /// spins on. (Without that, a loop of `pause; rdtsc` on a loaded host yielded a
    /// thousand times — each yield perhaps a whole time slice of another process — before
    /// the next look at the interrupt controller: Linux's timer_irq_works saw almost no
    /// ticks in its 160 ms and panicked with "IO-APIC + timer doesn't work!"; and a stop
    /// took seconds, reported without the vCPU and its --snapshot-on-exit file.)
    @inline(never)
    func pauseHint() {
        if shared.cpuCount > 1 {
            sched_yield()
            endBlock = true
        }
    }

    /// POPF/IRET flag loading with the privilege rules of the current mode.
    func writeFlags(_ value: UInt64, size: Int) {
        var changeable: UInt64 = Flag.arithmetic | Flag.tf | Flag.df | Flag.nt | Flag.ac | Flag.id
        if !protectedMode || cpl == 0 { changeable |= Flag.iopl | Flag.if }
        else if cpl <= iopl { changeable |= Flag.if }
        if virtual8086 { changeable &= ~Flag.iopl }
        changeable &= sizeMask(size)
        s.pointee.rflags = (s.pointee.rflags & ~changeable | value & changeable) & ~0x8028 | 2
    }

    func enter(_ d: UnsafeMutablePointer<DecodedInstruction>) throws(Fault) {
        let size = stackOperandSize(d)
        let frameSize = UInt64(bitPattern: d.pointee.o0.value) & 0xFFFF
        let level = Int(UInt64(bitPattern: d.pointee.o1.value) & 0x1F)
        let savedSP = r[4]
        do throws(Fault) {
            try push(readReg(5, size), size)
            // The frame pointer is rSP at the operand size (the SDM's FrameTemp), not cut
            // to the stack's width: a 32-bit ENTER on a 16-bit stack keeps ESP's upper half.
            let frame = r[4] & sizeMask(size)
            if level > 0 {
                var bp = r[5] & stackMask
                for _ in 1..<max(level, 1) {
                    bp = (bp &- UInt64(size)) & stackMask
                    try push(try read(Segment.ss, bp, size), size)
                }
                try push(frame, size)
            }
            let newSP = (r[4] &- frameSize) & stackMask
            _ = try probeWrite(Segment.ss, newSP, 1)
            writeReg(5, size, frame)
            setStackPointer(newSP)
        } catch {
            r[4] = savedSP
            throw error
        }
    }

    func multiply(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let signed = d.pointee.op == .imul
        if d.pointee.operandCount >= 2 {
            // imul r, r/m (, imm): truncated product; CF=OF=the result did not fit.
            let size = Int(d.pointee.o0.size)
            let a: UInt64
            let b: UInt64
            if d.pointee.operandCount == 3 {
                a = try readOperand(d.pointee.o1, d, size, next: next)
                b = d.pointee.o2.size != 0 && Int(d.pointee.o2.size) < size ? signExtend(UInt64(bitPattern: d.pointee.o2.value), Int(d.pointee.o2.size)) : UInt64(bitPattern: d.pointee.o2.value)
            } else {
                a = readReg(d.pointee.o0.reg, size)
                b = try readOperand(d.pointee.o1, d, size, next: next)
            }
            let (res, overflow) = truncatedSignedProduct(a, b, size)
            writeReg(d.pointee.o0.reg, size, res)
            setFlags(Flag.arithmetic, resultFlags(res, size) | (overflow ? Flag.cf | Flag.of : 0))
            return
        }
        let size = Int(d.pointee.o0.size)
        let src = try readOperand(d.pointee.o0, d, size, next: next)
        let acc = readReg(0, size)
        var lo: UInt64, hi: UInt64
        var overflow: Bool
        if signed {
            let (h, l) = Int64(bitPattern: signExtend(acc, size)).multipliedFullWidth(by: Int64(bitPattern: signExtend(src, size)))
            if size == 8 { lo = l; hi = UInt64(bitPattern: h); overflow = h != (Int64(bitPattern: l) >> 63) }
            else {
                let p = UInt64(bitPattern: Int64(bitPattern: l))
                lo = p & sizeMask(size); hi = (p >> UInt64(size * 8)) & sizeMask(size)
                overflow = signExtend(lo, size) != p
            }
        } else {
            let (h, l) = acc.multipliedFullWidth(by: src)
            if size == 8 { lo = l; hi = h } else { lo = l & sizeMask(size); hi = (l >> UInt64(size * 8)) & sizeMask(size) }
            overflow = hi != 0
        }
        if size == 1 { writeReg(0, 2, hi << 8 | lo) } else { writeReg(0, size, lo); writeReg(2, size, hi) }
        setFlags(Flag.arithmetic, resultFlags(lo, size) | (overflow ? Flag.cf | Flag.of : 0))
    }

    /// imul's two- and three-operand product: `a` × `b` as signed `size`-byte numbers,
    /// truncated to `size` bytes, and whether it did not fit (CF = OF).
    /// (`multipliedReportingOverflow`, not `multipliedFullWidth`, which stayed a call.)
    @_transparent
    func truncatedSignedProduct(_ a: UInt64, _ b: UInt64, _ size: Int) -> (UInt64, Bool) {
        // Narrower operands' product fits in 64 bits: it did not fit when its low `size`
        // bytes, sign-extended, are not all of it.
        let (product, overflow) = Int64(bitPattern: signExtend(a, size)).multipliedReportingOverflow(by: Int64(bitPattern: signExtend(b & sizeMask(size), size)))
        let p = UInt64(bitPattern: product)
        let res = p & sizeMask(size)
        if size == 8 { return (res, overflow) }
        return (res, signExtend(res, size) != p)
    }

    func divide(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let size = Int(d.pointee.o0.size)
        let divisor = try readOperand(d.pointee.o0, d, size, next: next)
        if divisor == 0 { throw .de() }
        let bits = UInt64(size * 8)
        let lowAcc = size == 1 ? readReg(0, 1) : readReg(0, size)
        let highAcc = size == 1 ? readReg(16, 1) : readReg(2, size)
        var q: UInt64, rem: UInt64
        if d.pointee.op == .div {
            if size == 8 {
                if highAcc >= divisor { throw .de() }
                (q, rem) = divisor.dividingFullWidth((highAcc, lowAcc))
            } else {
                let dividend = highAcc << bits | lowAcc
                q = dividend / divisor
                rem = dividend % divisor
                if q > sizeMask(size) { throw .de() }
            }
        } else {
            let sd = Int64(bitPattern: signExtend(divisor, size))
            if size == 8 {
                let dividendHigh = Int64(bitPattern: highAcc)
                // Overflow when the quotient does not fit: check with 128-bit magnitudes.
                let negative = (dividendHigh < 0) != (sd < 0)
                let (mh, ml) = dividendHigh < 0 ? negate128(UInt64(bitPattern: dividendHigh), lowAcc) : (UInt64(bitPattern: dividendHigh), lowAcc)
                let md = sd < 0 ? UInt64(bitPattern: 0 &- sd) : UInt64(sd)   // |Int64.min| fits in UInt64
                if mh >= md { throw .de() }
                let (uq, ur) = md.dividingFullWidth((mh, ml))
                if negative ? uq > 1 << 63 : uq > UInt64(Int64.max) { throw .de() }
                q = negative ? 0 &- uq : uq
                rem = dividendHigh < 0 ? 0 &- ur : ur
            } else {
                let dividend = Int64(bitPattern: signExtend(highAcc << bits | lowAcc, size * 2))
                // Int64.min / -1 overflows Int64 (and would trap): it is #DE for the guest.
                let (sq, overflow) = dividend.dividedReportingOverflow(by: sd)
                let sr = dividend.remainderReportingOverflow(dividingBy: sd).partialValue
                let limit = Int64(1) << (bits - 1)
                if overflow || sq >= limit || sq < -limit { throw .de() }
                q = UInt64(bitPattern: sq) & sizeMask(size)
                rem = UInt64(bitPattern: sr) & sizeMask(size)
            }
        }
        if size == 1 { writeReg(0, 2, rem << 8 | q & 0xFF) } else { writeReg(0, size, q); writeReg(2, size, rem) }
    }

    func negate128(_ hi: UInt64, _ lo: UInt64) -> (UInt64, UInt64) {
        let l = ~lo &+ 1
        return (~hi &+ (l == 0 ? 1 : 0), l)
    }

    func bcd(_ d: UnsafeMutablePointer<DecodedInstruction>) throws(Fault) {
        var al = readReg(0, 1)
        let cf = flag(Flag.cf), af = flag(Flag.af)
        switch d.pointee.op {
        case .daa, .das:
            let old = al
            var newCF = false, newAF = false
            if al & 0xF > 9 || af {
                al = d.pointee.op == .daa ? (al &+ 6) & 0xFF : (al &- 6) & 0xFF
                newCF = cf || (d.pointee.op == .daa ? old > 0xF9 : old < 6)
                newAF = true
            }
            if old > 0x99 || cf {
                al = d.pointee.op == .daa ? (al &+ 0x60) & 0xFF : (al &- 0x60) & 0xFF
                newCF = true
            }
            writeReg(0, 1, al)
            setFlags(Flag.arithmetic, resultFlags(al, 1) | (newCF ? Flag.cf : 0) | (newAF ? Flag.af : 0))
        case .aaa, .aas:
            var ax = readReg(0, 2)
            if al & 0xF > 9 || af {
                ax = d.pointee.op == .aaa ? (ax &+ 0x106) : (ax &- 6) & 0xFFFF
                if d.pointee.op == .aas { ax = (ax & 0xFF) | (((ax >> 8) &- 1) & 0xFF) << 8 }
                ax &= 0xFF0F
                writeReg(0, 2, ax)
                setFlags(Flag.af | Flag.cf, Flag.af | Flag.cf)
            } else {
                writeReg(0, 2, ax & 0xFF0F)
                setFlags(Flag.af | Flag.cf, 0)
            }
        case .aam:
            let base = d.pointee.operandCount == 0 ? 10 : UInt64(bitPattern: d.pointee.o0.value) & 0xFF
            if base == 0 { throw .de() }
            let ah = al / base
            al = al % base
            writeReg(0, 2, ah << 8 | al)
            setFlags(Flag.arithmetic, resultFlags(al, 1))
        case .aad:
            let base = d.pointee.operandCount == 0 ? 10 : UInt64(bitPattern: d.pointee.o0.value) & 0xFF
            let ah = readReg(16, 1)
            let res = (al &+ ah &* base) & 0xFF
            writeReg(0, 2, res)
            setFlags(Flag.arithmetic, addFlags(al, (ah &* base) & 0xFF, res, 0, 1))
        default: // salc
            writeReg(0, 1, cf ? 0xFF : 0)
        }
    }

    func doubleShift(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let size = Int(d.pointee.o0.size)
        let bits = UInt64(size * 8)
        var count = try readOperand(d.pointee.o2, d, 1, next: next)
        count &= size == 8 ? 0x3F : 0x1F
        let a = try readOperand(d.pointee.o0, d, size, next: next)
        if count == 0 {
            // No flags change, but the destination is still written (zero-extending a
            // 32-bit register in 64-bit mode).
            try writeOperand(d.pointee.o0, d, size, a, next: next)
            return
        }
        let b = readReg(d.pointee.o1.reg, size)
        var res: UInt64
        var cf: Bool
        if d.pointee.op == .shld {
            // 16-bit counts above 16 shift in bits of the destination again, as hardware does.
            let wide = size == 2 ? (a << 32 | b << 16 | a) : 0
            if size == 2 {
                res = ((wide << count) >> 32) & 0xFFFF
                cf = count <= 32 ? (wide >> (48 - count)) & 1 != 0 : false
            } else {
                res = ((a << count) | (b >> (bits - count))) & sizeMask(size)
                cf = (a >> (bits - count)) & 1 != 0
            }
        } else {
            if size == 2 {
                let wide = a << 32 | b << 16 | a
                res = (wide >> count) & 0xFFFF
                cf = (wide >> (count - 1)) & 1 != 0
            } else {
                res = ((a >> count) | (b << (bits - count))) & sizeMask(size)
                cf = (a >> (count - 1)) & 1 != 0
            }
        }
        let of = (res ^ a) & signBit(size) != 0
        try writeOperand(d.pointee.o0, d, size, res, next: next)
        setFlags(Flag.arithmetic, resultFlags(res, size) | (cf ? Flag.cf : 0) | (of ? Flag.of : 0))
    }

    func bitTest(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let size = Int(d.pointee.o0.size)
        let bits = Int64(size * 8)
        var o = d.pointee.o0
        var bit: Int64
        if d.pointee.o1.kind == .immediate {
            bit = d.pointee.o1.value & (bits - 1)
        } else {
            let raw = Int64(bitPattern: signExtend(readReg(d.pointee.o1.reg, size), size))
            if o.kind == .memory {
                // A register bit offset reaches outside the operand: move the address.
                o.value &+= (raw >> Int64(bits.trailingZeroBitCount)) &* Int64(size)
                bit = raw & (bits - 1)
            } else {
                bit = raw & (bits - 1)
            }
        }
        let mask = UInt64(1) << UInt64(bit)
        if d.pointee.prefixes & PrefixBits.lock != 0 {
            return try lockedReadModifyWrite(d, memory: o, register: 0, size: size, operand: mask, next: next)
        }
        let v = try readOperand(o, d, size, next: next)
        let was = v & mask != 0
        switch op {
        case .bts: try writeOperand(o, d, size, v | mask, next: next)
        case .btr: try writeOperand(o, d, size, v & ~mask, next: next)
        case .btc: try writeOperand(o, d, size, v ^ mask, next: next)
        default: break
        }
        setFlags(Flag.cf, was ? Flag.cf : 0)
    }

    /// Instructions Capstone knows that the interpreter does not implement.
    func unimplemented(_ d: UnsafeMutablePointer<DecodedInstruction>) throws(Fault) {
        let cr0 = s.pointee.cr0
        let x87 = !d.pointee.twoByte && (0xD8...0xDF).contains(d.pointee.opcode)
        if x87 {
            // No FPU: CR0.EM (or TS) makes x87 raise #NM as on hardware.
            if cr0 & (CR0.em | CR0.ts) != 0 { throw .nm() }
        } else if d.pointee.twoByte {
            // SSE and friends: #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS.
            if s.pointee.cr4 & (1 << 9) == 0 || cr0 & CR0.em != 0 { throw .ud() }
            if cr0 & CR0.ts != 0 { throw .nm() }
        }
        pendingExit = .unsupportedInstruction("the interpreter does not implement this instruction")
        throw .exit
    }
}
