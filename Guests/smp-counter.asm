; smp-counter.asm -> smp-counter.elf          (format: elf64, linked at 2 MiB)
;
; Tests: atomicity of LOCK XADD and LOCK INC across CPUs that all start at
; once. Every CPU adds 1 to a shared counter 100,000 times with LOCK XADD,
; then LOCK INCs a done counter. CPU 0 waits until done = number of CPUs
; and prints the counter; any lost update shows up as a smaller total.
;
; Expected COM1 output with N CPUs (exactly):  "total=<N*100000>\n"
;     e.g. 1 CPU: "total=100000\n", 4 CPUs: "total=400000\n"
; Expected exit: status 0 (from CPU 0); the other CPUs halt.

bits 64
default rel

ITERATIONS equ 100000

section .text
global _start
_start:
        ; RSI = CPU count, RDI = index. The loop uses no stack (RSP = 0).
        mov ecx, ITERATIONS
.add:   mov eax, 1                      ; XADD leaves the old value here
        lock xadd [counter], rax
        dec ecx
        jnz .add
        lock inc qword [done]

        test rdi, rdi
        jnz park
        lea rsp, [stack_top]            ; only CPU 0 calls anything
.wait:  cmp [done], rsi
        jae .all
        pause
        jmp .wait
.all:   call uart_init
        lea rsi, [s_total]
        call puts
        mov rax, [counter]
        call putdec
        mov al, 10
        call putc
        mov al, 0
        jmp exit_with

park:   cli
        hlt
        jmp park

section .data
        align 64
counter: dq 0
        align 64                        ; keep the two hot words on separate lines
done:    dq 0
s_total: db "total=", 0

section .bss
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart64.inc"
