import Dispatch
import Interpreter
import KVM
import Loaders
import X86

/// The hybrid engine (`--backend hybrid`; Documentation/Hybrid.md): each vCPU runs 64-bit
/// user mode (CPL 3, a 64-bit code segment) on KVM and everything else on the interpreter,
/// for hosts whose KVM runs only that natively (PVM, see HostLimitations.md).
///
/// KVM never delivers an event to the guest. While KVM runs a vCPU it holds the guest's
/// state with two changes: IDTR's limit is 0 and EFER.SCE is clear. Every exception or
/// `int n` of user mode then fails to deliver (a triple fault, `KVM_EXIT_SHUTDOWN`,
/// before anything is pushed) and SYSCALL raises #UD, which fails the same way; pending
/// interrupts and NMIs make `KVMVCPU.run` return instead of injecting. At each of those
/// exits the vCPU moves to the interpreter with its true IDTR and EFER, and the
/// interpreter runs the instruction again (or takes the interrupt) with the architecture's
/// result, through the guest's own handlers. When an instruction (IRETQ, SYSRETQ, ...)
/// puts it back in 64-bit user mode, it moves to KVM again.
extension Machine {
    /// The vCPUs of a hybrid machine start on the interpreter, in the boot state.
    static func startOnInterpreter(_ slots: [VCPUSlot], machine: InterpreterMachine, plan: BootPlan, cpus: Int,
                                   interrupts: any InterruptController) throws(MachineError) {
        for (i, slot) in slots.enumerated() {
            guard let kvm = slot.active as? KVMVCPU else { continue }
            kvm.leavesForEvents = true
            do { try kvm.setBreakpointExits(true) } catch {
                throw MachineError(.hostError, "vcpu\(i): the hybrid engine: \(error)")
            }
            let interpreter = machine.makeVCPU(index: i)
            interpreter.tscKHz = kvm.tscKHz
            interpreter.exitOnUserMode64 = true
            interpreter.interruptController = interrupts
            do {
                // The TSC comes from KVM's vCPU: one clock for both engines.
                var state = plan.initialState(cpu: i, of: cpus)
                state.msrs.tsc = try kvm.readState().msrs.tsc
                try interpreter.writeState(state)
            } catch {
                throw MachineError(.hostError, "vcpu\(i): the hybrid engine's initial state: \(error)")
            }
            slot.kvm = kvm
            slot.fallbackVCPU = interpreter
            slot.active = interpreter
        }
    }

    /// Puts a hybrid vCPU on the engine its state calls for, before it runs again.
    /// False: the machine stopped (a host error).
    func placeHybrid(_ slot: VCPUSlot, index: Int) -> Bool {
        if let interpreter = slot.active as? InterpreterVCPU {
            // Back from KVM for an instruction that faulted there: the interpreter runs it.
            if slot.interpretNext {
                slot.interpretNext = false
                return true
            }
            guard interpreter.inUserMode64 else { return true }
            return moveToKVM(slot, interpreter, index: index)
        }
        // On KVM: an event to deliver, which only the interpreter does.
        if hasEventToDeliver(index, interruptsEnabled: slot.active.interruptFlag) {
            return moveToInterpreter(slot, index: index)
        }
        return true
    }

    /// An NMI, or an interrupt when the vCPU accepts them, is pending for vCPU `index`.
    private func hasEventToDeliver(_ index: Int, interruptsEnabled: Bool) -> Bool {
        devices.apic.hasNMI(vcpu: index) || (interruptsEnabled && devices.apic.hasPendingInterrupt(vcpu: index))
    }

    /// Interpreter → KVM, for a vCPU in 64-bit user mode, unless it must stay: while
    /// something needs it instruction by instruction (a trace, the debugger), while
    /// single-step (TF) or debug-register breakpoints are armed (their #DB is a trap that
    /// KVM would take after the instruction, which could then not be run again), in an
    /// interrupt shadow, and while an event is waiting for it to deliver.
    private func moveToKVM(_ slot: VCPUSlot, _ interpreter: InterpreterVCPU, index: Int) -> Bool {
        guard let kvm = slot.kvm, debug == nil, interpreter.recorder == nil, !interpreter.tracing,
              !interpreter.inInterruptShadow else { return true }
        do {
            var state = try interpreter.readState()
            if state.rflags & (1 << 8) != 0 || state.dr7 & 0xFF != 0
                || hasEventToDeliver(index, interruptsEnabled: state.interruptsEnabled) { return true }
            slot.nativeShadow = (state.idtr, state.efer, state.msrs.lstar)
            state.idtr.limit = 0
            state.efer &= ~EFER.sce
            state.msrs.lstar = Self.syscallSentinel
            try enterKVM(kvm, of: slot, with: state, leaving: interpreter)
        } catch {
            requestStop(.hostError("vcpu\(index): moving to KVM: \(error)"))
            return false
        }
        return true
    }

    /// KVM → interpreter: the guest's IDTR and EFER.SCE back, and the decode caches told
    /// which pages KVM wrote meanwhile (its dirty log). `forInstruction`: KVM stopped at
    /// an instruction it did not run (an exception, SYSCALL), which the interpreter runs
    /// before the vCPU may go back.
    func moveToInterpreter(_ slot: VCPUSlot, index: Int, forInstruction: Bool = false) -> Bool {
        guard slot.active is KVMVCPU, let interpreter = slot.fallbackVCPU else { return true }
        do {
            var (state, syscall) = slot.guestView(of: try slot.active.readState())
            if !syscall, let kvm = slot.active as? KVMVCPU {
                // A fault comes back with RIP at the instruction; a breakpoint (`int3`,
                // `int 3`, `int1`: traps) with RIP past it: back to the instruction, which
                // the interpreter runs again.
                if let vector = kvm.exceptionInFlight(afterShutdown: forInstruction), vector == 1 || vector == 3 {
                    try interpreter.writeState(state)
                    state.rip = try trapInstruction(before: state.rip, vector: vector, interpreter)
                }
                // (PVM sets RF in RFLAGS as in a fault's frame; the vCPU's RF was clear.)
                if forInstruction { state.rflags &= ~Self.resumeFlag }
            }
            try enterInterpreter(interpreter, of: slot, with: state)
        } catch {
            requestStop(.hostError("vcpu\(index): moving to the interpreter: \(error)"))
            return false
        }
        slot.nativeShadow = nil
        slot.interpretNext = forInstruction
        return true
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

extension Machine {
    /// LSTAR while KVM runs user mode: not canonical, so a SYSCALL that PVM carries out
    /// (it does, even with EFER.SCE clear) faults at its first fetch and ends the run.
    package static let syscallSentinel: UInt64 = 0xFFFF_FFFF_FFFF_F000
    /// RFLAGS.RF.
    static let resumeFlag: UInt64 = 1 << 16
}

extension VCPUSlot {
    /// The vCPU's architectural state, whichever engine holds it (on KVM under the hybrid
    /// engine, with the guest's own IDTR and EFER.SCE in place of the ones KVM runs with).
    func guestState() throws(BackendError) -> CPUState {
        try guestView(of: active.readState()).state
    }

    /// `state` read from the active engine, as the guest sees it; `syscall`: KVM stopped
    /// at the sentinel after a SYSCALL, and the state is put back before the instruction.
    func guestView(of state: CPUState) -> (state: CPUState, syscall: Bool) {
        guard let (idtr, efer, lstar) = nativeShadow, active is KVMVCPU else { return (state, false) }
        var state = state
        state.idtr = idtr
        state.efer = (state.efer & ~EFER.sce) | (efer & EFER.sce)
        state.msrs.lstar = lstar
        guard state.rip == Machine.syscallSentinel else { return (state, false) }
        // PVM ran a SYSCALL (whatever EFER.SCE says) to the sentinel, where the fetch
        // failed: back to the instruction (RCX and R11 hold its address and RFLAGS; the
        // interpreter sets them again), which the interpreter runs.
        state.rip = state[.rcx] &- 2
        state.rflags = state[.r11]
        return (state, true)
    }
}
