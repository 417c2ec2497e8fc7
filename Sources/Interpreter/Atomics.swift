import CHostAtomics
import X86

/// LOCK: read-modify-write instructions made atomic with the host's own atomic
/// instructions on the guest's memory (see CHostAtomics), so they are atomic against
/// every other vCPU thread — interpreter or KVM — exactly as on hardware. Only operands
/// that are not one piece of RAM (MMIO, ROM, or a split across two physical pages that
/// are not adjacent) fall back to the machine-wide lock, which orders them only against
/// other such fallbacks (Documentation/Interpreter.md).
extension InterpreterVCPU {
    /// The host address and physical address of a locked operand of `size` bytes at
    /// `linear` (its segment checks already done), translated and checked for writing;
    /// nil when it is not one contiguous piece of RAM. The caller calls `noteLockedWrite`
    /// after its swap.
    @inline(never)
    func lockedTarget(_ linear: UInt64, _ size: Int) throws(Fault) -> (host: UnsafeMutableRawPointer, physical: UInt64)? {
        let last = linear &+ UInt64(size &- 1)
        let first: UInt64, end: UInt64
        if paging {
            first = try translateLinear(linear, .write)
            end = try translateLinear(last, .write)
        } else {
            first = linear & a20Mask
            end = last & a20Mask
        }
        guard end == first &+ UInt64(size &- 1),
              let p = memory.hostPointer(first, length: UInt64(size), kind: .ram) else { return nil }
        return (p, first)
    }

    /// Tells the decode caches about a locked write (after it, as for every write).
    @inline(__always)
    func noteLockedWrite(_ physical: UInt64, _ size: Int) {
        codePages.noteWrite(physical, size)
    }

    /// Compare-and-swap of `size` bytes; on failure `expected` becomes the current value.
    @inline(__always)
    func compareAndSwap(_ p: UnsafeMutableRawPointer, _ size: Int, _ expected: inout UInt64, _ desired: UInt64) -> Bool {
        switch size {
        case 1:
            var e = UInt8(truncatingIfNeeded: expected)
            let ok = tandem_cas1(p, &e, UInt8(truncatingIfNeeded: desired))
            expected = UInt64(e)
            return ok
        case 2:
            var e = UInt16(truncatingIfNeeded: expected)
            let ok = tandem_cas2(p, &e, UInt16(truncatingIfNeeded: desired))
            expected = UInt64(e)
            return ok
        case 4:
            var e = UInt32(truncatingIfNeeded: expected)
            let ok = tandem_cas4(p, &e, UInt32(truncatingIfNeeded: desired))
            expected = UInt64(e)
            return ok
        default:
            return tandem_cas8(p, &expected, desired)
        }
    }

    /// A LOCKed read-modify-write of the memory operand `memory` (o0 unless given; XCHG's
    /// may be o1, BT*'s is displaced by the bit offset): host atomics on RAM; otherwise
    /// (MMIO, ROM, a split over non-adjacent pages) the machine-wide lock around an
    /// ordinary read and write. `register` receives the old value for xadd and xchg (o1's
    /// register unless given).
    @inline(never)
    func lockedReadModifyWrite(_ d: UnsafeMutablePointer<DecodedInstruction>, memory: Operand? = nil, register: UInt8? = nil,
                               size: Int, operand b: UInt64, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let linear = try operandLinear(memory ?? d.pointee.o0, d, size, .write, next: next)
        let register = register ?? (d.pointee.operandCount > 1 && d.pointee.o1.kind == .register ? d.pointee.o1.reg : 0)
        if try lockedUpdate(op, linear: linear, size: size, operand: b, register: register) { return }
        atomicLock.lock(); defer { atomicLock.unlock() }
        let a = try readLinear(linear, size)
        let (res, f, mask) = readModifyWriteResult(op, a, b, flag(Flag.cf) ? 1 : 0, size)
        try writeLinear(linear, size, res)
        if op == .xadd || op == .xchg { writeReg(register, size, a) }
        setFlags(mask, f)
    }

    /// What a read-modify-write instruction stores, the flags it sets and which flags
    /// those are, from the old memory value `a` and the source `b` (for bts/btr/btc, the
    /// bit mask; `carry` is CF before the instruction).
    @inline(__always)
    func readModifyWriteResult(_ op: Op, _ a: UInt64, _ b: UInt64, _ carry: UInt64, _ size: Int) -> (result: UInt64, flags: UInt64, mask: UInt64) {
        let res: UInt64, f: UInt64, mask: UInt64
        switch op {
        case .inc: res = a &+ 1; f = addFlags(a, 1, res, 0, size); mask = Flag.arithmetic & ~Flag.cf
        case .dec: res = a &- 1; f = subFlags(a, 1, res, 0, size); mask = Flag.arithmetic & ~Flag.cf
        case .neg: res = 0 &- a; f = subFlags(0, a, res, 0, size); mask = Flag.arithmetic
        case .not: res = ~a; f = 0; mask = 0
        case .xadd: res = a &+ b; f = addFlags(a, b, res, 0, size); mask = Flag.arithmetic
        case .xchg: res = b; f = 0; mask = 0
        case .bts: res = a | b; f = a & b != 0 ? Flag.cf : 0; mask = Flag.cf
        case .btr: res = a & ~b; f = a & b != 0 ? Flag.cf : 0; mask = Flag.cf
        case .btc: res = a ^ b; f = a & b != 0 ? Flag.cf : 0; mask = Flag.cf
        default: (res, f) = aluResult(op, a, b, carry, size); mask = Flag.arithmetic
        }
        return (res & sizeMask(size), f, mask)
    }

    /// The locked forms of add adc sub sbb and or xor inc dec neg not xadd xchg bts btr btc
    /// on the memory operand at `linear`: loads, computes and compare-and-swaps until no
    /// other vCPU wrote in between, then sets the flags (and xadd/xchg's register) from the
    /// value the swap replaced. `operand` is the source value (the register, immediate or
    /// bit mask); `register` receives the old value for xadd and xchg. Returns false (and
    /// does nothing) when the operand is not plain RAM: the caller then takes the lock.
    func lockedUpdate(_ op: Op, linear: UInt64, size: Int, operand b: UInt64, register: UInt8) throws(Fault) -> Bool {
        guard let (p, physical) = try lockedTarget(linear, size) else { return false }
        let carry: UInt64 = flag(Flag.cf) ? 1 : 0
        var a = tandem_load(p, Int32(size)) & sizeMask(size)
        var res: UInt64, f: UInt64, mask: UInt64
        repeat {
            (res, f, mask) = readModifyWriteResult(op, a, b, carry, size)
        } while !compareAndSwap(p, size, &a, res)
        noteLockedWrite(physical, size)
        if op == .xadd || op == .xchg { writeReg(register, size, a) }
        setFlags(mask, f)
        if _slowPath(logAccesses) { logLockedAccess(linear, size, read: a, written: res) }
        return true
    }

    /// Locked CMPXCHG: one compare-and-swap with the accumulator. Hardware writes the
    /// old value back when the compare fails; the swap that failed changed nothing, as that
    /// write-back would not.
    func lockedCompareExchange(linear: UInt64, size: Int, source: UInt64) throws(Fault) -> Bool {
        guard let (p, physical) = try lockedTarget(linear, size) else { return false }
        let acc = readReg(0, size)
        var current = acc
        let swapped = compareAndSwap(p, size, &current, source)
        noteLockedWrite(physical, size)
        if swapped {
            if _slowPath(logAccesses) { logLockedAccess(linear, size, read: acc, written: source) }
        } else {
            writeReg(0, size, current)
            if _slowPath(logAccesses) { logLockedAccess(linear, size, read: current, written: current) }
        }
        setFlags(Flag.arithmetic, subFlags(acc, current, acc &- current, 0, size))
        return true
    }

    /// Locked CMPXCHG8B / CMPXCHG16B (`half` = 4 or 8): EDX:EAX / RDX:RAX against the
    /// operand, ECX:EBX / RCX:RBX stored when equal.
    func lockedCompareExchangeDouble(linear: UInt64, half: Int) throws(Fault) -> Bool {
        guard let (p, physical) = try lockedTarget(linear, 2 * half) else { return false }
        defer { noteLockedWrite(physical, 2 * half) }
        let m = sizeMask(half)
        let wantLo = r[0] & m, wantHi = r[2] & m
        var ok: Bool
        var lo = wantLo, hi = wantHi
        if half == 8 {
            ok = tandem_cas16(p, &lo, &hi, r[3], r[1])
        } else {
            var both = wantHi << 32 | wantLo
            ok = tandem_cas8(p, &both, (r[1] & m) << 32 | r[3] & m)
            lo = both & m
            hi = both >> 32
        }
        if !ok {
            writeReg(0, half, lo)
            writeReg(2, half, hi)
        }
        setFlags(Flag.zf, ok ? Flag.zf : 0)
        if _slowPath(logAccesses) {
            logLockedAccess(linear, half, read: lo, written: ok ? r[3] & m : lo)
            logLockedAccess(linear &+ UInt64(half), half, read: hi, written: ok ? r[1] & m : hi)
        }
        return true
    }

    /// Tracing: a locked access appears as its read and its write.
    @inline(never)
    func logLockedAccess(_ linear: UInt64, _ size: Int, read: UInt64, written: UInt64) {
        let physical = physicalForLog(linear)
        accessLog.append(MemoryAccess(write: false, linear: linear, physical: physical, size: size, value: read))
        accessLog.append(MemoryAccess(write: true, linear: linear, physical: physical, size: size, value: written & sizeMask(size)))
    }
}
