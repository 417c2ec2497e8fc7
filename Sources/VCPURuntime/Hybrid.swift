import Dispatch
import Interpreter
import KVM
import X86

/// Where a machine whose host KVM cannot be left to deliver the guest's events (PVM:
/// Documentation/HostLimitations.md) runs its vCPUs, both engines sharing each one.
///
/// KVM never delivers an event there (`KVMVCPU.deliversNoEvents`): while KVM runs a vCPU
/// in protected mode it holds IDTR's limit 0, so every exception or `int n` fails to
/// deliver (a triple fault, `KVM_EXIT_SHUTDOWN`, before anything is pushed), a SYSCALL
/// from user mode (which PVM carries out itself, jumping to LSTAR at CPL 3) faults at its
/// first fetch and fails the same way, and pending interrupts and NMIs make `KVMVCPU.run`
/// return instead of injecting. At each of those exits the vCPU moves to the interpreter
/// with its true state, and the interpreter runs the instruction again (or takes the
/// interrupt) with the architecture's result, through the guest's own handlers.
package enum Placement: Sendable {
    /// `--backend hybrid`: 64-bit user mode (CPL 3, a 64-bit code segment) on KVM, the
    /// rest on the interpreter (Documentation/Hybrid.md). KVM also runs with EFER.SCE
    /// clear. When an instruction (IRETQ, SYSRETQ, ...) puts the vCPU back in 64-bit user
    /// mode, it moves to KVM again.
    case hybrid
    /// `--backend kvm` on a PVM host: KVM runs the vCPU; when it cannot run an instruction
    /// or there is an event to deliver, the interpreter takes the vCPU for a stretch of
    /// `VCPUManager.fallbackStretch` instructions, or until it reaches 64-bit user mode
    /// (Documentation/KVM.md, "The fallback on a PVM host").
    case fallbackStretches
}

extension VCPUManager {
    /// The vCPUs of a hybrid machine start on the interpreter, in their boot state
    /// (`initialState(vcpu)`).
    package func startOnInterpreter(_ initialState: (Int) -> CPUState) throws(VCPUManagerError) {
        guard let machine = fallback else { return }
        for (i, slot) in slots.enumerated() {
            guard let kvm = slot.active as? KVMVCPU else { continue }
            kvm.deliversNoEvents = true
            do { try kvm.setBreakpointExits(true) } catch {
                throw VCPUManagerError("vcpu\(i): the hybrid engine: \(error)")
            }
            let interpreter = machine.makeVCPU(index: i)
            interpreter.tscKHz = kvm.tscKHz
            interpreter.exitOnUserMode64 = true
            interpreter.interruptController = devices.apic
            do {
                // The TSC comes from KVM's vCPU: one clock for both engines.
                var state = initialState(i)
                state.msrs.tsc = try kvm.readState().msrs.tsc
                try interpreter.writeState(state)
            } catch {
                throw VCPUManagerError("vcpu\(i): the hybrid engine's initial state: \(error)")
            }
            slot.kvm = kvm
            slot.fallbackVCPU = interpreter
            slot.active = interpreter
        }
    }

    /// `--backend kvm` on a PVM host (`Placement.fallbackStretches`): the vCPUs start on
    /// KVM, in the state they have (the boot state, or a restored snapshot's), with the
    /// view of it KVM runs with.
    package func startWithFallbackStretches() throws(VCPUManagerError) {
        for (i, slot) in slots.enumerated() {
            guard let kvm = slot.active as? KVMVCPU, interpreterVCPU(for: slot, index: i) != nil else { continue }
            do {
                // The guest's kernel runs on KVM: its RDMSR/WRMSR of LSTAR must reach the guest's.
                if i == 0 { try self.kvm?.routeLSTARToUserSpace() }
                try kvm.setBreakpointExits(true)
                let state = try kvm.readState()
                kvm.deliversNoEvents = true
                try kvm.writeState(state)
            } catch {
                throw VCPUManagerError("vcpu\(i): KVM with the interpreter's fallback stretches: \(error)")
            }
        }
    }

    /// Puts a vCPU of a machine with a `placement` on the engine its state calls for,
    /// before it runs again. False: the machine stopped (a host error).
    func placeVCPU(_ slot: VCPUSlot, index: Int) -> Bool {
        if let interpreter = slot.active as? InterpreterVCPU {
            // Code another vCPU rewrote on KVM meanwhile (the kernel patching its text,
            // then an IPI to every CPU: the event that serializes this one) is decoded
            // again before the interrupt is taken.
            if placement == .fallbackStretches && slots.count > 1
                && hasEventToDeliver(index, interruptsEnabled: interpreter.interruptFlag) {
                do { try noteKVMWrites(interpreter) } catch {
                    requestStop(.hostError("vcpu\(index): reading KVM's dirty log: \(error)"))
                    return false
                }
            }
            // Back from KVM for an instruction that faulted there (or an event): the
            // interpreter runs it first.
            if slot.interpretNext {
                slot.interpretNext = false
                return true
            }
            switch placement {
            case .hybrid:
                guard interpreter.inUserMode64 else { return true }
            case .fallbackStretches:
                // (A vCPU moved to the interpreter on request, not for a stretch, stays.)
                guard slot.interpreter != nil,
                      interpreter.inUserMode64 || interpreter.retired >= interpreter.instructionLimit else { return true }
            case nil:
                return true
            }
            guard moveToKVM(slot, interpreter, index: index) else { return false }
            // Held on the interpreter (an event to take, an interrupt shadow...): a little more.
            if slot.active === interpreter && interpreter.retired >= interpreter.instructionLimit {
                interpreter.instructionLimit = interpreter.retired &+ Self.fallbackStretchRetry
            }
            return true
        }
        // On KVM: an event to deliver, which (KVM running without the guest's IDT) only the interpreter does.
        if (slot.active as? KVMVCPU)?.runsEventless == true && hasEventToDeliver(index, interruptsEnabled: slot.active.interruptFlag) {
            return moveToInterpreter(slot, index: index)
        }
        return true
    }

    /// An NMI, or an interrupt when the vCPU accepts them, is pending for vCPU `index`.
    private func hasEventToDeliver(_ index: Int, interruptsEnabled: Bool) -> Bool {
        devices.apic.hasNMI(vcpu: index) || (interruptsEnabled && devices.apic.hasPendingInterrupt(vcpu: index))
    }

    /// Interpreter → KVM (64-bit user mode under the hybrid engine, the end of a stretch),
    /// unless it must stay: while something needs it instruction by instruction (a trace,
    /// the debugger), while single-step (TF) or debug-register breakpoints are armed (their
    /// #DB is a trap that KVM would take after the instruction, which could then not be run
    /// again), in an interrupt shadow, and while an event is waiting for it to deliver.
    private func moveToKVM(_ slot: VCPUSlot, _ interpreter: InterpreterVCPU, index: Int) -> Bool {
        guard let kvm = slot.kvm, debug == nil, interpreter.recorder == nil, !interpreter.tracing,
              !interpreter.inInterruptShadow else { return true }
        do {
            let state = try interpreter.readState()
            if state.rflags & (1 << 8) != 0 || state.dr7 & 0xFF != 0
                || hasEventToDeliver(index, interruptsEnabled: state.interruptsEnabled) { return true }
            try enterKVM(kvm, of: slot, with: state, leaving: interpreter)
        } catch {
            requestStop(.hostError("vcpu\(index): moving to KVM: \(error)"))
            return false
        }
        if placement == .fallbackStretches {
            slot.interpreter = nil
            interpreter.instructionLimit = .max
            interpreter.exitOnUserMode64 = false
        }
        return true
    }

    /// The state KVM runs the vCPU with for the guest's `state`: under the hybrid engine
    /// with EFER.SCE clear, the guest's EFER kept aside in `slot.nativeShadow` (KVM itself
    /// keeps the guest's IDTR and LSTAR aside: `KVMVCPU.deliversNoEvents`).
    func nativeView(of state: CPUState, for slot: VCPUSlot) -> CPUState {
        guard placement == .hybrid else {
            slot.nativeShadow = nil
            return state
        }
        var native = state
        slot.nativeShadow = NativeShadow(efer: state.efer)
        native.efer &= ~EFER.sce
        return native
    }

    /// What stopped KVM when a vCPU moves to the interpreter.
    enum KVMStop {
        /// An event to deliver (or the vCPU is asked to move): nothing to run again.
        case event
        /// An exception KVM did not deliver (the eventless IDT's triple fault, a breakpoint
        /// exit): the instruction runs again on the interpreter.
        case exception
        /// An instruction KVM cannot run (an emulation failure).
        case unrunnableInstruction
    }

    /// KVM → interpreter: the guest's own state back, and the decode caches told which
    /// pages KVM wrote meanwhile (its dirty log). After an `exception` or an
    /// `unrunnableInstruction` the interpreter runs that instruction before the vCPU may go
    /// back. With `fallbackStretches`, the interpreter keeps it for a stretch.
    func moveToInterpreter(_ slot: VCPUSlot, index: Int, after stop: KVMStop = .event) -> Bool {
        guard slot.active is KVMVCPU, let interpreter = slot.fallbackVCPU else { return true }
        var runsInstruction = stop != .event
        do {
            // After an `in` or MMIO read KVM has not finished (an event came while the exit
            // was answered): finished first. Left to KVM's next entry, that ending would be
            // applied to whatever state the vCPU brings back from the interpreter — RIP put
            // past the old `in`, RAX overwritten (Linux on 4 vCPUs on `--backend kvm`
            // panicked or corrupted its lists; Guests/io-interrupted.asm looped for ever).
            if let kvm = slot.active as? KVMVCPU { try kvm.completePendingExit() }
            var (state, syscall) = slot.guestView(of: try slot.active.readState())
            if !syscall, let kvm = slot.active as? KVMVCPU {
                // A kick can end KVM_RUN between PVM raising an exception and failing to
                // deliver it (`stop == .event`: it shows as pending in the vCPU events): that
                // exception is not delivered either, but its instruction run again (under
                // load an `int 0x80` came back as the #UD PVM raises for it, and the guest
                // took a #UD).
                let inFlight = kvm.exceptionInFlight(afterShutdown: stop == .exception)
                if inFlight != nil { runsInstruction = true }
                if inFlight == nil && stop == .event, let entry = slot.kvmEntryRIP {
                    try interpreter.writeState(state)
                    if lostBreakpoint(entry: entry, rip: state.rip, interpreter) {
                        // (Seen under load: 3 runs of usermode64 in 150 lost their int3's #BP.)
                        runsInstruction = true
                        state.rip = entry
                        state.rflags &= ~Self.resumeFlag
                    }
                }
                if runsInstruction {
                    // A fault comes back with RIP at the instruction; a breakpoint (`int3`,
                    // `int 3`, `int1`: traps) with RIP past it: back to the instruction, which
                    // the interpreter runs again.
                    if let vector = inFlight, vector == 1 || vector == 3 {
                        try interpreter.writeState(state)
                        state.rip = try trapInstruction(before: state.rip, vector: vector, interpreter)
                    }
                    state.events.exception = nil
                    // (PVM sets RF in RFLAGS as in a fault's frame; the vCPU's RF was clear.)
                    if stop == .exception || inFlight != nil { state.rflags &= ~Self.resumeFlag }
                }
            }
            slot.kvmEntryRIP = nil
            try enterInterpreter(interpreter, of: slot, with: state)
        } catch {
            requestStop(.hostError("vcpu\(index): moving to the interpreter: \(error)"))
            return false
        }
        slot.interpretNext = runsInstruction
        if placement == .fallbackStretches {
            // The interpreter runs at least once, even for an event it finds gone (KVM left
            // for the local APIC timer's deadline before it fired): else a timer due again
            // by the time the vCPU is back could keep it going back and forth unrun.
            slot.interpretNext = true
            slot.interpreter = interpreter
            slot.handoffs += 1
            interpreter.instructionLimit = interpreter.retired &+ Self.fallbackStretch
            interpreter.exitOnUserMode64 = true
        }
        return true
    }

    /// Whether KVM, which took the vCPU over at `entry`, ran the breakpoint instruction there
    /// (`int3`, `int 3`, `int1`) and nothing else, and lost its exception: a kick that ends
    /// `KVM_RUN` just as PVM raises it can leave RIP past the instruction with no exception
    /// pending in the vCPU events. The first instruction KVM ran was the one at `entry`, so
    /// RIP just past a breakpoint instruction there means it ran and trapped, undelivered.
    private func lostBreakpoint(entry: UInt64, rip: UInt64, _ interpreter: InterpreterVCPU) -> Bool {
        guard interpreter.inUserMode64 else { return false }
        return [UInt8(3), 1].contains { (try? trapInstruction(before: rip, vector: $0, interpreter)) == entry }
    }

    /// The address of the breakpoint instruction that raised `vector` (#DB: `int1`, #BP:
    /// `int3` or `int 3`) and ends just before `rip`.
    private func trapInstruction(before rip: UInt64, vector: UInt8, _ interpreter: InterpreterVCPU) throws(BackendError) -> UInt64 {
        func byte(_ linear: UInt64) -> UInt8? {
            interpreter.translate(linear: linear).map { memory.read($0, as: UInt8.self) }
        }
        if vector == 1, byte(rip &- 1) == 0xF1 { return rip &- 1 }
        if vector == 3, byte(rip &- 1) == 0xCC { return rip &- 1 }
        if vector == 3, byte(rip &- 2) == 0xCD, byte(rip &- 1) == 3 { return rip &- 2 }
        throw BackendError("KVM stopped in user mode at 0x\(String(rip, radix: 16)) for vector \(vector), after no breakpoint instruction")
    }
}

extension VCPUManager {
    /// RFLAGS.RF.
    static let resumeFlag: UInt64 = 1 << 16
    /// `fallbackStretches`: the instructions the interpreter runs after taking a vCPU from
    /// KVM (unless it reaches 64-bit user mode first), and the few more it runs when the
    /// vCPU cannot go back at the end of one (an event to take, an interrupt shadow).
    static let fallbackStretch: UInt64 = 100_000
    static let fallbackStretchRetry: UInt64 = 1_000
}

/// The hybrid engine, while KVM runs a vCPU: the guest's EFER (KVM runs with EFER.SCE clear).
struct NativeShadow {
    var efer: UInt64
}

extension VCPUSlot {
    /// The vCPU's architectural state, whichever engine holds it (on KVM under a placement,
    /// with the guest's own values in place of those KVM runs with).
    func guestState() throws(BackendError) -> CPUState {
        try guestView(of: active.readState()).state
    }

    /// `state` read from the active engine, as the guest sees it; `syscall`: KVM stopped
    /// after a SYSCALL of user mode, and the state is put back before the instruction.
    func guestView(of state: CPUState) -> (state: CPUState, syscall: Bool) {
        guard let kvm = active as? KVMVCPU, kvm.deliversNoEvents else { return (state, false) }
        var state = state
        if let shadow = nativeShadow { state.efer = (state.efer & ~EFER.sce) | (shadow.efer & EFER.sce) }
        guard state.rip == KVMVCPU.syscallSentinel else { return (state, false) }
        if state.cs.selector & 3 != 3 {
            // A SYSCALL at CPL 0 that KVM's emulator ran (CS and SS from STAR, RCX and R11
            // saved, RFLAGS masked) to the sentinel, where the fetch failed: its target
            // is the guest's LSTAR, where the interpreter goes on.
            state.rip = state.msrs.lstar
            return (state, false)
        }
        // PVM carries a SYSCALL of user mode out itself whatever EFER.SCE says, to LSTAR
        // (the sentinel) at CPL 3, where the fetch fails.
        // Back to the instruction (RCX and R11 hold its address and RFLAGS; the
        // interpreter sets them again), which the interpreter runs.
        state.rip = state[.rcx] &- 2
        state.rflags = state[.r11]
        return (state, true)
    }
}
