#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GDBStub
import Tracing
import Interpreter
import KVM
import RunLoop
import Synchronization
import X86

// The debugger's control of the vCPUs, on the machine's side: parking and resuming them
// on their own threads, and what the gdb stub asks of the machine (`DebugTarget`, with
// `DebugControl`, in the GDBStub module).

extension VCPUManager: DebugTarget {
    package var debugControl: DebugControl { debug! }
    package var vcpuCount: Int { slots.count }
    package func killedByDebugger() { requestStop(.debuggerKilled) }

    /// Stops every vCPU for the debugger: each parks at its next instruction boundary.
    package func pauseForDebugger() {
        guard debug != nil else { return }
        for i in slots.indices { send(.pause, to: i) }
    }

    /// On vCPU `index`'s thread: parks it for the debugger (reporting `cause`, if it is the
    /// first to stop) until gdb resumes it. False when the machine stopped meanwhile.
    func parkForDebugger(_ index: Int, cause: DebugStopCause?) -> Bool {
        guard let debug else { return true }
        let slot = slots[index]
        slot.commands.enter(.paused)
        defer { slot.commands.enter(.running) }
        // Parked right after an `in` or MMIO exit on KVM (a pause request came meanwhile):
        // gdb sees and edits the state after that instruction, not half of it.
        if slot.active is KVMVCPU { completePendingExit(slot) }
        let before = try? slot.active.readState()
        submitTrace(index)
        let first = debug.state.withLock { s -> Bool in
            s.parked[index] = true
            s.states[index] = before
            s.dirty[index] = false
            s.actions[index] = .stay
            guard let cause, s.stop == nil else { return false }
            s.stop = (index, cause)
            return true
        }
        if first { pauseForDebugger() }
        while debug.resumed[index].wait(timeout: .now() + .milliseconds(50)) == .timedOut {
            // gdb's `monitor engine`: the move happens here, on the vCPU's thread.
            if slot.commands.switchRequest != .none { _ = serviceSwitchRequest(slot, index: index) }
            if stopRequested {
                // The machine ends here: what gdb changed is what the final report shows.
                let changed = debug.state.withLock { s -> CPUState? in
                    s.parked[index] = false
                    return s.dirty[index] ? s.states[index] : nil
                }
                if let changed { try? slot.active.writeState(changed) }
                return false
            }
        }
        let (changed, action, settings) = debug.state.withLock { s in
            defer { s.states[index] = nil }
            return (s.dirty[index] ? s.states[index] : nil, s.actions[index], (s.breakpoints, s.watchpoints))
        }
        if let changed {
            do { try slot.active.writeState(changed) } catch {
                requestStop(.hostError("vcpu\(index): writing the debugger's registers: \(error)"))
                return false
            }
        }
        // gdb may have started or stopped a trace (a vCPU that has not started yet
        // follows it when it does).
        if slot.traceGeneration >= 0 { syncTrace(index) }
        return applyDebugSettings(index, action: action, breakpoints: settings.0, watchpoints: settings.1,
                                  pc: (changed ?? before).map(linearInstructionPointer))
    }

    /// Sets up vCPU `index`'s backend for what gdb asked (on the vCPU's thread). The
    /// interpreter stops at breakpoints itself and logs memory accesses for watchpoints.
    /// KVM gets the breakpoints in its debug registers (`KVM_GUESTDBG_USE_HW_BP`); with
    /// watchpoints, or more breakpoints than the four registers hold, the vCPU runs on the
    /// interpreter until they are removed (PVM's instruction emulator ignores data
    /// breakpoints: Documentation/Debugging.md).
    func applyDebugSettings(_ index: Int, action: DebugAction, breakpoints: Set<UInt64>, watchpoints: [Watchpoint], pc: UInt64?) -> Bool {
        let slot = slots[index]
        slot.debugAction = action
        slot.debugBreakpoints = breakpoints
        slot.debugWatchpoints = watchpoints
        let atBreakpoint = pc.map { breakpoints.contains($0) } ?? false
        if slot.active is KVMVCPU || slot.debugOnInterpreter {
            let needsInterpreter = !watchpoints.isEmpty || breakpoints.count > KVMVCPU.hardwareBreakpointSlots
            if needsInterpreter && slot.interpreter == nil {
                guard handOff(slot, index: index, forDebugger: true) else { return false }
                slot.interpreter?.instructionLimit = .max
                slot.debugOnInterpreter = true
            } else if !needsInterpreter && slot.debugOnInterpreter {
                slot.debugOnInterpreter = false
                guard handBack(slot, index: index) else { return false }
            }
        }
        if let interpreter = slot.active as? InterpreterVCPU {
            interpreter.singleStep = slot.traceStepping || action == .step || !watchpoints.isEmpty
            interpreter.logAccesses = interpreter.recorder != nil || slot.traceStepping || !watchpoints.isEmpty
            interpreter.breakpoints = breakpoints
            interpreter.breakpointToSkip = atBreakpoint ? pc : nil
        } else if let kvm = slot.active as? KVMVCPU {
            // Leaving a breakpoint: one step without the breakpoints (the debug registers
            // would stop the vCPU again before the instruction), then they go back in.
            slot.steppingOverBreakpoint = atBreakpoint
            do {
                try kvm.setGuestDebug(singleStep: slot.traceStepping || action == .step || atBreakpoint,
                                      hardwareBreakpoints: atBreakpoint ? [] : Array(breakpoints))
            } catch {
                requestStop(.hostError("vcpu\(index): \(error)"))
                return false
            }
        }
        return true
    }

    /// After a `.debugStep` exit of vCPU `index` (on its thread): whether it stops for the
    /// debugger, and why. Checked before the trace takes the interpreter's access log.
    func debugStopCause(_ index: Int) -> DebugStopCause? {
        let slot = slots[index]
        if !slot.debugWatchpoints.isEmpty, let interpreter = slot.active as? InterpreterVCPU {
            var hit: Watchpoint? = nil
            for access in interpreter.loggedAccesses where hit == nil {
                hit = slot.debugWatchpoints.first { $0.isHit(by: access) }
            }
            if !slot.traceStepping { _ = interpreter.drainTrace() }
            if let hit { return .watchpoint(hit.kind, hit.address) }
        }
        if slot.debugAction == .step { return .step }
        if slot.steppingOverBreakpoint, let kvm = slot.active as? KVMVCPU {
            slot.steppingOverBreakpoint = false
            do { try kvm.setGuestDebug(singleStep: slot.traceStepping, hardwareBreakpoints: Array(slot.debugBreakpoints)) } catch {
                requestStop(.hostError("vcpu\(index): \(error)"))
            }
            return nil
        }
        if !slot.debugBreakpoints.isEmpty, let state = try? slot.active.readState(),
           slot.debugBreakpoints.contains(linearInstructionPointer(state)) {
            return .breakpoint
        }
        return nil
    }

    /// For gdb's `m`/`M`: the physical address of `linear` as vCPU `index` sees it (nil: not
    /// mapped). Called while the vCPU is parked.
    package func debugTranslate(_ index: Int, linear: UInt64, state: CPUState) -> UInt64? {
        guard state.cr0 & CR0.pg != 0 && state.cr0 & CR0.pe != 0 else { return linear }
        return slots[index].active.translate(linear: linear)
    }

    /// gdb wrote guest memory: the interpreters' decode caches forget what was there.
    package func debugMemoryWritten(at physical: UInt64, length: Int) {
        for case let interpreter as InterpreterVCPU in backends { interpreter.memoryWritten(at: physical, length: length) }
        for slot in slots { slot.fallbackVCPU?.memoryWritten(at: physical, length: length) }
    }

    /// What `monitor stats` says: the backend, how long the run has gone on, and per vCPU
    /// where it is, the engine running it now, what it ran and KVM's handoffs.
    package func debugStatistics() -> String {
        let seconds = Double(DispatchTime.now().uptimeNanoseconds &- runStarted.load(ordering: .relaxed)) / 1e9
        let counts = backends.map(\.instructionsRetired)
        var first = "backend \(backendName), \(backends.count) vCPU\(backends.count == 1 ? "" : "s"), running for \(String(format3: seconds)) s"
        if counts.allSatisfy({ $0 != nil }) {
            let total = counts.reduce(0) { $0 + $1! }
            first += ", \(total) instructions (\(String(format3: Double(total) / max(seconds, 1e-9) / 1e6)) M/s over the run, stops included)"
        }
        if let sink = trace.sink { first += ", tracing to \(sink.options.path) (\(sink.options.format.rawValue))" }
        var lines = [first]
        let states = debug?.state.withLock { $0.states } ?? []
        for (i, slot) in slots.enumerated() {
            var line = "vcpu\(i):"
            if i < states.count, let s = states[i] {
                line += " \(s.mode.rawValue) at \(String(s.cs.selector, radix: 16)):0x\(String(s.rip, radix: 16)),"
            }
            line += " engine \(slot.active is InterpreterVCPU ? "interp" : "kvm")"
            if let n = counts[i] { line += ", \(n) instructions" }
            if backendName == "kvm" {
                line += ", \(slot.handoffs) handoff\(slot.handoffs == 1 ? "" : "s") to the interpreter"
                if let n = slot.fallbackVCPU?.retired { line += " (\(n) instructions)" }
                if slot.debugOnInterpreter { line += ", on the interpreter for the debugger's watchpoints" }
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    /// `monitor engine [kvm|interp [VCPU]]` while the machine is stopped: moves every vCPU
    /// (or one) to that engine — each parked vCPU moves on its own thread within its wait's
    /// 50 ms period — and says where each runs.
    package func debugEngine(_ words: [String]) -> String {
        func whereEach(_ vcpus: [Int]) -> String {
            vcpus.map { i in
                slots[i].commands.switchRequest != .none
                    ? "vcpu\(i): moves at its next instruction boundary, when it runs"
                    : "vcpu\(i): \(engine(of: i))\(slots[i].debugOnInterpreter ? " (on the interpreter for the debugger's watchpoints)" : "")"
            }.joined(separator: "\n")
        }
        guard let name = words.first else { return whereEach(Array(slots.indices)) }
        guard let target = Engine(rawValue: name) else { return "engine: 'kvm' or 'interp', not '\(name)'" }
        var vcpus = Array(slots.indices)
        if words.count == 2 {
            guard let i = Int(words[1]), slots.indices.contains(i) else { return "engine: there is no vCPU '\(words[1])'" }
            vcpus = [i]
        }
        for i in vcpus {
            do { try self.switch(vcpu: i, to: target) } catch { return "engine: \(error.description)" }
        }
        let deadline = DispatchTime.now() + .seconds(1)
        while vcpus.contains(where: { slots[$0].commands.switchRequest != .none }) && DispatchTime.now() < deadline {
            usleep(5_000)
        }
        return whereEach(vcpus)
    }

    /// What `monitor info devices` says: every port and MMIO claim, then the state of the
    /// interrupt controllers, timers and the UART.
    package func debugDeviceList() -> String {
        var lines = ["I/O ports:"]
        for c in devices.ports.claims {
            let a = String(c.ports.lowerBound, radix: 16), b = String(c.ports.upperBound, radix: 16)
            lines.append("  0x\(a)\(c.ports.count > 1 ? "-0x\(b)" : ""): \(c.device)")
        }
        lines.append("MMIO:")
        for c in devices.mmio.claims {
            lines.append("  0x\(String(c.range.lowerBound, radix: 16))-0x\(String(c.range.upperBound, radix: 16)): \(c.device)")
        }
        lines.append("  0xfee00000-0xfee00fff: LocalAPIC (one per vCPU, \(backends.count))")
        lines.append("RAM: \(memory.ramSize) bytes")
        lines.append("State:")
        let now = devices.clock.now()
        let state = devices.pic.describeState() + devices.pit.describeState() + devices.rtc.describeState()
            + devices.apic.lapics.flatMap { $0.describeState(now: now) } + devices.apic.ioapic.describeState() + devices.serial.describeState()
        lines += state.map { "  " + $0 }
        return lines.joined(separator: "\n")
    }

    /// `monitor trace on FILE [text|jsonl|bin]` and `monitor trace off`, while every vCPU
    /// is stopped: each vCPU has handed its records to the trace when it stopped, and
    /// follows the new one when it resumes (`syncTrace`).
    package func debugTrace(_ words: [String]) -> String {
        guard let debug, debug.allParked else { return "trace: the machine is not stopped" }
        switch words.first {
        case "on" where (2...3).contains(words.count):
            if let s = trace.sink { return "trace: already tracing to \(s.options.path); 'monitor trace off' first" }
            var options = TraceOptions(path: words[1])
            if words.count == 3 {
                guard let format = TraceFormat(rawValue: words[2]) else { return "trace: the format is text, jsonl or bin, not '\(words[2])'" }
                options.format = format
            }
            let sink: TraceSink
            do {
                sink = try TraceSink(options) { [weak self] line in self?.requestStop(.outputError(line)) }
            } catch { return "trace: \(error)" }
            _ = trace.replace(with: sink)
            return "tracing to \(options.path) (\(options.format.rawValue)) from the next instruction"
        case "off" where words.count == 1:
            guard let sink = trace.sink else { return "trace: no trace is being written" }
            if sink.options.last != nil { return "trace: the flight recorder (--trace-last) stays on to the end of the run" }
            _ = trace.replace(with: nil)
            sink.finish(status: 0)
            return "trace off: \(sink.recordsWritten) records written to \(sink.options.path)"
        default:
            return "trace: 'monitor trace on FILE [text|jsonl|bin]' or 'monitor trace off'"
        }
    }
}
