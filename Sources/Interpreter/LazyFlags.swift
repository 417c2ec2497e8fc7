/// Lazy flags: the hottest flag-setting forms (add, adc, sub, sbb, cmp, and, or, xor, test,
/// inc, dec, neg, imul on registers) record their operation, operands, result and width instead of
/// computing CF, PF, AF, ZF, SF and OF; the flags are computed, by the same functions the
/// eager path uses (`addFlags`, `subFlags`, `resultFlags`), only when something reads
/// them. Most results are overwritten before any read (a CRC loop sets flags on every
/// instruction and reads them once per iteration).
///
/// CF alone (`carryFlag`: adc/sbb's carry in, jb/setb/cmovb) and the conditions in
/// `lazyCondition` are read from the record without computing the rest.
/// Where they are computed: `condition` for the other conditions, `flag`,
/// `setFlags` with a partial mask (shifts, rotates), the entry of every generic
/// instruction (so `execute`'s switch and everything below it, pushf, lahf, interrupts,
/// see RFLAGS exact), after each recorded instruction, and whenever `runInstructions`
/// returns or throws: outside it (exception delivery, `readState`, diff, traces,
/// snapshots) RFLAGS is always exact.
enum LazyFlags: UInt8 {
    /// RFLAGS holds the flags.
    case none
    /// a + b = result, a - b = result (sub, cmp, neg as 0 - b), a logical result.
    case add, sub, logic
    /// a + 1, a - 1: CF is RFLAGS's (inc and dec keep it).
    case inc, dec
    /// a + b + 1 = result, a - b - 1 = result: adc and sbb with the carry set (with it
    /// clear they are add and sub).
    case addCarry, subBorrow
    /// A truncated signed product (imul reg, r/m[, imm]): the result, and b = 1 when it
    /// did not fit (CF = OF = 1).
    case multiply
    /// shl, shr, sar by a count other than 0 (translated code only): the result, and a
    /// holding CF and OF at their RFLAGS positions (AF = 0, as `shiftResult` gives it).
    case shift
}

/// The deferred operation (`LazyFlags`): a fixed layout that translated code stores into
/// (`Translator` reads the offsets from `MemoryLayout`).
struct LazyFlagRecord {
    var kind = LazyFlags.none
    var size = 1
    var a: UInt64 = 0
    var b: UInt64 = 0
    var result: UInt64 = 0
}

extension InterpreterVCPU {
    /// Records a flag-setting operation whose flags are computed when read.
    @_transparent
    func deferFlags(_ kind: LazyFlags, _ a: UInt64, _ b: UInt64, _ result: UInt64, _ size: Int) {
        lazyFlags = kind
        lazyA = a
        lazyB = b
        lazyResult = result
        lazySize = size
    }

    /// Brings RFLAGS's arithmetic flags up to date.
    @_transparent
    func materializeFlags() {
        if _slowPath(lazyFlags != .none) { materializeFlagsSlow() }
    }

    /// Condition `cc` straight from the deferred operation where that is cheap (equality,
    /// sign, carry, after a subtraction or compare the unsigned and signed orders, after a
    /// logical operation (OF = CF = 0) the signed ones, after add CF or ZF); nil for the
    /// rest, which `condition` reads from the computed flags. Computes nothing, so the
    /// flags stay deferred.
    @_transparent
    func lazyCondition(_ cc: Int) -> Bool? {
        let size = lazySize
        let m = sizeMask(size)
        let v: Bool
        switch cc >> 1 {
        case 2: v = lazyResult & m == 0   // ZF
        case 4: v = lazyResult & signBit(size) != 0   // SF
        case 1 where lazyFlags != .inc && lazyFlags != .dec: v = lazyCarry()   // CF
        case 3 where lazyFlags == .sub: v = lazyA & m <= lazyB & m   // CF or ZF
        case 3 where lazyFlags == .add: v = lazyResult & m < lazyA & m || lazyResult & m == 0   // CF or ZF
        case 0 where lazyFlags == .logic: v = false   // OF
        case 0 where lazyFlags == .multiply: v = lazyB != 0
        case 0 where lazyFlags == .shift: v = lazyA & Flag.of != 0
        case 6 where lazyFlags == .sub: v = Int64(bitPattern: signExtend(lazyA, size)) < Int64(bitPattern: signExtend(lazyB, size))   // SF != OF: a < b signed
        case 7 where lazyFlags == .sub: v = Int64(bitPattern: signExtend(lazyA, size)) <= Int64(bitPattern: signExtend(lazyB, size))
        case 6 where lazyFlags == .logic: v = lazyResult & signBit(size) != 0   // OF = 0: SF
        case 7 where lazyFlags == .logic: v = lazyResult & m == 0 || lazyResult & signBit(size) != 0
        default: return nil
        }
        return cc & 1 == 0 ? v : !v
    }

    /// CF of the deferred operation (not inc or dec, which keep RFLAGS's), computed alone:
    /// adc's and sbb's carry in, jb/setb/cmovb.
    @_transparent
    func lazyCarry() -> Bool {
        let m = sizeMask(lazySize)
        switch lazyFlags {
        case .add: return lazyResult & m < lazyA & m
        case .addCarry: return lazyResult & m <= lazyA & m
        case .sub: return lazyA & m < lazyB & m
        case .subBorrow: return lazyA & m <= lazyB & m
        case .multiply: return lazyB != 0
        case .shift: return lazyA & Flag.cf != 0
        default: return false   // (logic; inc, dec and none are not asked)
        }
    }

    /// CF, deferred or not, without computing the other flags.
    @_transparent
    func carryFlag() -> Bool {
        if lazyFlags == .none || lazyFlags == .inc || lazyFlags == .dec { return s.pointee.rflags & Flag.cf != 0 }
        return lazyCarry()
    }

    @inline(never)
    func materializeFlagsSlow() {
        let kind = lazyFlags
        lazyFlags = .none
        let a = lazyA, b = lazyB, result = lazyResult, size = lazySize
        switch kind {
        case .none: return
        case .add: setFlags(Flag.arithmetic, addFlags(a, b, result, 0, size))
        case .sub: setFlags(Flag.arithmetic, subFlags(a, b, result, 0, size))
        case .logic: setFlags(Flag.arithmetic, resultFlags(result, size))
        case .inc: setFlags(Flag.arithmetic & ~Flag.cf, addFlags(a, 1, result, 0, size))
        case .dec: setFlags(Flag.arithmetic & ~Flag.cf, subFlags(a, 1, result, 0, size))
        case .addCarry: setFlags(Flag.arithmetic, addFlags(a, b, result, 1, size))
        case .subBorrow: setFlags(Flag.arithmetic, subFlags(a, b, result, 1, size))
        case .multiply: setFlags(Flag.arithmetic, resultFlags(result, size) | (b != 0 ? Flag.cf | Flag.of : 0))
        case .shift: setFlags(Flag.arithmetic, resultFlags(result, size) | a & (Flag.cf | Flag.of))
        }
    }
}
