import X86

// LDMXCSR/STMXCSR, FXSAVE/FXRSTOR (32- and 64-bit layouts), XSAVE/XSAVEOPT/XSAVEC/XRSTOR
// for XCR0 = x87 | SSE (state components 0 and 1), XGETBV/XSETBV. Layouts: SDM vol. 1,
// 10.5.1 (FXSAVE area) and 13.4 (XSAVE area). The FXSAVE image keeps the x87 registers in
// stack order (ST(0) first); CPUState keeps physical registers, so ST(i) = st[(TOP+i)&7].

/// MXCSR bits a guest may set (DAZ included: the host, whose unit runs the operations, has it).
let mxcsrMask: UInt32 = 0xFFFF

extension InterpreterVCPU {
    @inline(never)
    func saveRestore(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let f = d.pointee.simd
        let o = d.pointee.o1
        let wide = f.bits & SIMDBits.w != 0
        func offset() -> UInt64 { effectiveAddress(o, d.pointee.addressSize, next: next) }
        switch f.kind {
        case .ldmxcsr:
            let v = UInt32(try read(o.segment, offset(), 4))
            if v & ~mxcsrMask != 0 { throw .gp() }
            s.pointee.fpu.mxcsr = v
        case .stmxcsr:
            try write(o.segment, offset(), 4, UInt64(s.pointee.fpu.mxcsr))
        case .fxsave, .fxrstor:
            let cr0 = s.pointee.cr0
            if cr0 & (CR0.em | CR0.ts) != 0 { throw .nm() }
            if f.kind == .fxsave {
                var image = [UInt8](repeating: 0, count: 416)
                fillLegacyArea(&image, wide: wide, x87: true, mxcsr: true, xmm: true)
                // Outside 64-bit mode only XMM0-7 exist; the XMM8-15 slots are not written.
                try writeBlock(o.segment, offset(), longMode && codeBits == 64 ? image : Array(image[0..<288]), alignment: 16)
            } else {
                let image = try readBlock(o.segment, offset(), 416, alignment: 16)
                let mxcsr = image.load32(24)
                if mxcsr & ~mxcsrMask != 0 { throw .gp() }
                loadLegacyArea(image, wide: wide, x87: true, sse: true, xmmCount: codeBits == 64 ? 16 : 8)
                s.pointee.fpu.mxcsr = mxcsr
            }
        case .xsave, .xsaveopt, .xsavec, .xrstor:
            if s.pointee.cr4 & CR4Bits.osxsave == 0 { throw .ud() }
            if s.pointee.cr0 & CR0.ts != 0 { throw .nm() }
            let rfbm = (r[2] << 32 | r[0] & 0xFFFF_FFFF) & s.pointee.fpu.xcr0
            if f.kind == .xrstor { try xrstor(o.segment, offset(), rfbm: rfbm, wide: wide) } else {
                try xsave(o.segment, offset(), rfbm: rfbm, wide: wide, compacted: f.kind == .xsavec, skipInit: f.kind == .xsaveopt)
            }
        case .xgetbv:
            if s.pointee.cr4 & CR4Bits.osxsave == 0 { throw .ud() }
            // XCR0 only (ECX = 1, XINUSE, is not offered).
            if r[1] & 0xFFFF_FFFF != 0 { throw .gp() }
            let v = s.pointee.fpu.xcr0
            writeReg(0, 4, v & 0xFFFF_FFFF)
            writeReg(2, 4, v >> 32)
        case .xsetbv:
            if s.pointee.cr4 & CR4Bits.osxsave == 0 { throw .ud() }
            if cpl != 0 || virtual8086 { throw .gp() }
            if r[1] & 0xFFFF_FFFF != 0 { throw .gp() }
            let v = r[2] << 32 | r[0] & 0xFFFF_FFFF
            if v & 1 == 0 || v & ~GuestCPUID.xsaveComponents != 0 { throw .gp() }
            s.pointee.fpu.xcr0 = v
        default:
            throw .ud()
        }
    }

    // MARK: The legacy (FXSAVE) area

    /// Writes the x87 part (bytes 0-23, 32-159), MXCSR and its mask (24-31) and/or the XMM
    /// registers (160-415) of the legacy area. MXCSR is separate because XSAVEOPT and
    /// XSAVEC write it whenever SSE is requested, even when they skip the XMM registers.
    func fillLegacyArea(_ b: inout [UInt8], wide: Bool, x87: Bool, mxcsr: Bool, xmm: Bool) {
        let fpu = s.pointee.fpu
        if x87 {
            b.store16(0, fpu.fcw)
            b.store16(2, fpu.fsw)
            b[4] = fpu.ftw
            b.store16(6, fpu.fop & 0x7FF)
            if wide {
                b.store64(8, fpu.fip)
                b.store64(16, fpu.fdp)
            } else {
                b.store32(8, UInt32(truncatingIfNeeded: fpu.fip))
                b.store16(12, fpu.fcs)
                b.store32(16, UInt32(truncatingIfNeeded: fpu.fdp))
                b.store16(20, fpu.fds)
            }
            b[5] = 0   // reserved: written as zero, like the registers' padding below
            for i in 0..<8 {
                let reg = fpu.st[(fpu.top + i) & 7]
                b.store64(32 + 16 * i, reg.significand)
                b.store16(40 + 16 * i, reg.signExponent)
                for p in (42 + 16 * i)..<(48 + 16 * i) { b[p] = 0 }
            }
        }
        if mxcsr {
            b.store32(24, fpu.mxcsr)
            b.store32(28, mxcsrMask)
        }
        if xmm {
            for i in 0..<16 {
                b.store64(160 + 16 * i, fpu.xmm[i].low)
                b.store64(168 + 16 * i, fpu.xmm[i].high)
            }
        }
    }

    func loadLegacyArea(_ b: [UInt8], wide: Bool, x87: Bool, sse: Bool, xmmCount: Int) {
        if x87 {
            // FCW's reserved bits do not load, as on this CPU.
            s.pointee.fpu.fcw = x87ControlWord(b.load16(0))   // bit 6 reads as one
            s.pointee.fpu.fsw = b.load16(2)
            s.pointee.fpu.ftw = b[4]
            s.pointee.fpu.fop = b.load16(6) & 0x7FF
            if wide {
                // This CPU keeps FIP as a 57-bit address, sign-extended from bit 56.
                s.pointee.fpu.fip = UInt64(bitPattern: Int64(bitPattern: b.load64(8) << 7) >> 7)
                s.pointee.fpu.fdp = b.load64(16)
                s.pointee.fpu.fcs = 0
                s.pointee.fpu.fds = 0
            } else {
                // FCS and FDS are deprecated on this CPU (CPUID.7.EBX bit 13): they load as
                // zero, as X87.swift keeps them.
                s.pointee.fpu.fip = UInt64(b.load32(8))
                s.pointee.fpu.fcs = 0
                s.pointee.fpu.fdp = UInt64(b.load32(16))
                s.pointee.fpu.fds = 0
            }
            let top = s.pointee.fpu.top
            for i in 0..<8 {
                s.pointee.fpu.st[(top + i) & 7] = X87Register(significand: b.load64(32 + 16 * i), signExponent: b.load16(40 + 16 * i))
            }
            // ES and B are not loaded: they follow the exception flags FCW leaves unmasked,
            // as after FLDENV and FRSTOR (FXRSTOR then the user64 fuzz's state compare).
            x87RecomputeSummary()
        }
        if sse {
            for i in 0..<xmmCount {
                s.pointee.fpu.xmm[i] = XMMRegister(low: b.load64(160 + 16 * i), high: b.load64(168 + 16 * i))
            }
        }
    }

    /// XINUSE (SDM 13.6): which components differ from their initial configuration,
    /// judged by value (the SDM lets XINUSE[i] be 1 for a component in its initial
    /// configuration, never the reverse). SSE counts as in use when MXCSR is not 0x1F80,
    /// as this CPU reports it after LDMXCSR (it tracks modifications: after an XRSTOR
    /// that initialises the XMM registers but loads another MXCSR it reports 0; both are
    /// allowed, and no value-based rule matches both).
    var stateInUse: UInt64 {
        let fpu = s.pointee.fpu
        var inUse: UInt64 = 0
        var x87Init = fpu.fcw == 0x037F && fpu.fsw == 0 && fpu.ftw == 0 && fpu.fop == 0 && fpu.fip == 0 && fpu.fdp == 0
        for i in 0..<8 where fpu.st[i] != X87Register() { x87Init = false }
        if !x87Init { inUse |= 1 }
        var sseInit = fpu.mxcsr == 0x1F80
        for i in 0..<16 where fpu.xmm[i] != XMMRegister() { sseInit = false }
        if !sseInit { inUse |= 2 }
        return inUse
    }

    // MARK: XSAVE

    /// XSAVE, XSAVEOPT (`skipInit`) and XSAVEC (`compacted`) of x87 | SSE, as this
    /// machine's CPU does them (Tests: "XSAVE/XSAVEOPT/XSAVEC/XRSTOR ... equal the CPU's"):
    /// - XSAVE writes every requested component, MXCSR with SSE, and sets XSTATE_BV[i] =
    ///   XINUSE[i] for the requested ones (the others are kept);
    /// - XSAVEOPT writes only the requested components in use (the init optimisation; the
    ///   "modified" optimisation is not modelled: writing an unmodified component again
    ///   is allowed) but MXCSR whenever SSE is requested; XSTATE_BV as XSAVE;
    /// - XSAVEC writes the requested components in use (MXCSR with SSE), XSTATE_BV =
    ///   RFBM & XINUSE and XCOMP_BV = bit 63 | RFBM; the rest of the header is not written.
    func xsave(_ segment: UInt8, _ offset: UInt64, rfbm: UInt64, wide: Bool, compacted: Bool, skipInit: Bool) throws(Fault) {
        let inUse = stateInUse
        let old = try readBlock(segment, offset, Int(GuestCPUID.xsaveAreaSize), alignment: 64)
        var image = old
        let write = compacted || skipInit ? rfbm & inUse : rfbm
        let mxcsr = (compacted ? write : rfbm) & 2 != 0
        fillLegacyArea(&image, wide: wide, x87: write & 1 != 0, mxcsr: mxcsr, xmm: write & 2 != 0)
        // FXSAVE-style areas written by XSAVE: the XMM8-15 slots only in 64-bit mode.
        if codeBits != 64 { for i in 288..<416 { image[i] = old[i] } }
        if compacted {
            image.store64(512, rfbm & inUse)
            image.store64(520, 1 << 63 | rfbm)
        } else {
            image.store64(512, old.load64(512) & ~rfbm | rfbm & inUse)
        }
        try writeBlock(segment, offset, image, alignment: 64)
    }

    func xrstor(_ segment: UInt8, _ offset: UInt64, rfbm: UInt64, wide: Bool) throws(Fault) {
        let image = try readBlock(segment, offset, Int(GuestCPUID.xsaveAreaSize), alignment: 64)
        let xcr0 = s.pointee.fpu.xcr0
        let bv = image.load64(512), comp = image.load64(520)
        let compacted = comp >> 63 != 0
        if compacted {
            if comp & ~(1 << 63) & ~xcr0 != 0 || bv & ~comp != 0 { throw .gp() }
            for i in stride(from: 528, to: 576, by: 8) where image.load64(i) != 0 { throw .gp() }
        } else {
            if bv & ~xcr0 != 0 { throw .gp() }
            for i in stride(from: 520, to: 536, by: 8) where image.load64(i) != 0 { throw .gp() }
        }
        // MXCSR: loaded from memory whenever SSE is requested in the standard form; in the
        // compacted form only with XSTATE_BV[1].
        let loadMXCSR = rfbm & 2 != 0 && (!compacted || bv & 2 != 0)
        let mxcsr = image.load32(24)
        if loadMXCSR && mxcsr & ~mxcsrMask != 0 { throw .gp() }
        if rfbm & 1 != 0 {
            if bv & 1 != 0 { loadLegacyArea(image, wide: wide, x87: true, sse: false, xmmCount: 0) } else { s.pointee.fpu.initializeX87() }
        }
        if rfbm & 2 != 0 {
            if bv & 2 != 0 {
                loadLegacyArea(image, wide: wide, x87: false, sse: true, xmmCount: codeBits == 64 ? 16 : 8)
            } else {
                for i in 0..<(codeBits == 64 ? 16 : 8) { s.pointee.fpu.xmm[i] = XMMRegister() }
            }
            if loadMXCSR { s.pointee.fpu.mxcsr = mxcsr } else if compacted { s.pointee.fpu.mxcsr = 0x1F80 }
        }
    }

    // MARK: Blocks of guest memory

    /// Reads `count` bytes (a multiple of 8) after the segment and alignment checks.
    func readBlock(_ segment: UInt8, _ offset: UInt64, _ count: Int, alignment: UInt64) throws(Fault) -> [UInt8] {
        let la = try linearAddress(segment, offset, count, .read)
        if la & (alignment - 1) != 0 { throw .gp() }
        var b = [UInt8](repeating: 0, count: count)
        for i in stride(from: 0, to: count, by: 8) { b.store64(i, try readLinear(la &+ UInt64(i), 8)) }
        return b
    }

    /// Writes `bytes` (a multiple of 8 long); every page is checked first so a fault writes nothing.
    func writeBlock(_ segment: UInt8, _ offset: UInt64, _ bytes: [UInt8], alignment: UInt64) throws(Fault) {
        let la = try linearAddress(segment, offset, bytes.count, .write)
        if la & (alignment - 1) != 0 { throw .gp() }
        if paging {
            var page = la & ~0xFFF
            while page < la &+ UInt64(bytes.count) {
                _ = try translateLinear(max(page, la), .write)
                page &+= 0x1000
            }
        }
        for i in stride(from: 0, to: bytes.count, by: 8) { try writeLinear(la &+ UInt64(i), 8, bytes.load64(i)) }
    }
}

extension Array where Element == UInt8 {
    func load16(_ i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    func load32(_ i: Int) -> UInt32 { UInt32(load16(i)) | UInt32(load16(i + 2)) << 16 }
    func load64(_ i: Int) -> UInt64 { UInt64(load32(i)) | UInt64(load32(i + 4)) << 32 }
    mutating func store16(_ i: Int, _ v: UInt16) { self[i] = UInt8(v & 0xFF); self[i + 1] = UInt8(v >> 8) }
    mutating func store32(_ i: Int, _ v: UInt32) { store16(i, UInt16(v & 0xFFFF)); store16(i + 2, UInt16(v >> 16)) }
    mutating func store64(_ i: Int, _ v: UInt64) { store32(i, UInt32(v & 0xFFFF_FFFF)); store32(i + 4, UInt32(v >> 32)) }
}
