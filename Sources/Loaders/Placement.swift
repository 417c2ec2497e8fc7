import GuestMemory

/// Finds room in guest RAM for what the loader adds (page tables, GDT, Multiboot info,
/// modules) without ever covering a segment of the image.
struct Placement {
    private(set) var occupied: [Range<UInt64>] = []
    let memory: GuestMemoryMap

    init(memory: GuestMemoryMap) { self.memory = memory }

    mutating func reserve(_ range: Range<UInt64>) {
        if !range.isEmpty { occupied.append(range) }
    }

    /// The lowest `align`-aligned RAM range of `size` bytes at or above `from`, ending at
    /// or below `below`, that overlaps nothing reserved; it is then reserved.
    mutating func allocate(_ size: UInt64, align: UInt64 = 0x1000, from: UInt64 = 0x1000, below: UInt64 = .max,
                           what: String) throws(ImageError) -> UInt64 {
        var candidate = (from + align - 1) / align * align
        let limit = min(memory.ramEnd, below)
        while candidate < limit, size <= limit - candidate {
            let range = candidate..<(candidate + size)
            if let clash = occupied.first(where: { $0.overlaps(range) }) {
                candidate = (clash.upperBound + align - 1) / align * align
                continue
            }
            if memory.isRAM(candidate, length: size) {
                occupied.append(range)
                return candidate
            }
            // Skip to the next RAM region.
            guard let next = memory.regions.first(where: { $0.kind == .ram && $0.start > candidate }) else { break }
            candidate = (next.start + align - 1) / align * align
        }
        let where_ = below < memory.ramEnd ? " below \(below >> 30) GiB" : ""
        throw .doesNotFit("no room in guest RAM\(where_) for the \(what) (\(size) bytes) beside the image; give the guest more --mem")
    }
}
