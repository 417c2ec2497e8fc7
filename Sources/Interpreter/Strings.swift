#if canImport(Glibc)
import Glibc
#endif
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
        let compares = op == .cmpsb || op == .cmpsw || op == .cmpsd || op == .cmpsq || op == .scasb || op == .scasw || op == .scasd || op == .scasq
        let bulk = rep && step == UInt64(size) && (op == .movsb || op == .movsw || op == .movsd || op == .movsq
            || op == .stosb || op == .stosw || op == .stosd || op == .stosq || compares)
            && !logAccesses && !singleStep && recorder == nil
        while true {
            if rep && r[1] & am == 0 { break }
            if bulk && mmioLog.isEmpty {
                // A page's worth at once; `ended`: a comparison ended the repetition.
                let (done, ended) = compares
                    ? try bulkCompare(scas: op == .scasb || op == .scasw || op == .scasd || op == .scasq, repne: repne,
                                      source: src, size: size, addressSize: asz)
                    : (try bulkString(movs: op == .movsb || op == .movsw || op == .movsd || op == .movsq,
                                      source: src, size: size, addressSize: asz), false)
                if done > 0 {
                    if ended || r[1] & am == 0 { break }
                    iterations += done
                    if iterations >= 65536 { return }
                    if eventWaiting {
                        pendingExit = .interrupted
                        throw .exit
                    }
                    continue
                }
            }
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
            if compares {
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

    /// REP MOVS and REP STOS forward over RAM: the iterations that keep the destination (and
    /// the source) on their current pages, as one host copy or fill, with the registers
    /// updated as after that many iterations. Returns how many; 0 when it cannot (fewer than
    /// two, a segment limit or an address-size wrap in reach, a page that is not RAM, an
    /// overlap a forward copy would replicate), and the caller runs one iteration the
    /// ordinary way — which also raises any fault at the exact iteration.
    @inline(never)
    func bulkString(movs: Bool, source: UInt8, size: Int, addressSize asz: Int) throws(Fault) -> Int {
        guard let (n, from, to, dstLinear) = try bulkSpan(source: movs ? source : nil, size: size, addressSize: asz, write: true) else { return 0 }
        let bytes = n * size
        let frame = (tlbTable + TLB.index(dstLinear >> 12)).pointee.frame
        if let from {
            // A destination just above the source would see a forward copy's own bytes.
            if to > from && to < from + bytes { return 0 }
            memmove(to, from, bytes)
            writeReg(6, asz, r[6] &+ UInt64(bytes))
        } else {
            let value = readReg(0, size)
            if size == 1 {
                memset(to, Int32(truncatingIfNeeded: value), bytes)
            } else {
                for i in 0..<n { store(to + i * size, size, value) }
            }
        }
        codePages.noteWrite(page: Int(truncatingIfNeeded: frame >> 12), lines: CodePages.lines(Int(truncatingIfNeeded: dstLinear & 0xFFF), bytes))
        writeReg(7, asz, r[7] &+ UInt64(bytes))
        writeReg(1, asz, r[1] &- UInt64(n))
        return n
    }

    /// REPE/REPNE CMPS and SCAS forward over RAM: the iterations that keep both operands (SCAS:
    /// the destination) on their current pages, compared in host memory until the first
    /// that ends the repetition (REPE: a difference; REPNE: an equality), with the registers
    /// and flags as after that many iterations (the flags are the last comparison's).
    /// Returns how many ran and whether the last ended the repetition; 0 iterations when it
    /// cannot (as `bulkString`), and the caller runs one the ordinary way.
    @inline(never)
    func bulkCompare(scas: Bool, repne: Bool, source: UInt8, size: Int, addressSize asz: Int) throws(Fault) -> (Int, Bool) {
        guard let (n, from, to, _) = try bulkSpan(source: scas ? nil : source, size: size, addressSize: asz, write: false) else { return (0, false) }
        // The first element whose comparison ends the repetition, else the last.
        var i = 0
        var a = scas ? readReg(0, size) : 0, b: UInt64 = 0
        if let from {
            while true {
                a = load(from + i * size, size)
                b = load(to + i * size, size)
                if (a == b) == repne || i == n - 1 { break }
                i += 1
            }
        } else {
            while true {
                b = load(to + i * size, size)
                if (a == b) == repne || i == n - 1 { break }
                i += 1
            }
        }
        let ran = i + 1
        setFlags(Flag.arithmetic, subFlags(a, b, a &- b, 0, size))
        if !scas { writeReg(6, asz, r[6] &+ UInt64(ran * size)) }
        writeReg(7, asz, r[7] &+ UInt64(ran * size))
        writeReg(1, asz, r[1] &- UInt64(ran))
        return (ran, (a == b) == repne)
    }

    /// What `bulkString` and `bulkCompare` may take at once, going forward: the number of
    /// elements that keep ES:rDI (and `source`:rSI, when given) on their current pages,
    /// within rCX (at most 2^20), short of an address-size wrap and inside the segments, with
    /// the host addresses of the first elements and ES:rDI's linear address. nil when fewer
    /// than two, or a page is not RAM (MMIO, unmapped; ROM only for reading). The first
    /// element's checks come first, as in an iteration: the source read, then ES:rDI
    /// (written when `write`, else read), so a fault is the iteration's.
    private func bulkSpan(source: UInt8?, size: Int, addressSize asz: Int, write: Bool)
        throws(Fault) -> (n: Int, from: UnsafeMutableRawPointer?, to: UnsafeMutableRawPointer, dstLinear: UInt64)? {
        let am = sizeMask(asz)
        let dstOffset = r[7] & am, srcOffset = r[6] & am
        var srcLinear: UInt64? = nil
        if let source { srcLinear = try linearAddress(source, srcOffset, size, .read) }
        let dstLinear = try linearAddress(Segment.es, dstOffset, size, write ? .write : .read)
        var n = min(Int(truncatingIfNeeded: min(r[1] & am, 1 << 20)), (0x1000 - Int(dstLinear & 0xFFF)) / size)
        n = min(n, Int(truncatingIfNeeded: (am - dstOffset) / UInt64(size)) + 1)
        if let srcLinear {
            n = min(n, (0x1000 - Int(srcLinear & 0xFFF)) / size)
            n = min(n, Int(truncatingIfNeeded: (am - srcOffset) / UInt64(size)) + 1)
        }
        guard n >= 2 else { return nil }
        let bytes = n * size
        guard withinSegment(Segment.es, dstOffset, bytes) else { return nil }
        var from: UnsafeMutableRawPointer? = nil
        if let source, let srcLinear {
            guard withinSegment(source, srcOffset, bytes), let p = try bulkHost(srcLinear, write: false) else { return nil }
            from = p
        }
        guard let to = try bulkHost(dstLinear, write: write) else { return nil }
        return (n, from, to, dstLinear)
    }

    /// Whether `bytes` bytes at `offset` are all inside `segment` (long mode: no limits; the
    /// first byte's checks are done). Only ordinary expand-up segments; the rest go slowly.
    private func withinSegment(_ segment: UInt8, _ offset: UInt64, _ bytes: Int) -> Bool {
        if longMode { return true }
        let sr = seg[Int(segment)]
        return sr.pointee.attributes & 0x1_000C == 0 && offset &+ UInt64(bytes - 1) <= UInt64(sr.pointee.limit)
    }

    /// The host address of `linear` when its page is RAM (ROM too, for reading) through the
    /// TLB, filled first if needed; nil otherwise (MMIO, unmapped).
    private func bulkHost(_ linear: UInt64, write: Bool) throws(Fault) -> UnsafeMutableRawPointer? {
        let tag = linear >> 12
        let e = tlbTable + TLB.index(tag)
        if (write ? e.pointee.writeTag : e.pointee.readTag) != tag {
            if paging { _ = try translateLinear(linear, write ? .write : .read) } else { fillIdentity(linear) }
            guard (write ? e.pointee.writeTag : e.pointee.readTag) == tag else { return nil }
        }
        return hostAddress(e, linear)
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
