/// The parts of an ELF executable a loader needs: its loadable segments and entry point.
struct ELFImage {
    struct Segment {
        var fileOffset: UInt64
        var fileSize: UInt64
        var physicalAddress: UInt64
        var virtualAddress: UInt64
        var memorySize: UInt64
    }

    static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]
    static let machineI386: UInt16 = 3
    static let machineX8664: UInt16 = 62

    let is64: Bool
    let machine: UInt16
    let entry: UInt64
    let segments: [Segment]

    static func isELF(_ bytes: [UInt8]) -> Bool { bytes.starts(with: magic) }

    /// Parses the header and PT_LOAD program headers, checking every offset against the file.
    init(_ bytes: [UInt8], what: String) throws(ImageError) {
        let r = ByteReader(bytes: bytes, what: what)
        guard bytes.count >= 16, Self.isELF(bytes) else { throw .malformed("\(what) is not an ELF file") }
        let elfClass = bytes[4]
        guard elfClass == 1 || elfClass == 2 else { throw .malformed("\(what) has an unknown ELF class \(elfClass)") }
        guard bytes[5] == 1 else { throw .malformed("\(what) is not little-endian ELF") }
        is64 = elfClass == 2
        let type = try r.u16(16)
        guard type == 2 || type == 3 else { throw .malformed("\(what) is not an executable (ELF type \(type))") }
        machine = try r.u16(18)
        let phoff: UInt64, phentsize: Int, phnum: Int
        if is64 {
            entry = try r.u64(24)
            phoff = try r.u64(32)
            phentsize = Int(try r.u16(54))
            phnum = Int(try r.u16(56))
        } else {
            entry = UInt64(try r.u32(24))
            phoff = UInt64(try r.u32(28))
            phentsize = Int(try r.u16(42))
            phnum = Int(try r.u16(44))
        }
        guard phnum > 0 else { throw .malformed("\(what) has no program headers") }
        guard phentsize >= (is64 ? 56 : 32) else { throw .malformed("\(what) has program headers of \(phentsize) bytes") }
        _ = try r.slice(phoff, UInt64(phentsize * phnum), field: "the program header table")
        var segments: [Segment] = []
        for i in 0..<phnum {
            let p = Int(phoff) + i * phentsize
            guard try r.u32(p) == 1 else { continue }   // PT_LOAD
            let s: Segment
            if is64 {
                s = Segment(fileOffset: try r.u64(p + 8), fileSize: try r.u64(p + 32),
                            physicalAddress: try r.u64(p + 24), virtualAddress: try r.u64(p + 16),
                            memorySize: try r.u64(p + 40))
            } else {
                s = Segment(fileOffset: UInt64(try r.u32(p + 4)), fileSize: UInt64(try r.u32(p + 16)),
                            physicalAddress: UInt64(try r.u32(p + 12)), virtualAddress: UInt64(try r.u32(p + 8)),
                            memorySize: UInt64(try r.u32(p + 20)))
            }
            guard s.fileSize <= s.memorySize else {
                throw .malformed("\(what): segment \(i) has a file size larger than its memory size")
            }
            _ = try r.slice(s.fileOffset, s.fileSize, field: "segment \(i)")
            segments.append(s)
        }
        guard !segments.isEmpty else { throw .malformed("\(what) has no loadable (PT_LOAD) segment") }
        self.segments = segments
    }

    /// The entry point as a physical address: an entry inside a segment whose virtual and
    /// physical addresses differ is moved with it.
    var physicalEntry: UInt64 {
        for s in segments where entry >= s.virtualAddress && entry - s.virtualAddress < s.memorySize {
            return s.physicalAddress + (entry - s.virtualAddress)
        }
        return entry
    }
}
