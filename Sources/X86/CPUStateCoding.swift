// CPUState in a snapshot's VCPU section (Documentation/Snapshots.md lists the fields in
// this order). Adding a field to CPUState means adding it here, and a new format version.

extension SegmentRegister {
    func encode(_ w: inout StateWriter) {
        w.u16(selector); w.u64(base); w.u32(limit); w.u32(attributes)
    }

    init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init(selector: try r.u16(), base: try r.u64(), limit: try r.u32(), attributes: try r.u32())
    }
}

extension DescriptorTable {
    func encode(_ w: inout StateWriter) { w.u64(base); w.u16(limit) }

    init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init(base: try r.u64(), limit: try r.u16())
    }
}

extension CPUState {
    public func encode(_ w: inout StateWriter) {
        for i in 0..<16 { w.u64(gpr[i]) }
        w.u64(rip); w.u64(rflags)
        for s in [es, cs, ss, ds, fs, gs, ldtr, tr] { s.encode(&w) }
        gdtr.encode(&w); idtr.encode(&w)
        for v in [cr0, cr2, cr3, cr4, cr8, efer, dr0, dr1, dr2, dr3, dr6, dr7] { w.u64(v) }
        let m = msrs
        for v in [m.star, m.lstar, m.cstar, m.fmask, m.kernelGSBase, m.sysenterCS, m.sysenterESP, m.sysenterEIP, m.tsc, m.pat, m.apicBase] {
            w.u64(v)
        }
        for i in 0..<MTRRs.count { w.u64(m.mtrrs.values[i]) }
        let f = fpu
        w.u16(f.fcw); w.u16(f.fsw); w.u8(f.ftw); w.u16(f.fop); w.u64(f.fip); w.u16(f.fcs); w.u64(f.fdp); w.u16(f.fds)
        for i in 0..<8 { w.u64(f.st[i].significand); w.u16(f.st[i].signExponent) }
        w.u32(f.mxcsr)
        for i in 0..<16 { w.u64(f.xmm[i].low); w.u64(f.xmm[i].high) }
        w.u64(f.xcr0)
        let e = events
        w.optional(e.exception) { w, x in
            w.u8(x.vector)
            w.optional(x.errorCode) { $0.u32($1) }
        }
        w.optional(e.interrupt) { w, i in w.u8(i.vector); w.bool(i.soft) }
        w.bool(e.nmiInjected); w.bool(e.nmiPending); w.bool(e.nmiBlocked); w.u8(e.interruptShadow)
        w.u8(runState.rawValue)
    }

    public init(decoding r: inout StateReader) throws(SnapshotError) {
        self.init()
        for i in 0..<16 { gpr[i] = try r.u64() }
        rip = try r.u64(); rflags = try r.u64()
        es = try SegmentRegister(decoding: &r); cs = try SegmentRegister(decoding: &r)
        ss = try SegmentRegister(decoding: &r); ds = try SegmentRegister(decoding: &r)
        fs = try SegmentRegister(decoding: &r); gs = try SegmentRegister(decoding: &r)
        ldtr = try SegmentRegister(decoding: &r); tr = try SegmentRegister(decoding: &r)
        gdtr = try DescriptorTable(decoding: &r); idtr = try DescriptorTable(decoding: &r)
        cr0 = try r.u64(); cr2 = try r.u64(); cr3 = try r.u64(); cr4 = try r.u64(); cr8 = try r.u64(); efer = try r.u64()
        dr0 = try r.u64(); dr1 = try r.u64(); dr2 = try r.u64(); dr3 = try r.u64(); dr6 = try r.u64(); dr7 = try r.u64()
        msrs.star = try r.u64(); msrs.lstar = try r.u64(); msrs.cstar = try r.u64(); msrs.fmask = try r.u64()
        msrs.kernelGSBase = try r.u64(); msrs.sysenterCS = try r.u64(); msrs.sysenterESP = try r.u64()
        msrs.sysenterEIP = try r.u64(); msrs.tsc = try r.u64(); msrs.pat = try r.u64(); msrs.apicBase = try r.u64()
        for i in 0..<MTRRs.count { msrs.mtrrs.values[i] = try r.u64() }
        fpu.fcw = try r.u16(); fpu.fsw = try r.u16(); fpu.ftw = try r.u8(); fpu.fop = try r.u16(); fpu.fip = try r.u64()
        fpu.fcs = try r.u16(); fpu.fdp = try r.u64(); fpu.fds = try r.u16()
        for i in 0..<8 { fpu.st[i] = X87Register(significand: try r.u64(), signExponent: try r.u16()) }
        fpu.mxcsr = try r.u32()
        for i in 0..<16 { fpu.xmm[i] = XMMRegister(low: try r.u64(), high: try r.u64()) }
        fpu.xcr0 = try r.u64()
        events.exception = try r.optional { (r) throws(SnapshotError) in
            InjectedException(vector: try r.u8(), errorCode: try r.optional { (r) throws(SnapshotError) in try r.u32() })
        }
        events.interrupt = try r.optional { (r) throws(SnapshotError) in InjectedInterrupt(vector: try r.u8(), soft: try r.bool()) }
        events.nmiInjected = try r.bool(); events.nmiPending = try r.bool(); events.nmiBlocked = try r.bool()
        events.interruptShadow = try r.u8()
        let run = try r.u8()
        guard let state = RunState(rawValue: run) else { throw SnapshotError("\(r.what): run state \(run)") }
        runState = state
    }
}
