import X86

extension InterpreterVCPU {
    /// Completes what the state says is half-delivered (`CPUState.events`: KVM exited in
    /// the middle of delivering an exception, an NMI or an interrupt, and the vCPU moved
    /// here, or a snapshot taken then was restored here), before the next instruction, in
    /// the order the hardware re-injects: the exception, then the NMI, then the interrupt.
    /// A software interrupt (INT n), #BP (INT3) and #OF (INTO) are not delivered but run
    /// again: RIP is still at their instruction, and running it delivers them with the
    /// right return address. Returns the exit that ends `run()`, if one does.
    @inline(never)
    func deliverInjectedEvents() -> VCPUExit? {
        let events = s.pointee.events
        s.pointee.events.exception = nil
        s.pointee.events.interrupt = nil
        s.pointee.events.nmiInjected = false
        if let e = events.exception, e.vector != 3 && e.vector != 4 {
            if let exit = deliverException(Fault(vector: e.vector, errorCode: e.errorCode)) { return exit }
        }
        if events.nmiInjected {
            nmiBlocked = true   // until the handler's IRET
            if let exit = deliverExternal(2) { return exit }
        }
        if let i = events.interrupt, !i.soft {
            if let exit = deliverExternal(i.vector) { return exit }
        }
        return nil
    }
}

extension InterpreterVCPU {
    /// Finishes the instruction the last exit left unfinished — an `in` whose value the
    /// shared loop has supplied, an instruction restarted after an MMIO access — without
    /// starting another, so that the state is at an instruction boundary (a snapshot).
    public func completePendingExit() {
        if let p = pendingIn {
            pendingIn = nil
            completeIn(p)
        }
        guard mmioAwaitingValue || !mmioLog.isEmpty else { return }
        let limit = instructionLimit
        instructionLimit = retired &+ 1
        defer { instructionLimit = limit }
        _ = try? run()
    }
}
