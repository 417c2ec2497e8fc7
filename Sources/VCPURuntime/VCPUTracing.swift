#if canImport(Glibc)
import Glibc
#endif
import Interpreter
import KVM
import Synchronization
import Tracing
import X86

// The machine's side of tracing: each vCPU follows the trace the machine writes, recording
// inside the interpreter's run loop, or through `VCPUTracer` (Tracing) for KVM, which is
// single-stepped, and under `--trace-exits`.

extension VCPUManager {
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

    /// A step of `backend` for the trace, with the interrupts KVM injected before it.
    func traceStep(_ tracer: VCPUTracer, _ backend: any VCPUBackend) {
        tracer.step(backend) { (backend as? KVMVCPU)?.takeInjected() ?? [] }
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
        if t.stepping, let tracer = t.tracer { traceStep(tracer, slot.active) }
        (slot.active as? InterpreterVCPU)?.finishTrace()
        t.recorder.flush()
    }
}
