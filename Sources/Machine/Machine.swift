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
import Loaders
import RunLoop
import Synchronization
import X86
import Tracing

/// Why a machine stopped.
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

    public var status: Int32 {
        switch self {
        case .guestExit(let v): Int32(v)
        case .allHalted: 0
        case .tripleFault: ExitStatus.tripleFault.rawValue
        case .unsupportedInstruction: ExitStatus.unsupportedInstruction.rawValue
        case .entryFailed: ExitStatus.entryFailed.rawValue
        case .hostError: ExitStatus.hostError.rawValue
        case .timeout: ExitStatus.timeout.rawValue
        case .interrupted: ExitStatus.interrupted.rawValue
        case .instructionLimit: ExitStatus.instructionLimit.rawValue
        case .outputError: ExitStatus.outputError.rawValue
        case .guestReset: ExitStatus.guestReset.rawValue
        case .powerOff: 0
        case .debuggerKilled: ExitStatus.debuggerKilled.rawValue
        }
    }
}

extension StopReason {
    /// The guest ended the run itself (the exit device, or halting for good).
    var isGuestEnding: Bool {
        switch self {
        case .guestExit, .allHalted, .powerOff: true
        default: false
        }
    }
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

/// How a run ended: the process exit status and the line for stderr (nil: nothing to say).
public struct RunOutcome: Sendable {
    public var status: Int32
    public var message: String?
    public var reason: StopReason?
    public var statistics: RunStatistics
}

/// What `--stats` reports.
public struct RunStatistics: Sendable, CustomStringConvertible {
    public var backend: String
    public var seconds: Double
    /// Per vCPU; nil where the backend does not count.
    public var instructions: [UInt64?]
    /// KVM → interpreter handoffs (instructions KVM could not emulate).
    public var handoffs: Int = 0
    /// Instructions the interpreter ran during those handoffs (hybrid: all it ran).
    public var fallbackInstructions: UInt64 = 0
    /// `--backend hybrid`, or a machine whose vCPUs switched engines: vCPU time on each
    /// engine (summed over vCPUs) and the switches.
    public var engines: EngineStatistics? = nil

    public var description: String {
        var text = "backend \(backend), \(instructions.count) vCPU\(instructions.count == 1 ? "" : "s"), \(String(format3: seconds)) s"
        let counted = instructions.compactMap { $0 }
        if counted.count == instructions.count {
            let total = counted.reduce(0, +)
            text += ", \(total) instructions (\(String(format3: Double(total) / max(seconds, 1e-9) / 1e6)) M/s)"
            if instructions.count > 1 { text += ", per vCPU: " + counted.map(String.init).joined(separator: " ") }
        } else {
            text += ", instructions not counted by this backend"
        }
        if backend == "kvm" {
            text += ", \(handoffs) handoff\(handoffs == 1 ? "" : "s") to the interpreter (\(fallbackInstructions) instructions)"
        }
        if let h = engines {
            text += "; interpreter \(String(format3: h.interpreterSeconds)) s, \(fallbackInstructions) instructions"
            text += " (\(String(format3: Double(fallbackInstructions) / max(h.interpreterSeconds, 1e-9) / 1e6)) M/s)"
            text += ", KVM \(String(format3: h.kvmSeconds)) s (\(backend == "hybrid" ? "64-bit user mode, " : "")not counted), \(h.switches) engine switches"
        }
        return text
    }
}

extension String {
    package init(format3 value: Double) {
        let scaled = (value * 1000).rounded() / 1000
        self = String(scaled)
    }
}

/// Where the vCPUs ran, on a machine that moves them between engines.
public struct EngineStatistics: Sendable {
    public var interpreterSeconds: Double
    public var kvmSeconds: Double
    public var switches: Int
}

/// An error that keeps a machine from being built or started.
public struct MachineError: Error, CustomStringConvertible, Sendable {
    public var status: ExitStatus
    public var description: String
    public init(_ status: ExitStatus, _ description: String) {
        self.status = status
        self.description = description
    }
}

/// A virtual machine: one guest memory, one device model, and one host thread per vCPU
/// ("vcpu0", "vcpu1", ...) running the shared vCPU loop over its backend.
public final class Machine: @unchecked Sendable {
    public let configuration: MachineConfiguration
    /// The guest CPU (CPUID and model MSRs) every engine of this machine answers from.
    public let cpu: GuestCPU
    public let memory: GuestMemoryMap
    public let devices: DeviceModel
    public let plan: BootPlan
    public let backendName: String
    /// Why `auto` did not choose KVM, if it did not.
    public let backendNote: String?
    let backends: [any VCPUBackend]
    /// `--clock instructions`: machine time in nanoseconds, advanced by retired instructions.
    private let virtualTime: VirtualTime?
    /// Per vCPU: the backend running it now (KVM, or the interpreter during a fallback).
    let slots: [VCPUSlot]
    /// The interpreter that takes over instructions KVM cannot emulate (KVM machines only).
    let fallback: InterpreterMachine?
    /// `--gdb`: the debugger's control of the vCPUs, and the stub that speaks to gdb.
    let debug: DebugControl?
    private let gdbServer: GDBServer?
    /// The TCP port the gdb stub listens on (nil without `--gdb`).
    public var gdbPort: UInt16? { gdbServer?.boundPort }
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
    var hybrid: Bool { placement == .hybrid }

    struct Control {
        var reason: StopReason?
        var halted = 0
        var haltedWithInterruptsEnabled = 0
        var finalStates: [CPUState?]
        /// An output error after the stop (the final flush of the console or the trace).
        var lateOutputError: String?
    }
    let control: Mutex<Control>
    private let stopped = DispatchSemaphore(value: 0)
    /// Per vCPU: signalled when it may have an event to take (it waits on it in HLT and
    /// in wait-for-SIPI) and at stop.
    let wakeups: [HostWakeup]
    private let stopFlag = Atomic<Bool>(false)
    /// A snapshot taken while the guest runs (SIGUSR2): the vCPUs park for it.
    let liveSnapshot = LiveSnapshot()

    /// Builds the machine: reads and loads the image, creates the backend's vCPUs in their
    /// initial state. Nothing runs until `run()`.
    public init(_ configuration: MachineConfiguration) throws(MachineError) {
        self.configuration = configuration
        let c = configuration
        guard (1...MachineConfiguration.maxCPUs).contains(c.cpus) else {
            throw MachineError(.usage, "--cpus must be between 1 and \(MachineConfiguration.maxCPUs), not \(c.cpus)")
        }
        // Guest RAM is mapped (and given to KVM as memslots) in whole host pages.
        guard c.memorySize % 4096 == 0 else {
            throw MachineError(.usage, "--mem \(c.memorySize) bytes is not a whole number of 4 KiB pages")
        }
        let memoryNote = try Self.checkMemoryLimit(c.memorySize, backend: c.backend)
        let cpu = GuestCPU(cpuid: try MachineCPU.cpuid(for: c))
        self.cpu = cpu
        if let snapshot = c.restore {
            // Memory and vCPU states come from the snapshot (`applySnapshot`, below).
            memory = try Self.makeMemory(ramSize: c.memorySize, romSize: snapshot.configuration.romSize)
            plan = .restored(format: snapshot.configuration.format, ramSize: c.memorySize)
        } else {
            let image = try Self.readFile(c.imagePath, what: "image", ramSize: c.memorySize)
            let name = c.imagePath
            let format: ImageFormat
            do { format = c.format == .auto ? try ImageFormat.detect(image, name: name) : c.format } catch {
                throw Self.imageError(error)
            }
            memory = try Self.makeMemory(ramSize: c.memorySize, romSize: Loader.romSize(for: format, image: image))
            let options = try Self.loadOptions(c, format: format)
            do { plan = try Loader.load(image, name: name, as: format, into: memory, options: options) } catch {
                throw Self.imageError(error)
            }
        }
        // The exit device and output errors stop the machine; they must not keep it alive.
        let stopper = WeakBox<Machine>()
        let console: Console
        do {
            console = try Console(c.serial) { line in stopper.value?.requestStop(.outputError(line)) }
        } catch { throw MachineError(.usage, error.description) }
        control = Mutex(Control(finalStates: Array(repeating: nil, count: c.cpus)))
        if c.clock == .instructions && (c.backend == .kvm || c.backend == .hybrid) {
            throw MachineError(.usage, "--clock instructions needs a backend that counts instructions: use --backend interp")
        }
        // A restored machine's clock goes on from the snapshot's time.
        let startTime = c.restore?.configuration.machineTime ?? 0
        let virtualTime = c.clock == .instructions ? VirtualTime(startingAt: startTime) : nil
        self.virtualTime = virtualTime
        devices = DeviceModel(console: console, input: c.input, memory: memory, cpus: c.cpus, x2APIC: cpu.cpuid.offered.contains(.x2apic),
                              clock: virtualTime.map { vt in MachineClock { vt.nanoseconds.load(ordering: .relaxed) } }
                                  ?? (c.restore != nil ? MachineClock(startingAt: startTime) : nil),
                              onInterruptRequest: { stopper.value?.interruptRequested($0) },
                              onReset: { stopper.value?.requestStop(.guestReset) },
                              onPowerOff: { stopper.value?.requestStop(.powerOff) }) { value in stopper.value?.requestStop(.guestExit(value)) }
        wakeups = (0..<c.cpus).map { _ in HostWakeup() }

        if c.switchEvery != nil {
            if c.backend == .hybrid { throw MachineError(.usage, "--switch-every needs --backend kvm, interp or auto: the hybrid engine moves its vCPUs by itself") }
            if c.maxInstructions != nil || c.clock == .instructions {
                throw MachineError(.usage, "--switch-every cannot be combined with \(c.maxInstructions != nil ? "--max-instructions" : "--clock instructions"): KVM counts no instructions")
            }
            if c.trace != nil || c.gdb != nil {
                throw MachineError(.usage, "--switch-every cannot be combined with \(c.trace != nil ? "--trace" : "--gdb") (both single-step KVM)")
            }
        }
        var backendNote: String? = nil
        var kvmToSwitchTo: [KVMVCPU] = []
        switch c.backend {
        case .interp:
            backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
            backendName = "interp"
            // KVM beside it, for --switch-every (required) and gdb's `monitor engine` (if it opens).
            if c.switchEvery != nil || c.gdb != nil {
                do {
                    let built = try Self.buildKVM(c, memory: memory, plan: plan, cpu: cpu)
                    kvm = built.0
                    kvmToSwitchTo = built.1
                } catch {
                    guard c.switchEvery == nil else { throw MachineError(.backendUnavailable, "--switch-every needs KVM, which is unavailable: \(error)") }
                    kvm = nil
                }
            } else {
                kvm = nil
            }
        case .auto where c.clock == .instructions:
            backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
            kvm = nil
            backendName = "interp"
            backendNote = "--clock instructions needs the interpreter"
        case .auto where memoryNote != nil:
            backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
            kvm = nil
            backendName = "interp"
            backendNote = memoryNote
        case .hybrid, .auto where c.maxInstructions == nil && c.gdb == nil && c.switchEvery == nil && !HostCheck.cpuHasVirtualization():
            // `auto` on a host whose KVM runs only 64-bit user mode natively (PVM: no
            // VMX/SVM): the rest would crawl through the host kernel's emulator.
            do {
                let built = try Self.buildKVM(c, memory: memory, plan: plan, cpu: cpu)
                kvm = built.0
                backends = built.1
                backendName = "hybrid"
                if c.backend == .auto { backendNote = "KVM here runs only 64-bit user mode natively (no VMX/SVM): that on KVM, the rest on the interpreter" }
            } catch {
                guard c.backend == .auto else { throw MachineError(.backendUnavailable, "the hybrid engine needs KVM, which is unavailable: \(error)") }
                backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
                kvm = nil
                backendName = "interp"
                backendNote = "KVM is unavailable: \(error)"
            }
        case .kvm, .auto:
            do {
                let built = try Self.buildKVM(c, memory: memory, plan: plan, cpu: cpu)
                kvm = built.0
                backends = built.1
                backendName = "kvm"
            } catch {
                guard c.backend == .auto else { throw MachineError(.backendUnavailable, "KVM is unavailable: \(error)") }
                backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
                kvm = nil
                backendName = "interp"
                backendNote = "KVM is unavailable: \(error)"
            }
        }
        self.backendNote = backendNote
        for b in backends { b.interruptController = devices.apic }
        if let virtualTime {
            for case let b as InterpreterVCPU in backends { b.timeSource = { virtualTime.nanoseconds.load(ordering: .relaxed) } }
        }
        slots = backends.map { VCPUSlot(active: $0) }
        placement = backendName == "hybrid" ? .hybrid
            : backendName == "kvm" && c.gdb == nil && c.trace == nil && c.switchEvery == nil && !HostCheck.cpuHasVirtualization() ? .fallbackStretches
            : nil
        // The engine each vCPU can move to (EngineSwitch.swift): a KVM vCPU's interpreter is made on first use.
        for (slot, kvmVCPU) in zip(slots, kvmToSwitchTo) {
            kvmVCPU.interruptController = devices.apic
            slot.kvm = kvmVCPU
            slot.fallbackVCPU = slot.active as? InterpreterVCPU
            slot.fallbackVCPU?.tscKHz = kvmVCPU.tscKHz
        }
        if backendName == "kvm" { for slot in slots { slot.kvm = slot.active } }
        // Application processors wait for INIT-SIPI-SIPI from the bootstrap processor.
        if !plan.startsAllCPUs { for slot in slots.dropFirst() { slot.runState = .waitForSIPI } }
        do {
            trace = MachineTrace(try c.trace.map { (o) throws(TraceFileError) in
                try TraceSink(o) { line in stopper.value?.requestStop(.outputError(line)) }
            })
        } catch { throw MachineError(.usage, error.description) }
        // POST codes (port 0x80) go into the trace, as Bochs and QEMU log them: into the
        // stream of the vCPU that wrote them, in order with its instructions (with --gdb a
        // trace may start later: `monitor trace on`).
        if c.trace != nil || c.gdb != nil {
            devices.postCodes.observe { code in TraceRecorder.current?.post(code) }
        }
        fallback = backendName == "kvm" || placement == .hybrid ? InterpreterMachine(memory: memory, cpuCount: c.cpus, cpu: cpu) : nil
        if placement == .hybrid, let fallback { try Self.startOnInterpreter(slots, machine: fallback, plan: plan, cpus: c.cpus, interrupts: devices.apic) }
        if c.maxInstructions != nil && (backendName == "kvm" || placement == .hybrid) {
            throw MachineError(.usage, "--max-instructions needs a backend that counts instructions: use --backend interp")
        }
        if let gdb = c.gdb {
            do { gdbServer = try GDBServer(gdb) } catch {
                throw MachineError(error.isUsage ? .usage : .hostError, error.description)
            }
            debug = DebugControl(channels: slots.map(\.commands), startPaused: gdb.waitForDebugger)
        } else {
            gdbServer = nil
            debug = nil
        }
        if let snapshot = c.restore { try applySnapshot(snapshot) }
        if placement == .fallbackStretches { try startWithFallbackStretches() }
        stopper.value = self
    }

    /// Reserves guest memory (an error: a usage error for a size too small, else the host's).
    static func makeMemory(ramSize: UInt64, romSize: Int) throws(MachineError) -> GuestMemoryMap {
        do { return try GuestMemoryMap(ramSize: ramSize, romSize: romSize) } catch {
            switch error {
            case .tooSmall: throw MachineError(.usage, error.description)
            default: throw MachineError(.hostError, error.description)
            }
        }
    }

    /// What the loader is given besides the image: the command line, the Multiboot
    /// modules and the Linux initrd, read whole. `--initrd` is refused (status 200) for an
    /// image that is not a Linux kernel.
    package static func loadOptions(_ c: MachineConfiguration, format: ImageFormat) throws(MachineError) -> LoadOptions {
        var options = LoadOptions()
        options.commandLine = c.commandLine
        options.cpuCount = c.cpus
        for module in c.modules {
            let path = String(module.prefix { $0 != " " })
            options.modules.append((try readFile(path, what: "module", ramSize: c.memorySize), module))
        }
        if let path = c.initrdPath {
            guard format == .linux else {
                throw MachineError(.usage, "--initrd is for Linux kernels, and \(c.imagePath) is a \(format.rawValue) image")
            }
            options.initrd = try readFile(path, what: "initrd", ramSize: c.memorySize)
        }
        return options
    }

    private static func imageError(_ error: ImageError) -> MachineError {
        switch error {
        case .doesNotFit: MachineError(.imageDoesNotFit, error.description)
        case .malformed, .unreadable: MachineError(.badImage, error.description)
        }
    }

    /// Refuses `--mem` beyond what the backend may be given (usage, status 200); for
    /// `auto`, a size only the interpreter takes returns why KVM was passed over.
    package static func checkMemoryLimit(_ size: UInt64, backend: BackendKind) throws(MachineError) -> String? {
        let interpreterLimit = MachineConfiguration.maxMemoryInterpreter, kvmLimit = MachineConfiguration.maxMemoryKVM
        if backend == .kvm, size > kvmLimit {
            throw MachineError(.usage, "--mem \(size) bytes is more than the kvm backend takes (\(kvmLimit >> 30) GiB; the interpreter takes up to \(interpreterLimit >> 40) TiB)")
        }
        guard size <= interpreterLimit else {
            throw MachineError(.usage, "--mem \(size) bytes is more than Tandem takes (\(interpreterLimit >> 40) TiB on the interpreter, \(kvmLimit >> 30) GiB on KVM)")
        }
        return size > kvmLimit ? "--mem is more than the kvm backend takes (\(kvmLimit >> 30) GiB)" : nil
    }

    /// Reads an image or a module whole, after checking (without blocking: a FIFO is
    /// refused, not waited on) that it is a regular file no larger than guest RAM and
    /// `MachineConfiguration.maxFileSize`.
    public static func readFile(_ path: String, what: String, ramSize: UInt64) throws(MachineError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw MachineError(.badImage, "cannot read \(what) \(path): \(Errno.current)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MachineError(.badImage, "cannot read \(what) \(path): \(Errno.current)") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw MachineError(.badImage, "\(what) \(path) is not a regular file") }
        guard st.st_size <= MachineConfiguration.maxFileSize else {
            throw MachineError(.imageDoesNotFit, "\(what) \(path) is \(st.st_size) bytes, more than Tandem reads (\(MachineConfiguration.maxFileSize >> 30) GiB)")
        }
        guard UInt64(st.st_size) <= ramSize else {
            throw MachineError(.imageDoesNotFit, "\(what) \(path) is \(st.st_size) bytes, more than the guest's \(ramSize) bytes of RAM")
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw MachineError(.badImage, "cannot read \(what) \(path): \(n == 0 ? "file shrank while reading" : Errno.current.description)") }
            offset += n
        }
        return bytes
    }

    private static func buildInterpreter(_ c: MachineConfiguration, memory: GuestMemoryMap, plan: BootPlan, cpu: GuestCPU) -> [InterpreterVCPU] {
        let machine = InterpreterMachine(memory: memory, cpuCount: c.cpus, cpu: cpu)
        return (0..<c.cpus).map { i in
            let vcpu = machine.makeVCPU(index: i)
            try? vcpu.writeState(plan.initialState(cpu: i, of: c.cpus))
            if let limit = c.maxInstructions { vcpu.instructionLimit = limit }
            return vcpu
        }
    }

    /// The KVM VM and its vCPUs in the boot state. The RAM memslots log dirty pages: the
    /// interpreter learns from them which code KVM rewrote when it takes a vCPU over (a
    /// handoff, an engine switch, the hybrid engine). (On a hardware-KVM host this maps
    /// RAM in 4 KiB pages.)
    private static func buildKVM(_ c: MachineConfiguration, memory: GuestMemoryMap, plan: BootPlan, cpu: GuestCPU) throws(KVMError) -> (KVMVirtualMachine, [KVMVCPU]) {
        let (vm, vcpus) = try KVMDevice(path: c.kvmDevicePath).makeMachine(memory: memory, cpus: c.cpus, logDirtyPages: true, cpu: cpu)
        for (i, vcpu) in vcpus.enumerated() {
            do { try vcpu.writeState(plan.initialState(cpu: i, of: c.cpus)) } catch {
                throw KVMError("setting the initial state of vCPU \(i): \(error)", Errno(EINVAL))
            }
        }
        return (vm, vcpus)
    }

    // MARK: Running

    /// Runs the guest to its end: starts one thread per vCPU, waits for a stop (the exit
    /// device, all vCPUs halted, a fault, `--timeout`, a signal, an output error), and
    /// reports it. `--timeout` counts from `configuration.started` (when the command began).
    public func run() -> RunOutcome {
        StopSignals.routed(to: { [weak self] sig in self?.requestStop(.interrupted(signal: sig)) }) {
            // SIGUSR1: every vCPU to the other engine (EngineSwitch.swift).
            StopSignals.routingRequests(StopSignals.engineFlipSignal, to: { [weak self] in self?.flipEngines(signalled: true) }) {
                // SIGUSR2: a snapshot while the guest runs (Snapshot.swift).
                guard configuration.snapshotPath != nil else { return runRouted() }
                return StopSignals.routingRequests(StopSignals.snapshotSignal, to: { [weak self] in self?.takeLiveSnapshot() }) { runRouted() }
            }
        }
    }

    private func runRouted() -> RunOutcome {
        let started = DispatchTime.now()
        runStarted.store(started.uptimeNanoseconds, ordering: .relaxed)
        gdbServer?.start(self)
        let switchTimer = startSwitchTimer()
        defer { switchTimer?.cancel() }
        let finished = DispatchGroup()
        let threads = (0..<backends.count).map { i in
            finished.enter()
            return HostThread.spawn(name: "vcpu\(i)") { [self] in
                vcpuMain(i)
                finished.leave()
            }
        }
        if let timeout = configuration.timeout {
            let deadline = (configuration.started ?? started) + timeout
            if stopped.wait(timeout: deadline) == .timedOut { requestStop(.timeout(timeout)) }
        } else {
            stopped.wait()
        }
        // A vCPU stuck in a write to a console nobody reads cannot be kicked (nor can a
        // backend that misses its kick): after a grace period the run is reported without
        // it, and without the output it holds.
        let allStopped = finished.wait(timeout: .now() + Self.stopGrace) == .success
        if allStopped {
            for t in threads { t.join() }
            devices.console.flush()
            trace.sink?.finish(status: control.withLock { $0.reason?.status } ?? 0)
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9
        var reason = control.withLock { $0.reason } ?? .hostError("stopped without a reason")
        if allStopped, let path = configuration.snapshotPath, let failure = writeSnapshot(to: path) { reason = .outputError(failure) }
        // Output lost at the final flush turns a guest's own ending into an output error.
        if let lost = control.withLock({ $0.lateOutputError }), reason.isGuestEnding { reason = .outputError(lost) }
        // Neither engine counts a vCPU's instructions on both (KVM counts none).
        let switched = slots.contains { $0.switches > 0 } && !hybrid
        var statistics = RunStatistics(
            backend: backendName, seconds: seconds,
            instructions: allStopped && !switched ? backends.map(\.instructionsRetired) : backends.map { _ in nil },
            handoffs: allStopped ? slots.map(\.handoffs).reduce(0, +) : 0,
            fallbackInstructions: allStopped ? slots.compactMap { $0.fallbackVCPU?.retired }.reduce(0, +) : 0)
        if allStopped && (hybrid || switched) { statistics.engines = engineStatistics() }
        gdbServer?.finish(status: reason.status)
        var message = message(for: reason)
        if !allStopped { message = (message ?? "tandem: stopped") + Self.notStoppedNote }
        return RunOutcome(status: reason.status, message: message, reason: reason, statistics: statistics)
    }

    /// How long `run` waits for the vCPU threads after a stop before reporting without them.
    static let stopGrace: DispatchTimeInterval = .milliseconds(500)
    /// Ends the report when they did not stop: a blocked output write, or a backend bug.
    public static let notStoppedNote = " (a vCPU thread had not stopped 0.5 s later: reported without it)"

    /// Stops the machine (the first reason wins) and kicks every vCPU out of its backend.
    public func requestStop(_ reason: StopReason) {
        let first = control.withLock { c -> Bool in
            guard c.reason == nil else {
                if case .outputError(let line) = reason { c.lateOutputError = c.lateOutputError ?? line }
                return false
            }
            c.reason = reason
            return true
        }
        guard first else { return }
        stopFlag.store(true, ordering: .sequentiallyConsistent)
        for i in slots.indices { send(.stop, to: i) }
        devices.timers.stop()
        stopped.signal()
    }

    package var stopRequested: Bool { stopFlag.load(ordering: .relaxed) }

    /// The one way to tell vCPU `index` to do something (Documentation/Architecture.md):
    /// the command goes into its channel, every engine it has is kicked — its backend, and
    /// the interpreter running it in KVM's place (a handoff, the debugger's watchpoints) —
    /// and it is woken from HLT or wait-for-SIPI, so it looks at the channel soon, on its
    /// own thread. A kick that finds it out of its engine costs one early return; one that
    /// misses an interpreter made meanwhile (`fallbackVCPU`, set once, by the vCPU's
    /// thread) is made up for by the vCPU's next look at its channel.
    func send(_ command: VCPUCommand, to index: Int) {
        slots[index].commands.send(command)
        slots[index].kickEngines()
        wakeups[index].signal()
    }

    /// Where vCPU `vcpu` is in its life (running, paused for gdb, switching engines, parked
    /// for a snapshot, stopped).
    public func state(ofVCPU vcpu: Int) -> VCPUState { slots[vcpu].commands.state }

    /// The shared vCPU loop: runs the backend, carries out the commands its channel brings
    /// (Documentation/Architecture.md), and hands its exits to the one exit handler, which
    /// answers them with the device model.
    private func vcpuMain(_ index: Int) {
        let slot = slots[index]
        defer {
            // A snapshot needs the state at an instruction boundary (KVM completes an
            // answered `out` only at its next entry).
            if configuration.snapshotPath != nil { completePendingExit(slot) }
            control.withLock { $0.finalStates[index] = try? slot.guestState() }
            slot.commands.enter(.stopped)
        }
        slot.commands.enter(.running)
        slot.thread.store(UInt(pthread_self()), ordering: .sequentiallyConsistent)
        slot.engineSince = DispatchTime.now().uptimeNanoseconds
        // This thread fires the vCPU's local APIC timer from now on (not on a virtual clock).
        slot.ownTimer = devices.timers.attach(owner: index)
        slot.active.ownTimer = slot.ownTimer?.due
        slot.kvm?.ownTimer = slot.ownTimer?.due
        slot.fallbackVCPU?.ownTimer = slot.ownTimer?.due
        defer { slot.ownTimer?.detach() }
        switch slot.runState {
        case .running: break
        case .waitForSIPI: guard waitForStartup(index) else { return }
        case .halted:   // (a restored snapshot's)
            guard waitWhileHalted(index, interruptsEnabled: (try? slot.active.readState().interruptsEnabled) ?? false) else { return }
        }
        // Tracing (Trace.swift): from here, and again whenever gdb starts or stops a trace.
        syncTrace(index)
        defer { endTrace(index) }
        guard startSlice(slot, index: index) else { return }
        var exits = ExitHandler(DeviceBuses(devices, vcpu: index))
        while true {
            // One look at the channel while nothing is asked.
            if slot.commands.hasCommands {
                if slot.commands.stopRequested { return }
                if slot.commands.pauseRequested {
                    guard parkForDebugger(index, cause: nil) else { return }
                    continue
                }
                if slot.commands.snapshotRequested { parkForSnapshot(index); continue }
            }
            if devices.apic.hasStartupEvent(vcpu: index) {
                // INIT puts the vCPU in wait-for-SIPI (a start-up IPI while it runs is ignored).
                if devices.apic.takeINIT(vcpu: index) {
                    guard waitForStartup(index) else { return }
                } else {
                    _ = devices.apic.takeSIPI(vcpu: index)
                }
            }
            if virtualTime != nil { advanceVirtualClock(slot) }
            slot.ownTimer?.fireIfDue()
            if placement != nil { guard placeVCPU(slot, index: index) else { return } }
            if slot.commands.switchRequest != .none { guard serviceSwitchRequest(slot, index: index) else { return } }
            let backend = slot.active
            let exit: VCPUExit
            do { exit = try backend.run() } catch {
                requestStop(.hostError("vcpu\(index): \(error)"))
                return
            }
            slot.atInstructionBoundary = exit.isAtInstructionBoundary
            if sliceEnded(slot, by: exit) { continue }
            // Before the trace takes the interpreter's access log (watchpoints read it).
            var debugStop: DebugStopCause? = nil
            if debug != nil, case .debugStep = exit { debugStop = debugStopCause(index) }
            let recorder = slot.trace?.recorder, recordsIO = slot.trace?.recordsIO ?? false
            if let tracer = slot.trace?.tracer {
                if !slot.trace!.stepping {
                    tracer.exit(exit, backend)
                } else if !tracer.recorder.active {
                    setStepping(backend, false)
                } else if case .debugStep = exit {
                    tracer.step(backend)
                }
            }
            exits.answers.portLog = recordsIO ? recorder : nil
            switch exits.handle(exit) {
            case .answered, .interrupted:
                continue
            case .halted:
                guard waitWhileHalted(index, interruptsEnabled: backend.interruptFlag) else { return }
            case .shutdown:
                // An exception or SYSCALL KVM did not deliver (see Hybrid.swift).
                if (backend as? KVMVCPU)?.runsEventless == true {
                    guard moveToInterpreter(slot, index: index, after: .exception) else { return }
                    continue
                }
                requestStop(.tripleFault(report(index)))
            case .unsupported(let detail):
                if placement != nil && backend is KVMVCPU {
                    guard moveToInterpreter(slot, index: index, after: .unrunnableInstruction) else { return }
                    continue
                }
                if slot.interpreter == nil, handOff(slot, index: index) { continue }
                let what = slot.interpreter != nil ? "\(detail) (after KVM could not emulate it either)" : detail
                requestStop(.unsupportedInstruction(report(index), what))
            case .entryFailed(let reason):
                requestStop(.entryFailed(report(index), reason))
            case .internalError(let detail):
                requestStop(.hostError("vcpu\(index): \(detail); \(report(index))"))
            case .instructionLimit:
                if slot.interpreter != nil {
                    // (A fallback stretch ends at the top of the loop: Hybrid.swift.)
                    if placement != nil || handBack(slot, index: index) { continue }
                    return
                }
                requestStop(.instructionLimit)
            case .stepped:
                // An int3 of user mode (KVMVCPU.breakpointExits).
                if placement != nil && backend is KVMVCPU {
                    guard moveToInterpreter(slot, index: index, after: .exception) else { return }
                    continue
                }
                if let debugStop { guard parkForDebugger(index, cause: debugStop) else { return } }
            }
        }
    }

    /// vCPU `index` may have an event to take (an interrupt, NMI, INIT or SIPI): it leaves
    /// its engine's run, or wakes from HLT, and looks.
    func interruptRequested(_ index: Int) {
        guard index < slots.count else { return }
        // On its own thread the vCPU looks anyway before it enters its engine again, or
        // sleeps again (a kick would only cost KVM an entry that returns at once).
        if slots[index].isCurrentThread { return }
        // A sleeping vCPU looks as soon as it wakes; kicking it too would only cost its
        // next entry (KVM's immediate_exit) a round trip.
        if !slots[index].sleeping.load(ordering: .sequentiallyConsistent) { slots[index].kickEngines() }
        wakeups[index].signal()
    }

    /// KVM stopped on an instruction its emulator cannot run: move the vCPU's state to
    /// the interpreter (same memory, same devices) for that one instruction (the debugger
    /// then lifts the limit itself). (On a PVM host, without the debugger, a trace or
    /// `--switch-every`, the interpreter takes the vCPU for a stretch instead: Hybrid.swift,
    /// `Placement.fallbackStretches`.)
    func handOff(_ slot: VCPUSlot, index: Int, forDebugger: Bool = false) -> Bool {
        guard slot.active is KVMVCPU, let interpreter = interpreterVCPU(for: slot, index: index) else { return false }
        do {
            let state = try slot.active.readState()
            // The code KVM rewrote since the interpreter last ran.
            try noteKVMWrites(interpreter)
            try interpreter.writeState(state)
        } catch {
            requestStop(.hostError("vcpu\(index): handing over to the interpreter: \(error)"))
            return false
        }
        interpreter.instructionLimit = interpreter.retired + 1
        interpreter.tracing = slot.trace?.stepping ?? false
        slot.active = interpreter
        slot.interpreter = interpreter
        if !forDebugger { slot.handoffs += 1 }
        return true
    }

    /// The interpreter ran the instruction: the vCPU goes back to KVM.
    func handBack(_ slot: VCPUSlot, index: Int) -> Bool {
        guard let interpreter = slot.interpreter, let kvm = slot.kvm else { return false }
        do { try kvm.writeState(try interpreter.readState()) } catch {
            requestStop(.hostError("vcpu\(index): handing back to KVM: \(error)"))
            return false
        }
        slot.active = kvm
        slot.interpreter = nil
        return true
    }

    /// Single-steps `backend` (for `--trace`), or stops doing so.
    func setStepping(_ backend: any VCPUBackend, _ on: Bool) {
        if let source = backend as? TraceSource { source.tracing = on }
        if let kvm = backend as? KVMVCPU {
            try? kvm.setSingleStep(on)
            kvm.recordInjections = on
        }
    }

    /// HLT: the vCPU sleeps (no host CPU) until it has an event it takes — an interrupt it
    /// accepts (IF set), an NMI, INIT or SIPI. Returns false when the machine stops, which
    /// it does itself when every vCPU is halted and nothing can wake any (`DeviceModel.mayStillInterrupt`).
    private func waitWhileHalted(_ index: Int, interruptsEnabled: Bool) -> Bool {
        let apic = devices.apic
        slots[index].runState = .halted
        guard sleep(index, interruptsEnabled: interruptsEnabled, until: {
            apic.hasStartupEvent(vcpu: index) || apic.hasNMI(vcpu: index)
                || (interruptsEnabled && apic.hasPendingInterrupt(vcpu: index))
        }) else { return false }
        slots[index].runState = .running
        return true
    }

    /// Wait-for-SIPI: an application processor (or a vCPU after INIT) sleeps until a
    /// start-up IPI, then starts in real mode at the vector's page. False: the machine stopped.
    private func waitForStartup(_ index: Int) -> Bool {
        let apic = devices.apic
        // INIT on KVM under a placement: the vCPU restarts on the interpreter.
        if placement != nil && !moveToInterpreter(slots[index], index: index) { return false }
        var vector: UInt8?
        slots[index].runState = .waitForSIPI
        guard sleep(index, interruptsEnabled: false, until: {
            _ = apic.takeINIT(vcpu: index)   // INIT again while waiting: still waiting
            vector = apic.takeSIPI(vcpu: index)
            return vector != nil
        }) else { return false }
        do {
            var state = CPUState.startup(vector: vector!, signature: UInt64(cpu.cpuid.model.signature))
            // INIT and SIPI leave the TSC running: an AP that restarted it at 0 would be
            // seconds behind the BSP (Linux measured the warp and dropped the TSC clock).
            state.msrs.tsc = try slots[index].guestState().msrs.tsc
            try slots[index].active.writeState(state)
            slots[index].runState = .running
        } catch {
            requestStop(.hostError("vcpu\(index): starting at the SIPI vector: \(error)"))
            return false
        }
        return true
    }

    /// Sleeps on the vCPU's wakeup until `ready()` or the stop, counted as halted meanwhile.
    /// Every 100 ms (and at each wakeup) it re-checks whether the whole machine is halted
    /// for good: all vCPUs asleep and no armed timer, latched request or input that could
    /// still raise an interrupt for one that accepts them. With interrupts enabled it also
    /// wakes at its own timer's deadline and fires it; with them disabled that timer's
    /// interrupt could not end the sleep, and it fires when the vCPU wakes for another
    /// reason (its count is read from the clock, not ticked).
    private func sleep(_ index: Int, interruptsEnabled: Bool, until ready: () -> Bool) -> Bool {
        let ownTimer = slots[index].ownTimer
        var counted = false
        slots[index].sleeping.store(true, ordering: .sequentiallyConsistent)
        defer {
            slots[index].sleeping.store(false, ordering: .sequentiallyConsistent)
            if counted {
                control.withLock { c in
                    c.halted -= 1
                    if interruptsEnabled { c.haltedWithInterruptsEnabled -= 1 }
                }
            }
        }
        let commands = slots[index].commands
        while !commands.stopRequested {
            ownTimer?.fireIfDue()
            if commands.pauseRequested {
                guard parkForDebugger(index, cause: nil) else { return false }
                continue
            }
            if commands.snapshotRequested { parkForSnapshot(index); continue }
            if ready() { return true }
            if !counted {
                counted = true
                control.withLock { c in
                    c.halted += 1
                    if interruptsEnabled { c.haltedWithInterruptsEnabled += 1 }
                }
            }
            let (all, anyEnabled) = control.withLock { ($0.halted == backends.count, $0.haltedWithInterruptsEnabled > 0) }
            if all && !(anyEnabled && devices.mayStillInterrupt) {
                requestStop(.allHalted(interruptsDisabled: !anyEnabled))
                return false
            }
            if interruptsEnabled && skipToNextDeadline() { continue }
            var until = TimerDeadline.hostNow() &+ Self.haltRecheck
            if interruptsEnabled, let due = ownTimer?.due.hostNanoseconds { until = min(until, due) }
            wakeups[index].wait(untilMonotonic: until)
        }
        return false
    }

    /// `--clock instructions`: adds the instructions the vCPU retired since it last looked
    /// (one nanosecond each) to machine time, fires the timers that came due, and has the
    /// interpreter stop at the next deadline, so an interrupt lands on the same instruction
    /// on every run (of a single-vCPU guest: with several, their interleaving is the host's).
    private func advanceVirtualClock(_ slot: VCPUSlot) {
        guard let virtualTime, let interpreter = slot.active as? InterpreterVCPU else { return }
        let retired = interpreter.retired
        let delta = retired &- slot.lastRetired
        slot.lastRetired = retired
        if delta > 0 { virtualTime.nanoseconds.add(delta, ordering: .relaxed) }
        devices.timers.fireDue()
        if let deadline = devices.timers.nextDeadline() {
            let now = virtualTime.nanoseconds.load(ordering: .relaxed)
            interpreter.yieldAt = retired &+ max(1, deadline > now ? deadline - now : 1)
        } else {
            interpreter.yieldAt = .max
        }
    }

    /// `--clock instructions` in HLT: nothing runs, so time jumps to the next deadline.
    private func skipToNextDeadline() -> Bool {
        guard let virtualTime, let deadline = devices.timers.nextDeadline() else { return false }
        let now = virtualTime.nanoseconds.load(ordering: .relaxed)
        if deadline > now { _ = virtualTime.nanoseconds.compareExchange(expected: now, desired: deadline, ordering: .relaxed) }
        devices.timers.fireDue()
        return true
    }

    /// How often a sleeping vCPU re-checks whether the machine is halted for good (ns).
    static let haltRecheck: UInt64 = 100_000_000

    /// Where vCPU `index` is now, with the instruction there disassembled.
    func report(_ index: Int) -> VCPUReport {
        let state = (try? slots[index].guestState()) ?? CPUState()
        return report(index, state: state)
    }

    func report(_ index: Int, state: CPUState) -> VCPUReport {
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

    private func message(for reason: StopReason) -> String? {
        switch reason {
        case .guestExit: return nil
        case .allHalted(let disabled):
            return disabled
                ? "tandem: all vCPUs halted with interrupts disabled; stopping with status 0"
                : "tandem: all vCPUs halted and no interrupt source can wake them; stopping with status 0"
        case .tripleFault(let r): return "tandem: triple fault (status 204): \(r)"
        case .unsupportedInstruction(let r, let detail):
            return "tandem: \(detail): the \(backendName) backend cannot execute this instruction (status 205): \(r)"
        case .entryFailed(let r, let code):
            return "tandem: KVM refused to enter the guest, hardware reason 0x\(String(code, radix: 16)) (status 210): \(r)"
        case .hostError(let detail): return "tandem: host error (status 208): \(detail)"
        case .timeout(let seconds):
            return "tandem: timeout after \(formatSeconds(seconds)) s (status 206): \(where0())"
        case .interrupted(let sig): return "tandem: interrupted by \(StopSignals.name(sig)) (status 209): \(where0())"
        case .instructionLimit: return "tandem: instruction limit reached (status 207): \(where0())"
        case .outputError(let line): return "tandem: \(line) (status 211)"
        case .guestReset: return "tandem: the guest reset the machine (status 212): \(where0())"
        case .powerOff: return "tandem: the guest powered the machine off (ACPI S5); stopping with status 0"
        case .debuggerKilled: return "tandem: killed by the debugger (status 213): \(where0())"
        }
    }

    private func where0() -> String {
        guard let s = control.withLock({ $0.finalStates[0] }) else { return "vcpu0 state unavailable" }
        return report(0, state: s).description
    }

    /// The console output so far when the serial sink is `.capture` (tests).
    public var capturedOutput: String { String(decoding: devices.console.captured, as: UTF8.self) }
}

/// One vCPU's backends, touched only by its own thread (and by `requestStop`'s kick).
final class VCPUSlot: @unchecked Sendable {
    var active: any VCPUBackend
    /// Set while the interpreter runs an instruction KVM could not.
    var interpreter: InterpreterVCPU?
    var kvm: (any VCPUBackend)?
    var fallbackVCPU: InterpreterVCPU?
    var handoffs = 0
    /// While KVM runs the vCPU under a placement: the guest's parts KVM runs with its own (Hybrid.swift).
    var nativeShadow: NativeShadow? = nil
    /// Hybrid: engine switches, and host time on each engine (until the last switch).
    var switches = 0
    /// Under a placement: the interpreter runs the next instruction before the vCPU goes back to KVM.
    var interpretNext = false
    /// What the vCPU is told to do (stop, pause, snapshot, move to another engine), by any
    /// thread, and the state its own thread is in.
    let commands = VCPUCommandChannel()
    /// Its last exit left it at an instruction boundary (where a move can happen).
    var atInstructionBoundary = true
    /// `--switch-every N` on KVM: the single-steps left before it moves on.
    var stepsLeft: UInt64 = 0
    /// When it entered its engine (engine statistics; 0 before it starts).
    var engineSince: UInt64 = 0
    var kvmNanoseconds: UInt64 = 0
    var interpreterNanoseconds: UInt64 = 0
    /// Executing, in HLT or waiting for a start-up IPI: set by the vCPU loop, recorded in
    /// snapshots (the engines return to the loop at HLT and never see the wait).
    var runState = RunState.running
    /// `--clock instructions`: the retired count machine time has been advanced to.
    var lastRetired: UInt64 = 0
    /// In HLT or wait-for-SIPI (then a wakeup suffices, no kick).
    let sleeping = Atomic<Bool>(false)
    /// The vCPU's local APIC timer, which its thread fires (nil on a virtual clock).
    var ownTimer: DeviceTimer?
    /// The vCPU's thread (its pthread_t; 0 before it starts).
    let thread = Atomic<UInt>(0)
    /// `--trace` single-steps this vCPU (the debugger keeps it so).
    var traceStepping = false
    /// Its part of the machine's trace, and the trace generation it follows (-1: the
    /// vCPU has not started yet). Trace.swift.
    var trace: VCPUTrace?
    var traceGeneration = -1
    // The debugger's settings, copied when the vCPU resumes (Debugger.swift).
    var debugAction: DebugAction = .run
    var debugBreakpoints: Set<UInt64> = []
    var debugWatchpoints: [Watchpoint] = []
    /// KVM: the one step off a breakpoint, taken without the debug registers.
    var steppingOverBreakpoint = false
    /// KVM: the interpreter runs this vCPU for the debugger's watchpoints.
    var debugOnInterpreter = false
    init(active: any VCPUBackend) { self.active = active }

    var isCurrentThread: Bool { pthread_equal(pthread_t(thread.load(ordering: .relaxed)), pthread_self()) != 0 }
}

/// Machine time for `--clock instructions`.
package final class VirtualTime: Sendable {
    package let nanoseconds: Atomic<UInt64>
    package init(startingAt start: UInt64 = 0) { nanoseconds = Atomic(start) }
}

package final class WeakBox<T: AnyObject>: @unchecked Sendable {
    package weak var value: T?
    package init() {}
}

package func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? String(Int(s)) : String(s)
}
