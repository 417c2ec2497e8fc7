import X86

extension InterpreterVCPU {
    /// Delivers an exception raised by an instruction (RIP still points at it). Returns
    /// `.shutdown` on a triple fault.
    func deliverException(_ fault: Fault) -> VCPUExit? {
        var current = fault
        var first: Fault? = nil
        while true {
            do throws(Fault) {
                let code: UInt32? = [8, 10, 11, 12, 13, 14, 17].contains(current.vector) && protectedMode ? (current.errorCode ?? 0) : nil
                if logAccesses {
                    eventLog.append(InterruptEvent(kind: .exception, vector: current.vector, errorCode: code, cs: seg[1].pointee.selector, rip: s.pointee.rip))
                }
                // Fault-class exceptions push EFLAGS with RF set, so that the IRET back to the
                // faulting instruction does not retrigger an instruction breakpoint.
                let faultClass: Set<UInt8> = [0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20]
                try deliver(vector: current.vector, errorCode: code, returnAddress: s.pointee.rip, software: false,
                            pushResumeFlag: faultClass.contains(current.vector))
                return nil
            } catch {
                if error.vector == Fault.exitVector { return pendingExit }
                // A fault while delivering: #DF for the architectural pairs, else serially.
                if current.vector == 8 { return .shutdown }
                let benign = !(current.isContributory || current.vector == 14)
                let pairDF = !benign && (error.isContributory || (error.vector == 14 && current.vector == 14) || (current.vector == 14 && error.isContributory))
                if first == nil { first = current }
                if pairDF {
                    current = Fault(vector: 8, errorCode: 0)
                } else {
                    current = error
                }
                if !protectedMode && current.vector == 8 { return .shutdown }
            }
        }
    }

    /// Delivers interrupt `vector` through the IVT (real mode) or IDT (protected and long
    /// mode), pushing the return frame and switching stacks as the gate demands.
    func deliver(vector: UInt8, errorCode: UInt32?, returnAddress: UInt64, software: Bool, pushResumeFlag: Bool = false) throws(Fault) {
        if software && logAccesses {
            eventLog.append(InterruptEvent(kind: .software, vector: vector, errorCode: nil, cs: seg[1].pointee.selector, rip: s.pointee.rip))
        }
        if !protectedMode {
            let entry = UInt64(vector) * 4
            if entry + 3 > UInt64(s.pointee.idtr.limit) { throw .gp() }
            let target = try readLinear(s.pointee.idtr.base &+ entry, 4)
            let sp = r[4]
            do throws(Fault) {
                try push(s.pointee.rflags & 0xFFFF, 2)
                try push(UInt64(seg[1].pointee.selector), 2)
                try push(returnAddress & 0xFFFF, 2)
            } catch { r[4] = sp; throw error }
            setFlags(Flag.if | Flag.tf | Flag.ac | Flag.rf, 0)
            let cs = UInt16(target >> 16)
            seg[1].pointee.selector = cs
            seg[1].pointee.base = UInt64(cs) << 4
            s.pointee.rip = target & 0xFFFF
            return
        }
        let external: UInt32 = software ? 0 : 1
        let idtCode = UInt32(vector) * 8 + 2 + (software ? 0 : external)
        let entrySize: UInt64 = ia32eMode ? 16 : 8
        let entry = UInt64(vector) * entrySize
        if entry + entrySize - 1 > UInt64(s.pointee.idtr.limit) { throw .gp(idtCode) }
        let gate = Descriptor(raw: try readSystem(s.pointee.idtr.base &+ entry, 8))
        let type = gate.type
        let validTypes: [UInt8] = ia32eMode ? [0xE, 0xF] : [0x5, 0x6, 0x7, 0xE, 0xF]
        if !gate.isSystem || !validTypes.contains(type) { throw .gp(idtCode) }
        if software && gate.dpl < cpl { throw .gp(idtCode) }
        if !gate.present { throw .np(idtCode) }
        if type == 0x5 {
            let tss = gate.gateSelector
            if tss & 4 != 0 { throw .gp(UInt32(tss & 0xFFFC) + external) }
            let (address, d) = try readDescriptor(tss) { .gp($0 + external) }
            try performTaskSwitch(to: tss, address: address, descriptor: d, reason: .interrupt,
                                  returnAddress: returnAddress, errorCode: errorCode)
            return
        }
        var offset = gate.gateOffset
        var ist = 0
        if ia32eMode {
            offset |= (try readSystem(s.pointee.idtr.base &+ entry &+ 8, 8) & 0xFFFF_FFFF) << 32
            ist = Int((gate.raw >> 32) & 7)
        }
        let is16 = type == 0x6 || type == 0x7
        if is16 { offset &= 0xFFFF }
        let selector = gate.gateSelector
        if selector & 0xFFFC == 0 { throw .gp(external) }
        let (address, target) = try readDescriptor(selector) { .gp($0 + external) }
        let tcode = UInt32(selector & 0xFFFC) + external
        if !target.isCode || target.dpl > cpl { throw .gp(tcode) }
        if !target.present { throw .np(tcode) }
        if ia32eMode && !(target.long && !target.raw.bit(54)) { throw .gp(tcode) }
        let size = ia32eMode ? 8 : is16 ? 2 : 4
        let fromV86 = virtual8086
        let oldFlags = s.pointee.rflags | (pushResumeFlag ? Flag.rf : 0)
        let oldCS = UInt64(seg[1].pointee.selector)
        let oldSS = UInt64(seg[2].pointee.selector)
        let oldSP = r[4]
        let savedState = s.pointee
        let savedCPL = cpl
        do throws(Fault) {
            let privilegeChange = !target.isConforming && target.dpl < cpl
            // From v86 mode only a non-conforming DPL 0 code segment will do.
            if fromV86 && (target.dpl != 0 || target.isConforming) { throw .gp(tcode) }
            if privilegeChange || ist != 0 || ia32eMode {
                let newCPL = target.isConforming ? cpl : target.dpl
                var newSP: UInt64
                if ia32eMode {
                    if ist != 0 {
                        newSP = try readSystem(s.pointee.tr.base &+ 0x24 &+ UInt64(ist - 1) * 8, 8)
                    } else if privilegeChange {
                        newSP = try innerStack(newCPL).1
                    } else {
                        newSP = r[4]
                    }
                    newSP &= ~0xF
                    if privilegeChange {
                        seg[2].pointee = SegmentRegister(selector: UInt16(newCPL), base: 0, limit: 0,
                            attributes: SegmentRegister.attributes(type: 0, s: false, dpl: newCPL, present: false, unusable: true))
                    }
                    cpl = newCPL
                    stackMask = .max
                    // The frame goes on the 64-bit stack as 64-bit mode addresses it (no SS
                    // base or limit), even from compatibility mode; the handler is 64-bit code,
                    // and setCodeSegment (or the failure path's refreshMode) sets the mode again.
                    longMode = true
                    r[4] = newSP
                    try push(oldSS, 8)
                    try push(oldSP, 8)
                } else {
                    let (newSS, sp) = try innerStack(newCPL)
                    // The inner SS is a protected-mode selector even when leaving v86 mode.
                    if fromV86 { s.pointee.rflags &= ~Flag.vm }
                    try loadInnerStack(newSS, privilege: newCPL, external: external)
                    r[4] = sp
                    if fromV86 {
                        try push(UInt64(seg[5].pointee.selector), size)
                        try push(UInt64(seg[4].pointee.selector), size)
                        try push(UInt64(seg[3].pointee.selector), size)
                        try push(UInt64(seg[0].pointee.selector), size)
                    }
                    try push(oldSS, size)
                    try push(oldSP & 0xFFFF_FFFF, size)
                }
            }
            try push(oldFlags & sizeMask(size), size)
            try push(oldCS, size)
            try push(returnAddress & sizeMask(size), size)
            if let errorCode { try push(UInt64(errorCode), size) }
        } catch {
            s.pointee = savedState
            cpl = savedCPL
            refreshMode()
            throw error
        }
        if fromV86 {
            let null = SegmentRegister(selector: 0, base: 0, limit: 0,
                                       attributes: SegmentRegister.attributes(type: 0, s: false, present: false, unusable: true))
            seg[0].pointee = null; seg[3].pointee = null; seg[4].pointee = null; seg[5].pointee = null
        }
        var clear = Flag.tf | Flag.nt | Flag.rf | Flag.vm
        if type & 1 == 0 { clear |= Flag.if }
        s.pointee.rflags &= ~clear
        try setCodeSegment(target, selector: selector, cpl: target.isConforming ? cpl : target.dpl, address: address)
        s.pointee.rip = offset
    }
}

extension UInt64 {
    @inline(__always) func bit(_ n: Int) -> Bool { self & (1 << UInt64(n)) != 0 }
}
