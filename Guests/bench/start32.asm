; start32.asm: the Multiboot entry of cbench32.elf (ELF32 at 1 MiB, 32-bit protected mode,
; paging off, as the Multiboot loaders of Tandem and QEMU leave it). Takes a stack and
; calls bench_main(); its return value goes to port 0xF4: Tandem's exit device (status
; v & 0xFF), and QEMU's isa-debug-exit when Tools/bench gives it at 0xF4.
bits 32
extern bench_main
MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003
section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)
section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call bench_main
        out 0xf4, al
.halt:  hlt
        jmp .halt
section .bss
        alignb 16
stack:  resb 65536
stack_top:
