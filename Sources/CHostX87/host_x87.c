#include "host_x87.h"
#include <string.h>

// 576 stubs of 4 bytes each: the two-byte x87 instruction, RET, INT3. Register forms
// are the encoding itself; memory forms use ModRM mod=00 rm=111, i.e. [rdi], which
// tandem_x87_run points at the operand buffer. Only encodings the host executes are
// ever called (the interpreter checks the register forms against the opcode map first;
// the memory forms it calls are the valid /digits).
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl tandem_x87_stubs\n"
    ".hidden tandem_x87_stubs\n"
    "tandem_x87_stubs:\n"
    ".irp op, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf\n"
    ".set tandem_x87_m, 0xc0\n"
    ".rept 64\n"
    ".byte \\op, tandem_x87_m, 0xc3, 0xcc\n"
    ".set tandem_x87_m, tandem_x87_m + 1\n"
    ".endr\n"
    ".endr\n"
    ".irp op, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf\n"
    ".set tandem_x87_d, 0\n"
    ".rept 8\n"
    ".byte \\op, (tandem_x87_d << 3) | 7, 0xc3, 0xcc\n"
    ".set tandem_x87_d, tandem_x87_d + 1\n"
    ".endr\n"
    ".endr\n"
    "\n"
    // tandem_x87_run(image rdi, stub address rsi, memory rdx, rflags rcx) -> rflags.
    // FRSTOR the 108-byte image, run the stub, FNSAVE it back (FNSAVE does not wait,
    // so an unmasked exception the instruction raised stays in the image and never
    // reaches the host), and restore the caller's control word (callee-saved in the
    // SysV ABI). Written as a whole function: the stub is CALLed, which inline asm
    // could not do safely over the red zone.
    ".p2align 4\n"
    ".globl tandem_x87_run\n"
    ".hidden tandem_x87_run\n"
    ".type tandem_x87_run, @function\n"
    "tandem_x87_run:\n"
    "    push %rbx\n"
    "    sub $16, %rsp\n"
    "    fnstcw (%rsp)\n"
    "    mov %rdi, %rbx\n"
    "    frstor (%rbx)\n"
    "    mov %rdx, %rdi\n"
    "    push %rcx\n"
    "    popfq\n"
    "    call *%rsi\n"
    "    pushfq\n"
    "    pop %rax\n"
    "    fnsave (%rbx)\n"
    "    fldcw (%rsp)\n"
    "    add $16, %rsp\n"
    "    pop %rbx\n"
    "    ret\n"
    ".size tandem_x87_run, . - tandem_x87_run\n");

extern const unsigned char tandem_x87_stubs[];
uint64_t tandem_x87_run(void *image, const void *stub, void *memory, uint64_t rflags);

uint64_t tandem_x87_execute(tandem_x87_frame *frame, unsigned stub, void *memory, uint64_t rflags) {
    if (stub >= TANDEM_X87_STUB_COUNT) return rflags;
    // The FSAVE image in the 32-bit protected-mode layout (what 64-bit code uses):
    // control, status and tag words in 32-bit slots, pointers (unused here), then the
    // eight registers in stack order, 10 bytes each.
    unsigned char image[108];
    memset(image, 0, sizeof image);
    memcpy(image + 0, &frame->fcw, 2);
    memcpy(image + 4, &frame->fsw, 2);
    memcpy(image + 8, &frame->ftw, 2);
    for (int i = 0; i < 8; i++) {
        memcpy(image + 28 + 10 * i, &frame->st[i].significand, 8);
        memcpy(image + 36 + 10 * i, &frame->st[i].sign_exponent, 2);
    }
    // Only the status flags FCMOVcc reads and FCOMI writes; never TF, DF or AC.
    uint64_t flags = (rflags & 0x8D5) | 2;
    uint64_t out = tandem_x87_run(image, tandem_x87_stubs + 4 * stub, memory, flags);
    memcpy(&frame->fcw, image + 0, 2);
    memcpy(&frame->fsw, image + 4, 2);
    memcpy(&frame->ftw, image + 8, 2);
    for (int i = 0; i < 8; i++) {
        memcpy(&frame->st[i].significand, image + 28 + 10 * i, 8);
        memcpy(&frame->st[i].sign_exponent, image + 36 + 10 * i, 2);
    }
    return out;
}
