import Disassembler
import GuestMemory
import Synchronization
import X86

/// One vCPU's tracing state where the backend cannot record its own trace (KVM, which is
/// single-stepped; and every backend under `--trace-exits`): the state before the step, a
/// disassembler to find instruction lengths; records go to the vCPU's `TraceRecorder`.
/// It knows the engines only as `VCPUBackend`s (the machine's vCPU loop drives it).
public final class VCPUTracer {
    public let recorder: TraceRecorder
    let memory: GuestMemoryMap
    let disassembler = Disassembler()
    var previous: CPUState

    public init(recorder: TraceRecorder, memory: GuestMemoryMap, state: CPUState) {
        self.recorder = recorder
        self.memory = memory
        self.previous = state
    }

    /// An instruction retired (or faulted): emit its records and remember the new state.
    /// `takeInjected`: the interrupts the machine injected before this step (KVM's, which
    /// the engine cannot report as events of its own).
    public func step(_ backend: any VCPUBackend, takeInjected: () -> [UInt8]) {
        guard let now = try? backend.readState() else { return }
        defer { previous = now; recorder.io.removeAll() }
        let trace = (backend as? TraceSource)?.drainTrace() ?? (accesses: [], events: [])
        let p = previous
        let seq = recorder.sequence
        recorder.sequence += 1
        guard recorder.admit(seq, p.rip) else { return }
        let faulted = trace.events.contains { $0.kind == .exception && $0.rip == p.rip && $0.cs == p.cs.selector }
        if !faulted {
            // PVM's KVM completes a port I/O instruction on re-entry without its single-step
            // trap, so one step covers it and the next instruction: record both.
            let bytes = instructionBytes(p, backend)
            let length = UInt64(bytes.count)
            var after = p
            after.rip = p.mode.bits == 64 ? p.rip &+ length : (p.rip &+ length) & (p.mode.bits == 32 ? 0xFFFF_FFFF : 0xFFFF)
            recorder.encodeInstruction(seq, before: p, after: now, bytes: bytes, accesses: trace.accesses, withIO: true)
            if !(backend is TraceSource), !recorder.io.isEmpty, length > 0, now.rip != after.rip {
                recorder.sequence += 1
                if recorder.admit(seq + 1, after.rip) {
                    recorder.encodeInstruction(seq + 1, before: after, after: now, bytes: instructionBytes(after, backend), accesses: [], withIO: false)
                }
            }
        }
        for e in trace.events where recorder.admit(seq, nil) { recorder.encodeEvent(seq, e) }
        // KVM: the interrupts the machine injected before this step, where the guest was.
        for v in takeInjected() where recorder.admit(seq, nil) {
            recorder.encodeEvent(seq, InterruptEvent(kind: .external, vector: v, errorCode: nil, cs: p.cs.selector, rip: p.rip))
        }
        if p.mode != now.mode, recorder.admit(seq, nil) { recorder.encodeMode(seq, from: p.mode, to: now.mode, cs: now.cs.selector, rip: now.rip) }
    }

    /// `--trace-exits`: one record per exit, no single-stepping.
    public func exit(_ exit: VCPUExit, _ backend: any VCPUBackend) {
        let rip = (try? backend.readState().rip) ?? 0
        let seq = recorder.sequence
        recorder.sequence += 1
        guard recorder.admit(seq, nil) else { return }
        let (name, detail) = Self.describe(exit)
        recorder.encodeExit(seq, name: name, rip: rip, details: detail)
    }

    static func describe(_ exit: VCPUExit) -> (String, [(String, String)]) {
        switch exit {
        case let .portIn(port, size, count, _): ("io-in", [("port", "\"\(hex(port))\""), ("size", "\(size)"), ("count", "\(count)")])
        case let .portOut(port, size, count, data):
            ("io-out", [("port", "\"\(hex(port))\""), ("size", "\(size)"), ("count", "\(count)"),
                        ("value", "\"\(hex(load(data, size)))\"")])
        case let .mmioRead(address, size, _): ("mmio-read", [("address", "\"\(hex(address))\""), ("size", "\(size)")])
        case let .mmioWrite(address, size, data):
            ("mmio-write", [("address", "\"\(hex(address))\""), ("size", "\(size)"), ("value", "\"\(hex(load(data, size)))\"")])
        case .halt: ("hlt", [])
        case .shutdown: ("shutdown", [])
        case .unsupportedInstruction(let s): ("unsupported", [("detail", "\"\(s)\"")])
        case .failedEntry(let r): ("fail-entry", [("reason", "\"\(hex(r))\"")])
        case .internalError(let s): ("internal-error", [("detail", "\"\(s)\"")])
        case .debugStep: ("debug", [])
        case .interrupted: ("interrupted", [])
        case .instructionLimit: ("instruction-limit", [])
        }
    }

    static func load(_ p: UnsafeRawPointer, _ size: Int) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: p, byteCount: min(size, 8)) }
        return v
    }

    /// The bytes of the instruction at `p`'s CS:RIP (as many as Capstone decodes).
    func instructionBytes(_ p: CPUState, _ backend: any VCPUBackend) -> [UInt8] {
        var linear = p.cs.base &+ p.rip
        if p.mode.bits < 64 { linear &= 0xFFFF_FFFF }
        let physical = p.cr0 & CR0.pg != 0 ? backend.translate(linear: linear) : linear
        let raw = physical.map { memory.bytes(at: $0, count: 15) } ?? []
        let d = disassembler.disassemble(raw, address: p.rip, bits: p.mode.bits)
        return Array(raw.prefix(d?.length ?? 0))
    }
}

/// The trace a machine writes now — `--trace` from the start, or gdb's `monitor trace
/// on|off` while every vCPU is stopped — and a generation number that each vCPU compares
/// with the one it follows to see that the trace changed.
package final class MachineTrace: Sendable {
    private let state: Mutex<(sink: TraceSink?, generation: Int)>

    package init(_ sink: TraceSink?) { state = Mutex((sink, 0)) }

    package var current: (sink: TraceSink?, generation: Int) { state.withLock { $0 } }
    package var sink: TraceSink? { state.withLock { $0.sink } }

    /// Puts `sink` in the old one's place (only while every vCPU is parked, each having
    /// handed its records to the old sink); returns the old one.
    package func replace(with sink: TraceSink?) -> TraceSink? {
        state.withLock { s in
            let old = s.sink
            s = (sink, s.generation + 1)
            return old
        }
    }
}

/// One vCPU's part of the machine's trace, made and used on the vCPU's thread.
package final class VCPUTrace {
    package let recorder: TraceRecorder
    /// Records made from the vCPU loop: KVM's (single-stepped), and every backend's under
    /// `--trace-exits`; nil where the interpreter records inside its run loop.
    package let tracer: VCPUTracer?
    /// The backend is single-stepped for the trace.
    package let stepping: Bool
    /// Port I/O answered by the vCPU loop goes into the instruction's record.
    package let recordsIO: Bool

    package init(recorder: TraceRecorder, tracer: VCPUTracer?, stepping: Bool, recordsIO: Bool) {
        self.recorder = recorder
        self.tracer = tracer
        self.stepping = stepping
        self.recordsIO = recordsIO
    }
}
