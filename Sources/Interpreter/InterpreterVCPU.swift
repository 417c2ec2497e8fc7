#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Synchronization
import Tracing
import X86

/// One cached decode: tag = physical address << 2 | mode, and the code-page word it was
/// decoded under.
struct CacheEntry {
    var tag: UInt64 = .max
    var version: UInt32 = 0
    /// For an instruction that runs into the next page (its tag has `crossPageTag`): that
    /// page's code-page word when it was decoded, and its physical page number.
    var version2: UInt32 = 0
    var page2: Int = -1
    var instruction = DecodedInstruction()
}

enum Access: UInt8 { case read, write, execute }

/// The interpreter backend for one vCPU: Capstone decodes once per instruction address,
/// Swift executes, on the machine's shared guest memory.
///
/// Hot state lives behind unsafe pointers (the CPU state, the decode cache), never in
/// arrays or class-property collections, so the inner loop pays no exclusivity or
/// bounds checks; slow paths are `@inline(never)`.
public final class InterpreterVCPU: VCPUBackend, TraceSource, @unchecked Sendable {
    public let index: Int
    let s: UnsafeMutablePointer<CPUState>
    /// The general registers inside `s`.
    let r: UnsafeMutablePointer<UInt64>
    /// ES, CS, SS, DS, FS, GS inside `s`, by encoding index.
    let seg: UnsafeMutablePointer<UnsafeMutablePointer<SegmentRegister>>
    let memory: GuestMemoryMap
    let codePages: CodePages
    let shared: InterpreterMachine
    let decoder = Decoder()
    let cache: UnsafeMutablePointer<CacheEntry>
    static let cacheSize = 1 << 14
    /// The traces (Traces.swift): `traceCount` heads, and `traceLength` instructions per
    /// head in `traceCode` (reserved lazily: a slot costs memory once a trace is built in it).
    let traceHeads: UnsafeMutablePointer<TraceHead>
    let traceCode: UnsafeMutablePointer<DecodedInstruction>
    /// Translated traces (Translator/): per trace slot, the host code's address and the
    /// `translationKey` it was made for (0: none yet), reserved lazily like the heads.
    let translations: UnsafeMutablePointer<UInt>
    /// The host code of the translations (`translationCapacity` bytes, reserved lazily),
    /// filled from the start; when full, every translation is forgotten.
    let translatedCode: UnsafeMutableRawPointer
    var translatedUsed = 0
    let translatorLayout = TranslatorLayout()
    /// A fault raised by an instruction translated code had the interpreter run
    /// (`interpretOne`): `runInstructions` raises it when the translation returns.
    var translationFault: Fault? = nil
    /// Whether hot traces are translated to host code (`--translate`).
    public var translatorEnabled: Bool
    /// Where `CacheEntry.instruction` is inside an entry (`instructionPointer`).
    let instructionOffset = MemoryLayout<CacheEntry>.offset(of: \CacheEntry.instruction)!

    // The first RAM region (from 0): the fast path for every access with paging off.
    let lowHost: UnsafeMutableRawPointer
    let lowEnd: UInt64

    // Derived from the state by `refreshMode()`.
    var codeBits = 16
    /// What RIP wraps at: 0xFFFF, 0xFFFF_FFFF or all ones, by `codeBits`.
    var ipMask: UInt64 = 0xFFFF
    var cpl: UInt8 = 0 {
        didSet { tlbTable = tlb.table(user: cpl == 3) }
    }
    var paging = false
    var longMode = false
    var protectedMode = false
    var stackMask: UInt64 = 0xFFFF

    /// Deferred arithmetic flags (LazyFlags.swift): what the last flag-setting fast form
    /// did, while RFLAGS's CF, PF, AF, ZF, SF and OF are not yet computed from it.
    /// Behind a pointer, so that translated code (Translator/) writes the same record.
    let lazy: UnsafeMutablePointer<LazyFlagRecord> = {
        let p = UnsafeMutablePointer<LazyFlagRecord>.allocate(capacity: 1)
        p.initialize(to: LazyFlagRecord())
        return p
    }()
    var lazyFlags: LazyFlags {
        @inline(__always) get { lazy.pointee.kind }
        @inline(__always) set { lazy.pointee.kind = newValue }
    }
    var lazyA: UInt64 {
        @inline(__always) get { lazy.pointee.a }
        @inline(__always) set { lazy.pointee.a = newValue }
    }
    var lazyB: UInt64 {
        @inline(__always) get { lazy.pointee.b }
        @inline(__always) set { lazy.pointee.b = newValue }
    }
    var lazyResult: UInt64 {
        @inline(__always) get { lazy.pointee.result }
        @inline(__always) set { lazy.pointee.result = newValue }
    }
    var lazySize: Int {
        @inline(__always) get { lazy.pointee.size }
        @inline(__always) set { lazy.pointee.size = newValue }
    }

    /// ~(1 << 20) while the A20 gate is off; read from the memory map at each `run()`.
    var a20Mask: UInt64 = .max
    var tlb: TLB
    /// The TLB table of the current privilege (`cpl`; readSystem's implicit supervisor
    /// accesses set it too).
    var tlbTable: UnsafeMutablePointer<TLB.Entry>
    let kicked = Atomic<Bool>(false)
    /// The exit `run()` returns after a `Fault.exit`.
    var pendingExit: VCPUExit = .interrupted
    /// What to do with the value the shared loop put in `ioBuffer` for an `in`.
    var pendingIn: PendingIn? = nil
    let ioBuffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    /// The MMIO accesses of the instruction being executed, in program order (see
    /// `mmioAccess`); emptied when it completes, faults, or finishes a REP iteration.
    var mmioLog: [MMIOAccess] = []
    /// How many entries of `mmioLog` the current execution has replayed.
    var mmioReplayed = 0
    /// The last entry of `mmioLog` is a read whose value the shared loop puts in `ioBuffer`.
    var mmioAwaitingValue = false
    /// The pending exit is an MMIO access: the instruction has not completed and runs
    /// again (replaying `mmioLog`) on the next `run()`.
    var exitRestartsInstruction = false
    /// Where the current instruction's records start in `accessLog` (a restarted
    /// instruction logs its accesses again).
    var accessLogMark = 0
    /// The offset and width of the last access that failed a segment-limit check
    /// (diagnostics: the conformance runner tells wraparound from other faults with it).
    public internal(set) var lastLimitViolation: (offset: UInt64, size: Int)? = nil
    /// Interrupts are inhibited for one instruction after STI, MOV SS and POP SS (kept in
    /// the CPU state's events, with its cause: `shadow(_:)` sets it).
    var interruptShadow: Bool {
        @inline(__always) get { s.pointee.events.interruptShadow != 0 }
        @inline(__always) set { s.pointee.events.interruptShadow = newValue ? InterruptShadow.sti : 0 }
    }
    /// Set while an NMI handler runs (NMIs are blocked until the next IRET).
    var nmiBlocked: Bool {
        @inline(__always) get { s.pointee.events.nmiBlocked }
        @inline(__always) set { s.pointee.events.nmiBlocked = newValue }
    }

    /// Where external interrupts come from (nil: no interrupt controller).
    public var interruptController: (any InterruptController)? = nil
    /// Checked between blocks of instructions: once it is due, `run()` returns so that
    /// the shared loop fires it (nobody else watches the clock for it).
    public var ownTimer: TimerDeadline? = nil

    public var interruptFlag: Bool { s.pointee.rflags & (1 << 9) != 0 }

    /// Stops `run()` with `.instructionLimit` after this many retired instructions.
    public var instructionLimit: UInt64 = .max
    /// `run()` returns `.interrupted` once this many instructions have retired (a
    /// deterministic clock's next timer deadline).
    public var yieldAt: UInt64 = .max
    /// Where the TSC comes from when the machine's clock is not the host's (nanoseconds).
    public var timeSource: (@Sendable () -> UInt64)? = nil
    /// The TSC's rate on the host clock. A machine with KVM gives its interpreter vCPUs
    /// KVM's rate, so that a vCPU's TSC keeps one rate when it moves between engines.
    public var tscKHz: UInt64 = 1_000_000
    /// The hybrid engine: `run()` returns `.interrupted` right after an instruction that
    /// enters 64-bit user mode (CPL 3, a 64-bit code segment), where KVM takes over.
    public var exitOnUserMode64 = false
    /// Ends the current block of instructions after the one executing (`exitOnUserMode64`).
    var endBlock = false
    /// CPL 3 in a 64-bit code segment.
    public var inUserMode64: Bool { cpl == 3 && codeBits == 64 }
    /// STI or MOV SS/POP SS inhibits interrupts until the next instruction has run.
    public var inInterruptShadow: Bool { interruptShadow }
    public private(set) var retired: UInt64 = 0
    public var instructionsRetired: UInt64? { retired }
    /// Of `retired`, those that translated code (Translator/) ran: counted once per call
    /// into a translation, for `--stats` and the tests that must show the translator ran.
    public internal(set) var translatedRetired: UInt64 = 0
    /// Single-step: `run()` returns `.debugStep` after each instruction (after each
    /// iteration of a REP string instruction, and after the exit of an I/O one, as KVM does).
    public var singleStep = false
    /// Set after an exit in single-step mode: the next `run()` only completes it.
    var stepCompletedByExit = false
    /// Single-stepping: taking an external interrupt or an NMI is a step of its own
    /// (`run()` returns `.debugStep` at the handler's entry, before its first
    /// instruction), so a diff or a trace sees where the handler was entered.
    public var interruptIsOwnStep = false
    /// Tracing: single-step and log memory accesses and interrupt deliveries.
    public var tracing: Bool {
        get { logAccesses }
        set { logAccesses = newValue; singleStep = newValue }
    }
    /// Log memory accesses and interrupt deliveries: for the trace recorder and for the
    /// debugger's watchpoints (Debugger.swift).
    public var logAccesses = false
    /// Records the trace from inside the run loop, without single-stepping
    /// (`runRecorded`); nil when not tracing, or once the trace is full.
    public var recorder: TraceRecorder? = nil {
        didSet {
            logAccesses = recorder != nil   // (never together with single-step `tracing`)
            recorder?.start(s)
        }
    }
    /// An instruction that ended in an exit (port I/O, HLT) is recorded when it completes,
    /// with its port I/O, at the next `run()` (or by `finishTrace`).
    var recordPending = false
    /// The operation of the last instruction, kept while single-stepping.
    var lastOp: Op = .invalid
    /// A deliberate bug for testing the differential tester: flip these RFLAGS bits after
    /// every single-stepped instruction of this operation.
    var injectedFault: (op: Op, flags: UInt64)? = nil

    /// Injects a deliberate bug (see `injectedFault`): after each single-stepped `mnemonic`
    /// (Capstone's name, e.g. "add"), RFLAGS ^= `flags`. False when the mnemonic is unknown.
    @discardableResult
    public func injectFault(mnemonic: String, flipFlags flags: UInt64) -> Bool {
        guard let op = Op.allCases.first(where: { "\($0)" == mnemonic }) else { return false }
        injectedFault = (op, flags)
        return true
    }
    var accessLog: [MemoryAccess] = []
    var eventLog: [InterruptEvent] = []
    /// The memory accesses logged since the last `drainTrace` (a debugger's watchpoints
    /// look at them before the trace takes them).
    public var loggedAccesses: [MemoryAccess] { accessLog }

    /// Debugger breakpoints: linear addresses of instructions before which `run()` stops,
    /// returning `.debugStep` without executing them. No memory is patched, so the guest
    /// never sees them. Checked only while the set is not empty.
    public var breakpoints: Set<UInt64> = [] {
        didSet { hasBreakpoints = !breakpoints.isEmpty }
    }
    var hasBreakpoints = false
    /// The breakpoint the vCPU resumes from: not stopped at again until it has executed
    /// one instruction.
    public var breakpointToSkip: UInt64? = nil

    public func drainTrace() -> (accesses: [MemoryAccess], events: [InterruptEvent]) {
        defer { accessLog.removeAll(keepingCapacity: true); eventLog.removeAll(keepingCapacity: true) }
        return (accessLog, eventLog)
    }

    /// Creates a vCPU of `shared` in the reset state; `writeState` sets the boot state.
    init(index: Int, shared: InterpreterMachine) {
        self.index = index
        self.shared = shared
        self.memory = shared.memory
        self.codePages = shared.codePages
        s = .allocate(capacity: 1)
        s.initialize(to: CPUState())
        let raw = UnsafeMutableRawPointer(s)
        r = (raw + MemoryLayout<CPUState>.offset(of: \CPUState.gpr)!).assumingMemoryBound(to: UInt64.self)
        seg = .allocate(capacity: 6)
        let paths: [WritableKeyPath<CPUState, SegmentRegister>] = [\.es, \.cs, \.ss, \.ds, \.fs, \.gs]
        for (i, p) in paths.enumerated() {
            seg[i] = (raw + MemoryLayout<CPUState>.offset(of: p)!).assumingMemoryBound(to: SegmentRegister.self)
        }
        cache = .allocate(capacity: Self.cacheSize)
        cache.initialize(repeating: CacheEntry(), count: Self.cacheSize)
        // Zero-filled pages, reserved lazily (a zero head is an empty slot). TraceHead and
        // DecodedInstruction are trivial types: bytes are written into them by assignment.
        traceHeads = Self.reserve(Self.traceCount, of: TraceHead.self).bindMemory(to: TraceHead.self, capacity: Self.traceCount)
        traceCode = Self.reserve(Self.traceCount * Self.traceLength, of: DecodedInstruction.self).bindMemory(to: DecodedInstruction.self, capacity: Self.traceCount * Self.traceLength)
        translatorEnabled = shared.translate
        translations = Self.reserve(Self.traceCount, of: UInt.self).bindMemory(to: UInt.self, capacity: Self.traceCount)
        translatedCode = Self.reserveCode(Self.translationCapacity)
        if let low = memory.regions.first, low.start == 0, low.kind == .ram {
            lowHost = low.host
            lowEnd = low.size
        } else {
            lowHost = UnsafeMutableRawPointer(bitPattern: 0x1000)!
            lowEnd = 0
        }
        tlb = TLB()
        tlbTable = tlb.entries
        refreshMode()
    }

    /// Zero-filled memory for `count` values of `T`, reserved without committing it: a
    /// page costs the host memory once it is written.
    static func reserve<T>(_ count: Int, of _: T.Type = T.self) -> UnsafeMutableRawPointer {
        let p = mmap(nil, count * MemoryLayout<T>.stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "cannot reserve the trace cache")
        return p!
    }

    deinit {
        s.deinitialize(count: 1)
        s.deallocate()
        seg.deallocate()
        cache.deinitialize(count: Self.cacheSize)
        cache.deallocate()
        munmap(traceHeads, Self.traceCount * MemoryLayout<TraceHead>.stride)
        munmap(translations, Self.traceCount * MemoryLayout<UInt>.stride)
        munmap(translatedCode, Self.translationCapacity)
        tlb.entries.deallocate()
        munmap(traceCode, Self.traceCount * Self.traceLength * MemoryLayout<DecodedInstruction>.stride)
        ioBuffer.deallocate()
        lazy.deallocate()
    }

    // MARK: VCPUBackend

    public func readState() throws(BackendError) -> CPUState {
        var state = s.pointee
        state.msrs.tsc = readTSC()
        return state
    }

    public func writeState(_ state: CPUState) throws(BackendError) {
        s.pointee = state
        lazyFlags = .none   // (never set outside `runInstructions`)
        tscOffset = state.msrs.tsc &- hostTSC()
        pendingIn = nil
        clearMMIOLog()
        mmioAwaitingValue = false
        lastLimitViolation = nil
        refreshMode()
        tlb.flushAll()
    }

    public func kick() { kicked.store(true, ordering: .relaxed) }

    /// Forgets every decoded instruction of this vCPU (after another backend ran the guest).
    public func flushDecodeCache() {
        for i in 0..<Self.cacheSize { cache[i].tag = .max }
        flushTraces()
    }

    /// Tells the decode caches that something other than an interpreter vCPU (a loader,
    /// a test harness, another backend) wrote `length` bytes at `physical`.
    public func memoryWritten(at physical: UInt64, length: Int) {
        guard length > 0 else { return }
        for page in (physical >> 12)...((physical &+ UInt64(length) &- 1) >> 12) {
            codePages.noteWrite(page: Int(truncatingIfNeeded: page))
        }
    }

    public func translate(linear: UInt64) -> UInt64? {
        guard paging else { return linear }
        return try? walk(linear, access: .read, user: false, setBits: false).physical
    }

    var tscOffset: UInt64 = 0
    func hostTSC() -> UInt64 {
        if let timeSource {
            // `--clock instructions`: machine time moves on only between runs, when the
            // machine adds the instructions retired. A loop that polls the TSC (Linux's
            // `delay_tsc`, with no timer armed to end the run) would see it stand still:
            // the block ends here, so the next read sees the instructions since.
            endBlock = true
            return timeSource()
        }
        let ns = TimerDeadline.hostNow()
        if tscKHz == 1_000_000 { return ns }
        // ns * kHz / 10^6, in two parts so that the product cannot overflow.
        return (ns / 1_000_000) &* tscKHz &+ (ns % 1_000_000) &* tscKHz / 1_000_000
    }
    func readTSC() -> UInt64 { hostTSC() &+ tscOffset }

    /// Runs until an exit: port or MMIO access, HLT, a kick, a triple fault, the limit.
    public func run() throws(BackendError) -> VCPUExit {
        if let p = pendingIn {
            pendingIn = nil
            completeIn(p)
        }
        if mmioAwaitingValue {
            mmioAwaitingValue = false
            let last = mmioLog.count - 1
            mmioLog[last].value = load(ioBuffer, 8) & sizeMask(mmioLog[last].size)
        }
        mmioReplayed = 0
        if _slowPath(recordPending) { recordCompleted() }
        // What another engine (KVM) left half-delivered completes before any instruction.
        if _slowPath(s.pointee.events.hasInjection), let exit = deliverInjectedEvents() { return exit }
        // A kick is never cleared before it is seen: one that lands between the caller's
        // stop check and this call still ends this run.
        if stepCompletedByExit {
            stepCompletedByExit = false
            return .debugStep
        }
        // (A block PAUSE ended may have returned for the kick first, leaving it set; the
        // hybrid's own reason for it is the mode.)
        endBlock = exitOnUserMode64 && inUserMode64
        let mask: UInt64 = memory.a20Enabled.load(ordering: .relaxed) ? .max : ~(1 << 20)
        if mask != a20Mask {
            a20Mask = mask
            tlb.flushAll()
        }
        while true {
            // Not in the middle of an instruction restarted after an MMIO exit: it has not
            // retired, and delivering first would run its device accesses twice.
            if mmioLog.isEmpty, let controller = interruptController, let exit = takeInterrupt(controller) { return exit }
            // An instruction restarted after an MMIO exit runs alone, so that its log is
            // emptied as soon as it completes.
            var budget = singleStep || !mmioLog.isEmpty || hasBreakpoints ? 1 : 4096
            if _slowPath(hasBreakpoints) && mmioLog.isEmpty && atBreakpoint() { return .debugStep }
            if retired &+ UInt64(budget) > instructionLimit {
                budget = Int(instructionLimit &- retired)
                if budget <= 0 { return .instructionLimit }
            }
            if _slowPath(retired &+ UInt64(budget) > yieldAt) {
                if retired >= yieldAt { return .interrupted }
                budget = Int(yieldAt &- retired)
            }
            let start = budget
            do throws(Fault) {
                if _slowPath(recorder != nil) {
                    try runRecorded(&budget)
                } else {
                    try runInstructions(&budget)
                }
            } catch {
                retired &+= UInt64(start - budget)
                if error.vector == Fault.exitVector {
                    if exitRestartsInstruction {
                        exitRestartsInstruction = false
                        if _slowPath(logAccesses) { accessLog.removeSubrange(accessLogMark...) }
                        return pendingExit
                    }
                    retired &+= 1   // the instruction that exited has retired (or will on completion)
                    if singleStep { stepCompletedByExit = true }
                    if recorder != nil { recordPending = true }
                    return pendingExit
                }
                let exit = deliverException(error)
                if exitRestartsInstruction {
                    // Delivering the exception touched MMIO (an IDT or stack in the device
                    // window): the instruction faults again and the delivery replays.
                    exitRestartsInstruction = false
                    return exit ?? .interrupted
                }
                clearMMIOLog()
                if let recorder { recordFault(recorder) }
                if let exit { return exit }
                if singleStep { return .debugStep }
                if eventWaiting { return .interrupted }
                continue
            }
            // (A trace that fills up stops recording before the budget is spent.)
            retired &+= UInt64(start &- budget)
            if _slowPath(singleStep), let f = injectedFault, f.op == lastOp { s.pointee.rflags ^= f.flags }
            if _slowPath(!mmioLog.isEmpty) { clearMMIOLog() }
            if singleStep { return .debugStep }
            if eventWaiting {
                endBlock = false
                return .interrupted
            }
            if _slowPath(endBlock) {
                endBlock = false
                return .interrupted
            }
        }
    }

    /// Between blocks: whether the shared loop has something to do for this vCPU — a
    /// kick from another thread, or its own timer due.
    @inline(__always)
    var eventWaiting: Bool {
        if kicked.exchange(false, ordering: .relaxed) { return true }
        if let ownTimer, _slowPath(ownTimer.isDue) { return true }
        return false
    }

    /// Whether the next instruction is at a debugger breakpoint (other than the one the
    /// vCPU resumes from, which it passes once).
    @inline(never)
    func atBreakpoint() -> Bool {
        let rip = s.pointee.rip
        let linear = codeBits == 64 ? rip : (seg[1].pointee.base &+ rip) & 0xFFFF_FFFF
        if let skip = breakpointToSkip {
            breakpointToSkip = nil
            if skip == linear { return false }
        }
        return breakpoints.contains(linear)
    }

    /// Delivers a pending external interrupt at this instruction boundary, if the
    /// guest accepts one (IF set, no STI/MOV SS shadow).
    @inline(never)
    func takeInterrupt(_ controller: any InterruptController) -> VCPUExit? {
        var vector: UInt8
        if !nmiBlocked && !interruptShadow && (s.pointee.events.nmiPending || controller.takeNMI(vcpu: index)) {
            vector = 2
            s.pointee.events.nmiPending = false
            nmiBlocked = true   // until the handler's IRET
        } else {
            guard s.pointee.rflags & (1 << 9) != 0, !interruptShadow, controller.hasPendingInterrupt(vcpu: index),
                  let v = controller.acknowledgeInterrupt(vcpu: index) else { return nil }
            vector = v
        }
        return deliverExternal(vector)
    }

    /// Delivers external interrupt (or NMI) `vector` at this instruction boundary.
    @inline(never)
    func deliverExternal(_ vector: UInt8) -> VCPUExit? {
        do throws(Fault) {
            let event = InterruptEvent(kind: .external, vector: vector, errorCode: nil, cs: seg[1].pointee.selector, rip: s.pointee.rip)
            if logAccesses && recorder == nil { eventLog.append(event) }
            try deliver(vector: vector, errorCode: nil, returnAddress: s.pointee.rip, software: false)
            if let recorder {
                recorder.interrupted(event, s)
                accessLog.removeAll(keepingCapacity: true)
            }
        } catch {
            if error.vector == Fault.exitVector { return pendingExit }
            return deliverException(error) ?? (singleStep && interruptIsOwnStep ? .debugStep : nil)
        }
        return singleStep && interruptIsOwnStep ? .debugStep : nil
    }

    // MARK: Mode

    /// IA-32e mode (IA32_EFER.LMA): 64-bit mode *or* compatibility mode. What the system
    /// structures follow — 16-byte IDT and call gates, the 64-bit TSS, 64-bit descriptor
    /// table bases, a far transfer's L bit — where `longMode` (64-bit mode: LMA and CS.L)
    /// governs addressing and operand sizes.
    var ia32eMode: Bool { s.pointee.efer & EFER.lma != 0 }

    /// Recomputes what the hot paths derive from CR0, EFER, RFLAGS.VM and CS/SS.
    func refreshMode() {
        let st = s.pointee
        protectedMode = st.cr0 & CR0.pe != 0
        let wasPaging = paging
        paging = protectedMode && st.cr0 & CR0.pg != 0
        // (Identity entries and translations never share the TLB.)
        if paging != wasPaging { tlb.flushAll() }
        longMode = st.efer & EFER.lma != 0 && st.cs.long && protectedMode
        if longMode { codeBits = 64 } else if protectedMode && st.rflags & (1 << 17) == 0 && st.cs.defaultBig { codeBits = 32 } else { codeBits = 16 }
        ipMask = codeBits == 64 ? .max : codeBits == 32 ? 0xFFFF_FFFF : 0xFFFF
        if !protectedMode { cpl = 0 } else if st.rflags & (1 << 17) != 0 { cpl = 3 } else { cpl = UInt8(st.cs.selector & 3) }
        if longMode { stackMask = .max } else { stackMask = st.ss.defaultBig ? 0xFFFF_FFFF : 0xFFFF }
        if _slowPath(exitOnUserMode64) && cpl == 3 && codeBits == 64 { endBlock = true }
    }

    var virtual8086: Bool { s.pointee.rflags & (1 << 17) != 0 && protectedMode }

    // MARK: Fetch

    /// Set in the tag of an instruction that runs into the next page, so that the fast path
    /// never takes it: `decodeInto` checks the second page first (physical addresses have
    /// fewer than 63 bits).
    static let crossPageTag: UInt64 = 1 << 63

    /// The linear address of the first byte of the page after `linear`'s.
    @inline(__always)
    func nextPage(_ linear: UInt64) -> UInt64 {
        let next = (linear | 0xFFF) &+ 1
        return codeBits == 64 ? next : next & 0xFFFF_FFFF
    }

    /// A cached instruction that runs into the next page is still good if that linear page
    /// still maps the same physical page and nothing has written it since.
    @inline(never)
    func secondPageUnchanged(_ entry: UnsafeMutablePointer<CacheEntry>, linear: UInt64) -> Bool {
        let next = nextPage(linear)
        guard let physical = paging ? try? translateLinear(next, .execute) : next & a20Mask else { return false }
        let page = Int(truncatingIfNeeded: physical >> 12)
        return page == entry.pointee.page2 && codePages.current(page) == entry.pointee.version2
    }

    /// (A stored property, not a `static let`: that would cost a `swift_once` check on
    /// every fetch.)
    @inline(__always)
    func instructionPointer(_ entry: UnsafeMutablePointer<CacheEntry>) -> UnsafeMutablePointer<DecodedInstruction> {
        (UnsafeMutableRawPointer(entry) + instructionOffset).assumingMemoryBound(to: DecodedInstruction.self)
    }

    @inline(never)
    func decodeInto(_ entry: UnsafeMutablePointer<CacheEntry>, key: UInt64, rip: UInt64, linear: UInt64, physical: UInt64) throws(Fault) -> UnsafeMutablePointer<DecodedInstruction> {
        if entry.pointee.tag == key | Self.crossPageTag
            && entry.pointee.version == codePages.current(Int(truncatingIfNeeded: physical >> 12))
            && secondPageUnchanged(entry, linear: linear) {
            return instructionPointer(entry)
        }
        // The pages are marked as holding code before their bytes are read (CodePages): the
        // lines of the longest instruction that can start here.
        let firstPart = Int(0x1000 - (linear & 0xFFF))
        let version = codePages.tagForDecode(Int(truncatingIfNeeded: physical >> 12), offset: Int(physical & 0xFFF), length: min(15, firstPart))
        var page2 = -1
        var version2: UInt32 = 0
        var bytes = (UInt64(0), UInt64(0))
        var count = 0
        try withUnsafeMutableBytes(of: &bytes) { (buffer) throws(Fault) in
            // Read up to 15 bytes, stopping quietly at an unmapped page or the CS limit:
            // the decoder then sees a truncated instruction only if it really is one.
            let limit = codeBits == 64 ? UInt64.max : UInt64(seg[1].pointee.limit)
            while count < 15 {
                if codeBits != 64 && rip &+ UInt64(count) > limit { break }
                let la = codeBits == 64 ? linear &+ UInt64(count) : (linear &+ UInt64(count)) & 0xFFFF_FFFF
                if count == firstPart {
                    guard let next = paging ? try? translateLinear(la, .execute) : la & a20Mask else { break }
                    page2 = Int(truncatingIfNeeded: next >> 12)
                    version2 = codePages.tagForDecode(page2, offset: 0, length: 15 - firstPart)
                    guard let b = try? readLinear(la, 1, .execute) else { break }
                    buffer[count] = UInt8(truncatingIfNeeded: b)
                } else {
                    buffer[count] = UInt8(truncatingIfNeeded: try readLinear(la, 1, .execute))
                }
                count += 1
            }
        }
        let decoded = withUnsafeBytes(of: &bytes) { decoder.decode(UnsafeRawBufferPointer(rebasing: $0[0..<count]), bits: codeBits) }
        guard let decoded else {
            // Not an instruction: #UD, or #GP/#PF if it ran off the segment or the page.
            if count < 15 && codeBits != 64 && rip &+ UInt64(count) > UInt64(seg[1].pointee.limit) { throw .gp() }
            if count == firstPart && count < 15 && paging,
               let whole = withUnsafeBytes(of: &bytes, { decoder.decode(UnsafeRawBufferPointer(rebasing: $0[0..<15]), bits: codeBits) }),
               Int(whole.length) > count {
                // A real instruction whose rest is on a page that is not there: the fetch
                // from that page faults, as on hardware.
                _ = try translateLinear(nextPage(linear), .execute)
            }
            throw .ud()
        }
        entry.pointee.version = version
        if Int(decoded.length) > firstPart {
            entry.pointee.tag = key | Self.crossPageTag
            entry.pointee.page2 = page2
            entry.pointee.version2 = version2
        } else {
            entry.pointee.tag = key
        }
        entry.pointee.instruction = decoded
        entry.pointee.instruction.form = FastForm.of(decoded)
        entry.pointee.instruction.condition = UInt8(truncatingIfNeeded: decoded.op.conditionCode ?? 0)
        return instructionPointer(entry)
    }
}

extension InterpreterVCPU {
    // (In an extension: `@_transparent` is not allowed in a class body.)
    /// The linear and physical address of the instruction at CS:`rip`, checked against
    /// the CS limit and the page tables.
    @_transparent
    func codeAddress(_ rip: UInt64) throws(Fault) -> (linear: UInt64, physical: UInt64) {
        let cs = seg[1]
        if codeBits != 64 && rip > UInt64(cs.pointee.limit) { throw .gp() }
        let linear = codeBits == 64 ? rip : (cs.pointee.base &+ rip) & 0xFFFF_FFFF
        return (linear, paging ? try translateLinear(linear, .execute) : linear & a20Mask)
    }

    @_transparent
    func fetch() throws(Fault) -> UnsafeMutablePointer<DecodedInstruction> {
        let rip = s.pointee.rip
        let (linear, physical) = try codeAddress(rip)
        let mode = UInt64(codeBits >> 5)   // 0, 1, 2
        let key = physical << 2 | mode
        let entry = cache + Int((physical ^ (physical >> 14)) & UInt64(Self.cacheSize - 1))
        let page = Int(truncatingIfNeeded: physical >> 12)
        if _fastPath(entry.pointee.tag == key && entry.pointee.version == codePages.current(page)) {
            return instructionPointer(entry)
        }
        return try decodeInto(entry, key: key, rip: rip, linear: linear, physical: physical)
    }
}

/// One MMIO access of the instruction being executed.
struct MMIOAccess {
    var address: UInt64
    var size: Int
    var isWrite: Bool
    /// The value written, or the value the device answered.
    var value: UInt64
}

/// Where an `in`'s value goes once the shared loop has read the port.
enum PendingIn {
    case register(size: Int)
    /// `ins`: the string element's destination, already checked.
    case memory(linear: UInt64, size: Int)
}
