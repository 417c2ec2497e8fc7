#if canImport(Glibc)
import Glibc
#endif
import X86

/// Decodes records of the binary format.
enum RecordDecoder {
    /// Calls `body` with each record of a chunk's payload and its byte range, until it
    /// returns false. Damage is an error (`TraceFileError`), never a crash.
    static func decode(_ base: UnsafePointer<UInt8>, count: Int, vcpu rawVCPU: UInt32, fieldCount: Int,
                       _ body: (TraceRecord, Range<Int>) -> Bool) throws(TraceFileError) {
        var r = ByteReader(base: base, end: count, offset: 0)
        let vcpu = Int(rawVCPU)
        while !r.atEnd {
            let start = r.offset
            let record: TraceRecord
            guard let kind = RecordKind(rawValue: try r.byte()) else {
                throw TraceFileError("unknown record kind \(base[start])")
            }
            guard rawVCPU != BinaryTrace.noVCPU || kind == .post else { throw TraceFileError("a vCPU's record in a chunk of no vCPU") }
            switch kind {
            case .instruction:
                let seq = try r.varint()
                let mode = try decodeMode(&r)
                let cs = UInt16(try r.bounded(0xFFFF, "a CS selector"))
                let rip = try r.varint()
                let bytes = try r.bytes(try r.bounded(15, "an instruction length"))
                let changed = Int(try r.byte())
                var changes: [(field: Int, value: UInt64)] = []
                changes.reserveCapacity(changed)
                for _ in 0..<changed {
                    let field = Int(try r.byte())
                    guard field < fieldCount else { throw TraceFileError("register field \(field) is not in the header's table") }
                    changes.append((field, try r.varint()))
                }
                let accessCount = try r.bounded(UInt64(count), "a memory access count")
                var accesses: [MemoryAccess] = []
                accesses.reserveCapacity(accessCount)
                for _ in 0..<accessCount {
                    let write = try r.byte() != 0
                    let size = Int(try r.byte())
                    accesses.append(MemoryAccess(write: write, linear: try r.varint(), physical: try r.varint(), size: size, value: try r.varint()))
                }
                let ioCount = try r.bounded(UInt64(count), "a port access count")
                var io: [PortAccess] = []
                for _ in 0..<ioCount {
                    let out = try r.byte() != 0
                    let size = Int(try r.byte())
                    io.append(PortAccess(out: out, port: UInt16(try r.bounded(0xFFFF, "a port")), size: size, value: UInt32(try r.bounded(0xFFFF_FFFF, "a port value"))))
                }
                record = .instruction(InstructionRecord(vcpu: vcpu, seq: seq, mode: mode, cs: cs, rip: rip, bytes: bytes, changes: changes, accesses: accesses, io: io))
            case .event:
                let seq = try r.varint()
                let k = Int(try r.byte())
                guard k < InterruptEvent.Kind.byCode.count else { throw TraceFileError("unknown event kind \(k)") }
                let vector = try r.byte()
                let error = try r.byte() != 0 ? UInt32(try r.bounded(0xFFFF_FFFF, "an error code")) : nil
                let cs = UInt16(try r.bounded(0xFFFF, "a CS selector"))
                record = .event(vcpu: vcpu, seq: seq, InterruptEvent(kind: InterruptEvent.Kind.byCode[k], vector: vector, errorCode: error, cs: cs, rip: try r.varint()))
            case .mode:
                let seq = try r.varint()
                let from = try decodeMode(&r), to = try decodeMode(&r)
                let cs = UInt16(try r.bounded(0xFFFF, "a CS selector"))
                record = .mode(vcpu: vcpu, seq: seq, from: from, to: to, cs: cs, rip: try r.varint())
            case .exit:
                let seq = try r.varint()
                let rip = try r.varint()
                let name = try r.string()
                let n = try r.bounded(64, "an exit detail count")
                var details: [(String, String)] = []
                for _ in 0..<n { details.append((try r.string(), try r.string())) }
                record = .exit(vcpu: vcpu, seq: seq, name: name, rip: rip, details: details)
            case .post:
                record = .post(code: try r.byte())
            }
            if !body(record, start..<r.offset) { return }
        }
    }

    static func decodeMode(_ r: inout ByteReader) throws(TraceFileError) -> ExecutionMode {
        let m = Int(try r.byte())
        guard m < ExecutionMode.byCode.count else { throw TraceFileError("unknown execution mode \(m)") }
        return ExecutionMode.byCode[m]
    }
}

/// A binary trace file, mapped read-only (`tandem trace show|grep|convert`).
public final class TraceFile {
    public let path: String
    /// The register names of the file's header.
    public let fieldNames: [String]
    private let base: UnsafeMutableRawPointer?
    private let size: Int
    private let firstChunk: Int

    public init(path: String) throws(TraceFileError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw TraceFileError("cannot read trace file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw TraceFileError("cannot read trace file \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw TraceFileError("trace file \(path) is not a regular file") }
        let size = Int(st.st_size)
        var mapped: UnsafeMutableRawPointer? = nil
        if size > 0 {
            guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
                throw TraceFileError("cannot map trace file \(path): \(String(cString: strerror(errno)))")
            }
            mapped = p
        }
        let header: (names: [String], end: Int)
        do { header = try Self.readHeader(UnsafeRawBufferPointer(start: mapped, count: size), path: path) } catch {
            if let mapped { munmap(mapped, size) }
            throw error
        }
        base = mapped
        self.size = size
        fieldNames = header.names
        firstChunk = header.end
    }

    /// The header's register names and where the first chunk starts.
    private static func readHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws(TraceFileError) -> (names: [String], end: Int) {
        let magic = BinaryTrace.magic
        guard bytes.count >= 16, Array(bytes[0..<8]) == magic else {
            let truncated = bytes.count < 16 && bytes.count > 0 && Array(bytes) .prefix(8).elementsEqual(magic.prefix(min(8, bytes.count)))
            throw TraceFileError("\(path) is not a Tandem binary trace: " + (truncated || bytes.isEmpty ? "the header is truncated" : "no TANDEMTR header (a text or JSONL trace needs no conversion)"))
        }
        let version = bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian
        guard version == BinaryTrace.version else {
            throw TraceFileError("\(path) is a version \(version) trace; this Tandem reads version \(BinaryTrace.version)")
        }
        let count = Int(bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self).littleEndian)
        guard count <= 64 else { throw TraceFileError("\(path) is damaged: \(count) register names in its header (at most 64)") }
        var offset = 16
        var names: [String] = []
        for _ in 0..<count {
            guard offset < bytes.count, offset + 1 + Int(bytes[offset]) <= bytes.count else {
                throw TraceFileError("\(path) is truncated: it ends inside the header")
            }
            let n = Int(bytes[offset])
            names.append(String(decoding: bytes[(offset + 1)..<(offset + 1 + n)], as: UTF8.self))
            offset += 1 + n
        }
        return (names, offset)
    }

    deinit { if let base { munmap(base, size) } }

    /// Calls `body` with every record in file order until it returns false. Throws at the
    /// first damage (a truncated chunk, a malformed record), after the records before it.
    public func forEachRecord(_ body: (TraceRecord) -> Bool) throws(TraceFileError) {
        guard let base else { return }
        let bytes = UnsafeRawBufferPointer(start: base, count: size)
        var offset = firstChunk
        while offset < size {
            guard size - offset >= BinaryTrace.chunkHeaderSize else {
                throw TraceFileError("\(path) is truncated: it ends inside a chunk header at byte \(offset)")
            }
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian)
            let vcpu = bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).littleEndian
            let payload = offset + BinaryTrace.chunkHeaderSize
            guard length <= size - payload else {
                throw TraceFileError("\(path) is truncated: the chunk at byte \(offset) needs \(length) bytes, \(size - payload) remain")
            }
            var stopped = false
            do {
                try RecordDecoder.decode((base + payload).assumingMemoryBound(to: UInt8.self), count: length, vcpu: vcpu, fieldCount: fieldNames.count) { record, _ in
                    if body(record) { return true }
                    stopped = true
                    return false
                }
            } catch {
                throw TraceFileError("\(path) is damaged: in the chunk at byte \(offset): \(error.description)")
            }
            if stopped { return }
            offset = payload + length
        }
    }
}
