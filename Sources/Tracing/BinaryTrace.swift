import X86

/// The binary trace format, version 1 (Documentation/Traces.md is its specification).
///
/// A file is a header and a sequence of chunks. Each chunk holds the records of one vCPU,
/// in that vCPU's order; a vCPU hands a chunk to the writer thread when it is full, so
/// several vCPUs' chunks interleave in the file. Records are byte-aligned, with unsigned
/// LEB128 integers, so a typical instruction record is 10-20 bytes.
public enum BinaryTrace {
    public static let magic: [UInt8] = Array("TANDEMTR".utf8)
    public static let version: UInt32 = 1
    /// Payload length (u32 LE) and vCPU (u32 LE; `noVCPU` for records of no vCPU).
    static let chunkHeaderSize = 8
    static let noVCPU: UInt32 = 0xFFFF_FFFF
    /// A chunk larger than this is damage, not data.
    static let maxChunk = 1 << 30

    /// The header: magic, version, and the register names an instruction record's
    /// changed-register indices refer to (CPUState.fieldNames).
    static var header: [UInt8] {
        var h = magic
        appendU32(&h, version)
        appendU32(&h, UInt32(CPUState.fieldNames.count))
        for name in CPUState.fieldNames {
            h.append(UInt8(name.utf8.count))
            h += Array(name.utf8)
        }
        return h
    }

    static func appendU32(_ out: inout [UInt8], _ v: UInt32) {
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }
}

/// Record kinds: the first byte of every record.
enum RecordKind: UInt8 {
    case instruction = 1, event = 2, mode = 3, exit = 4, post = 5
}

/// Execution modes as one byte.
extension ExecutionMode {
    static let byCode: [ExecutionMode] = [.real, .virtual8086, .protected16, .protected32, .long64]
    var code: UInt8 {
        switch self {
        case .real: 0
        case .virtual8086: 1
        case .protected16: 2
        case .protected32: 3
        case .long64: 4
        }
    }
}

extension InterruptEvent.Kind {
    static let byCode: [InterruptEvent.Kind] = [.exception, .software, .external]
    var code: UInt8 {
        switch self {
        case .exception: 0
        case .software: 1
        case .external: 2
        }
    }
}

/// Appends to a chunk's bytes; the caller has made room (`TraceChunk.reserve`).
struct ByteWriter {
    var p: UnsafeMutablePointer<UInt8>

    @inline(__always) mutating func byte(_ b: UInt8) {
        p.pointee = b
        p += 1
    }

    @inline(__always) mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            p.pointee = UInt8(truncatingIfNeeded: v) | 0x80
            p += 1
            v >>= 7
        }
        p.pointee = UInt8(truncatingIfNeeded: v)
        p += 1
    }

    mutating func bytes(_ source: UnsafeRawPointer, _ count: Int) {
        UnsafeMutableRawPointer(p).copyMemory(from: source, byteCount: count)
        p += count
    }

    /// An instruction's bytes (`count` ≤ 15 of the 16 in `words`) as two 8-byte stores,
    /// no call; the record's reservation leaves room for all 16.
    @inline(__always) mutating func instructionBytes(_ words: (UInt64, UInt64), _ count: Int) {
        UnsafeMutableRawPointer(p).storeBytes(of: words.0, as: UInt64.self)
        (UnsafeMutableRawPointer(p) + 8).storeBytes(of: words.1, as: UInt64.self)
        p += count
    }

    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        varint(UInt64(utf8.count))
        utf8.withUnsafeBytes { bytes($0.baseAddress!, $0.count) }
    }

    /// The most bytes `varint` writes.
    static let maxVarint = 10
}

/// Why a trace file cannot be read (`tandem trace`, status 201).
public struct TraceFileError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Reads a chunk's records; every read is bounds-checked, so damage is an error, never a crash.
struct ByteReader {
    let base: UnsafePointer<UInt8>
    let end: Int
    var offset: Int

    var atEnd: Bool { offset >= end }

    mutating func byte() throws(TraceFileError) -> UInt8 {
        guard offset < end else { throw TraceFileError("a record runs past the end of its chunk") }
        defer { offset += 1 }
        return base[offset]
    }

    mutating func varint() throws(TraceFileError) -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            guard shift < 64 else { throw TraceFileError("an integer longer than 64 bits") }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }

    mutating func bounded(_ limit: UInt64, _ what: String) throws(TraceFileError) -> Int {
        let v = try varint()
        guard v <= limit else { throw TraceFileError("\(what) \(v) is out of range") }
        return Int(v)
    }

    mutating func bytes(_ count: Int) throws(TraceFileError) -> [UInt8] {
        guard count <= end - offset else { throw TraceFileError("a record runs past the end of its chunk") }
        defer { offset += count }
        return Array(UnsafeBufferPointer(start: base + offset, count: count))
    }

    mutating func string() throws(TraceFileError) -> String {
        let n = try bounded(1 << 20, "a string length")
        return String(decoding: try bytes(n), as: UTF8.self)
    }
}
