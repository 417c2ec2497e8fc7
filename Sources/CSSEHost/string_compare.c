// SSE4.2 string compares (PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM) and CRC32: the host's
// instructions. The interpreter passes PCMPESTRx's lengths already reduced to what the
// hardware uses (|EAX| or |RAX|, at most 16 or 8), so one 32-bit form serves both widths.
#include "sse_internal.h"

// imm8[7] is reserved; imm8[6:0] select everything: 128 instructions per operation.
#define STRI(n, insn, extra_in...) do { \
    __m128i d_ = load128(a->d), s_ = load128(a->s); uint32_t c_; uint8_t cf, zf, sf, of; \
    __asm__(insn " %[i], %[s], %[d]" : "=c"(c_), "=@ccc"(cf), "=@ccz"(zf), "=@ccs"(sf), "=@cco"(of) \
        : [d] "x"(d_), [s] "x"(s_), [i] "i"(n), ## extra_in); \
    a->gpr = c_; \
    a->eflags = (uint32_t)cf | (uint32_t)zf << 6 | (uint32_t)sf << 7 | (uint32_t)of << 11; \
    return TANDEM_SSE_OUT_ECX | TANDEM_SSE_OUT_EFLAGS; } while (0)
#define STRM(n, insn, extra_in...) do { \
    __m128i d_ = load128(a->d), s_ = load128(a->s); __m128i m_; uint8_t cf, zf, sf, of; \
    __asm__(insn " %[i], %[s], %[d]" : "=Yz"(m_), "=@ccc"(cf), "=@ccz"(zf), "=@ccs"(sf), "=@cco"(of) \
        : [d] "x"(d_), [s] "x"(s_), [i] "i"(n), ## extra_in); \
    store128(a->d, m_); \
    a->eflags = (uint32_t)cf | (uint32_t)zf << 6 | (uint32_t)sf << 7 | (uint32_t)of << 11; \
    return TANDEM_SSE_OUT_XMM0 | TANDEM_SSE_OUT_EFLAGS; } while (0)

uint32_t tandem_sse_string_compare(uint32_t e, tandem_sse_args *a) {
    uint32_t la = (uint32_t)a->rax, ld = (uint32_t)a->rdx;
    switch (e) {
#define R(n) STRM(n, "pcmpestrm", "a"(la), "d"(ld))
    case ENC(3, P_66, 0x60, 0): case ENC(3, P_66, 0x60, 1): switch (a->imm & 0x7F) { IMM_CASES128(R, 0) } break;
#undef R
#define R(n) STRI(n, "pcmpestri", "a"(la), "d"(ld))
    case ENC(3, P_66, 0x61, 0): case ENC(3, P_66, 0x61, 1): switch (a->imm & 0x7F) { IMM_CASES128(R, 0) } break;
#undef R
#define R(n) STRM(n, "pcmpistrm")
    case ENC(3, P_66, 0x62, 0): case ENC(3, P_66, 0x62, 1): switch (a->imm & 0x7F) { IMM_CASES128(R, 0) } break;
#undef R
#define R(n) STRI(n, "pcmpistri")
    case ENC(3, P_66, 0x63, 0): case ENC(3, P_66, 0x63, 1): switch (a->imm & 0x7F) { IMM_CASES128(R, 0) } break;
#undef R
    // CRC32 r, r/m: accumulator in gpr, data in s[0]; imm = the data width in bytes.
    case ENC(2, P_F2, 0xF0, 0): case ENC(2, P_F2, 0xF1, 0): case ENC(2, P_F2, 0xF1, 1): {
        uint32_t c = (uint32_t)a->gpr;
        switch (a->imm) {
        case 1: c = _mm_crc32_u8(c, (uint8_t)a->s[0]); break;
        case 2: c = _mm_crc32_u16(c, (uint16_t)a->s[0]); break;
        case 4: c = _mm_crc32_u32(c, (uint32_t)a->s[0]); break;
        default: c = (uint32_t)_mm_crc32_u64(c, a->s[0]); break;
        }
        a->gpr = c;
        return TANDEM_SSE_OUT_GPR;
    }
    default: break;
    }
    return TANDEM_SSE_UNKNOWN;
}
