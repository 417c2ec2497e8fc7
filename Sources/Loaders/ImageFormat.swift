/// The image formats of the guest contract.
public enum ImageFormat: String, CaseIterable, Sendable {
    case auto, boot, bios, multiboot, elf64, linux

    /// Raw `boot` images are at most this large.
    public static let maxBootImage = 64 << 10
    static let multiboot1Magic: UInt32 = 0x1BAD_B002
    static let multibootSearchLimit = 8192

    /// Picks the format of `bytes` (named `name`) as `--format auto` does:
    /// a Linux setup header (boot flag 0xAA55 at 0x1FE, "HdrS" at 0x202) → linux; a Multiboot header → multiboot; ELF64 x86-64 → elf64; a 64/128/256 KiB `*.rom`/`*.bin`
    /// with a far jump at its reset vector → bios; any other raw file up to 64 KiB → boot.
    public static func detect(_ bytes: [UInt8], name: String) throws(ImageError) -> ImageFormat {
        if bytes.isEmpty { throw .malformed("\(name) is empty") }
        // Before Multiboot: a bzImage's compressed payload could hold the Multiboot magic by chance.
        if Linux.hasSetupHeader(bytes) { return .linux }
        if multibootHeaderOffset(bytes) != nil { return .multiboot }
        if ELFImage.isELF(bytes) {
            guard bytes.count > 18 else { throw .malformed("\(name) is a truncated ELF file (\(bytes.count) bytes)") }
            if bytes[4] == 2 { return .elf64 }
            throw .malformed("\(name) is a 32-bit ELF file without a Multiboot header; Tandem loads 32-bit kernels through Multiboot")
        }
        if looksLikeROM(bytes, name: name) { return .bios }
        if bytes.count > maxBootImage {
            throw .doesNotFit("\(name) is \(bytes.count) bytes: a raw boot image is at most 64 KiB (a BIOS ROM is 64, 128 or 256 KiB named *.rom or *.bin with a far jump at its reset vector)")
        }
        return .boot
    }

    /// The offset of a Multiboot v1 magic in the first 8 KiB (32-bit aligned), if any.
    static func multibootHeaderOffset(_ bytes: [UInt8]) -> Int? {
        let limit = min(bytes.count, multibootSearchLimit) - 4
        guard limit >= 0 else { return nil }
        for offset in stride(from: 0, through: limit, by: 4) {
            let v = UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
            if v == multiboot1Magic { return offset }
        }
        return nil
    }

    static func looksLikeROM(_ bytes: [UInt8], name: String) -> Bool {
        let lower = name.lowercased()
        guard lower.hasSuffix(".rom") || lower.hasSuffix(".bin"), hasResetJump(bytes) else { return false }
        return true
    }

    /// True when the 16 bytes at the reset vector hold a far jump (0xEA, possibly after prefixes or `cli`).
    static func hasResetJump(_ bytes: [UInt8]) -> Bool {
        guard GuestMemoryROMSizes.contains(bytes.count) else { return false }
        let vector = bytes.count - 16
        for i in 0..<11 {
            let b = bytes[vector + i]
            if b == 0xEA { return true }
            if b != 0xFA && b != 0x90 && b != 0x2E && b != 0x66 { return false }   // cli, nop, cs:, o32
        }
        return false
    }
}

let GuestMemoryROMSizes: Set<Int> = [64 << 10, 128 << 10, 256 << 10]
