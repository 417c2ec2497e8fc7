import X86

/// The flight recorder's records (`--trace-last N` on the interpreter's run loop): instead
/// of working out which fields changed and encoding varints after every instruction, the
/// vCPU copies the instruction's result into its chunk as fixed-size words — the 18 general
/// registers, RIP and RFLAGS as they are after it, its bytes, its accesses — and nothing is
/// compared or encoded until the run has failed and the last N records are written. Then
/// `FlightReplay` turns the kept chunks into ordinary records (version 1 of the binary
/// format), field by field as `TraceRecorder.retired` would have.
///
/// Every record is whole 64-bit words (chunks are 16-byte aligned), little-endian:
///
/// | kind | words |
/// |---|---|
/// | instruction | head (kind, length, system flag, accesses, events, port I/O); seq; 2 × instruction bytes; 18 fields after it; the 41 system fields after it when any changed; 4 a memory access; 3 an event; 2 a port access |
/// | event | head (kind, count); seq; 3 an event — an exception or an external interrupt, followed by a baseline |
/// | baseline | head; seq; the 59 field values: where the trace (re)starts, and the first record of every chunk |
/// | post | head with the code |
///
/// A baseline at the start of every chunk makes each chunk readable on its own, so the
/// recorder may drop its oldest chunks; baselines are not counted as records.
enum FlightKind: UInt8 {
    case instruction = 0x81, event = 0x82, baseline = 0x83, post = 0x85
}

extension TraceRecorder {
    // (Constants, not lazily initialised globals: `retiredFlight` runs after every instruction.)
    @inline(__always) static var fastWords: Int { 18 }
    @inline(__always) static var systemFields: Int { CPUState.fieldCount - 18 }
    @inline(__always) static var baselineWords: Int { 2 + CPUState.fieldCount }

    /// `retired` for the flight recorder: the instruction's words, no comparison but the
    /// one that tells whether a system field can have changed.
    @inline(never)
    func retiredFlight(_ state: UnsafePointer<CPUState>, accesses: [MemoryAccess], events: [InterruptEvent]) -> Bool {
        let seq = sequence
        sequence &+= 1
        let raw = UnsafeRawPointer(state)
        let system = (raw + systemOffset).assumingMemoryBound(to: UInt64.self)
        let systemChanged = Self.systemDiffers(UnsafeRawPointer(system), UnsafeRawPointer(systemRaw))
        let ioCount = io.count
        let words = 4 &+ Self.fastWords &+ (systemChanged ? Self.systemFields : 0) &+ accesses.count &* 4 &+ events.count &* 3 &+ ioCount &* 2
        reserveWords(words)
        let w = UnsafeMutableRawPointer(chunk.end).assumingMemoryBound(to: UInt64.self)
        w[0] = UInt64(FlightKind.instruction.rawValue) | UInt64(instructionLength) << 8 | (systemChanged ? 1 << 16 : 0)
            | UInt64(accesses.count) << 24 | UInt64(events.count) << 40 | UInt64(ioCount) << 48
        w[1] = seq
        w[2] = instructionBytes.0
        w[3] = instructionBytes.1
        // The general registers, RIP and RFLAGS lead the state (`Layout.checked`): 144
        // bytes as nine vector moves (not a call to memmove).
        let out = UnsafeMutableRawPointer(w + 4)
        out.storeBytes(of: raw.loadUnaligned(as: SIMD8<UInt64>.self), as: SIMD8<UInt64>.self)
        out.storeBytes(of: raw.loadUnaligned(fromByteOffset: 64, as: SIMD8<UInt64>.self), toByteOffset: 64, as: SIMD8<UInt64>.self)
        out.storeBytes(of: raw.loadUnaligned(fromByteOffset: 128, as: SIMD2<UInt64>.self), toByteOffset: 128, as: SIMD2<UInt64>.self)
        lastFast = w + 4
        var k = 4 + Self.fastWords
        if _slowPath(systemChanged) {
            systemFieldsChanged(state, into: w + k)
            k += Self.systemFields
        }
        if !accesses.isEmpty {
            accesses.withUnsafeBufferPointer { list in
                for a in list {
                    w[k] = (a.write ? 1 : 0) | UInt64(truncatingIfNeeded: a.size) << 8
                    w[k &+ 1] = a.linear
                    w[k &+ 2] = a.physical
                    w[k &+ 3] = a.value
                    k &+= 4
                }
            }
        }
        if _slowPath(!events.isEmpty) {
            for e in events {
                Self.storeEvent(e, w + k)
                k += 3
            }
        }
        if _slowPath(ioCount > 0) {
            for o in io {
                w[k] = (o.out ? 1 : 0) | UInt64(truncatingIfNeeded: o.size) << 8 | UInt64(o.port) << 16
                w[k + 1] = UInt64(o.value)
                k += 2
            }
            io.removeAll(keepingCapacity: true)
        }
        chunk.used &+= k &* 8
        chunk.records &+= 1
        return true
    }

    /// The system fields after an instruction that changed one (the raw snapshot too).
    @inline(never)
    func systemFieldsChanged(_ state: UnsafePointer<CPUState>, into out: UnsafeMutablePointer<UInt64>) {
        (UnsafeRawPointer(state) + systemOffset).withMemoryRebound(to: UInt64.self, capacity: systemWords) {
            systemRaw.update(from: $0, count: systemWords)
        }
        CPUState.fieldValues(state, into: scratch)
        (values + Self.fastWords).update(from: scratch + Self.fastWords, count: Self.systemFields)
        out.update(from: scratch + Self.fastWords, count: Self.systemFields)
    }

    static func storeEvent(_ e: InterruptEvent, _ w: UnsafeMutablePointer<UInt64>) {
        w[0] = UInt64(e.kind.code) | UInt64(e.vector) << 8 | (e.errorCode == nil ? 0 : 1 << 16) | UInt64(e.cs) << 32
        w[1] = UInt64(e.errorCode ?? 0)
        w[2] = e.rip
    }

    static func loadEvent(_ w: UnsafePointer<UInt64>) -> InterruptEvent {
        let kind = InterruptEvent.Kind.byCode[Int(w[0] & 0xFF) % InterruptEvent.Kind.byCode.count]
        return InterruptEvent(kind: kind, vector: UInt8(truncatingIfNeeded: w[0] >> 8), errorCode: w[0] & 1 << 16 != 0 ? UInt32(truncatingIfNeeded: w[1]) : nil,
                              cs: UInt16(truncatingIfNeeded: w[0] >> 32), rip: w[2])
    }

    /// Exceptions and interrupts (then the state the trace goes on from).
    func flightEvents(_ seq: UInt64, _ events: [InterruptEvent], _ state: UnsafePointer<CPUState>) {
        if !events.isEmpty {
            reserveWords(2 + events.count * 3)
            let w = UnsafeMutableRawPointer(chunk.end).assumingMemoryBound(to: UInt64.self)
            w[0] = UInt64(FlightKind.event.rawValue) | UInt64(events.count) << 8
            w[1] = seq
            for (i, e) in events.enumerated() { Self.storeEvent(e, w + 2 + 3 * i) }
            chunk.used += (2 + events.count * 3) * 8
            chunk.records += events.count
        }
        CPUState.fieldValues(state, into: values)
        (UnsafeRawPointer(state) + systemOffset).withMemoryRebound(to: UInt64.self, capacity: systemWords) {
            systemRaw.update(from: $0, count: systemWords)
        }
        lastFast = values
        writeBaseline(seq)
    }

    /// Makes room for `words` words, starting a new chunk (with its baseline) if needed.
    @inline(__always)
    func reserveWords(_ words: Int) {
        if _slowPath(chunk.used &+ words &* 8 > chunk.capacity) { replaceFlightChunk(words) }
    }

    @inline(never)
    func replaceFlightChunk(_ words: Int) {
        let started = chunk.used > 0
        if started {
            // The state before the next record: the last one's fields (it is about to go).
            if lastFast != values { values.update(from: lastFast, count: Self.fastWords) }
            lastFast = values
            chunk = sink.submit(chunk)
        }
        chunk.grow(to: (words + Self.baselineWords) * 8)
        if started { writeBaseline(sequence) }
    }

    /// A baseline: `values` (the state the next record starts from) as they are.
    func writeBaseline(_ seq: UInt64) {
        if chunk.used + Self.baselineWords * 8 > chunk.capacity { replaceFlightChunk(0) }
        let w = UnsafeMutableRawPointer(chunk.end).assumingMemoryBound(to: UInt64.self)
        w[0] = UInt64(FlightKind.baseline.rawValue)
        w[1] = seq
        (w + 2).update(from: lastFast, count: Self.fastWords)
        (w + 2 + Self.fastWords).update(from: values + Self.fastWords, count: Self.systemFields)
        lastFast = w + 2
        chunk.used += Self.baselineWords * 8
        chunk.flight = true
    }

    func flightPost(_ code: UInt8) {
        reserveWords(1)
        UnsafeMutableRawPointer(chunk.end).storeBytes(of: UInt64(FlightKind.post.rawValue) | UInt64(code) << 8, as: UInt64.self)
        chunk.used += 8
        chunk.records += 1
    }

    // MARK: Replay

    /// Turns one flight-recorder chunk of this recorder's vCPU into ordinary records, as
    /// `retired`, `faulted` and `interrupted` would have encoded them.
    func replay(_ c: TraceChunk) {
        var p = UnsafeRawPointer(c.storage).assumingMemoryBound(to: UInt64.self)
        let end = p + c.used / 8
        while p < end {
            let head = p[0]
            switch FlightKind(rawValue: UInt8(truncatingIfNeeded: head)) {
            case .instruction:
                let length = Int(head >> 8 & 0xFF), hasSystem = head & 1 << 16 != 0
                let accessCount = Int(head >> 24 & 0xFFFF), eventCount = Int(head >> 40 & 0xFF), ioCount = Int(head >> 48)
                let seq = p[1]
                let rip = values[CPUState.ripField], cs = UInt16(truncatingIfNeeded: values[Self.csField])
                var changed: UInt64 = 0
                for i in 0..<Self.fastWords {
                    if p[4 + i] != values[i] { changed |= 1 << UInt64(i) }
                    values[i] = p[4 + i]
                }
                var q = p + 4 + Self.fastWords
                if hasSystem {
                    for i in 0..<Self.systemFields {
                        let f = Self.fastWords + i
                        if q[i] != values[f] { changed |= 1 << UInt64(f) }
                        values[f] = q[i]
                    }
                    q += Self.systemFields
                }
                changed &= ~(1 << UInt64(CPUState.ripField))
                var accesses: [MemoryAccess] = []
                for _ in 0..<accessCount {
                    accesses.append(MemoryAccess(write: q[0] & 1 != 0, linear: q[1], physical: q[2], size: Int(q[0] >> 8 & 0xFF), value: q[3]))
                    q += 4
                }
                var events: [InterruptEvent] = []
                for _ in 0..<eventCount {
                    events.append(Self.loadEvent(q))
                    q += 3
                }
                for _ in 0..<ioCount {
                    io.append(PortAccess(out: q[0] & 1 != 0, port: UInt16(truncatingIfNeeded: q[0] >> 16), size: Int(q[0] >> 8 & 0xFF), value: UInt32(truncatingIfNeeded: q[1])))
                    q += 2
                }
                encodeInstruction(seq, previousMode, cs, rip, (p[2], p[3]), length, changed: changed, accesses, withIO: true)
                io.removeAll()
                for e in events { encodeEvent(seq, e) }
                if changed & Self.modeFields != 0 {
                    let mode = Self.mode(values)
                    if mode != previousMode {
                        encodeMode(seq, from: previousMode, to: mode, cs: UInt16(truncatingIfNeeded: values[Self.csField]), rip: values[CPUState.ripField])
                        previousMode = mode
                    }
                }
                p = q
            case .event:
                let count = Int(head >> 8 & 0xFF)
                for i in 0..<count { encodeEvent(p[1], Self.loadEvent(p + 2 + 3 * i)) }
                p += 2 + 3 * count
            case .baseline:
                values.update(from: p + 2, count: CPUState.fieldCount)
                let mode = Self.mode(values)
                // After an event: the mode it switched to (a chunk's own baseline repeats
                // the state, so it never differs there).
                if replayStarted && mode != previousMode {
                    encodeMode(p[1], from: previousMode, to: mode, cs: UInt16(truncatingIfNeeded: values[Self.csField]), rip: values[CPUState.ripField])
                }
                previousMode = mode
                replayStarted = true
                p += Self.baselineWords
            case .post:
                post(UInt8(truncatingIfNeeded: head >> 8))
                p += 1
            case nil:
                preconditionFailure("flight recorder chunk damaged: word \(head)")
            }
        }
    }
}
