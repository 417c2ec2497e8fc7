#if canImport(Glibc)
import Glibc
#endif
import X86

extension InterpreterVCPU {
    var atomicLock: HostLockRef { shared.atomicLock }

    /// LOCK is only valid on a read-modify-write instruction with a memory destination.
    func checkLock(_ d: UnsafeMutablePointer<DecodedInstruction>) throws(Fault) {
        switch d.pointee.op {
        case .add, .adc, .sub, .sbb, .and, .or, .xor, .inc, .dec, .neg, .not, .xadd, .xchg, .cmpxchg,
             .cmpxchg8b, .cmpxchg16b, .bts, .btr, .btc:
            if d.pointee.o0.kind != .memory { throw .ud() }
        default:
            throw .ud()
        }
    }

    /// MOV forms that involve segment, control or debug registers.
    func moveSpecial(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let o0 = d.pointee.o0, o1 = d.pointee.o1
        switch (o0.kind, o1.kind) {
        case (.segment, _):
            let v = try readOperand(o1, d, 2, next: next)
            try loadSegment(o0.reg, UInt16(truncatingIfNeeded: v))
            if o0.reg == Segment.ss { s.pointee.events.interruptShadow = InterruptShadow.movSS }
        case (_, .segment):
            let v = UInt64(seg[Int(o1.reg)].pointee.selector)
            if o0.kind == .memory { try writeOperand(o0, d, 2, v, next: next) }
            else { writeReg(o0.reg, Int(o0.size), v) }
        case (.control, _):
            if cpl != 0 { throw .gp() }
            try writeControl(o0.reg, readReg(o1.reg, codeBits == 64 ? 8 : 4))
        case (_, .control):
            if cpl != 0 { throw .gp() }
            let v: UInt64
            switch o1.reg {
            case 0: v = s.pointee.cr0
            case 2: v = s.pointee.cr2
            case 3: v = s.pointee.cr3
            case 4: v = s.pointee.cr4
            case 8 where codeBits == 64:
                // CR8 is the local APIC's TPR[7:4].
                if let c = interruptController { s.pointee.cr8 = UInt64(c.taskPriority(vcpu: index) >> 4) }
                v = s.pointee.cr8
            default: throw .ud()
            }
            writeReg(o0.reg, codeBits == 64 ? 8 : 4, v)
        case (.debug, _):
            if cpl != 0 { throw .gp() }
            let v = readReg(o1.reg, codeBits == 64 ? 8 : 4)
            switch o0.reg {
            case 0: s.pointee.dr0 = v
            case 1: s.pointee.dr1 = v
            case 2: s.pointee.dr2 = v
            case 3: s.pointee.dr3 = v
            case 4, 6: s.pointee.dr6 = v | 0xFFFF_0FF0
            case 5, 7: s.pointee.dr7 = v & 0xFFFF_FFFF | 0x400
            default: throw .ud()
            }
        case (_, .debug):
            if cpl != 0 { throw .gp() }
            let v: UInt64
            switch o1.reg {
            case 0: v = s.pointee.dr0
            case 1: v = s.pointee.dr1
            case 2: v = s.pointee.dr2
            case 3: v = s.pointee.dr3
            case 4, 6: v = s.pointee.dr6
            case 5, 7: v = s.pointee.dr7
            default: throw .ud()
            }
            writeReg(o0.reg, codeBits == 64 ? 8 : 4, v)
        default:
            let size = Int(o0.size)
            try writeOperand(o0, d, size, try readOperand(o1, d, size, next: next), next: next)
        }
    }

    /// MOV to CR0/CR2/CR3/CR4/CR8 with the architectural checks and TLB effects.
    func writeControl(_ n: UInt8, _ value: UInt64) throws(Fault) {
        let st = s.pointee
        switch n {
        case 0:
            var v = value & 0xFFFF_FFFF | CR0.et
            if v & CR0.pg != 0 && v & CR0.pe == 0 { throw .gp() }
            if v & (1 << 29) != 0 && v & (1 << 30) == 0 { throw .gp() }   // NW without CD
            if v & CR0.pg != 0 && st.cr0 & CR0.pg == 0 && st.efer & EFER.lme != 0 {
                if st.cr4 & CR4.pae == 0 { throw .gp() }
                s.pointee.efer |= EFER.lma
            }
            if v & CR0.pg == 0 && st.cr0 & CR0.pg != 0 && st.efer & EFER.lma != 0 {
                if longMode { throw .gp() }
                s.pointee.efer &= ~EFER.lma
            }
            v |= st.cr0 & 0   // reserved bits read as written
            s.pointee.cr0 = v
            tlb.flushAll()
            refreshMode()
        case 2: s.pointee.cr2 = value
        case 3:
            // With CR4.PCIDE, bit 63 asks not to flush the PCID's entries and is not stored.
            s.pointee.cr3 = longMode ? value & (st.cr4 & CR4Bits.pcide != 0 ? ~(1 << 63) : .max) : value & 0xFFFF_FFFF
            tlb.flushAll(keepGlobal: true)
        case 4:
            var supported: UInt64 = 0x1 | 0x2 | 0x4 | 0x8 | CR4.pse | CR4.pae | 0x40 | CR4.pge | 0x100 | 0x200 | 0x400
                // What a kernel handed over from KVM has on: PVM shows it the host's flags
                // (HostLimitations.md). FSGSBASE and SMEP are honoured, PCIDE with an untagged
                // TLB; UMIP and SMAP are accepted but not enforced.
                | CR4Bits.umip | CR4Bits.fsgsbase | CR4Bits.pcide | CR4Bits.smep | CR4Bits.smap
            // XSAVE/XGETBV/XSETBV (SaveRestore.swift), where CPUID offers XSAVE.
            if shared.cpu.cpuid.offered.contains(.xsave) { supported |= CR4Bits.osxsave }
            if value & ~supported != 0 { throw .gp() }
            if ia32eMode && value & CR4.pae == 0 { throw .gp() }
            s.pointee.cr4 = value
            tlb.flushAll()
        case 8:
            if value & ~0xF != 0 { throw .gp() }
            s.pointee.cr8 = value
            interruptController?.setTaskPriority(vcpu: index, UInt8(value << 4))
        default: throw .ud()
        }
    }

    /// Descriptor-table, task-register, MSR, CPUID and cache instructions.
    @inline(never)
    func system(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let o0 = d.pointee.o0
        let privileged: Set<Op> = [.lgdt, .lidt, .lldt, .ltr, .lmsw, .clts, .invlpg, .wbinvd, .invd, .rdmsr, .wrmsr, .swapgs, .sysexit]
        if privileged.contains(op) && cpl != 0 { throw .gp() }
        switch op {
        case .lgdt, .lidt:
            guard o0.kind == .memory else { throw .ud() }
            let off = effectiveAddress(o0, d.pointee.addressSize, next: next)
            let limit = try read(o0.segment, off, 2)
            var base = try read(o0.segment, (off &+ 2) & sizeMask(Int(d.pointee.addressSize)), codeBits == 64 ? 8 : 4)
            if codeBits != 64 && d.pointee.operandSize == 2 { base &= 0xFF_FFFF }
            if codeBits == 64 && !isCanonical(base) { throw .gp() }
            let table = DescriptorTable(base: base, limit: UInt16(limit))
            if op == .lgdt { s.pointee.gdtr = table } else { s.pointee.idtr = table }
        case .sgdt, .sidt:
            guard o0.kind == .memory else { throw .ud() }
            let table = op == .sgdt ? s.pointee.gdtr : s.pointee.idtr
            let off = effectiveAddress(o0, d.pointee.addressSize, next: next)
            try write(o0.segment, off, 2, UInt64(table.limit))
            try write(o0.segment, (off &+ 2) & sizeMask(Int(d.pointee.addressSize)), codeBits == 64 ? 8 : 4, table.base)
        case .lldt, .ltr:
            if !protectedMode || virtual8086 { throw .ud() }
            let selector = UInt16(truncatingIfNeeded: try readOperand(o0, d, 2, next: next))
            try loadSystemSegment(ldt: op == .lldt, selector)
        case .sldt, .str:
            if !protectedMode || virtual8086 { throw .ud() }
            let v = UInt64(op == .sldt ? s.pointee.ldtr.selector : s.pointee.tr.selector)
            if o0.kind == .memory { try writeOperand(o0, d, 2, v, next: next) } else { writeReg(o0.reg, Int(o0.size), v) }
        case .smsw:
            let v = s.pointee.cr0
            if o0.kind == .memory { try writeOperand(o0, d, 2, v & 0xFFFF, next: next) } else { writeReg(o0.reg, Int(o0.size), v) }
        case .lmsw:
            let v = try readOperand(o0, d, 2, next: next)
            // LMSW can set PE but never clear it; it touches only PE, MP, EM, TS.
            let cr0 = s.pointee.cr0
            try writeControl(0, cr0 & ~0xE | v & 0xF | cr0 & 1)
        case .clts:
            s.pointee.cr0 &= ~CR0.ts
        case .arpl:
            if !protectedMode || virtual8086 || codeBits == 64 { throw .ud() }
            let dst = try readOperand(o0, d, 2, next: next)
            let src = readReg(d.pointee.o1.reg, 2)
            if dst & 3 < src & 3 {
                try writeOperand(o0, d, 2, dst & ~3 | src & 3, next: next)
                setFlags(Flag.zf, Flag.zf)
            } else {
                setFlags(Flag.zf, 0)
            }
        case .lar, .lsl, .verr, .verw:
            if !protectedMode || virtual8086 { throw .ud() }
            let operand = op == .lar || op == .lsl ? d.pointee.o1 : o0
            let selector = UInt16(truncatingIfNeeded: try readOperand(operand, d, 2, next: next))
            try accessCheck(op, selector, d, next: next)
        case .invlpg:
            guard o0.kind == .memory else { throw .ud() }
            let la = try linearAddress(o0.segment, effectiveAddress(o0, d.pointee.addressSize, next: next), 1, .read)
            tlb.flush(linear: la)
        case .wbinvd, .invd:
            break
        case .clac, .stac:
            // SMAP's AC toggles, at CPL 0 only. Run whatever the model's CPUID says: PVM's
            // KVM shows a guest the host's SMAP flag (HostLimitations.md) and hands these
            // to the interpreter when its emulator cannot run them (Linux's uaccess code).
            // The interpreter itself does not enforce SMAP.
            guard cpl == 0 else { throw .ud() }
            if op == .clac { s.pointee.rflags &= ~Flag.ac } else { s.pointee.rflags |= Flag.ac }
        case .serialize:
            // Nothing to wait for: the interpreter completes every access and sees every
            // code write before the next instruction. Not in the interpreter's own CPUID;
            // PVM's KVM shows the host's flag (HostLimitations.md), and Linux's sync_core()
            // then runs it, on whichever engine has the vCPU.
            break
        case .rdfsbase, .rdgsbase, .wrfsbase, .wrgsbase:
            // FSGSBASE, like CLAC/STAC run for KVM's handoffs (Linux's context switch) and
            // not offered in the interpreter's own CPUID; CR4.FSGSBASE enables them.
            guard codeBits == 64, s.pointee.cr4 & CR4Bits.fsgsbase != 0, o0.kind == .register else { throw .ud() }
            let size = Int(o0.size)
            switch op {
            case .rdfsbase: writeReg(o0.reg, size, s.pointee.fs.base)
            case .rdgsbase: writeReg(o0.reg, size, s.pointee.gs.base)
            default:
                let base = readReg(o0.reg, size)
                guard isCanonical(base) else { throw .gp() }
                if op == .wrfsbase { s.pointee.fs.base = base } else { s.pointee.gs.base = base }
            }
        case .invpcid:
            // The TLB is not tagged with PCIDs: flushing more than asked is always allowed.
            guard cpl == 0 else { throw .gp() }
            guard d.pointee.o1.kind == .memory, o0.kind == .register else { throw .ud() }
            let off = effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next)
            let pcid = try read(d.pointee.o1.segment, off, 8)
            let linear = try read(d.pointee.o1.segment, off &+ 8, 8)
            switch readReg(o0.reg, 8) {
            case 0:
                guard pcid < 0x1000, isCanonical(linear) else { throw .gp() }
                tlb.flush(linear: linear)
            case 1, 3:
                guard pcid < 0x1000 else { throw .gp() }
                tlb.flushAll(keepGlobal: true)
            case 2: tlb.flushAll()
            default: throw .gp()
            }
        case .cpuid:
            let leaf = UInt32(truncatingIfNeeded: r[0])
            var (a, b, c, dx) = shared.cpu.query(leaf: leaf, subleaf: UInt32(truncatingIfNeeded: r[1]), vcpu: index)
            // OSXSAVE (leaf 1 ECX bit 27) mirrors this vCPU's CR4.OSXSAVE, as on hardware.
            if leaf == 1 && s.pointee.cr4 & CR4Bits.osxsave != 0 { c |= 1 << 27 }
            writeReg(0, 4, UInt64(a)); writeReg(3, 4, UInt64(b)); writeReg(1, 4, UInt64(c)); writeReg(2, 4, UInt64(dx))
        case .rdtsc, .rdtscp:
            if s.pointee.cr4 & 0x4 != 0 && cpl != 0 { throw .gp() }
            let t = readTSC()
            writeReg(0, 4, t & 0xFFFF_FFFF)
            writeReg(2, 4, t >> 32)
            if op == .rdtscp { writeReg(1, 4, shared.cpu.tscAux(vcpu: index)) }
        case .rdrand, .rdseed:
            // The host's randomness (the system generator, getrandom on Linux); it never
            // runs dry, so CF = 1 always.
            guard o0.kind == .register else { throw .ud() }
            var host = SystemRandomNumberGenerator()
            writeReg(o0.reg, Int(o0.size), host.next())
            setFlags(Flag.arithmetic, Flag.cf)
        case .rdmsr:
            guard let v = readMSR(UInt32(truncatingIfNeeded: r[1])) else { throw .gp() }
            writeReg(0, 4, v & 0xFFFF_FFFF)
            writeReg(2, 4, v >> 32)
        case .wrmsr:
            let v = (r[2] & 0xFFFF_FFFF) << 32 | r[0] & 0xFFFF_FFFF
            try writeMSR(UInt32(truncatingIfNeeded: r[1]), v)
        case .swapgs:
            if !longMode { throw .ud() }
            let t = s.pointee.gs.base
            s.pointee.gs.base = s.pointee.msrs.kernelGSBase
            s.pointee.msrs.kernelGSBase = t
        case .syscall, .sysret, .sysenter, .sysexit:
            try fastSystemCall(d, next: next)
            return
        default:
            throw .ud()
        }
        s.pointee.rip = next
    }

    func loadSystemSegment(ldt: Bool, _ selector: UInt16) throws(Fault) {
        let code = UInt32(selector & 0xFFFC)
        if selector & 0xFFFC == 0 {
            if !ldt { throw .gp() }
            s.pointee.ldtr = SegmentRegister(selector: selector, base: 0, limit: 0,
                                             attributes: SegmentRegister.attributes(type: 2, s: false, present: false, unusable: true))
            return
        }
        if selector & 4 != 0 { throw .gp(code) }
        let (address, d) = try readDescriptor(selector)
        if ldt ? (!d.isSystem || d.type != 2) : (!d.isSystem || (d.type != 1 && d.type != 9)) { throw .gp(code) }
        if !d.present { throw .np(code) }
        var base = d.base
        if ia32eMode {
            base |= (try readSystem(address &+ 8, 8) & 0xFFFF_FFFF) << 32
            if !isCanonical(base) { throw .gp(code) }
        }
        if ldt {
            s.pointee.ldtr = d.segment(selector: selector, base64: base)
        } else {
            // Mark the TSS busy.
            try writeSystem(address &+ 5, 1, (d.raw >> 40) & 0xFF | 2)
            var tr = d.segment(selector: selector, base64: base)
            tr.attributes |= 2
            s.pointee.tr = tr
        }
    }

    /// LAR, LSL, VERR, VERW: ZF says whether the selector passes, no faults for bad ones.
    func accessCheck(_ op: Op, _ selector: UInt16, _ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        guard selector & 0xFFFC != 0, let (_, desc) = try? readDescriptor(selector) else { setFlags(Flag.zf, 0); return }
        let rpl = UInt8(selector & 3)
        let privilegeOK = desc.isConforming || (desc.dpl >= cpl && desc.dpl >= rpl)
        var ok: Bool
        switch op {
        case .lar:
            let validSystem: Set<UInt8> = ia32eMode ? [2, 9, 0xB, 0xC] : [1, 2, 3, 4, 5, 9, 0xB, 0xC]
            ok = privilegeOK && (!desc.isSystem || validSystem.contains(desc.type))
            if ok { writeReg(d.pointee.o0.reg, Int(d.pointee.o0.size), desc.raw >> 32 & 0x00F0_FF00) }
        case .lsl:
            let validSystem: Set<UInt8> = ia32eMode ? [2, 9, 0xB] : [1, 2, 3, 9, 0xB]
            ok = privilegeOK && (!desc.isSystem || validSystem.contains(desc.type))
            if ok { writeReg(d.pointee.o0.reg, Int(d.pointee.o0.size), UInt64(desc.limit)) }
        case .verr:
            ok = !desc.isSystem && desc.isReadable && privilegeOK
        default:
            ok = !desc.isSystem && desc.isWritableData && privilegeOK
        }
        setFlags(Flag.zf, ok ? Flag.zf : 0)
    }

    func readMSR(_ index: UInt32) -> UInt64? {
        if Self.isAPICMSR(index), let c = interruptController { return c.readMSR(vcpu: self.index, index) }
        let m = s.pointee.msrs
        switch index {
        case MSR.tsc: return readTSC()
        case MSR.apicBase: return m.apicBase
        case MSR.efer: return s.pointee.efer
        case MSR.star: return m.star
        case MSR.lstar: return m.lstar
        case MSR.cstar: return m.cstar
        case MSR.fmask: return m.fmask
        case MSR.fsBase: return s.pointee.fs.base
        case MSR.gsBase: return s.pointee.gs.base
        case MSR.kernelGSBase: return m.kernelGSBase
        case MSR.sysenterCS: return m.sysenterCS
        case MSR.sysenterESP: return m.sysenterESP
        case MSR.sysenterEIP: return m.sysenterEIP
        case MSR.pat: return m.pat
        case 0xFE: return 0x508   // MTRRcap: 8 variable ranges, fixed ranges, WC
        default:
            if MTRRs.slot(index) != nil { return s.pointee.msrs.mtrrs[index] }
            // The MSRs the CPU model implies (shared with KVM: Sources/X86/GuestCPU.swift).
            return shared.cpu.readMSR(vcpu: self.index, index)
        }
    }

    /// The MSRs the local APIC owns (answered by the interrupt controller when there is one).
    static func isAPICMSR(_ index: UInt32) -> Bool {
        index == MSR.apicBase || index == MSR.tscDeadline || (0x800...0x8FF).contains(index)
    }

    func writeMSR(_ index: UInt32, _ v: UInt64) throws(Fault) {
        if Self.isAPICMSR(index), let c = interruptController {
            // This engine's TSC counts nanoseconds (1 GHz).
            guard c.writeMSR(vcpu: self.index, index, v, tscNow: readTSC(), tscKHz: tscKHz) == true else { throw .gp() }
            if index == MSR.apicBase { s.pointee.msrs.apicBase = c.readMSR(vcpu: self.index, index) ?? v }
            return
        }
        switch index {
        case MSR.tsc: tscOffset = v &- hostTSC()
        case MSR.apicBase: s.pointee.msrs.apicBase = v
        case MSR.efer:
            let allowed = EFER.sce | EFER.lme | EFER.nxe
            if v & ~(allowed | EFER.lma) != 0 { throw .gp() }
            if paging && (v & EFER.lme) != (s.pointee.efer & EFER.lme) { throw .gp() }
            s.pointee.efer = v & allowed | s.pointee.efer & EFER.lma
            tlb.flushAll()
        case MSR.star: s.pointee.msrs.star = v
        case MSR.lstar: guard isCanonical(v) else { throw .gp() }; s.pointee.msrs.lstar = v
        case MSR.cstar: guard isCanonical(v) else { throw .gp() }; s.pointee.msrs.cstar = v
        case MSR.fmask: s.pointee.msrs.fmask = v & 0xFFFF_FFFF
        case MSR.fsBase: guard isCanonical(v) else { throw .gp() }; s.pointee.fs.base = v
        case MSR.gsBase: guard isCanonical(v) else { throw .gp() }; s.pointee.gs.base = v
        case MSR.kernelGSBase: guard isCanonical(v) else { throw .gp() }; s.pointee.msrs.kernelGSBase = v
        case MSR.sysenterCS: s.pointee.msrs.sysenterCS = v & 0xFFFF
        case MSR.sysenterESP: s.pointee.msrs.sysenterESP = v
        case MSR.sysenterEIP: s.pointee.msrs.sysenterEIP = v
        case MSR.pat: s.pointee.msrs.pat = v
        default:
            if MTRRs.slot(index) != nil { s.pointee.msrs.mtrrs[index] = v; return }
            guard shared.cpu.writeMSR(vcpu: self.index, index, v) else { throw .gp() }
        }
    }

    /// SYSCALL/SYSRET and SYSENTER/SYSEXIT (part 2 of the interpreter: long mode).
    func fastSystemCall(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let m = s.pointee.msrs
        let flatCode = { (sel: UInt16, dpl: UInt8, long: Bool) in
            SegmentRegister(selector: sel, base: 0, limit: 0xFFFF_FFFF,
                            attributes: SegmentRegister.attributes(type: 0xB, s: true, dpl: dpl, long: long, big: !long, granularity: true))
        }
        let flatData = { (sel: UInt16, dpl: UInt8) in
            SegmentRegister(selector: sel, base: 0, limit: 0xFFFF_FFFF,
                            attributes: SegmentRegister.attributes(type: 0x3, s: true, dpl: dpl, big: true, granularity: true))
        }
        switch d.pointee.op {
        case .syscall:
            // As AMD CPUs (the CPUID offers SYSCALL in 0x8000_0001 EDX without the long-
            // mode-only restriction of Intel's): from 64-bit mode to LSTAR, from
            // compatibility mode to CSTAR, and from legacy protected mode to STAR[31:0].
            guard s.pointee.efer & EFER.sce != 0, protectedMode, !virtual8086 else { throw .ud() }
            let sel = UInt16((m.star >> 32) & 0xFFFC)
            if s.pointee.efer & EFER.lma != 0 {
                r[1] = next
                r[11] = s.pointee.rflags & ~Flag.rf
                let target = longMode ? m.lstar : m.cstar
                s.pointee.cs = flatCode(sel, 0, true)
                s.pointee.ss = flatData(sel &+ 8, 0)
                s.pointee.rflags &= ~(m.fmask | Flag.rf)
                s.pointee.rip = target
            } else {
                r[1] = next & 0xFFFF_FFFF
                s.pointee.cs = flatCode(sel, 0, false)
                s.pointee.ss = flatData(sel &+ 8, 0)
                s.pointee.rflags &= ~(Flag.vm | Flag.if | Flag.rf)
                s.pointee.rip = m.star & 0xFFFF_FFFF
            }
            s.pointee.rflags |= 2
        case .sysret:
            guard s.pointee.efer & EFER.sce != 0, longMode else { throw .ud() }
            if cpl != 0 { throw .gp() }
            let base = UInt16((m.star >> 48) & 0xFFFF)
            let to64 = d.pointee.operandSize == 8
            if to64 && !isCanonical(r[1]) { throw .gp() }
            s.pointee.cs = flatCode((to64 ? base &+ 16 : base) | 3, 3, to64)
            s.pointee.ss.selector = (base &+ 8) | 3
            s.pointee.ss.attributes = SegmentRegister.attributes(type: 0x3, s: true, dpl: 3, big: true, granularity: true)
            s.pointee.rflags = r[11] & 0x3C_7FD7 | 2
            s.pointee.rip = to64 ? r[1] : r[1] & 0xFFFF_FFFF
        case .sysenter:
            guard protectedMode, m.sysenterCS & 0xFFFC != 0 else { throw .gp() }
            let sel = UInt16(m.sysenterCS & 0xFFFC)
            let long = s.pointee.efer & EFER.lma != 0
            s.pointee.cs = flatCode(sel, 0, long)
            s.pointee.ss = flatData(sel &+ 8, 0)
            s.pointee.rflags &= ~(Flag.vm | Flag.if | Flag.rf)
            s.pointee.rip = long ? m.sysenterEIP : m.sysenterEIP & 0xFFFF_FFFF
            r[4] = long ? m.sysenterESP : m.sysenterESP & 0xFFFF_FFFF
        default: // sysexit
            guard protectedMode, m.sysenterCS & 0xFFFC != 0 else { throw .gp() }
            let to64 = d.pointee.operandSize == 8
            let sel = UInt16(m.sysenterCS & 0xFFFC)
            s.pointee.cs = flatCode((to64 ? sel &+ 32 : sel &+ 16) | 3, 3, to64)
            s.pointee.ss = flatData((to64 ? sel &+ 40 : sel &+ 24) | 3, 3)
            s.pointee.rip = to64 ? r[2] : r[2] & 0xFFFF_FFFF
            r[4] = to64 ? r[1] : r[1] & 0xFFFF_FFFF
        }
        refreshMode()
    }

}

