import X86

/// Why a task switch happens: it decides the busy bits, the back link and NT.
enum TaskSwitchReason { case jump, call, iret, interrupt }

extension InterpreterVCPU {
    /// A far JMP/CALL to a TSS or task gate, or an interrupt through a task gate.
    func switchTask(through selector: UInt16, descriptorAddress: UInt64, descriptor: Descriptor,
                    reason: TaskSwitchReason, returnAddress: UInt64, errorCode: UInt32? = nil) throws(Fault) {
        var tssSelector = selector
        var tssAddress = descriptorAddress
        var tss = descriptor
        if descriptor.type == 0x5 {
            // Task gate: the TSS it names must be in the GDT.
            tssSelector = descriptor.gateSelector
            if tssSelector & 4 != 0 { throw .gp(UInt32(tssSelector & 0xFFFC)) }
            (tssAddress, tss) = try readDescriptor(tssSelector)
        }
        try performTaskSwitch(to: tssSelector, address: tssAddress, descriptor: tss, reason: reason,
                              returnAddress: returnAddress, errorCode: errorCode)
    }

    /// The task switch itself (SDM vol. 3, 7.3): save this task's state in its TSS, load the
    /// new one's, and maintain busy bits, the back link, NT and CR0.TS.
    func performTaskSwitch(to selector: UInt16, address: UInt64, descriptor d: Descriptor, reason: TaskSwitchReason,
                           returnAddress: UInt64, errorCode: UInt32?) throws(Fault) {
        let code = UInt32(selector & 0xFFFC)
        let busy = d.type == 0xB || d.type == 0x3
        let valid: Set<UInt8> = [0x1, 0x3, 0x9, 0xB]
        if !d.isSystem || !valid.contains(d.type) || selector & 4 != 0 { throw .gp(code) }
        if reason == .iret ? !busy : busy { throw .gp(code) }
        if !d.present { throw .np(code) }
        let new32 = d.type & 0x8 != 0
        if d.limit < (new32 ? 0x67 : 0x2B) { throw .ts(code) }

        // Save the outgoing task.
        let old = s.pointee.tr
        let old32 = old.type & 0x8 != 0
        var flags = s.pointee.rflags
        if reason == .iret { flags &= ~Flag.nt }
        if old32 {
            try writeSystem(old.base &+ 0x20, 4, returnAddress)
            try writeSystem(old.base &+ 0x24, 4, flags)
            for i in 0..<8 { try writeSystem(old.base &+ 0x28 &+ UInt64(i * 4), 4, r[i]) }
            for i in 0..<6 { try writeSystem(old.base &+ 0x48 &+ UInt64(i * 4), 2, UInt64(seg[i].pointee.selector)) }
        } else {
            try writeSystem(old.base &+ 0x0E, 2, returnAddress)
            try writeSystem(old.base &+ 0x10, 2, flags)
            for i in 0..<8 { try writeSystem(old.base &+ 0x12 &+ UInt64(i * 2), 2, r[i]) }
            for i in 0..<4 { try writeSystem(old.base &+ 0x22 &+ UInt64(i * 2), 2, UInt64(seg[i].pointee.selector)) }
        }
        if reason == .jump || reason == .iret {
            let (oldAddress, oldDescriptor) = try readDescriptor(old.selector)
            try writeSystem(oldAddress &+ 5, 1, (oldDescriptor.raw >> 40) & 0xFD)
        }

        // Read the incoming task.
        let base = d.base
        func field(_ offset: UInt64, _ size: Int) throws(Fault) -> UInt64 { try readSystem(base &+ offset, size) }
        var regs = [UInt64](repeating: 0, count: 8)
        var selectors = [UInt16](repeating: 0, count: 6)
        let eip: UInt64, newFlags: UInt64, ldt: UInt16
        var cr3: UInt64? = nil
        if new32 {
            cr3 = try field(0x1C, 4)
            eip = try field(0x20, 4)
            newFlags = try field(0x24, 4)
            for i in 0..<8 { regs[i] = try field(0x28 + UInt64(i * 4), 4) }
            for i in 0..<6 { selectors[i] = UInt16(try field(0x48 + UInt64(i * 4), 2)) }
            ldt = UInt16(try field(0x60, 2))
        } else {
            // A 16-bit TSS holds no upper halves. The SDM leaves them undefined; like Bochs
            // (and so the test ROMs written against it), the upper word of EFLAGS is
            // cleared and that of each general register set to 0xFFFF.
            eip = try field(0x0E, 2)
            newFlags = try field(0x10, 2)
            for i in 0..<8 { regs[i] = try field(0x12 + UInt64(i * 2), 2) | 0xFFFF_0000 }
            for i in 0..<4 { selectors[i] = UInt16(try field(0x22 + UInt64(i * 2), 2)) }
            ldt = UInt16(try field(0x2A, 2))
        }
        if reason == .call || reason == .interrupt {
            try writeSystem(base, 2, UInt64(old.selector))
        }
        if reason != .iret {
            try writeSystem(address &+ 5, 1, (d.raw >> 40) & 0xFF | 2)
        }

        // Commit: from here on, faults are taken in the new task (#TS with its selectors).
        var tr = d.segment(selector: selector)
        tr.attributes |= 2
        s.pointee.tr = tr
        s.pointee.cr0 |= CR0.ts
        if let cr3, paging { s.pointee.cr3 = cr3; tlb.flushAll(keepGlobal: true) }
        for i in 0..<8 { r[i] = regs[i] }
        s.pointee.rflags = (newFlags | (reason == .call || reason == .interrupt ? Flag.nt : 0)) & 0x3F_7FD5 | 2
        s.pointee.rip = eip
        // Selectors first (as loaded but unchecked), then descriptors with the new CPL.
        for i in 0..<6 { seg[i].pointee.selector = selectors[i] }
        if s.pointee.rflags & Flag.vm != 0 {
            let v86 = SegmentRegister.attributes(type: 3, s: true, dpl: 3)
            for i in 0..<6 {
                seg[i].pointee = SegmentRegister(selector: selectors[i], base: UInt64(selectors[i]) << 4, limit: 0xFFFF,
                                                 attributes: i == 1 ? SegmentRegister.attributes(type: 0xB, s: true, dpl: 3) : v86)
            }
            refreshMode()
        } else {
            try loadTaskLDT(ldt)
            let csSelector = selectors[1]
            cpl = UInt8(csSelector & 3)
            let (csAddress, cs) = try readDescriptor(csSelector) { .ts($0) }
            if !cs.isCode || (cs.isConforming ? cs.dpl > cpl : cs.dpl != cpl) { throw .ts(UInt32(csSelector & 0xFFFC)) }
            if !cs.present { throw .np(UInt32(csSelector & 0xFFFC)) }
            try setCodeSegment(cs, selector: csSelector, cpl: cpl, address: csAddress)
            for i in [Segment.ss, Segment.ds, Segment.es, Segment.fs, Segment.gs] where new32 || i < Segment.fs {
                do throws(Fault) { try loadSegment(i, selectors[Int(i)]) } catch {
                    throw error.vector == 13 ? .ts(error.errorCode ?? 0) : error
                }
            }
        }
        if !new32 {
            for i in [Segment.fs, Segment.gs] {
                seg[Int(i)].pointee = SegmentRegister(selector: 0, base: 0, limit: 0,
                    attributes: SegmentRegister.attributes(type: 0, s: false, present: false, unusable: true))
            }
        }
        refreshMode()
        if let errorCode { try push(UInt64(errorCode), new32 ? 4 : 2) }
    }

    func loadTaskLDT(_ selector: UInt16) throws(Fault) {
        if selector & 0xFFFC == 0 {
            s.pointee.ldtr = SegmentRegister(selector: selector, base: 0, limit: 0,
                                             attributes: SegmentRegister.attributes(type: 2, s: false, present: false, unusable: true))
            return
        }
        let code = UInt32(selector & 0xFFFC)
        if selector & 4 != 0 { throw .ts(code) }
        let (_, d) = try readDescriptor(selector) { .ts($0) }
        if !d.isSystem || d.type != 2 { throw .ts(code) }
        if !d.present { throw .ts(code) }
        s.pointee.ldtr = d.segment(selector: selector)
    }

    /// IRET with NT set: back to the task in this TSS's link field. The outgoing task is
    /// saved to resume after the IRET (`next`).
    func taskReturn(next: UInt64) throws(Fault) {
        let link = UInt16(try readSystem(s.pointee.tr.base, 2))
        if link & 4 != 0 { throw .ts(UInt32(link & 0xFFFC)) }
        let (address, d) = try readDescriptor(link) { .ts($0) }
        try performTaskSwitch(to: link, address: address, descriptor: d, reason: .iret, returnAddress: next, errorCode: nil)
    }
}
