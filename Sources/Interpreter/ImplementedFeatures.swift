import X86

extension InterpreterMachine {
    // ============================================================================
    // THE INTERPRETER'S CPUID FEATURE SET — the one place to switch a flag on.
    //
    // Every flag here is offered to guests (on both engines: KVM offers at most this)
    // only because the interpreter executes the instructions or facility behind it.
    // Tests/TandemTests/CPUIDTests.swift runs one instruction of each offered group.
    // ============================================================================
    public static let implementedFeatures: Set<CPUFeature> = [
        // Leaf 1 EDX
        .fpu,      // x87 (X87.swift on the host FPU), FWAIT, #MF, CR0.EM/TS/NE
        .pse,      // 4 MiB pages (Paging.swift)
        .tsc,      // RDTSC, CR4.TSD
        .msr,      // RDMSR/WRMSR
        .pae,      // PAE and 4-level paging
        .cx8,      // CMPXCHG8B
        .apic,     // the local APIC (Devices/LocalAPIC.swift) behind MSR 0x1B and 0xFEE00000
        .sep,      // SYSENTER/SYSEXIT
        .mtrr,     // MTRR MSRs (System.swift; storage in CPUState.msrs.mtrrs)
        .pge,      // global pages (CR4.PGE, TLB keeps them)
        .cmov,     // CMOVcc
        .pat,      // IA32_PAT
        .pse36,    // 4 MiB page frames above 4 GiB
        .clflush,  // CLFLUSH (a no-op: no caches are modelled)
        .mmx,      // MMX on the x87 registers (SSE*.swift, CSSEHost)
        .fxsr,     // FXSAVE/FXRSTOR, CR4.OSFXSR (SaveRestore.swift)
        .sse, .sse2, // SSE, SSE2 under the guest's MXCSR
        // Leaf 1 ECX
        .sse3, .ssse3, .sse41, .sse42, // incl. PCMPxSTRx and CRC32 (SSE4.2)
        .cx16,     // CMPXCHG16B
        .x2apic,   // x2APIC MSRs (answered by the interrupt controller); see GuestCPUID(x2APIC:)
        .movbe,    // MOVBE
        .popcnt,   // POPCNT
        .tscDeadline, // IA32_TSC_DEADLINE (interrupt controller)
        .xsave,    // XSAVE/XSAVEOPT/XSAVEC/XRSTOR, XGETBV/XSETBV for x87 | SSE (SaveRestore.swift), leaf 0xD
        .rdrand,   // RDRAND (host randomness)
        // Leaf 7 EBX
        .bmi1, .bmi2, .adx, .rdseed,
        // 0x8000_0001 ECX
        .lahfLM,   // LAHF/SAHF in 64-bit mode
        .abm,      // LZCNT
        .prefetchw, // PREFETCHW (0F 0D /1, a hint)
        // 0x8000_0001 EDX
        .syscall,  // SYSCALL/SYSRET
        .nx,       // EFER.NXE, XD in page tables
        .rdtscp,   // RDTSCP with IA32_TSC_AUX
        .lm,       // long mode
    ]
}
