// SSE4.1 and the SSE4.2 compare PCMPGTQ: blends, PTEST, sign/zero extension, the new
// minimum/maximum/multiply forms, ROUND*, DPPS/DPPD, MPSADBW, inserts and extracts.
#include "sse_internal.h"

#define ROUND(n) FP_BINARY_IMM(insn_, n)

static uint32_t blend(tandem_sse_args *a, int lanes) {   // BLENDPS/BLENDPD/PBLENDW: imm bit i picks src lane i
    uint8_t d[16], s[16];
    memcpy(d, a->d, 16);
    memcpy(s, a->s, 16);
    int width = 16 / lanes;
    for (int i = 0; i < lanes; i++)
        if ((a->imm >> i) & 1) memcpy(d + i * width, s + i * width, width);
    memcpy(a->d, d, 16);
    return TANDEM_SSE_OUT_DST;
}

/// INSERTPS: one dword (imm[7:6] of a register source, or the m32 one: W set) into lane
/// imm[5:4], then the lanes of imm[3:0] zeroed.
static uint32_t insert_ps(tandem_sse_args *a, int memory) {
    uint32_t d[4], s[4];
    memcpy(d, a->d, 16);
    memcpy(s, a->s, 16);
    d[(a->imm >> 4) & 3] = memory ? s[0] : s[(a->imm >> 6) & 3];
    for (int i = 0; i < 4; i++) if ((a->imm >> i) & 1) d[i] = 0;
    memcpy(a->d, d, 16);
    return TANDEM_SSE_OUT_DST;
}

/// PEXTRB/W/D/Q, EXTRACTPS, PEXTRW (0F C5): element imm (modulo the count) of the xmm in `d`.
static uint32_t extract(tandem_sse_args *a, int width) {
    uint8_t v[16];
    memcpy(v, a->d, 16);
    int i = a->imm & (16 / width - 1);
    uint64_t r = 0;
    memcpy(&r, v + i * width, width);
    a->gpr = r;
    return TANDEM_SSE_OUT_GPR;
}

/// PINSRB/W/D/Q: the low `width` bytes of `gpr` into element imm of `d`. `lanes` is 4 for
/// the MMX PINSRW, whose index wraps at 4.
static uint32_t insert(tandem_sse_args *a, int width, int lanes) {
    uint8_t v[16];
    memcpy(v, a->d, 16);
    int i = a->imm & (lanes - 1);
    memcpy(v + i * width, &a->gpr, width);
    memcpy(a->d, v, 16);
    return TANDEM_SSE_OUT_DST;
}

uint32_t tandem_sse4(uint32_t e, tandem_sse_args *a) {
    switch (e) {
    case ENC(2, P_66, 0x10, 0): store128(a->d, _mm_blendv_epi8(load128(a->d), load128(a->s), load128(a->x0))); return TANDEM_SSE_OUT_DST;
    case ENC(2, P_66, 0x14, 0):
        store128(a->d, _mm_castps_si128(_mm_blendv_ps(_mm_castsi128_ps(load128(a->d)), _mm_castsi128_ps(load128(a->s)), _mm_castsi128_ps(load128(a->x0)))));
        return TANDEM_SSE_OUT_DST;
    case ENC(2, P_66, 0x15, 0):
        store128(a->d, _mm_castpd_si128(_mm_blendv_pd(_mm_castsi128_pd(load128(a->d)), _mm_castsi128_pd(load128(a->s)), _mm_castsi128_pd(load128(a->x0)))));
        return TANDEM_SSE_OUT_DST;
    case ENC(2, P_66, 0x17, 0): {   // PTEST: ZF = (d AND s) == 0, CF = (NOT d AND s) == 0; others 0
        __m128i d = load128(a->d), s = load128(a->s);
        a->eflags = (uint32_t)_mm_testz_si128(d, s) << 6 | (uint32_t)_mm_testc_si128(d, s);
        return TANDEM_SSE_OUT_EFLAGS;
    }
    case ENC(2, P_66, 0x20, 0): INT_UNARY(_mm_cvtepi8_epi16);
    case ENC(2, P_66, 0x21, 0): INT_UNARY(_mm_cvtepi8_epi32);
    case ENC(2, P_66, 0x22, 0): INT_UNARY(_mm_cvtepi8_epi64);
    case ENC(2, P_66, 0x23, 0): INT_UNARY(_mm_cvtepi16_epi32);
    case ENC(2, P_66, 0x24, 0): INT_UNARY(_mm_cvtepi16_epi64);
    case ENC(2, P_66, 0x25, 0): INT_UNARY(_mm_cvtepi32_epi64);
    case ENC(2, P_66, 0x30, 0): INT_UNARY(_mm_cvtepu8_epi16);
    case ENC(2, P_66, 0x31, 0): INT_UNARY(_mm_cvtepu8_epi32);
    case ENC(2, P_66, 0x32, 0): INT_UNARY(_mm_cvtepu8_epi64);
    case ENC(2, P_66, 0x33, 0): INT_UNARY(_mm_cvtepu16_epi32);
    case ENC(2, P_66, 0x34, 0): INT_UNARY(_mm_cvtepu16_epi64);
    case ENC(2, P_66, 0x35, 0): INT_UNARY(_mm_cvtepu32_epi64);
    case ENC(2, P_66, 0x28, 0): INT_BINARY(_mm_mul_epi32);
    case ENC(2, P_66, 0x29, 0): INT_BINARY(_mm_cmpeq_epi64);
    case ENC(2, P_66, 0x2B, 0): INT_BINARY(_mm_packus_epi32);
    case ENC(2, P_66, 0x37, 0): INT_BINARY(_mm_cmpgt_epi64);
    case ENC(2, P_66, 0x38, 0): INT_BINARY(_mm_min_epi8);
    case ENC(2, P_66, 0x39, 0): INT_BINARY(_mm_min_epi32);
    case ENC(2, P_66, 0x3A, 0): INT_BINARY(_mm_min_epu16);
    case ENC(2, P_66, 0x3B, 0): INT_BINARY(_mm_min_epu32);
    case ENC(2, P_66, 0x3C, 0): INT_BINARY(_mm_max_epi8);
    case ENC(2, P_66, 0x3D, 0): INT_BINARY(_mm_max_epi32);
    case ENC(2, P_66, 0x3E, 0): INT_BINARY(_mm_max_epu16);
    case ENC(2, P_66, 0x3F, 0): INT_BINARY(_mm_max_epu32);
    case ENC(2, P_66, 0x40, 0): INT_BINARY(_mm_mullo_epi32);
    case ENC(2, P_66, 0x41, 0): INT_UNARY(_mm_minpos_epu16);
    // ROUNDPS/PD/SS/SD: imm[1:0] rounding, [2] MXCSR's instead, [3] no precision exception.
#define R(n) FP_BINARY_IMM("roundps", n)
    case ENC(3, P_66, 0x08, 0): switch (a->imm & 15) { IMM_CASES16(R, 0) } break;
#undef R
#define R(n) FP_BINARY_IMM("roundpd", n)
    case ENC(3, P_66, 0x09, 0): switch (a->imm & 15) { IMM_CASES16(R, 0) } break;
#undef R
#define R(n) FP_BINARY_IMM("roundss", n)
    case ENC(3, P_66, 0x0A, 0): switch (a->imm & 15) { IMM_CASES16(R, 0) } break;
#undef R
#define R(n) FP_BINARY_IMM("roundsd", n)
    case ENC(3, P_66, 0x0B, 0): switch (a->imm & 15) { IMM_CASES16(R, 0) } break;
#undef R
    case ENC(3, P_66, 0x0C, 0): return blend(a, 4);
    case ENC(3, P_66, 0x0D, 0): return blend(a, 2);
    case ENC(3, P_66, 0x0E, 0): return blend(a, 8);
    case ENC(3, P_66, 0x14, 0): return extract(a, 1);
    case ENC(3, P_66, 0x15, 0): case ENC(1, P_66, 0xC5, 0): return extract(a, 2);
    case ENC(1, P_NONE, 0xC5, 0): a->imm &= 3; return extract(a, 2);
    case ENC(3, P_66, 0x16, 0): case ENC(3, P_66, 0x17, 0): return extract(a, 4);
    case ENC(3, P_66, 0x16, 1): return extract(a, 8);
    case ENC(3, P_66, 0x20, 0): return insert(a, 1, 16);
    case ENC(3, P_66, 0x21, 0): return insert_ps(a, 0);
    case ENC(3, P_66, 0x21, 1): return insert_ps(a, 1);
    case ENC(3, P_66, 0x22, 0): return insert(a, 4, 4);
    case ENC(3, P_66, 0x22, 1): return insert(a, 8, 2);
    case ENC(1, P_66, 0xC4, 0): return insert(a, 2, 8);
    case ENC(1, P_NONE, 0xC4, 0): return insert(a, 2, 4);
    // DPPS/DPPD: every immediate is its own instruction for the assembler.
#define R(n) FP_BINARY_IMM("dpps", n)
    case ENC(3, P_66, 0x40, 0): switch (a->imm & 0xFF) { IMM_CASES256(R, 0) } break;
#undef R
#define R(n) FP_BINARY_IMM("dppd", n)
    case ENC(3, P_66, 0x41, 0): switch (a->imm & 0x33) { IMM_CASES64(R, 0) } break;
#undef R
#define R(n) do { store128(a->d, _mm_mpsadbw_epu8(load128(a->d), load128(a->s), n)); return TANDEM_SSE_OUT_DST; } while (0)
    case ENC(3, P_66, 0x42, 0): switch (a->imm & 7) { IMM_CASES8(R, 0) } break;
#undef R
    default: break;
    }
    return TANDEM_SSE_UNKNOWN;
}
