#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import HostOS
import Synchronization
import X86

/// The trace file. vCPU threads hand it full chunks of binary records; its own thread
/// ("trace-writer") writes them, as they are (`bin`) or as text or JSONL lines, so the
/// vCPUs never format or write. With `--trace-last N` it keeps the chunks holding the last
/// N records instead, and writes those records at the end only if the run ended badly.
public final class TraceSink: @unchecked Sendable {
    public let options: TraceOptions
    private let fd: Int32
    /// Set once `--trace-count` records are out, or the file cannot be written: vCPUs
    /// stop tracing.
    public let full = Atomic<Bool>(false)
    private let claimed = Atomic<UInt64>(0)
    private let lock = HostLock()
    /// Chunks waiting for the writer thread (nil: the end), and recycled ones.
    private var queue: [TraceChunk?] = []
    private var pool: [TraceChunk] = []
    /// `--trace-last`: the chunks that hold the last N records, oldest first.
    private var ring: [TraceChunk] = []
    private var ringRecords = 0
    private var submittedRecords = 0
    /// `finish` replaying flight-recorder chunks: what the replaying recorders submit.
    private var replaying = false
    private var collected: [TraceChunk] = []
    private let available = DispatchSemaphore(value: 0)
    /// Bounds the chunks queued for writing: a vCPU that records faster than the trace can
    /// be written (or formatted) waits, rather than the queue growing without end.
    private let room = DispatchSemaphore(value: TraceSink.maxQueued)
    private var writer: HostThread?
    private let onWriteError: @Sendable (String) -> Void
    /// Written by the writer thread only (and by `finish` after it has ended).
    private var failed = false
    private var out: [UInt8] = []

    static let chunkSize = 1 << 20
    static let maxQueued = 16
    /// The flight recorder keeps chunks of about a quarter of its N records (~200 bytes
    /// each on the interpreter) so that the ring it writes over stays in the host's cache.
    private let chunkCapacity: Int

    /// Opens the trace file (status 200 when it cannot be: the caller maps the error);
    /// `onWriteError` gets one line (without "tandem: ") the first time it cannot be written.
    public init(_ options: TraceOptions, onWriteError: @escaping @Sendable (String) -> Void = { _ in }) throws(TraceFileError) {
        self.options = options
        self.onWriteError = onWriteError
        chunkCapacity = options.last.map { min(Self.chunkSize, max(64 << 10, $0 * 50)) } ?? Self.chunkSize
        switch openOutputFile(options.path) {
        case .success(let opened): fd = opened
        case .failure(let error): throw TraceFileError("cannot open trace file \(options.path): \(describeOpenError(error))")
        }
        if options.last == nil {
            writer = HostThread.spawn(name: "trace-writer") { [self] in writeLoop() }
        }
    }

    deinit { close(fd) }

    /// The records handed to the writer so far (all of them, once `finish` returned).
    public var recordsWritten: Int {
        lock.lock()
        defer { lock.unlock() }
        return submittedRecords
    }

    /// Claims one record of `--trace-count`: false once they are all out.
    func claim() -> Bool {
        guard let count = options.count else { return !full.load(ordering: .relaxed) }
        let n = claimed.add(1, ordering: .relaxed).newValue
        if n >= count { full.store(true, ordering: .relaxed) }
        return n <= count
    }

    func freshChunk(vcpu: UInt32) -> TraceChunk {
        lock.lock()
        let c = pool.popLast() ?? TraceChunk(capacity: chunkCapacity)
        lock.unlock()
        c.reset(vcpu: vcpu)
        return c
    }

    /// Takes a vCPU's full chunk and gives it an empty one.
    func submit(_ chunk: TraceChunk) -> TraceChunk {
        let vcpu = chunk.vcpu
        if replaying {
            collected.append(chunk)
            let fresh = TraceChunk(capacity: Self.chunkSize)
            fresh.reset(vcpu: vcpu)
            return fresh
        }
        if let last = options.last {
            lock.lock()
            ring.append(chunk)
            ringRecords += chunk.records
            while let oldest = ring.first, ringRecords - oldest.records >= last {
                ring.removeFirst()
                ringRecords -= oldest.records
                pool.append(oldest)
            }
            lock.unlock()
        } else {
            room.wait()
            lock.lock()
            submittedRecords += chunk.records
            queue.append(chunk)
            lock.unlock()
            available.signal()
        }
        return freshChunk(vcpu: vcpu)
    }

    /// Ends the trace once every vCPU has flushed its recorder: waits for the writer
    /// thread, or writes the last N records of a flight recorder if `status` is not 0.
    public func finish(status: Int32) {
        if let writer {
            lock.lock()
            queue.append(nil)
            lock.unlock()
            available.signal()
            writer.join()
            self.writer = nil
            return
        }
        guard let last = options.last else { return }
        lock.lock()
        var kept = ring
        ring.removeAll()
        lock.unlock()
        guard status != 0 else { return }
        if kept.contains(where: \.flight) { kept = replayed(kept) }
        // The last `last` records: skip the surplus at the front of the oldest chunks.
        var skip = kept.reduce(0) { $0 + $1.records } - last
        let formatter = options.format == .bin ? nil : TraceFormatter(options.format)
        if formatter == nil { out += BinaryTrace.header }
        for c in kept {
            if skip >= c.records {
                skip -= c.records
                continue
            }
            var first = 0
            var index = 0
            try? RecordDecoder.decode(c.storage, count: c.used, vcpu: c.vcpu, fieldCount: CPUState.fieldCount) { record, range in
                defer { index += 1 }
                if index == skip { first = range.lowerBound }
                if let formatter, index >= skip { appendLine(formatter.line(record)) }
                return true
            }
            if formatter == nil { appendChunk(c, from: first) }
            skip = 0
        }
        drain()
    }

    /// The flight recorder's chunks as ordinary records, chunk for chunk (each vCPU's
    /// chunks replayed in order by a recorder of its own).
    private func replayed(_ kept: [TraceChunk]) -> [TraceChunk] {
        var replayers: [UInt32: TraceRecorder] = [:]
        var out: [TraceChunk] = []
        replaying = true
        defer { replaying = false }
        for c in kept {
            guard c.flight else {
                out.append(c)
                continue
            }
            let r = replayers[c.vcpu] ?? TraceRecorder(vcpu: Int(c.vcpu), sink: self, flight: false)
            replayers[c.vcpu] = r
            r.replay(c)
            if r.chunk.used > 0 { r.chunk = submit(r.chunk) }
            out += collected
            collected.removeAll()
        }
        return out
    }

    // MARK: The writer thread

    private func writeLoop() {
        let formatter = options.format == .bin ? nil : TraceFormatter(options.format)
        if formatter == nil { out += BinaryTrace.header }
        while true {
            available.wait()
            lock.lock()
            let next = queue.removeFirst()
            lock.unlock()
            guard let chunk = next else { break }
            if !failed {
                if let formatter {
                    try? RecordDecoder.decode(chunk.storage, count: chunk.used, vcpu: chunk.vcpu, fieldCount: CPUState.fieldCount) { record, _ in
                        appendLine(formatter.line(record))
                        return true
                    }
                } else {
                    appendChunk(chunk, from: 0)
                }
            }
            lock.lock()
            pool.append(chunk)
            lock.unlock()
            room.signal()
        }
        drain()
    }

    private func appendLine(_ line: String) {
        out.append(contentsOf: line.utf8)
        out.append(0x0A)
        if out.count >= 1 << 20 { drain() }
    }

    /// A chunk's header and its payload from byte `from` on.
    private func appendChunk(_ chunk: TraceChunk, from: Int) {
        BinaryTrace.appendU32(&out, UInt32(chunk.used - from))
        BinaryTrace.appendU32(&out, chunk.vcpu)
        out.append(contentsOf: UnsafeBufferPointer(start: chunk.storage + from, count: chunk.used - from))
        if out.count >= 1 << 20 { drain() }
    }

    private func drain() {
        defer { out.removeAll(keepingCapacity: true) }
        guard !failed, !out.isEmpty, let error = out.withUnsafeBytes({ writeAll(fd, $0) }) else { return }
        failed = true
        full.store(true, ordering: .relaxed)
        onWriteError("cannot write trace file \(options.path): \(error)")
    }
}
