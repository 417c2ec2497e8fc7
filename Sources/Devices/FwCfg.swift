import Synchronization
import X86

/// QEMU's firmware configuration interface (docs/specs/fw_cfg.rst), the traditional I/O
/// form: a 16-bit write to the selector at 0x510 picks an item and rewinds it; each byte
/// read of the data register at 0x511 returns the item's next byte, and 0 past its end or
/// for an item that does not exist. As in QEMU, the two ports are one 2-byte register
/// block: a 16-bit write at either selects, a byte write at either is a data write
/// (ignored: no item is writable), a byte read at either reads data; other widths are not
/// decoded (reads return 0, writes are dropped). The selector's write bit (0x4000) is
/// ignored when looking items up, its architecture bit (0x8000) is part of the key. There
/// is no DMA interface (0x514 is not claimed; the ID item says so): a device writing guest
/// RAM would also have to invalidate the interpreter's decoded code for it.
///
/// Items: the signature "QEMU" (0x0000), the feature ID (0x0001, bit 0: traditional
/// interface), a UUID of zeros (0x0002), the RAM size (0x0003, 64-bit LE), NOGRAPHIC
/// (0x0004, 1), the CPU count (0x0005) and maximum (0x000F, both 16-bit LE), and the file
/// directory (0x0019): a big-endian count, then per file a big-endian size, selector,
/// reserved word and a 56-byte NUL-padded name, sorted by name, the files at selectors
/// 0x0020 on. Files are added with `addFile(name:bytes:)` (e.g. ACPI tables, later).
public final class FwCfg: PortDevice, @unchecked Sendable {
    public static let selectorPort: UInt16 = 0x510
    public static let dataPort: UInt16 = 0x511
    public static let ports: ClosedRange<UInt16> = 0x510...0x511
    public static let firstFileSelector: UInt16 = 0x0020
    public static let fileDirectorySelector: UInt16 = 0x0019
    /// A file's name, without the NUL that ends it in the directory.
    public static let maximumNameLength = 55

    private struct State {
        var selector: UInt16 = 0
        var offset = 0
        var items: [UInt16: [UInt8]] = [:]
        var files: [(name: String, bytes: [UInt8])] = []
    }
    private let state = Mutex(State())

    public init(ramSize: UInt64, cpuCount: Int) {
        func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        let cpus = UInt64(min(max(cpuCount, 1), 0xFFFF))
        state.withLock { s in
            s.items = [
                0x0000: Array("QEMU".utf8),
                0x0001: le(1, 4),
                0x0002: [UInt8](repeating: 0, count: 16),
                0x0003: le(ramSize, 8),
                0x0004: le(1, 2),
                0x0005: le(cpus, 2),
                0x000F: le(cpus, 2),
            ]
            Self.rebuildDirectory(&s)
        }
    }

    /// Adds (or replaces) the file `name` (at most 55 bytes of UTF-8). Files are kept sorted
    /// by name and numbered from 0x0020 in that order, as QEMU does.
    public func addFile(name: String, bytes: [UInt8]) {
        precondition(!name.isEmpty && name.utf8.count <= Self.maximumNameLength, "fw_cfg file name \"\(name)\" is empty or longer than 55 bytes")
        state.withLock { s in
            if let i = s.files.firstIndex(where: { $0.name == name }) {
                s.files[i].bytes = bytes
            } else {
                precondition(s.files.count < 0x3FFF - Int(Self.firstFileSelector), "fw_cfg: too many files")
                s.files.append((name, bytes))
                s.files.sort { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
            }
            Self.rebuildDirectory(&s)
        }
    }

    private static func rebuildDirectory(_ s: inout State) {
        func be(_ v: Int, _ n: Int) -> [UInt8] { (0..<n).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        for key in s.items.keys where key >= firstFileSelector && key & 0x8000 == 0 { s.items[key] = nil }
        var directory = be(s.files.count, 4)
        for (i, f) in s.files.enumerated() {
            let selector = Int(firstFileSelector) + i
            s.items[UInt16(selector)] = f.bytes
            var name = Array(f.name.utf8)
            name += [UInt8](repeating: 0, count: 56 - name.count)
            directory += be(f.bytes.count, 4) + be(selector, 2) + [0, 0] + name
        }
        s.items[fileDirectorySelector] = directory
    }

    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        guard size == 1 else { return 0 }
        return state.withLock { s -> UInt32 in
            guard let item = s.items[s.selector & 0xBFFF], s.offset < item.count else { return 0 }
            defer { s.offset += 1 }
            return UInt32(item[s.offset])
        }
    }

    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        guard size == 2 else { return }   // byte writes: data, ignored; 32-bit: not decoded
        state.withLock { s in
            s.selector = UInt16(truncatingIfNeeded: value)
            s.offset = 0
        }
    }
}

// MARK: Snapshot

extension FwCfg {
    /// The selector, the read offset and the files (the fixed items follow from the
    /// machine's RAM size and CPU count, which the snapshot rebuilds it with).
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        w.u16(s.selector); w.int(s.offset)
        w.u32(UInt32(s.files.count))
        for f in s.files { w.text(f.name); w.data(f.bytes) }
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let selector = try r.u16(), offset = try r.int(in: 0...Int(Int32.max))
        let count = Int(try r.u32())
        for _ in 0..<count {
            let name = try r.text(), bytes = try r.data()
            guard !name.isEmpty, name.utf8.count <= Self.maximumNameLength else { throw SnapshotError("\(r.what): fw_cfg file name \"\(name)\"") }
            addFile(name: name, bytes: bytes)
        }
        state.withLock { s in
            s.selector = selector
            s.offset = offset
        }
    }
}
