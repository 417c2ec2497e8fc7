#if canImport(Glibc)
import Glibc
#endif
import HostOS
import Loaders
import X86

/// A snapshot file (Documentation/Snapshots.md): a 16-byte header — the magic
/// "TANDEMSN", the format version and the number of sections, little-endian like every
/// integer in the file — then sections, each a 4-byte ASCII tag, a 64-bit payload length,
/// the payload's CRC-32 (IEEE, zlib's) and the payload. Version 1's sections, in this
/// order: CONF, one VCPU per vCPU, CMSR, PIC, PIT, RTC, UART, KBC, ACPI, FWCF, APIC, RAM.
///
/// Reading checks everything before anything is used: the magic, the version, each
/// section's tag, length and checksum, the order and the count, and that the file ends
/// after the last section; each section's reader then checks its own length exactly.
public struct SnapshotFile: Sendable {
    public static let magic: [UInt8] = Array("TANDEMSN".utf8)
    public static let version: UInt32 = 1
    /// The tags of version 1 after the CONF and VCPU sections, in order.
    static let deviceTags = ["CMSR", "PIC ", "PIT ", "RTC ", "UART", "KBC ", "ACPI", "FWCF", "APIC"]
    /// The largest section a reader accepts (the RAM section of a 4 TiB guest would be
    /// larger, but such a snapshot could not be read into memory either).
    static let maximumSection: UInt64 = 1 << 40

    /// The machine's configuration (CONF).
    public var configuration: SnapshotConfiguration
    /// Every vCPU's state (VCPU), run state included.
    public var states: [CPUState]
    /// The other sections' payloads by tag.
    public var sections: [String: [UInt8]]

    public init(configuration: SnapshotConfiguration, states: [CPUState], sections: [String: [UInt8]]) {
        self.configuration = configuration
        self.states = states
        self.sections = sections
    }

    /// The payload of section `tag` as a reader.
    func reader(_ tag: String) -> StateReader {
        StateReader(sections[tag] ?? [], what: "the snapshot's \(tag.filter { $0 != " " }) section")
    }

    // MARK: Writing

    /// Writes the file through a temporary file in the same directory, renamed over `path`
    /// once complete: a reader never sees half a snapshot.
    public func write(to path: String) throws(SnapshotError) {
        var tagged: [(String, [UInt8])] = []
        var conf = StateWriter()
        configuration.encode(&conf)
        tagged.append(("CONF", conf.bytes))
        for s in states {
            var w = StateWriter()
            s.encode(&w)
            tagged.append(("VCPU", w.bytes))
        }
        for tag in Self.deviceTags + ["RAM "] { tagged.append((tag, sections[tag] ?? [])) }
        var header = StateWriter()
        Self.magic.withUnsafeBytes { header.raw(UnsafeRawBufferPointer(rebasing: $0.prefix(8))) }
        header.u32(Self.version)
        header.u32(UInt32(tagged.count))
        let temporary = path + ".partial"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SnapshotError("cannot write the snapshot \(path): \(Errno.current)") }
        var ok = true
        var failure = ""
        func put(_ bytes: [UInt8]) {
            guard ok else { return }
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { ok = false; failure = Errno.current.description; return }
                offset += n
            }
        }
        put(header.bytes)
        for (tag, payload) in tagged {
            var h = StateWriter()
            Array(tag.utf8).withUnsafeBytes { h.raw(UnsafeRawBufferPointer(rebasing: $0.prefix(4))) }
            h.u64(UInt64(payload.count))
            h.u32(CRC32.checksum(payload))
            put(h.bytes)
            put(payload)
        }
        if ok && fsync(fd) != 0 { ok = false; failure = Errno.current.description }
        close(fd)
        guard ok, rename(temporary, path) == 0 else {
            if ok { failure = Errno.current.description }
            unlink(temporary)
            throw SnapshotError("cannot write the snapshot \(path): \(failure)")
        }
    }

    // MARK: Reading

    public static func read(from path: String) throws(SnapshotError) -> SnapshotFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw SnapshotError("cannot read the snapshot \(path): \(Errno.current)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SnapshotError("cannot read the snapshot \(path): \(Errno.current)") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw SnapshotError("the snapshot \(path) is not a regular file") }
        func readExactly(_ count: Int) throws(SnapshotError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            var offset = 0
            while offset < count {
                let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + offset, count - offset) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw SnapshotError(n == 0 ? "the snapshot \(path) is truncated" : "cannot read the snapshot \(path): \(Errno.current)")
                }
                offset += n
            }
            return bytes
        }
        var header = StateReader(try readExactly(16), what: "the snapshot's header")
        guard Array(try header.raw(8)) == magic else { throw SnapshotError("\(path) is not a Tandem snapshot (no TANDEMSN magic)") }
        let version = try header.u32()
        guard version == Self.version else {
            throw SnapshotError("the snapshot \(path) has format version \(version); this Tandem reads version \(Self.version)")
        }
        let count = Int(try header.u32())
        var configuration: SnapshotConfiguration? = nil
        var states: [CPUState] = []
        var sections: [String: [UInt8]] = [:]
        var expected: [String] = ["CONF"]
        var seen = 0
        while seen < count {
            var h = StateReader(try readExactly(16), what: "a section header")
            let tag = String(decoding: try h.raw(4), as: UTF8.self)
            let length = try h.u64(), crc = try h.u32()
            let want = expected.first ?? "the end of the file"
            guard tag == want || (tag == "VCPU" && want != "CONF" && states.count < (configuration?.cpus ?? 0)) else {
                throw SnapshotError("the snapshot \(path) has section '\(tag)' where '\(want)' belongs (section \(seen + 1))")
            }
            guard length <= maximumSection, length <= UInt64(st.st_size) else {
                throw SnapshotError("the snapshot \(path) is truncated or corrupted: section '\(tag)' claims \(length) bytes")
            }
            let payload = try readExactly(Int(length))
            guard CRC32.checksum(payload) == crc else {
                throw SnapshotError("the snapshot \(path) is corrupted: section '\(tag)' fails its checksum")
            }
            do throws(SnapshotError) {
                switch tag {
                case "CONF":
                    var r = StateReader(payload, what: "the snapshot's CONF section")
                    let c = try SnapshotConfiguration(decoding: &r)
                    try r.finish()
                    configuration = c
                    expected = ["VCPU"]
                case "VCPU":
                    var r = StateReader(payload, what: "the snapshot's VCPU section \(states.count)")
                    states.append(try CPUState(decoding: &r))
                    try r.finish()
                    if states.count == configuration!.cpus { expected = deviceTags + ["RAM "] }
                default:
                    sections[tag] = payload
                    expected.removeFirst()
                }
            } catch {
                throw SnapshotError("the snapshot \(path) is corrupted: \(error.description)")
            }
            seen += 1
        }
        guard let configuration, expected.isEmpty else {
            throw SnapshotError("the snapshot \(path) is incomplete: it ends before section '\(expected.first ?? "CONF")'")
        }
        var extra: UInt8 = 0
        guard Glibc.read(fd, &extra, 1) == 0 else { throw SnapshotError("the snapshot \(path) has bytes after its last section") }
        return SnapshotFile(configuration: configuration, states: states, sections: sections)
    }
}

/// What a snapshot needs to rebuild the machine (the CONF section).
public struct SnapshotConfiguration: Sendable, Equatable {
    public var memorySize: UInt64
    /// The ROM region's size (a `bios` image's), 0 without one.
    public var romSize: Int
    public var cpus: Int
    public var cpuModel: String
    public var x2APIC: Bool
    /// The image's format, for the loader-independent parts of the machine.
    public var format: ImageFormat
    public var clock: ClockKind
    /// Machine time (nanoseconds) when the snapshot was taken: the restored clock goes on
    /// from it, and timers are stored as the time left after it.
    public var machineTime: UInt64
    public var a20: Bool
    /// The engine the machine ran on (informative: a snapshot restores on either).
    public var backend: String
    /// The CPUID feature words the guest saw (leaf 1 ECX/EDX, leaf 7 EBX/ECX/EDX, leaf
    /// 0x80000001 ECX/EDX): a machine that would offer other features is refused.
    public var features: [UInt32]

    func encode(_ w: inout StateWriter) {
        w.u64(memorySize); w.int(romSize); w.u32(UInt32(cpus)); w.text(cpuModel); w.bool(x2APIC)
        w.text(format.rawValue); w.text(clock.rawValue); w.u64(machineTime); w.bool(a20); w.text(backend)
        w.u32(UInt32(features.count))
        for f in features { w.u32(f) }
    }

    init(decoding r: inout StateReader) throws(SnapshotError) {
        memorySize = try r.u64()
        romSize = try r.int(in: 0...(1 << 20))
        let n = Int(try r.u32())
        guard (1...MachineConfiguration.maxCPUs).contains(n) else { throw SnapshotError("\(r.what): \(n) vCPUs") }
        cpus = n
        cpuModel = try r.text(); x2APIC = try r.bool()
        let formatName = try r.text()
        guard let format = ImageFormat(rawValue: formatName) else { throw SnapshotError("\(r.what): image format '\(formatName)'") }
        self.format = format
        let clockName = try r.text()
        guard let clock = ClockKind(rawValue: clockName) else { throw SnapshotError("\(r.what): clock '\(clockName)'") }
        self.clock = clock
        machineTime = try r.u64(); a20 = try r.bool(); backend = try r.text()
        let count = Int(try r.u32())
        guard count <= 16 else { throw SnapshotError("\(r.what): \(count) feature words") }
        features = []
        for _ in 0..<count { features.append(try r.u32()) }
    }

    init(memorySize: UInt64, romSize: Int, cpus: Int, cpuModel: String, x2APIC: Bool, format: ImageFormat, clock: ClockKind,
         machineTime: UInt64, a20: Bool, backend: String, features: [UInt32]) {
        self.memorySize = memorySize; self.romSize = romSize; self.cpus = cpus; self.cpuModel = cpuModel; self.x2APIC = x2APIC
        self.format = format; self.clock = clock; self.machineTime = machineTime; self.a20 = a20; self.backend = backend
        self.features = features
    }

    /// The feature words of `cpu` that `features` records.
    static func features(of cpu: GuestCPU) -> [UInt32] {
        let l1 = cpu.query(leaf: 1, subleaf: 0, vcpu: 0), l7 = cpu.query(leaf: 7, subleaf: 0, vcpu: 0)
        let e1 = cpu.query(leaf: 0x8000_0001, subleaf: 0, vcpu: 0)
        // Leaf 1 EBX holds the APIC ID and EDX/ECX are all features; leaf 1 ECX bit 27
        // (OSXSAVE) follows CR4, which is the guest's: left out.
        return [l1.2 & ~(1 << 27), l1.3, l7.1, l7.2 & ~(1 << 4), l7.3, e1.2, e1.3]
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG compute it).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            bytes.withUnsafeBufferPointer { b in
                for byte in b { c = t[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
            }
        }
        return c ^ 0xFFFF_FFFF
    }
}
