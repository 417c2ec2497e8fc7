#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import X86

extension InterpreterVCPU {
    /// Segment `seg`:`offset` → linear address, with the limit, type and canonical checks
    /// of the current mode. `size` is the access width in bytes.
    @_transparent
    func linearAddress(_ segment: UInt8, _ offset: UInt64, _ size: Int, _ access: Access) throws(Fault) -> UInt64 {
        let sr = seg[Int(segment)]
        if longMode {
            let la = segment >= Segment.fs ? sr.pointee.base &+ offset : offset
            if _slowPath(!isCanonical(la)) {
                throw segment == Segment.ss ? .ss() : .gp()
            }
            return la
        }
        let limit = UInt64(sr.pointee.limit)
        let attributes = sr.pointee.attributes
        let last = offset &+ UInt64(size &- 1)
        if _slowPath(attributes & 0x1_000C != 0 || last > limit || last < offset) {
            try checkSegmentSlow(segment, offset: offset, size: size, access: access)
        } else if protectedMode && _slowPath(access == .write && attributes & 0xA != 0x2) {
            // Writes need a writable data segment (type 001x / 011x).
            throw segment == Segment.ss ? .ss() : .gp()
        }
        return (sr.pointee.base &+ offset) & 0xFFFF_FFFF
    }

    /// The rare cases: expand-down or conforming/unusable segments, and limit violations.
    @inline(never)
    func checkSegmentSlow(_ segment: UInt8, offset: UInt64, size: Int, access: Access) throws(Fault) {
        let sr = seg[Int(segment)].pointee
        let fault: Fault = segment == Segment.ss ? .ss() : .gp()
        if protectedMode && !virtual8086 {
            if sr.unusable { throw fault }
            let code = sr.type & 0x8 != 0
            if access == .write && (code || sr.type & 0x2 == 0) { throw fault }
            if access == .read && code && sr.type & 0x2 == 0 { throw fault }
        }
        let last = offset &+ UInt64(size - 1)
        lastLimitViolation = (offset, size)
        let expandDown = sr.type & 0xC == 0x4 && !sr.isSystem
        if expandDown {
            let upper: UInt64 = sr.defaultBig ? 0xFFFF_FFFF : 0xFFFF
            if offset <= UInt64(sr.limit) || last > upper || last < offset { throw fault }
        } else if last > UInt64(sr.limit) || last < offset {
            throw fault
        }
    }

    /// Linear → physical for an access of the current privilege (paging on).
    @inline(__always)
    func translateLinear(_ linear: UInt64, _ access: Access) throws(Fault) -> UInt64 {
        let tag = linear >> 12
        let e = tlbTable + TLB.index(tag)
        if _fastPath(e.pointee.tag == tag && e.pointee.allows(access, user: cpl == 3)) {
            return e.pointee.frame | (linear & 0xFFF)
        }
        return try translateSlow(linear, access)
    }

    /// Walks the page tables and fills the TLB entry, with a host pointer when the page
    /// is RAM or ROM.
    @inline(never)
    func translateSlow(_ linear: UInt64, _ access: Access) throws(Fault) -> UInt64 {
        // Data addresses are checked in `linearAddress`; a fetch from a non-canonical RIP
        // (never in the TLB, so always here) raises #GP too.
        if longMode && !isCanonical(linear) { throw .gp() }
        let user = cpl == 3
        var w = try walk(linear, access: access, user: user, setBits: true)
        w.physical &= a20Mask
        let host = pageHost(w.physical & ~0xFFF)
        tlb.insert(linear: linear, walk: w, user: user, host: host?.host, writableHost: host?.ram ?? false)
        return w.physical
    }

    /// Paging off: the TLB entry of `linear`'s page, when that page (the A20 gate applied)
    /// is wholly RAM or ROM.
    @inline(never)
    func fillIdentity(_ linear: UInt64) {
        let physical = linear & a20Mask & ~0xFFF
        guard let host = pageHost(physical) else { return }
        tlb.insertIdentity(tag: linear >> 12, physicalTag: physical >> 12, user: cpl == 3, host: host.host, writable: host.ram)
    }

    /// The host address of the physical page at `physical` when the whole page is in one
    /// region of RAM or ROM (`ram`: writes may go there).
    func pageHost(_ physical: UInt64) -> (host: UnsafeMutableRawPointer, ram: Bool)? {
        guard let r = memory.region(containing: physical), r.end - physical >= 0x1000 else { return nil }
        return (r.host + Int(physical - r.start), r.kind == .ram)
    }

    /// The host address of `linear` in TLB entry `e` (whose read or write tag matched).
    @_transparent
    func hostAddress(_ e: UnsafeMutablePointer<TLB.Entry>, _ linear: UInt64) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: Int(truncatingIfNeeded: linear) &+ e.pointee.hostDelta).unsafelyUnwrapped
    }

    // MARK: Loads and stores

    // Through memcpy, which LLVM turns into one (unaligned) host load or store: the
    // standard library's `loadUnaligned`/`storeBytes` stayed out-of-line calls in the run
    // loop (measured: a call, and the registers saved around it, per guest access).
    @_transparent
    func load(_ p: UnsafeMutableRawPointer, _ size: Int) -> UInt64 {
        switch size {
        case 1: return UInt64(p.assumingMemoryBound(to: UInt8.self).pointee)
        case 2: var v: UInt16 = 0; memcpy(&v, p, 2); return UInt64(v)
        case 4: var v: UInt32 = 0; memcpy(&v, p, 4); return UInt64(v)
        default: var v: UInt64 = 0; memcpy(&v, p, 8); return v
        }
    }

    @_transparent
    func store(_ p: UnsafeMutableRawPointer, _ size: Int, _ value: UInt64) {
        switch size {
        case 1: p.assumingMemoryBound(to: UInt8.self).pointee = UInt8(truncatingIfNeeded: value)
        case 2: var v = UInt16(truncatingIfNeeded: value); memcpy(p, &v, 2)
        case 4: var v = UInt32(truncatingIfNeeded: value); memcpy(p, &v, 4)
        default: var v = value; memcpy(p, &v, 8)
        }
    }

    /// Reads `size` bytes at a linear address: through the TLB's host pointer when the
    /// access hits it (its last byte on the entry's page), else `readLinearSlow`.
    @_transparent
    func readLinear(_ linear: UInt64, _ size: Int, _ access: Access = .read) throws(Fault) -> UInt64 {
        if access != .execute {
            if _slowPath(logAccesses) { return try readLogged(linear, size) }
            let e = tlbTable + TLB.index(linear >> 12)
            if _fastPath(e.pointee.readTag == (linear &+ UInt64(size &- 1)) >> 12) { return load(hostAddress(e, linear), size) }
        }
        return try readLinearSlow(linear, size, access)
    }

    /// A read the TLB did not hold: fills it and reads; MMIO, unmapped memory and
    /// page-crossing reads (byte by byte through the page tables) are done here.
    @inline(never)
    func readLinearSlow(_ rawLinear: UInt64, _ size: Int, _ access: Access) throws(Fault) -> UInt64 {
        let inPage = rawLinear & 0xFFF &+ UInt64(size) <= 0x1000
        let physical: UInt64
        if !paging {
            if inPage && access != .execute { fillIdentity(rawLinear) }
            physical = rawLinear & a20Mask
        } else if inPage {
            physical = try translateLinear(rawLinear, access)
        } else {
            // Crosses a page: byte by byte, each through the page tables.
            var value: UInt64 = 0
            for i in 0..<size {
                let physical = try translateLinear(rawLinear &+ UInt64(i), access)
                value |= try readPhysicalSlow(physical, 1) << (8 * UInt64(i))
            }
            return value
        }
        if physical &+ UInt64(size) <= lowEnd { return load(lowHost + Int(physical), size) }
        return try readPhysicalSlow(physical, size)
    }

    /// Tracing: the same access, recorded with its physical address.
    @inline(never)
    func readLogged(_ linear: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        logAccesses = false
        defer { logAccesses = true }
        let value = try readLinear(linear, size)
        accessLog.append(MemoryAccess(write: false, linear: linear, physical: physicalForLog(linear), size: size, value: value))
        return value
    }

    @inline(never)
    func writeLogged(_ linear: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        logAccesses = false
        defer { logAccesses = true }
        try writeLinear(linear, size, value)
        accessLog.append(MemoryAccess(write: true, linear: linear, physical: physicalForLog(linear), size: size, value: value & sizeMask(size)))
    }

    func physicalForLog(_ linear: UInt64) -> UInt64 {
        paging ? ((try? translateLinear(linear, .read)) ?? linear) : linear & a20Mask
    }

    /// Physical reads outside the low-RAM fast path: other RAM, ROM, or MMIO (an exit).
    @inline(never)
    func readPhysicalSlow(_ physical: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        if let p = memory.hostPointer(physical, length: UInt64(size)) { return load(p, size) }
        if memory.region(containing: physical) != nil || memory.region(containing: physical &+ UInt64(size - 1)) != nil {
            // Straddles regions: byte by byte.
            var value: UInt64 = 0
            for i in 0..<size { value |= try readPhysicalSlow(physical &+ UInt64(i), 1) << (8 * UInt64(i)) }
            return value
        }
        // Unmapped: all ones, at once (the contract), with no device to ask.
        guard PhysicalLayout.deviceWindow.contains(physical) else { return sizeMask(size) }
        return try mmioAccess(physical, size, isWrite: false, value: 0)
    }

    /// An MMIO access, which the shared loop performs on the device model: each one ends
    /// the run with an exit before the instruction does anything after it. The instruction
    /// then runs again from its start and replays the accesses it already made (a read
    /// takes the value the device answered, a write is not repeated), so every access
    /// reaches the device exactly once and in program order, however many one
    /// instruction makes, on a free-running vCPU as on a single-stepped one.
    @inline(never)
    func mmioAccess(_ physical: UInt64, _ size: Int, isWrite: Bool, value: UInt64) throws(Fault) -> UInt64 {
        let value = isWrite ? value & sizeMask(size) : 0
        if mmioReplayed < mmioLog.count {
            let done = mmioLog[mmioReplayed]
            if done.address == physical && done.size == size && done.isWrite == isWrite && (!isWrite || done.value == value) {
                mmioReplayed += 1
                return done.value
            }
            // This run took another path (another vCPU changed what the instruction
            // depends on): what it did not reach again is forgotten.
            mmioLog.removeSubrange(mmioReplayed...)
        }
        mmioLog.append(MMIOAccess(address: physical, size: size, isWrite: isWrite, value: value))
        mmioReplayed += 1
        if isWrite {
            withUnsafeBytes(of: value.littleEndian) { ioBuffer.copyMemory(from: $0.baseAddress!, byteCount: 8) }
            pendingExit = .mmioWrite(address: physical, size: size, data: UnsafeRawPointer(ioBuffer))
        } else {
            mmioAwaitingValue = true
            pendingExit = .mmioRead(address: physical, size: size, data: ioBuffer)
        }
        exitRestartsInstruction = true
        throw .exit
    }

    /// The instruction (or REP iteration) that made the logged MMIO accesses is over.
    @inline(__always)
    func clearMMIOLog() {
        mmioLog.removeAll(keepingCapacity: true)
        mmioReplayed = 0
    }

    /// Writes `size` bytes at a linear address: through the TLB's host pointer when the
    /// access hits a writable entry, else `writeLinearSlow`. Every write to RAM tells
    /// `codePages` (decoded code on the page goes).
    @_transparent
    func writeLinear(_ linear: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        if _slowPath(logAccesses) { return try writeLogged(linear, size, value) }
        let e = tlbTable + TLB.index(linear >> 12)
        if _fastPath(e.pointee.writeTag == (linear &+ UInt64(size &- 1)) >> 12) {
            store(hostAddress(e, linear), size, value)
            codePages.noteWrite(page: Int(truncatingIfNeeded: e.pointee.frame >> 12),
                                lines: CodePages.lines(Int(truncatingIfNeeded: linear & 0xFFF), size))
            return
        }
        try writeLinearSlow(linear, size, value)
    }

    @inline(never)
    func writeLinearSlow(_ rawLinear: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        let inPage = rawLinear & 0xFFF &+ UInt64(size) <= 0x1000
        let physical: UInt64
        if !paging {
            if inPage { fillIdentity(rawLinear) }
            physical = rawLinear & a20Mask
        } else if inPage {
            physical = try translateLinear(rawLinear, .write)
        } else {
            // Check every page first so a fault leaves memory untouched.
            var physical: [UInt64] = []
            for i in 0..<size { physical.append(try translateLinear(rawLinear &+ UInt64(i), .write)) }
            for i in 0..<size { try writePhysicalSlow(physical[i], 1, value >> (8 * UInt64(i))) }
            return
        }
        if physical &+ UInt64(size) <= lowEnd {
            store(lowHost + Int(physical), size, value)
            codePages.noteWrite(physical, size)
            return
        }
        try writePhysicalSlow(physical, size, value)
    }

    @inline(never)
    func writePhysicalSlow(_ physical: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        if let p = memory.hostPointer(physical, length: UInt64(size), kind: .ram) {
            store(p, size, value)
            codePages.noteWrite(physical, size)
            return
        }
        if memory.region(containing: physical) != nil || memory.region(containing: physical &+ UInt64(size - 1)) != nil {
            // ROM (writes are dropped, as on hardware) or a straddle.
            for i in 0..<size where memory.region(containing: physical &+ UInt64(i))?.kind == .ram {
                try writePhysicalSlow(physical &+ UInt64(i), 1, value >> (8 * UInt64(i)))
            }
            return
        }
        // Unmapped: the write is ignored.
        guard PhysicalLayout.deviceWindow.contains(physical) else { return }
        _ = try mmioAccess(physical, size, isWrite: true, value: value)
    }

    // MARK: Segment-relative access

    @_transparent
    func read(_ segment: UInt8, _ offset: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        try readLinear(try linearAddress(segment, offset, size, .read), size)
    }

    @_transparent
    func write(_ segment: UInt8, _ offset: UInt64, _ size: Int, _ value: UInt64) throws(Fault) {
        try writeLinear(try linearAddress(segment, offset, size, .write), size, value)
    }

    /// Checks that a write would succeed without performing it.
    func probeWrite(_ segment: UInt8, _ offset: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        let la = try linearAddress(segment, offset, size, .write)
        if paging { _ = try translateLinear(la, .write) }
        return la
    }

    // MARK: Stack

    /// Pushes `size` bytes; RSP changes only when the write succeeded.
    @_transparent
    func push(_ value: UInt64, _ size: Int) throws(Fault) {
        let sp = (r[4] &- UInt64(size)) & stackMask
        try write(Segment.ss, sp, size, value)
        setStackPointer(sp)
    }

    @_transparent
    func pop(_ size: Int) throws(Fault) -> UInt64 {
        let sp = r[4] & stackMask
        let v = try read(Segment.ss, sp, size)
        setStackPointer(sp &+ UInt64(size))
        return v
    }

    /// Reads the stack `offset` bytes above the top without popping.
    @inline(__always)
    func peek(_ offset: UInt64, _ size: Int) throws(Fault) -> UInt64 {
        try read(Segment.ss, (r[4] &+ offset) & stackMask, size)
    }

    /// Writes RSP as a stack of the given width (`mask`: the stack's, by default) does:
    /// a 16-bit stack keeps the upper bits of ESP.
    @inline(__always)
    func setStackPointer(_ value: UInt64, mask: UInt64? = nil) {
        let mask = mask ?? stackMask
        if mask == 0xFFFF { r[4] = r[4] & ~0xFFFF | value & 0xFFFF }
        else if mask == 0xFFFF_FFFF { r[4] = value & 0xFFFF_FFFF }
        else { r[4] = value }
    }
}
