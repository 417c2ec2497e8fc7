; loop32.asm -> loop32.elf                    (format: multiboot, ELF32 at 1 MiB)
;
; Tests: raw 32-bit integer throughput, a benchmark. Runs this exact
; 8-instruction loop N times (8*N instructions), starting from
; EAX = 0, EBX = 1, ECX = 7, EDX = 0, ESI -> a buffer in .bss:
;     .l: add eax, ebx / xor edx, eax / mov [esi], edx / add ebx, ecx
;         and ebx, 0x7fffffff / rol edx, 3 / dec edi / jnz .l
; The result is fully deterministic.
;
; N is 10,000,000 unless the Multiboot command line (flags bit 2, EAX =
; 0x2BADB002) has a word "iterations=N", N in decimal: a word starts the
; line or follows a space. Digits after the '=' are read until the first
; non-digit, modulo 2^32; N = 0 (or no digit) runs the loop zero times.
;
; Expected COM1 output (exactly):
;     N = 10,000,000 (default):   "loop32 done edx=2c653f59\n"
;     N =  1,000,000:             "loop32 done edx=01a9282c\n"
;     N = 0:                      "loop32 done edx=00000000\n"
; Expected exit: status 0.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

ITERATIONS equ 10000000        ; the default N
MB_MAGIC   equ 0x2BADB002
MBI_CMDLINE equ 16              ; valid if flags bit 2

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call uart_init
        call iterations         ; EDI = N

        xor eax, eax            ; fixed starting values: the result depends on them
        mov ebx, 1
        mov ecx, 7
        xor edx, edx
        mov esi, buf
        test edi, edi
        jz .done                ; N = 0: the loop below would run 2^32 times
.l:     add eax, ebx
        xor edx, eax
        mov [esi], edx
        add ebx, ecx
        and ebx, 0x7fffffff
        rol edx, 3
        dec edi
        jnz .l

.done:  mov esi, s_done
        call puts
        mov eax, edx
        call puthex32
        mov al, 10
        call putc
        mov al, 0
        jmp exit_with

%include "multiboot-iterations.inc"

section .data
s_done: db "loop32 done edx=", 0

section .bss
        alignb 64
buf:    resb 64                 ; the loop's store target
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart32.inc"
