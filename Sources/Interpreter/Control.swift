import X86

extension InterpreterVCPU {
    /// Far JMP/CALL/RET, IRET, INT n/INT3/INT1/INTO, BOUND.
    func controlTransfer(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let osz = op == .retfq || op == .iretq ? 8 : Int(d.pointee.operandSize)
        switch op {
        case .ljmp, .lcall:
            var selector: UInt16
            var offset: UInt64
            if d.pointee.o0.kind == .immediate {
                selector = UInt16(truncatingIfNeeded: d.pointee.o0.value)
                offset = UInt64(bitPattern: d.pointee.o1.value) & sizeMask(osz)
            } else {
                guard d.pointee.o0.kind == .memory else { throw .ud() }
                let o = d.pointee.o0
                let off = effectiveAddress(o, d.pointee.addressSize, next: next)
                offset = try read(o.segment, off, osz)
                selector = UInt16(try read(o.segment, (off &+ UInt64(osz)) & sizeMask(Int(d.pointee.addressSize)), 2))
            }
            try farTransfer(selector: selector, offset: offset, call: op == .lcall, operandSize: osz, next: next)
        case .retf, .retfq:
            let release = d.pointee.operandCount > 0 ? UInt64(bitPattern: d.pointee.o0.value) & 0xFFFF : 0
            try farReturn(operandSize: osz, release: release)
        case .iret, .iretd, .iretq:
            try interruptReturn(operandSize: op == .iret ? 2 : op == .iretd ? 4 : 8, next: next)
        case .int:
            if virtual8086 && iopl < 3 { throw .gp() }
            try deliver(vector: UInt8(truncatingIfNeeded: d.pointee.o0.value), errorCode: nil, returnAddress: next, software: true)
        case .int3:
            try deliver(vector: 3, errorCode: nil, returnAddress: next, software: true)
        case .int1:
            try deliver(vector: 1, errorCode: nil, returnAddress: next, software: false)
        case .into:
            if codeBits == 64 { throw .ud() }
            if flag(Flag.of) { try deliver(vector: 4, errorCode: nil, returnAddress: next, software: true) } else { s.pointee.rip = next }
        default: // bound
            if codeBits == 64 || d.pointee.o1.kind != .memory { throw .ud() }
            let size = Int(d.pointee.o0.size)
            let index = Int64(bitPattern: signExtend(readReg(d.pointee.o0.reg, size), size))
            let o = d.pointee.o1
            let off = effectiveAddress(o, d.pointee.addressSize, next: next)
            let lower = Int64(bitPattern: signExtend(try read(o.segment, off, size), size))
            let upper = Int64(bitPattern: signExtend(try read(o.segment, (off &+ UInt64(size)) & sizeMask(Int(d.pointee.addressSize)), size), size))
            if index < lower || index > upper { throw .br() }
            s.pointee.rip = next
        }
    }

    func farTransfer(selector: UInt16, offset: UInt64, call: Bool, operandSize osz: Int, next: UInt64) throws(Fault) {
        if !protectedMode || virtual8086 {
            if call { try pushReturnAddress(next, size: osz) }
            seg[1].pointee.selector = selector
            seg[1].pointee.base = UInt64(selector) << 4
            s.pointee.rip = offset & sizeMask(osz)
            refreshMode()
            return
        }
        let code = UInt32(selector & 0xFFFC)
        if selector & 0xFFFC == 0 { throw .gp() }
        let (address, d) = try readDescriptor(selector)
        let rpl = UInt8(selector & 3)
        if d.isCode {
            if d.isConforming ? d.dpl > cpl : (rpl > cpl || d.dpl != cpl) { throw .gp(code) }
            if !d.present { throw .np(code) }
            var size = osz
            // Into 64-bit code from 64-bit or compatibility mode: no limit (a 64-bit code
            // descriptor's limit may be 0, as memtest86+'s is).
            let toLong = ia32eMode && d.long
            if toLong && osz == 4 && call { size = 4 }
            let target = toLong ? offset : offset & sizeMask(osz)
            if !toLong && target > UInt64(d.limit) { throw .gp() }
            if call { try pushReturnAddress(next, size: size) }
            try setCodeSegment(d, selector: selector, cpl: cpl, address: address)
            s.pointee.rip = target
            return
        }
        // System descriptors: call gates (and task gates/TSS, not implemented yet).
        switch d.type {
        case 0x4, 0xC:
            if d.dpl < cpl || d.dpl < rpl { throw .gp(code) }
            if !d.present { throw .np(code) }
            var gateOffset = d.gateOffset
            if ia32eMode {
                let high = try readSystem(address &+ 8, 8)
                gateOffset |= (high & 0xFFFF_FFFF) << 32
            }
            let gateSize = ia32eMode ? 8 : (d.type == 0xC ? 4 : 2)
            if d.type == 0x4 { gateOffset &= 0xFFFF }
            let targetSelector = d.gateSelector
            if targetSelector & 0xFFFC == 0 { throw .gp() }
            let (targetAddress, target) = try readDescriptor(targetSelector)
            let tcode = UInt32(targetSelector & 0xFFFC)
            if !target.isCode || target.dpl > cpl { throw .gp(tcode) }
            if !target.present { throw .np(tcode) }
            if !call {
                if target.isConforming ? false : target.dpl != cpl { throw .gp(tcode) }
                try setCodeSegment(target, selector: targetSelector, cpl: cpl, address: targetAddress)
                s.pointee.rip = gateOffset
                return
            }
            if !target.isConforming && target.dpl < cpl {
                // More privileged: switch to the inner stack from the TSS, copy parameters.
                let newCPL = target.dpl
                let (newSS, newSP) = try innerStack(newCPL)
                let oldSS = UInt64(seg[2].pointee.selector), oldSP = r[4] & stackMask
                let oldStack = seg[2].pointee, oldStackMask = stackMask
                var params: [UInt64] = []
                for i in 0..<d.gateParameterCount {
                    params.append(try read(Segment.ss, (oldSP &+ UInt64(i * gateSize)) & oldStackMask, gateSize))
                }
                let savedCPL = cpl
                do throws(Fault) { try loadInnerStack(newSS, privilege: newCPL, external: 0) } catch {
                    cpl = savedCPL
                    throw error
                }
                r[4] = newSP
                do throws(Fault) {
                    try push(oldSS, gateSize)
                    try push(oldSP, gateSize)
                    for p in params.reversed() { try push(p, gateSize) }
                    try push(UInt64(seg[1].pointee.selector), gateSize)
                    try push(next, gateSize)
                } catch {
                    seg[2].pointee = oldStack
                    r[4] = oldSP
                    cpl = savedCPL
                    refreshMode()
                    throw error
                }
                try setCodeSegment(target, selector: targetSelector, cpl: newCPL, address: targetAddress)
                s.pointee.rip = gateOffset
                return
            }
            try pushReturnAddress(next, size: gateSize)
            try setCodeSegment(target, selector: targetSelector, cpl: cpl, address: targetAddress)
            s.pointee.rip = gateOffset
        case 0x1, 0x9, 0x5:
            if d.dpl < cpl || d.dpl < rpl { throw .gp(code) }
            if !d.present { throw .np(code) }
            try switchTask(through: selector, descriptorAddress: address, descriptor: d, reason: call ? .call : .jump, returnAddress: next)
        default:
            throw .gp(code)
        }
    }

    /// A far call's return address: CS, then the next IP; SP is unchanged if either faults.
    func pushReturnAddress(_ next: UInt64, size: Int) throws(Fault) {
        let sp = r[4]
        do throws(Fault) {
            try push(UInt64(seg[1].pointee.selector), size)
            try push(next, size)
        } catch {
            r[4] = sp
            throw error
        }
    }

    /// The SS:ESP for privilege level `level` from the current TSS.
    func innerStack(_ level: UInt8) throws(Fault) -> (UInt16, UInt64) {
        let tr = s.pointee.tr
        if ia32eMode {
            let sp = try readSystem(tr.base &+ 4 &+ UInt64(level) * 8, 8)
            return (UInt16(level), sp)
        }
        if tr.type & 0x8 != 0 {
            let at = UInt64(level) * 8 + 4
            if at + 5 > UInt64(tr.limit) { throw .ts(UInt32(tr.selector & 0xFFFC)) }
            let sp = try readSystem(tr.base &+ at, 4)
            let ss = try readSystem(tr.base &+ at &+ 4, 2)
            return (UInt16(ss), sp)
        }
        let at = UInt64(level) * 4 + 2
        if at + 3 > UInt64(tr.limit) { throw .ts(UInt32(tr.selector & 0xFFFC)) }
        let sp = try readSystem(tr.base &+ at, 2)
        let ss = try readSystem(tr.base &+ at &+ 2, 2)
        return (UInt16(ss), sp)
    }


    func farReturn(operandSize osz: Int, release: UInt64) throws(Fault) {
        let ip = try peek(0, osz)
        let selector = UInt16(truncatingIfNeeded: try peek(UInt64(osz), osz))
        if !protectedMode || virtual8086 {
            setStackPointer((r[4] &+ UInt64(2 * osz) &+ release) & stackMask)
            seg[1].pointee.selector = selector
            seg[1].pointee.base = UInt64(selector) << 4
            s.pointee.rip = ip & sizeMask(osz)
            refreshMode()
            return
        }
        try protectedReturn(ip: ip, selector: selector, operandSize: osz, popped: UInt64(2 * osz), release: release, flags: nil)
    }

    /// The common tail of RETF and IRET in protected mode: same privilege, or to an outer
    /// level (popping SS:ESP and nulling data segments the new level cannot use).
    func protectedReturn(ip: UInt64, selector: UInt16, operandSize osz: Int, popped: UInt64, release: UInt64, flags: UInt64?) throws(Fault) {
        let code = UInt32(selector & 0xFFFC)
        if selector & 0xFFFC == 0 { throw .gp() }
        let rpl = UInt8(selector & 3)
        if rpl < cpl { throw .gp(code) }
        let (address, d) = try readDescriptor(selector)
        if !d.isCode { throw .gp(code) }
        if d.isConforming ? d.dpl > rpl : d.dpl != rpl { throw .gp(code) }
        if !d.present { throw .np(code) }
        let toLong = ia32eMode && d.long
        let target = toLong ? ip : ip & 0xFFFF_FFFF & sizeMask(osz)
        if !toLong && target > UInt64(d.limit) { throw .gp() }
        if rpl == cpl && !(longMode && flags != nil) {
            setStackPointer((r[4] &+ popped &+ release) & stackMask)
            if let flags { writeFlags(flags, size: osz) }
            try setCodeSegment(d, selector: selector, cpl: rpl, address: address)
            s.pointee.rip = target
            return
        }
        // Outer level (or IRETQ, which always pops SS:RSP).
        let newSP = try peek(popped &+ release, osz)
        let newSS = UInt16(truncatingIfNeeded: try peek(popped &+ release &+ UInt64(osz), osz))
        let oldCPL = cpl
        let savedCS = seg[1].pointee, savedSS = seg[2].pointee, savedSP = r[4], savedFlags = s.pointee.rflags
        do throws(Fault) {
            if let flags { writeFlags(flags, size: osz) }
            try setCodeSegment(d, selector: selector, cpl: rpl, address: address)
            try loadSegment(Segment.ss, newSS)
        } catch {
            seg[1].pointee = savedCS; seg[2].pointee = savedSS; r[4] = savedSP; s.pointee.rflags = savedFlags
            cpl = oldCPL
            refreshMode()
            throw error
        }
        setStackPointer(newSP &+ (flags == nil ? release : 0))
        if toLong || !longMode { if stackMask == .max { r[4] = newSP } }
        s.pointee.rip = target
        if rpl > oldCPL {
            for i in [Segment.es, Segment.ds, Segment.fs, Segment.gs] {
                let sr = seg[Int(i)].pointee
                let dataOrNonconforming = sr.type & 0x8 == 0 || sr.type & 0x4 == 0
                if !sr.unusable && dataOrNonconforming && sr.dpl < rpl {
                    seg[Int(i)].pointee = SegmentRegister(selector: 0, base: 0, limit: 0,
                        attributes: SegmentRegister.attributes(type: 0, s: false, present: false, unusable: true))
                }
            }
        }
    }

    func interruptReturn(operandSize osz: Int, next: UInt64) throws(Fault) {
        nmiBlocked = false
        if !protectedMode {
            let ip = try peek(0, osz)
            let cs = UInt16(truncatingIfNeeded: try peek(UInt64(osz), osz))
            let flags = try peek(UInt64(2 * osz), osz)
            setStackPointer((r[4] &+ UInt64(3 * osz)) & stackMask)
            seg[1].pointee.selector = cs
            seg[1].pointee.base = UInt64(cs) << 4
            s.pointee.rip = ip & sizeMask(osz)
            writeFlags(flags, size: osz)
            refreshMode()
            return
        }
        if virtual8086 {
            if iopl < 3 { throw .gp() }
            let ip = try peek(0, osz)
            let cs = UInt16(truncatingIfNeeded: try peek(UInt64(osz), osz))
            let flags = try peek(UInt64(2 * osz), osz)
            setStackPointer((r[4] &+ UInt64(3 * osz)) & stackMask)
            seg[1].pointee.selector = cs
            seg[1].pointee.base = UInt64(cs) << 4
            s.pointee.rip = ip & 0xFFFF
            writeFlags(flags, size: osz)
            return
        }
        if flag(Flag.nt) && !ia32eMode {
            try taskReturn(next: next)
            return
        }
        let ip = try peek(0, osz)
        let cs = UInt16(truncatingIfNeeded: try peek(UInt64(osz), osz))
        let flags = try peek(UInt64(2 * osz), osz)
        if osz == 4 && flags & Flag.vm != 0 && cpl == 0 && !ia32eMode {
            try returnToVirtual8086(ip: ip, cs: cs, flags: flags)
            return
        }
        try protectedReturn(ip: ip, selector: cs, operandSize: osz, popped: UInt64(3 * osz), release: 0, flags: flags)
    }

    func returnToVirtual8086(ip: UInt64, cs: UInt16, flags: UInt64) throws(Fault) {
        var values: [UInt64] = []
        for i in 3..<9 { values.append(try peek(UInt64(i * 4), 4)) }
        s.pointee.rflags = (flags & 0x3F_7FD5) | 2 | Flag.vm
        refreshMode()
        let v86 = SegmentRegister.attributes(type: 3, s: true, dpl: 3)
        func real(_ sel: UInt64) -> SegmentRegister {
            SegmentRegister(selector: UInt16(truncatingIfNeeded: sel), base: (sel & 0xFFFF) << 4, limit: 0xFFFF, attributes: v86)
        }
        seg[1].pointee = real(UInt64(cs))
        seg[1].pointee.attributes = SegmentRegister.attributes(type: 0xB, s: true, dpl: 3)
        seg[2].pointee = real(values[1])
        seg[0].pointee = real(values[2])
        seg[3].pointee = real(values[3])
        seg[4].pointee = real(values[4])
        seg[5].pointee = real(values[5])
        r[4] = values[0] & 0xFFFF_FFFF
        s.pointee.rip = ip & 0xFFFF
        refreshMode()
    }
}
