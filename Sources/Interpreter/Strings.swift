import X86

extension InterpreterVCPU {
    /// MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS with REP/REPE/REPNE. Each iteration commits
    /// before the next, so a fault leaves the registers describing the work done.
    func string(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let size: Int
        switch op {
        case .movsb, .cmpsb, .stosb, .lodsb, .scasb, .insb, .outsb: size = 1
        case .movsw, .cmpsw, .stosw, .lodsw, .scasw, .insw, .outsw: size = 2
        case .movsd, .cmpsd, .stosd, .lodsd, .scasd, .insd, .outsd: size = 4
        default: size = 8
        }
        let asz = Int(d.pointee.addressSize)
        let am = sizeMask(asz)
        let rep = d.pointee.prefixes & (PrefixBits.rep | PrefixBits.repne) != 0
        let repne = d.pointee.prefixes & PrefixBits.repne != 0
        let step = flag(Flag.df) ? 0 &- UInt64(size) : UInt64(size)
        let src = d.pointee.dataSegment
        var iterations = 0
        while true {
            if rep && r[1] & am == 0 { break }
            switch op {
            case .movsb, .movsw, .movsd, .movsq:
                let v = try read(src, r[6] & am, size)
                try write(Segment.es, r[7] & am, size, v)
                writeReg(6, asz, r[6] &+ step); writeReg(7, asz, r[7] &+ step)
            case .stosb, .stosw, .stosd, .stosq:
                try write(Segment.es, r[7] & am, size, readReg(0, size))
                writeReg(7, asz, r[7] &+ step)
            case .lodsb, .lodsw, .lodsd, .lodsq:
                writeReg(0, size, try read(src, r[6] & am, size))
                writeReg(6, asz, r[6] &+ step)
            case .cmpsb, .cmpsw, .cmpsd, .cmpsq:
                let a = try read(src, r[6] & am, size)
                let b = try read(Segment.es, r[7] & am, size)
                setFlags(Flag.arithmetic, subFlags(a, b, a &- b, 0, size))
                writeReg(6, asz, r[6] &+ step); writeReg(7, asz, r[7] &+ step)
            case .scasb, .scasw, .scasd, .scasq:
                let a = readReg(0, size)
                let b = try read(Segment.es, r[7] & am, size)
                setFlags(Flag.arithmetic, subFlags(a, b, a &- b, 0, size))
                writeReg(7, asz, r[7] &+ step)
            case .outsb, .outsw, .outsd:
                try checkIOPermission(UInt16(truncatingIfNeeded: r[2]), size)
                let v = try read(src, r[6] & am, size)
                writeReg(6, asz, r[6] &+ step)
                if rep { writeReg(1, asz, r[1] &- 1) }
                if !rep || r[1] & am == 0 { s.pointee.rip = next }
                withUnsafeBytes(of: v.littleEndian) { ioBuffer.copyMemory(from: $0.baseAddress!, byteCount: size) }
                pendingExit = .portOut(port: UInt16(truncatingIfNeeded: r[2]), size: size, count: 1, data: UnsafeRawPointer(ioBuffer))
                throw .exit
            default: // ins
                try checkIOPermission(UInt16(truncatingIfNeeded: r[2]), size)
                let la = try probeWrite(Segment.es, r[7] & am, size)
                writeReg(7, asz, r[7] &+ step)
                if rep { writeReg(1, asz, r[1] &- 1) }
                if !rep || r[1] & am == 0 { s.pointee.rip = next }
                pendingIn = .memory(linear: la, size: size)
                pendingExit = .portIn(port: UInt16(truncatingIfNeeded: r[2]), size: size, count: 1, data: ioBuffer)
                throw .exit
            }
            if !rep { break }
            writeReg(1, asz, r[1] &- 1)
            // This iteration has committed: a restart must not replay its MMIO accesses.
            if _slowPath(!mmioLog.isEmpty) { clearMMIOLog() }
            if op == .cmpsb || op == .cmpsw || op == .cmpsd || op == .cmpsq || op == .scasb || op == .scasw || op == .scasd || op == .scasq {
                if repne ? flag(Flag.zf) : !flag(Flag.zf) { break }
            }
            iterations += 1
            // Long REP runs stay interruptible (a kick or the vCPU's own timer is looked
            // at every 1,024 iterations and ends the run at once), and single-stepping takes one
            // iteration per step as on hardware: RIP still points at the instruction.
            // A recorded trace does the same, so it matches a single-stepped one.
            if r[1] & am != 0 {
                if iterations >= 65536 || singleStep || recorder != nil { return }
                if iterations & 1023 == 0 && eventWaiting {
                    pendingExit = .interrupted
                    throw .exit
                }
            }
        }
        s.pointee.rip = next
    }

    /// IN and OUT: the value goes through the shared loop (an exit).
    func portIO(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let isIn = d.pointee.op == .in
        let portOperand = isIn ? d.pointee.o1 : d.pointee.o0
        let dataOperand = isIn ? d.pointee.o0 : d.pointee.o1
        let size = Int(dataOperand.size)
        let port = portOperand.kind == .immediate ? UInt16(truncatingIfNeeded: portOperand.value) & 0xFF : UInt16(truncatingIfNeeded: r[2])
        try checkIOPermission(port, size)
        s.pointee.rip = next
        if isIn {
            pendingIn = .register(size: size)
            pendingExit = .portIn(port: port, size: size, count: 1, data: ioBuffer)
        } else {
            let v = readReg(0, size)
            withUnsafeBytes(of: v.littleEndian) { ioBuffer.copyMemory(from: $0.baseAddress!, byteCount: size) }
            pendingExit = .portOut(port: port, size: size, count: 1, data: UnsafeRawPointer(ioBuffer))
        }
        throw .exit
    }

    /// Finishes an `in` with the value the shared loop read.
    func completeIn(_ p: PendingIn) {
        switch p {
        case .register(let size):
            writeReg(0, size, load(ioBuffer, size))
        case .memory(let linear, let size):
            // Checked before the exit; a failure now would be a page-table change by another vCPU.
            try? writeLinear(linear, size, load(ioBuffer, size))
        }
    }

    /// Protected-mode I/O permission: CPL <= IOPL, or the TSS I/O bitmap allows every byte.
    func checkIOPermission(_ port: UInt16, _ size: Int) throws(Fault) {
        guard protectedMode, cpl > iopl || virtual8086 else { return }
        let tr = s.pointee.tr
        guard !tr.unusable, tr.type == 0x9 || tr.type == 0xB, tr.limit >= 0x67 else { throw .gp() }
        let base = UInt64(try readLinear(tr.base &+ 0x66, 2))
        let last = base &+ UInt64(port >> 3) &+ 1
        if last > UInt64(tr.limit) { throw .gp() }
        let bits = try readLinear(tr.base &+ base &+ UInt64(port >> 3), 2)
        let mask = ((UInt64(1) << UInt64(size)) - 1) << UInt64(port & 7)
        if bits & mask != 0 { throw .gp() }
    }
}
