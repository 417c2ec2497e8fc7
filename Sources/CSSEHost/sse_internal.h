// Shared by the family files of the host SSE helper: operand access and the asm wrappers
// that run one instruction under the guest's MXCSR.
#ifndef TANDEM_SSE_INTERNAL_H
#define TANDEM_SSE_INTERNAL_H

#include <immintrin.h>
#include <string.h>
#include "sse_host.h"

#define ENC TANDEM_SSE_ENC
enum { P_NONE = 0, P_66 = 1, P_F3 = 2, P_F2 = 3 };

static inline __m128i load128(const uint64_t *p) { __m128i v; memcpy(&v, p, 16); return v; }
static inline void store128(uint64_t *p, __m128i v) { memcpy(p, &v, 16); }

/// The MXCSR the host runs a guest operation under: the guest's DAZ, rounding control and
/// FTZ, every exception masked (a guest's unmasked exception must not trap the host; the
/// interpreter raises it from the flags), flags clear.
static inline uint32_t host_mxcsr(uint32_t guest) { return (guest & 0xFFC0u) | 0x1F80u; }

/// dst = dst OP src, in one asm statement with the MXCSR switch around it.
#define FP_BINARY(insn) do { \
    __m128i d_ = load128(a->d), s_ = load128(a->s); \
    uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %[s], %[d]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [d] "+x"(d_), [h] "+m"(h_), [o] "=m"(o_) : [s] "x"(s_), [m] "m"(m_)); \
    store128(a->d, d_); a->raised = o_ & 0x3F; return TANDEM_SSE_OUT_DST; } while (0)

/// The same with an immediate (a compile-time constant: one asm statement per value).
#define FP_BINARY_IMM(insn, n) do { \
    __m128i d_ = load128(a->d), s_ = load128(a->s); \
    uint32_t h_ = 0, o_ = 0, m_ = host_mxcsr(a->mxcsr); \
    __asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[m]\n\t" insn " %[i], %[s], %[d]\n\tstmxcsr %[o]\n\tldmxcsr %[h]" \
        : [d] "+x"(d_), [h] "+m"(h_), [o] "=m"(o_) : [s] "x"(s_), [m] "m"(m_), [i] "i"(n)); \
    store128(a->d, d_); a->raised = o_ & 0x3F; return TANDEM_SSE_OUT_DST; } while (0)

/// Case labels 0..N-1 for an operation whose immediate must be an assembler constant.
#define IMM_CASE(M, n) case (n): M(n);
#define IMM_CASES4(M, b) IMM_CASE(M, (b)) IMM_CASE(M, (b) + 1) IMM_CASE(M, (b) + 2) IMM_CASE(M, (b) + 3)
#define IMM_CASES8(M, b) IMM_CASES4(M, b) IMM_CASES4(M, (b) + 4)
#define IMM_CASES16(M, b) IMM_CASES4(M, b) IMM_CASES4(M, (b) + 4) IMM_CASES4(M, (b) + 8) IMM_CASES4(M, (b) + 12)
#define IMM_CASES64(M, b) IMM_CASES16(M, b) IMM_CASES16(M, (b) + 16) IMM_CASES16(M, (b) + 32) IMM_CASES16(M, (b) + 48)
#define IMM_CASES128(M, b) IMM_CASES64(M, b) IMM_CASES64(M, (b) + 64)
#define IMM_CASES256(M, b) IMM_CASES128(M, b) IMM_CASES128(M, (b) + 128)

/// Integer operations that MXCSR does not affect: dst = f(dst, src) with an intrinsic.
#define INT_BINARY(f) do { store128(a->d, f(load128(a->d), load128(a->s))); return TANDEM_SSE_OUT_DST; } while (0)
#define INT_UNARY(f) do { store128(a->d, f(load128(a->s))); return TANDEM_SSE_OUT_DST; } while (0)

#endif
