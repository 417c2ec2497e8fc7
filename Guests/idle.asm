; idle.asm -> idle.elf                       (format: elf64, linked at 2 MiB)
;
; Benchmark (Tools/bench platform), not a test: an idle machine. Every CPU runs a
; 1 kHz periodic LAPIC timer (1,000,000 counts at the 1 GHz bus clock) and waits
; for TICKS ticks in STI;HLT, as an idle kernel does; the host should spend almost
; nothing on it. CPU 0 then waits for the others (still in HLT, on its ticks) and exits.
;
; Expected COM1 output: "idle: done\n" after about 2 s. Exit status 0.

bits 64
default rel

APIC    equ 0xFEE00000
TICKS   equ 2000

section .text
global _start
_start:
        mov r15, rdi
        mov r14, rsi
        lea rax, [rdi + 1]
        shl rax, 12
        lea rsp, [stacks]
        add rsp, rax
        lea rax, [on_timer]                     ; gate 0x40
        mov edi, 0x40
        call set_gate
        lidt [idtr]
        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF
        mov dword [rbx + 0x3E0], 0xB
        mov dword [rbx + 0x320], 0x20040        ; periodic, vector 0x40
        mov dword [rbx + 0x380], 1000000        ; 1 ms
        xor r12, r12
.wait:  cli
        cmp r12, TICKS
        jae .done
        sti
        hlt
        jmp .wait
.done:  lock inc qword [finished]
        test r15, r15
        jz .report
        mov dword [rbx + 0x320], 0x10040        ; masked: this CPU is done
.park:  cli
        hlt
        jmp .park
.report:                                        ; CPU 0 waits for the others in HLT too,
        cli                                     ; woken by its own ticks (never spinning)
        cmp [finished], r14
        jae .print
        sti
        hlt
        jmp .report
.print: mov dword [rbx + 0x320], 0x10040
        call uart_init
        lea rsi, [s_done]
        call puts
        mov al, 0
        jmp exit_with

on_timer:
        inc r12
        mov dword [rbx + 0xB0], 0
        iretq

section .data
s_done: db "idle: done", 10, 0

section .bss
        alignb 16
idt:    resb 256 * 16
finished: resq 1
        alignb 4096
stacks: resb 4096 * 64

%include "uart64.inc"
%include "idt64.inc"
