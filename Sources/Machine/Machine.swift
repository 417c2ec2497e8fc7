#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Devices
import GDBStub
import GuestMemory
import HostOS
import Interpreter
import KVM
import Loaders
import Synchronization
import Tracing
import VCPURuntime
import X86

extension StopReason {
    /// The exit status of a run that stopped for this reason.
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
    /// Of `fallbackInstructions`, those the interpreter's translated code ran (nil: it
    /// does not translate, `--translate off`).
    public var fallbackTranslated: UInt64? = nil
    /// Of `instructions`, those the interpreter's translated code ran (all vCPUs together;
    /// nil where the instructions are not counted or the backend is not the interpreter).
    public var translated: UInt64? = nil
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
            if let translated { text += ", translated \(translated)" }
        } else {
            text += ", instructions not counted by this backend"
        }
        if backend == "kvm" {
            text += ", \(handoffs) handoff\(handoffs == 1 ? "" : "s") to the interpreter (\(fallbackInstructions) instructions)"
        }
        if let h = engines {
            text += "; interpreter \(String(format3: h.interpreterSeconds)) s, \(fallbackInstructions) instructions"
            text += " (\(String(format3: Double(fallbackInstructions) / max(h.interpreterSeconds, 1e-9) / 1e6)) M/s"
            text += (fallbackTranslated.map { ", translated \($0)" } ?? "") + ")"
            text += ", KVM \(String(format3: h.kvmSeconds)) s (\(backend == "hybrid" ? "64-bit user mode, " : "")not counted), \(h.switches) engine switches"
        }
        return text
    }
}

extension Machine {
    /// Why `--backend auto` runs the interpreter on a host whose KVM is PVM-style.
    static let emulatedKVMNote = "KVM here runs only 64-bit user mode natively (no VMX/SVM), and the interpreter is faster than the hybrid engine: --backend hybrid puts user mode on KVM"
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

/// A virtual machine, assembled: one guest memory, one device model, the engines and the
/// image loaded, handed to a `VCPUManager` (VCPURuntime) that runs one host thread per
/// vCPU ("vcpu0", "vcpu1", ...); `run` reports how the run ended.
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
    /// The vCPUs: their engines, threads and loop (VCPURuntime).
    let vcpus: VCPUManager
    /// `--gdb`: the stub that speaks to gdb (the vCPUs' side is `vcpus`').
    let gdbServer: GDBServer?
    /// The TCP port the gdb stub listens on (nil without `--gdb`).
    public var gdbPort: UInt16? { gdbServer?.boundPort }
    /// The trace being written (`--trace`, or gdb's `monitor trace on`).
    let trace: MachineTrace

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
        if c.clock == .instructions && (c.backend == .kvm || c.backend == .hybrid) {
            throw MachineError(.usage, "--clock instructions needs a backend that counts instructions: use --backend interp")
        }
        if c.clock == .instructions && c.timerSlack > 0 {
            throw MachineError(.usage, "--timer-slack needs --clock host (with --clock instructions a halted vCPU costs nothing: time skips to the next deadline)")
        }
        // A restored machine's clock goes on from the snapshot's time.
        let startTime = c.restore?.configuration.machineTime ?? 0
        let virtualTime = c.clock == .instructions ? VirtualTime(startingAt: startTime) : nil
        devices = DeviceModel(console: console, input: c.input, memory: memory, cpus: c.cpus, x2APIC: cpu.cpuid.offered.contains(.x2apic),
                              clock: virtualTime.map { vt in MachineClock { vt.nanoseconds.load(ordering: .relaxed) } }
                                  ?? (c.restore != nil ? MachineClock(startingAt: startTime) : nil),
                              timerSlack: c.timerSlack, onInterruptRequest: { stopper.value?.vcpus.interruptRequested($0) },
                              onReset: { stopper.value?.requestStop(.guestReset) },
                              onPowerOff: { stopper.value?.requestStop(.powerOff) }) { value in stopper.value?.requestStop(.guestExit(value)) }

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
        let backends: [any VCPUBackend], kvm: KVMVirtualMachine?, backendName: String
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
        case .auto where c.maxInstructions == nil && c.gdb == nil && c.switchEvery == nil && !HostCheck.cpuHasVirtualization():
            // A host whose KVM runs only 64-bit user mode natively (PVM: no VMX/SVM): the
            // rest would crawl through the host kernel's emulator, and the hybrid engine's
            // moves cost more than the user mode they put on KVM wins for the guests
            // measured (a Linux boot: interpreter 7.1 s, hybrid 11.7 s, Tools/bench linux).
            backends = Self.buildInterpreter(c, memory: memory, plan: plan, cpu: cpu)
            kvm = nil
            backendName = "interp"
            do { _ = try KVMDevice(path: c.kvmDevicePath) } catch {
                backendNote = "KVM is unavailable: \(error)"
                break
            }
            backendNote = Self.emulatedKVMNote
        case .hybrid:
            do {
                let built = try Self.buildKVM(c, memory: memory, plan: plan, cpu: cpu)
                kvm = built.0
                backends = built.1
                backendName = "hybrid"
            } catch {
                throw MachineError(.backendUnavailable, "the hybrid engine needs KVM, which is unavailable: \(error)")
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
        self.backendName = backendName
        for b in backends { b.interruptController = devices.apic }
        if let virtualTime {
            for case let b as InterpreterVCPU in backends { b.timeSource = { virtualTime.nanoseconds.load(ordering: .relaxed) } }
        }
        var engines = VCPUEngines(backends: backends, name: backendName, kvm: kvm)
        engines.switchTargets = kvmToSwitchTo
        engines.placement = backendName == "hybrid" ? .hybrid
            : backendName == "kvm" && c.gdb == nil && c.trace == nil && c.switchEvery == nil && !HostCheck.cpuHasVirtualization() ? .fallbackStretches
            : nil
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
        // The interpreter that shares vCPUs with KVM (the fallback, the hybrid engine)
        // translates as the interpreter backend does (`--translate`).
        engines.fallback = backendName == "kvm" || engines.placement == .hybrid
            ? InterpreterMachine(memory: memory, cpuCount: c.cpus, cpu: cpu, translate: c.translate) : nil
        var switchSlice: UInt64? = nil, switchPeriod: Double? = nil
        switch c.switchEvery {
        case .instructions(let n): switchSlice = n
        case .seconds(let seconds): switchPeriod = seconds
        case nil: break
        }
        vcpus = VCPUManager(engines: engines, cpu: cpu, memory: memory, devices: devices, virtualTime: virtualTime, trace: trace,
                            startsAllCPUs: plan.startsAllCPUs, gdb: c.gdb, switchSlice: switchSlice, switchPeriod: switchPeriod,
                            completesExitAtStop: c.snapshotPath != nil)
        if engines.placement == .hybrid {
            let plan = plan
            do { try vcpus.startOnInterpreter { plan.initialState(cpu: $0, of: c.cpus) } } catch {
                throw MachineError(.hostError, error.description)
            }
        }
        if c.maxInstructions != nil && (backendName == "kvm" || engines.placement == .hybrid) {
            throw MachineError(.usage, "--max-instructions needs a backend that counts instructions: use --backend interp")
        }
        if let gdb = c.gdb {
            do { gdbServer = try GDBServer(gdb) } catch {
                throw MachineError(error.isUsage ? .usage : .hostError, error.description)
            }
        } else {
            gdbServer = nil
        }
        if let snapshot = c.restore { try applySnapshot(snapshot) }
        if engines.placement == .fallbackStretches {
            do { try vcpus.startWithFallbackStretches() } catch { throw MachineError(.hostError, error.description) }
        }
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
        let machine = InterpreterMachine(memory: memory, cpuCount: c.cpus, cpu: cpu, translate: c.translate)
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

    func message(for reason: StopReason) -> String? {
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
        guard let s = vcpus.finalStates()[0] else { return "vcpu0 state unavailable" }
        return vcpus.report(0, state: s).description
    }

    /// Each vCPU's state when its thread stopped (nil: unreadable), after `run()`.
    public func finalStates() -> [CPUState?] { vcpus.finalStates() }

    /// The console output so far when the serial sink is `.capture` (tests).
    public var capturedOutput: String { String(decoding: devices.console.captured, as: UTF8.self) }
}

extension Machine {
    /// LSTAR as KVM holds it on a PVM host (`KVMVCPU.deliversNoEvents`): a SYSCALL that
    /// PVM carries out (it does, even with EFER.SCE clear) faults at its first fetch.
    /// (`tandem diff` runs KVM with it, as the machine's hybrid engine does.)
    package static let syscallSentinel = KVMVCPU.syscallSentinel
}

package final class WeakBox<T: AnyObject>: @unchecked Sendable {
    package weak var value: T?
    package init() {}
}

package func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
package func byteHex(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }

package func padRight(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

package func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? String(Int(s)) : String(s)
}
