; timer-rate.asm -> timer-rate.elf           (format: elf64, linked at 2 MiB)
;
; Benchmark (Tools/bench platform), not a test: timer interrupt round trips. CPU 0
; arms its LAPIC timer one-shot with an initial count of 1 (divide by 1: due at
; once), waits for the interrupt in STI;HLT, and the handler EOIs; ROUNDS times.
; Other CPUs halt.
;
; Expected COM1 output: "timer-rate: 100000 interrupts\n". Exit status 0.

bits 64
default rel

APIC    equ 0xFEE00000
ROUNDS  equ 100000

section .text
global _start
_start:
        test rdi, rdi
        jz .bsp
.park:  cli
        hlt
        jmp .park
.bsp:   lea rsp, [stack_top]
        lea rax, [on_timer]                     ; gate 0x40
        mov edi, 0x40
        call set_gate
        lidt [idtr]
        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF
        mov dword [rbx + 0x3E0], 0xB            ; divide by 1
        mov dword [rbx + 0x320], 0x40           ; one-shot, vector 0x40
        xor r12, r12
.round: cli
        mov dword [rbx + 0x380], 1              ; due at once
        sti
        hlt                                     ; the interrupt ends the HLT
        cmp r12, ROUNDS
        jb .round
        call uart_init
        lea rsi, [s_done]
        call puts
        mov rax, r12
        call putdec
        lea rsi, [s_tail]
        call puts
        mov al, 0
        jmp exit_with

on_timer:
        inc r12
        mov dword [rbx + 0xB0], 0               ; EOI
        iretq

section .data
s_done: db "timer-rate: ", 0
s_tail: db " interrupts", 10, 0

section .bss
        alignb 16
idt:    resb 256 * 16
stack:  resb 8192
stack_top:

%include "uart64.inc"
%include "idt64.inc"
