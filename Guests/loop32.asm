; loop32.asm -> loop32.elf                    (format: multiboot, ELF32 at 1 MiB)
;
; Tests: raw 32-bit integer throughput, a benchmark. Runs this exact
; 8-instruction loop 10,000,000 times (80M instructions), starting from
; EAX = 0, EBX = 1, ECX = 7, EDX = 0, ESI -> a buffer in .bss:
;     .l: add eax, ebx / xor edx, eax / mov [esi], edx / add ebx, ecx
;         and ebx, 0x7fffffff / rol edx, 3 / dec edi / jnz .l
; The result is fully deterministic.
;
; Expected COM1 output (exactly):  "loop32 done edx=2c653f59\n"
; Expected exit: status 0.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

ITERATIONS equ 10000000

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call uart_init

        xor eax, eax            ; fixed starting values: the result depends on them
        mov ebx, 1
        mov ecx, 7
        xor edx, edx
        mov esi, buf
        mov edi, ITERATIONS
.l:     add eax, ebx
        xor edx, eax
        mov [esi], edx
        add ebx, ecx
        and ebx, 0x7fffffff
        rol edx, 3
        dec edi
        jnz .l

        mov esi, s_done
        call puts
        mov eax, edx
        call puthex32
        mov al, 10
        call putc
        mov al, 0
        jmp exit_with

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
