import X86

/// A raw 8-byte segment or gate descriptor.
struct Descriptor {
    var raw: UInt64
    var base: UInt64 { (raw >> 16) & 0xFF_FFFF | ((raw >> 56) & 0xFF) << 24 }
    var limit: UInt32 {
        let l = UInt32(raw & 0xFFFF) | UInt32((raw >> 48) & 0xF) << 16
        return granularity ? l << 12 | 0xFFF : l
    }
    var type: UInt8 { UInt8((raw >> 40) & 0xF) }
    var isSystem: Bool { raw & (1 << 44) == 0 }
    var dpl: UInt8 { UInt8((raw >> 45) & 3) }
    var present: Bool { raw & (1 << 47) != 0 }
    var long: Bool { raw & (1 << 53) != 0 }
    var granularity: Bool { raw & (1 << 55) != 0 }
    var isCode: Bool { !isSystem && type & 0x8 != 0 }
    var isConforming: Bool { isCode && type & 0x4 != 0 }
    var isReadable: Bool { !isCode || type & 0x2 != 0 }
    var isWritableData: Bool { !isSystem && type & 0xA == 0x2 }
    /// VMX-style attributes (type, S, DPL, P, AVL, L, D/B, G).
    var attributes: UInt32 { UInt32((raw >> 40) & 0xF0FF) }
    // Gates
    var gateSelector: UInt16 { UInt16((raw >> 16) & 0xFFFF) }
    var gateOffset: UInt64 { raw & 0xFFFF | ((raw >> 48) & 0xFFFF) << 16 }
    var gateParameterCount: Int { Int((raw >> 32) & 0x1F) }

    func segment(selector: UInt16, base64: UInt64? = nil) -> SegmentRegister {
        SegmentRegister(selector: selector, base: base64 ?? base, limit: limit, attributes: attributes)
    }
}

extension InterpreterVCPU {
    /// Reads the descriptor `selector` names from the GDT or LDT. #GP(selector) outside the table.
    func readDescriptor(_ selector: UInt16, fault: (UInt32) -> Fault = { .gp($0) }) throws(Fault) -> (address: UInt64, descriptor: Descriptor) {
        let table: (base: UInt64, limit: UInt64)
        if selector & 4 != 0 {
            let ldtr = s.pointee.ldtr
            if ldtr.unusable || ldtr.selector & ~3 == 0 { throw fault(UInt32(selector & 0xFFFC)) }
            table = (ldtr.base, UInt64(ldtr.limit))
        } else {
            table = (s.pointee.gdtr.base, UInt64(s.pointee.gdtr.limit))
        }
        let offset = UInt64(selector & ~7)
        if offset + 7 > table.limit { throw fault(UInt32(selector & 0xFFFC)) }
        let address = table.base &+ offset
        return (address, Descriptor(raw: try readSystem(address, 8)))
    }

    /// Implicit supervisor-mode reads and writes (descriptor tables, TSS, IDT).
    func readSystem(_ linear: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        let saved = cpl
        cpl = 0
        defer { cpl = saved }
        return try readLinear(ia32eMode ? linear : linear & 0xFFFF_FFFF, size)
    }

    func writeSystem(_ linear: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        let saved = cpl
        cpl = 0
        defer { cpl = saved }
        try writeLinear(ia32eMode ? linear : linear & 0xFFFF_FFFF, size, value)
    }

    /// Sets a descriptor's accessed bit, as the CPU does when loading it.
    func markAccessed(_ address: UInt64, _ d: Descriptor) throws(Fault) {
        if d.raw & (1 << 40) == 0 {
            try writeSystem(address &+ 5, 1, (d.raw >> 40) & 0xFF | 1)
        }
    }

    /// MOV/POP/LDS... to a data segment register or SS, with the protected-mode checks.
    func loadSegment(_ index: UInt8, _ selector: UInt16) throws(Fault) {
        let sr = seg[Int(index)]
        if index == Segment.cs { throw .ud() }
        if !protectedMode || virtual8086 {
            sr.pointee.selector = selector
            sr.pointee.base = UInt64(selector) << 4
            if virtual8086 {
                sr.pointee.limit = 0xFFFF
                sr.pointee.attributes = SegmentRegister.attributes(type: 3, s: true, dpl: 3)
            } else if sr.pointee.unusable || sr.pointee.attributes & 0x90 != 0x90 {
                // Coming back from protected mode with a null segment: make it usable again.
                sr.pointee.attributes = SegmentRegister.attributes(type: 3, s: true)
                sr.pointee.limit = 0xFFFF
            }
            if index == Segment.ss { refreshMode() }
            return
        }
        let rpl = UInt8(selector & 3)
        let code = UInt32(selector & 0xFFFC)
        if selector & 0xFFFC == 0 {
            if index == Segment.ss && !(longMode && cpl != 3 && rpl == cpl) { throw .gp() }
            sr.pointee = SegmentRegister(selector: selector, base: 0, limit: 0,
                                         attributes: SegmentRegister.attributes(type: 0, s: false, present: false, unusable: true))
            if index == Segment.ss { sr.pointee.attributes |= UInt32(cpl) << 5; refreshMode() }
            return
        }
        let (address, d) = try readDescriptor(selector)
        if index == Segment.ss {
            if rpl != cpl || d.dpl != cpl || !d.isWritableData { throw .gp(code) }
            if !d.present { throw .ss(code) }
        } else {
            if d.isSystem || !d.isReadable { throw .gp(code) }
            if !d.isConforming && (rpl > d.dpl || cpl > d.dpl) { throw .gp(code) }
            if !d.present { throw .np(code) }
        }
        try markAccessed(address, d)
        sr.pointee = d.segment(selector: selector)
        sr.pointee.attributes |= 1   // accessed
        if index == Segment.ss { refreshMode() }
    }

    /// Loads SS for a privilege change to `level` (an interrupt or call gate to an inner
    /// ring) before CS changes: its checks and the pushes after it are at the new
    /// privilege, although `refreshMode` (run by the SS load) derives CPL from the old CS.
    /// A fault on the selector is #TS(selector + `external`), as for a stack from the TSS.
    func loadInnerStack(_ selector: UInt16, privilege level: UInt8, external: UInt32) throws(Fault) {
        cpl = level
        do throws(Fault) { try loadSegment(Segment.ss, selector) } catch {
            throw error.vector == 13 || error.vector == 12 ? .ts(UInt32(selector & 0xFFFC) + external) : error
        }
        cpl = level
    }

    /// Loads CS for a control transfer to `selector` (already checked), at privilege `newCPL`.
    func setCodeSegment(_ d: Descriptor, selector: UInt16, cpl newCPL: UInt8, address: UInt64) throws(Fault) {
        try markAccessed(address, d)
        var cs = d.segment(selector: selector & 0xFFFC | UInt16(newCPL))
        cs.attributes |= 1
        seg[1].pointee = cs
        refreshMode()
    }
}
