// The interpreter's SSE arithmetic, run on the host's own SSE unit.
//
// x86 floating point is specified bit for bit by the hardware that implements it: the
// rounding under each MXCSR mode, DAZ and FTZ, which QNaN an operation returns, the
// "indefinite" values, the approximations of RCPPS/RSQRTPS (which differ between vendors)
// and the six exception flags. Reimplementing that in Swift would be a second, subtly
// different FPU. Instead each operation is one host instruction run under the guest's
// MXCSR: load the guest's rounding/DAZ/FTZ with every exception masked and the flags clear,
// execute, read the flags back, restore the host's MXCSR -- all inside one asm statement,
// so the compiler cannot move the operation across the MXCSR switches. The interpreter
// (Swift) decodes, fetches operands, checks alignment and privileges, decides whether a
// raised flag is an unmasked exception (#XM/#UD), and commits the result.
//
// The integer operations (saturating adds, PMADDWD, PSADBW, PCMPxSTRx, CRC32, ...) use the
// same host instructions through intrinsics: they do not depend on MXCSR, and the host
// instruction is the reference the guest program was written against.
//
// Operations are named by their legacy SSE encoding (see TANDEM_SSE_ENC): the map
// (1 = 0F, 2 = 0F 38, 3 = 0F 3A), the mandatory prefix (0 none, 1 66, 2 F3, 3 F2), the
// opcode byte, and REX.W where it changes the operation (CVTSI2SS r64 ...).
#ifndef TANDEM_SSE_HOST_H
#define TANDEM_SSE_HOST_H

#include <stdint.h>

#if !defined(__x86_64__)
#error "Tandem's interpreter runs guest SSE on the host's SSE unit: it needs an x86-64 host"
#endif

#define TANDEM_SSE_ENC(map, prefix, opcode, w) (((w) << 12) | ((map) << 10) | ((prefix) << 8) | (opcode))

/// Outputs an operation produced (the return value's bits).
enum {
    TANDEM_SSE_OUT_DST = 1,     ///< `d` holds the new destination register
    TANDEM_SSE_OUT_GPR = 2,     ///< `gpr` holds a general-register result (written to the ModRM.reg GPR)
    TANDEM_SSE_OUT_EFLAGS = 4,  ///< `eflags` holds new CF/PF/AF/ZF/SF/OF
    TANDEM_SSE_OUT_XMM0 = 8,    ///< `d` holds the new XMM0 (PCMPxSTRM)
    TANDEM_SSE_OUT_ECX = 16,    ///< `gpr` holds the new ECX (PCMPxSTRI)
    TANDEM_SSE_UNKNOWN = 0x80000000u,
};

typedef struct {
    uint64_t d[2];      ///< destination (ModRM.reg) in, result out
    uint64_t s[2];      ///< source (ModRM.rm register or memory), zero-extended when narrower
    uint64_t x0[2];     ///< XMM0, the implicit mask of BLENDVPS/BLENDVPD/PBLENDVB
    uint64_t rax, rdx;  ///< explicit lengths of PCMPESTRx, already made absolute and clamped
    uint64_t gpr;       ///< general-register source (CVTSI2SS ...) in, or result out
    uint32_t mxcsr;     ///< the guest's MXCSR
    uint32_t raised;    ///< out: MXCSR exception flags (bits 0-5) the operation raised
    uint32_t eflags;    ///< out: arithmetic flags, when TANDEM_SSE_OUT_EFLAGS
    uint32_t imm;       ///< imm8
} tandem_sse_args;

/// Runs the operation `encoding` on `a`; returns the TANDEM_SSE_OUT_* outputs it produced,
/// or TANDEM_SSE_UNKNOWN when the encoding is no operation of this helper.
uint32_t tandem_sse_execute(uint32_t encoding, tandem_sse_args *a);

// The families, each in its own file; tandem_sse_execute tries them in turn.
uint32_t tandem_sse_arithmetic(uint32_t encoding, tandem_sse_args *a);   // sse_arithmetic.c
uint32_t tandem_sse_convert(uint32_t encoding, tandem_sse_args *a);      // sse_convert.c
uint32_t tandem_sse_integer(uint32_t encoding, tandem_sse_args *a);      // sse_integer.c
uint32_t tandem_sse4(uint32_t encoding, tandem_sse_args *a);             // sse4.c
uint32_t tandem_sse_string_compare(uint32_t encoding, tandem_sse_args *a); // string_compare.c

#endif
