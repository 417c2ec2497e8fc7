#if canImport(Glibc)
import Glibc
#endif
import X86

/// A trace: a straight-line run of decoded instructions from one page, copied out of the
/// decode cache, so that the run loop looks up (CS limit, linear address, TLB, hash, tag,
/// code-page version) once per trace instead of once per instruction.
///
/// Every instruction but the last is one that cannot change anything the next one's
/// fetch depends on (code size, CS, paging, the A20 gate) and leaves RIP at the next
/// instruction (`continuesTrace`); the last can be anything, a branch included. A trace
/// ends there, at a page end (its instructions never run into the next page), at the CS
/// limit, or after `traceLength` instructions.
///
/// Exactness: before each instruction after the first, the loop compares the page's
/// code-page version with the trace's, so a write into the trace's lines — by the
/// instruction just executed or by another vCPU — takes effect at the next instruction,
/// exactly as with the per-instruction fetch. The loop can stop after any instruction
/// (the budget: single-step, `--max-instructions`, the KVM fallback's limit), and every
/// instruction is executed by the same `execute` as the per-instruction path.
struct TraceHead {
    /// The first instruction's decode-cache key (physical address << 2 | mode) plus one;
    /// 0 when the slot is empty, so that a slot of the zero-filled, lazily reserved table
    /// that was never written is empty (`key` is the key).
    var tag: UInt64 = 0
    /// The page's code-page version the instructions were decoded under.
    var version: UInt32 = 0
    /// The instructions' total length in bytes (checked against the CS limit at entry).
    var bytes: UInt16 = 0
    /// 0: the first instruction cannot be in a trace (it runs into the next page, or its
    /// fetch faults); the loop then runs it through `step`.
    var count: UInt8 = 0
    /// How often the trace was entered untranslated, up to `translationThreshold`.
    var heat: UInt8 = 0

    /// The tag of a slot holding the trace whose first instruction has decode-cache key `key`.
    @_transparent
    static func tag(key: UInt64) -> UInt64 { key &+ 1 }

    /// The first instruction's decode-cache key (for a slot that is not empty).
    @_transparent
    var key: UInt64 { tag &- 1 }
}

extension DecodedInstruction {
    /// Whether an instruction can be followed by another in the same trace: it changes no
    /// fetch state (code size, CS, paging, A20: far transfers, moves to segment and control
    /// registers, system instructions, port I/O) and, unless it faults, leaves RIP at the
    /// next instruction (no branch, no REP string instruction that stops mid-way).
    var continuesTrace: Bool {
        switch form {
        case .generic: break
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg, .jmpRel: return false
        default: return true
        }
        switch op {
        case .mov, .movabs:
            return o0.kind.isPlainData && o1.kind.isPlainData
        case .pop:
            return o0.kind != .segment
        case .movzx, .movsx, .movsxd, .xchg, .xadd, .cmpxchg, .bswap, .lea, .movbe, .push, .pushf, .pushfd, .pushfq,
             .lahf, .sahf, .cbw, .cwde, .cdqe, .cwd, .cdq, .cqo, .leave,
             .add, .adc, .sub, .sbb, .and, .or, .xor, .cmp, .test, .inc, .dec, .neg, .not, .mul, .imul, .div, .idiv,
             .rol, .ror, .rcl, .rcr, .shl, .sal, .shr, .sar, .shld, .shrd, .bt, .bts, .btr, .btc, .bsf, .bsr,
             .seto, .setno, .setb, .setae, .sete, .setne, .setbe, .seta, .sets, .setns, .setp, .setnp, .setl, .setge, .setle, .setg,
             .cmovo, .cmovno, .cmovb, .cmovae, .cmove, .cmovne, .cmovbe, .cmova, .cmovs, .cmovns, .cmovp, .cmovnp, .cmovl, .cmovge, .cmovle, .cmovg,
             .clc, .stc, .cmc, .cld, .std, .nop, .endbr64, .endbr32,
             .prefetch, .prefetchw, .prefetcht0, .prefetcht1, .prefetcht2, .prefetchnta, .lfence, .sfence, .mfence,
             .popcnt, .lzcnt, .tzcnt, .andn, .bextr, .blsi, .blsmsk, .blsr, .bzhi, .pdep, .pext, .rorx, .sarx, .shlx, .shrx, .mulx, .adcx, .adox,
             .x87:
            return true
        default:
            return false
        }
    }
}

extension OperandKind {
    /// A general register, memory or an immediate (not a segment, control or debug register).
    var isPlainData: Bool { self == .register || self == .memory || self == .immediate }
}

extension InterpreterVCPU {
    /// Trace slots: a Linux boot's kernel code needs many (4 Ki → 16 Ki slots: 16.0 → 14.0 s
    /// user CPU); both tables are reserved lazily, so a vCPU pays only for the slots it fills.
    static let traceCount = 1 << 16
    /// At most this many instructions per trace.
    static let traceLength = 16

    /// The first of `head`'s instructions.
    @inline(__always)
    func traceInstructions(_ head: UnsafeMutablePointer<TraceHead>) -> UnsafeMutablePointer<DecodedInstruction> {
        traceCode + (head - traceHeads) &* Self.traceLength
    }

    /// The trace starting at CS:RIP, built if it is not cached or no longer valid. Faults
    /// as `fetch` does for the first instruction's address (CS limit, paging).
    @_transparent
    func traceAt() throws(Fault) -> UnsafeMutablePointer<TraceHead> {
        let rip = s.pointee.rip
        let (linear, physical) = try codeAddress(rip)
        let key = physical << 2 | UInt64(codeBits >> 5)
        let head = traceSlot(physical)
        if _fastPath(head.pointee.tag == TraceHead.tag(key: key) && head.pointee.version == codePages.current(Int(truncatingIfNeeded: physical >> 12))
                     && (codeBits == 64 || rip &+ UInt64(head.pointee.bytes) &- 1 <= codeLimit)) {
            return head
        }
        return buildTrace(head, key: key, rip: rip, linear: linear, physical: physical)
    }

    /// The slot of the trace starting at physical address `physical`.
    @_transparent
    func traceSlot(_ physical: UInt64) -> UnsafeMutablePointer<TraceHead> {
        traceHeads + Int((physical ^ (physical >> 12)) & UInt64(Self.traceCount - 1))
    }

    /// Trace chaining: after `head` ran to its end, a relative jump or branch (which changes
    /// no fetch state: CS, mode, paging, A20), the trace at the new RIP when it starts on
    /// the same page and is built and valid — found without `traceAt`'s CS and page-table
    /// translation, since that page's mapping is the one `head` was found through (its
    /// physical address is `head`'s plus the distance RIP moved). nil: `traceAt` looks.
    /// `word` is the page's code-page word (`head`'s page).
    @_transparent
    func successor(of head: UnsafeMutablePointer<TraceHead>, from entryRIP: UInt64, word: UnsafePointer<UInt64>) -> UnsafeMutablePointer<TraceHead>? {
        let rip = s.pointee.rip
        let delta = rip &- entryRIP
        let physical = head.pointee.key >> 2
        if (physical & 0xFFF) &+ delta >= 0x1000 { return nil }   // (a backward jump off the page wraps to a huge value)
        let next = traceSlot(physical &+ delta)
        if next.pointee.tag == TraceHead.tag(key: head.pointee.key &+ delta << 2) && next.pointee.version == CodePages.version(word)
            && (codeBits == 64 || rip &+ UInt64(next.pointee.bytes) &- 1 <= codeLimit) {
            return next
        }
        return nil
    }

    /// The last offset in CS an instruction byte can have outside 64-bit mode: the limit,
    /// and in 16-bit code also the end of IP's range (IP wraps there, the code bytes do not).
    @inline(__always)
    var codeLimit: UInt64 {
        let limit = UInt64(seg[1].pointee.limit)
        return codeBits == 16 && limit > 0xFFFF ? 0xFFFF : limit
    }

    /// Decodes the trace starting at CS:RIP (`linear`, `physical`) into `head`'s slot,
    /// through the decode cache (which also marks the code lines, see CodePages).
    @inline(never)
    func buildTrace(_ head: UnsafeMutablePointer<TraceHead>, key: UInt64, rip: UInt64, linear: UInt64, physical: UInt64) -> UnsafeMutablePointer<TraceHead> {
        let code = traceInstructions(head)
        let page = Int(truncatingIfNeeded: physical >> 12)
        let mode = key & 3
        let limit = codeBits == 64 ? UInt64.max : codeLimit
        var count = 0
        var bytes = 0
        var version: UInt32 = 0
        while count < Self.traceLength {
            let offset = UInt64(bytes)
            let address = physical &+ offset
            let ip = rip &+ offset
            // Within the page; after the first, only instructions whose longest form stays
            // in it: decoding one that could run into the next page would translate that
            // page (and set its accessed bit) before the guest gets there.
            if address >> 12 != physical >> 12 || (count > 0 && address & 0xFFF > 0x1000 - 15) || ip > limit { break }
            let entry = cache + Int((address ^ (address >> 14)) & UInt64(Self.cacheSize - 1))
            let d: UnsafeMutablePointer<DecodedInstruction>
            let entryKey = address << 2 | mode
            if entry.pointee.tag == entryKey && entry.pointee.version == codePages.current(page) {
                d = instructionPointer(entry)
            } else {
                let la = codeBits == 64 ? linear &+ offset : (linear &+ offset) & 0xFFFF_FFFF
                guard let decoded = try? decodeInto(entry, key: entryKey, rip: ip, linear: la, physical: address) else { break }
                d = decoded
            }
            if entry.pointee.tag & Self.crossPageTag != 0 { break }
            if count == 0 { version = entry.pointee.version } else if entry.pointee.version != version { break }
            let length = Int(d.pointee.length)
            if ip &+ UInt64(length) &- 1 > limit { break }
            code[count] = d.pointee
            count += 1
            bytes += length
            if !d.pointee.continuesTrace { break }
        }
        head.pointee.heat = 0
        translations[head - traceHeads] = 0
        head.pointee.count = UInt8(count)
        head.pointee.bytes = UInt16(bytes)
        head.pointee.version = version
        head.pointee.tag = count > 0 ? TraceHead.tag(key: key) : 0
        return head
    }

    /// Forgets every trace (with the decode cache: `flushDecodeCache`).
    func flushTraces() {
        // Zero-filled again, and the pages given back.
        madvise(traceHeads, Self.traceCount * MemoryLayout<TraceHead>.stride, MADV_DONTNEED)
        forgetTranslations()
    }
}
