// The host's x87 FPU as the interpreter's floating-point unit.
//
// Guest x87 instructions run on the host's own FPU with the guest's control word,
// status word, tags and registers loaded: the results, exception flags, C0-C3, stack
// faults, masked responses, denormal and unnormal handling and the transcendental
// instructions' precision are then the hardware's own, bit for bit, instead of a
// software model that would have to reproduce them. See Documentation/Interpreter.md.
#ifndef TANDEM_HOST_X87_H
#define TANDEM_HOST_X87_H

#include <stdint.h>

#if !defined(__x86_64__)
#error "Tandem's interpreter runs x87 instructions on an x86-64 host FPU"
#endif

/// One 80-bit register: significand (with its explicit integer bit), then sign and exponent.
typedef struct {
    uint64_t significand;
    uint16_t sign_exponent;
} tandem_x87_register;

/// The x87 state an instruction runs on: control and status word, the full 16-bit tag
/// word (two bits per physical register, as FSAVE stores it) and the registers in stack
/// order (st[0] is ST(0)).
typedef struct {
    uint16_t fcw;
    uint16_t fsw;
    uint16_t ftw;
    tandem_x87_register st[8];
} tandem_x87_frame;

/// Stub numbers: the register forms D8-DF C0-FF are (opcode - 0xD8) * 64 + (modrm - 0xC0);
/// the memory forms are 512 + (opcode - 0xD8) * 8 + ModRM.reg, with their operand in `memory`.
enum { TANDEM_X87_MEMORY_STUBS = 512, TANDEM_X87_STUB_COUNT = 576 };

/// Runs one x87 instruction (stub `stub`) on the host FPU with `frame` loaded, and stores
/// the state after it back into `frame`. `memory` (16 bytes) holds a memory operand, read
/// or written. `rflags` supplies CF, PF, ZF (for FCMOVcc); returns RFLAGS after the
/// instruction (for FCOMI and FUCOMI). The host's own x87 state and control word are
/// as before when it returns, and no host exception is ever left pending: the caller
/// passes a status word without exception flags, and the state is taken with the
/// non-waiting FNSAVE.
uint64_t tandem_x87_execute(tandem_x87_frame *frame, unsigned stub, void *memory, uint64_t rflags);

/// Register ST(i) of a frame (Swift sees the C array as a tuple).
static inline void tandem_x87_frame_set(tandem_x87_frame *frame, int i, uint64_t significand, uint16_t sign_exponent) {
    frame->st[i & 7].significand = significand;
    frame->st[i & 7].sign_exponent = sign_exponent;
}
static inline uint64_t tandem_x87_frame_significand(const tandem_x87_frame *frame, int i) { return frame->st[i & 7].significand; }
static inline uint16_t tandem_x87_frame_sign_exponent(const tandem_x87_frame *frame, int i) { return frame->st[i & 7].sign_exponent; }

#endif
