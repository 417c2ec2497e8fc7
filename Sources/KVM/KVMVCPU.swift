#if canImport(Glibc)
import Glibc
#endif
import CKVM
import HostOS
import X86

/// A vCPU file descriptor and its mmapped `kvm_run`: the KVM execution backend.
public final class KVMVCPU: VCPUBackend, @unchecked Sendable {
    let fd: Int32
    public let index: Int
    let shared: UnsafeMutablePointer<kvm_run>
    let runSize: Int
    let vm: KVMVirtualMachine
    /// The thread inside `run()` and the `kvm_run` page, for `kick()` (and the VM's kicks).
    let kicker: KVMKicker
    /// The thread of the previous `run()` (compared only, never signalled).
    private var lastRunner: pthread_t?

    /// The signal that interrupts `KVM_RUN` on another thread.
    public static let kickSignal = ckvm_kick_signal()

    /// Whether interrupts are injected through `kvm_run.s.regs.events` at entry
    /// (KVM_CAP_SYNC_REGS with KVM_SYNC_X86_EVENTS) rather than a KVM_INTERRUPT ioctl.
    let syncEvents: Bool
    /// `kvm_run.s.regs.events` holds the vCPU's events as of the last exit.
    var eventsCurrent = false
    /// KVM offers KVM_SYNC_X86_REGS and KVM_SYNC_X86_SREGS (`storeRegistersAtExits`).
    var canSyncRegisters = false

    /// The state ioctls this host's KVM has (KVM_CHECK_EXTENSION): the ones it has must
    /// succeed; without one, what it moves is left as KVM holds it (KVMState.swift).
    struct StateIoctls {
        var events: Bool
        var debugRegisters: Bool
        var xsave: Bool
        var xcrs: Bool
    }
    let stateIoctls: StateIoctls

    init(fd: Int32, index: Int, run: UnsafeMutableRawPointer, runSize: Int, vm: KVMVirtualMachine, syncEvents: Bool, stateIoctls: StateIoctls) {
        self.stateIoctls = stateIoctls
        self.fd = fd
        self.index = index
        self.shared = run.assumingMemoryBound(to: kvm_run.self)
        kicker = KVMKicker(run: shared)
        self.runSize = runSize
        self.vm = vm
        self.syncEvents = syncEvents
        // Every exit then stores the events where an injection can amend them.
        if syncEvents { shared.pointee.kvm_valid_regs = UInt64(CKVM_SYNC_X86_EVENTS) }
        Self.installKickHandler
    }

    deinit {
        if ownTimerSignalCreated { ckvm_thread_timer_delete(ownTimerSignal) }
        kicker.detach()
        munmap(shared, runSize)
        close(fd)
    }

    /// The handler makes `KVM_RUN` return EINTR instead of the signal killing the process
    /// (and sets `immediate_exit` when the signal lands just before the ioctl). KVM_RUN
    /// returns EINTR whatever the flags; SA_RESTART keeps the vCPU thread's other system
    /// calls (console writes, waits) going when the own-timer signal lands in them.
    private static let installKickHandler: Void = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = ckvm_kick_handler
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        sigaction(kickSignal, &action, nil)
    }()

    /// Unblocks the kick signal on the calling thread. A thread inherits its signal mask
    /// from the thread that created it (and a process from its parent): Dispatch and
    /// Swift concurrency workers, for one, block every signal. With the kick signal
    /// blocked, `KVM_RUN` on a guest that never exits (a `jmp $` at CPL 0) could not be
    /// interrupted: no timeout, no Ctrl-C, no stop from another vCPU.
    private static func unblockKickSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    // MARK: Running

    /// Where external interrupts come from (nil: no interrupt controller).
    public var interruptController: (any InterruptController)? = nil

    /// The vCPU's own timer: before each entry a host timer is set to signal this thread
    /// at its deadline, which ends `KVM_RUN` with EINTR.
    public var ownTimer: TimerDeadline? = nil
    /// The POSIX timer (its ID) that sends the kick signal to the thread that runs this vCPU.
    private var ownTimerSignal: Int32 = 0
    private var ownTimerSignalCreated = false
    private var ownTimerSignalError: Int32 = 0
    /// The CLOCK_MONOTONIC time it is set for (0: not set).
    private var ownTimerSet: UInt64 = 0

    /// Sets the host timer for the own timer's deadline, if that changed (a system call
    /// only then: an idle vCPU's periodic timer costs one per tick).
    private func setOwnTimerSignal(_ deadline: TimerDeadline) {
        let want = deadline.hostNanoseconds ?? 0
        guard want != ownTimerSet, ownTimerSignalCreated else { return }
        // A disarmed deadline leaves a timer that has already gone off alone.
        if want == 0 && ownTimerSet <= TimerDeadline.hostNow() {
            ownTimerSet = 0
            return
        }
        if ckvm_thread_timer_set(ownTimerSignal, want) == 0 { ownTimerSet = want }
    }

    /// A new thread runs this vCPU: the own-timer signal goes to it from now on.
    private func retargetOwnTimerSignal() {
        if ownTimerSignalCreated { ckvm_thread_timer_delete(ownTimerSignal) }
        ownTimerSet = 0
        ownTimerSignalCreated = ckvm_thread_timer_create(Self.kickSignal, &ownTimerSignal) == 0
        ownTimerSignalError = ownTimerSignalCreated ? 0 : errno
    }

    /// Whether injected vectors are kept for `takeInjected` (traces).
    public var recordInjections = false
    private var injected: [UInt8] = []

    /// The vectors injected (KVM_INTERRUPT, or 2 for KVM_NMI) since the last call.
    public func takeInjected() -> [UInt8] {
        defer { injected.removeAll() }
        return injected
    }

    /// KVM must deliver none of the guest's events (a PVM host, where it cannot deliver a
    /// SYSCALL of user mode: the hybrid engine, and `--backend kvm` there): in protected
    /// mode KVM runs the vCPU with `eventlessIDT` in place of the guest's IDTR, so that
    /// every exception fails to deliver (`KVM_EXIT_SHUTDOWN`), and instead of injecting,
    /// `run()` returns `.interrupted` as soon as an NMI, or an interrupt the guest accepts
    /// (IF set), is pending, for the interpreter to deliver; its LSTAR is `syscallSentinel`, so
    /// that a SYSCALL (which PVM carries out itself, at CPL 3) fails at its first fetch.
    /// The guest's IDTR and LSTAR are kept aside (`readState` shows them; the guest's
    /// RDMSR and WRMSR of LSTAR reach them where the VM routes LSTAR to user space:
    /// `KVMVirtualMachine.routeLSTARToUserSpace`). An IDT the guest loads itself on KVM
    /// (LIDT at CPL 0), or has on entering protected mode there, is taken at the next exit
    /// (KVM has delivered events through it until then). In real mode KVM holds the
    /// guest's own IDTR. Set it before the `writeState` it is to apply to.
    public var deliversNoEvents = false {
        didSet { if deliversNoEvents && canSyncRegisters { shared.pointee.kvm_valid_regs |= UInt64(CKVM_SYNC_X86_SREGS) } }
    }
    /// The guest's IDTR while KVM holds `eventlessIDT` in its place.
    private var guestIDT: DescriptorTable? = nil
    /// The guest's LSTAR while KVM holds `syscallSentinel` (`deliversNoEvents`).
    var guestLSTAR: UInt64 = 0
    /// KVM holds `eventlessIDT` now (`deliversNoEvents`, in protected mode).
    public var runsEventless: Bool { guestIDT != nil }
    /// The last exit was an `in`, an MMIO access, an MSR access answered in user space (or an
    /// `out`) that KVM finishes only at its next KVM_RUN: an `in`'s or RDMSR's value into
    /// RAX, RIP past the instruction. Until then the
    /// registers are the instruction's, and a state written meanwhile gets that ending
    /// applied to it — RIP set past the old instruction, RAX overwritten — wherever the
    /// vCPU is by then. `completePendingExit` ends it; so does any KVM_RUN.
    public internal(set) var exitAwaitingEntry = false
    /// RFLAGS.IF as of the last `writeState` or exit (`kvm_run.if_flag` is only written at exits).
    private var guestInterruptFlag = false

    /// The CPU model whose MSRs this vCPU answers in user space (KVMGuestCPU.swift).
    public internal(set) var guestCPU: GuestCPU? = nil

    /// Injects a pending interrupt when KVM says the guest can take one (`KVM_INTERRUPT`),
    /// or asks for an exit as soon as it can (`request_interrupt_window`).
    private func offerInterrupt(_ controller: any InterruptController) {
        // KVM tracks NMI blocking itself (KVM_NMI queues one).
        if controller.takeNMI(vcpu: index) {
            _ = ckvm_ioctl_int(fd, CKVM_NMI, 0)
            if recordInjections { injected.append(2) }
        }
        guard controller.hasPendingInterrupt(vcpu: index) else {
            shared.pointee.request_interrupt_window = 0
            return
        }
        if shared.pointee.ready_for_interrupt_injection != 0, let vector = controller.acknowledgeInterrupt(vcpu: index) {
            if !injectAtEntry(vector) {
                var irq = kvm_interrupt(irq: UInt32(vector))
                _ = ckvm_ioctl_ptr(fd, CKVM_INTERRUPT, &irq)
            }
            shared.pointee.request_interrupt_window = 0
            if recordInjections { injected.append(vector) }
        } else {
            shared.pointee.request_interrupt_window = 1
        }
    }

    /// Queues external interrupt `vector` in `kvm_run.s.regs.events`, which KVM_RUN applies
    /// as KVM_SET_VCPU_EVENTS would, saving the KVM_INTERRUPT ioctl: on a host where each
    /// vCPU ioctl reloads the vCPU (PVM reads MSRs in vcpu_load) that is a third of an idle
    /// timer tick. Only when the events from the last exit show nothing in flight (no
    /// exception, NMI or interrupt being injected): they are written back as they are,
    /// except the NMI count, which a KVM_NMI since then may have raised. False: not done.
    private func injectAtEntry(_ vector: UInt8) -> Bool {
        guard syncEvents, eventsCurrent else { return false }
        let events = shared.pointee.s.regs.events
        guard events.exception.injected == 0, events.interrupt.injected == 0, events.nmi.injected == 0 else { return false }
        shared.pointee.s.regs.events.interrupt.injected = 1
        shared.pointee.s.regs.events.interrupt.nr = vector
        shared.pointee.s.regs.events.interrupt.soft = 0
        shared.pointee.s.regs.events.flags &= ~UInt32(CKVM_VCPUEVENT_VALID_NMI_PENDING)
        shared.pointee.kvm_dirty_regs |= UInt64(CKVM_SYNC_X86_EVENTS)
        return true
    }

    /// This thread is no longer in (or entering) `KVM_RUN`: kicks stop signalling it.
    private func clearRunner() {
        pthread_mutex_lock(kicker.lock)
        kicker.runner = nil
        pthread_mutex_unlock(kicker.lock)
    }

    /// `KVM_RUN`, with the exit translated to the shared `VCPUExit`.
    public func run() throws(BackendError) -> VCPUExit {
        let me = pthread_self()
        pthread_mutex_lock(kicker.lock)
        let newThread = lastRunner.map { pthread_equal($0, me) == 0 } ?? true
        kicker.runner = me
        lastRunner = me
        pthread_mutex_unlock(kicker.lock)
        if newThread {
            Self.unblockKickSignal()
            retargetOwnTimerSignal()
        }
        if ownTimer != nil && !ownTimerSignalCreated {
            clearRunner()
            // Without it the local APIC timer would wait for the guest's next exit.
            throw BackendError("vCPU \(index): cannot create the host timer for its local APIC timer (timer_create: \(Errno(ownTimerSignalError)))")
        }
        if let ownTimer {
            setOwnTimerSignal(ownTimer)
            ckvm_entering(shared)
            // Due already (or its signal came before `ckvm_entering`): the loop fires it.
            // Looked at before an interrupt is injected, which then waits inside KVM.
            if ownTimer.isDue {
                ckvm_entering(nil)
                clearRunner()
                return .interrupted
            }
        }
        let leaves = guestIDT != nil
        if leaves, let controller = interruptController {
            let interrupt = controller.hasPendingInterrupt(vcpu: index)
            if controller.hasNMI(vcpu: index) || (interrupt && guestInterruptFlag) {
                if ownTimer != nil { ckvm_entering(nil) }
                clearRunner()
                return .interrupted
            }
            // IF clear (CPL 3 with IOPL 3): an exit as soon as the guest sets it.
            shared.pointee.request_interrupt_window = interrupt ? 1 : 0
        } else if let controller = interruptController {
            // Without an in-kernel APIC, KVM keeps the guest's CR8 in kvm_run: ours is the
            // local APIC's TPR, handed in before each entry and taken back after.
            shared.pointee.cr8 = UInt64(controller.taskPriority(vcpu: index) >> 4)
            offerInterrupt(controller)
        }
        defer {
            if !leaves, let controller = interruptController {
                let tpr = UInt8(truncatingIfNeeded: shared.pointee.cr8 << 4)
                if tpr != controller.taskPriority(vcpu: index) { controller.setTaskPriority(vcpu: index, tpr) }
            }
        }
        pthread_rwlock_rdlock(vm.runLock)
        let result = ckvm_ioctl_int(fd, CKVM_RUN, 0)
        let error = errno
        pthread_rwlock_unlock(vm.runLock)
        if ownTimer != nil { ckvm_entering(nil) }
        // KVM_RUN finishes the instruction of the last exit before anything else.
        exitAwaitingEntry = false
        guestInterruptFlag = shared.pointee.if_flag != 0
        if deliversNoEvents && (result >= 0 || error == EINTR) { keepIDTEventless() }
        // KVM_RUN stores the events at every return once it got past loading the vCPU.
        eventsCurrent = syncEvents && (result >= 0 || error == EINTR)
        // Only a thread inside (or entering) KVM_RUN may be signalled: a pthread_t kept
        // after its thread exits would make pthread_kill write into freed memory.
        clearRunner()
        if result < 0 {
            if error == EINTR || error == EAGAIN {
                shared.pointee.immediate_exit = 0
                return .interrupted
            }
            throw BackendError("KVM_RUN on vCPU \(index): \(Errno(error))")
        }
        let r = shared.pointee
        switch Int32(r.exit_reason) {
        case KVM_EXIT_IO:
            exitAwaitingEntry = true
            let size = Int(r.io.size), count = Int(r.io.count), port = r.io.port
            let data = UnsafeMutableRawPointer(ckvm_io_data(shared)!)
            return r.io.direction == UInt8(KVM_EXIT_IO_IN)
                ? .portIn(port: port, size: size, count: count, data: data)
                : .portOut(port: port, size: size, count: count, data: UnsafeRawPointer(data))
        case KVM_EXIT_MMIO:
            exitAwaitingEntry = true
            let data = UnsafeMutableRawPointer(ckvm_mmio_data(shared)!)
            let size = Int(r.mmio.len)
            return r.mmio.is_write != 0
                ? .mmioWrite(address: r.mmio.phys_addr, size: size, data: UnsafeRawPointer(data))
                : .mmioRead(address: r.mmio.phys_addr, size: size, data: data)
        case KVM_EXIT_HLT:
            // The vCPU sleeps until its deadline on its own (Machine's HLT wait): the host
            // timer would only send the sleeping thread a signal at that moment, and a
            // signal costs more than this one system call (measured: Documentation/Platform.md).
            if ownTimerSet != 0 && ownTimerSet > TimerDeadline.hostNow() {
                _ = ckvm_thread_timer_set(ownTimerSignal, 0)
                ownTimerSet = 0
            }
            return .halt
        case 29, 30:   // KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR: answered here; the run loop just re-enters
            // (KVM puts a RDMSR's value into RAX:RDX and RIP past either at its next entry.)
            exitAwaitingEntry = true
            answerMSR(write: r.exit_reason == 30)
            return .interrupted
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_DEBUG: return .debugStep
        case KVM_EXIT_INTR, KVM_EXIT_IRQ_WINDOW_OPEN: return .interrupted
        case KVM_EXIT_FAIL_ENTRY: return .failedEntry(reason: r.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR:
            if r.internal.suberror == UInt32(KVM_INTERNAL_ERROR_EMULATION) {
                return .unsupportedInstruction("KVM emulation failure")
            }
            return .internalError("KVM internal error, suberror \(r.internal.suberror)")
        default:
            return .internalError("unexpected KVM exit reason \(r.exit_reason)")
        }
    }

    /// After an exit, with `deliversNoEvents`: an IDTR other than `eventlessIDT` in
    /// protected mode is the guest's (loaded there with LIDT, or the one it had entering
    /// protected mode): kept aside, and `eventlessIDT` put back; in real mode the guest's
    /// goes back to KVM. (The registers `kvm_run` holds, as of this exit.)
    private func keepIDTEventless() {
        // (Protected mode, KVM holding `eventlessIDT`): agreeing, nothing to do.
        func modes(_ sregs: kvm_sregs) -> (protected: Bool, eventless: Bool) {
            (sregs.cr0 & 1 != 0, sregs.idt.base == Self.eventlessIDT.base && sregs.idt.limit == Self.eventlessIDT.limit)
        }
        var sregs = shared.pointee.s.regs.sregs
        if canSyncRegisters {
            let (protected, eventless) = modes(sregs)
            if !protected && !eventless { guestIDT = nil }
            guard protected != eventless else { return }
        }
        // Decided on KVM's registers as they are now (the copy in `kvm_run` is only a
        // filter: a state written since the exit it holds would make it stale).
        guard ckvm_ioctl_ptr(fd, CKVM_GET_SREGS, &sregs) == 0 else { return }
        let (protected, eventless) = modes(sregs)
        if !protected && !eventless { guestIDT = nil }
        guard protected != eventless else { return }
        if protected {
            guestIDT = DescriptorTable(base: sregs.idt.base, limit: sregs.idt.limit)
            sregs.idt = kvm_dtable(base: Self.eventlessIDT.base, limit: Self.eventlessIDT.limit, padding: (0, 0, 0))
        } else {
            let idt = guestIDT ?? DescriptorTable(base: 0, limit: 0x3FF)
            sregs.idt = kvm_dtable(base: idt.base, limit: idt.limit, padding: (0, 0, 0))
            guestIDT = nil
        }
        _ = ckvm_ioctl_ptr(fd, CKVM_SET_SREGS, &sregs)
    }

    /// IDTR while KVM must deliver no events (`deliversNoEvents`): limit 0, so that every
    /// delivery fails; the base (the last page of the address space) tells it from an IDT
    /// the guest loads itself.
    public static let eventlessIDT = DescriptorTable(base: syscallSentinel, limit: 0)
    /// LSTAR while KVM must deliver no events: the last page of the address space, which
    /// no guest maps for user mode.
    public static let syscallSentinel: UInt64 = 0xFFFF_FFFF_FFFF_F000

    /// The exception KVM was delivering when `run()` returned: after a `.shutdown`, the
    /// one whose delivery failed (PVM keeps its vector in the vCPU events); after other
    /// exits, one still pending or being injected (a signal can end `KVM_RUN` between
    /// PVM raising it and delivering it). Nil: none, or the events are unreadable.
    public func exceptionInFlight(afterShutdown: Bool) -> UInt8? {
        var events = shared.pointee.s.regs.events
        if !eventsCurrent {
            guard ckvm_ioctl_ptr(fd, CKVM_GET_VCPU_EVENTS, &events) == 0 else { return nil }
        }
        if afterShutdown || events.exception.injected != 0 || events.exception.pending != 0 { return events.exception.nr }
        return nil
    }

    /// The guest TSC's rate (`KVM_GET_TSC_KHZ`), for TSC-deadline arithmetic.
    public lazy var tscKHz: UInt64 = {
        let khz = ckvm_ioctl_int(fd, CKVM_GET_TSC_KHZ, 0)
        return khz > 0 ? UInt64(khz) : 1_000_000
    }()

    /// Makes a `KVM_RUN` in progress (or about to start) return EINTR: sets
    /// `immediate_exit` and signals the running thread.
    public func kick() { kicker.kick() }

    /// RFLAGS.IF: `kvm_run.if_flag`, which KVM fills in at every exit, or the value
    /// `writeState` gave it since.
    public var interruptFlag: Bool { guestInterruptFlag }

    /// KVM does not count guest instructions.
    public var instructionsRetired: UInt64? { nil }

    /// `KVM_SET_GUEST_DEBUG` with single-stepping on or off (the hardware breakpoints stay).
    public func setSingleStep(_ enabled: Bool) throws(BackendError) {
        try setGuestDebug(singleStep: enabled, hardwareBreakpoints: hardwareBreakpoints)
    }

    /// `KVM_GUESTDBG_USE_SW_BP`: an `int3` of the guest ends `run()` with `.debugStep`
    /// (the hybrid engine: PVM reports it as a triple fault past the instruction).
    public private(set) var breakpointExits = false
    public func setBreakpointExits(_ on: Bool) throws(BackendError) {
        breakpointExits = on
        try setGuestDebug(singleStep: false, hardwareBreakpoints: hardwareBreakpoints)
    }

    /// The debugger's instruction breakpoints in the debug registers (linear addresses).
    public private(set) var hardwareBreakpoints: [UInt64] = []
    /// How many instruction breakpoints the debug registers hold.
    public static let hardwareBreakpointSlots = 4

    /// `KVM_SET_GUEST_DEBUG`: single-stepping, and up to four instruction breakpoints in
    /// DR0-DR3 (`KVM_GUESTDBG_USE_HW_BP`, which PVM honours even for code its instruction
    /// emulator runs; its software breakpoints, `KVM_GUESTDBG_USE_SW_BP`, fail there: the
    /// emulator cannot run `int3`). Both end `run()` with `.debugStep`.
    public func setGuestDebug(singleStep: Bool, hardwareBreakpoints: [UInt64]) throws(BackendError) {
        precondition(hardwareBreakpoints.count <= Self.hardwareBreakpointSlots)
        var debug = kvm_guest_debug()
        var control: Int32 = singleStep ? KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP : 0
        if breakpointExits { control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP }
        if !hardwareBreakpoints.isEmpty {
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP
            var dr7: UInt64 = 0x400
            withUnsafeMutableBytes(of: &debug.arch.debugreg) { regs in
                for (i, address) in hardwareBreakpoints.enumerated() {
                    regs.storeBytes(of: address, toByteOffset: i * 8, as: UInt64.self)
                    dr7 |= 1 << (2 * UInt64(i))   // Li: enabled, RW=00 (execute), LEN=00
                }
                regs.storeBytes(of: dr7, toByteOffset: 7 * 8, as: UInt64.self)
            }
        }
        debug.control = UInt32(control)
        guard ckvm_ioctl_ptr(fd, CKVM_SET_GUEST_DEBUG, &debug) == 0 else {
            throw BackendError("KVM_SET_GUEST_DEBUG: \(Errno.current)")
        }
        self.hardwareBreakpoints = hardwareBreakpoints
    }

    /// `KVM_SET_CPUID2`.
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        let bytes = MemoryLayout<kvm_cpuid2>.size + entries.count * MemoryLayout<kvm_cpuid_entry2>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee = kvm_cpuid2()
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(entries.count)
        entries.withUnsafeBytes { (raw + MemoryLayout<kvm_cpuid2>.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        guard ckvm_ioctl_ptr(fd, CKVM_SET_CPUID2, raw) == 0 else { throw KVMError("KVM_SET_CPUID2") }
    }

    /// `KVM_TRANSLATE`: the guest's own page tables, walked by KVM.
    public func translate(linear: UInt64) -> UInt64? {
        var t = kvm_translation()
        t.linear_address = linear
        guard ckvm_ioctl_ptr(fd, CKVM_TRANSLATE, &t) == 0, t.valid != 0 else { return nil }
        return t.physical_address
    }

    // MARK: State conversion

    /// The MSRs kept in `CPUState`, in the order they are exchanged with KVM.
    static let stateMSRs: [UInt32] = [
        MSR.star, MSR.lstar, MSR.cstar, MSR.fmask, MSR.kernelGSBase,
        MSR.sysenterCS, MSR.sysenterESP, MSR.sysenterEIP, MSR.tsc, MSR.pat,
    ] + MTRRs.numbers

    /// `KVM_GET_REGS`, `KVM_GET_SREGS`, `KVM_GET_MSRS`, `KVM_GET_DEBUGREGS`, the FPU (KVMFPU.swift)
    /// and `KVM_GET_VCPU_EVENTS` (KVMEvents.swift).
    public func readState() throws(BackendError) -> CPUState {
        var regs = kvm_regs()
        var sregs = kvm_sregs()
        var debug = kvm_debugregs()
        guard ckvm_ioctl_ptr(fd, CKVM_GET_REGS, &regs) == 0 else { throw BackendError("KVM_GET_REGS: \(Errno.current)") }
        guard ckvm_ioctl_ptr(fd, CKVM_GET_SREGS, &sregs) == 0 else { throw BackendError("KVM_GET_SREGS: \(Errno.current)") }
        var s = CPUState()
        s[.rax] = regs.rax; s[.rcx] = regs.rcx; s[.rdx] = regs.rdx; s[.rbx] = regs.rbx
        s[.rsp] = regs.rsp; s[.rbp] = regs.rbp; s[.rsi] = regs.rsi; s[.rdi] = regs.rdi
        s[.r8] = regs.r8; s[.r9] = regs.r9; s[.r10] = regs.r10; s[.r11] = regs.r11
        s[.r12] = regs.r12; s[.r13] = regs.r13; s[.r14] = regs.r14; s[.r15] = regs.r15
        s.rip = regs.rip
        s.rflags = regs.rflags
        s.cs = Self.segment(sregs.cs); s.ds = Self.segment(sregs.ds); s.es = Self.segment(sregs.es)
        s.fs = Self.segment(sregs.fs); s.gs = Self.segment(sregs.gs); s.ss = Self.segment(sregs.ss)
        s.tr = Self.segment(sregs.tr); s.ldtr = Self.segment(sregs.ldt)
        s.gdtr = DescriptorTable(base: sregs.gdt.base, limit: sregs.gdt.limit)
        s.idtr = DescriptorTable(base: sregs.idt.base, limit: sregs.idt.limit)
        if let guestIDT, s.idtr == Self.eventlessIDT { s.idtr = guestIDT }
        s.cr0 = sregs.cr0; s.cr2 = sregs.cr2; s.cr3 = sregs.cr3; s.cr4 = sregs.cr4; s.cr8 = sregs.cr8
        s.efer = sregs.efer
        s.msrs.apicBase = sregs.apic_base
        if stateIoctls.debugRegisters {
            guard ckvm_ioctl_ptr(fd, CKVM_GET_DEBUGREGS, &debug) == 0 else { throw BackendError("KVM_GET_DEBUGREGS: \(Errno.current)") }
            s.dr0 = debug.db.0; s.dr1 = debug.db.1; s.dr2 = debug.db.2; s.dr3 = debug.db.3
            s.dr6 = debug.dr6; s.dr7 = debug.dr7
        }
        let values = try exchangeMSRs(Self.stateMSRs.map { ($0, 0) }, set: false)
        for (index, value) in values {
            switch index {
            case MSR.star: s.msrs.star = value
            case MSR.lstar: s.msrs.lstar = deliversNoEvents ? guestLSTAR : value
            case MSR.cstar: s.msrs.cstar = value
            case MSR.fmask: s.msrs.fmask = value
            case MSR.kernelGSBase: s.msrs.kernelGSBase = value
            case MSR.sysenterCS: s.msrs.sysenterCS = value
            case MSR.sysenterESP: s.msrs.sysenterESP = value
            case MSR.sysenterEIP: s.msrs.sysenterEIP = value
            case MSR.tsc: s.msrs.tsc = value
            case MSR.pat: s.msrs.pat = value
            default: if MTRRs.slot(index) != nil { s.msrs.mtrrs[index] = value }
            }
        }
        try readFPU(into: &s)
        try readEvents(into: &s)
        return s
    }

    /// `KVM_SET_SREGS`, `KVM_SET_REGS`, `KVM_SET_MSRS`, `KVM_SET_DEBUGREGS`, the FPU (KVMFPU.swift)
    /// and `KVM_SET_VCPU_EVENTS` (KVMEvents.swift).
    public func writeState(_ s: CPUState) throws(BackendError) {
        // The ending KVM owes an `in` or MMIO read would land on the state written here.
        try completePendingExit()
        var sregs = kvm_sregs()
        // Keep what CPUState does not model (the APIC base's reserved bits, ...). The
        // pending-interrupt bitmap is the interrupt being injected, which the events carry
        // where KVM has KVM_SET_VCPU_EVENTS: cleared then, so that it is not injected twice.
        guard ckvm_ioctl_ptr(fd, CKVM_GET_SREGS, &sregs) == 0 else { throw BackendError("KVM_GET_SREGS: \(Errno.current)") }
        if stateIoctls.events { sregs.interrupt_bitmap = (0, 0, 0, 0) }
        sregs.cs = Self.kvmSegment(s.cs); sregs.ds = Self.kvmSegment(s.ds); sregs.es = Self.kvmSegment(s.es)
        sregs.fs = Self.kvmSegment(s.fs); sregs.gs = Self.kvmSegment(s.gs); sregs.ss = Self.kvmSegment(s.ss)
        sregs.tr = Self.kvmSegment(s.tr); sregs.ldt = Self.kvmSegment(s.ldtr)
        sregs.gdt = kvm_dtable(base: s.gdtr.base, limit: s.gdtr.limit, padding: (0, 0, 0))
        guestIDT = deliversNoEvents && s.cr0 & 1 != 0 ? s.idtr : nil
        let idt = guestIDT == nil ? s.idtr : Self.eventlessIDT
        sregs.idt = kvm_dtable(base: idt.base, limit: idt.limit, padding: (0, 0, 0))
        sregs.cr0 = s.cr0; sregs.cr2 = s.cr2; sregs.cr3 = s.cr3; sregs.cr4 = s.cr4; sregs.cr8 = s.cr8
        sregs.efer = s.efer
        sregs.apic_base = s.msrs.apicBase
        guard ckvm_ioctl_ptr(fd, CKVM_SET_SREGS, &sregs) == 0 else { throw BackendError("KVM_SET_SREGS: \(Errno.current)") }
        var regs = kvm_regs(
            rax: s[.rax], rbx: s[.rbx], rcx: s[.rcx], rdx: s[.rdx], rsi: s[.rsi], rdi: s[.rdi], rsp: s[.rsp], rbp: s[.rbp],
            r8: s[.r8], r9: s[.r9], r10: s[.r10], r11: s[.r11], r12: s[.r12], r13: s[.r13], r14: s[.r14], r15: s[.r15],
            rip: s.rip, rflags: s.rflags)
        guard ckvm_ioctl_ptr(fd, CKVM_SET_REGS, &regs) == 0 else { throw BackendError("KVM_SET_REGS: \(Errno.current)") }
        guestInterruptFlag = s.interruptsEnabled
        if stateIoctls.debugRegisters {
            var debug = kvm_debugregs()
            debug.db = (s.dr0, s.dr1, s.dr2, s.dr3)
            debug.dr6 = s.dr6
            debug.dr7 = s.dr7
            guard ckvm_ioctl_ptr(fd, CKVM_SET_DEBUGREGS, &debug) == 0 else { throw BackendError("KVM_SET_DEBUGREGS: \(Errno.current)") }
        }
        let m = s.msrs
        guestLSTAR = m.lstar
        // (Not the TSC: this engine's TSC runs at the host's rate and the interpreter's at
        // 1 GHz, so writing back a value that went through the interpreter would set the
        // guest's clock back at every handoff; `setTSC` is for restoring a snapshot.)
        let msrs = [
            (MSR.star, m.star), (MSR.lstar, deliversNoEvents ? Self.syscallSentinel : m.lstar), (MSR.cstar, m.cstar), (MSR.fmask, m.fmask),
            (MSR.kernelGSBase, m.kernelGSBase), (MSR.sysenterCS, m.sysenterCS), (MSR.sysenterESP, m.sysenterESP),
            (MSR.sysenterEIP, m.sysenterEIP), (MSR.pat, m.pat),
        ] + MTRRs.numbers.map { ($0, m.mtrrs[$0]) }
        let written = try exchangeMSRs(msrs, set: true).count
        guard written == msrs.count else {
            throw BackendError("KVM_SET_MSRS: KVM refused MSR 0x\(String(msrs[written].0, radix: 16)) = 0x\(String(msrs[written].1, radix: 16))")
        }
        try writeFPU(s)
        try writeEvents(s)
    }

    /// Sets the guest's TSC (KVM_SET_MSRS of IA32_TSC), as a restored snapshot needs.
    public func setTSC(_ value: UInt64) throws(BackendError) {
        guard try exchangeMSRs([(MSR.tsc, value)], set: true).count == 1 else { throw BackendError("KVM_SET_MSRS: KVM refused IA32_TSC") }
    }

    /// `KVM_GET_MSRS` / `KVM_SET_MSRS` for the given (index, value) pairs. MSRs the host
    /// refuses are left out of the result rather than failing the whole exchange.
    func exchangeMSRs(_ entries: [(UInt32, UInt64)], set: Bool) throws(BackendError) -> [(UInt32, UInt64)] {
        let bytes = MemoryLayout<kvm_msrs>.size + entries.count * MemoryLayout<kvm_msr_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee = kvm_msrs()
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(entries.count)
        let list = (raw + MemoryLayout<kvm_msrs>.size).bindMemory(to: kvm_msr_entry.self, capacity: entries.count)
        for (i, e) in entries.enumerated() { list[i] = kvm_msr_entry(index: e.0, reserved: 0, data: e.1) }
        let done = ckvm_ioctl_ptr(fd, set ? CKVM_SET_MSRS : CKVM_GET_MSRS, raw)
        guard done >= 0 else { throw BackendError("\(set ? "KVM_SET_MSRS" : "KVM_GET_MSRS"): \(Errno.current)") }
        return (0..<Int(done)).map { (list[$0].index, list[$0].data) }
    }


    static func segment(_ k: kvm_segment) -> SegmentRegister {
        SegmentRegister(selector: k.selector, base: k.base, limit: k.limit, attributes: SegmentRegister.attributes(
            type: k.type, s: k.s != 0, dpl: k.dpl, present: k.present != 0, available: k.avl != 0,
            long: k.l != 0, big: k.db != 0, granularity: k.g != 0, unusable: k.unusable != 0))
    }

    static func kvmSegment(_ s: SegmentRegister) -> kvm_segment {
        kvm_segment(base: s.base, limit: s.limit, selector: s.selector, type: s.type,
                    present: s.present ? 1 : 0, dpl: s.dpl, db: s.defaultBig ? 1 : 0, s: s.isSystem ? 0 : 1,
                    l: s.long ? 1 : 0, g: s.granularity ? 1 : 0, avl: s.available ? 1 : 0,
                    unusable: s.unusable ? 1 : 0, padding: 0)
    }
}

/// What kicks a vCPU out of `KVM_RUN`: its `kvm_run` page (`immediate_exit`) and the thread
/// inside `run()`, under one lock. The VM holds its vCPUs' kickers (for remaps) rather than
/// the vCPUs: a strong reference to a vCPU would be a cycle (each holds its VM), and a weak
/// one would give the vCPU a side table, so that every retain of it — one per exit, by the
/// vCPU loop — took Swift's slow reference-counting path. The vCPU detaches its page before
/// unmapping it; a kick after that does nothing.
final class KVMKicker: @unchecked Sendable {
    let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// The thread inside (or entering) `KVM_RUN`; guarded by `lock`.
    var runner: pthread_t?
    private var run: UnsafeMutablePointer<kvm_run>?

    init(run: UnsafeMutablePointer<kvm_run>) {
        self.run = run
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Makes a `KVM_RUN` in progress (or about to start) return EINTR: sets
    /// `immediate_exit` and signals the running thread.
    func kick() {
        pthread_mutex_lock(lock)
        run?.pointee.immediate_exit = 1
        if let runner { pthread_kill(runner, KVMVCPU.kickSignal) }
        pthread_mutex_unlock(lock)
    }

    /// The vCPU is going away: its page is unmapped next.
    func detach() {
        pthread_mutex_lock(lock)
        run = nil
        runner = nil
        pthread_mutex_unlock(lock)
    }
}
