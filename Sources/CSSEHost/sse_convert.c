// Conversions between floating point and integers (CVT*, CVTT*): the host instruction under
// the guest's MXCSR, so rounding, the "integer indefinite" 0x80000000/0x8000000000000000 for
// NaN and out-of-range inputs, and the flags are the hardware's.
#include "sse_internal.h"

/// xmm -> general register: CVT(T)SS2SI, CVT(T)SD2SI, 32 or 64 bits.
#define TO_GPR32(insn) do { \
    __m128i s_ = load128(a->s); uint32_t g_; uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %[s], %k[g]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [g] "=r"(g_), [h] "+m"(h_), [o] "=m"(o_) : [s] "x"(s_), [m] "m"(m_)); \
    a->gpr = g_; a->raised = o_ & 0x3F; return TANDEM_SSE_OUT_GPR; } while (0)
#define TO_GPR64(insn) do { \
    __m128i s_ = load128(a->s); uint64_t g_; uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %[s], %q[g]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [g] "=r"(g_), [h] "+m"(h_), [o] "=m"(o_) : [s] "x"(s_), [m] "m"(m_)); \
    a->gpr = g_; a->raised = o_ & 0x3F; return TANDEM_SSE_OUT_GPR; } while (0)
/// general register -> xmm: CVTSI2SS/SD (the upper lanes of the destination stay).
#define FROM_GPR(insn, mod) do { \
    __m128i d_ = load128(a->d); uint64_t g_ = a->gpr; uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %" mod "[g], %[d]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [d] "+x"(d_), [h] "+m"(h_), [o] "=m"(o_) : [g] "r"(g_), [m] "m"(m_)); \
    store128(a->d, d_); a->raised = o_ & 0x3F; return TANDEM_SSE_OUT_DST; } while (0)

/// The MMX forms (CVTPI2PS, CVTPS2PI, ...) as their SSE2 relatives on the low lanes: the
/// interpreter has no host MMX state to borrow (it would disturb the host's x87 tags), and
/// the extra lanes are zeros, which convert exactly and raise nothing.
static uint32_t via(uint32_t e, tandem_sse_args *a) { return tandem_sse_convert(e, a); }

uint32_t tandem_sse_convert(uint32_t e, tandem_sse_args *a) {
    switch (e) {
    case ENC(1, P_F3, 0x2A, 0): FROM_GPR("cvtsi2ssl", "k");
    case ENC(1, P_F3, 0x2A, 1): FROM_GPR("cvtsi2ssq", "q");
    case ENC(1, P_F2, 0x2A, 0): FROM_GPR("cvtsi2sdl", "k");
    case ENC(1, P_F2, 0x2A, 1): FROM_GPR("cvtsi2sdq", "q");
    case ENC(1, P_F3, 0x2C, 0): TO_GPR32("cvttss2si");
    case ENC(1, P_F3, 0x2C, 1): TO_GPR64("cvttss2si");
    case ENC(1, P_F2, 0x2C, 0): TO_GPR32("cvttsd2si");
    case ENC(1, P_F2, 0x2C, 1): TO_GPR64("cvttsd2si");
    case ENC(1, P_F3, 0x2D, 0): TO_GPR32("cvtss2si");
    case ENC(1, P_F3, 0x2D, 1): TO_GPR64("cvtss2si");
    case ENC(1, P_F2, 0x2D, 0): TO_GPR32("cvtsd2si");
    case ENC(1, P_F2, 0x2D, 1): TO_GPR64("cvtsd2si");
    case ENC(1, P_NONE, 0x5A, 0): FP_BINARY("cvtps2pd");
    case ENC(1, P_66, 0x5A, 0): FP_BINARY("cvtpd2ps");
    case ENC(1, P_F3, 0x5A, 0): FP_BINARY("cvtss2sd");
    case ENC(1, P_F2, 0x5A, 0): FP_BINARY("cvtsd2ss");
    case ENC(1, P_NONE, 0x5B, 0): FP_BINARY("cvtdq2ps");
    case ENC(1, P_66, 0x5B, 0): FP_BINARY("cvtps2dq");
    case ENC(1, P_F3, 0x5B, 0): FP_BINARY("cvttps2dq");
    case ENC(1, P_66, 0xE6, 0): FP_BINARY("cvttpd2dq");
    case ENC(1, P_F3, 0xE6, 0): FP_BINARY("cvtdq2pd");
    case ENC(1, P_F2, 0xE6, 0): FP_BINARY("cvtpd2dq");
    // MMX forms. Sources arrive zero-extended to 128 bits.
    case ENC(1, P_NONE, 0x2A, 0): {   // CVTPI2PS xmm, mm/m64: lanes 0-1 converted, 2-3 kept
        uint64_t high = a->d[1];
        uint32_t r = via(ENC(1, P_NONE, 0x5B, 0), a);
        a->d[1] = high;
        return r;
    }
    case ENC(1, P_66, 0x2A, 0): return via(ENC(1, P_F3, 0xE6, 0), a);   // CVTPI2PD: exact
    case ENC(1, P_NONE, 0x2C, 0): a->s[1] = 0; return via(ENC(1, P_F3, 0x5B, 0), a);   // CVTTPS2PI
    case ENC(1, P_NONE, 0x2D, 0): a->s[1] = 0; return via(ENC(1, P_66, 0x5B, 0), a);   // CVTPS2PI
    case ENC(1, P_66, 0x2C, 0): return via(ENC(1, P_66, 0xE6, 0), a);   // CVTTPD2PI
    case ENC(1, P_66, 0x2D, 0): return via(ENC(1, P_F2, 0xE6, 0), a);   // CVTPD2PI
    default: return TANDEM_SSE_UNKNOWN;
    }
}
