#if canImport(Glibc)
import Glibc
#endif
import X86

/// The translator: a trace that has run `translationThreshold` times is turned into x86-64
/// host code — its longest prefix of instructions with a template here (the fast forms of
/// 32- and 64-bit code: moves, ALU operations, shifts by a constant, lea, imul, movzx/movsx,
/// push/pop of registers, setcc, cmovcc, and a closing jcc or jmp) — which `runInstructions`
/// calls instead of executing those instructions one by one.
///
/// Exactness, the rules the templates keep:
/// - Translated code shares everything with the interpreter: registers and RIP in the CPU
///   state, the lazy-flag record (`LazyFlagRecord`, the same kinds), the TLB of host
///   pointers (read, never filled), the code-page words. It calls nothing.
/// - An instruction that could fault or needs the slow path (a segment check that does not
///   pass at once, a TLB miss, MMIO) is not started: the code stores RIP = that instruction
///   and returns how many instructions retired; the interpreter runs the rest of the trace,
///   that instruction first, and raises the fault or fills the TLB as always.
/// - A store that hits lines of a page holding decoded code bumps the page's version as
///   `CodePages.noteWrite` does, and the code returns after that instruction (the trace may
///   just have changed itself).
/// - Flags a later instruction of the same translation overwrites before anything could
///   read them, or any return to the interpreter, are never recorded.
/// - Only where the mode matches the one it was translated for: 64-bit code, or 32-bit code
///   with a 32-bit stack (`translationKey`); addresses of the default size only.
/// The caller never runs a translation when the budget is smaller than the trace, when
/// single-stepping, or when accesses are logged (traces, diff): those run instruction by
/// instruction as before.
enum TranslatedTrace {
    /// (CPU state, TLB table of the current privilege, lazy-flag record, code-page words,
    /// budget left after this trace) → instructions retired in the low 32 bits (RIP
    /// already stored); the high bits are not 0 when it went on into other traces.
    typealias Entry = @convention(c) (UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer, Int) -> UInt64

    /// A slot's value when its trace has no template for its first instruction (never
    /// tried again until the trace is rebuilt). Code addresses are 16-byte aligned, and
    /// the low bits hold the `translationKey` the code was made for (1 or 2).
    static let untranslatable: UInt = 8
}

/// Where things are, for the templates (all offsets from the pointers the code receives).
struct TranslatorLayout {
    let gpr = MemoryLayout<CPUState>.offset(of: \CPUState.gpr)!
    let rip = MemoryLayout<CPUState>.offset(of: \CPUState.rip)!
    let segments: [Int] = [\CPUState.es, \CPUState.cs, \CPUState.ss, \CPUState.ds, \CPUState.fs, \CPUState.gs].map { MemoryLayout<CPUState>.offset(of: $0)! }
    let segmentBase = MemoryLayout<SegmentRegister>.offset(of: \SegmentRegister.base)!
    let segmentLimit = MemoryLayout<SegmentRegister>.offset(of: \SegmentRegister.limit)!
    let segmentAttributes = MemoryLayout<SegmentRegister>.offset(of: \SegmentRegister.attributes)!
    let lazyKind = MemoryLayout<LazyFlagRecord>.offset(of: \LazyFlagRecord.kind)!
    let lazySize = MemoryLayout<LazyFlagRecord>.offset(of: \LazyFlagRecord.size)!
    let lazyA = MemoryLayout<LazyFlagRecord>.offset(of: \LazyFlagRecord.a)!
    let lazyB = MemoryLayout<LazyFlagRecord>.offset(of: \LazyFlagRecord.b)!
    let lazyResult = MemoryLayout<LazyFlagRecord>.offset(of: \LazyFlagRecord.result)!
    let tlbStride = MemoryLayout<TLB.Entry>.stride
    let tlbFrame = MemoryLayout<TLB.Entry>.offset(of: \TLB.Entry.frame)!
    let tlbReadTag = MemoryLayout<TLB.Entry>.offset(of: \TLB.Entry.readTag)!
    let tlbWriteTag = MemoryLayout<TLB.Entry>.offset(of: \TLB.Entry.writeTag)!
    let tlbHostDelta = MemoryLayout<TLB.Entry>.offset(of: \TLB.Entry.hostDelta)!
    let headTag = MemoryLayout<TraceHead>.offset(of: \TraceHead.tag)!
    let headVersion = MemoryLayout<TraceHead>.offset(of: \TraceHead.version)!
    let headBytes = MemoryLayout<TraceHead>.offset(of: \TraceHead.bytes)!
    let headCount = MemoryLayout<TraceHead>.offset(of: \TraceHead.count)!
    let csLimit = MemoryLayout<CPUState>.offset(of: \CPUState.cs)! + MemoryLayout<SegmentRegister>.offset(of: \SegmentRegister.limit)!
}

/// Where a translation is and what it may jump to: a relative jump or branch, or the end
/// of a full trace, goes straight on into the translation of the trace at its target
/// when that is on the same page, valid (the checks of `successor`), translated for the
/// same mode, and the budget covers it — without returning to the run loop.
struct TranslationSite {
    /// The trace's first byte, and its decode-cache key's mode bits.
    let physical: UInt64
    let mode: UInt64
    let key: UInt
    let heads: UnsafeMutablePointer<TraceHead>
    let slotOf: (UInt64) -> Int
    let translations: UnsafeMutablePointer<UInt>
    /// The page's word in the code-page table (its index there).
    let wordIndex: Int
    /// The trace's code-page version, the vCPU (unretained) and the function that runs one
    /// instruction on the interpreter for the translation (`interpretForTranslation`).
    var version: UInt32 = 0
    var vcpu: UInt = 0
    var interpret: UInt = 0
    /// `conditionForTranslation` and `materializeForTranslation`.
    var condition: UInt = 0
    var materialize: UInt = 0
}

/// What one instruction of a translation does, as far as the flag analysis cares.
private struct Plan {
    /// The lazy-flag kind it records (nil: leaves the flags alone).
    var sets: LazyFlags? = nil
    var readsFlags = false
    /// It may return to the interpreter before doing anything (a memory access).
    var mayReturnBefore = false
    /// It may return to the interpreter after itself (a store into decoded code).
    var mayReturnAfter = false
    /// No template: the interpreter runs it, called from the translation.
    var interpreted = false

    /// An instruction the translation has the interpreter run: it may read and set the
    /// flags (any kind), fault, or write into the code.
    static let interpreter = Plan(sets: nil, readsFlags: true, mayReturnBefore: true, mayReturnAfter: true, interpreted: true)
}

/// Translates one trace. Host registers: RBX the CPU state, R12 RIP at entry, R13 the
/// lazy-flag record, R14 the TLB table, R15 the code-page words; R10/R11 hold a store's
/// linear address and TLB entry until its code-page check at the instruction's end; RAX,
/// RCX, RDX, RSI, RDI, R8, R9 are scratch.
struct TraceTranslator {
    typealias R = HostAssembler.Register
    typealias Memory = HostAssembler.Memory

    let layout: TranslatorLayout
    let codeBits: Int
    let pageCount: Int
    let site: TranslationSite
    var a = HostAssembler()
    /// Where a chained-to translation is entered (past its prologue): the same in every
    /// translation.
    static let chainEntry: Int = {
        var t = TraceTranslator(layout: TranslatorLayout(), codeBits: 64, pageCount: 0, site: nil)
        t.prologue()
        return t.a.position
    }()
    /// Byte offset of each instruction from the trace's start (and of the end).
    var offsets: [Int] = []
    /// Jumps to "return to the interpreter with n instructions retired": (rel32 position, n).
    var exits: [(at: Int, retired: Int)] = []
    /// Jumps to "return with RAX = n + chained" without storing RIP (the interpreter did).
    var rawExits: [(at: Int, retired: Int)] = []
    /// Jumps to the code-write handler of instruction n: (rel32 position, n, resume position).
    var codeWrites: [(at: Int, instruction: Int, resume: Int)] = []

    init(layout: TranslatorLayout, codeBits: Int, pageCount: Int, site: TranslationSite?) {
        self.layout = layout
        self.codeBits = codeBits
        self.pageCount = pageCount
        self.site = site ?? TranslationSite(physical: 0, mode: 0, key: 0, heads: UnsafeMutablePointer(bitPattern: 16)!, slotOf: { _ in 0 },
                                            translations: UnsafeMutablePointer(bitPattern: 16)!, wordIndex: 0)
    }

    /// Saves the host's callee-saved registers, keeps the budget at [RSP], sets up the
    /// fixed registers; RBP counts what chained-from translations retired.
    mutating func prologue() {
        for r: R in [.rbx, .rbp, .r12, .r13, .r14, .r15, .r8] { a.push(r) }
        a.move(.rbx, .rdi)
        a.move(.r14, .rsi)
        a.move(.r13, .rdx)
        a.move(.r15, .rcx)
        a.moveImmediate(.rbp, 0)
    }

    // MARK: Which instructions

    /// The kind of flags `d` records and what it reads; nil when there is no template for
    /// it (given the kind of the last flags recorded before it in this translation).
    private func plan(_ d: DecodedInstruction, lastFlags: (kind: LazyFlags, size: Int)?) -> Plan? {
        let addressSize = codeBits / 8
        func memoryOK(_ o: Operand) -> Bool {
            guard d.addressSize == addressSize else { return false }
            if o.base == Operand.ripBase { return codeBits == 64 && Int32(exactly: o.value) != nil && o.index == Operand.noRegister }
            if o.base != Operand.noRegister && o.base >= 16 { return false }
            if o.index != Operand.noRegister && o.index >= 16 { return false }
            return codeBits != 64 || Int32(exactly: o.value) != nil
        }
        func aluKind(_ op: Op) -> LazyFlags? {
            switch op {
            case .add: return .add
            case .sub, .cmp: return .sub
            case .and, .test, .or, .xor: return .logic
            default: return nil   // adc, sbb: their carry in is not known here
            }
        }
        // (A condition the templates cannot evaluate from a known kind is asked of the
        // interpreter at run time: `conditionForTranslation`.)
        func reads(_ cc: Int) -> Plan? { Plan(readsFlags: true) }
        let o0 = d.o0, o1 = d.o1
        switch d.form {
        case .generic:
            return d.op == .nop || d.op == .endbr64 || d.op == .endbr32 ? Plan() : nil
        case .movRR8, .movRR16, .movRR32, .movRR64, .movRI8, .movRI16, .movRI32, .movRI64: return Plan()
        case .movRM8, .movRM16, .movRM32, .movRM64:
            return memoryOK(o1) ? Plan(mayReturnBefore: true) : nil
        case .movMR8, .movMR16, .movMR32, .movMR64:
            return memoryOK(o0) ? Plan(mayReturnBefore: true, mayReturnAfter: true) : nil
        case .movMI8, .movMI16, .movMI32, .movMI64:
            guard memoryOK(o0), o0.size <= 4 || Int32(exactly: o1.value) != nil else { return nil }
            return Plan(mayReturnBefore: true, mayReturnAfter: true)
        case .aluRR8, .aluRR16, .aluRR32, .aluRR64, .aluRI8, .aluRI16, .aluRI32, .aluRI64:
            guard let k = aluKind(d.op) else { return nil }
            return Plan(sets: k)
        case .aluRM8, .aluRM16, .aluRM32, .aluRM64:
            guard let k = aluKind(d.op), memoryOK(o1) else { return nil }
            return Plan(sets: k, mayReturnBefore: true)
        case .aluMR8, .aluMR16, .aluMR32, .aluMR64, .aluMI8, .aluMI16, .aluMI32, .aluMI64:
            guard let k = aluKind(d.op), memoryOK(o0) else { return nil }
            let writes = d.op != .cmp && d.op != .test
            return Plan(sets: k, mayReturnBefore: true, mayReturnAfter: writes)
        case .negR8, .negR16, .negR32, .negR64: return Plan(sets: .sub)
        case .shiftRI8, .shiftRI16, .shiftRI32, .shiftRI64:
            guard d.op == .shl || d.op == .sal || d.op == .shr || d.op == .sar else { return nil }
            return Plan(sets: shiftCount(d) == 0 ? nil : .shift)
        case .leaR16, .leaR32, .leaR64:
            return memoryOK(o1) ? Plan() : nil
        case .pushR32, .pushR64:   // (a 32- or 64-bit stack only: not in 16-bit code)
            return codeBits == 16 ? nil : Plan(mayReturnBefore: true, mayReturnAfter: true)
        case .popR32, .popR64:
            return codeBits == 16 ? nil : Plan(mayReturnBefore: true)
        case .imulRR16, .imulRR32, .imulRR64, .imulRRI16, .imulRRI32, .imulRRI64: return Plan(sets: .multiply)
        case .imulRM16, .imulRM32, .imulRM64, .imulRMI16, .imulRMI32, .imulRMI64:
            return memoryOK(o1) ? Plan(sets: .multiply, mayReturnBefore: true) : nil
        case .cmovRR16, .cmovRR32, .cmovRR64:
            // (Its value is held in a register the run-time condition's call would clobber.)
            guard let last = lastFlags, Self.conditionSupported(Int(d.condition), last.kind) else { return nil }
            return reads(Int(d.condition))
        case .cmovRM16, .cmovRM32, .cmovRM64:
            guard let last = lastFlags, Self.conditionSupported(Int(d.condition), last.kind) else { return nil }
            guard memoryOK(o1), var p = reads(Int(d.condition)) else { return nil }
            p.mayReturnBefore = true
            return p
        case .setccR: return reads(Int(d.condition))
        case .movzxRB, .movzxRW, .movsxRB32, .movsxRB64, .movsxRW32, .movsxRW64, .movsxdR: return Plan()
        case .movzxMB, .movzxMW, .movsxMB32, .movsxMB64, .movsxMW32, .movsxMW64, .movsxdM:
            return memoryOK(o1) ? Plan(mayReturnBefore: true) : nil
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg:
            guard jumpOK(d) else { return nil }
            return reads(Int(d.form.rawValue - FastForm.jo.rawValue))
        case .jmpRel:
            return jumpOK(d) ? Plan() : nil
        case .incR8, .incR16, .incR32, .incR64: return Plan(sets: .inc, readsFlags: true)   // (CF kept: RFLAGS's)
        case .decR8, .decR16, .decR32, .decR64: return Plan(sets: .dec, readsFlags: true)
        default: return nil   // the 8-bit forms that never occur
        }
    }

    /// A relative jump whose target is RIP-masked as `storeRIP` masks it (16 bits in 16-bit
    /// code, else no 16-bit operand size).
    private func jumpOK(_ d: DecodedInstruction) -> Bool {
        (codeBits == 16 ? d.operandSize == 2 : d.operandSize != 2) && Int32(exactly: d.relative) != nil
    }

    /// Which conditions the templates evaluate after each kind of recorded flags.
    static func conditionSupported(_ cc: Int, _ kind: LazyFlags) -> Bool {
        switch kind {
        case .add, .sub, .logic: return true
        case .inc, .dec: return ![1, 3].contains(cc >> 1)   // all but those that read CF
        case .multiply: return [0, 1, 2, 4].contains(cc >> 1)   // o, b, e, s
        case .shift: return [0, 1, 2, 4, 5].contains(cc >> 1)   // o, b, e, s, p
        default: return false
        }
    }

    private func shiftCount(_ d: DecodedInstruction) -> UInt64 {
        (d.operandCount > 1 ? UInt64(bitPattern: d.o1.value) : 1) & (d.o0.size == 8 ? 0x3F : 0x1F)
    }

    // MARK: Translation

    /// Host code for the longest prefix of `instructions` with templates; nil when the
    /// first has none. Returns the code and the number of instructions it covers.
    mutating func translate(_ instructions: UnsafeMutablePointer<DecodedInstruction>, count: Int) -> (code: [UInt8], covered: Int)? {
        var plans: [Plan] = []
        var last: (kind: LazyFlags, size: Int)? = nil
        for i in 0..<count {
            let d = instructions[i]
            let p = plan(d, lastFlags: last) ?? .interpreter
            plans.append(p)
            if p.interpreted { last = nil } else if let k = p.sets { last = (k, Int(d.o0.size)) }
        }
        let n = plans.count
        // Nothing to gain where the interpreter would run every instruction anyway.
        guard plans.contains(where: { !$0.interpreted }) else { return nil }
        offsets = [0]
        for i in 0..<n { offsets.append(offsets[i] + Int(instructions[i].length)) }

        // Which recorded flags can be seen: backwards, whether the flags after each
        // instruction are needed (by a reader, or a return to the interpreter).
        var record = [Bool](repeating: false, count: n)
        var needed = true   // the end returns
        for i in stride(from: n - 1, through: 0, by: -1) {
            if plans[i].mayReturnAfter { needed = true }
            if plans[i].sets != nil {
                record[i] = needed
                needed = false
            }
            if plans[i].readsFlags || plans[i].mayReturnBefore { needed = true }
        }

        prologue()
        // (The chain entry: RIP is the trace's first instruction.)
        a.load(.r12, Memory(base: .rbx, disp: Int32(layout.rip)), size: 8)

        var lastFlags: (kind: LazyFlags, size: Int)? = nil
        var endsWithJump = false
        for i in 0..<n {
            let d = instructions[i]
            if plans[i].interpreted {
                if callInterpreter(instructions + i, i, last: i == n - 1) {
                    endsWithJump = true
                    break
                }
                lastFlags = nil
                continue
            }
            if d.form.isRelativeBranch {
                emitJump(d, i, lastFlags)
                endsWithJump = true
                break
            }
            emit(d, i, record: record[i], lastFlags)
            if let k = plans[i].sets { lastFlags = (k, Int(d.o0.size)) }
        }
        if !endsWithJump { chain(to: offsets[n], retired: n) }

        // Code writes: exact lines, the version bumped, then return after the instruction.
        for w in codeWrites {
            a.patch(w.at, to: a.position)
            emitCodeWriteHandler(instruction: w.instruction, resume: w.resume)
        }
        // Returns to the interpreter, one stub per instruction count.
        var stubs: [Int: Int] = [:]
        var epilogueJumps: [Int] = []
        for e in exits.sorted(by: { $0.retired < $1.retired }) {
            if let at = stubs[e.retired] { a.patch(e.at, to: at); continue }
            stubs[e.retired] = a.position
            a.patch(e.at, to: a.position)
            storeRIP(offset: offsets[e.retired])
            a.lea(.rax, Memory(base: .rbp, disp: Int32(e.retired)))
            epilogueJumps.append(a.jump())
        }
        for e in rawExits {
            a.patch(e.at, to: a.position)
            a.lea(.rax, Memory(base: .rbp, disp: Int32(e.retired)))
            epilogueJumps.append(a.jump())
        }
        for j in epilogueJumps { a.patch(j, to: a.position) }
        epilogueFromHere()
        return (a.code, n)
    }

    /// Instruction `i` (at `d`) run by the interpreter: RIP stored first (it reads it);
    /// on a fault (kept by the vCPU for the run loop to raise) the translation returns
    /// with `i` retired. A last instruction that may branch ends the translation where it
    /// left RIP (returns true); otherwise the translation goes on, unless the instruction
    /// wrote into this trace's page (a new version: returns after it).
    private mutating func callInterpreter(_ d: UnsafeMutablePointer<DecodedInstruction>, _ i: Int, last: Bool) -> Bool {
        storeRIP(offset: offsets[i])
        a.moveImmediate(.rdi, UInt64(site.vcpu))
        a.moveImmediate(.rsi, UInt64(UInt(bitPattern: d)))
        a.moveImmediate(.rax, UInt64(site.interpret))
        a.call(.rax)
        a.alu(.cmp, .register(.rax), immediate: 1, size: 4)
        rawExits.append((a.jump(if: 4), i))   // je: it faulted
        rawExits.append((a.jump(if: 7), i + 1))   // ja: it ended the block (RIP is next)
        if last && !d.pointee.continuesTrace {
            rawExits.append((a.jump(), i + 1))
            return true
        }
        a.load(.rcx, Memory(base: .r15, disp: Int32(site.wordIndex * 8)), size: 4)
        a.alu(.cmp, .register(.rcx), immediate: Int32(bitPattern: site.version), size: 4)
        rawExits.append((a.jump(if: 5), i + 1))   // the trace's page was written
        return false
    }

    /// RIP moves to the trace's start + `offset` after `retired` instructions (all of this
    /// trace's): into the translation of the trace there when it may (`TranslationSite`),
    /// else back to the run loop.
    private mutating func chain(to offset: Int, retired: Int) {
        storeRIP(offset: offset)   // (RAX: the new RIP)
        let target = Int64(site.physical & 0xFFF) + Int64(offset)
        let wordDisp = site.wordIndex * 8
        guard site.key != 0, target >= 0, target < 0x1000, wordDisp <= Int(Int32.max) else {
            a.lea(.rax, Memory(base: .rbp, disp: Int32(retired)))
            epilogueFromHere()
            return
        }
        let physical = site.physical &+ UInt64(bitPattern: Int64(offset))
        let head = site.heads + site.slotOf(physical)
        var fail: [Int] = []
        a.moveImmediate(.rsi, UInt64(UInt(bitPattern: head)))
        a.moveImmediate(.rcx, TraceHead.tag(key: physical << 2 | site.mode))
        a.alu(.cmp, .rcx, Memory(base: .rsi, disp: Int32(layout.headTag)))
        fail.append(a.jump(if: 5))
        a.load(.rcx, Memory(base: .rsi, disp: Int32(layout.headVersion)), size: 4)
        a.alu(.cmp, .rcx, Memory(base: .r15, disp: Int32(wordDisp)), size: 4)
        fail.append(a.jump(if: 5))
        if codeBits != 64 {   // the trace within CS's limit
            a.load(.rcx, Memory(base: .rsi, disp: Int32(layout.headBytes)), size: 2)
            a.lea(.rcx, Memory(base: .rax, index: .rcx, disp: -1))
            a.load(.rdx, Memory(base: .rbx, disp: Int32(layout.csLimit)), size: 4)
            a.alu(.cmp, .rcx, .rdx)
            fail.append(a.jump(if: 7))   // ja
            if codeBits == 16 {   // (and IP's range: `codeLimit`)
                a.alu(.cmp, .register(.rcx), immediate: 0xFFFF, size: 8)
                fail.append(a.jump(if: 7))
            }
        }
        a.load(.rcx, Memory(base: .rsi, disp: Int32(layout.headCount)), size: 1)
        a.load(.rdx, Memory(base: .rsp, disp: 0), size: 8)
        a.alu(.sub, .rdx, .rcx)
        fail.append(a.jump(if: 2))   // jb: over budget
        a.moveImmediate(.rcx, UInt64(UInt(bitPattern: site.translations + site.slotOf(physical))))
        a.load(.rcx, Memory(base: .rcx, disp: 0), size: 8)
        a.move(.rdi, .rcx, size: 4)
        a.alu(.and, .register(.rdi), immediate: 15, size: 4)
        a.alu(.cmp, .register(.rdi), immediate: Int32(site.key), size: 4)
        fail.append(a.jump(if: 5))
        a.store(Memory(base: .rsp, disp: 0), .rdx, size: 8)
        a.moveImmediate(.rdi, 1 << 32 | UInt64(retired))
        a.alu(.add, .rbp, .rdi)
        a.alu(.and, .register(.rcx), immediate: -16, size: 8)
        a.alu(.add, .register(.rcx), immediate: Int32(Self.chainEntry), size: 8)
        a.jump(to: .rcx)
        for f in fail { a.patch(f, to: a.position) }
        a.lea(.rax, Memory(base: .rbp, disp: Int32(retired)))
        epilogueFromHere()
    }

    // MARK: Pieces

    private func reg(_ g: UInt8) -> Memory { Memory(base: .rbx, disp: Int32(layout.gpr + 8 * Int(g))) }

    private func segment(_ s: UInt8, _ field: Int) -> Memory { Memory(base: .rbx, disp: Int32(layout.segments[Int(s)] + field)) }

    private func lazy(_ field: Int) -> Memory { Memory(base: .r13, disp: Int32(field)) }

    /// Guest register `g` (0-15) as `size` bytes, zero-extended into `r`.
    private mutating func loadGuest(_ r: R, _ g: UInt8, _ size: Int) { a.load(r, reg(g), size: size) }

    /// Writes `r`'s low `size` bytes to guest register `g` as hardware does (a 32-bit write
    /// clears bits 63-32; 8- and 16-bit writes keep the rest).
    private mutating func storeGuest(_ g: UInt8, _ size: Int, _ r: R) {
        a.store(reg(g), r, size: size)
        if size == 4 { a.storeImmediate(Memory(base: .rbx, disp: Int32(layout.gpr + 8 * Int(g) + 4)), 0, size: 4) }
    }

    /// RIP = RIP at entry + `offset` (wrapped to 32 bits outside 64-bit code, 16 in 16-bit code).
    private mutating func storeRIP(offset: Int) {
        a.lea(.rax, Memory(base: .r12, disp: Int32(offset)), size: codeBits == 64 ? 8 : 4)
        if codeBits == 16 { mask(.rax, 2) }
        a.store(Memory(base: .rbx, disp: Int32(layout.rip)), .rax, size: 8)
    }

    /// A jump to "return before instruction i".
    private mutating func bail(_ i: Int, if condition: UInt8) {
        exits.append((a.jump(if: condition), i))
    }

    private mutating func mask(_ r: R, _ size: Int) {
        switch size {
        case 1: a.alu(.and, .register(r), immediate: 0xFF, size: 4)
        case 2: a.alu(.and, .register(r), immediate: 0xFFFF, size: 4)
        case 4: a.move(r, r, size: 4)
        default: break
        }
    }

    /// The effective address of memory operand `o` of instruction `i` into RAX (wrapped to
    /// the address size).
    private mutating func effectiveAddress(_ o: Operand, _ i: Int) {
        let size = codeBits == 64 ? 8 : 4   // (16-bit addresses: 32, then masked)
        if o.base == Operand.ripBase {
            a.lea(.rax, Memory(base: .r12, disp: Int32(offsets[i + 1]) &+ Int32(truncatingIfNeeded: o.value)), size: 8)
            return
        }
        let disp = Int32(truncatingIfNeeded: o.value)
        let hasBase = o.base != Operand.noRegister, hasIndex = o.index != Operand.noRegister
        if !hasBase && !hasIndex {
            a.moveImmediate(.rax, size == 8 ? UInt64(bitPattern: o.value) : UInt64(UInt32(bitPattern: disp)) & (codeBits == 16 ? 0xFFFF : 0xFFFF_FFFF))
            return
        }
        if hasBase { a.load(.r8, reg(o.base), size: 8) } else { a.moveImmediate(.r8, 0) }
        var m = Memory(base: .r8, disp: disp)
        if hasIndex {
            a.load(.r9, reg(o.index), size: 8)
            m.index = .r9
            m.scale = o.scale
        }
        a.lea(.rax, m, size: size)
        if codeBits == 16 { mask(.rax, 2) }
    }

    /// Linear address in RAX (offset `ea` in RAX on entry), then through the TLB: the host
    /// address in RSI, the TLB entry's offset in RDX. Returns before instruction `i` where
    /// the interpreter's fast path would not take the access.
    private mutating func access(segment s: UInt8, size: Int, write: Bool, _ i: Int) {
        if codeBits != 64 {
            // linearAddress's fast path: limit, usable normal segment, writable for writes.
            a.lea(.rdx, Memory(base: .rax, disp: Int32(size - 1)), size: 8)
            a.load(.rcx, segment(s, layout.segmentLimit), size: 4)
            a.alu(.cmp, .rdx, .rcx)
            bail(i, if: 7)   // ja
            a.test(.memory(segment(s, layout.segmentAttributes)), immediate: 0x1_000C, size: 4)
            bail(i, if: 5)   // jnz
            if write {
                a.load(.rcx, segment(s, layout.segmentAttributes), size: 4)
                a.alu(.and, .register(.rcx), immediate: 0xA, size: 4)
                a.alu(.cmp, .register(.rcx), immediate: 2, size: 4)
                bail(i, if: 5)
            }
            a.alu(.add, .rax, segment(s, layout.segmentBase), size: 4)
        } else if s >= Segment.fs {
            a.alu(.add, .rax, segment(s, layout.segmentBase), size: 8)
        }
        // TLB.index(linear >> 12) * stride; the tag of the access's last byte.
        a.move(.rcx, .rax)
        a.shift(.shr, .rcx, 12)
        a.move(.rdx, .rcx)
        a.shift(.shr, .rdx, UInt8(TLB.bits))
        a.alu(.add, .rdx, .rcx)
        a.alu(.and, .register(.rdx), immediate: Int32(TLB.size - 1), size: 4)
        a.imul(.rdx, .rdx, immediate: Int32(layout.tlbStride), size: 4)
        a.lea(.rcx, Memory(base: .rax, disp: Int32(size - 1)))
        a.shift(.shr, .rcx, 12)
        a.alu(.cmp, .rcx, Memory(base: .r14, index: .rdx, disp: Int32(write ? layout.tlbWriteTag : layout.tlbReadTag)))
        bail(i, if: 5)   // jne
        a.load(.rsi, Memory(base: .r14, index: .rdx, disp: Int32(layout.tlbHostDelta)), size: 8)
        a.alu(.add, .rsi, .rax)
        if write {
            a.move(.r10, .rax)
            a.move(.r11, .rdx)
        }
    }

    /// The host address of memory operand `o` (the access `size` bytes) in RSI.
    private mutating func memoryOperand(_ o: Operand, size: Int, write: Bool, _ i: Int) {
        effectiveAddress(o, i)
        access(segment: o.segment, size: size, write: write, i)
    }

    /// After a store (R10 linear, R11 TLB entry): whether its page holds decoded code;
    /// if so, the out-of-line handler decides (exact lines) and may return.
    private mutating func codeWriteCheck(_ i: Int) {
        a.load(.rcx, Memory(base: .r14, index: .r11, disp: Int32(layout.tlbFrame)), size: 8)
        a.shift(.shr, .rcx, 12)
        a.moveImmediate(.r8, UInt64(pageCount))
        a.alu(.cmp, .rcx, .r8)
        let outside = a.jump(if: 3)   // jae: no word for this page
        a.load(.r8, Memory(base: .r15, index: .rcx, scale: 8), size: 8)
        a.test(.register(.r8), immediate: 1, size: 1)
        let even = a.jump(if: 4)   // jz: no decode holds instructions from the page
        a.move(.r9, .r8)
        a.shift(.shr, .r9, 32)
        let noLines = a.jump(if: 4)
        codeWrites.append((a.jump(), i, 0))
        let resume = a.position
        codeWrites[codeWrites.count - 1].resume = resume
        a.patch(outside, to: resume)
        a.patch(even, to: resume)
        a.patch(noLines, to: resume)
    }

    /// The lines of a store of instruction `i` (R10 linear; RCX page; R8 its word): when
    /// they hold code, the version is bumped (lock cmpxchg, as `noteWrite`) and the code
    /// returns after the instruction; otherwise it goes on at `resume`.
    private mutating func emitCodeWriteHandler(instruction i: Int, resume: Int) {
        let size = storeSize(i)
        a.move(.rdi, .rcx)   // the page
        a.move(.r9, .r10, size: 4)
        a.alu(.and, .register(.r9), immediate: 0xFFF, size: 4)
        a.lea(.r11, Memory(base: .r9, disp: Int32(size - 1)), size: 4)   // (never past the page: the TLB tag was the last byte's)
        a.shift(.shr, .r9, UInt8(CodePages.lineShift), size: 4)
        a.shift(.shr, .r11, UInt8(CodePages.lineShift), size: 4)
        a.lea(.rcx, Memory(base: .r9, disp: 32), size: 4)
        a.moveImmediate(.r9, 1)
        a.shiftByCL(.shl, .r9)
        a.lea(.rcx, Memory(base: .r11, disp: 32), size: 4)
        a.moveImmediate(.r11, 1)
        a.shiftByCL(.shl, .r11)
        a.alu(.or, .r9, .r11)
        a.test(.r8, .r9)
        let back = a.jump(if: 4)   // jz: other lines
        a.patch(back, to: resume)
        a.move(.rax, .r8)
        let swap = a.position
        a.lea(.r11, Memory(base: .rax, disp: 1), size: 4)   // (version + 1, the lines cleared)
        a.lockCompareExchange(Memory(base: .r15, index: .rdi, scale: 8), .r11)
        // A failed swap leaves the word in RAX: as in `noteWrite`, done when another vCPU
        // bumped the version, tried again when it only marked more lines.
        var done = [a.jump(if: 4)]   // jz: swapped
        a.test(.register(.rax), immediate: 1, size: 1)
        done.append(a.jump(if: 4))   // jz: bumped
        a.test(.rax, .r9)
        done.append(a.jump(if: 4))   // jz: our lines cleared (bumped, marked again)
        a.patch(a.jump(), to: swap)
        for j in done { a.patch(j, to: a.position) }
        exits.append((a.jump(), i + 1))
    }

    /// The width of instruction `i`'s store (for its code-write check).
    private var storeSizes: [Int: Int] = [:]
    private func storeSize(_ i: Int) -> Int { storeSizes[i] ?? 8 }

    /// Records the flags of a kind-`kind` operation of `size` bytes: a in RAX, b in RCX,
    /// the result in RDX.
    private mutating func recordFlags(_ kind: LazyFlags, _ size: Int) {
        a.storeImmediate(lazy(layout.lazyKind), Int32(kind.rawValue), size: 1)
        a.storeImmediate(lazy(layout.lazySize), Int32(size), size: 8)
        a.store(lazy(layout.lazyA), .rax, size: 8)
        a.store(lazy(layout.lazyB), .rcx, size: 8)
        a.store(lazy(layout.lazyResult), .rdx, size: 8)
    }

    /// Host flags for condition `cc` from the recorded flags (kind and size known here);
    /// returns the host condition to test.
    private mutating func evaluate(_ cc: Int, _ known: (kind: LazyFlags, size: Int)?) -> UInt8 {
        guard let flags = known, Self.conditionSupported(cc, flags.kind) else {
            // Asked of the interpreter (the record is stored: the analysis saw the read).
            a.moveImmediate(.rdi, UInt64(site.vcpu))
            a.moveImmediate(.rsi, UInt64(cc))
            a.moveImmediate(.rax, UInt64(site.condition))
            a.call(.rax)
            a.test(.rax, .rax, size: 4)
            return 5   // ne: true
        }
        let size = flags.size
        switch flags.kind {
        case .inc, .dec:   // host inc/dec: every flag but CF exact (CF is not asked)
            a.load(.rax, lazy(layout.lazyA), size: 8)
            a.incrementOrDecrement(.rax, decrement: flags.kind == .dec, size: size)
            return UInt8(cc)
        case .sub:
            a.load(.rax, lazy(layout.lazyA), size: 8)
            a.load(.rcx, lazy(layout.lazyB), size: 8)
            a.alu(.cmp, .rax, .rcx, size: size)
            return UInt8(cc)
        case .add:
            a.load(.rax, lazy(layout.lazyA), size: 8)
            a.load(.rcx, lazy(layout.lazyB), size: 8)
            a.alu(.add, .rax, .rcx, size: size)
            return UInt8(cc)
        case .logic:
            a.load(.rax, lazy(layout.lazyResult), size: 8)
            a.test(.rax, .rax, size: size)   // CF = OF = 0, as after a logical operation
            return UInt8(cc)
        case .multiply where cc >> 1 <= 1:   // o, b: CF = OF = (b != 0)
            a.load(.rax, lazy(layout.lazyB), size: 8)
            a.test(.rax, .rax)
            return cc & 1 == 0 ? 5 : 4
        case .shift where cc >> 1 <= 1:
            a.load(.rax, lazy(layout.lazyA), size: 8)
            a.test(.register(.rax), immediate: UInt32(cc >> 1 == 0 ? Flag.of : Flag.cf), size: 4)
            return cc & 1 == 0 ? 5 : 4
        default:   // e, s (and p after a shift): from the result
            a.load(.rax, lazy(layout.lazyResult), size: 8)
            a.test(.rax, .rax, size: size)
            return UInt8(cc)
        }
    }

    // MARK: Templates

    private mutating func emitJump(_ d: DecodedInstruction, _ i: Int, _ flags: (kind: LazyFlags, size: Int)?) {
        let target = Int32(offsets[i + 1]) &+ Int32(truncatingIfNeeded: d.relative)
        if d.form == .jmpRel {
            chain(to: Int(target), retired: i + 1)
            return
        }
        let cc = evaluate(Int(d.form.rawValue - FastForm.jo.rawValue), flags)
        let taken = a.jump(if: cc)
        chain(to: offsets[i + 1], retired: i + 1)
        a.patch(taken, to: a.position)
        chain(to: Int(target), retired: i + 1)
    }

    /// Returns with RAX as it is.
    private mutating func epilogueFromHere() {
        for r: R in [.r8, .r15, .r14, .r13, .r12, .rbp, .rbx] { a.pop(r) }
        a.ret()
    }

    private mutating func aluOperation(_ op: Op) -> HostAssembler.ALU {
        switch op {
        case .add: return .add
        case .sub, .cmp: return .sub
        case .and, .test: return .and
        case .or: return .or
        default: return .xor
        }
    }

    private mutating func emit(_ d: DecodedInstruction, _ i: Int, record: Bool, _ flags: (kind: LazyFlags, size: Int)?) {
        let o0 = d.o0, o1 = d.o1
        let w = Int(o0.size)
        let writesALU = d.op != .cmp && d.op != .test
        switch d.form {
        case .movRR8, .movRR16, .movRR32, .movRR64:
            loadGuest(.rax, o1.reg, w)
            storeGuest(o0.reg, w, .rax)
        case .movRI8, .movRI16, .movRI32, .movRI64:
            a.moveImmediate(.rax, UInt64(bitPattern: o1.value) & sizeMask(w))
            storeGuest(o0.reg, w, .rax)
        case .movRM8, .movRM16, .movRM32, .movRM64:
            memoryOperand(o1, size: w, write: false, i)
            a.load(.rax, Memory(base: .rsi), size: w)
            storeGuest(o0.reg, w, .rax)
        case .movMR8, .movMR16, .movMR32, .movMR64:
            memoryOperand(o0, size: w, write: true, i)
            loadGuest(.rcx, o1.reg, w)
            a.store(Memory(base: .rsi), .rcx, size: w)
            storeSizes[i] = w
            codeWriteCheck(i)
        case .movMI8, .movMI16, .movMI32, .movMI64:
            memoryOperand(o0, size: w, write: true, i)
            a.storeImmediate(Memory(base: .rsi), Int32(truncatingIfNeeded: o1.value), size: w)
            storeSizes[i] = w
            codeWriteCheck(i)
        case .aluRR8, .aluRR16, .aluRR32, .aluRR64, .aluRI8, .aluRI16, .aluRI32, .aluRI64, .aluRM8, .aluRM16, .aluRM32, .aluRM64:
            if o1.kind == .memory {
                memoryOperand(o1, size: w, write: false, i)
                a.load(.rcx, Memory(base: .rsi), size: w)
            } else if o1.kind == .immediate {
                a.moveImmediate(.rcx, o1.aluImmediate(w))
            } else {
                loadGuest(.rcx, o1.reg, w)
            }
            loadGuest(.rax, o0.reg, w)
            a.move(.rdx, .rax)
            a.alu(aluOperation(d.op), .rdx, .rcx)
            if writesALU { storeGuest(o0.reg, w, .rdx) }
            if record { recordFlags(Self.kind(d.op), w) }
        case .aluMR8, .aluMR16, .aluMR32, .aluMR64, .aluMI8, .aluMI16, .aluMI32, .aluMI64:
            memoryOperand(o0, size: w, write: writesALU, i)
            a.load(.rax, Memory(base: .rsi), size: w)
            if o1.kind == .immediate { a.moveImmediate(.rcx, o1.aluImmediate(w)) } else { loadGuest(.rcx, o1.reg, w) }
            a.move(.rdx, .rax)
            a.alu(aluOperation(d.op), .rdx, .rcx)
            if writesALU { a.store(Memory(base: .rsi), .rdx, size: w) }
            if record { recordFlags(Self.kind(d.op), w) }
            if writesALU {
                storeSizes[i] = w
                codeWriteCheck(i)
            }
        case .generic:   // nop, endbr: nothing
            break
        case .incR8, .incR16, .incR32, .incR64, .decR8, .decR16, .decR32, .decR64:
            // As `incR`: deferred flags before it are computed first (CF stays RFLAGS's).
            a.alu(.cmp, .memory(lazy(layout.lazyKind)), immediate: Int32(LazyFlags.none.rawValue), size: 1)
            let exact = a.jump(if: 4)
            a.moveImmediate(.rdi, UInt64(site.vcpu))
            a.moveImmediate(.rax, UInt64(site.materialize))
            a.call(.rax)
            a.patch(exact, to: a.position)
            let increment = d.form.rawValue <= FastForm.incR64.rawValue
            loadGuest(.rax, o0.reg, w)
            a.moveImmediate(.rcx, 1)
            a.move(.rdx, .rax)
            a.alu(increment ? .add : .sub, .rdx, .rcx)
            storeGuest(o0.reg, w, .rdx)
            if record { recordFlags(increment ? .inc : .dec, w) }
        case .negR8, .negR16, .negR32, .negR64:
            loadGuest(.rcx, o0.reg, w)
            a.moveImmediate(.rax, 0)
            a.move(.rdx, .rax)
            a.alu(.sub, .rdx, .rcx)
            storeGuest(o0.reg, w, .rdx)
            if record { recordFlags(.sub, w) }
        case .shiftRI8, .shiftRI16, .shiftRI32, .shiftRI64:
            let c = shiftCount(d)
            loadGuest(.rax, o0.reg, w)
            if c == 0 {
                storeGuest(o0.reg, w, .rax)   // flags untouched; a 32-bit write still clears bits 63-32
                return
            }
            emitShift(d.op, c, w)
            storeGuest(o0.reg, w, .rdx)
            if record { recordFlags(.shift, w) }
        case .leaR16, .leaR32, .leaR64:
            effectiveAddress(o1, i)
            storeGuest(o0.reg, w, .rax)
        case .pushR32, .pushR64:
            loadGuest(.rax, 4, 8)
            a.alu(.sub, .register(.rax), immediate: Int32(w), size: 8)
            if codeBits != 64 { a.move(.rax, .rax, size: 4) }
            a.move(.rdi, .rax)
            access(segment: Segment.ss, size: w, write: true, i)
            loadGuest(.rcx, o0.reg, w)
            a.store(Memory(base: .rsi), .rcx, size: w)
            a.store(reg(4), .rdi, size: 8)
            storeSizes[i] = w
            codeWriteCheck(i)
        case .popR32, .popR64:
            loadGuest(.rax, 4, codeBits == 64 ? 8 : 4)
            a.move(.rdi, .rax)
            access(segment: Segment.ss, size: w, write: false, i)
            a.load(.rcx, Memory(base: .rsi), size: w)
            a.lea(.rdi, Memory(base: .rdi, disp: Int32(w)), size: codeBits == 64 ? 8 : 4)
            a.store(reg(4), .rdi, size: 8)
            storeGuest(o0.reg, w, .rcx)
        case .imulRR16, .imulRR32, .imulRR64, .imulRM16, .imulRM32, .imulRM64:
            if o1.kind == .memory {
                memoryOperand(o1, size: w, write: false, i)
                a.load(.rcx, Memory(base: .rsi), size: w)
            } else {
                loadGuest(.rcx, o1.reg, w)
            }
            loadGuest(.rax, o0.reg, w)
            emitMultiply(o0.reg, w, record: record)
        case .imulRRI16, .imulRRI32, .imulRRI64, .imulRMI16, .imulRMI32, .imulRMI64:
            if o1.kind == .memory {
                memoryOperand(o1, size: w, write: false, i)
                a.load(.rax, Memory(base: .rsi), size: w)
            } else {
                loadGuest(.rax, o1.reg, w)
            }
            a.moveImmediate(.rcx, d.o2.aluImmediate(w))
            emitMultiply(o0.reg, w, record: record)
        case .cmovRR16, .cmovRR32, .cmovRR64, .cmovRM16, .cmovRM32, .cmovRM64:
            if o1.kind == .memory {
                memoryOperand(o1, size: w, write: false, i)
                a.load(.rdi, Memory(base: .rsi), size: w)
            } else {
                loadGuest(.rdi, o1.reg, w)
            }
            let cc = evaluate(Int(d.condition), flags)
            let skip = a.jump(if: cc ^ 1)
            storeGuest(o0.reg, w, .rdi)
            if w == 4 {
                let done = a.jump()
                a.patch(skip, to: a.position)
                a.storeImmediate(Memory(base: .rbx, disp: Int32(layout.gpr + 8 * Int(o0.reg) + 4)), 0, size: 4)
                a.patch(done, to: a.position)
            } else {
                a.patch(skip, to: a.position)
            }
        case .setccR:
            let cc = evaluate(Int(d.condition), flags)
            a.set(cc, .rax)
            a.store(reg(o0.reg), .rax, size: 1)
        case .movzxRB, .movzxRW:
            loadGuest(.rax, o1.reg, Int(o1.size))
            a.store(reg(o0.reg), .rax, size: 8)
        case .movzxMB, .movzxMW:
            memoryOperand(o1, size: Int(o1.size), write: false, i)
            a.load(.rax, Memory(base: .rsi), size: Int(o1.size))
            a.store(reg(o0.reg), .rax, size: 8)
        case .movsxRB32, .movsxRB64, .movsxRW32, .movsxRW64, .movsxdR:
            loadGuest(.rax, o1.reg, Int(o1.size))
            a.extend(.rax, .rax, size: Int(o1.size), to: w, signed: true)
            if w == 4 { a.move(.rax, .rax, size: 4) }
            a.store(reg(o0.reg), .rax, size: 8)
        case .movsxMB32, .movsxMB64, .movsxMW32, .movsxMW64, .movsxdM:
            memoryOperand(o1, size: Int(o1.size), write: false, i)
            a.loadSigned(.rax, Memory(base: .rsi), size: Int(o1.size), to: w)
            a.store(reg(o0.reg), .rax, size: 8)
        default:
            preconditionFailure("no template for \(d.form)")
        }
    }

    static func kind(_ op: Op) -> LazyFlags {
        switch op {
        case .add: return .add
        case .sub, .cmp: return .sub
        default: return .logic
        }
    }

    /// imul with a in RAX, b in RCX (`w` = 2, 4, 8 bytes): the truncated product to
    /// register `g`, flags as `truncatedSignedProduct`'s overflow (host CF = OF).
    private mutating func emitMultiply(_ g: UInt8, _ w: Int, record: Bool) {
        a.imul(.rax, .rcx, size: w)
        a.set(0, .rcx)   // seto
        a.extend(.rcx, .rcx, size: 1, to: 4, signed: false)
        a.move(.rdx, .rax)
        mask(.rdx, w)
        storeGuest(g, w, .rdx)
        a.moveImmediate(.rax, 0)
        if record { recordFlags(.multiply, w) }
    }

    /// shl/shr/sar of RAX (zero-extended, `w` bytes) by `c` (1 ... 63) as `shiftResult`:
    /// the result in RDX, CF and OF at their RFLAGS positions in RAX (and RCX).
    private mutating func emitShift(_ op: Op, _ c: UInt64, _ w: Int) {
        let bits = UInt64(8 * w)
        switch op {
        case .shl, .sal:
            a.move(.rdx, .rax)
            a.shift(.shl, .rdx, UInt8(c))
            mask(.rdx, w)
            if c <= bits {
                a.move(.rcx, .rax)
                if bits - c > 0 { a.shift(.shr, .rcx, UInt8(bits - c)) }
                a.alu(.and, .register(.rcx), immediate: 1, size: 4)
            } else {
                a.moveImmediate(.rcx, 0)
            }
            // OF = the result's sign bit != CF.
            a.move(.r8, .rdx)
            a.shift(.shr, .r8, UInt8(bits - 1))
            a.alu(.and, .register(.r8), immediate: 1, size: 4)
            a.alu(.xor, .r8, .rcx, size: 4)
            a.shift(.shl, .r8, 11, size: 4)
            a.alu(.or, .rcx, .r8, size: 4)
        case .shr:
            a.move(.rdx, .rax)
            a.shift(.shr, .rdx, UInt8(c))
            if c <= bits {
                a.move(.rcx, .rax)
                if c > 1 { a.shift(.shr, .rcx, UInt8(c - 1)) }
                a.alu(.and, .register(.rcx), immediate: 1, size: 4)
            } else {
                a.moveImmediate(.rcx, 0)
            }
            if c == 1 {   // OF: the sign bit before the shift (0 for larger counts)
                a.move(.r8, .rax)
                a.shift(.shr, .r8, UInt8(bits - 1))
                a.alu(.and, .register(.r8), immediate: 1, size: 4)
                a.shift(.shl, .r8, 11, size: 4)
                a.alu(.or, .rcx, .r8, size: 4)
            }
        default:   // sar: CF the last bit shifted out of the sign-extended value, OF = 0
            a.extend(.rax, .rax, size: w, to: 8, signed: true)
            a.move(.rcx, .rax)
            if c > 1 { a.shift(.sar, .rcx, UInt8(min(c - 1, 63))) }
            a.alu(.and, .register(.rcx), immediate: 1, size: 4)
            a.move(.rdx, .rax)
            a.shift(.sar, .rdx, UInt8(min(c, 63)))
            mask(.rdx, w)
        }
        a.move(.rax, .rcx)
    }
}
