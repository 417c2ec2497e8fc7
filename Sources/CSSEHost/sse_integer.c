// Packed integers (SSE2 and SSSE3) and the data-rearranging operations (unpacks, packs,
// shuffles). MXCSR plays no part; the 128-bit host instruction is the reference. The
// interpreter runs the MMX forms through here too, as the 128-bit operation on the low
// quadword (rearranging the inputs first where lanes cross: packs, high unpacks, PHADD).
#include "sse_internal.h"

static uint32_t shuffle_dwords(tandem_sse_args *a) {   // PSHUFD
    uint32_t s[4], r[4];
    memcpy(s, a->s, 16);
    for (int i = 0; i < 4; i++) r[i] = s[(a->imm >> (2 * i)) & 3];
    memcpy(a->d, r, 16);
    return TANDEM_SSE_OUT_DST;
}

/// PSHUFLW (high = 0) / PSHUFHW (high = 1): four words of one half, the other half copied.
static uint32_t shuffle_words(tandem_sse_args *a, int high) {
    uint16_t s[8], r[8];
    memcpy(s, a->s, 16);
    memcpy(r, s, 16);
    for (int i = 0; i < 4; i++) r[4 * high + i] = s[4 * high + ((a->imm >> (2 * i)) & 3)];
    memcpy(a->d, r, 16);
    return TANDEM_SSE_OUT_DST;
}

static uint32_t shuffle_ps(tandem_sse_args *a) {   // SHUFPS: two lanes from dst, two from src
    uint32_t d[4], s[4], r[4];
    memcpy(d, a->d, 16);
    memcpy(s, a->s, 16);
    r[0] = d[a->imm & 3]; r[1] = d[(a->imm >> 2) & 3];
    r[2] = s[(a->imm >> 4) & 3]; r[3] = s[(a->imm >> 6) & 3];
    memcpy(a->d, r, 16);
    return TANDEM_SSE_OUT_DST;
}

static uint32_t shuffle_pd(tandem_sse_args *a) {   // SHUFPD
    uint64_t r0 = a->d[a->imm & 1], r1 = a->s[(a->imm >> 1) & 1];
    a->d[0] = r0; a->d[1] = r1;
    return TANDEM_SSE_OUT_DST;
}

/// PALIGNR: the 32-byte dst:src shifted right by imm bytes, low 16 (bytes past the end are 0).
static uint32_t align_right(tandem_sse_args *a, int width) {
    uint8_t cat[64] = {0}, r[16];
    memcpy(cat, a->s, width);
    memcpy(cat + width, a->d, width);
    for (int i = 0; i < width; i++) r[i] = a->imm + i < 2 * width ? cat[a->imm + i] : 0;
    memset(a->d, 0, 16);
    memcpy(a->d, r, width);
    return TANDEM_SSE_OUT_DST;
}

/// PSLLDQ (left = 1) / PSRLDQ: whole-register byte shifts; counts over 15 clear it.
static uint32_t byte_shift(tandem_sse_args *a, int left) {
    uint8_t v[16], r[16] = {0};
    memcpy(v, a->d, 16);
    unsigned n = a->imm;
    for (unsigned i = 0; i < 16; i++) {
        if (left) { if (i >= n) r[i] = v[i - n]; }
        else if (i + n < 16) r[i] = v[i + n];
    }
    memcpy(a->d, r, 16);
    return TANDEM_SSE_OUT_DST;
}

uint32_t tandem_sse_integer(uint32_t e, tandem_sse_args *a) {
    switch (e) {
    // Unpacks (the PS/PD forms move the same bits as the dword/qword ones).
    case ENC(1, P_66, 0x60, 0): INT_BINARY(_mm_unpacklo_epi8);
    case ENC(1, P_66, 0x61, 0): INT_BINARY(_mm_unpacklo_epi16);
    case ENC(1, P_66, 0x62, 0): case ENC(1, P_NONE, 0x14, 0): INT_BINARY(_mm_unpacklo_epi32);
    case ENC(1, P_66, 0x6C, 0): case ENC(1, P_66, 0x14, 0): INT_BINARY(_mm_unpacklo_epi64);
    case ENC(1, P_66, 0x68, 0): INT_BINARY(_mm_unpackhi_epi8);
    case ENC(1, P_66, 0x69, 0): INT_BINARY(_mm_unpackhi_epi16);
    case ENC(1, P_66, 0x6A, 0): case ENC(1, P_NONE, 0x15, 0): INT_BINARY(_mm_unpackhi_epi32);
    case ENC(1, P_66, 0x6D, 0): case ENC(1, P_66, 0x15, 0): INT_BINARY(_mm_unpackhi_epi64);
    // Packs with saturation.
    case ENC(1, P_66, 0x63, 0): INT_BINARY(_mm_packs_epi16);
    case ENC(1, P_66, 0x67, 0): INT_BINARY(_mm_packus_epi16);
    case ENC(1, P_66, 0x6B, 0): INT_BINARY(_mm_packs_epi32);
    // Compares.
    case ENC(1, P_66, 0x64, 0): INT_BINARY(_mm_cmpgt_epi8);
    case ENC(1, P_66, 0x65, 0): INT_BINARY(_mm_cmpgt_epi16);
    case ENC(1, P_66, 0x66, 0): INT_BINARY(_mm_cmpgt_epi32);
    case ENC(1, P_66, 0x74, 0): INT_BINARY(_mm_cmpeq_epi8);
    case ENC(1, P_66, 0x75, 0): INT_BINARY(_mm_cmpeq_epi16);
    case ENC(1, P_66, 0x76, 0): INT_BINARY(_mm_cmpeq_epi32);
    // Shifts by the low quadword of the source (counts over the width clear, or fill with the sign).
    case ENC(1, P_66, 0xD1, 0): INT_BINARY(_mm_srl_epi16);
    case ENC(1, P_66, 0xD2, 0): INT_BINARY(_mm_srl_epi32);
    case ENC(1, P_66, 0xD3, 0): INT_BINARY(_mm_srl_epi64);
    case ENC(1, P_66, 0xE1, 0): INT_BINARY(_mm_sra_epi16);
    case ENC(1, P_66, 0xE2, 0): INT_BINARY(_mm_sra_epi32);
    case ENC(1, P_66, 0xF1, 0): INT_BINARY(_mm_sll_epi16);
    case ENC(1, P_66, 0xF2, 0): INT_BINARY(_mm_sll_epi32);
    case ENC(1, P_66, 0xF3, 0): INT_BINARY(_mm_sll_epi64);
    // Add, subtract (wrapping and saturating), multiply.
    case ENC(1, P_66, 0xD4, 0): INT_BINARY(_mm_add_epi64);
    case ENC(1, P_66, 0xD5, 0): INT_BINARY(_mm_mullo_epi16);
    case ENC(1, P_66, 0xD8, 0): INT_BINARY(_mm_subs_epu8);
    case ENC(1, P_66, 0xD9, 0): INT_BINARY(_mm_subs_epu16);
    case ENC(1, P_66, 0xDA, 0): INT_BINARY(_mm_min_epu8);
    case ENC(1, P_66, 0xDB, 0): INT_BINARY(_mm_and_si128);
    case ENC(1, P_66, 0xDC, 0): INT_BINARY(_mm_adds_epu8);
    case ENC(1, P_66, 0xDD, 0): INT_BINARY(_mm_adds_epu16);
    case ENC(1, P_66, 0xDE, 0): INT_BINARY(_mm_max_epu8);
    case ENC(1, P_66, 0xDF, 0): INT_BINARY(_mm_andnot_si128);
    case ENC(1, P_66, 0xE0, 0): INT_BINARY(_mm_avg_epu8);
    case ENC(1, P_66, 0xE3, 0): INT_BINARY(_mm_avg_epu16);
    case ENC(1, P_66, 0xE4, 0): INT_BINARY(_mm_mulhi_epu16);
    case ENC(1, P_66, 0xE5, 0): INT_BINARY(_mm_mulhi_epi16);
    case ENC(1, P_66, 0xE8, 0): INT_BINARY(_mm_subs_epi8);
    case ENC(1, P_66, 0xE9, 0): INT_BINARY(_mm_subs_epi16);
    case ENC(1, P_66, 0xEA, 0): INT_BINARY(_mm_min_epi16);
    case ENC(1, P_66, 0xEB, 0): INT_BINARY(_mm_or_si128);
    case ENC(1, P_66, 0xEC, 0): INT_BINARY(_mm_adds_epi8);
    case ENC(1, P_66, 0xED, 0): INT_BINARY(_mm_adds_epi16);
    case ENC(1, P_66, 0xEE, 0): INT_BINARY(_mm_max_epi16);
    case ENC(1, P_66, 0xEF, 0): INT_BINARY(_mm_xor_si128);
    case ENC(1, P_66, 0xF4, 0): INT_BINARY(_mm_mul_epu32);
    case ENC(1, P_66, 0xF5, 0): INT_BINARY(_mm_madd_epi16);
    case ENC(1, P_66, 0xF6, 0): INT_BINARY(_mm_sad_epu8);
    case ENC(1, P_66, 0xF8, 0): INT_BINARY(_mm_sub_epi8);
    case ENC(1, P_66, 0xF9, 0): INT_BINARY(_mm_sub_epi16);
    case ENC(1, P_66, 0xFA, 0): INT_BINARY(_mm_sub_epi32);
    case ENC(1, P_66, 0xFB, 0): INT_BINARY(_mm_sub_epi64);
    case ENC(1, P_66, 0xFC, 0): INT_BINARY(_mm_add_epi8);
    case ENC(1, P_66, 0xFD, 0): INT_BINARY(_mm_add_epi16);
    case ENC(1, P_66, 0xFE, 0): INT_BINARY(_mm_add_epi32);
    case ENC(1, P_66, 0xD7, 0): a->gpr = (uint32_t)_mm_movemask_epi8(load128(a->s)); return TANDEM_SSE_OUT_GPR;
    // Shuffles with an immediate.
    case ENC(1, P_66, 0x70, 0): return shuffle_dwords(a);
    case ENC(1, P_F2, 0x70, 0): return shuffle_words(a, 0);
    case ENC(1, P_F3, 0x70, 0): return shuffle_words(a, 1);
    case ENC(1, P_NONE, 0x70, 0): {   // PSHUFW mm, mm/m64: the low four words
        uint32_t r = shuffle_words(a, 0);
        a->d[1] = 0;
        return r;
    }
    case ENC(1, P_NONE, 0xC6, 0): return shuffle_ps(a);
    case ENC(1, P_66, 0xC6, 0): return shuffle_pd(a);
    // PSRLDQ (66 0F 73 /3) and PSLLDQ (/7); the interpreter tells them apart with the W bit.
    case ENC(1, P_66, 0x73, 0): return byte_shift(a, 0);
    case ENC(1, P_66, 0x73, 1): return byte_shift(a, 1);
    // SSSE3.
    case ENC(2, P_66, 0x00, 0): INT_BINARY(_mm_shuffle_epi8);
    case ENC(2, P_66, 0x01, 0): INT_BINARY(_mm_hadd_epi16);
    case ENC(2, P_66, 0x02, 0): INT_BINARY(_mm_hadd_epi32);
    case ENC(2, P_66, 0x03, 0): INT_BINARY(_mm_hadds_epi16);
    case ENC(2, P_66, 0x04, 0): INT_BINARY(_mm_maddubs_epi16);
    case ENC(2, P_66, 0x05, 0): INT_BINARY(_mm_hsub_epi16);
    case ENC(2, P_66, 0x06, 0): INT_BINARY(_mm_hsub_epi32);
    case ENC(2, P_66, 0x07, 0): INT_BINARY(_mm_hsubs_epi16);
    case ENC(2, P_66, 0x08, 0): INT_BINARY(_mm_sign_epi8);
    case ENC(2, P_66, 0x09, 0): INT_BINARY(_mm_sign_epi16);
    case ENC(2, P_66, 0x0A, 0): INT_BINARY(_mm_sign_epi32);
    case ENC(2, P_66, 0x0B, 0): INT_BINARY(_mm_mulhrs_epi16);
    case ENC(2, P_66, 0x1C, 0): INT_UNARY(_mm_abs_epi8);
    case ENC(2, P_66, 0x1D, 0): INT_UNARY(_mm_abs_epi16);
    case ENC(2, P_66, 0x1E, 0): INT_UNARY(_mm_abs_epi32);
    case ENC(3, P_66, 0x0F, 0): return align_right(a, 16);
    case ENC(3, P_NONE, 0x0F, 0): return align_right(a, 8);
    default: return TANDEM_SSE_UNKNOWN;
    }
}
