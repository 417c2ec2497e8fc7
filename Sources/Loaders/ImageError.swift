/// Why an image was rejected. Each case says what was wrong and where.
public enum ImageError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file could not be read.
    case unreadable(path: String, reason: String)
    /// The bytes are not a valid image of the format (truncated ELF, bad checksum, ...).
    case malformed(String)
    /// The image is valid but does not fit the machine (segment outside RAM, too large).
    case doesNotFit(String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): "cannot read \(path): \(reason)"
        case let .malformed(message): message
        case let .doesNotFit(message): message
        }
    }
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }

/// Little-endian field readers over a file's bytes that never read past the end.
struct ByteReader {
    let bytes: [UInt8]
    let what: String

    func u16(_ offset: Int) throws(ImageError) -> UInt16 { UInt16(truncatingIfNeeded: try value(offset, 2)) }
    func u32(_ offset: Int) throws(ImageError) -> UInt32 { UInt32(truncatingIfNeeded: try value(offset, 4)) }
    func u64(_ offset: Int) throws(ImageError) -> UInt64 { try value(offset, 8) }

    private func value(_ offset: Int, _ size: Int) throws(ImageError) -> UInt64 {
        guard offset >= 0, offset <= bytes.count - size else {
            throw .malformed("\(what) is truncated: needs \(size) bytes at offset \(hex(offset)), the file has \(bytes.count)")
        }
        var v: UInt64 = 0
        for i in (0..<size).reversed() { v = v << 8 | UInt64(bytes[offset + i]) }
        return v
    }

    /// `count` bytes at `offset`, or a truncation error naming `field`.
    func slice(_ offset: UInt64, _ count: UInt64, field: String) throws(ImageError) -> ArraySlice<UInt8> {
        guard offset <= UInt64(bytes.count), count <= UInt64(bytes.count) - offset else {
            throw .malformed("\(what) is truncated: \(field) needs bytes \(hex(offset))-\(hex(offset &+ count)) but the file has \(bytes.count)")
        }
        return bytes[Int(offset)..<Int(offset + count)]
    }
}
