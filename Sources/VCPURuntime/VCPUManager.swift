#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Devices
import Disassembler
import GDBStub
import GuestMemory
import HostOS
import Interpreter
import KVM
import Synchronization
import Tracing
import X86

// The run loop's module (Documentation/Architecture.md): a machine's vCPUs at run time.
// `Machine` assembles a VM — its memory, device model, engines, image — and hands the
// parts the vCPUs use at every turn to a `VCPUManager`, which runs them: the vCPU threads
// and the state machine each runs (VCPULoop.swift), engine switching and handoffs
// (EngineSwitch.swift), the hybrid engine (Hybrid.swift), parking for the debugger
// (Debugger.swift) and for live snapshots (SnapshotParking.swift), and tracing
// (VCPUTracing.swift). Everything here is concrete — the engines' own classes, the device
// model, the debugger's control — so the loop reaches none of it through a protocol; and
// nothing here knows `Machine`.

/// Why a machine stopped (`Machine` gives each its exit status and its line on stderr).
public enum StopReason: Sendable {
    /// The guest wrote v to the exit device.
    case guestExit(UInt8)
    /// Every vCPU halted and nothing can wake one; `interruptsDisabled` is true when all had IF=0.
    case allHalted(interruptsDisabled: Bool)
    case tripleFault(VCPUReport)
    case unsupportedInstruction(VCPUReport, String)
    case entryFailed(VCPUReport, UInt64)
    case hostError(String)
    case timeout(Double)
    /// SIGINT, SIGTERM, SIGHUP or SIGQUIT.
    case interrupted(signal: Int32)
    case instructionLimit
    /// The console or the trace could not be written.
    case outputError(String)
    /// The guest reset the machine (i8042, 0xCF9).
    case guestReset
    /// The guest entered ACPI S5 (soft off) through PM1a_CNT.
    case powerOff
    /// gdb's `kill` (the `k` packet).
    case debuggerKilled
}

/// Where a vCPU was when something happened: for one-line reports.
public struct VCPUReport: Sendable, CustomStringConvertible {
    public var vcpu: Int
    public var state: CPUState
    public var bytes: [UInt8]
    public var disassembly: String

    public var description: String {
        let cs = String(state.cs.selector, radix: 16)
        return "vcpu\(vcpu) at \(String(repeating: "0", count: max(0, 4 - cs.count)) + cs):0x\(String(state.rip, radix: 16)) (\(state.mode.rawValue)): \(disassembly)"
    }
}

/// The two engines a vCPU can run on (`Machine.switch(vcpu:to:)`).
public enum Engine: String, CaseIterable, Sendable {
    case kvm
    case interp
}

/// Where the vCPUs ran, on a machine that moves them between engines.
public struct EngineStatistics: Sendable {
    public var interpreterSeconds: Double
    public var kvmSeconds: Double
    public var switches: Int
}

/// Machine time for `--clock instructions`.
package final class VirtualTime: Sendable {
    package let nanoseconds: Atomic<UInt64>
    package init(startingAt start: UInt64 = 0) { nanoseconds = Atomic(start) }
}

/// Why the vCPU manager could not do what it was asked (the machine gives it its exit status).
package struct VCPUManagerError: Error, CustomStringConvertible, Sendable {
    package var description: String
    init(_ description: String) { self.description = description }
}

extension String {
    package init(format3 value: Double) {
        let scaled = (value * 1000).rounded() / 1000
        self = String(scaled)
    }
}

/// The engines a machine built for its vCPUs (`Machine` chooses and builds them).
package struct VCPUEngines {
    /// Per vCPU, the engine it starts on.
    package var backends: [any VCPUBackend]
    /// "kvm", "interp", "hybrid".
    package var name: String
    /// The KVM VM (its fd stays open as long as its vCPUs).
    package var kvm: KVMVirtualMachine?
    /// An interpreter machine's KVM vCPUs, to switch to (`--switch-every`, gdb's `monitor engine`).
    package var switchTargets: [KVMVCPU] = []
    /// The interpreter that runs what KVM cannot (KVM and hybrid machines).
    package var fallback: InterpreterMachine?
    /// How KVM and the interpreter share the vCPUs where KVM delivers no events (Hybrid.swift).
    package var placement: Placement?

    package init(backends: [any VCPUBackend], name: String, kvm: KVMVirtualMachine?) {
        self.backends = backends
        self.name = name
        self.kvm = kvm
    }
}

/// A machine's vCPUs at run time: one host thread per vCPU ("vcpu0", "vcpu1", ...)
/// running the shared vCPU loop (VCPULoop.swift) over its engines, commanded through one
/// channel per vCPU, and what the loop reads at every turn: the device model, the virtual
/// clock, the debugger's control, the trace. Built by `Machine`, which reports the run.
package final class VCPUManager: @unchecked Sendable {
    /// The guest CPU (CPUID and model MSRs) every engine of the machine answers from.
    let cpu: GuestCPU
    package let memory: GuestMemoryMap
    package let devices: DeviceModel
    package let backendName: String
    let backends: [any VCPUBackend]
    /// `--clock instructions`: machine time in nanoseconds, advanced by retired instructions.
    let virtualTime: VirtualTime?
    /// Per vCPU: the backend running it now (KVM, or the interpreter during a fallback).
    let slots: [VCPUSlot]
    /// The interpreter that takes over instructions KVM cannot emulate (KVM machines only).
    package let fallback: InterpreterMachine?
    /// `--gdb`: the debugger's control of the vCPUs.
    let debug: DebugControl?
    /// The trace being written (`--trace`, or gdb's `monitor trace on`).
    let trace: MachineTrace
    /// When `run` started (for `monitor stats`).
    let runStarted = Atomic<UInt64>(0)
    // Keeps the KVM VM fd open as long as the vCPUs.
    let kvm: KVMVirtualMachine?
    /// How KVM and the interpreter share the vCPUs where KVM cannot deliver the guest's
    /// events (Hybrid.swift): the hybrid engine, or `--backend kvm` on a PVM host.
    let placement: Placement?
    /// `--backend hybrid`: each vCPU runs 64-bit user mode on KVM and the rest on the
    /// interpreter (Hybrid.swift).
    package var hybrid: Bool { placement == .hybrid }
    /// `--switch-every N`: the instructions (interpreter) or single-steps (KVM) of each
    /// vCPU's slice on one engine (EngineSwitch.swift).
    let switchSlice: UInt64?
    /// `--switch-every TIME`: how often a timer moves every vCPU to the other engine.
    let switchPeriod: Double?
    /// `--snapshot-on-exit`: a stopping vCPU completes the instruction its last exit left
    /// unfinished, so that its final state is at an instruction boundary.
    let completesExitAtStop: Bool

    struct Control {
        var reason: StopReason?
        var halted = 0
        var haltedWithInterruptsEnabled = 0
        var finalStates: [CPUState?]
        /// An output error after the stop (the final flush of the console or the trace).
        var lateOutputError: String?
    }
    let control: Mutex<Control>
    let stopped = DispatchSemaphore(value: 0)
    /// Per vCPU: signalled when it may have an event to take (it waits on it in HLT and
    /// in wait-for-SIPI) and at stop.
    let wakeups: [HostWakeup]
    /// A snapshot taken while the guest runs (SIGUSR2): the vCPUs park for it.
    let liveSnapshot = LiveSnapshot()

    /// The vCPUs of a machine over `engines`, in the state their engines hold; application
    /// processors wait for a start-up IPI unless `startsAllCPUs`. Nothing runs until `run`.
    package init(engines: VCPUEngines, cpu: GuestCPU, memory: GuestMemoryMap, devices: DeviceModel,
                 virtualTime: VirtualTime?, trace: MachineTrace, startsAllCPUs: Bool, gdb: GDBOptions?,
                 switchSlice: UInt64?, switchPeriod: Double?, completesExitAtStop: Bool) {
        self.cpu = cpu
        self.memory = memory
        self.devices = devices
        backendName = engines.name
        backends = engines.backends
        kvm = engines.kvm
        fallback = engines.fallback
        placement = engines.placement
        self.virtualTime = virtualTime
        self.trace = trace
        self.switchSlice = switchSlice
        self.switchPeriod = switchPeriod
        self.completesExitAtStop = completesExitAtStop
        control = Mutex(Control(finalStates: Array(repeating: nil, count: backends.count)))
        wakeups = backends.map { _ in HostWakeup() }
        let slots = backends.map { VCPUSlot(active: $0) }
        self.slots = slots
        // The engine each vCPU can move to (EngineSwitch.swift): a KVM vCPU's interpreter is made on first use.
        for (slot, kvmVCPU) in zip(slots, engines.switchTargets) {
            kvmVCPU.interruptController = devices.apic
            slot.kvm = kvmVCPU
            slot.fallbackVCPU = slot.active as? InterpreterVCPU
            slot.fallbackVCPU?.tscKHz = kvmVCPU.tscKHz
        }
        if backendName == "kvm" { for slot in slots { slot.kvm = slot.active } }
        // Application processors wait for INIT-SIPI-SIPI from the bootstrap processor.
        if !startsAllCPUs { for slot in slots.dropFirst() { slot.runState = .waitForSIPI } }
        debug = gdb.map { DebugControl(channels: slots.map(\.commands), startPaused: $0.waitForDebugger) }
    }

    // MARK: What the machine reads after a run

    /// Why the machine stopped (nil while it runs).
    package var stopReason: StopReason? { control.withLock { $0.reason } }
    /// An output error after the stop (the final flush of the console or the trace).
    package var lateOutputError: String? { control.withLock { $0.lateOutputError } }

    /// Each vCPU's state when its thread stopped, with its run state (nil: unreadable).
    package func finalStates() -> [CPUState?] {
        control.withLock { $0.finalStates }.enumerated().map { i, state in
            guard var state else { return nil }
            state.runState = slots[i].runState
            return state
        }
    }

    /// Per vCPU, the instructions its engine retired (nil where the engine does not count).
    package var instructionsRetired: [UInt64?] { backends.map(\.instructionsRetired) }
    /// Of those, per vCPU, the instructions the interpreter's translated code ran (nil on KVM).
    package var translatedInstructions: [UInt64?] { backends.map { ($0 as? InterpreterVCPU)?.translatedRetired } }
    /// Whether a vCPU moved between engines (outside the hybrid engine, which always does).
    package var switched: Bool { slots.contains { $0.switches > 0 } && !hybrid }
    /// KVM → interpreter handoffs, and the instructions the interpreter ran for KVM.
    package var handoffs: Int { slots.map(\.handoffs).reduce(0, +) }
    package var fallbackInstructions: UInt64 { slots.compactMap { $0.fallbackVCPU?.retired }.reduce(0, +) }
    /// Of those, the instructions its translated code ran.
    package var fallbackTranslated: UInt64 { slots.compactMap { $0.fallbackVCPU?.translatedRetired }.reduce(0, +) }

    // MARK: Reports

    /// Where vCPU `index` is now, with the instruction there disassembled.
    func report(_ index: Int) -> VCPUReport {
        let state = (try? slots[index].guestState()) ?? CPUState()
        return report(index, state: state)
    }

    package func report(_ index: Int, state: CPUState) -> VCPUReport {
        let mode = state.mode
        var linear = state.cs.base &+ state.rip
        if mode.bits < 64 { linear &= 0xFFFF_FFFF }
        let physical = state.cr0 & CR0.pg != 0 ? slots[index].active.translate(linear: linear) : linear
        guard let physical else {
            return VCPUReport(vcpu: index, state: state, bytes: [], disassembly: "(instruction at unmapped linear address 0x\(String(linear, radix: 16)))")
        }
        let bytes = memory.bytes(at: physical, count: 15)
        let text = Disassembler().disassemble(bytes, address: state.rip, bits: mode.bits)
        let shown = bytes.prefix(text?.length ?? 0)
        return VCPUReport(vcpu: index, state: state, bytes: Array(shown),
                          disassembly: text?.text ?? "(undecodable: \(bytes.prefix(8).map { String(format2: $0) }.joined(separator: " ")))")
    }
}
