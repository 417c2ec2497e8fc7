/// RFLAGS bits.
enum Flag {
    static let cf: UInt64 = 1 << 0
    static let pf: UInt64 = 1 << 2
    static let af: UInt64 = 1 << 4
    static let zf: UInt64 = 1 << 6
    static let sf: UInt64 = 1 << 7
    static let tf: UInt64 = 1 << 8
    static let `if`: UInt64 = 1 << 9
    static let df: UInt64 = 1 << 10
    static let of: UInt64 = 1 << 11
    static let iopl: UInt64 = 3 << 12
    static let nt: UInt64 = 1 << 14
    static let rf: UInt64 = 1 << 16
    static let vm: UInt64 = 1 << 17
    static let ac: UInt64 = 1 << 18
    static let vif: UInt64 = 1 << 19
    static let vip: UInt64 = 1 << 20
    static let id: UInt64 = 1 << 21
    static let arithmetic: UInt64 = cf | pf | af | zf | sf | of
}

@_transparent func sizeMask(_ size: Int) -> UInt64 { size == 8 ? .max : (1 << (UInt64(size) * 8)) - 1 }
@_transparent func signBit(_ size: Int) -> UInt64 { 1 << (UInt64(size) * 8 - 1) }
@_transparent func signExtend(_ v: UInt64, _ size: Int) -> UInt64 {
    let shift = UInt64(64 - size * 8)
    return UInt64(bitPattern: Int64(bitPattern: v << shift) >> Int64(shift))
}

/// PF, ZF, SF of a result.
@_transparent func resultFlags(_ r: UInt64, _ size: Int) -> UInt64 {
    let m = r & sizeMask(size)
    var f: UInt64 = (0x9669 >> ((m ^ (m >> 4)) & 0xF)) & 1 == 1 ? Flag.pf : 0
    if m == 0 { f |= Flag.zf }
    if m & signBit(size) != 0 { f |= Flag.sf }
    return f
}

/// Flags of a + b (+ carry-in) = r.
@_transparent func addFlags(_ a: UInt64, _ b: UInt64, _ r: UInt64, _ carryIn: UInt64, _ size: Int) -> UInt64 {
    let m = sizeMask(size)
    var f = resultFlags(r, size)
    let rm = r & m
    if rm < (a & m) || (carryIn != 0 && rm == (a & m)) { f |= Flag.cf }
    if (a ^ b ^ r) & 0x10 != 0 { f |= Flag.af }
    if (~(a ^ b) & (a ^ r)) & signBit(size) != 0 { f |= Flag.of }
    return f
}

/// Flags of a - b (- borrow-in) = r.
@_transparent func subFlags(_ a: UInt64, _ b: UInt64, _ r: UInt64, _ borrowIn: UInt64, _ size: Int) -> UInt64 {
    let m = sizeMask(size)
    var f = resultFlags(r, size)
    let am = a & m, bm = b & m
    if am < bm || (borrowIn != 0 && am == bm) { f |= Flag.cf }
    if (a ^ b ^ r) & 0x10 != 0 { f |= Flag.af }
    if ((a ^ b) & (a ^ r)) & signBit(size) != 0 { f |= Flag.of }
    return f
}
