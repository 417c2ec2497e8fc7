// SSE/SSE2/SSE3 floating-point arithmetic, logic, comparisons: each the host instruction
// under the guest's MXCSR (see sse_host.h for why).
#include "sse_internal.h"

#define CMP_CASE(insn) \
    switch (a->imm & 7) { \
    case 0: FP_BINARY_IMM(insn, 0); case 1: FP_BINARY_IMM(insn, 1); case 2: FP_BINARY_IMM(insn, 2); \
    case 3: FP_BINARY_IMM(insn, 3); case 4: FP_BINARY_IMM(insn, 4); case 5: FP_BINARY_IMM(insn, 5); \
    case 6: FP_BINARY_IMM(insn, 6); default: FP_BINARY_IMM(insn, 7); }

/// COMISS/UCOMISS/COMISD/UCOMISD: ZF, PF, CF from the comparison; OF, SF, AF cleared.
#define COMPARE_FLAGS(insn) do { \
    __m128i d_ = load128(a->d), s_ = load128(a->s); \
    uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); uint8_t zf, pf, cf; \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %[s], %[d]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [h] "+m"(h_), [o] "=m"(o_), "=@ccz"(zf), "=@ccp"(pf), "=@ccc"(cf) : [d] "x"(d_), [s] "x"(s_), [m] "m"(m_)); \
    a->raised = o_ & 0x3F; a->eflags = (uint32_t)zf << 6 | (uint32_t)pf << 2 | cf; return TANDEM_SSE_OUT_EFLAGS; } while (0)

uint32_t tandem_sse_arithmetic(uint32_t e, tandem_sse_args *a) {
    switch (e) {
    // Square root and the approximations (RCPPS/RSQRTPS: the host's, i.e. this CPU's, tables).
    case ENC(1, P_NONE, 0x51, 0): FP_BINARY("sqrtps");
    case ENC(1, P_66, 0x51, 0): FP_BINARY("sqrtpd");
    case ENC(1, P_F3, 0x51, 0): FP_BINARY("sqrtss");
    case ENC(1, P_F2, 0x51, 0): FP_BINARY("sqrtsd");
    case ENC(1, P_NONE, 0x52, 0): FP_BINARY("rsqrtps");
    case ENC(1, P_F3, 0x52, 0): FP_BINARY("rsqrtss");
    case ENC(1, P_NONE, 0x53, 0): FP_BINARY("rcpps");
    case ENC(1, P_F3, 0x53, 0): FP_BINARY("rcpss");
    // Logic (no exceptions, but the same path keeps them uniform).
    case ENC(1, P_NONE, 0x54, 0): FP_BINARY("andps");
    case ENC(1, P_66, 0x54, 0): FP_BINARY("andpd");
    case ENC(1, P_NONE, 0x55, 0): FP_BINARY("andnps");
    case ENC(1, P_66, 0x55, 0): FP_BINARY("andnpd");
    case ENC(1, P_NONE, 0x56, 0): FP_BINARY("orps");
    case ENC(1, P_66, 0x56, 0): FP_BINARY("orpd");
    case ENC(1, P_NONE, 0x57, 0): FP_BINARY("xorps");
    case ENC(1, P_66, 0x57, 0): FP_BINARY("xorpd");
    // The four basic operations, MIN and MAX (whose operand order decides NaN and ±0 results).
    case ENC(1, P_NONE, 0x58, 0): FP_BINARY("addps");
    case ENC(1, P_66, 0x58, 0): FP_BINARY("addpd");
    case ENC(1, P_F3, 0x58, 0): FP_BINARY("addss");
    case ENC(1, P_F2, 0x58, 0): FP_BINARY("addsd");
    case ENC(1, P_NONE, 0x59, 0): FP_BINARY("mulps");
    case ENC(1, P_66, 0x59, 0): FP_BINARY("mulpd");
    case ENC(1, P_F3, 0x59, 0): FP_BINARY("mulss");
    case ENC(1, P_F2, 0x59, 0): FP_BINARY("mulsd");
    case ENC(1, P_NONE, 0x5C, 0): FP_BINARY("subps");
    case ENC(1, P_66, 0x5C, 0): FP_BINARY("subpd");
    case ENC(1, P_F3, 0x5C, 0): FP_BINARY("subss");
    case ENC(1, P_F2, 0x5C, 0): FP_BINARY("subsd");
    case ENC(1, P_NONE, 0x5D, 0): FP_BINARY("minps");
    case ENC(1, P_66, 0x5D, 0): FP_BINARY("minpd");
    case ENC(1, P_F3, 0x5D, 0): FP_BINARY("minss");
    case ENC(1, P_F2, 0x5D, 0): FP_BINARY("minsd");
    case ENC(1, P_NONE, 0x5E, 0): FP_BINARY("divps");
    case ENC(1, P_66, 0x5E, 0): FP_BINARY("divpd");
    case ENC(1, P_F3, 0x5E, 0): FP_BINARY("divss");
    case ENC(1, P_F2, 0x5E, 0): FP_BINARY("divsd");
    case ENC(1, P_NONE, 0x5F, 0): FP_BINARY("maxps");
    case ENC(1, P_66, 0x5F, 0): FP_BINARY("maxpd");
    case ENC(1, P_F3, 0x5F, 0): FP_BINARY("maxss");
    case ENC(1, P_F2, 0x5F, 0): FP_BINARY("maxsd");
    // SSE3 horizontal and alternating forms.
    case ENC(1, P_66, 0x7C, 0): FP_BINARY("haddpd");
    case ENC(1, P_F2, 0x7C, 0): FP_BINARY("haddps");
    case ENC(1, P_66, 0x7D, 0): FP_BINARY("hsubpd");
    case ENC(1, P_F2, 0x7D, 0): FP_BINARY("hsubps");
    case ENC(1, P_66, 0xD0, 0): FP_BINARY("addsubpd");
    case ENC(1, P_F2, 0xD0, 0): FP_BINARY("addsubps");
    // CMPccPS/PD/SS/SD: the eight predicates of imm8[2:0] (legacy encodings ignore the rest).
    case ENC(1, P_NONE, 0xC2, 0): CMP_CASE("cmpps");
    case ENC(1, P_66, 0xC2, 0): CMP_CASE("cmppd");
    case ENC(1, P_F3, 0xC2, 0): CMP_CASE("cmpss");
    case ENC(1, P_F2, 0xC2, 0): CMP_CASE("cmpsd");
    case ENC(1, P_NONE, 0x2E, 0): COMPARE_FLAGS("ucomiss");
    case ENC(1, P_66, 0x2E, 0): COMPARE_FLAGS("ucomisd");
    case ENC(1, P_NONE, 0x2F, 0): COMPARE_FLAGS("comiss");
    case ENC(1, P_66, 0x2F, 0): COMPARE_FLAGS("comisd");
    // Sign masks to a general register.
    case ENC(1, P_NONE, 0x50, 0): a->gpr = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(load128(a->s))); return TANDEM_SSE_OUT_GPR;
    case ENC(1, P_66, 0x50, 0): a->gpr = (uint32_t)_mm_movemask_pd(_mm_castsi128_pd(load128(a->s))); return TANDEM_SSE_OUT_GPR;
    default: return TANDEM_SSE_UNKNOWN;
    }
}
