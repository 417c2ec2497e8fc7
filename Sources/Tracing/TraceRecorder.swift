#if canImport(Glibc)
import Glibc
#endif
import X86

/// A buffer of one vCPU's encoded records (the payload of one chunk of the binary format).
final class TraceChunk {
    private(set) var storage: UnsafeMutablePointer<UInt8>
    private(set) var capacity: Int
    var used = 0
    var records = 0
    var vcpu: UInt32 = BinaryTrace.noVCPU
    /// Holds flight-recorder records (FlightRecorder.swift), not ordinary ones.
    var flight = false

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
    }

    deinit { storage.deallocate() }

    var end: UnsafeMutablePointer<UInt8> { storage + used }

    /// Makes room for a record of up to `bytes` in an empty chunk.
    func grow(to bytes: Int) {
        guard bytes > capacity else { return }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes)
        bigger.update(from: storage, count: used)
        storage.deallocate()
        storage = bigger
        capacity = bytes
    }

    func reset(vcpu: UInt32) {
        used = 0
        records = 0
        flight = false
        self.vcpu = vcpu
    }
}

/// Records one vCPU's trace in the binary format, on that vCPU's thread: no locks, no
/// strings, no disassembly. Full chunks go to the `TraceSink`, whose thread writes them
/// (or turns them into text or JSONL). The interpreter calls it from inside its run loop;
/// KVM's single-stepping tracer calls the same encoders.
public final class TraceRecorder {
    public let vcpu: Int
    let sink: TraceSink
    var chunk: TraceChunk
    /// The next instruction's sequence number (per vCPU, counted whether recorded or not).
    public var sequence: UInt64 = 0
    let from: UInt64
    let rangeLow: UInt64, rangeHigh: UInt64
    let counted: Bool
    /// The field values (CPUState.fieldValues) as of the last record; `retired` updates
    /// them and notes which changed.
    var values: UnsafeMutablePointer<UInt64>
    /// Scratch for KVM's whole-state records and for system fields.
    var scratch: UnsafeMutablePointer<UInt64>
    /// The raw bytes of the state's system part (segments to EFER) as of the last record:
    /// one vectorised compare tells whether any of those 41 fields can have changed.
    var systemRaw: UnsafeMutablePointer<UInt64>
    /// `Layout`'s, kept here so the hot path reads no lazy global.
    let systemOffset = Layout.systemOffset, systemWords = Layout.systemWords
    var previousMode: ExecutionMode = .real
    /// The port I/O of the instruction being executed (the shared vCPU loop adds it).
    public var io: [PortAccess] = []
    /// The bytes of the instruction being executed and how many there are (interpreter).
    public var instructionBytes: (UInt64, UInt64) = (0, 0)
    public var instructionLength = 0
    /// The flight recorder's fixed-size records (FlightRecorder.swift) instead of encoded ones.
    let flight: Bool
    /// Flight recorder: the general registers, RIP and RFLAGS of the last record (in the
    /// chunk, or `values`), the state the next instruction starts from.
    var lastFast: UnsafeMutablePointer<UInt64>
    /// Replaying flight-recorder chunks: a baseline has set `values`.
    var replayStarted = false

    /// `inRunLoop`: the interpreter's run loop records through `retired` (a flight
    /// recorder there keeps fixed-size records); KVM's tracer calls the encoders itself.
    public convenience init(vcpu: Int, sink: TraceSink, inRunLoop: Bool = false) {
        let o = sink.options
        self.init(vcpu: vcpu, sink: sink, flight: inRunLoop && o.last != nil && o.from == 0 && o.range == nil && o.count == nil)
        pthread_setspecific(Self.threadKey, Unmanaged.passUnretained(self).toOpaque())
    }

    /// A recorder that is not a thread's (replaying a flight recorder's chunks).
    init(vcpu: Int, sink: TraceSink, flight: Bool) {
        self.vcpu = vcpu
        self.sink = sink
        self.flight = flight
        chunk = sink.freshChunk(vcpu: UInt32(vcpu))
        from = sink.options.from
        rangeLow = sink.options.range?.lowerBound ?? 0
        rangeHigh = sink.options.range?.upperBound ?? .max
        counted = sink.options.count != nil
        _ = Layout.checked
        values = .allocate(capacity: CPUState.fieldCount)
        scratch = .allocate(capacity: CPUState.fieldCount)
        values.initialize(repeating: 0, count: CPUState.fieldCount)
        scratch.initialize(repeating: 0, count: CPUState.fieldCount)
        systemRaw = .allocate(capacity: Layout.systemWords)
        systemRaw.initialize(repeating: 0, count: Layout.systemWords)
        lastFast = values
    }

    deinit {
        values.deallocate()
        scratch.deallocate()
        systemRaw.deallocate()
    }

    /// False once `--trace-count` records are out or the trace cannot be written: the
    /// vCPU stops tracing and runs at full speed.
    public var active: Bool { !sink.full.load(ordering: .relaxed) }

    /// The recorder of the calling vCPU thread (POST codes arrive through the device model,
    /// on the thread of the vCPU that wrote the port).
    public static var current: TraceRecorder? {
        pthread_getspecific(threadKey).map { Unmanaged<TraceRecorder>.fromOpaque($0).takeUnretainedValue() }
    }
    nonisolated(unsafe) static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Hands the last records to the sink (at the end of the vCPU's thread, or when the
    /// trace is detached); the thread has no recorder afterwards.
    public func flush() {
        submitRecords()
        if Self.current === self { pthread_setspecific(Self.threadKey, nil) }
    }

    /// Hands the records so far to the sink and goes on recording (the debugger stopped
    /// the machine: the trace file is up to date while gdb looks).
    public func submitRecords() {
        guard chunk.records > 0 else { return }
        if flight { replaceFlightChunk(0) } else { chunk = sink.submit(chunk) }
    }

    // MARK: The interpreter's run loop

    /// Where the trace starts (or starts again after an event changed the state).
    public func start(_ state: UnsafePointer<CPUState>) {
        if flight {
            flightEvents(sequence, [], state)
            return
        }
        CPUState.fieldValues(state, into: values)
        (UnsafeRawPointer(state) + Layout.systemOffset).withMemoryRebound(to: UInt64.self, capacity: Layout.systemWords) {
            systemRaw.update(from: $0, count: Layout.systemWords)
        }
        previousMode = state.pointee.mode
    }

    /// The instruction whose bytes are in `instructionBytes` retired, leaving `state`:
    /// its record, then the events it raised (INT n), then a mode change if any. Returns
    /// whether the trace goes on (false once it is full).
    @inline(never)
    public func retired(_ state: UnsafePointer<CPUState>, accesses: [MemoryAccess], events: [InterruptEvent]) -> Bool {
        // Two functions, so that the flight recorder's path pays only for its own registers.
        flight ? retiredFlight(state, accesses: accesses, events: events) : retiredEncoded(state, accesses: accesses, events: events)
    }

    @inline(never)
    func retiredEncoded(_ state: UnsafePointer<CPUState>, accesses: [MemoryAccess], events: [InterruptEvent]) -> Bool {
        let seq = sequence
        sequence &+= 1
        let rip = values[CPUState.ripField]
        let cs = UInt16(truncatingIfNeeded: values[Self.csField])
        let changed = update(state)
        if admit(seq, rip) {
            encodeInstruction(seq, previousMode, cs, rip, instructionBytes, instructionLength, changed: changed, accesses, withIO: true)
        }
        if !io.isEmpty { io.removeAll(keepingCapacity: true) }
        for e in events where admit(seq, e.rip) { encodeEvent(seq, e) }
        // The mode follows CR0, RFLAGS.VM, EFER and CS's attributes.
        if _slowPath(changed & Self.modeFields != 0) {
            let mode = Self.mode(values)
            if mode != previousMode {
                if admit(seq, rip) {
                    encodeMode(seq, from: previousMode, to: mode, cs: UInt16(truncatingIfNeeded: values[Self.csField]), rip: values[CPUState.ripField])
                }
                previousMode = mode
            }
        }
        return !sink.full.load(ordering: .relaxed)
    }

    /// Brings `values` up to `state`; returns the changed fields as a bit mask (RIP excluded).
    @inline(__always)
    func update(_ state: UnsafePointer<CPUState>) -> UInt64 {
        let raw = UnsafeRawPointer(state)
        var changed: UInt64 = 0
        // General registers, RIP and RFLAGS lead the state, in field order.
        let fast = raw.assumingMemoryBound(to: UInt64.self)
        let known = values, snapshot = systemRaw   // (locals: the stores below cannot move them)
        for i in 0..<18 {
            let v = fast[i]
            changed |= (v != known[i] ? 1 : 0) << UInt64(i)
            known[i] = v
        }
        let system = (raw + systemOffset).assumingMemoryBound(to: UInt64.self)
        if _slowPath(Self.systemDiffers(UnsafeRawPointer(system), UnsafeRawPointer(snapshot))) {
            systemRaw.update(from: system, count: systemWords)
            CPUState.fieldValues(state, into: scratch)
            for i in Layout.fastFields..<CPUState.fieldCount {
                changed |= (scratch[i] != values[i] ? 1 : 0) << UInt64(i)
                values[i] = scratch[i]
            }
        }
        return changed & ~(1 << UInt64(CPUState.ripField))
    }

    /// Whether the state's system part (segments to EFER, `Layout.systemBytes`) differs
    /// from the snapshot: straight-line vector compares, run after every instruction.
    @inline(__always)
    static func systemDiffers(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer) -> Bool {
        // 16-byte vectors: the host's SSE2 registers (wider SIMD types get split into scalars).
        var d = SIMD2<UInt64>()
        for k in 0..<(Layout.systemBytes / 16) {
            d |= a.loadUnaligned(fromByteOffset: k &* 16, as: SIMD2<UInt64>.self) ^ b.loadUnaligned(fromByteOffset: k &* 16, as: SIMD2<UInt64>.self)
        }
        return d[0] | d[1] != 0
    }

    /// Where the state's parts are, checked against `CPUState.fieldValues`' order once.
    enum Layout {
        /// `systemDiffers` compares this many bytes (a constant, so that it unrolls).
        @inline(__always) static var systemBytes: Int { 272 }
        /// The general registers, RIP and RFLAGS (`update` spells out 18 for the compiler).
        static let fastFields = 18
        static let systemOffset = MemoryLayout<CPUState>.offset(of: \CPUState.es)!
        static let systemWords = (MemoryLayout<CPUState>.offset(of: \CPUState.efer)! + 8 - systemOffset) / 8
        static let checked: Void = {
            precondition(MemoryLayout<CPUState>.offset(of: \CPUState.gpr) == 0 && MemoryLayout<CPUState>.offset(of: \CPUState.rip) == 128
                         && MemoryLayout<CPUState>.offset(of: \CPUState.rflags) == 136 && systemOffset % 8 == 0 && systemOffset == 144
                         && systemWords * 8 == systemBytes,
                         "CPUState's layout changed: TraceRecorder.update reads it raw")
        }()
    }

    /// CR0, RFLAGS, CS's attributes and EFER: the fields the mode depends on.
    static let modeFields: UInt64 = 1 << 50 | 1 << 17 | 1 << UInt64(csField + 3) | 1 << 54

    /// `CPUState.mode` from field values (without copying the state).
    @inline(__always)
    static func mode(_ f: UnsafeMutablePointer<UInt64>) -> ExecutionMode {
        if f[50] & 1 == 0 { return .real }                       // CR0.PE
        if f[17] & (1 << 17) != 0 { return .virtual8086 }        // RFLAGS.VM
        let attributes = f[csField + 3]
        if f[54] & EFER.lma != 0 && attributes & (1 << 13) != 0 { return .long64 }
        return attributes & (1 << 14) != 0 ? .protected32 : .protected16
    }

    /// The instruction faulted: its exception (and any it led to) is recorded under its
    /// sequence number, and the trace goes on from the handler's state.
    @inline(never)
    public func faulted(_ events: [InterruptEvent], _ state: UnsafePointer<CPUState>) {
        let seq = sequence
        sequence &+= 1
        io.removeAll(keepingCapacity: true)
        if flight { return flightEvents(seq, events, state) }
        for e in events where admit(seq, e.rip) { encodeEvent(seq, e) }
        afterEvent(seq, state)
    }

    /// An external interrupt or NMI was delivered between instructions (it takes no
    /// sequence number of its own: it carries the next instruction's).
    @inline(never)
    public func interrupted(_ e: InterruptEvent, _ state: UnsafePointer<CPUState>) {
        if flight { return flightEvents(sequence, [e], state) }
        if admit(sequence, e.rip) { encodeEvent(sequence, e) }
        afterEvent(sequence, state)
    }

    private func afterEvent(_ seq: UInt64, _ state: UnsafePointer<CPUState>) {
        let mode = state.pointee.mode
        if mode != previousMode, admit(seq, state.pointee.rip) {
            encodeMode(seq, from: previousMode, to: mode, cs: state.pointee.cs.selector, rip: state.pointee.rip)
        }
        start(state)
    }

    static let csField = 18 + 4

    // MARK: Encoders (also KVM's tracer's)

    /// Whether record `seq` about `rip` passes `--trace-from`, `--trace-range` and
    /// `--trace-count` (claiming one of the count).
    @inline(__always)
    public func admit(_ seq: UInt64, _ rip: UInt64?) -> Bool {
        guard seq >= from else { return false }
        if let rip, rip < rangeLow || rip > rangeHigh { return false }
        if counted { return sink.claim() }
        return !sink.full.load(ordering: .relaxed)
    }

    /// Makes room for a record of at most `bytes` in the current chunk.
    @inline(__always)
    func reserve(_ bytes: Int) {
        if _slowPath(chunk.used &+ bytes > chunk.capacity) { replaceChunk(bytes) }
    }

    @inline(never)
    func replaceChunk(_ bytes: Int) {
        if chunk.used > 0 { chunk = sink.submit(chunk) }
        chunk.grow(to: bytes)
    }

    @inline(__always)
    func finish(_ w: ByteWriter) {
        chunk.used = w.p - chunk.storage
        chunk.records &+= 1
    }

    /// An instruction record; `changed` marks the fields of `values` it changed.
    public func encodeInstruction(_ seq: UInt64, _ mode: ExecutionMode, _ cs: UInt16, _ rip: UInt64, _ bytes: (UInt64, UInt64), _ length: Int,
                                  changed: UInt64, _ accesses: [MemoryAccess], withIO: Bool) {
        let io = withIO ? self.io.count : 0
        reserve(64 + 16 + CPUState.fieldCount * 11 + accesses.count * 33 + io * 24)
        var w = ByteWriter(p: chunk.end)
        w.byte(RecordKind.instruction.rawValue)
        w.varint(seq)
        w.byte(mode.code)
        w.varint(UInt64(cs))
        w.varint(rip)
        w.byte(UInt8(length))
        w.instructionBytes(bytes, length)
        w.byte(UInt8(changed.nonzeroBitCount))
        var rest = changed
        while rest != 0 {
            let i = rest.trailingZeroBitCount
            w.byte(UInt8(i))
            w.varint(values[i])
            rest &= rest &- 1
        }
        w.varint(UInt64(accesses.count))
        for a in accesses {
            w.byte(a.write ? 1 : 0)
            w.byte(UInt8(truncatingIfNeeded: a.size))
            w.varint(a.linear)
            w.varint(a.physical)
            w.varint(a.value)
        }
        w.varint(UInt64(io))
        if io > 0 {
            for o in self.io {
                w.byte(o.out ? 1 : 0)
                w.byte(UInt8(truncatingIfNeeded: o.size))
                w.varint(UInt64(o.port))
                w.varint(UInt64(o.value))
            }
        }
        finish(w)
    }

    /// An instruction record from two whole states (KVM's single-stepping tracer).
    public func encodeInstruction(_ seq: UInt64, before: CPUState, after: CPUState, bytes: [UInt8], accesses: [MemoryAccess], withIO: Bool) {
        withUnsafePointer(to: before) { CPUState.fieldValues($0, into: scratch) }
        withUnsafePointer(to: after) { CPUState.fieldValues($0, into: values) }
        var changed: UInt64 = 0
        for i in 0..<CPUState.fieldCount where i != CPUState.ripField && scratch[i] != values[i] { changed |= 1 << UInt64(i) }
        var words = (UInt64(0), UInt64(0))
        let length = min(bytes.count, 15)
        withUnsafeMutableBytes(of: &words) { out in bytes.withUnsafeBytes { out.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<length])) } }
        encodeInstruction(seq, before.mode, before.cs.selector, before.rip, words, length, changed: changed, accesses, withIO: withIO)
    }

    public func encodeEvent(_ seq: UInt64, _ e: InterruptEvent) {
        reserve(48)
        var w = ByteWriter(p: chunk.end)
        w.byte(RecordKind.event.rawValue)
        w.varint(seq)
        w.byte(e.kind.code)
        w.byte(e.vector)
        w.byte(e.errorCode == nil ? 0 : 1)
        if let code = e.errorCode { w.varint(UInt64(code)) }
        w.varint(UInt64(e.cs))
        w.varint(e.rip)
        finish(w)
    }

    public func encodeMode(_ seq: UInt64, from: ExecutionMode, to: ExecutionMode, cs: UInt16, rip: UInt64) {
        reserve(40)
        var w = ByteWriter(p: chunk.end)
        w.byte(RecordKind.mode.rawValue)
        w.varint(seq)
        w.byte(from.code)
        w.byte(to.code)
        w.varint(UInt64(cs))
        w.varint(rip)
        finish(w)
    }

    /// `--trace-exits`: one exit, its details as (name, JSON value) pairs.
    public func encodeExit(_ seq: UInt64, name: String, rip: UInt64, details: [(String, String)]) {
        let strings = [name] + details.flatMap { [$0.0, $0.1] }
        reserve(32 + strings.reduce(0) { $0 + $1.utf8.count + 10 })
        var w = ByteWriter(p: chunk.end)
        w.byte(RecordKind.exit.rawValue)
        w.varint(seq)
        w.varint(rip)
        w.string(name)
        w.varint(UInt64(details.count))
        for (key, value) in details {
            w.string(key)
            w.string(value)
        }
        finish(w)
    }

    /// A POST code (port 0x80), in this vCPU's stream where it was written.
    public func post(_ code: UInt8) {
        if flight { return flightPost(code) }
        // Recorded with the OUT's sequence number, as an event is: --trace-from and the
        // count apply (Linux writes port 0x80 for every I/O delay, which used up a count
        // before the first traced instruction); --trace-range does not (no RIP of its own).
        guard admit(sequence, nil) else { return }
        reserve(2)
        var w = ByteWriter(p: chunk.end)
        w.byte(RecordKind.post.rawValue)
        w.byte(code)
        finish(w)
    }
}
