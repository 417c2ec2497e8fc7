import KVM
#if canImport(Glibc)
import Glibc
#endif
import Disassembler
import GuestMemory
import HostOS
import Synchronization
import X86

/// `--trace-format`.
public enum TraceFormat: String, CaseIterable, Sendable {
    case text, jsonl
}

/// What `tandem run --trace` records, and where.
public struct TraceOptions: Sendable {
    public var path: String
    public var format: TraceFormat = .text
    /// Only VM exits, at full speed (no single-stepping).
    public var exitsOnly = false
    /// Only instructions whose RIP is in this range.
    public var range: ClosedRange<UInt64>? = nil
    /// The first sequence number recorded.
    public var from: UInt64 = 0
    /// At most this many records (then tracing stops and the guest runs at full speed).
    public var count: UInt64? = nil
    /// Keep only the last N records in memory and write them only if the run ends badly.
    public var last: Int? = nil

    public init(path: String) { self.path = path }
}

/// The trace file: records from every vCPU thread, streamed through a buffer (or kept
/// in a ring for `--trace-last`).
final class TraceWriter: @unchecked Sendable {
    let options: TraceOptions
    private let fd: Int32
    private let lock = HostLock()
    private var buffer: [UInt8] = []
    private var ring: [String] = []
    private var ringStart = 0
    private var written: UInt64 = 0
    /// Set once `--trace-count` records are out, or the file cannot be written: vCPUs
    /// stop single-stepping.
    let full = Atomic<Bool>(false)
    /// Set at the first write error, which is reported once; nothing is written after it.
    private var failed = false
    private let onWriteError: @Sendable (String) -> Void

    /// `onWriteError` gets one line (without "tandem: ") the first time the file cannot be written.
    init(_ options: TraceOptions, onWriteError: @escaping @Sendable (String) -> Void = { _ in }) throws(MachineError) {
        self.options = options
        self.onWriteError = onWriteError
        switch openOutputFile(options.path) {
        case .success(let opened): fd = opened
        case .failure(let error): throw MachineError(.usage, "cannot open trace file \(options.path): \(describeOpenError(error))")
        }
        buffer.reserveCapacity(1 << 16)
    }

    deinit { close(fd) }

    /// Adds one record (one line). Returns false once the record budget is spent.
    func emit(_ line: String) {
        lock.lock()
        defer { lock.unlock() }
        if failed { return }
        if let count = options.count, written >= count { return }
        written += 1
        if let count = options.count, written >= count { full.store(true, ordering: .relaxed) }
        if let last = options.last {
            if ring.count < last { ring.append(line) } else { ring[ringStart] = line; ringStart = (ringStart + 1) % last }
            return
        }
        buffer += Array(line.utf8)
        buffer.append(0x0A)
        if buffer.count >= 1 << 16 { drain() }
    }

    /// Ends the trace: a ring buffer is written only when the run ended badly.
    func finish(status: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if options.last != nil {
            if status != 0 {
                for i in 0..<ring.count {
                    buffer += Array(ring[(ringStart + i) % ring.count].utf8)
                    buffer.append(0x0A)
                }
            }
            ring.removeAll()
        }
        drain()
    }

    private func drain() {
        defer { buffer.removeAll(keepingCapacity: true) }
        guard !failed, !buffer.isEmpty, let error = buffer.withUnsafeBytes({ writeAll(fd, $0) }) else { return }
        failed = true
        full.store(true, ordering: .relaxed)
        onWriteError("cannot write trace file \(options.path): \(error)")
    }
}

/// One vCPU's tracing state: the state before the step, pending port I/O, a disassembler.
final class VCPUTracer {
    let vcpu: Int
    let writer: TraceWriter
    let memory: GuestMemoryMap
    let disassembler = Disassembler()
    var previous: CPUState
    var sequence: UInt64 = 0
    var io: [(out: Bool, port: UInt16, size: Int, value: UInt32)] = []

    init(vcpu: Int, writer: TraceWriter, memory: GuestMemoryMap, state: CPUState) {
        self.vcpu = vcpu
        self.writer = writer
        self.memory = memory
        self.previous = state
    }

    var json: Bool { writer.options.format == .jsonl }

    /// An instruction retired (or faulted): emit its records and remember the new state.
    func step(_ backend: any VCPUBackend) {
        guard let now = try? backend.readState() else { return }
        defer { previous = now; io.removeAll() }
        let trace = (backend as? TraceSource)?.drainTrace() ?? (accesses: [], events: [])
        let p = previous
        let seq = sequence
        sequence += 1
        let inRange = writer.options.range.map { $0.contains(p.rip) } ?? true
        guard seq >= writer.options.from, inRange else { return }
        let faulted = trace.events.contains { $0.kind == .exception && $0.rip == p.rip && $0.cs == p.cs.selector }
        if !faulted {
            // PVM's KVM completes a port I/O instruction on re-entry without its single-step
            // trap, so one step covers it and the next instruction: record both.
            let length = UInt64(instructionBytes(p, backend).count)
            var after = p
            after.rip = p.mode.bits == 64 ? p.rip &+ length : (p.rip &+ length) & (p.mode.bits == 32 ? 0xFFFF_FFFF : 0xFFFF)
            if !(backend is TraceSource), !io.isEmpty, length > 0, now.rip != after.rip {
                writer.emit(instructionRecord(seq, p, now, backend, trace.accesses))
                sequence += 1
                if seq + 1 >= writer.options.from { writer.emit(instructionRecord(seq + 1, after, now, backend, [], io: false)) }
            } else {
                writer.emit(instructionRecord(seq, p, now, backend, trace.accesses))
            }
        }
        for e in trace.events { writer.emit(eventRecord(seq, e)) }
        // KVM: the interrupts the machine injected before this step, where the guest was.
        if let kvm = backend as? KVMVCPU {
            for v in kvm.takeInjected() {
                writer.emit(eventRecord(seq, InterruptEvent(kind: .external, vector: v, errorCode: nil, cs: p.cs.selector, rip: p.rip)))
            }
        }
        if p.mode != now.mode { writer.emit(modeRecord(seq, from: p.mode, to: now.mode, at: now)) }
    }

    /// `--trace-exits`: one record per exit, no single-stepping.
    func exit(_ exit: VCPUExit, _ backend: any VCPUBackend) {
        let rip = (try? backend.readState().rip) ?? 0
        let seq = sequence
        sequence += 1
        guard seq >= writer.options.from else { return }
        let (name, detail) = Self.describe(exit)
        if json {
            writer.emit("{\"type\":\"exit\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"exit\":\"\(name)\",\"rip\":\"\(hex(rip))\"\(detail.isEmpty ? "" : ",")\(detail.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ","))}")
        } else {
            writer.emit("vcpu\(vcpu) #\(seq) exit \(name) rip=\(hex(rip)) " + detail.map { "\($0.0)=\($0.1.filter { $0 != "\"" })" }.joined(separator: " "))
        }
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

    /// The bytes of the instruction at `p`'s CS:RIP and its disassembly.
    func instruction(_ p: CPUState, _ backend: any VCPUBackend) -> (bytes: [UInt8], text: String) {
        var linear = p.cs.base &+ p.rip
        if p.mode.bits < 64 { linear &= 0xFFFF_FFFF }
        let physical = p.cr0 & CR0.pg != 0 ? backend.translate(linear: linear) : linear
        let raw = physical.map { memory.bytes(at: $0, count: 15) } ?? []
        let d = disassembler.disassemble(raw, address: p.rip, bits: p.mode.bits)
        return (Array(raw.prefix(d?.length ?? 0)), d?.text ?? "(unknown)")
    }

    func instructionBytes(_ p: CPUState, _ backend: any VCPUBackend) -> [UInt8] { instruction(p, backend).bytes }

    func instructionRecord(_ seq: UInt64, _ p: CPUState, _ now: CPUState, _ backend: any VCPUBackend, _ accesses: [MemoryAccess], io withIO: Bool = true) -> String {
        let (bytes, asm) = instruction(p, backend)
        let io = withIO ? self.io : []
        let changes = Self.changes(p, now)
        if json {
            var s = "{\"type\":\"insn\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"mode\":\"\(p.mode.rawValue)\",\"cs\":\"\(hex(p.cs.selector))\",\"rip\":\"\(hex(p.rip))\""
            s += ",\"bytes\":\"\(bytes.map { byteHex($0) }.joined())\",\"asm\":\"\(asm)\""
            s += ",\"regs\":{" + changes.map { "\"\($0.0)\":\"\(hex($0.1))\"" }.joined(separator: ",") + "}"
            if !accesses.isEmpty {
                s += ",\"mem\":[" + accesses.map {
                    "{\"op\":\"\($0.write ? "W" : "R")\",\"linear\":\"\(hex($0.linear))\",\"physical\":\"\(hex($0.physical))\",\"size\":\($0.size),\"value\":\"\(hex($0.value))\"}"
                }.joined(separator: ",") + "]"
            }
            if !io.isEmpty {
                s += ",\"io\":[" + io.map { "{\"dir\":\"\($0.out ? "out" : "in")\",\"port\":\"\(hex($0.port))\",\"size\":\($0.size),\"value\":\"\(hex($0.value))\"}" }.joined(separator: ",") + "]"
            }
            return s + "}"
        }
        let cs = String(p.cs.selector, radix: 16)
        var s = "vcpu\(vcpu) #\(seq) \(padRight(p.mode.rawValue, 6)) \(String(repeating: "0", count: max(0, 4 - cs.count)) + cs):\(hex(p.rip))  "
        s += padRight(bytes.map { byteHex($0) }.joined(separator: " "), 30)
        s += padRight(asm, 36)
        s += changes.map { "\($0.0)=\(hex($0.1))" }.joined(separator: " ")
        for a in accesses {
            s += " | \(a.write ? "W" : "R") \(hex(a.linear))/\(hex(a.physical)) \(a.size) \(hex(a.value))"
        }
        for o in io { s += " | \(o.out ? "out" : "in") port \(hex(o.port)) \(o.size) \(hex(o.value))" }
        return s
    }

    func eventRecord(_ seq: UInt64, _ e: InterruptEvent) -> String {
        if json {
            return "{\"type\":\"\(e.kind == .exception ? "exception" : "interrupt")\",\"kind\":\"\(e.kind.rawValue)\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"vector\":\(e.vector)" +
                (e.errorCode.map { ",\"error_code\":\"\(hex($0))\"" } ?? "") + ",\"cs\":\"\(hex(e.cs))\",\"rip\":\"\(hex(e.rip))\"}"
        }
        return "vcpu\(vcpu) #\(seq) \(e.kind == .exception ? "exception" : "interrupt (\(e.kind.rawValue))") vector \(e.vector)" +
            (e.errorCode.map { " error=\(hex($0))" } ?? "") + " at \(hex(e.cs)):\(hex(e.rip))"
    }

    func modeRecord(_ seq: UInt64, from: ExecutionMode, to: ExecutionMode, at s: CPUState) -> String {
        if json {
            return "{\"type\":\"mode\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"from\":\"\(from.rawValue)\",\"to\":\"\(to.rawValue)\",\"cs\":\"\(hex(s.cs.selector))\",\"rip\":\"\(hex(s.rip))\"}"
        }
        return "vcpu\(vcpu) #\(seq) mode \(from.rawValue) -> \(to.rawValue) at \(hex(s.cs.selector)):\(hex(s.rip))"
    }

    /// The registers an instruction changed, with their new values.
    static func changes(_ a: CPUState, _ b: CPUState) -> [(String, UInt64)] {
        zip(a.namedFields, b.namedFields).filter { $0.value != $1.value && $0.name != "rip" }.map { ($1.name, $1.value) }
    }
}

func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
func byteHex(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }

func padRight(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}
