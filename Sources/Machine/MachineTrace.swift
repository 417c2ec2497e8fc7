#if canImport(Glibc)
import Glibc
#endif
import Interpreter
import KVM
import Synchronization
import Tracing
import X86

// The machine's side of tracing: the trace it writes, each vCPU's part of it, and setting
// a vCPU up to record (the interpreter records inside its run loop; KVM and `--trace-exits`
// through `VCPUTracer`, in Tracing).

package func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
package func byteHex(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }

package func padRight(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

/// The trace a machine writes now — `--trace` from the start, or gdb's `monitor trace
/// on|off` while every vCPU is stopped — and a generation number that each vCPU compares
/// with the one it follows to see that the trace changed.
final class MachineTrace: Sendable {
    private let state: Mutex<(sink: TraceSink?, generation: Int)>

    init(_ sink: TraceSink?) { state = Mutex((sink, 0)) }

    var current: (sink: TraceSink?, generation: Int) { state.withLock { $0 } }
    var sink: TraceSink? { state.withLock { $0.sink } }

    /// Puts `sink` in the old one's place (only while every vCPU is parked, each having
    /// handed its records to the old sink); returns the old one.
    func replace(with sink: TraceSink?) -> TraceSink? {
        state.withLock { s in
            let old = s.sink
            s = (sink, s.generation + 1)
            return old
        }
    }
}

/// One vCPU's part of the machine's trace, made and used on the vCPU's thread.
final class VCPUTrace {
    let recorder: TraceRecorder
    /// Records made from the vCPU loop: KVM's (single-stepped), and every backend's under
    /// `--trace-exits`; nil where the interpreter records inside its run loop.
    let tracer: VCPUTracer?
    /// The backend is single-stepped for the trace.
    let stepping: Bool
    /// Port I/O answered by the vCPU loop goes into the instruction's record.
    let recordsIO: Bool

    init(recorder: TraceRecorder, tracer: VCPUTracer?, stepping: Bool, recordsIO: Bool) {
        self.recorder = recorder
        self.tracer = tracer
        self.stepping = stepping
        self.recordsIO = recordsIO
    }
}

extension Machine {
    /// On vCPU `index`'s thread: follows the machine's trace — attaches a recorder to a
    /// trace that started, detaches it from one that ended. The interpreter records inside
    /// its run loop; KVM is single-stepped and traced from the vCPU loop (`VCPUTracer`), as
    /// is every backend under `--trace-exits`.
    func syncTrace(_ index: Int) {
        let slot = slots[index]
        let (sink, generation) = trace.current
        guard slot.traceGeneration != generation else { return }
        slot.traceGeneration = generation
        if let old = slot.trace {
            if old.stepping { setStepping(slot.active, false) }
            if old.tracer == nil, let interpreter = slot.active as? InterpreterVCPU { interpreter.recorder = nil }
            old.recorder.flush()
            slot.trace = nil
            slot.traceStepping = false
        }
        guard let sink else { return }
        let exitsOnly = sink.options.exitsOnly
        // On a KVM machine the interpreter only stands in (a handoff, watchpoints): its
        // vCPU is traced by single-steps, whichever engine runs it.
        let interpreter = exitsOnly || backendName == "kvm" ? nil : slot.active as? InterpreterVCPU
        let recorder = TraceRecorder(vcpu: index, sink: sink, inRunLoop: interpreter != nil)
        if let interpreter {
            interpreter.recorder = recorder
            slot.trace = VCPUTrace(recorder: recorder, tracer: nil, stepping: false, recordsIO: true)
            return
        }
        let tracer = VCPUTracer(recorder: recorder, memory: memory, state: (try? slot.active.readState()) ?? CPUState())
        if !exitsOnly { setStepping(slot.active, true) }
        slot.traceStepping = !exitsOnly
        slot.trace = VCPUTrace(recorder: recorder, tracer: tracer, stepping: !exitsOnly, recordsIO: !exitsOnly)
    }

    /// The debugger stopped vCPU `index`: its records so far go to the trace file.
    func submitTrace(_ index: Int) {
        guard let t = slots[index].trace else { return }
        (slots[index].active as? InterpreterVCPU)?.finishTrace()
        t.recorder.submitRecords()
    }

    /// The end of vCPU `index`'s thread: its last records.
    func endTrace(_ index: Int) {
        let slot = slots[index]
        guard let t = slot.trace else { return }
        if t.stepping { t.tracer?.step(slot.active) }
        (slot.active as? InterpreterVCPU)?.finishTrace()
        t.recorder.flush()
    }
}
