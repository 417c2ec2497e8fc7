import X86

extension InterpreterVCPU {
    /// Runs `budget` instructions (fewer when one faults or exits; `budget` counts down as
    /// they retire). One function holds the whole fetch-execute loop, so the vCPU's hot
    /// state stays in host registers from one instruction to the next.
    ///
    /// Instructions run trace by trace (Traces.swift): one lookup per trace, then its
    /// instructions back to back, each after a check that its page's code-page version is
    /// still the trace's (a write into the trace's lines, by this vCPU or another, takes
    /// effect at the next instruction, as with a fetch per instruction).
    @inline(never)
    func runInstructions(_ budget: inout Int) throws(Fault) {
        defer { materializeFlags() }   // (outside this loop, RFLAGS is exact)
        // The next trace when the last one's successor check found it (`successor`).
        var chained: UnsafeMutablePointer<TraceHead>? = nil
        // Translations run only where the loop would run whole traces anyway.
        let translating = translatorEnabled && !logAccesses && !singleStep && mmioLog.isEmpty
        while budget > 0 {
            let head: UnsafeMutablePointer<TraceHead>
            if let next = chained {
                head = next
                chained = nil
            } else {
                head = try traceAt()
                if _slowPath(head.pointee.count == 0) {
                    try step()
                    budget &-= 1
                    if _slowPath(endBlock) { break }
                    continue
                }
                // What `execute` checks before each instruction, once per trace: only the
                // first can run in an interrupt shadow (STI, MOV SS and POP SS end a
                // trace), and single-stepping runs one instruction. (A chained trace
                // follows a relative jump, which sets neither.)
                if _slowPath(interruptShadow) { interruptShadow = false }
                if _slowPath(singleStep) { noteStepped(traceInstructions(head)) }
            }
            let count = Int(head.pointee.count)
            let version = head.pointee.version
            let word = codePages.word(Int(truncatingIfNeeded: head.pointee.key >> 14))
            let entryRIP = s.pointee.rip
            let first = traceInstructions(head)
            var d = first
            let end = d + (count < budget ? count : budget)   // (Swift's min stayed a call)
            if translating, case let key = translationKey, key != 0 {
                let t = translations[head - traceHeads]
                if t & 15 == key && count <= budget {
                    // The translation runs a prefix of the trace (all of it, or up to an
                    // instruction it leaves to the interpreter); the loop below runs the rest.
                    let result = runTranslation(t, budget: budget &- count)
                    translatedRetired &+= result & 0xFFFF_FFFF
                    if let fault = translationFault {   // (RIP: the instruction that raised it)
                        translationFault = nil
                        budget &-= Int(truncatingIfNeeded: result & 0xFFFF_FFFF)
                        throw fault
                    }
                    if result >> 32 != 0 {   // it went on into other traces: RIP says where it stopped
                        budget &-= Int(truncatingIfNeeded: result & 0xFFFF_FFFF)
                        if _slowPath(endBlock) { break }
                        continue
                    }
                    d += Int(truncatingIfNeeded: result)
                    if d == end {
                        budget &-= count
                        if _slowPath(endBlock) { break }
                        if d[-1].form.isRelativeBranch { chained = successor(of: head, from: entryRIP, word: word) }
                        continue
                    }
                    if _slowPath(CodePages.version(word) != version) {   // it wrote into its own code
                        budget &-= d - first
                        continue
                    }
                    // Ended by an instruction it had the interpreter run. Not when it ran
                    // nothing: `endBlock` may have been set before the loop (the hybrid
                    // engine's user mode, whose first instruction must still run here — else
                    // a store that missed the TLB went back to KVM unrun, faulted there
                    // again, for ever).
                    if _slowPath(endBlock) && d != first {
                        budget &-= d - first
                        break
                    }
                } else if t == 0 {
                    if head.pointee.heat < Self.translationThreshold { head.pointee.heat &+= 1 } else { translate(head, key: key) }
                }
            }
            // The budget is counted once per trace (and for a fault, up to the instruction
            // that raised it), not in memory after each instruction.
            do throws(Fault) {
                while true {
                    try execute(d, next: (s.pointee.rip &+ UInt64(d.pointee.length)) & ipMask)
                    d += 1
                    if d == end || _slowPath(CodePages.version(word) != version) { break }
                }
            } catch {
                budget &-= d - first
                throw error
            }
            budget &-= d - first
            if _slowPath(endBlock) { break }   // (the hybrid engine: user mode entered)
            if d == first + count && d[-1].form.isRelativeBranch {
                chained = successor(of: head, from: entryRIP, word: word)
            }
        }
    }

    /// Executes one instruction. State changes only when it completes, except for the
    /// iterations a REP string instruction has finished.
    ///
    /// `@_transparent` here and below: the optimiser declines to inline even
    /// `@inline(__always)` functions into a caller as large as the loop (measured: `step`
    /// and every handler stayed a call, the width a run-time argument); mandatory inlining
    /// always happens.
    @_transparent
    func step() throws(Fault) {
        try execute(try fetch())
    }

    /// Executes the instruction `fetch` returned.
    @_transparent
    func execute(_ d: UnsafeMutablePointer<DecodedInstruction>) throws(Fault) {
        let next = (s.pointee.rip &+ UInt64(d.pointee.length)) & ipMask
        if _slowPath(interruptShadow) { interruptShadow = false }
        if _slowPath(singleStep) { noteStepped(d) }
        try execute(d, next: next)
    }

    /// Single-stepping: what the step's instruction is (`injectedFault`) and where its
    /// logged accesses start.
    @inline(never)
    func noteStepped(_ d: UnsafeMutablePointer<DecodedInstruction>) {
        lastOp = d.pointee.op
        accessLogMark = accessLog.count
    }

    @_transparent
    func execute(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        if try executeFast(d, next: next) { return }
        materializeFlags()   // the generic handlers read and write RFLAGS directly
        let op = d.pointee.op
        if _slowPath(d.pointee.prefixes & PrefixBits.lock != 0) { try checkLock(d) }
        switch op {
        case .mov, .movabs:
            if d.pointee.o0.kind == .register && d.pointee.o1.kind != .segment && d.pointee.o1.kind != .control && d.pointee.o1.kind != .debug {
                let size = Int(d.pointee.o0.size)
                writeReg(d.pointee.o0.reg, size, try readOperand(d.pointee.o1, d, size, next: next))
            } else {
                try moveSpecial(d, next: next)
            }
        case .add, .adc, .sub, .sbb, .and, .or, .xor, .cmp, .test:
            try arithmetic(d, next: next)
        case .inc, .dec:
            let size = Int(d.pointee.o0.size)
            if _slowPath(d.pointee.prefixes & PrefixBits.lock != 0) { try lockedReadModifyWrite(d, size: size, operand: 0, next: next); break }
            let a = try readOperand(d.pointee.o0, d, size, next: next)
            let res: UInt64
            let f: UInt64
            if op == .inc { res = a &+ 1; f = addFlags(a, 1, res, 0, size) } else { res = a &- 1; f = subFlags(a, 1, res, 0, size) }
            try writeOperand(d.pointee.o0, d, size, res, next: next)
            setFlags(Flag.arithmetic & ~Flag.cf, f)
        case .neg:
            let size = Int(d.pointee.o0.size)
            if _slowPath(d.pointee.prefixes & PrefixBits.lock != 0) { try lockedReadModifyWrite(d, size: size, operand: 0, next: next); break }
            let a = try readOperand(d.pointee.o0, d, size, next: next)
            let res = 0 &- a
            try writeOperand(d.pointee.o0, d, size, res, next: next)
            setFlags(Flag.arithmetic, subFlags(0, a, res, 0, size))
        case .not:
            let size = Int(d.pointee.o0.size)
            if _slowPath(d.pointee.prefixes & PrefixBits.lock != 0) { try lockedReadModifyWrite(d, size: size, operand: 0, next: next); break }
            let a = try readOperand(d.pointee.o0, d, size, next: next)
            try writeOperand(d.pointee.o0, d, size, ~a, next: next)
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg:
            let cc = Int(op.rawValue - Op.jo.rawValue)
            s.pointee.rip = condition(cc) ? maskIP(next &+ UInt64(bitPattern: d.pointee.relative), Int(d.pointee.operandSize)) : next
            return
        case .jmp:
            if d.pointee.opcode == 0xE9 || d.pointee.opcode == 0xEB {
                s.pointee.rip = maskIP(next &+ UInt64(bitPattern: d.pointee.relative), Int(d.pointee.operandSize))
            } else {
                let size = codeBits == 64 ? 8 : Int(d.pointee.operandSize)
                s.pointee.rip = try readOperand(d.pointee.o0, d, size, next: next)
            }
            return
        case .call:
            let size = stackOperandSize(d)
            let target: UInt64
            if d.pointee.opcode == 0xE8 {
                target = maskIP(next &+ UInt64(bitPattern: d.pointee.relative), size)
            } else {
                target = try readOperand(d.pointee.o0, d, size, next: next)
            }
            try push(next, size)
            s.pointee.rip = target
            return
        case .ret:
            let size = stackOperandSize(d)
            let target = try peek(0, size)
            let release = d.pointee.operandCount > 0 ? UInt64(bitPattern: d.pointee.o0.value) & 0xFFFF : 0
            if codeBits != 64 && target > UInt64(seg[1].pointee.limit) { throw .gp() }
            setStackPointer((r[4] &+ UInt64(size) &+ release) & stackMask)
            s.pointee.rip = target
            return
        case .push:
            let size = stackOperandSize(d)
            let o = d.pointee.o0
            var v: UInt64
            if o.kind == .immediate { v = UInt64(bitPattern: o.value) & sizeMask(size) }
            else if o.kind == .segment { v = UInt64(seg[Int(o.reg)].pointee.selector) }
            else { v = try readOperand(o, d, size, next: next) }
            if o.kind == .immediate && o.size < size { v = signExtend(UInt64(bitPattern: o.value), Int(o.size)) & sizeMask(size) }
            try push(v, size)
        case .pop:
            let size = stackOperandSize(d)
            let o = d.pointee.o0
            if o.kind == .segment {
                let v = try peek(0, size)
                // ESP moves by the width of the stack popped from (POP SS changes it).
                let oldMask = stackMask
                try loadSegment(o.reg, UInt16(truncatingIfNeeded: v))
                setStackPointer((r[4] &+ UInt64(size)) & oldMask, mask: oldMask)
                if o.reg == Segment.ss { s.pointee.events.interruptShadow = InterruptShadow.movSS }
            } else if o.kind == .register {
                writeReg(o.reg, size, try pop(size))
            } else {
                let saved = r[4]
                let v = try pop(size)
                do throws(Fault) { try writeOperand(o, d, size, v, next: next) } catch { r[4] = saved; throw error }
            }
        case .lea:
            let size = Int(d.pointee.o0.size)
            writeReg(d.pointee.o0.reg, size, effectiveAddress(d.pointee.o1, d.pointee.addressSize, next: next))
        case .pause:
            pauseHint()
        case .nop, .prefetch, .prefetchw, .prefetcht0, .prefetcht1, .prefetcht2, .prefetchnta, .lfence, .sfence, .mfence, .clflush,
             .endbr64, .endbr32:
            break
        case .loop, .loope, .loopne:
            let asz = Int(d.pointee.addressSize)
            let count = (r[1] &- 1) & sizeMask(asz)
            writeReg(1, asz, count)
            var taken = count != 0
            if op == .loope { taken = taken && flag(Flag.zf) }
            if op == .loopne { taken = taken && !flag(Flag.zf) }
            s.pointee.rip = taken ? maskIP(next &+ UInt64(bitPattern: d.pointee.relative), Int(d.pointee.operandSize)) : next
            return
        case .jcxz, .jecxz, .jrcxz:
            let asz = op == .jcxz ? 2 : op == .jecxz ? 4 : 8
            s.pointee.rip = r[1] & sizeMask(asz) == 0 ? maskIP(next &+ UInt64(bitPattern: d.pointee.relative), Int(d.pointee.operandSize)) : next
            return
        case .seto, .setno, .setb, .setae, .sete, .setne, .setbe, .seta, .sets, .setns, .setp, .setnp, .setl, .setge, .setle, .setg:
            let cc = Int(op.rawValue - Op.seto.rawValue)
            try writeOperand(d.pointee.o0, d, 1, condition(cc) ? 1 : 0, next: next)
        case .cmovo, .cmovno, .cmovb, .cmovae, .cmove, .cmovne, .cmovbe, .cmova, .cmovs, .cmovns, .cmovp, .cmovnp, .cmovl, .cmovge, .cmovle, .cmovg:
            let cc = Int(op.rawValue - Op.cmovo.rawValue)
            let size = Int(d.pointee.o0.size)
            let v = try readOperand(d.pointee.o1, d, size, next: next)   // the read happens (and can fault) either way
            if condition(cc) { writeReg(d.pointee.o0.reg, size, v) } else if size == 4 { writeReg(d.pointee.o0.reg, 4, readReg(d.pointee.o0.reg, 4)) }
        case .rol, .ror, .rcl, .rcr, .shl, .sal, .shr, .sar:
            try shift(d, next: next)
        default:
            try executeMore(d, next: next)
            return
        }
        s.pointee.rip = next
    }

    /// add, adc, sub, sbb, and, or, xor, cmp, test.
    @inline(__always)
    func arithmetic(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let size = Int(d.pointee.o0.size)
        let o0 = d.pointee.o0
        var b = try readOperand(d.pointee.o1, d, size, next: next)
        if d.pointee.o1.kind == .immediate && d.pointee.o1.size != 0 && Int(d.pointee.o1.size) < size {
            b = signExtend(UInt64(bitPattern: d.pointee.o1.value), Int(d.pointee.o1.size)) & sizeMask(size)
        }
        if _slowPath(d.pointee.prefixes & PrefixBits.lock != 0) {
            return try lockedReadModifyWrite(d, size: size, operand: b, next: next)
        }
        // Memory destinations: translate once for the read and the write.
        var linear: UInt64 = 0
        let a: UInt64
        if o0.kind == .register {
            a = readReg(o0.reg, size)
        } else {
            let writes = op != .cmp && op != .test
            linear = try operandLinear(o0, d, size, writes ? .write : .read, next: next)
            a = try readLinear(linear, size)
        }
        let carry: UInt64 = flag(Flag.cf) ? 1 : 0
        let (res, f) = aluResult(op, a, b, carry, size)
        if op != .cmp && op != .test {
            if o0.kind == .register { writeReg(o0.reg, size, res) } else { try writeLinear(linear, size, res) }
        }
        setFlags(Flag.arithmetic, f)
    }

    /// The result and flags of add, adc, sub, sbb, and, or, xor, cmp, test (`carry`: CF in).
    @_transparent
    func aluResult(_ op: Op, _ a: UInt64, _ b: UInt64, _ carry: UInt64, _ size: Int) -> (UInt64, UInt64) {
        let res = aluValue(op, a, b, carry)
        switch op {
        case .add: return (res, addFlags(a, b, res, 0, size))
        case .adc: return (res, addFlags(a, b, res, carry, size))
        case .sub, .cmp: return (res, subFlags(a, b, res, 0, size))
        case .sbb: return (res, subFlags(a, b, res, carry, size))
        default: return (res, resultFlags(res, size))
        }
    }

    /// Shifts and rotates, with the count masked as hardware masks it.
    func shift(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let op = d.pointee.op
        let size = Int(d.pointee.o0.size)
        var count: UInt64 = d.pointee.operandCount > 1 ? try readOperand(d.pointee.o1, d, 1, next: next) : 1
        count &= size == 8 ? 0x3F : 0x1F
        let a = try readOperand(d.pointee.o0, d, size, next: next)
        if count == 0 {
            // Still a write cycle (and fault checks) on hardware; flags untouched.
            try writeOperand(d.pointee.o0, d, size, a, next: next)
            return
        }
        let (res, f, flagMask) = shiftResult(op, a, count, size)
        try writeOperand(d.pointee.o0, d, size, res, next: next)
        setFlags(flagMask, f)
    }

    /// The result of a shift or rotate of `a` by `count` (masked, not 0), the flags it
    /// sets and which flags those are.
    @_transparent
    func shiftResult(_ op: Op, _ a: UInt64, _ count: UInt64, _ size: Int) -> (UInt64, UInt64, UInt64) {
        let bits = UInt64(size * 8)
        let m = sizeMask(size)
        let sb = signBit(size)
        var res: UInt64 = 0
        var f: UInt64 = 0
        var flagMask: UInt64 = Flag.cf | Flag.of
        var cf = false
        var of = false
        switch op {
        case .rol:
            let c = count % bits
            res = c == 0 ? a : ((a << c) | (a >> (bits - c))) & m
            cf = res & 1 != 0
            of = (res & sb != 0) != cf
            f = (cf ? Flag.cf : 0) | (of ? Flag.of : 0)
        case .ror:
            let c = count % bits
            res = c == 0 ? a : ((a >> c) | (a << (bits - c))) & m
            cf = res & sb != 0
            of = (res & sb != 0) != (res & (sb >> 1) != 0)
            f = (cf ? Flag.cf : 0) | (of ? Flag.of : 0)
        case .rcl, .rcr:
            let c = count % (bits + 1)
            var v = a
            var carry: UInt64 = flag(Flag.cf) ? 1 : 0
            for _ in 0..<c {
                if op == .rcl {
                    let out = (v & sb) != 0 ? UInt64(1) : 0
                    v = ((v << 1) | carry) & m
                    carry = out
                } else {
                    let out = v & 1
                    v = (v >> 1) | (carry != 0 ? sb : 0)
                    carry = out
                }
            }
            res = v
            cf = carry != 0
            of = op == .rcl ? ((res & sb != 0) != cf) : ((res & sb != 0) != (res & (sb >> 1) != 0))
            f = (cf ? Flag.cf : 0) | (of ? Flag.of : 0)
        case .shl, .sal:
            res = count >= 64 ? 0 : (a << count) & m
            cf = count <= bits ? (a >> (bits - count)) & 1 != 0 : false
            of = (res & sb != 0) != cf
            f = resultFlags(res, size) | (cf ? Flag.cf : 0) | (of ? Flag.of : 0)
            flagMask = Flag.arithmetic
        case .shr:
            res = count >= 64 ? 0 : a >> count
            cf = (a >> (count - 1)) & 1 != 0 && count <= bits
            of = count <= bits && (a >> (count - 1)) & sb != 0   // the MSB before the last step
            f = resultFlags(res, size) | (cf ? Flag.cf : 0) | (of ? Flag.of : 0)
            flagMask = Flag.arithmetic
        default: // sar
            let sa = Int64(bitPattern: signExtend(a, size))
            res = UInt64(bitPattern: sa >> Int64(min(count, 63))) & m
            cf = (sa >> Int64(min(count - 1, 63))) & 1 != 0
            f = resultFlags(res, size) | (cf ? Flag.cf : 0)
            flagMask = Flag.arithmetic
        }
        return (res, f, flagMask)
    }
}
