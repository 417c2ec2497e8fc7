#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Devices
import GDBStub
import HostOS
import Interpreter
import KVM
import RunLoop
import Synchronization
import Tracing
import X86

// The run loop: the machine's vCPU threads and the loop each runs — the vCPU state
// machine its command channel drives (Documentation/Architecture.md), its sleeps in HLT
// and wait-for-SIPI, and its exits handed to RunLoop's one exit handler. Building the
// machine (memory, devices, engines, the image) is the Machine module's; the engine moves,
// the hybrid engine, snapshot and debugger parking are the loop's helpers in their own
// files, all acting on the vCPU's `VCPUSlot` on its own thread.

/// How `VCPUManager.run` ended.
package struct VCPURun {
    /// When the vCPUs started.
    package var started: DispatchTime
    /// Whether every vCPU thread stopped (else the run is reported without the ones that did not).
    package var allStopped: Bool
}

extension VCPUManager {
    // MARK: Running

    /// Runs the vCPUs to the machine's stop: starts one thread per vCPU and the gdb stub's
    /// service, waits for a stop (the exit device, all vCPUs halted, a fault, the timeout —
    /// `timeout` seconds counted from `countedFrom`, else from now —, a signal, an output
    /// error), then for the vCPU threads to end.
    package func run(timeout: Double?, countedFrom: DispatchTime?, gdb gdbServer: GDBServer?) -> VCPURun {
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
        if let timeout {
            let deadline = (countedFrom ?? started) + timeout
            if stopped.wait(timeout: deadline) == .timedOut { requestStop(.timeout(timeout)) }
        } else {
            stopped.wait()
        }
        // A vCPU stuck in a write to a console nobody reads cannot be kicked (nor can a
        // backend that misses its kick): after a grace period the run is reported without
        // it, and without the output it holds.
        let allStopped = finished.wait(timeout: .now() + Self.stopGrace) == .success
        if allStopped { for t in threads { t.join() } }
        return VCPURun(started: started, allStopped: allStopped)
    }

    /// How long `run` waits for the vCPU threads after a stop before reporting without them.
    static let stopGrace: DispatchTimeInterval = .milliseconds(500)

    /// Stops the machine (the first reason wins) and kicks every vCPU out of its backend.
    package func requestStop(_ reason: StopReason) {
        let first = control.withLock { c -> Bool in
            guard c.reason == nil else {
                if case .outputError(let line) = reason { c.lateOutputError = c.lateOutputError ?? line }
                return false
            }
            c.reason = reason
            return true
        }
        guard first else { return }
        for i in slots.indices { send(.stop, to: i) }
        devices.timers.stop()
        stopped.signal()
    }

    /// Whether the machine is stopping: the stop is one command, sent to every vCPU's
    /// channel (`requestStop`), and vCPU 0 always exists. (Read by the gdb stub and the
    /// snapshot's waits, on other threads; nothing reads it from a signal handler: signals
    /// reach the machine on StopSignals' thread.)
    package var stopRequested: Bool { slots[0].commands.stopRequested }

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
    package func state(ofVCPU vcpu: Int) -> VCPUState { slots[vcpu].commands.state }

    /// The shared vCPU loop: runs the backend, carries out the commands its channel brings
    /// (Documentation/Architecture.md), and hands its exits to the one exit handler, which
    /// answers them with the device model.
    private func vcpuMain(_ index: Int) {
        let slot = slots[index]
        defer {
            // A snapshot needs the state at an instruction boundary (KVM completes an
            // answered `out` only at its next entry).
            if completesExitAtStop { completePendingExit(slot) }
            control.withLock { $0.finalStates[index] = try? slot.guestState() }
            slot.commands.enter(.stopped)
        }
        slot.commands.enter(.running)
        slot.thread.store(UInt(pthread_self()), ordering: .sequentiallyConsistent)
        slot.engineSince = DispatchTime.now().uptimeNanoseconds
        // This thread fires the vCPU's local APIC timer from now on (not on a virtual clock).
        let ownTimer = devices.timers.attach(owner: index)
        slot.ownTimer = ownTimer
        slot.active.ownTimer = ownTimer?.due
        slot.kvm?.ownTimer = ownTimer?.due
        slot.fallbackVCPU?.ownTimer = ownTimer?.due
        defer { ownTimer?.detach() }
        switch slot.runState {
        case .running: break
        case .waitForSIPI: guard waitForStartup(index) else { return }
        case .halted:   // (a restored snapshot's)
            guard waitWhileHalted(index, interruptsEnabled: (try? slot.active.readState().interruptsEnabled) ?? false) else { return }
        }
        // Tracing (VCPUTracing.swift): from here, and again whenever gdb starts or stops a trace.
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
            ownTimer?.fireIfDue()
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
                    traceStep(tracer, backend)
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
    package func interruptRequested(_ index: Int) {
        guard index < slots.count else { return }
        // On its own thread the vCPU looks anyway before it enters its engine again, or
        // sleeps again (a kick would only cost KVM an entry that returns at once).
        if slots[index].isCurrentThread { return }
        // A sleeping vCPU looks as soon as it wakes; kicking it too would only cost its
        // next entry (KVM's immediate_exit) a round trip.
        if !slots[index].sleeping.load(ordering: .sequentiallyConsistent) { slots[index].kickEngines() }
        wakeups[index].signal()
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
            // Halted for good: nothing any vCPU accepts can come. An NMI, INIT or SIPI waiting
            // for a vCPU that has not woken yet (its sender halted right after sending it, as
            // memtest86+'s NMI barrier does) wakes it whatever IF says.
            if all && !(anyEnabled && devices.mayStillInterrupt) && !devices.apic.anyNonMaskableEvent() {
                requestStop(.allHalted(interruptsDisabled: !anyEnabled))
                return false
            }
            if interruptsEnabled && skipToNextDeadline() { continue }
            var until = TimerDeadline.hostNow() &+ Self.haltRecheck
            // Its own timer's deadline, or with --timer-slack a periodic tick's a little later.
            if interruptsEnabled, let due = ownTimer?.hostWakeup { until = min(until, due) }
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
    /// Where KVM last took the vCPU over from the interpreter (`enterKVM`): a breakpoint
    /// PVM lost is found by it (`Hybrid.swift`, `lostBreakpoint`).
    var kvmEntryRIP: UInt64? = nil
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
    /// vCPU has not started yet). VCPUTracing.swift.
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
