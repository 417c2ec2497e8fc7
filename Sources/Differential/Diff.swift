#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Devices
import Disassembler
import GuestMemory
import HostOS
import Interpreter
import KVM
import Loaders
import Machine
import RunLoop
import VCPURuntime
import X86

/// RFLAGS bits an instruction leaves undefined (by mnemonic), which a differential
/// comparison must not hold against either side.
public enum UndefinedFlags {
    static let cf: UInt64 = 1, pf: UInt64 = 4, af: UInt64 = 0x10, zf: UInt64 = 0x40, sf: UInt64 = 0x80, of: UInt64 = 0x800

    public static func mask(for mnemonic: String) -> UInt64 {
        switch mnemonic {
        case "shl", "sal", "shr", "sar", "shld", "shrd": return af | of
        case "rol", "ror", "rcl", "rcr": return of
        case "mul", "imul": return sf | zf | af | pf
        case "div", "idiv": return cf | of | sf | zf | af | pf
        case "and", "or", "xor", "test": return af
        case "bsf", "bsr": return cf | of | sf | af | pf
        case "bt", "bts", "btr", "btc": return of | sf | af | pf
        case "daa", "das": return of
        case "aaa", "aas": return of | sf | zf | pf
        case "aam", "aad": return of | af | cf
        default: return 0
        }
    }

    /// The bits `mnemonic` leaves undefined for `operandBits`-bit operands shifted or rotated
    /// by `count` (before masking; nil: not a shift, or the count is unknown, then the
    /// union over all counts). Intel SDM: a masked count of 0 changes no flag; OF is
    /// defined only for a count of 1; AF is undefined after a non-zero shift; SHL/SHR leave
    /// CF undefined for counts of at least the operand width; SHLD/SHRD leave everything
    /// (and the result) undefined for counts above it.
    public static func mask(for mnemonic: String, operandBits: Int, count: Int?) -> UInt64 {
        guard let count else { return mask(for: mnemonic) }
        let masked = count & (operandBits == 64 ? 0x3F : 0x1F)
        let overflow = masked == 1 ? 0 : of
        switch mnemonic {
        case "shl", "sal", "shr": return masked == 0 ? 0 : af | overflow | (masked >= operandBits ? cf : 0)
        case "sar": return masked == 0 ? 0 : af | overflow
        case "rol", "ror", "rcl", "rcr": return masked == 0 ? 0 : overflow
        case "shld", "shrd": return masked == 0 ? 0 : masked > operandBits ? cf | of | sf | zf | af | pf : af | overflow
        default: return mask(for: mnemonic)
        }
    }
}

/// A known way this host's KVM differs from the architecture: such differences are
/// reported as host limitations, not as interpreter bugs (see Documentation/HostLimitations.md).
struct HostLimitation {
    var mnemonics: Set<String>
    /// The RFLAGS bits where the host is known to be wrong (0: any field).
    var flags: UInt64
    var reason: String

    static let pvm: [HostLimitation] = [
        HostLimitation(mnemonics: ["aam", "aad"], flags: UndefinedFlags.sf | UndefinedFlags.zf | UndefinedFlags.pf,
                       reason: "the host kernel's emulator computes AAM/AAD's SF, ZF and PF from AX instead of AL"),
    ]
}

/// `tandem diff`: the image on KVM (single-stepped) and on the interpreter in lockstep,
/// each on its own copy of guest memory, both answered by one device model.
public final class DifferentialRun {
    public struct Outcome: Sendable {
        /// 0: no divergence over the whole run; 1: a divergence; `stoppedEarly`: no
        /// divergence in what was compared, but the comparison ended before the run did;
        /// otherwise an `ExitStatus` (a host error).
        public var status: Int32
        public var report: String
        /// Instructions compared.
        public var compared: UInt64 = 0
        /// Instructions the guest ran: past `compared` when the comparison stopped early
        /// (the interpreter ran the rest alone, up to --steps).
        public var ran: UInt64 = 0
        /// Why the comparison ended (the guest exited, both halted, --steps, or why it stopped early).
        public var end: String = ""
        /// Interrupts (and NMIs) KVM took and the interpreter took at the same instruction boundary.
        public var interrupts: UInt64 = 0
        /// Steps where this host's KVM ran on natively in 64-bit user mode and the
        /// interpreter caught up with it, and the instructions it ran on to do so (counted
        /// in `ran`, not in `compared`).
        public var catchUps: UInt64 = 0
        public var caughtUpInstructions: UInt64 = 0
    }

    /// `tandem diff`'s exit status when nothing diverged but the comparison stopped early
    /// (this host's KVM cannot follow the guest, or neither side can run an instruction).
    public static let stoppedEarly: Int32 = 2

    let configuration: MachineConfiguration
    let steps: UInt64
    let kvmMemory: GuestMemoryMap
    let interpMemory: GuestMemoryMap
    let devices: DeviceModel
    let kvmVM: KVMVirtualMachine
    let kvm: KVMVCPU
    let interp: InterpreterVCPU
    let disassembler = Disassembler()
    let hostIsEmulated: Bool
    /// How the guest ended the run itself: the exit device, a reset, ACPI power-off.
    private var guestEnd: String? = nil
    /// KVM's interrupt controller (the machine's, logging what KVM takes each step) and
    /// the interpreter's (replaying that): the interpreter takes each interrupt where KVM took it.
    let recorded: RecordedInterrupts
    let replayed: ReplayedInterrupts
    /// `--clock instructions`: machine time advances one nanosecond per instruction the
    /// interpreter retires (and jumps to the next timer in HLT), so a diff is reproducible.
    private let virtualTime: VirtualTime?
    private var lastRetired: UInt64 = 0
    /// Signalled when the controller may have an interrupt for the vCPU (waiting in HLT).
    private let wakeup = DispatchSemaphore(value: 0)
    /// Interrupts taken by both sides so far.
    private var interrupts: UInt64 = 0
    /// Set by a signal or an output error: the status and the line the run ends with.
    private let pendingStop = PendingStop()
    /// The pages the last memory comparison looked at (KVM's dirty log is read once).
    private var comparedPages = Set<UInt64>()
    /// The end of the current step's native slice (`NativeSlice`): KVM's own timer.
    let nativeSliceEnd = TimerDeadline(hostOrigin: 0)
    /// Steps where KVM ran on in user mode and the interpreter caught up, and the
    /// instructions it ran on to do so (beyond the steps compared).
    var catchUps: UInt64 = 0
    var caughtUpInstructions: UInt64 = 0
    /// Bounds each step in wall-clock time, and ends one mid-way for `--timeout` (`StepWatchdog`).
    private let watchdog = StepWatchdog()

    /// Builds both sides. `injectFault` ("mnemonic:flag", e.g. "add:cf") plants a bug in the
    /// interpreter (for testing the tester).
    public init(_ c: MachineConfiguration, steps: UInt64, injectFault: String? = nil) throws(MachineError) {
        configuration = c
        self.steps = steps
        guard c.cpus == 1 else { throw MachineError(.usage, "tandem diff runs one vCPU (--cpus 1)") }
        _ = try Machine.checkMemoryLimit(c.memorySize, backend: .kvm)
        let image = try Machine.readFile(c.imagePath, what: "image", ramSize: c.memorySize)
        let format: ImageFormat
        do { format = c.format == .auto ? try ImageFormat.detect(image, name: c.imagePath) : c.format } catch {
            throw MachineError(error.isFit ? .imageDoesNotFit : .badImage, error.description)
        }
        let options = try Machine.loadOptions(c, format: format)
        func makeMemory() throws(MachineError) -> (GuestMemoryMap, BootPlan) {
            let memory: GuestMemoryMap
            do { memory = try GuestMemoryMap(ramSize: c.memorySize, romSize: Loader.romSize(for: format, image: image)) } catch {
                throw MachineError(.hostError, error.description)
            }
            do { return (memory, try Loader.load(image, name: c.imagePath, as: format, into: memory, options: options)) } catch {
                throw MachineError(error.isFit ? .imageDoesNotFit : .badImage, error.description)
            }
        }
        // One CPUID for both sides; each keeps its own model MSRs (they run apart).
        let cpuid = try MachineCPU.cpuid(for: c)
        let emulated = HostCheck.cpuHasVirtualization() == false
        hostIsEmulated = emulated
        let (km, plan) = try makeMemory()
        let (im, _) = try makeMemory()
        kvmMemory = km
        interpMemory = im
        let console: Console
        let box = WeakBox<DifferentialRun>()
        do {
            console = try Console(c.serial) { [pendingStop] line in pendingStop.request(.outputError, "\(line) (status 211)") }
        } catch { throw MachineError(.usage, error.description) }
        let virtualTime = c.clock == .instructions ? VirtualTime() : nil
        self.virtualTime = virtualTime
        let wakeup = wakeup
        devices = DeviceModel(console: console, input: c.input, memory: km, cpus: 1, x2APIC: cpuid.offered.contains(.x2apic),
                              clock: virtualTime.map { vt in MachineClock { vt.nanoseconds.load(ordering: .relaxed) } },
                              onInterruptRequest: { _ in wakeup.signal() },
                              onReset: { box.value?.guestEnd = "the guest reset the machine" },
                              onPowerOff: { box.value?.guestEnd = "the guest powered the machine off (ACPI S5)" }) { value in
            box.value?.guestEnd = "the guest exited with status \(value)"
        }
        recorded = RecordedInterrupts(devices.apic)
        replayed = ReplayedInterrupts(devices.apic)
        do {
            let (vm, vcpus) = try KVMDevice(path: c.kvmDevicePath).makeMachine(memory: km, cpus: 1, logDirtyPages: true, cpu: GuestCPU(cpuid: cpuid))
            kvmVM = vm
            kvm = vcpus[0]
            try kvm.writeState(plan.initialState(cpu: 0, of: 1).with(lstar: emulated ? Machine.syscallSentinel : nil))
            try kvm.setSingleStep(true)
            kvm.interruptController = recorded
            kvm.ownTimer = nativeSliceEnd
        } catch {
            throw MachineError(.backendUnavailable, "tandem diff needs KVM: \(error)")
        }
        interp = InterpreterMachine(memory: im, cpuCount: 1, cpu: GuestCPU(cpuid: cpuid)).makeVCPU(index: 0)
        do { try interp.writeState(plan.initialState(cpu: 0, of: 1)) } catch { throw MachineError(.hostError, "\(error)") }
        interp.tracing = true
        interp.interruptIsOwnStep = true
        interp.interruptController = replayed
        if let virtualTime { interp.timeSource = { virtualTime.nanoseconds.load(ordering: .relaxed) } }
        if injectFault == Self.wrongVectorFault {
            replayed.wrongVector = true
        } else if let injectFault {
            guard let (mnemonic, bit) = Self.parseFault(injectFault), interp.injectFault(mnemonic: mnemonic, flipFlags: bit) else {
                throw MachineError(.usage, "fault injection '\(injectFault)' must be MNEMONIC:FLAG (e.g. add:cf) or \(Self.wrongVectorFault)")
            }
        }
        box.value = self
    }

    /// The planted fault that replays each interrupt KVM took with the next vector.
    public static let wrongVectorFault = "irq:vector"

    /// A planted fault as the command line gives it, "MNEMONIC:FLAG" (e.g. "add:cf"):
    /// the mnemonic and the RFLAGS bit to flip after it.
    public static func parseFault(_ text: String) -> (String, UInt64)? {
        let parts = text.split(separator: ":")
        let flags: [String: UInt64] = ["cf": 1, "pf": 4, "af": 0x10, "zf": 0x40, "sf": 0x80, "of": 0x800]
        guard parts.count == 2, let bit = flags[String(parts[1])] else { return nil }
        return (String(parts[0]), bit)
    }

    struct Step {
        var number: UInt64
        var state: CPUState
        var bytes: [UInt8]
        var text: String
        /// The interrupt taken before the instruction (which is then its handler's first), and where.
        var interrupt: String? = nil
        /// The instructions the interpreter ran on after this one to reach KVM's state
        /// (KVM's step ran on in user mode).
        var ranOn: UInt64 = 0
    }

    /// `--clock instructions`: machine time catches up with what the interpreter retired,
    /// and the timers due by then fire (before KVM's step, which may take their interrupt).
    private func advanceVirtualClock() {
        guard let virtualTime else { return }
        let retired = interp.retired
        if retired > lastRetired { virtualTime.nanoseconds.add(retired - lastRetired, ordering: .relaxed) }
        lastRetired = retired
        devices.timers.fireDue()
    }

    /// Both sides halted: waits until the vCPU has an event that ends the HLT (an NMI, or
    /// an interrupt when RFLAGS.IF is set), as `tandem run` does. With the instruction
    /// clock, time jumps to the next timer. False when nothing can end it (the run ends,
    /// "both sides halted") or on a signal.
    private func waitWhileHalted(interruptsEnabled: Bool) -> Bool {
        let apic = devices.apic
        watchdog.notStepping()
        while pendingStop.current == nil && guestEnd == nil {
            checkTimeout()
            if apic.hasNMI(vcpu: 0) || (interruptsEnabled && apic.hasPendingInterrupt(vcpu: 0)) { return true }
            guard interruptsEnabled, devices.mayStillInterrupt else { return false }
            if let virtualTime, let deadline = devices.timers.nextDeadline() {
                let now = virtualTime.nanoseconds.load(ordering: .relaxed)
                if deadline > now { virtualTime.nanoseconds.add(deadline - now, ordering: .relaxed) }
                devices.timers.fireDue()
                continue
            }
            _ = wakeup.wait(timeout: .now() + .milliseconds(100))
        }
        return false
    }

    /// `--timeout`, in host monotonic nanoseconds.
    private var deadline: UInt64? = nil

    private func checkTimeout() {
        StepWatchdog.checkTimeout(deadline: deadline, timeout: configuration.timeout, pendingStop)
    }

    /// A signal, an output error, `--timeout` or an overlong step ended the comparison:
    /// the outcome to return (nil: none pending).
    private func stopOutcome(compared: UInt64) -> Outcome? {
        pendingStop.current.map { Outcome(status: $0.status, report: "tandem: \($0.line) after \(compared) instructions compared") }
    }

    static func location(_ s: CPUState) -> String {
        let cs = String(s.cs.selector, radix: 16)
        return String(repeating: "0", count: max(0, 4 - cs.count)) + cs + ":" + hex(s.rip)
    }

    /// Runs to the end (exit device, both halted, `steps`), the first divergence, a signal
    /// (status 209) or an output error (211).
    public func run() -> Outcome {
        let outcome = pendingStop.routingSignals { compare() }
        devices.console.flush()
        // A signal or an output error after the last instruction still decides the status.
        if outcome.status == 0, let (status, line) = pendingStop.current { return Outcome(status: status, report: "tandem: \(line)") }
        return outcome
    }

    private func compare() -> Outcome {
        let start = DispatchTime.now()
        if let timeout = configuration.timeout {
            deadline = (configuration.started ?? start).uptimeNanoseconds &+ UInt64(timeout * 1e9)
        }
        let timer = watchdog.start(kvm: kvm, pendingStop: pendingStop, deadline: deadline, timeout: configuration.timeout)
        defer { timer.cancel() }
        var history: [Step] = []
        var hostLimited: [String: Int] = [:]
        var compared: UInt64 = 0
        for number in 0..<steps {
            checkTimeout()
            if let stop = stopOutcome(compared: compared) { return stop }
            advanceVirtualClock()
            watchdog.stepBegins(number)
            guard var before = try? interp.readState() else { return failure("cannot read the interpreter's state") }
            var (bytes, text) = instruction(at: before)
            var mnemonic = String(text.prefix { $0 != " " })
            history.append(Step(number: number, state: before, bytes: bytes, text: text))
            if history.count > 21 { history.removeFirst() }

            // KVM first: it talks to the devices; port and MMIO reads are recorded, and so
            // is the interrupt it takes from the controller before the instruction.
            var kvmSide = ExitHandler(RecordingBuses(devices))
            var kvmEnd: String? = nil
            var kvmCannot = false
            // PVM completes an I/O instruction on re-entry and runs on to the next; when that
            // is another I/O instruction, it exits again: each exit can add an instruction.
            var ioExits = 0
            var kvmHalted = false
            recorded.beginStep()
            // A step that may run natively (in user mode on PVM) has a time slice.
            var native = NativeSlice(run: self, before: before, mnemonic: mnemonic)
            // Whether a kick ended KVM's step (the slice's end, or after the instruction):
            // PVM may then have begun the next instruction (its page walk) already.
            var kicked = false
            kvmLoop: while true {
                let outcome: ExitOutcome
                do { outcome = try kvmSide.run(kvm) } catch { return failure("KVM: \(error)") }
                switch outcome {
                case .answered:
                    recorded.offering = false
                    ioExits += 1
                    // The guest has ended (an `out` to the exit device): KVM must not run
                    // on (PVM would run the next instruction before trapping).
                    if guestEnd != nil { break kvmLoop }
                case .stepped: break kvmLoop
                case .halted: kvmHalted = true; break kvmLoop
                case .shutdown: kvmEnd = "triple fault"; break kvmLoop
                case .unsupported: kvmCannot = true; break kvmLoop
                case .interrupted:
                    // The watchdog's kick: the run's end (a signal, --timeout, an output
                    // error, a step that never ended).
                    if let stop = stopOutcome(compared: compared) { return stop }
                    let now = try? kvm.readState()
                    // A kick between PVM's queueing of an exception (a page fault in a
                    // natively run stretch: CR2 already set) and its delivery: the step
                    // goes on until the handler is entered, where the interpreter, running
                    // on, takes the same fault.
                    if now?.events.hasInjection == true {
                        recorded.offering = false
                        native.disarm()
                        continue
                    }
                    if native.ended(at: now) {
                        recorded.offering = false
                        kicked = true
                        break kvmLoop
                    }
                    // A kick (EINTR) can end a KVM_RUN after PVM has already run the
                    // stepped instruction: then the step is done, and entering again would
                    // offer an interrupt at the next boundary as if it were this one's.
                    if recorded.log.deliveries.isEmpty, let now, now.rip != before.rip {
                        recorded.offering = false
                        kicked = true
                        break kvmLoop
                    }
                    continue
                case .entryFailed(let r): return failure("KVM refused to enter the guest (reason \(hex(r)))")
                case .internalError(let s): return failure("KVM: \(s)")
                case .instructionLimit: break kvmLoop
                }
            }
            let writes = kvmSide.answers.writes

            // The interrupt KVM took (if any) is the interpreter's first step: it takes the
            // same one at the same boundary, and the step's instruction is then the
            // handler's first.
            replayed.replay(recorded.log)
            replayed.live = kvmCannot
            var accesses: [MemoryAccess] = []
            var events: [InterruptEvent] = []
            var interrupted: CPUState? = nil
            if let delivery = replayed.undelivered {
                let exit: VCPUExit
                do { exit = try interp.run() } catch { return failure("interpreter: \(error)") }
                if replayed.undelivered != nil {
                    let why = before.rflags & 0x200 == 0 && delivery != .nmi ? "RFLAGS.IF is clear" : "it is in an interrupt shadow (STI, MOV SS) or blocks NMIs"
                    return divergence(number, history, "KVM took \(delivery) before this instruction; the interpreter does not accept one here (\(why))", compared: compared, start: start)
                }
                guard case .debugStep = exit, let entry = try? interp.readState() else {
                    return divergence(number, history, "KVM took \(delivery) before this instruction; the interpreter's delivery ended with \(exit)", compared: compared, start: start)
                }
                (accesses, events) = interp.drainTrace()
                interrupts += 1
                interrupted = before
                before = entry
                (bytes, text) = instruction(at: entry)
                mnemonic = String(text.prefix { $0 != " " })
                history[history.count - 1] = Step(number: number, state: entry, bytes: bytes, text: text,
                                                  interrupt: "\(delivery) at \(Self.location(history[history.count - 1].state))")
            }

            // The interpreter replays the same device answers. PVM's KVM completes a port
            // I/O instruction on re-entry and runs the next one before its single-step trap:
            // the interpreter then takes a second step to catch up.
            var interpreterSide = ExitHandler(ReplayingBuses(replaying: kvmSide.answers, live: kvmCannot ? devices : nil))
            var interpEnd: String? = nil
            let kvmAfter = try? kvm.readState()
            // Likewise it runs a whole REP string instruction in one step, where the
            // interpreter (like hardware) takes one iteration per step.
            let isString = mnemonic.hasPrefix("rep") && text.split(separator: " ").count > 1
            // And after delivering an exception it runs the handler's first instruction
            // before trapping, and after an IRET the instruction it returns to: so does the
            // interpreter then (once more than the I/O exits allow).
            var catchUp = 0
            var ranIret = mnemonic.hasPrefix("iret"), delivered = false
            // PVM runs 64-bit user mode natively: a step that starts there, or gets there,
            // can run on to the next exit. The interpreter then runs on until it holds KVM's
            // registers (not only its RIP: loops) and is compared there (DiffUserMode.swift).
            var userMode = hostIsEmulated && (before.inUserMode64 || kvmAfter?.inUserMode64 == true)
            var runOn = UserModeRunOn()
            // PVM carried out a SYSCALL in user mode (to the sentinel LSTAR KVM runs with):
            // the interpreter runs on to that SYSCALL and executes it for both.
            let syscall = kvmAfter.flatMap(syscallKVMRan)
            // An event PVM does not deliver the architectural way (SYSCALL, INT n) that the
            // interpreter reached: it executes it for both sides (the reason, once it has).
            var handedOver: String? = nil
            if let syscall, reachedSyscall(before, syscall) { handedOver = Self.syscallInUserMode }
            if userMode, let kvmAfter, softwareInterruptRaisedUD(before, kvmAfter) { handedOver = Self.softwareInterruptInUserMode }
            var previous = before
            while true {
                // A catch-up runs up to `runOnBound` instructions: the watchdog may end it.
                if catchUp & 0xFFF == 0xFFF, let stop = stopOutcome(compared: compared) { return stop }
                if catchUp > 0 {
                    let drained = interp.drainTrace()
                    runOn.keep(drained, in: &accesses)
                    events += drained.events
                    delivered = delivered || !drained.events.isEmpty
                    guard !kvmCannot, interpEnd == nil, let kvmAfter, let now = try? interp.readState() else { break }
                    userMode = userMode || (hostIsEmulated && now.inUserMode64)
                    if handedOver != nil { break }
                    if let syscall {
                        if reachedSyscall(now, syscall) { handedOver = Self.syscallInUserMode }
                    } else if userMode {
                        if let last = reachedKVMState(now, kvmAfter, previous: previous) {
                            if runOn.instructions > 0 { mnemonic = last }
                            break
                        }
                        if now.rip == kvmAfter.rip { runOn.visited(now) }
                        if softwareInterruptRaisedUD(now, kvmAfter) { handedOver = Self.softwareInterruptInUserMode }
                    } else if now.rip == kvmAfter.rip && !(isString && now[.rcx] != kvmAfter[.rcx]) {
                        break
                    }
                    let midString = isString && now.rip == before.rip
                    if handedOver != nil {
                        // The next step runs the SYSCALL or INT n.
                    } else if runOn.instructions > 0 || !(catchUp <= ioExits + (delivered || ranIret ? 1 : 0) || (midString && catchUp < 1 << 20)) {
                        guard userMode else { break }
                        guard runOn.instructions < Self.runOnBound else {
                            caughtUpInstructions += runOn.instructions
                            return stopEarly(compared: compared, start: start, hostLimited,
                                             "at step \(number), \(text): host limitation: this host's KVM ran on natively in 64-bit user mode to \(syscall.map { "a SYSCALL at \(hex($0.rip))" } ?? Self.location(kvmAfter)), and the interpreter did not reach that state within \(Self.runOnBound) instructions\(runOn.lastVisitText(kvm: kvmAfter))")
                        }
                        runOn.instructions += 1
                    } else if !midString && instruction(at: now).1.hasPrefix("iret") {
                        ranIret = true
                    }
                    previous = now
                }
                catchUp += 1
                interpLoop: while true {
                    let outcome: ExitOutcome
                    do { outcome = try interpreterSide.run(interp) } catch { return failure("interpreter: \(error)") }
                    if let mismatch = interpreterSide.answers.mismatch {
                        if runOn.instructions > 0 { return stopEarly(compared: compared, start: start, hostLimited, ranPast(number, text, kvmAfter)) }
                        return divergence(number, history, mismatch, compared: compared, start: start)
                    }
                    switch outcome {
                    case .answered: continue
                    case .stepped: break interpLoop
                    case .halted:
                        interpEnd = "hlt"
                        _ = try? interp.run()   // single-stepping: this completes the HLT's step
                        break interpLoop
                    case .shutdown: interpEnd = "triple fault"; break interpLoop
                    case .unsupported(let s):
                        if kvmCannot {
                            return stopEarly(compared: compared, start: start, hostLimited,
                                             "at step \(number), \(text): neither KVM nor the interpreter can execute it (\(s))", interpreterCanGoOn: false)
                        }
                        return divergence(number, history, "the interpreter cannot execute this instruction (\(s))", compared: compared, start: start)
                    case .interrupted, .instructionLimit:
                        if let stop = stopOutcome(compared: compared) { return stop }
                        continue
                    case .entryFailed, .internalError: return failure("interpreter stopped unexpectedly")
                    }
                }
            }
            // The instruction the interpreter ran last: after an I/O or MMIO exit PVM runs
            // the next one too (`previous` holds the state before it), and when that is
            // RDTSC its time is the input the interpreter takes from KVM.
            let ranLast = catchUp >= 2 && runOn.instructions == 0 ? String(instruction(at: previous).1.prefix { $0 != " " }) : mnemonic
            if runOn.instructions > 0 {
                catchUps += 1
                caughtUpInstructions += runOn.instructions
                history[history.count - 1].ranOn = runOn.instructions
            }
            // ...and, having finished the iterations, needs one more (empty) step to move RIP on.
            if isString, !kvmCannot, let k = try? kvm.readState(), let i = try? interp.readState(),
               k.rip == before.rip, i.rip != before.rip, k[.rcx] == i[.rcx] {
                stepKVMOnce()
            }
            if guestEnd != nil { compared += 1; break }
            // Whether KVM halted. PVM ends a single-stepped HLT with the debug trap, not a
            // halt exit, and reports the halt later, after the IRET of the interrupt that
            // ended it: the interpreter, which knows when it ran a HLT, decides.
            if !kvmCannot, let k = try? kvm.readState(), let i = try? interp.readState(), k.rip == i.rip, hostIsEmulated {
                if interpEnd == "hlt" {
                    kvmEnd = "hlt"
                } else if kvmHalted {
                    hostLimited[Self.lateHalt, default: 0] += 1
                }
            } else if kvmHalted {
                kvmEnd = "hlt"
            }
            let last = interp.drainTrace()
            accesses += last.accesses
            events += last.events
            compared += 1
            let outIndex = interpreterSide.answers.writesMatched
            if !kvmCannot, outIndex < writes.count {
                return divergence(number, history, "port output differs: KVM wrote \(hex(writes[outIndex].2)) to port \(hex(writes[outIndex].0)), the interpreter nothing", compared: compared, start: start)
            }
            if !kvmCannot, let w = interpreterSide.answers.mmioWrites.first {
                return divergence(number, history, "MMIO output differs: KVM wrote \(hex(w.2)) to \(hex(w.0)) (\(w.1) bytes), the interpreter nothing", compared: compared, start: start)
            }
            replayed.finishStep()
            if let problem = replayed.problems.first { return divergence(number, history, problem, compared: compared, start: start) }

            if let reason = handedOver {
                // What PVM made of the SYSCALL or INT n is not the architecture's: the
                // interpreter's result goes to both sides, KVM's memory (the frame of the
                // fault PVM delivered instead) included.
                hostLimited[reason, default: 0] += 1
                if let s = try? interp.readState() { try? kvm.writeState(forKVM(s)) }
                _ = compareMemory(accesses)
                copyDifferingPages(accesses)
            } else if kvmCannot {
                // This host's KVM cannot run it: the interpreter's result goes to both sides.
                hostLimited["KVM cannot emulate \(mnemonic)", default: 0] += 1
                if let s = try? interp.readState() { try? kvm.writeState(forKVM(s)) }
                copyWrites(accesses)
                _ = try? dirtyKVMPages()
            } else {
                // Compare.
                guard var k = try? kvm.readState(), var i = try? interp.readState() else { return failure("cannot read state") }
                if readsSentinelLSTAR(mnemonic, before) {
                    // KVM runs with its own LSTAR: the guest reads its own (the interpreter's).
                    k[.rax] = i[.rax]
                    k[.rdx] = i[.rdx]
                    try? kvm.writeState(k)
                } else if writesLSTAR(mnemonic, before) {
                    try? kvm.writeState(forKVM(k))
                }
                if ranLast == "rdtsc" || ranLast == "rdtscp" {
                    // The time read is an input, like a port read: the interpreter gets KVM's.
                    i[.rax] = k[.rax]
                    i[.rdx] = k[.rdx]
                    try? interp.writeState(i)
                }
                // When the interpreter caught up with what PVM ran after the step (the
                // instruction an IRET returns to, the one after an I/O exit), the flags that
                // instruction leaves undefined may differ too: a SHL by 17 after a timer
                // interrupt's IRETQ left OF apart.
                let undefinedFlags = UndefinedFlags.mask(for: mnemonic) | UndefinedFlags.mask(for: ranLast)
                var fields = Self.differences(k, i, undefinedFlags: undefinedFlags)
                if !events.isEmpty {
                    fixSingleStepTrapFlag(before: before, accesses)
                    if let interrupted { fixSingleStepTrapFlag(before: interrupted, accesses) }
                }
                var memory = compareMemory(accesses)
                if hostIsEmulated, !memory.isEmpty {
                    let (rest, reasons) = unsetBookkeepingBits(memory, state: i, accesses: accesses, kicked: kicked)
                    for reason in reasons { hostLimited[reason, default: 0] += 1 }
                    memory = rest
                }
                if hostIsEmulated, i.rflags & 1 << 17 != 0, k.rflags & 1 << 17 == 0 {
                    return stopEarly(compared: compared - 1, start: start, hostLimited,
                                     "at step \(number), \(text): host limitation: this host's KVM does not run virtual-8086 mode")
                }
                if hostIsEmulated, i.cr0 & CR0.pg != 0, k.cr0 & CR0.pg == 0, i.cr4 & CR4.pae == 0, i.efer & EFER.lme == 0 {
                    // PVM's KVM cannot enable legacy (non-PAE) paging at CPL 0: nothing after this compares.
                    return stopEarly(compared: compared - 1, start: start, hostLimited,
                                     "at step \(number), \(text): host limitation: this host's KVM cannot enable legacy 32-bit paging at CPL 0")
                }
                if kvmEnd != interpEnd {
                    fields.append(("stop", kvmEnd ?? "running", interpEnd ?? "running"))
                }
                if !fields.isEmpty || !memory.isEmpty {
                    if fields.isEmpty && memory.isEmpty {
                        // nothing
                    } else if let limitation = classify(mnemonic, fields, memory, before: before, after: i, kvm: k) {
                        // The interpreter's result is the architectural one: KVM takes it over.
                        hostLimited[limitation, default: 0] += 1
                        try? kvm.writeState(forKVM(i))
                        copyDifferingPages(accesses)
                    } else {
                        return divergence(number, history, nil, kvm: k, interp: i, fields: fields, memory: memory, compared: compared, start: start)
                    }
                }
                // Undefined flags may legitimately differ: carry KVM's forward so they do
                // not show up as a divergence of the next instruction.
                let undefined = undefinedFlags | 1 << 16
                if (k.rflags ^ i.rflags) & undefined != 0 {
                    var synced = i
                    synced.rflags = i.rflags & ~undefined | k.rflags & undefined
                    try? interp.writeState(synced)
                }
            }
            if guestEnd != nil { break }
            if kvmEnd == "hlt" && interpEnd == "hlt" {
                // Both halted: wait, as the machine does, for an interrupt that ends the HLT.
                guard let state = try? interp.readState(), waitWhileHalted(interruptsEnabled: state.rflags & 0x200 != 0) else { break }
            } else if kvmEnd != nil && interpEnd != nil {
                break
            }
        }
        devices.timers.stop()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let end = guestEnd ?? (compared >= steps ? "--steps \(steps) reached" : "both sides halted")
        let taken = interrupts == 0 ? "" : ", \(interrupts) interrupt\(interrupts == 1 ? "" : "s") taken by both at the same instruction"
        var lines = ["tandem diff: no divergence: all \(compared) instructions compared in \(String(format3: seconds)) s\(taken); \(end)"]
        if let caughtUp = caughtUpLine { lines.append(caughtUp) }
        for (reason, count) in hostLimited.sorted(by: { $0.key < $1.key }) {
            lines.append("  host limitation (\(count)x): \(reason)")
        }
        return Outcome(status: 0, report: lines.joined(separator: "\n"), compared: compared, ran: compared + caughtUpInstructions, end: end,
                       interrupts: interrupts, catchUps: catchUps, caughtUpInstructions: caughtUpInstructions)
    }

    /// The comparison cannot go on (`reason`) after `compared` matching instructions. The
    /// interpreter runs the rest alone (up to --steps), so the report can say how much of
    /// the run was not compared.
    func stopEarly(compared: UInt64, start: DispatchTime, _ hostLimited: [String: Int], _ reason: String, interpreterCanGoOn: Bool = true) -> Outcome {
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        // The interpreter has run the instruction the comparison stopped at.
        let alreadyRan = compared + 1 + caughtUpInstructions
        let (ran, end) = interpreterCanGoOn ? runInterpreterAlone(from: alreadyRan) : (alreadyRan, "it stopped there")
        var lines = ["tandem diff: stopped early: \(compared) of \(ran) instructions compared in \(String(format3: seconds)) s, no divergence among them",
                     "  the comparison stopped \(reason)",
                     "  the interpreter alone: \(end)"]
        if let caughtUp = caughtUpLine { lines.append(caughtUp) }
        for (reason, count) in hostLimited.sorted(by: { $0.key < $1.key }) {
            lines.append("  host limitation (\(count)x): \(reason)")
        }
        return Outcome(status: Self.stoppedEarly, report: lines.joined(separator: "\n"), compared: compared, ran: ran, end: reason,
                       interrupts: interrupts, catchUps: catchUps, caughtUpInstructions: caughtUpInstructions)
    }

    /// Runs the interpreter on its own from step `from` to the end of the run (the exit
    /// device, a halt, a triple fault, an instruction it cannot execute, or --steps):
    /// how many instructions the whole run has, and how it ended.
    func runInterpreterAlone(from: UInt64) -> (UInt64, String) {
        interp.tracing = false
        interp.singleStep = true
        // Nothing to replay any more: the interpreter asks the machine's controller itself.
        interp.interruptController = devices.apic
        var number = from
        // Nothing to replay to: the devices answer the interpreter.
        var alone = ExitHandler(DeviceBuses(devices, vcpu: 0))
        while number < steps {
            if let guestEnd { return (number, "\(guestEnd) after \(number) instructions") }
            let outcome: ExitOutcome
            do { outcome = try alone.run(interp) } catch { return (number, "interpreter error \(error) after \(number) instructions") }
            switch outcome {
            case .answered: continue
            case .stepped: number += 1
            case .halted: return (number + 1, "halted after \(number + 1) instructions")
            case .shutdown: return (number + 1, "triple fault after \(number + 1) instructions")
            case .unsupported(let s): return (number, "cannot execute instruction \(number) (\(s))")
            case .interrupted, .instructionLimit: continue
            case .entryFailed, .internalError: return (number, "stopped unexpectedly after \(number) instructions")
            }
        }
        return (number, "--steps \(steps) reached")
    }

    /// KVM single-steps by setting RFLAGS.TF in the guest, and on this host the FLAGS image
    /// an exception pushes keeps it. The interpreter's image (TF clear) is the architectural
    /// one: KVM's memory gets it too, so the guest's IRET does not start tracing itself.
    func fixSingleStepTrapFlag(before: CPUState, _ accesses: [MemoryAccess]) {
        for a in accesses where a.write && a.size >= 2 && a.value == before.rflags & (a.size == 8 ? .max : (1 << UInt64(8 * a.size)) - 1) {
            let k: UInt8 = kvmMemory.read(a.physical + 1), i: UInt8 = interpMemory.read(a.physical + 1)
            if k ^ i == 0x01 { kvmMemory.write(a.physical + 1, i) }
        }
    }

    /// One more single step on KVM, for an instruction that does no I/O.
    func stepKVMOnce() {
        for _ in 0..<4 {
            guard let exit = try? kvm.run() else { return }
            if case .debugStep = exit { return }
            if case .interrupted = exit { continue }
            return
        }
    }

    func classify(_ mnemonic: String, _ fields: [(String, String, String)], _ memory: [MemoryDifference], before: CPUState, after i: CPUState, kvm k: CPUState) -> String? {
        guard hostIsEmulated else { return nil }
        if mnemonic == "cpuid", memory.isEmpty, Self.cpuidRewritten(leaf: UInt32(truncatingIfNeeded: before[.rax]), subleaf: UInt32(truncatingIfNeeded: before[.rcx]), fields, kvm: k, interp: i) {
            return Self.cpuidAddsHostFlags
        }
        if mnemonic == "int" && before.cs.selector & 3 == 3 && !before.cs.long {
            return "INT n at CPL 3 raises #UD under this host's KVM"
        }
        guard memory.isEmpty else { return nil }
        if keptDataSegments(fields, interp: i) { return Self.keptDataSegments }
        for limitation in HostLimitation.pvm where limitation.mnemonics.contains(mnemonic) {
            if fields.allSatisfy({ $0.0 == "rflags" }) { return limitation.reason }
        }
        return nil
    }

    static let cpuidAddsHostFlags = "this host's KVM adds the host CPU's flags to CPUID leaf 1 ECX/EDX and leaf 7.0 EBX/ECX/EDX, and recomputes leaf 0xD EBX, whatever the machine's model says: KVM takes the model's answer"

    /// Whether the registers that differ after a CPUID are only the words PVM rewrites
    /// (Documentation/HostLimitations.md), KVM's leaf 1 and 7 words holding every flag
    /// of the model's (the interpreter's).
    static func cpuidRewritten(leaf: UInt32, subleaf: UInt32, _ fields: [(String, String, String)], kvm k: CPUState, interp i: CPUState) -> Bool {
        let words: [GPR]
        switch (leaf, subleaf) {
        case (1, _): words = [.rcx, .rdx]
        case (7, 0): words = [.rbx, .rcx, .rdx]
        case (0xD, _): return fields.map(\.0) == ["rbx"]
        default: return false
        }
        let names = Set(words.map(\.name))
        return !fields.isEmpty && fields.allSatisfy { names.contains($0.0) } && words.allSatisfy { k[$0] & i[$0] == i[$0] }
    }

    static let lateHalt = "this host's KVM reports a single-stepped HLT as a debug trap, then once more as a halt exit after the interrupt handler's IRET"
    static let unsetAccessedBit = "this host's KVM does not set the accessed bit of a descriptor it loads from the GDT"
    static let unsetPageBits = "this host's KVM does not set the dirty (or accessed) bits of page-table entries"
    static let earlyPageBits = "this host's KVM, its step ended by a kick, had set the accessed (or dirty) bits of a page-table entry for the next instruction already: the interpreter takes them"

    /// The bits the CPU sets in memory on its own that this host's KVM leaves clear: the
    /// accessed bit of a GDT descriptor it loads (interrupt delivery) and the accessed and
    /// dirty bits of the page-table entries that map what the step touched. These
    /// differences are host limitations; KVM's memory takes the interpreter's bytes. When a
    /// kick ended KVM's step (`kicked`), PVM may have walked the page tables for the next
    /// instruction already (its shadow MMU sets the bits when it maps the page): accessed
    /// and dirty bits KVM set in any paging structure go the other way, to the
    /// interpreter, which would set them itself when it runs that instruction. The rest,
    /// and the reasons found, are returned.
    func unsetBookkeepingBits(_ memory: [MemoryDifference], state s: CPUState, accesses: [MemoryAccess], kicked: Bool) -> ([MemoryDifference], [String]) {
        let gdt = s.gdtr.limit > 0 ? interp.translate(linear: s.gdtr.base) : nil
        var tablePages = Set<UInt64>()
        if s.efer & EFER.lma != 0 {
            for linear in accesses.map(\.linear) + [s.cs.base &+ s.rip, s[.rsp]] {
                var table = s.cr3 & 0x000F_FFFF_FFFF_F000
                for shift: UInt64 in [39, 30, 21, 12] {
                    tablePages.insert(table)
                    let entry: UInt64 = interpMemory.read(table + ((linear >> shift) & 511) * 8)
                    guard entry & 1 != 0, shift == 39 || shift == 12 || entry & 0x80 == 0 else { break }
                    table = entry & 0x000F_FFFF_FFFF_F000
                }
            }
        }
        var rest: [MemoryDifference] = [], reasons = Set<String>()
        for d in memory {
            let extra = d.kvm ^ d.interp
            let onlyAdded = d.interp & extra == extra
            if let gdt, d.address >= gdt, d.address - gdt <= UInt64(s.gdtr.limit), (d.address - gdt) % 8 == 5, extra == 1, onlyAdded {
                reasons.insert(Self.unsetAccessedBit)
            } else if tablePages.contains(d.address & ~0xFFF), d.address % 8 == 0, extra & ~0x60 == 0, onlyAdded {
                reasons.insert(Self.unsetPageBits)
            } else if kicked, d.address % 8 == 0, extra & ~0x60 == 0, d.kvm & extra == extra,
                      pagingStructures(s).contains(d.address & ~0xFFF) {
                reasons.insert(Self.earlyPageBits)
                interpMemory.write(d.address, d.kvm)
                continue
            } else {
                rest.append(d)
                continue
            }
            kvmMemory.write(d.address, d.interp)
        }
        return (rest, reasons.sorted())
    }

    /// The pages of the 4-level paging structures reachable from CR3 (the interpreter's
    /// memory), up to 4,096 of them: where a byte KVM's step changed is a page-table entry.
    func pagingStructures(_ s: CPUState) -> Set<UInt64> {
        guard s.efer & EFER.lma != 0 else { return [] }
        var pages = Set<UInt64>()
        var level: [(table: UInt64, depth: Int)] = [(s.cr3 & 0x000F_FFFF_FFFF_F000, 0)]
        while let (table, depth) = level.popLast(), pages.count < 4096 {
            guard pages.insert(table).inserted, depth < 3 else { continue }
            for index in 0..<UInt64(512) {
                let entry: UInt64 = interpMemory.read(table + index * 8)
                // A present entry that maps a table (not a 1 GiB or 2 MiB page).
                guard entry & 1 != 0, depth == 0 || entry & 0x80 == 0 else { continue }
                level.append((entry & 0x000F_FFFF_FFFF_F000, depth + 1))
            }
        }
        return pages
    }

    /// Copies what the interpreter wrote into KVM's memory (when KVM could not run the instruction).
    func copyWrites(_ accesses: [MemoryAccess]) {
        for a in accesses where a.write {
            let bytes = interpMemory.bytes(at: a.physical, count: a.size)
            bytes.withUnsafeBytes { kvmMemory.write(a.physical, from: $0) }
        }
    }

    /// Makes KVM's memory equal the interpreter's on every page either side wrote.
    func copyDifferingPages(_ accesses: [MemoryAccess]) {
        let pages = comparedPages.union(accesses.filter(\.write).map { $0.physical & ~0xFFF })
        for page in pages where kvmMemory.region(containing: page)?.kind == .ram {
            let bytes = interpMemory.bytes(at: page, count: 4096)
            bytes.withUnsafeBytes { kvmMemory.write(page, from: $0) }
        }
    }

    /// The physical pages KVM wrote since the last call.
    func dirtyKVMPages() throws -> [UInt64] {
        var pages: [UInt64] = []
        for (slot, region) in kvmMemory.regions.enumerated() where region.kind == .ram {
            for p in try kvmVM.dirtyPages(slot: UInt32(slot), pages: Int(region.size >> 12)) {
                pages.append(region.start + UInt64(p) << 12)
            }
        }
        return pages
    }

    /// Bytes that differ on the pages either side wrote in this step.
    func compareMemory(_ accesses: [MemoryAccess]) -> [MemoryDifference] {
        var pages = Set(accesses.filter(\.write).flatMap { [$0.physical & ~0xFFF, ($0.physical + UInt64($0.size) - 1) & ~0xFFF] })
        if let dirty = try? dirtyKVMPages() { pages.formUnion(dirty) }
        comparedPages = pages
        var out: [MemoryDifference] = []
        // ROM is writable under KVM (a PVM workaround, see Documentation/KVM.md) and not in
        // the interpreter; writes to it (descriptor accessed bits) are not divergences.
        for page in pages.sorted() where kvmMemory.region(containing: page)?.kind != .rom {
            let a = kvmMemory.bytes(at: page, count: 4096)
            let b = interpMemory.bytes(at: page, count: 4096)
            guard a != b else { continue }
            for i in 0..<4096 where a[i] != b[i] {
                out.append(MemoryDifference(address: page + UInt64(i), kvm: a[i], interp: b[i]))
                if out.count >= 32 { return out }
            }
        }
        return out
    }

    static func differences(_ k: CPUState, _ i: CPUState, undefinedFlags: UInt64) -> [(String, String, String)] {
        // RF is a debug-exception artefact of single-stepping on KVM; the accessed bit of a
        // segment's type is KVM's to report loosely, and so are the hidden parts of unusable
        // segments (and of a null LDTR).
        let flagMask = ~(undefinedFlags | 1 << 16)
        var loose = Set<String>()
        for (name, path) in CPUState.segmentRegisters {
            let a = k[keyPath: path], b = i[keyPath: path]
            if (a.unusable && b.unusable) || (name == "ldtr" && a.selector == 0) { loose.formUnion([name + ".limit", name + ".attributes"]) }
        }
        var out: [(String, String, String)] = []
        for (a, b) in zip(k.namedFields, i.namedFields) where !loose.contains(a.name) {
            var (x, y) = (a.value, b.value)
            if a.name == "rflags" { x &= flagMask; y &= flagMask }
            if a.name.hasSuffix(".attributes") { x &= ~1; y &= ~1 }
            if x != y { out.append((a.name, hex(x), hex(y))) }
        }
        return out
    }

    func instruction(at s: CPUState) -> ([UInt8], String) {
        var linear = s.cs.base &+ s.rip
        if s.mode.bits < 64 { linear &= 0xFFFF_FFFF }
        let physical = s.cr0 & CR0.pg != 0 ? interp.translate(linear: linear) : linear
        let raw = physical.map { interpMemory.bytes(at: $0, count: 15) } ?? []
        let d = disassembler.disassemble(raw, address: s.rip, bits: s.mode.bits)
        return (Array(raw.prefix(d?.length ?? 0)), d?.text ?? "(undecodable)")
    }

    func failure(_ message: String) -> Outcome {
        Outcome(status: ExitStatus.hostError.rawValue, report: "tandem diff: \(message)")
    }

    func describe(_ s: Step) -> String {
        let taken = s.interrupt.map { "#\(s.number) \($0), then:\n      " } ?? ""
        let ranOn = s.ranOn == 0 ? "" : "\n      ... and \(s.ranOn) more instruction\(s.ranOn == 1 ? "" : "s"), run on to where KVM's step ended"
        return taken + "#\(s.number) \(Self.location(s.state)) (\(s.state.mode.rawValue))  \(padRight(s.bytes.map(byteHex).joined(separator: " "), 24))\(s.text)" + ranOn
    }

    func divergence(_ number: UInt64, _ history: [Step], _ problem: String?, kvm k: CPUState? = nil, interp i: CPUState? = nil,
                    fields: [(String, String, String)] = [], memory: [MemoryDifference] = [], compared: UInt64, start: DispatchTime) -> Outcome {
        var lines = ["tandem diff: divergence at step \(number) (vcpu0), after \(compared - 1) matching instructions"]
        if let current = history.last { lines.append("  " + describe(current)) }
        if let problem { lines.append("  " + problem) }
        if let k, let i {
            lines.append("  " + padRight("field", 18) + padRight("kvm", 22) + padRight("interp", 22))
            let marked = Set(fields.map(\.0))
            for (name, a, b) in Self.allFields(k, i) {
                lines.append("  " + padRight(name, 18) + padRight(a, 22) + padRight(b, 22) + (marked.contains(name) ? "<<<" : ""))
            }
            for (name, a, b) in fields where name == "stop" { lines.append("  " + padRight(name, 18) + padRight(a, 22) + padRight(b, 22) + "<<<") }
        }
        if !memory.isEmpty {
            lines.append("  memory that differs:")
            lines += memory.map { "    \($0)" }
        }
        lines.append("  previous instructions:")
        lines += history.dropLast().map { "    " + describe($0) }
        return Outcome(status: 1, report: lines.joined(separator: "\n"), compared: compared - 1, ran: compared, end: "divergence at step \(number)")
    }

    static func allFields(_ k: CPUState, _ i: CPUState) -> [(String, String, String)] {
        zip(k.namedFields, i.namedFields).map { ($0.name, hex($0.value), hex($1.value)) }
    }
}

/// A byte that differs between KVM's memory and the interpreter's.
struct MemoryDifference: CustomStringConvertible {
    var address: UInt64
    var kvm: UInt8
    var interp: UInt8
    var description: String { "\(hex(address)): kvm \(byteHex(kvm)) interp \(byteHex(interp))" }
}

extension ImageError {
    var isFit: Bool { if case .doesNotFit = self { true } else { false } }
}
