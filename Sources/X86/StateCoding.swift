/// Writes the fields of a snapshot section (Documentation/Snapshots.md): fixed-width
/// little-endian integers, booleans as one byte, optionals as a presence byte and the
/// value, byte strings and text with a 32-bit length. Each device and the CPU state write
/// their own fields in a fixed order (no keys, no Codable); `StateReader` reads them back
/// in the same order.
public struct StateWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u16(_ v: UInt16) { append(v) }
    public mutating func u32(_ v: UInt32) { append(v) }
    public mutating func u64(_ v: UInt64) { append(v) }
    public mutating func i64(_ v: Int64) { append(UInt64(bitPattern: v)) }
    public mutating func int(_ v: Int) { append(UInt64(bitPattern: Int64(v))) }

    /// A presence byte, then the value when present.
    public mutating func optional<T>(_ v: T?, _ write: (inout StateWriter, T) -> Void) {
        bool(v != nil)
        if let v { write(&self, v) }
    }

    public mutating func data(_ v: some Collection<UInt8>) {
        u32(UInt32(v.count))
        bytes.append(contentsOf: v)
    }

    public mutating func text(_ v: String) { data(Array(v.utf8)) }

    /// Raw bytes, without a length.
    public mutating func raw(_ v: UnsafeRawBufferPointer) { bytes.append(contentsOf: v) }

    private mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// A snapshot that cannot be read: truncated, corrupted, of another version, or not one.
public struct SnapshotError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Reads what `StateWriter` wrote, checking every length against what is left.
public struct StateReader {
    public let bytes: [UInt8]
    public private(set) var offset = 0
    /// What is being read, for the error of a short section ("PIT section").
    public let what: String

    public init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    public var remaining: Int { bytes.count - offset }

    public mutating func u8() throws(SnapshotError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func bool() throws(SnapshotError) -> Bool {
        let v = try u8()
        guard v <= 1 else { throw SnapshotError("\(what): a boolean is \(v)") }
        return v == 1
    }

    public mutating func u16() throws(SnapshotError) -> UInt16 { try load() }
    public mutating func u32() throws(SnapshotError) -> UInt32 { try load() }
    public mutating func u64() throws(SnapshotError) -> UInt64 { try load() }
    public mutating func i64() throws(SnapshotError) -> Int64 { Int64(bitPattern: try load()) }
    public mutating func int() throws(SnapshotError) -> Int { Int(Int64(bitPattern: try load())) }

    /// An integer that must lie in `range` (an index, a count).
    public mutating func int(in range: ClosedRange<Int>) throws(SnapshotError) -> Int {
        let v = try int()
        guard range.contains(v) else { throw SnapshotError("\(what): value \(v) outside \(range.lowerBound)...\(range.upperBound)") }
        return v
    }

    public mutating func optional<T>(_ read: (inout StateReader) throws(SnapshotError) -> T) throws(SnapshotError) -> T? {
        try bool() ? try read(&self) : nil
    }

    public mutating func data() throws(SnapshotError) -> [UInt8] {
        let n = Int(try u32())
        try need(n)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    public mutating func text() throws(SnapshotError) -> String {
        let d = try data()
        guard let s = String(validating: d, as: UTF8.self) else { throw SnapshotError("\(what): text that is not UTF-8") }
        return s
    }

    /// `count` raw bytes.
    public mutating func raw(_ count: Int) throws(SnapshotError) -> ArraySlice<UInt8> {
        try need(count)
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    /// Everything was read: a section longer than its reader expects is as wrong as a short one.
    public func finish() throws(SnapshotError) {
        guard remaining == 0 else { throw SnapshotError("\(what): \(remaining) bytes more than expected") }
    }

    private func need(_ n: Int) throws(SnapshotError) {
        guard n >= 0, n <= remaining else { throw SnapshotError("\(what): ends early (\(remaining) bytes left, \(n) needed)") }
    }

    private mutating func load<T: FixedWidthInteger>() throws(SnapshotError) -> T {
        let size = MemoryLayout<T>.size
        try need(size)
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { out in
            for i in 0..<size { out[i] = bytes[offset + i] }
        }
        offset += size
        return T(littleEndian: v)
    }
}
