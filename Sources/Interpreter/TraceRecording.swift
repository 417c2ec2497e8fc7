import Tracing
import X86

extension InterpreterVCPU {
    /// The run loop while a trace is recorded: the same steps as `run()`'s, each followed
    /// by its record, with no exit per instruction. Stops recording (and leaves the rest
    /// of `budget` to the plain loop) once the trace is full.
    @inline(never)
    func runRecorded(_ budget: inout Int) throws(Fault) {
        guard let t = recorder else { return }
        // The recorder reads the access log from a local it is swapped into: passing the
        // property itself retained and released it around every call (a quarter of a
        // flight-recorded Linux boot's time went to those atomics).
        var accesses: [MemoryAccess] = []
        let noEvents: [InterruptEvent] = []
        while budget > 0 {
            let d = try fetch()
            captureBytes(d, into: t)
            accessLogMark = accessLog.count
            do throws(Fault) { try execute(d) } catch { materializeFlags(); throw error }
            materializeFlags()   // the recorder reads RFLAGS
            budget &-= 1
            let goesOn: Bool
            if _fastPath(eventLog.isEmpty) {
                swap(&accesses, &accessLog)
                goesOn = t.retired(s, accesses: accesses, events: noEvents)
                if !accesses.isEmpty { accesses.removeAll(keepingCapacity: true) }
                swap(&accesses, &accessLog)
            } else {
                goesOn = t.retired(s, accesses: accessLog, events: eventLog)
                accessLog.removeAll(keepingCapacity: true)
                eventLog.removeAll(keepingCapacity: true)
            }
            if _slowPath(!goesOn) {
                recorder = nil
                return
            }
            if _slowPath(endBlock) { return }
        }
    }

    /// Copies the bytes of the instruction at CS:RIP (which `fetch` just decoded) into the
    /// recorder.
    @inline(__always)
    func captureBytes(_ d: UnsafeMutablePointer<DecodedInstruction>, into t: TraceRecorder) {
        let length = Int(d.pointee.length)
        let rip = s.pointee.rip
        let linear = codeBits == 64 ? rip : (seg[1].pointee.base &+ rip) & 0xFFFF_FFFF
        t.instructionLength = length
        // The common case, code in low RAM and not at a page's end: two loads, no call.
        let physical: UInt64?
        if paging {
            physical = linear & 0xFFF <= 0x1000 - 16 ? try? translateLinear(linear, .execute) : nil
        } else {
            physical = linear & a20Mask == linear ? linear : nil
        }
        if let physical, physical &+ 16 <= lowEnd {
            t.instructionBytes = ((lowHost + Int(physical)).loadUnaligned(as: UInt64.self), (lowHost + Int(physical) + 8).loadUnaligned(as: UInt64.self))
        } else {
            withUnsafeMutableBytes(of: &t.instructionBytes) { copyBytesSlow(linear, length, $0) }
        }
    }

    @inline(never)
    func copyBytesSlow(_ linear: UInt64, _ length: Int, _ out: UnsafeMutableRawBufferPointer) {
        for i in 0..<length {
            let la = codeBits == 64 ? linear &+ UInt64(i) : (linear &+ UInt64(i)) & 0xFFFF_FFFF
            out[i] = UInt8(truncatingIfNeeded: (try? readLinear(la, 1, .execute)) ?? 0)
        }
    }

    /// The instruction that exited has completed (its `in` value is in place): its record.
    @inline(never)
    func recordCompleted() {
        recordPending = false
        guard let t = recorder else { return }
        let goesOn = t.retired(s, accesses: accessLog, events: eventLog)
        accessLog.removeAll(keepingCapacity: true)
        eventLog.removeAll(keepingCapacity: true)
        if !goesOn { recorder = nil }
    }

    /// An instruction faulted and its exception was delivered: the exception's records.
    @inline(never)
    func recordFault(_ t: TraceRecorder) {
        t.faulted(eventLog, s)
        accessLog.removeAll(keepingCapacity: true)
        eventLog.removeAll(keepingCapacity: true)
        if !t.active { recorder = nil }
    }

    /// The end of the run: the record of an instruction still waiting for its exit to
    /// complete (a HLT the machine stopped in, a last `out`).
    public func finishTrace() {
        if recordPending { recordCompleted() }
    }
}
