#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GDBStub
import Interpreter
import KVM
import RunLoop
import Synchronization
import X86

// Live engine switching (Documentation/Switching.md): a vCPU of a running machine moves
// between KVM and the interpreter at an instruction boundary, on its own thread. Guest
// memory and the device model are shared, so a move carries only the vCPU state
// (`CPUState`, the whole vCPU), and tells the interpreter's decode caches which pages
// KVM wrote (the memslots' dirty logs). Requests come from `Machine.switch(vcpu:to:)`,
// SIGUSR1 (every vCPU to the other engine), gdb's `monitor engine`, and `--switch-every`.

extension SwitchRequest {
    init(_ engine: Engine) { self = engine == .kvm ? .toKVM : .toInterpreter }
}

extension VCPUManager {
    /// Moves vCPU `vcpu` to `engine`. The move happens on the vCPU's thread at its next
    /// instruction boundary (at once if it is running; when it wakes if it sleeps in HLT;
    /// when gdb resumes it if it is stopped there); `engine(of:)` says where it is.
    /// Errors: the machine cannot switch (`canSwitchEngines`), or no such vCPU.
    package func `switch`(vcpu: Int, to engine: Engine) throws(VCPUManagerError) {
        guard slots.indices.contains(vcpu) else {
            throw VCPUManagerError("there is no vcpu\(vcpu) (the machine has \(slots.count))")
        }
        if let why = cannotSwitchReason { throw VCPUManagerError(why) }
        request(SwitchRequest(engine), for: vcpu)
    }

    /// The engine vCPU `vcpu` runs on now (while KVM could not run an instruction and the
    /// interpreter runs it in its place, still KVM).
    package func engine(of vcpu: Int) -> Engine {
        let slot = slots[vcpu]
        return slot.active is KVMVCPU || slot.interpreter != nil ? .kvm : .interp
    }

    /// Whether the vCPUs can move between engines: the machine has both — a KVM machine
    /// (the interpreter is always there for it) or an interpreter machine built with
    /// `--switch-every` or `--gdb` where KVM opens — and is not the hybrid engine, which
    /// places its vCPUs by mode itself.
    package var canSwitchEngines: Bool { cannotSwitchReason == nil }

    var cannotSwitchReason: String? {
        if hybrid { return "the hybrid engine moves its vCPUs between KVM and the interpreter by itself" }
        if kvm == nil { return "this machine has no KVM to switch to (start it with --backend kvm, or with --switch-every where /dev/kvm opens)" }
        return nil
    }

    /// SIGUSR1 (`signalled`) or a `--switch-every` time slice: every vCPU to the other engine.
    package func flipEngines(signalled: Bool) {
        if let why = cannotSwitchReason {
            if signalled { Self.note("tandem: SIGUSR1 ignored: \(why)") }
            return
        }
        for i in slots.indices { request(.flip, for: i) }
    }

    /// Out of its engine's run, to the top of its loop, where it moves (a vCPU asleep in
    /// HLT moves when it wakes: the move is a boundary's, not a wakeup's).
    private func request(_ request: SwitchRequest, for index: Int) {
        send(.switchEngine(request), to: index)
    }

    /// On vCPU `index`'s thread, at the top of its loop: carries out a requested move if
    /// the vCPU is at an instruction boundary (else its engine was kicked and stops at the
    /// next one). False: the machine stopped.
    func serviceSwitchRequest(_ slot: VCPUSlot, index: Int) -> Bool {
        if slot.interpreter != nil {
            // The interpreter runs in KVM's place: for one instruction (the move waits for
            // it), or for the debugger's watchpoints (then the vCPU cannot move).
            if slot.debugOnInterpreter { slot.commands.switchDone(slot.commands.switchRequest) }
            return true
        }
        // (KVM's run can return `.interrupted` without entering, the last exit's
        // instruction still unfinished.)
        guard slot.atInstructionBoundary, (slot.active as? KVMVCPU)?.exitAwaitingEntry != true else {
            // Its engine completes the instruction and returns at once.
            slot.active.kick()
            return true
        }
        // Cleared once the move is done (`engine(of:)` is then true), unless another
        // request came meanwhile.
        let request = slot.commands.switchRequest
        defer { slot.commands.switchDone(request) }
        let onKVM = slot.active is KVMVCPU
        switch request {
        case .none: return true
        case .toKVM where onKVM, .toInterpreter where !onKVM: return startSlice(slot, index: index)
        default: return move(slot, index: index, toKVM: !onKVM)
        }
    }

    /// Moves the vCPU's whole state to the other engine (on its thread, at a boundary).
    private func move(_ slot: VCPUSlot, index: Int, toKVM: Bool) -> Bool {
        guard let kvmVCPU = slot.kvm as? KVMVCPU, let interpreter = interpreterVCPU(for: slot, index: index) else { return true }
        slot.commands.enter(.switching)
        defer { slot.commands.enter(.running) }
        do {
            if toKVM {
                let state = try interpreter.readState()
                if switchSlice != nil,
                   isHalt(at: linearInstructionPointer(state), paging: state.cr0 & CR0.pg != 0, translate: interpreter.translate) {
                    // Not onto KVM at a HLT (above): one more instruction here first.
                    interpreter.instructionLimit = interpreter.retired &+ 1
                    return true
                }
                try enterKVM(kvmVCPU, of: slot, with: state, leaving: interpreter)
            } else {
                try enterInterpreter(interpreter, of: slot, with: try slot.guestState())
            }
        } catch {
            requestStop(.hostError("vcpu\(index): moving to \(toKVM ? "KVM" : "the interpreter"): \(error)"))
            return false
        }
        // gdb's breakpoints, watchpoints and stepping, set up on the new engine.
        if debug != nil {
            let pc = (try? slot.active.readState()).map(linearInstructionPointer)
            guard applyDebugSettings(index, action: slot.debugAction, breakpoints: slot.debugBreakpoints,
                                     watchpoints: slot.debugWatchpoints, pc: pc) else { return false }
        }
        return startSlice(slot, index: index)
    }

    /// `--switch-every N`: the interpreter stops after N instructions, KVM single-steps N
    /// times (it counts no instructions), then the vCPU moves on.
    func startSlice(_ slot: VCPUSlot, index: Int) -> Bool {
        guard let n = switchSlice else { return true }
        if let interpreter = slot.active as? InterpreterVCPU {
            interpreter.instructionLimit = interpreter.retired &+ n
        } else if let kvmVCPU = slot.active as? KVMVCPU {
            slot.stepsLeft = n
            kvmVCPU.storeRegistersAtExits(true)
            do { try kvmVCPU.setSingleStep(true) } catch {
                requestStop(.hostError("vcpu\(index): \(error)"))
                return false
            }
        }
        return true
    }

    /// `--switch-every N`: whether the instruction at `linear` is HLT, which KVM must not
    /// single-step: PVM then steps over it without halting and reports the halt later,
    /// at another instruction (after the next interrupt's IRET, or after the vCPU came
    /// back from the interpreter: with IF clear, which ended the run). HLT runs on the
    /// interpreter instead.
    private func isHalt(at linear: UInt64, paging: Bool, translate: (UInt64) -> UInt64?) -> Bool {
        guard let physical = paging ? translate(linear) : linear, memory.isRAM(physical, length: 1) else { return false }
        return memory.read(physical, as: UInt8.self) == 0xF4
    }

    /// `--switch-every N`, after an exit: whether it ends the vCPU's slice on its engine
    /// (an instruction limit on the interpreter, the last single-step on KVM), in which
    /// case the move is requested.
    func sliceEnded(_ slot: VCPUSlot, by exit: VCPUExit) -> Bool {
        guard switchSlice != nil, slot.interpreter == nil else { return false }
        switch exit {
        case .instructionLimit where slot.active is InterpreterVCPU:
            break
        case .debugStep:
            guard let kvmVCPU = slot.active as? KVMVCPU else { return false }
            slot.stepsLeft &-= 1
            if slot.stepsLeft > 0 {
                guard let (linear, paging) = kvmVCPU.nextInstruction(),
                      isHalt(at: linear, paging: paging, translate: kvmVCPU.translate) else { return true }
            }
        default:
            return false
        }
        slot.commands.send(.switchEngine(.flip))
        return true
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

    /// The interpreter vCPU that runs `slot` when KVM does not (an interpreter machine's
    /// own; a KVM machine's made on first use).
    func interpreterVCPU(for slot: VCPUSlot, index: Int) -> InterpreterVCPU? {
        if let made = slot.fallbackVCPU { return made }
        guard let fallback else { return nil }
        let interpreter = fallback.makeVCPU(index: index)
        interpreter.interruptController = devices.apic
        interpreter.ownTimer = slot.ownTimer?.due
        // One TSC rate for both engines (the state moves the TSC's value).
        if let kvmVCPU = slot.kvm as? KVMVCPU { interpreter.tscKHz = kvmVCPU.tscKHz }
        slot.fallbackVCPU = interpreter
        return interpreter
    }

    /// Tells the interpreter's decode caches (shared by its vCPUs) which pages KVM wrote
    /// since the last look.
    func noteKVMWrites(_ interpreter: InterpreterVCPU) throws(KVMError) {
        try kvm?.takeWrittenPages(memory) { interpreter.memoryWritten(at: $0, length: 4096) }
    }

    /// The end of every move to KVM (an engine switch, the hybrid engine): KVM forgets what
    /// it translated through the guest's page tables (PVM shadows them and learns of changes
    /// by trapping the guest's own writes; the interpreter's writes bypass that), with the
    /// dirty log the memslots lose on the way given to the decode caches first; then KVM
    /// takes `state` (in the view it runs with: Hybrid.swift) and becomes the vCPU's engine.
    func enterKVM(_ kvmVCPU: any VCPUBackend, of slot: VCPUSlot, with state: CPUState, leaving interpreter: InterpreterVCPU) throws {
        try kvm?.forgetTranslations(memory) { interpreter.memoryWritten(at: $0, length: 4096) }
        try kvmVCPU.writeState(nativeView(of: state, for: slot))
        slot.kvmEntryRIP = state.rip
        slot.switchEngine(to: kvmVCPU)
    }

    /// The end of every move to the interpreter: its decode caches learn which pages KVM
    /// wrote, then it takes `state` and becomes the vCPU's engine.
    func enterInterpreter(_ interpreter: InterpreterVCPU, of slot: VCPUSlot, with state: CPUState) throws {
        try noteKVMWrites(interpreter)
        try interpreter.writeState(state)
        slot.nativeShadow = nil
        slot.switchEngine(to: interpreter)
    }

    /// `--switch-every` with a time: a host timer flips every vCPU once per interval.
    func startSwitchTimer() -> (any DispatchSourceTimer)? {
        guard let seconds = switchPeriod, cannotSwitchReason == nil else { return nil }
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "engine-switch"))
        let interval = DispatchTimeInterval.nanoseconds(Int(seconds * 1e9))
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { [weak self] in self?.flipEngines(signalled: false) }
        timer.resume()
        return timer
    }

    /// Time on each engine and switches, summed over the vCPUs (after they stopped).
    package func engineStatistics() -> EngineStatistics {
        let now = DispatchTime.now().uptimeNanoseconds
        var kvmTime: UInt64 = 0, interpreterTime: UInt64 = 0
        for slot in slots {
            kvmTime &+= slot.kvmNanoseconds
            interpreterTime &+= slot.interpreterNanoseconds
            if slot.engineSince != 0 {
                if slot.active is KVMVCPU { kvmTime &+= now &- slot.engineSince } else { interpreterTime &+= now &- slot.engineSince }
            }
        }
        return EngineStatistics(interpreterSeconds: Double(interpreterTime) / 1e9, kvmSeconds: Double(kvmTime) / 1e9,
                                switches: slots.map(\.switches).reduce(0, +))
    }

    /// One line on stderr, unbuffered (ordered with the guest's output).
    static func note(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

extension VCPUSlot {
    /// Makes `engine` the active one, counting the switch and the time spent on the last.
    func switchEngine(to engine: any VCPUBackend) {
        let now = DispatchTime.now().uptimeNanoseconds
        if engineSince != 0 {
            if active is KVMVCPU { kvmNanoseconds &+= now &- engineSince } else { interpreterNanoseconds &+= now &- engineSince }
        }
        engineSince = now
        active = engine
        switches += 1
    }

    /// Kicks every engine the vCPU has: a kick that reaches the one it just left is
    /// harmless (one early return), one that missed the one it just entered would be lost.
    func kickEngines() {
        let engine = active
        engine.kick()
        if let kvm, kvm !== engine { kvm.kick() }
        if let fallbackVCPU, fallbackVCPU !== engine { fallbackVCPU.kick() }
    }
}
