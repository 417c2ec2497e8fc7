/// The operations the interpreter executes: a dense integer the executor switches over.
/// Case names match Capstone's mnemonics so the decoder can map Capstone's instruction
/// ids to them by name, once, at start-up.
enum Op: UInt16, CaseIterable {
    case invalid
    // Data movement
    case mov, movabs, movzx, movsx, movsxd, xchg, xadd, cmpxchg, cmpxchg8b, cmpxchg16b, bswap, lea
    case push, pop, pushaw, pushal, popaw, popal, pushf, pushfd, pushfq, popf, popfd, popfq
    case lahf, sahf, cbw, cwde, cdqe, cwd, cdq, cqo, xlatb, enter, leave, lds, les, lfs, lgs, lss, movbe
    // Arithmetic and logic
    case add, adc, sub, sbb, and, or, xor, cmp, test, inc, dec, neg, not, mul, imul, div, idiv
    case daa, das, aaa, aas, aam, aad, salc
    case rol, ror, rcl, rcr, shl, sal, shr, sar, shld, shrd
    case bt, bts, btr, btc, bsf, bsr
    // Control transfer
    case jmp, ljmp, call, lcall, ret, retf, retfq, iret, iretd, iretq
    case int, int1, int3, into, bound
    case jo, jno, jb, jae, je, jne, jbe, ja, js, jns, jp, jnp, jl, jge, jle, jg
    case jcxz, jecxz, jrcxz, loop, loope, loopne
    case seto, setno, setb, setae, sete, setne, setbe, seta, sets, setns, setp, setnp, setl, setge, setle, setg
    case cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs, cmovns, cmovp, cmovnp, cmovl, cmovge, cmovle, cmovg
    // Strings
    case movsb, movsw, movsd, movsq, cmpsb, cmpsw, cmpsd, cmpsq, stosb, stosw, stosd, stosq
    case lodsb, lodsw, lodsd, lodsq, scasb, scasw, scasd, scasq, insb, insw, insd, outsb, outsw, outsd
    // Flags
    case clc, stc, cmc, cld, std, cli, sti
    // System
    case hlt, nop, pause, cpuid, rdtsc, rdtscp, rdrand, rdseed, rdmsr, wrmsr, `in`, out
    case lgdt, lidt, sgdt, sidt, lldt, sldt, ltr, str, smsw, lmsw, clts, arpl, lar, lsl, verr, verw
    case invlpg, wbinvd, invd, syscall, sysret, sysenter, sysexit, swapgs, ud2, ud0, wait, clac, stac
    case rdfsbase, rdgsbase, wrfsbase, wrgsbase, invpcid
    /// SERIALIZE (NP 0F 01 E8): Capstone 4 does not know it; the decoder recognises its bytes.
    case serialize
    case prefetch, prefetchw, prefetcht0, prefetcht1, prefetcht2, prefetchnta, lfence, sfence, mfence, clflush
    /// CET's branch-target markers: NOPs on a CPU without CET (the hint-NOP space 0F 1E).
    case endbr64, endbr32
    // Bit manipulation (POPCNT, LZCNT, BMI1, BMI2) and ADX
    case popcnt, lzcnt, tzcnt, andn, bextr, blsi, blsmsk, blsr, bzhi, pdep, pext, rorx, sarx, shlx, shrx, mulx, adcx, adox
    // x87 FPU: every D8-DF escape is one operation; X87.swift dispatches on the opcode byte
    // and ModRM (Capstone's names for them are many and partly undocumented aliases).
    case x87
    /// MMX, SSE..SSE4.2, FXSAVE/XSAVE, XGETBV/XSETBV: one op, told apart by `DecodedInstruction.simd`.
    case sse
    /// A recognised instruction outside the implemented set (AVX, ...).
    case unimplemented
}

extension Op {
    /// Condition code (0-15, the encoding's tttn) of a jcc/setcc/cmovcc.
    @inline(__always) var conditionCode: Int? {
        let r = Int(rawValue)
        if r >= Int(Op.jo.rawValue) && r <= Int(Op.jg.rawValue) { return r - Int(Op.jo.rawValue) }
        if r >= Int(Op.seto.rawValue) && r <= Int(Op.setg.rawValue) { return r - Int(Op.seto.rawValue) }
        if r >= Int(Op.cmovo.rawValue) && r <= Int(Op.cmovg.rawValue) { return r - Int(Op.cmovo.rawValue) }
        return nil
    }
}
