#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The one place that knows the physical memory layout of a Tandem guest.
///
/// - RAM starts at 0 and runs contiguously up to min(size, 3 GiB); the rest starts at 4 GiB.
/// - A `bios` ROM sits at the top of the first MiB and again at the top of 4 GiB
///   (both views share the same host pages).
/// - Everything else is unmapped: reads return all ones, writes are ignored.
public enum PhysicalLayout {
    public static let lowRAMLimit: UInt64 = 3 << 30
    public static let highRAMStart: UInt64 = 4 << 30
    public static let firstMiB: UInt64 = 1 << 20
    /// The only physical range where MMIO devices live (the IOAPIC and local APICs, and
    /// whatever joins them): an access here reaches the device model. Memory that is
    /// neither RAM, ROM nor in this window is unmapped: it reads as all ones and ignores
    /// writes, without involving any device.
    public static let deviceWindow: ClosedRange<UInt64> = 0xFEC0_0000...0xFEFF_FFFF
    /// Accepted ROM sizes for `bios` images.
    public static let romSizes: Set<Int> = [64 << 10, 128 << 10, 256 << 10]
}

/// One contiguous range of guest-physical memory backed by one host mapping.
public struct MemoryRegion: Sendable {
    public enum Kind: Sendable { case ram, rom }
    /// Guest-physical address of the first byte.
    public let start: UInt64
    public let size: UInt64
    public let kind: Kind
    /// Host address of the first byte (owned by `GuestMemoryMap`).
    public nonisolated(unsafe) let host: UnsafeMutableRawPointer

    public var end: UInt64 { start + size }
    public func contains(_ address: UInt64) -> Bool { address >= start && address - start < size }
}

public enum MemoryError: Error, CustomStringConvertible, Equatable {
    case notRAM(address: UInt64, length: UInt64)
    case tooSmall(UInt64)
    case reserveFailed(size: UInt64, errno: Int32)

    public var description: String {
        switch self {
        case let .notRAM(address, length):
            let last = length == 0 ? address : address &+ length &- 1
            return "0x\(String(address, radix: 16))-0x\(String(last, radix: 16)) is not in guest RAM"
        case let .tooSmall(size):
            return "--mem \(size) bytes is too small: a guest needs at least 1 MiB"
        case let .reserveFailed(size, errno):
            return "cannot reserve \(size) bytes of address space for guest memory: \(String(cString: strerror(errno)))"
        }
    }
}

/// Guest-physical memory: RAM and ROM regions behind one checked address space.
///
/// The host pages are reserved with `mmap(MAP_NORESERVE)`, so a guest may be given more
/// RAM than the host has and only the pages it touches cost anything. The same regions
/// are registered with KVM as memslots and read directly by the interpreter, so a vCPU
/// can move between backends without copying.
public final class GuestMemoryMap: @unchecked Sendable {
    /// RAM and ROM regions, sorted by address, never overlapping.
    public let regions: [MemoryRegion]
    public let ramSize: UInt64
    /// The A20 gate (port 0x92): when off, physical address bit 20 is forced to 0, as on
    /// PCs. Honoured by the interpreter; KVM cannot mask it (see Documentation/KVM.md).
    public let a20Enabled = Atomic<Bool>(true)
    private let mappings: [(UnsafeMutableRawPointer, Int)]

    /// Lays out `ramSize` bytes of RAM and, for a `bios` image, its ROM.
    public init(ramSize: UInt64, romSize: Int = 0) throws(MemoryError) {
        guard ramSize >= PhysicalLayout.firstMiB else { throw .tooSmall(ramSize) }
        var mappings: [(UnsafeMutableRawPointer, Int)] = []
        func reserve(_ size: UInt64) throws(MemoryError) -> UnsafeMutableRawPointer {
            // Sizes past Int.max cannot be mapped: report them as mmap would, do not trap.
            guard let length = Int(exactly: size) else {
                for (q, n) in mappings { munmap(q, n) }
                throw .reserveFailed(size: size, errno: ENOMEM)
            }
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let p, p != MAP_FAILED else {
                for (q, n) in mappings { munmap(q, n) }
                throw .reserveFailed(size: size, errno: errno)
            }
            mappings.append((p, Int(size)))
            return p
        }
        var regions: [MemoryRegion] = []
        let lowSize = min(ramSize, PhysicalLayout.lowRAMLimit)
        let low = try reserve(lowSize)
        if romSize > 0 {
            let romStart = PhysicalLayout.firstMiB - UInt64(romSize)
            let rom = try reserve(UInt64(romSize))
            regions.append(MemoryRegion(start: 0, size: romStart, kind: .ram, host: low))
            regions.append(MemoryRegion(start: romStart, size: UInt64(romSize), kind: .rom, host: rom))
            if lowSize > PhysicalLayout.firstMiB {
                regions.append(MemoryRegion(
                    start: PhysicalLayout.firstMiB, size: lowSize - PhysicalLayout.firstMiB, kind: .ram,
                    host: low + Int(PhysicalLayout.firstMiB)))
            }
        } else {
            regions.append(MemoryRegion(start: 0, size: lowSize, kind: .ram, host: low))
        }
        if ramSize > lowSize {
            let high = try reserve(ramSize - lowSize)
            regions.append(MemoryRegion(start: PhysicalLayout.highRAMStart, size: ramSize - lowSize, kind: .ram, host: high))
        }
        if romSize > 0, let rom = regions.first(where: { $0.kind == .rom }) {
            regions.append(MemoryRegion(
                start: (1 << 32) - UInt64(romSize), size: UInt64(romSize), kind: .rom, host: rom.host))
        }
        self.regions = regions.sorted { $0.start < $1.start }
        self.ramSize = ramSize
        self.mappings = mappings
    }

    deinit {
        for (p, n) in mappings { munmap(p, n) }
    }

    /// Guest-physical address one past the last byte of RAM.
    public var ramEnd: UInt64 { regions.filter { $0.kind == .ram }.map(\.end).max() ?? 0 }

    /// The region containing `address`, if any.
    @inline(__always)
    public func region(containing address: UInt64) -> MemoryRegion? {
        for r in regions where r.contains(address) { return r }
        return nil
    }

    /// A host pointer to `length` bytes at `address` when they lie inside one region of `kind`.
    public func hostPointer(_ address: UInt64, length: UInt64, kind: MemoryRegion.Kind? = nil) -> UnsafeMutableRawPointer? {
        guard let r = region(containing: address), kind == nil || r.kind == kind,
              length <= r.end - address else { return nil }
        return r.host + Int(address - r.start)
    }

    /// True when every byte of the range is RAM.
    public func isRAM(_ address: UInt64, length: UInt64) -> Bool {
        var a = address
        var left = length
        while left > 0 {
            guard let r = region(containing: a), r.kind == .ram else { return false }
            let n = min(left, r.end - a)
            a += n
            left -= n
        }
        return true
    }

    /// Copies guest bytes into `buffer`; bytes outside RAM and ROM read as 0xFF.
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        var offset = 0
        while offset < buffer.count {
            let a = address &+ UInt64(offset)
            let left = buffer.count - offset
            if let r = region(containing: a) {
                let n = Int(min(UInt64(left), r.end - a))
                (buffer.baseAddress! + offset).copyMemory(from: r.host + Int(a - r.start), byteCount: n)
                offset += n
            } else {
                buffer[offset] = 0xFF
                offset += 1
            }
        }
    }

    /// Copies `bytes` into guest RAM; bytes aimed at ROM or unmapped memory are dropped.
    public func write(_ address: UInt64, from bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let a = address &+ UInt64(offset)
            let left = bytes.count - offset
            if let r = region(containing: a) {
                let n = Int(min(UInt64(left), r.end - a))
                if r.kind == .ram {
                    (r.host + Int(a - r.start)).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
                }
                offset += n
            } else {
                offset += 1
            }
        }
    }

    /// Reads `count` bytes (all-ones outside memory).
    public func bytes(at address: UInt64, count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            read(address, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    /// Reads a little-endian integer (all-ones outside memory).
    public func read<T: FixedWidthInteger>(_ address: UInt64, as type: T.Type = T.self) -> T {
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { read(address, into: $0) }
        return T(littleEndian: value)
    }

    /// Writes a little-endian integer (ignored outside RAM).
    public func write<T: FixedWidthInteger>(_ address: UInt64, _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { write(address, from: $0) }
    }

    /// Places loader data: every byte must land in RAM, or nothing is written.
    public func load(_ bytes: some Collection<UInt8>, at address: UInt64) throws(MemoryError) {
        let length = UInt64(bytes.count)
        guard address.addingReportingOverflow(length).overflow == false, isRAM(address, length: length) else {
            throw .notRAM(address: address, length: length)
        }
        Array(bytes).withUnsafeBytes { write(address, from: $0) }
    }

    /// Sets `count` bytes of RAM at `address` (inside one region) to zero without touching
    /// pages that nothing has touched: whole pages go back to the host (`MADV_DONTNEED` on
    /// this private anonymous mapping makes them fresh zero pages again, costing nothing
    /// until read or written), and only the partial pages at either end are written. So a
    /// 2 GiB .bss costs no host memory. False when the range is not inside one RAM region.
    public func zero(_ address: UInt64, count: UInt64) -> Bool {
        guard let start = hostPointer(address, length: count, kind: .ram) else { return false }
        let page = UInt(getpagesize())
        let first = UInt(bitPattern: start), end = first + UInt(count)
        let wholeStart = (first + page - 1) & ~(page - 1), wholeEnd = end & ~(page - 1)
        guard wholeStart < wholeEnd else {
            start.initializeMemory(as: UInt8.self, repeating: 0, count: Int(count))
            return true
        }
        start.initializeMemory(as: UInt8.self, repeating: 0, count: Int(wholeStart - first))
        if madvise(UnsafeMutableRawPointer(bitPattern: wholeStart), Int(wholeEnd - wholeStart), MADV_DONTNEED) != 0 {
            UnsafeMutableRawPointer(bitPattern: wholeStart)!.initializeMemory(as: UInt8.self, repeating: 0, count: Int(wholeEnd - wholeStart))
        }
        UnsafeMutableRawPointer(bitPattern: wholeEnd)!.initializeMemory(as: UInt8.self, repeating: 0, count: Int(end - wholeEnd))
        return true
    }

    /// Fills the ROM (both views) with `image`; only loaders call this.
    public func loadROM(_ image: [UInt8]) {
        guard let r = regions.first(where: { $0.kind == .rom }) else { return }
        image.withUnsafeBytes { r.host.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, Int(r.size))) }
    }
}
