import KVM
import Machine
import X86

// `tandem diff` where this host's KVM runs the guest natively: 64-bit user mode on PVM
// (Documentation/HostLimitations.md). There KVM's single step does not stop after one
// instruction but at the next exit (an exception, a system call, a kick), so the
// interpreter runs on until it holds the state KVM stopped in, and the two are compared
// there.

extension CPUState {
    /// CPL 3 in a 64-bit code segment: what PVM's KVM runs natively.
    var inUserMode64: Bool { mode == .long64 && cs.selector & 3 == 3 }

    /// This state with LSTAR replaced (nil: as it is).
    func with(lstar: UInt64?) -> CPUState {
        guard let lstar else { return self }
        var state = self
        state.msrs.lstar = lstar
        return state
    }

    /// The same RIP, code segment selector and general registers.
    func sameRegisters(_ other: CPUState) -> Bool {
        guard rip == other.rip, cs.selector == other.cs.selector else { return false }
        for r in 0..<16 where gpr[r] != other.gpr[r] { return false }
        return true
    }
}

/// How long KVM may run natively in one step: PVM runs 64-bit user mode on the CPU, where
/// a single step goes on to the next exit, and a loop that makes none (a hash, a wait for
/// a timer tick with `--clock instructions`) would never return. At the end of the slice
/// the vCPU's own timer kicks it out of `KVM_RUN`, and the step ends where it got to.
struct NativeSlice {
    static let nanoseconds: UInt64 = 1_000_000
    /// Entries whose slice ended with KVM where it started (the kick can land before it
    /// runs anything: under load the thread may wait longer than the slice to run) that are
    /// tried again, each with a slice twice as long (up to `longestSlice`), before the step
    /// is taken as it is. Three tries of 1 ms were too few under load in the test suite.
    static let retries = 12
    static let longestSlice: UInt64 = 256_000_000

    let deadline: TimerDeadline?
    let start: CPUState
    private var retried = 0

    /// Arms the slice for a step from `before` on PVM when it starts in 64-bit user mode
    /// or is an instruction that can return there; disarms it otherwise.
    init(run: DifferentialRun, before: CPUState, mnemonic: String) {
        start = before
        let mayRunNatively = run.hostIsEmulated && before.efer & EFER.lma != 0
            && (before.inUserMode64 || ["iret", "sysret", "sysexit", "retf", "lret"].contains { mnemonic.hasPrefix($0) })
        deadline = mayRunNatively ? run.nativeSliceEnd : nil
        run.nativeSliceEnd.machineNanoseconds.store(mayRunNatively ? TimerDeadline.hostNow() &+ Self.nanoseconds : .max, ordering: .relaxed)
    }

    /// After `KVM_RUN` returned EINTR with KVM in state `now`: whether the slice is over
    /// (the step ends there).
    /// A slice in which KVM got nowhere is given again, a few times.
    mutating func ended(at now: CPUState?) -> Bool {
        guard let deadline, deadline.isDue else { return false }
        if retried < Self.retries, let now, now.sameRegisters(start), now.rflags == start.rflags {
            retried += 1
            let slice = min(Self.nanoseconds << retried, Self.longestSlice)
            deadline.machineNanoseconds.store(TimerDeadline.hostNow() &+ slice, ordering: .relaxed)
            return false
        }
        deadline.machineNanoseconds.store(.max, ordering: .relaxed)
        return true
    }

    /// Ends the slice without ending the step (KVM is delivering an exception: its
    /// handler, at CPL 0, single-steps).
    func disarm() {
        deadline?.machineNanoseconds.store(.max, ordering: .relaxed)
    }
}

/// The interpreter running on, within one step, to the state where KVM's step ended.
struct UserModeRunOn {
    /// Instructions run on beyond what the step itself accounts for.
    var instructions: UInt64 = 0
    private struct Touched: Hashable {
        var write: Bool
        var linearPage: UInt64
        var firstPage: UInt64
        var lastPage: UInt64
    }
    private var touched = Set<Touched>()
    /// The last time the interpreter was at the RIP where KVM's step ended without
    /// holding its state: how far it had run on, and its state then (a loop passes there
    /// millions of times: the report is written once, from the last).
    private var lastVisit: (instructions: UInt64, state: CPUState)? = nil

    mutating func visited(_ i: CPUState) {
        lastVisit = (instructions, i)
    }

    /// For the report: what differed from KVM's state `k` the last time the interpreter
    /// was at its RIP.
    func lastVisitText(kvm k: CPUState) -> String {
        guard let lastVisit else { return " (it never came to that RIP)" }
        let differing = DifferentialRun.differences(k, lastVisit.state, undefinedFlags: 0).map { "\($0.0) \($0.2) against \($0.1)" }
        return " (the last time it came to that RIP, \(lastVisit.instructions) instructions on, these differed, the interpreter's against KVM's: \(differing.joined(separator: ", ")))"
    }

    /// Adds what one instruction accessed to the step's `accesses`. While running on (a
    /// loop may run millions of times) one access per page is enough: the memory
    /// comparison and the page-table walks look at pages. An instruction that delivered an
    /// event keeps everything (its frame is checked for the single-step trap flag).
    mutating func keep(_ drained: (accesses: [MemoryAccess], events: [InterruptEvent]), in accesses: inout [MemoryAccess]) {
        guard instructions > 0, drained.events.isEmpty else {
            accesses += drained.accesses
            return
        }
        for a in drained.accesses {
            let key = Touched(write: a.write, linearPage: a.linear >> 12, firstPage: a.physical >> 12,
                              lastPage: (a.physical &+ UInt64(max(a.size, 1)) &- 1) >> 12)
            if touched.insert(key).inserted { accesses.append(a) }
        }
    }
}

extension DifferentialRun {
    /// How far the interpreter may run on to reach KVM's state before the comparison
    /// stops early (the CPU runs ~20 G instructions/s natively here, but only until the
    /// next exit: a timer tick, at the latest, in practice).
    static let runOnBound: UInt64 = 50_000_000

    /// Whether the interpreter (`i`) has reached the state KVM's step ended in (`k`): the
    /// same RIP, the same general registers and code segment, and the same RFLAGS but for
    /// what the instruction it ran last (from `previous`) leaves undefined. The RIP alone
    /// would stop in the first round of a loop KVM ran many times. Returns that last
    /// instruction's mnemonic (the comparison masks its undefined flags), nil if not there.
    func reachedKVMState(_ i: CPUState, _ k: CPUState, previous: CPUState) -> String? {
        guard i.sameRegisters(k) else { return nil }
        let text = instruction(at: previous).1
        let mnemonic = String(text.prefix { $0 != " " })
        let compared = ~(UndefinedFlags.mask(for: mnemonic) | 1 << 16)
        return (i.rflags ^ k.rflags) & compared == 0 ? mnemonic : nil
    }

    static let syscallInUserMode = "this host's KVM carries out SYSCALL in 64-bit user mode without entering CPL 0 (it would run the kernel's entry at CPL 3): KVM runs with a sentinel LSTAR, and the interpreter executes the SYSCALL for both"

    /// The state KVM gets: on PVM, with the sentinel LSTAR (`Machine.syscallSentinel`),
    /// whose fetch fails, so that a SYSCALL PVM carries out in user mode is seen.
    func forKVM(_ state: CPUState) -> CPUState {
        state.with(lstar: hostIsEmulated ? Machine.syscallSentinel : nil)
    }

    /// KVM's state at the SYSCALL it ran in user mode, when its step ended at the sentinel
    /// (or in the page-fault handler for its fetch, with CR2 = the sentinel): RIP back on
    /// the instruction (RCX holds the address after it). Only RIP and the general registers
    /// other than RCX, R11 (the SYSCALL's) and RSP (a fault's handler may have moved it)
    /// are known.
    func syscallKVMRan(_ k: CPUState) -> CPUState? {
        guard hostIsEmulated, k.rip == Machine.syscallSentinel || k.cr2 == Machine.syscallSentinel else { return nil }
        var s = k
        s.rip = k[.rcx] &- 2
        return s
    }

    /// Whether the interpreter (`i`) is at the SYSCALL KVM ran, with KVM's registers.
    func reachedSyscall(_ i: CPUState, _ k: CPUState) -> Bool {
        guard i.rip == k.rip, i.inUserMode64 else { return false }
        let unknown: Set<GPR> = [.rcx, .r11, .rsp]
        for r in GPR.allCases where !unknown.contains(r) && i[r] != k[r] { return false }
        return instruction(at: i).1 == "syscall"
    }

    static let softwareInterruptInUserMode = "this host's KVM raises #UD for INT n in 64-bit user mode: the interpreter executes it for both"

    /// Whether the interpreter (`i`) is at an INT n in 64-bit user mode for which KVM's
    /// step ended in kernel mode with the same general registers but RSP: PVM raised #UD
    /// there (the handler's first instruction has run; it may have moved RSP).
    func softwareInterruptRaisedUD(_ i: CPUState, _ k: CPUState) -> Bool {
        guard hostIsEmulated, k.cs.selector & 3 == 0, i.inUserMode64 else { return false }
        for r in GPR.allCases where r != .rsp && i[r] != k[r] { return false }
        guard let physical = interp.translate(linear: i.rip) else { return false }
        let opcode: UInt8 = interpMemory.read(physical)
        return opcode == 0xCD
    }

    /// The reason to stop when the interpreter, running on, made an access KVM did not:
    /// it has gone past where KVM's step ended without reaching its state.
    func ranPast(_ number: UInt64, _ text: String, _ kvmAfter: CPUState?) -> String {
        "at step \(number), \(text): host limitation: this host's KVM ran on natively in 64-bit user mode to \(kvmAfter.map(Self.location) ?? "?"), and the interpreter went past it (an I/O access KVM did not make) without reaching that state"
    }

    /// RDMSR and WRMSR of LSTAR, which KVM keeps at the sentinel on PVM.
    func readsSentinelLSTAR(_ mnemonic: String, _ before: CPUState) -> Bool {
        hostIsEmulated && mnemonic == "rdmsr" && UInt32(truncatingIfNeeded: before[.rcx]) == MSR.lstar
    }
    func writesLSTAR(_ mnemonic: String, _ before: CPUState) -> Bool {
        hostIsEmulated && mnemonic == "wrmsr" && UInt32(truncatingIfNeeded: before[.rcx]) == MSR.lstar
    }

    static let keptDataSegments = "this host's KVM keeps the DPL 0 data segments that a return to CPL 3 loads as null"

    /// A difference confined to ES, DS, FS and GS, in 64-bit user mode, where the
    /// interpreter holds null selectors: the architectural IRETQ (and SYSRETQ, which
    /// leaves them) to CPL 3 nulls a data segment whose DPL is below 3; PVM keeps the
    /// kernel's (and runs user code on the host's own selectors anyway).
    func keptDataSegments(_ fields: [(String, String, String)], interp i: CPUState) -> Bool {
        let data: [(String, SegmentRegister)] = [("es", i.es), ("ds", i.ds), ("fs", i.fs), ("gs", i.gs)]
        return hostIsEmulated && i.inUserMode64 && !fields.isEmpty && fields.allSatisfy { field in
            data.contains { name, segment in
                (field.0 == name || field.0.hasPrefix(name + ".")) && segment.selector & ~3 == 0
            }
        }
    }

    /// The summary line for the steps where KVM ran on in user mode, if any.
    var caughtUpLine: String? {
        guard catchUps > 0 else { return nil }
        return "  caught up \(catchUps) time\(catchUps == 1 ? "" : "s") over \(caughtUpInstructions) instructions: this host's KVM ran on natively in 64-bit user mode past a single step, and the interpreter ran on to its state, compared there"
    }
}
