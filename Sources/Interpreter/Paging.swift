import X86

/// The software TLB, one per vCPU: linear page → physical frame with the permissions the
/// walk found, and for pages of RAM and ROM a host pointer, so that a load or store that
/// hits is one tag compare and a host access, with paging on and off.
///
/// Two tables, one per privilege (supervisor for CPL 0-2, user for CPL 3): an entry is
/// filled by a walk for its own privilege, so its tags already say what that privilege
/// may do. Per entry:
/// - `tag`, `frame`, `permissions`: the translation (paging on), for fetches and for the
///   accesses that leave the host-pointer path (MMIO, page-crossing, locked, logged);
/// - `readTag`, `writeTag`: the page number when a read or a write may go straight to
///   `hostDelta &+ linear` (`.max` otherwise). A read entry needs the page in one region
///   of RAM or ROM; a write entry needs RAM, a write permitted to this privilege and the
///   dirty bit already set in the page-table entry (so a write through an entry made by a
///   read still walks once and sets D, exactly as the walk did before). MMIO and
///   unmapped memory never get a host tag.
///
/// The page-crossing check is folded into the compare: the entry is found by the page of
/// an access's first byte and its tag compared with the page of its last byte, and the
/// index never puts two consecutive pages in one slot (`index`), so an access that runs
/// into the next page never matches.
///
/// With paging off the same entries map linear = physical (A20 applied when the entry is
/// filled); any change of paging, CR0, CR3, CR4, EFER or the A20 gate flushes.
struct TLB {
    struct Entry {
        var tag: UInt64 = .max
        var frame: UInt64 = 0
        var readTag: UInt64 = .max
        var writeTag: UInt64 = .max
        /// Host address of the page minus its linear address.
        var hostDelta: Int = 0
        /// Bit 0: user may access; bit 1: writable for user; bit 2: writable for supervisor;
        /// bit 3: executable; bit 4: dirty already set; bit 5: global; bit 6: part of a
        /// 2 or 4 MiB page.
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

    static let bits = 8
    static let size = 1 << bits
    /// `size` supervisor entries, then `size` user entries.
    let entries: UnsafeMutablePointer<Entry>
    /// Some entry maps part of a large page (INVLPG must then find all of them).
    var hasLargePages = false

    /// The slot of page number `tag`. The bits above the index are added in, so that pages
    /// 1 MiB apart do not evict each other (a guest linked at 2 MiB and its local APIC
    /// would otherwise share a slot, and every timer tick's EOI would walk the page tables
    /// twice); an addition, not an exclusive or, so that page n + 1's slot is always 1 or 2
    /// after page n's and never the same (the folded page-crossing check needs that).
    @_transparent
    static func index(_ tag: UInt64) -> Int {
        Int(truncatingIfNeeded: (tag &+ (tag >> UInt64(bits))) & UInt64(size - 1))
    }

    /// The entry for page number `tag` in the table of the given privilege.
    @inline(__always)
    func entry(_ tag: UInt64, user: Bool) -> UnsafeMutablePointer<Entry> {
        table(user: user) + Self.index(tag)
    }

    @inline(__always)
    func table(user: Bool) -> UnsafeMutablePointer<Entry> {
        entries + (user ? Self.size : 0)
    }

    init() {
        entries = .allocate(capacity: 2 * Self.size)
        entries.initialize(repeating: Entry(), count: 2 * Self.size)
    }

    mutating func flushAll(keepGlobal: Bool = false) {
        var large = false
        for i in 0..<2 * Self.size {
            if keepGlobal && entries[i].permissions & 32 != 0 {
                large = large || entries[i].permissions & 64 != 0
            } else if entries[i].tag != .max || entries[i].readTag != .max {
                entries[i] = Entry()
            }
        }
        hasLargePages = large
    }

    /// INVLPG: every entry of both privileges that translates `linear`'s page — with large
    /// pages, every 4 KiB piece of the large page that holds it.
    mutating func flush(linear: UInt64) {
        let tag = linear >> 12
        for user in [false, true] {
            let e = entry(tag, user: user)
            if e.pointee.tag == tag || e.pointee.readTag == tag { e.pointee = Entry() }
        }
        guard hasLargePages else { return }
        // The 4 MiB-aligned range holding the page covers its 2 or 4 MiB page (flushing
        // more than asked is always allowed).
        for i in 0..<2 * Self.size where entries[i].permissions & 64 != 0 && entries[i].tag >> 10 == tag >> 10 {
            entries[i] = Entry()
        }
    }

    /// Fills the entry of `linear`'s page for `user` after a walk; `host` is the host
    /// address of the physical page when it is RAM (`writableHost`) or ROM.
    mutating func insert(linear: UInt64, walk: PageWalk, user: Bool, host: UnsafeMutableRawPointer?, writableHost: Bool) {
        let tag = linear >> 12
        var p: UInt8 = 0
        if walk.user { p |= 1 }
        if walk.writable { p |= 2 }
        if walk.supervisorWritable { p |= 4 }
        if walk.executable { p |= 8 }
        if walk.dirty { p |= 16 }
        if walk.global { p |= 32 }
        if walk.large { p |= 64; hasLargePages = true }
        var e = Entry(tag: tag, frame: walk.physical & ~0xFFF, permissions: p)
        if let host {
            e.readTag = tag
            e.hostDelta = Int(bitPattern: UInt(bitPattern: host)) &- Int(truncatingIfNeeded: tag << 12)
            if writableHost && e.allows(.write, user: user) { e.writeTag = tag }
        }
        entry(tag, user: user).pointee = e
    }

    /// Paging off: linear page `tag` is physical page `physicalTag` (the A20 gate applied),
    /// at `host`; readable and, for RAM, writable.
    mutating func insertIdentity(tag: UInt64, physicalTag: UInt64, user: Bool, host: UnsafeMutableRawPointer, writable: Bool) {
        var e = Entry(tag: .max, frame: physicalTag << 12, permissions: 0)
        e.readTag = tag
        if writable { e.writeTag = tag }
        e.hostDelta = Int(bitPattern: UInt(bitPattern: host)) &- Int(truncatingIfNeeded: tag << 12)
        entry(tag, user: user).pointee = e
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
    /// A 2 or 4 MiB page.
    var large: Bool
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
        var largePage = false
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
                largePage = large
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
        // (SMEP: a supervisor may not fetch from a user page, whatever access this walk was for.)
        let smep = !user && userOK && st4 & (1 << 20) != 0
        return PageWalk(physical: physical, user: userOK, writable: writeOK, supervisorWritable: writeOK || !wp,
                        executable: execOK && !smep, dirty: dirty, global: global, large: largePage)
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
