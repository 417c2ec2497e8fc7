#if canImport(Glibc)
import Glibc
#endif

/// Where translated traces live and when they are made (see `TraceTranslator`).
extension InterpreterVCPU {
    /// Bytes of host code per vCPU (reserved, committed as written): a Linux boot's hot
    /// traces take a few MiB.
    static let translationCapacity = 32 << 20
    /// A trace is translated once it has been entered this many times untranslated: most
    /// code runs a few times only (start-up, initialisation), and translating costs far
    /// more than interpreting a trace once.
    static let translationThreshold: UInt8 = 32

    /// Memory for host code: readable, writable and executable, reserved without committing.
    static func reserveCode(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "cannot reserve memory for translated code")
        return p!
    }

    /// Which translations fit the current mode: 1 for 32-bit code with a 32-bit stack, 2 for
    /// 64-bit code, 3 for real mode with a 16-bit stack; 0 where there are none (16-bit
    /// protected mode, virtual-8086 mode, other stack sizes).
    @inline(__always)
    var translationKey: UInt {
        codeBits == 64 ? 2 : codeBits == 32 ? (stackMask == 0xFFFF_FFFF ? 1 : 0) : (!protectedMode && stackMask == 0xFFFF ? 3 : 0)
    }

    /// Runs translation `t` (a slot's value whose key matched): returns the instructions retired.
    /// `budget`: what is left for translations it goes on into.
    @inline(__always)
    func runTranslation(_ t: UInt, budget: Int) -> UInt64 {
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: t & ~15).unsafelyUnwrapped, to: TranslatedTrace.Entry.self)
        return entry(UnsafeMutableRawPointer(s), UnsafeMutableRawPointer(tlbTable), UnsafeMutableRawPointer(lazy),
                     UnsafeMutableRawPointer(mutating: codePages.words), budget)
    }

    /// Translates `head`'s trace for the current mode (`key`), or marks it untranslatable.
    @inline(never)
    func translate(_ head: UnsafeMutablePointer<TraceHead>, key: UInt) {
        let slot = head - traceHeads
        let physical = head.pointee.key >> 2
        let page = Int(truncatingIfNeeded: physical >> 12)
        var site = TranslationSite(physical: physical, mode: head.pointee.key & 3, key: key, heads: traceHeads,
                                   slotOf: { [unowned self] in self.traceSlot($0) - self.traceHeads }, translations: translations,
                                   wordIndex: page < codePages.pageCount ? page : codePages.pageCount)
        site.version = head.pointee.version
        site.vcpu = UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())
        site.interpret = unsafeBitCast(Self.interpretForTranslation, to: UInt.self)
        site.condition = unsafeBitCast(Self.conditionForTranslation, to: UInt.self)
        site.materialize = unsafeBitCast(Self.materializeForTranslation, to: UInt.self)
        var translator = TraceTranslator(layout: translatorLayout, codeBits: codeBits, pageCount: codePages.pageCount, site: site)
        guard let (code, _) = translator.translate(traceInstructions(head), count: Int(head.pointee.count)) else {
            translations[slot] = TranslatedTrace.untranslatable
            return
        }
        let size = (code.count + 15) & ~15
        if translatedUsed + size > Self.translationCapacity {
            forgetTranslations()
        }
        let at = translatedCode + translatedUsed
        code.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        translatedUsed += size
        translations[slot] = UInt(bitPattern: at) | key
    }

    // The three entries below borrow the vCPU (`_withUnsafeGuaranteedRef`: the translated
    // code's caller holds it) instead of taking it (`takeUnretainedValue`), whose retain and
    // release were a quarter of string32's samples, on every instruction without a template.

    /// What translated code calls for an instruction without a template: 0 it completed,
    /// 1 it faulted (`translationFault`), 2 it completed and ends the block (`endBlock`).
    static let interpretForTranslation: @convention(c) (UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Int = { vcpu, d in
        Unmanaged<InterpreterVCPU>.fromOpaque(vcpu)._withUnsafeGuaranteedRef { $0.interpretOne(d.assumingMemoryBound(to: DecodedInstruction.self)) }
    }

    /// Condition `cc` (tttn) of the deferred or computed flags: 1 true, 0 false.
    static let conditionForTranslation: @convention(c) (UnsafeMutableRawPointer, Int) -> Int = { vcpu, cc in
        Unmanaged<InterpreterVCPU>.fromOpaque(vcpu)._withUnsafeGuaranteedRef { $0.conditionOutOfLine(cc) } ? 1 : 0
    }

    /// Computes the deferred flags into RFLAGS (before inc and dec, which keep CF).
    static let materializeForTranslation: @convention(c) (UnsafeMutableRawPointer) -> Int = { vcpu in
        Unmanaged<InterpreterVCPU>.fromOpaque(vcpu)._withUnsafeGuaranteedRef { $0.materializeFlagsSlow() }
        return 0
    }

    @inline(never)
    func conditionOutOfLine(_ cc: Int) -> Bool { condition(cc) }

    @inline(never)
    func interpretOne(_ d: UnsafeMutablePointer<DecodedInstruction>) -> Int {
        do throws(Fault) {
            try execute(d, next: (s.pointee.rip &+ UInt64(d.pointee.length)) & ipMask)
        } catch {
            translationFault = error
            return 1
        }
        return endBlock ? 2 : 0
    }

    /// Drops every translation (the traces stay; hot ones are translated again when next
    /// entered, their heat being full).
    func forgetTranslations() {
        madvise(translations, Self.traceCount * MemoryLayout<UInt>.stride, MADV_DONTNEED)
        madvise(translatedCode, Self.translationCapacity, MADV_DONTNEED)
        translatedUsed = 0
    }
}
