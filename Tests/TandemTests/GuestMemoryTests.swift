import GuestMemory
import Testing

private let KiB: UInt64 = 1 << 10
private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// A region as (start, size, kind) for exact comparisons.
struct Span: Equatable, CustomStringConvertible {
    var start: UInt64
    var size: UInt64
    var kind: MemoryRegion.Kind
    var description: String { "\(kind) 0x\(String(start, radix: 16))+0x\(String(size, radix: 16))" }
}

private func spans(_ m: GuestMemoryMap) -> [Span] {
    m.regions.map { Span(start: $0.start, size: $0.size, kind: $0.kind) }
}

@Suite("Guest memory layout and access")
struct GuestMemoryTests {
    @Test("RAM is contiguous from 0 up to 3 GiB, the rest starts at 4 GiB",
          arguments: [
              (128 * MiB, [Span(start: 0, size: 128 * MiB, kind: .ram)]),
              (3 * GiB, [Span(start: 0, size: 3 * GiB, kind: .ram)]),
              (4 * GiB, [Span(start: 0, size: 3 * GiB, kind: .ram), Span(start: 4 * GiB, size: 1 * GiB, kind: .ram)]),
              (64 * GiB, [Span(start: 0, size: 3 * GiB, kind: .ram), Span(start: 4 * GiB, size: 61 * GiB, kind: .ram)]),
          ])
    func layout(ramSize: UInt64, expected: [Span]) throws {
        let m = try GuestMemoryMap(ramSize: ramSize)
        #expect(spans(m) == expected)
        #expect(m.ramSize == ramSize)
        #expect(m.ramEnd == expected.last!.start + expected.last!.size)
        // Nothing of the APIC range is RAM.
        #expect(!m.isRAM(PhysicalLayout.deviceWindow.lowerBound, length: 1))
    }

    @Test("a bios ROM sits below 1 MiB and below 4 GiB, splitting low RAM")
    func romLayout() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 128 << 10)
        #expect(spans(m) == [
            Span(start: 0, size: 0xE0000, kind: .ram),
            Span(start: 0xE0000, size: 128 * KiB, kind: .rom),
            Span(start: MiB, size: 127 * MiB, kind: .ram),
            Span(start: 4 * GiB - 128 * KiB, size: 128 * KiB, kind: .rom),
        ])
    }

    @Test("the two ROM views share host pages")
    func romAliasSharesPages() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 64 << 10)
        let low = try #require(m.hostPointer(0xF0000 + 0x1234, length: 1, kind: .rom))
        let high = try #require(m.hostPointer(0xFFFF_0000 + 0x1234, length: 1, kind: .rom))
        low.storeBytes(of: 0x5A, as: UInt8.self)
        #expect(high.load(as: UInt8.self) == 0x5A)
        high.storeBytes(of: 0xA5, as: UInt8.self)
        #expect(m.read(0xF1234, as: UInt8.self) == 0xA5)
        #expect(m.read(0xFFFF_1234, as: UInt8.self) == 0xA5)
        // The ROM is not RAM.
        #expect(m.hostPointer(0xF0000, length: 1, kind: .ram) == nil)
        #expect(!m.isRAM(0xF0000, length: 1))
    }

    @Test("loadROM fills both views; guest writes to the ROM are ignored")
    func romContents() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 64 << 10)
        let image = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 * 7) }
        m.loadROM(image)
        #expect(m.bytes(at: 0xF0000, count: 64 << 10) == image)
        #expect(m.bytes(at: 0xFFFF_0000, count: 64 << 10) == image)
        m.write(0xF0010, UInt32(0xDEAD_BEEF))
        m.write(0xFFFF_0010, UInt32(0xDEAD_BEEF))
        #expect(m.bytes(at: 0xF0010, count: 4) == Array(image[0x10..<0x14]))
    }

    @Test("unmapped memory reads as all ones, writes to it are ignored")
    func unmapped() throws {
        let m = try GuestMemoryMap(ramSize: 4 * GiB)
        for address in [3 * GiB, 3 * GiB + 0x1234, 0xFEE0_0000, 4 * GiB - 8, 5 * GiB, 1 << 50] {
            #expect(m.read(address, as: UInt8.self) == 0xFF)
            #expect(m.read(address, as: UInt16.self) == 0xFFFF)
            #expect(m.read(address, as: UInt32.self) == 0xFFFF_FFFF)
            #expect(m.read(address, as: UInt64.self) == .max)
            m.write(address, UInt64(0))
            #expect(m.read(address, as: UInt64.self) == .max)
        }
        #expect(m.region(containing: 3 * GiB) == nil)
    }

    @Test("RAM reads back what was written, little-endian")
    func ramReadWrite() throws {
        let m = try GuestMemoryMap(ramSize: 5 * GiB)
        #expect(m.read(0x1000, as: UInt64.self) == 0)   // fresh RAM is zero
        m.write(0x1000, UInt64(0x0102_0304_0506_0708))
        #expect(m.bytes(at: 0x1000, count: 8) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(m.read(0x1002, as: UInt16.self) == 0x0506)
        m.write(4 * GiB + 0x10, UInt32(0xCAFE_F00D))
        #expect(m.read(4 * GiB + 0x10, as: UInt32.self) == 0xCAFE_F00D)
        let p = try #require(m.hostPointer(4 * GiB + 0x10, length: 4, kind: .ram))
        #expect(p.loadUnaligned(as: UInt32.self) == 0xCAFE_F00D)
    }

    @Test("accesses crossing a region boundary split at it")
    func crossing() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB)
        let end = 128 * MiB
        // RAM then unmapped: the RAM half is written, the rest reads as all ones.
        m.write(end - 2, UInt32(0x4433_2211))
        #expect(m.read(end - 2, as: UInt32.self) == 0xFFFF_2211)
        #expect(m.bytes(at: end - 4, count: 8) == [0, 0, 0x11, 0x22, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(m.hostPointer(end - 2, length: 4) == nil)
        #expect(!m.isRAM(end - 2, length: 4))
        #expect(m.isRAM(end - 2, length: 2))

        // RAM then ROM: the ROM half keeps its contents.
        let r = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 64 << 10)
        r.loadROM([UInt8](repeating: 0xAB, count: 64 << 10))
        r.write(0xEFFFE, UInt32(0x4433_2211))
        #expect(r.read(0xEFFFE, as: UInt32.self) == 0xABAB_2211)

        // Low RAM, the 3-4 GiB hole, high RAM: each part behaves as its region.
        let big = try GuestMemoryMap(ramSize: 8 * GiB)
        big.write(3 * GiB - 4, UInt64(0x8877_6655_4433_2211))
        #expect(big.read(3 * GiB - 4, as: UInt64.self) == 0xFFFF_FFFF_4433_2211)
        big.write(4 * GiB - 4, UInt64(0x8877_6655_4433_2211))
        #expect(big.read(4 * GiB - 4, as: UInt64.self) == 0x8877_6655_FFFF_FFFF)
    }

    @Test("load places bytes in RAM and refuses anything else, writing nothing")
    func load() throws {
        let m = try GuestMemoryMap(ramSize: 128 * MiB, romSize: 64 << 10)
        try m.load([1, 2, 3], at: 0x7C00)
        #expect(m.bytes(at: 0x7C00, count: 3) == [1, 2, 3])

        // Past the end of RAM: nothing is written, not even the part inside RAM.
        #expect(throws: MemoryError.notRAM(address: 128 * MiB - 1, length: 2)) {
            try m.load([9, 9], at: 128 * MiB - 1)
        }
        #expect(m.read(128 * MiB - 1, as: UInt8.self) == 0)
        // Onto the ROM, or straddling RAM and ROM.
        #expect(throws: MemoryError.notRAM(address: 0xF0000, length: 1)) { try m.load([9], at: 0xF0000) }
        #expect(throws: MemoryError.notRAM(address: 0xEFFFF, length: 2)) { try m.load([9, 9], at: 0xEFFFF) }
        #expect(m.read(0xEFFFF, as: UInt8.self) == 0)
        // Unmapped, and wrapping around the address space.
        #expect(throws: MemoryError.notRAM(address: 3 << 30, length: 1)) { try m.load([9], at: 3 << 30) }
        #expect(throws: MemoryError.notRAM(address: .max, length: 2)) { try m.load([9, 9], at: .max) }
    }

    @Test("less than 1 MiB of RAM is refused")
    func tooSmall() throws {
        #expect(throws: MemoryError.tooSmall(MiB - 4096)) { try GuestMemoryMap(ramSize: MiB - 4096) }
        #expect(throws: MemoryError.tooSmall(0)) { try GuestMemoryMap(ramSize: 0) }
        #expect(try GuestMemoryMap(ramSize: MiB).ramEnd == MiB)
        #expect(MemoryError.tooSmall(1000).description == "--mem 1000 bytes is too small: a guest needs at least 1 MiB")
    }

    @Test("64 GiB of RAM costs nothing until touched")
    func lazyReservation() throws {
        let before = residentMemory()
        let m = try GuestMemoryMap(ramSize: 64 * GiB)
        for gib in stride(from: 0, to: 64, by: 4) where gib < 3 || gib >= 4 {
            m.write(UInt64(gib) * GiB + 8, UInt8(1))
        }
        #expect(m.read(60 * GiB + 8, as: UInt8.self) == 1)
        let after = residentMemory()
        let grown = after > before ? after - before : 0
        #expect(grown < 64 * MiB, "resident memory grew by \(grown >> 20) MiB")
    }
}
