import Devices
import Tracing
import X86

// The one place a vCPU exit is answered (Documentation/Architecture.md, "The exit
// handler"): `tandem run`'s vCPU threads, `tandem diff` (both sides), the fuzz sandbox, the
// conformance runner and `tandem check`'s calibration all hand their engine's exits here.
// What differs between them is only who answers port and MMIO accesses (`ExitAnswering`):
// the machine's device buses, recorded values replayed to the interpreter (diff), or
// nothing at all (sandboxes). Everything else an exit can mean comes back to the caller as
// an `ExitOutcome`, whose policy (sleep in HLT, end the comparison, report a triple fault)
// is the caller's.

/// Who answers a vCPU's port and MMIO accesses. Generic, not an existential: the handler
/// is specialised for each answerer (no dynamic dispatch on the exit path).
public protocol ExitAnswering {
    /// An `in` of `size` bytes (1, 2 or 4) from `port`.
    mutating func portIn(_ port: UInt16, size: Int) -> UInt32
    /// An `out` of `size` bytes to `port`.
    mutating func portOut(_ port: UInt16, size: Int, value: UInt32)
    /// A read of `size` bytes (at most 8 are answered) from a physical address no RAM backs.
    mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64
    /// A write to a physical address no RAM backs (or to ROM).
    mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64)
}

/// What an exit means to the caller once its port or MMIO access (if any) was answered.
public enum ExitOutcome: Equatable, Sendable {
    /// A port or MMIO access, answered: the engine completes the instruction when it runs
    /// again (the vCPU is not at an instruction boundary).
    case answered
    /// HLT.
    case halted
    /// A triple fault (the vCPU shut down).
    case shutdown
    /// A single step completed (the debugger, `--trace` on KVM, diff's lockstep).
    case stepped
    /// A kick, a signal or the vCPU's own timer: nothing happened in the guest; the caller
    /// looks at its commands and runs the engine again.
    case interrupted
    /// The engine's instruction budget ran out (`--max-instructions`, a handoff's one
    /// instruction, a `--switch-every` slice).
    case instructionLimit
    /// The engine cannot execute the instruction at RIP (its detail).
    case unsupported(String)
    /// The hardware refused to enter the guest (its reason code).
    case entryFailed(UInt64)
    /// The engine failed in a way it could not classify.
    case internalError(String)
}

/// Answers exits with `answers` and turns the rest into `ExitOutcome`s.
public struct ExitHandler<Answers: ExitAnswering> {
    public var answers: Answers

    public init(_ answers: Answers) { self.answers = answers }

    /// Answers `exit` if it is a port or MMIO access (reads fill the engine's buffer, which
    /// stays valid until its next `run()`), and says what it means.
    @inlinable
    public mutating func handle(_ exit: VCPUExit) -> ExitOutcome {
        switch exit {
        case let .portIn(port, size, count, data):
            for k in 0..<count {
                let v = answers.portIn(port, size: size)
                withUnsafeBytes(of: v.littleEndian) { (data + k * size).copyMemory(from: $0.baseAddress!, byteCount: size) }
            }
            return .answered
        case let .portOut(port, size, count, data):
            for k in 0..<count {
                var v: UInt32 = 0
                withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: data + k * size, byteCount: size) }
                answers.portOut(port, size: size, value: UInt32(littleEndian: v))
            }
            return .answered
        case let .mmioRead(address, size, data):
            let v = answers.mmioRead(address, size: size)
            withUnsafeBytes(of: v.littleEndian) { data.copyMemory(from: $0.baseAddress!, byteCount: min(size, 8)) }
            return .answered
        case let .mmioWrite(address, size, data):
            var v: UInt64 = 0
            withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: data, byteCount: min(size, 8)) }
            answers.mmioWrite(address, size: size, value: UInt64(littleEndian: v))
            return .answered
        case .halt: return .halted
        case .shutdown: return .shutdown
        case .debugStep: return .stepped
        case .interrupted: return .interrupted
        case .instructionLimit: return .instructionLimit
        case .unsupportedInstruction(let detail): return .unsupported(detail)
        case .failedEntry(let reason): return .entryFailed(reason)
        case .internalError(let detail): return .internalError(detail)
        }
    }

    /// Runs `engine` to its next exit and handles it.
    @inlinable
    public mutating func run(_ engine: some VCPUBackend) throws(BackendError) -> ExitOutcome {
        handle(try engine.run())
    }
}

/// The machine's device model: ports to its port bus, MMIO to its MMIO bus (as vCPU
/// `vcpu`: the local APIC is per vCPU). With `portLog` set (`--trace` records each traced
/// instruction's port accesses) every port access is appended to it.
public struct DeviceBuses: ExitAnswering {
    public let devices: DeviceModel
    public let vcpu: Int
    public var portLog: TraceRecorder?

    public init(_ devices: DeviceModel, vcpu: Int, portLog: TraceRecorder? = nil) {
        self.devices = devices
        self.vcpu = vcpu
        self.portLog = portLog
    }

    @inlinable
    public mutating func portIn(_ port: UInt16, size: Int) -> UInt32 {
        let v = devices.ports.read(port, size: size)
        portLog?.io.append(PortAccess(out: false, port: port, size: size, value: v))
        return v
    }

    @inlinable
    public mutating func portOut(_ port: UInt16, size: Int, value: UInt32) {
        devices.ports.write(port, size: size, value: value)
        portLog?.io.append(PortAccess(out: true, port: port, size: size, value: value))
    }

    @inlinable
    public mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64 { devices.mmioRead(vcpu: vcpu, address, size: size) }

    @inlinable
    public mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64) { devices.mmioWrite(vcpu: vcpu, address, size: size, value: value) }
}

/// No devices, as test harnesses and sandboxes run: reads return all ones (as an
/// unclaimed port or an open bus does) and writes vanish.
public struct NoDevices: ExitAnswering {
    public init() {}
    public func portIn(_ port: UInt16, size: Int) -> UInt32 { UInt32(truncatingIfNeeded: (UInt64(1) << (8 * size)) - 1) }
    public func portOut(_ port: UInt16, size: Int, value: UInt32) {}
    public func mmioRead(_ address: UInt64, size: Int) -> UInt64 { size >= 8 ? .max : (UInt64(1) << (8 * size)) - 1 }
    public func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {}
}

extension VCPUExit {
    /// Whether the vCPU stands between two instructions after this exit. After port I/O
    /// and MMIO it does not: the engine completes the instruction when it runs again.
    public var isAtInstructionBoundary: Bool {
        switch self {
        case .interrupted, .instructionLimit, .debugStep, .halt: true
        default: false
        }
    }
}

/// How `runWithoutDevices` ended.
public enum DevicelessStop: Equatable, Sendable {
    case halted
    case tripleFault
    /// The backend cannot execute an instruction (its detail).
    case unsupported(String)
    /// A kick (not retried) or the instruction limit.
    case stopped
    /// `maxExits` exits passed without a stop.
    case exhausted
    /// The backend failed (a description).
    case backendError(String)
}

extension VCPUBackend {
    /// Runs with no devices attached (`NoDevices`), as test harnesses do, until HLT or
    /// another stop. An `.interrupted` exit is retried while `retryInterrupted()` says so.
    public func runWithoutDevices(maxExits: Int, retryInterrupted: () -> Bool = { false }) -> DevicelessStop {
        var handler = ExitHandler(NoDevices())
        for _ in 0..<maxExits {
            let outcome: ExitOutcome
            do { outcome = try handler.run(self) } catch { return .backendError("backend error: \(error)") }
            switch outcome {
            case .answered, .stepped: continue
            case .halted: return .halted
            case .shutdown: return .tripleFault
            case .unsupported(let s): return .unsupported(s)
            case .interrupted: if retryInterrupted() { continue } else { return .stopped }
            case .instructionLimit: return .stopped
            case .entryFailed(let r): return .backendError("entry failed \(r)")
            case .internalError(let s): return .backendError("internal error: \(s)")
            }
        }
        return .exhausted
    }
}
