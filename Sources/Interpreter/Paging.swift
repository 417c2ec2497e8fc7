import X86

/// A direct-mapped software TLB: linear page → physical frame with the permissions the
/// walk found. Flushed by CR3 writes (except global pages), INVLPG, and CR0/CR4 changes.
struct TLB {
    struct Entry {
        var tag: UInt64 = .max
        var frame: UInt64 = 0
        /// Bit 0: user may access; bit 1: writable for user; bit 2: writable for supervisor;
        /// bit 3: executable; bit 4: dirty already set; bit 5: global.
        var permissions: UInt8 = 0

        @inline(__always) func allows(_ access: Access, user: Bool) -> Bool {
            if user && permissions & 1 == 0 { return false }
            switch access {
            case .read: return true
            case .write: return permissions & (user ? 2 : 4) != 0 && permissions & 16 != 0
            case .execute: return permissions & 8 != 0
            }
        }
    }

    static let size = 256
    let entries: UnsafeMutablePointer<Entry>

    /// The entry for page number `tag`. The bits above the index are folded in, so that
    /// pages 1 MiB apart do not evict each other: a guest linked at 2 MiB (page 0x200)
    /// and its local APIC (page 0xFEE00) would otherwise share an entry, and every
    /// timer tick's EOI would walk the page tables twice.
    @inline(__always)
    func entry(_ tag: UInt64) -> UnsafeMutablePointer<Entry> {
        entries + Int((tag ^ tag >> 8) & UInt64(Self.size - 1))
    }

    init() {
        entries = .allocate(capacity: Self.size)
        entries.initialize(repeating: Entry(), count: Self.size)
    }

    func flushAll(keepGlobal: Bool = false) {
        for i in 0..<Self.size where !(keepGlobal && entries[i].permissions & 32 != 0) {
            entries[i] = Entry()
        }
    }

    func flush(linear: UInt64) {
        let tag = linear >> 12
        let e = entry(tag)
        if e.pointee.tag == tag { e.pointee = Entry() }
    }

    func insert(linear: UInt64, walk: PageWalk) {
        let tag = linear >> 12
        var p: UInt8 = 0
        if walk.user { p |= 1 }
        if walk.writable { p |= 2 }
        if walk.supervisorWritable { p |= 4 }
        if walk.executable { p |= 8 }
        if walk.dirty { p |= 16 }
        if walk.global { p |= 32 }
        entry(tag).pointee = Entry(tag: tag, frame: walk.physical & ~0xFFF, permissions: p)
    }
}

/// The result of walking the guest's page tables for one linear address.
struct PageWalk {
    var physical: UInt64
    var user: Bool
    var writable: Bool
    var supervisorWritable: Bool
    var executable: Bool
    var dirty: Bool
    var global: Bool
}

extension InterpreterVCPU {
    /// Walks the guest's page tables (32-bit, PAE or 4-level, as CR4/EFER say), checking
    /// the access and setting accessed/dirty bits as hardware does. Raises #PF with the
    /// architectural error code and CR2.
    func walk(_ linear: UInt64, access: Access, user: Bool, setBits: Bool) throws(Fault) -> PageWalk {
        let st = s.pointee
        let wp = st.cr0 & CR0.wp != 0
        let nxe = st.efer & EFER.nxe != 0
        let pae = st.cr4 & CR4.pae != 0
        let pse = st.cr4 & CR4.pse != 0 || pae
        let pge = st.cr4 & CR4.pge != 0
        var errorCode: UInt32 = (access == .write ? 2 : 0) | (user ? 4 : 0) | (access == .execute && (nxe || false) ? 16 : 0)
        func fault(present: Bool, reserved: Bool = false) -> Fault {
            if present { errorCode |= 1 }
            if reserved { errorCode |= 8 }
            if setBits { s.pointee.cr2 = linear }
            return .pf(errorCode)
        }
        var levels: [(address: UInt64, entry: UInt64)] = []
        var userOK = true, writeOK = true, execOK = true
        var physical: UInt64 = 0
        var global = false
        var dirty = false
        let entrySize: UInt64 = pae ? 8 : 4
        var table: UInt64
        var shifts: [UInt64]
        if longMode || st.efer & EFER.lma != 0 {
            table = st.cr3 & 0x000F_FFFF_FFFF_F000
            shifts = [39, 30, 21, 12]
        } else if pae {
            let pdpte = physicalRead(st.cr3 & 0xFFFF_FFE0 + ((linear >> 30) & 3) * 8, 8)
            if pdpte & 1 == 0 { throw fault(present: false) }
            table = pdpte & 0x000F_FFFF_FFFF_F000
            shifts = [21, 12]
        } else {
            table = st.cr3 & 0xFFFF_F000
            shifts = [22, 12]
        }
        let indexMask: UInt64 = pae ? 0x1FF : 0x3FF
        for (level, shift) in shifts.enumerated() {
            let address = table &+ ((linear >> shift) & indexMask) * entrySize
            let entry = physicalRead(address, Int(entrySize))
            if entry & 1 == 0 { throw fault(present: false) }
            if pae && nxe == false && entry & (1 << 63) != 0 { throw fault(present: true, reserved: true) }
            levels.append((address, entry))
            userOK = userOK && entry & 4 != 0
            writeOK = writeOK && entry & 2 != 0
            if pae && nxe && entry & (1 << 63) != 0 { execOK = false }
            let last = level == shifts.count - 1
            // 1 GiB pages are reserved: CPUID does not offer them (pdpe1gb).
            if shift == 30 && entry & 0x80 != 0 { throw fault(present: true, reserved: true) }
            let large = !last && entry & 0x80 != 0 && (shift == 21 || shift == 22) && pse
            if last || large {
                let pageSize: UInt64 = 1 << shift
                var base: UInt64
                if pae {
                    base = entry & 0x000F_FFFF_FFFF_F000 & ~(pageSize - 1)
                } else if large {
                    // 4 MiB page: bits 13-20 are physical address bits 32-39 (PSE-36).
                    base = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
                } else {
                    base = entry & 0xFFFF_F000
                }
                physical = base | (linear & (pageSize - 1))
                global = pge && entry & 0x100 != 0
                dirty = entry & 0x40 != 0
                break
            }
            table = entry & (pae ? 0x000F_FFFF_FFFF_F000 : 0xFFFF_F000)
        }
        // Permission checks.
        if user && !userOK { throw fault(present: true) }
        if access == .write && !writeOK && (user || wp) { throw fault(present: true) }
        if access == .execute && !execOK { throw fault(present: true) }
        let st4 = st.cr4
        if !user && userOK {
            if access == .execute && st4 & (1 << 20) != 0 { throw fault(present: true) }   // SMEP
        }
        if setBits {
            // Accessed on every level, dirty on the last for writes.
            for (i, l) in levels.enumerated() {
                var e = l.entry | 0x20
                if i == levels.count - 1 && access == .write { e |= 0x40 }
                if e != l.entry { physicalWrite(l.address, Int(entrySize), e) }
            }
            if access == .write { dirty = true }
        }
        return PageWalk(physical: physical, user: userOK, writable: writeOK, supervisorWritable: writeOK || !wp,
                        executable: execOK, dirty: dirty, global: global)
    }

    /// Page-table reads and writes go straight to physical memory (all-ones outside RAM).
    func physicalRead(_ address: UInt64, _ size: Int) -> UInt64 {
        size == 8 ? memory.read(address, as: UInt64.self) : UInt64(memory.read(address, as: UInt32.self))
    }

    func physicalWrite(_ address: UInt64, _ size: Int, _ value: UInt64) {
        if size == 8 { memory.write(address, value) } else { memory.write(address, UInt32(truncatingIfNeeded: value)) }
        codePages.noteWrite(address, size)
    }
}
