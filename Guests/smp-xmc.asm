; smp-xmc.asm -> smp-xmc.elf              (format: elf64, linked at 2 MiB)
;
; Tests: cross-modifying code. CPU 1 runs a loop of two `mov r32, imm32`
; instructions, the second of which straddles a page boundary (its opcode and
; first immediate byte on one page, the other three bytes on the next). CPU 0
; patches both immediates to 1, 2, ... ROUNDS in turn, and after each patch
; waits until CPU 1 has stored the new values. A stale decoded instruction
; would make CPU 1 keep storing the old value: CPU 0 gives up after a long
; spin and reports the round. Needs 2 CPUs (more just wait).
;
; Expected COM1 output with 2 or more CPUs: "xmc: ok, 2000 rounds\n", exit 0.
; On a stale decode: "xmc: stale code in round R (seen A B)\n", exit 1.
; With 1 CPU: "xmc: needs 2 CPUs\n", exit 2.

bits 64
default rel

ROUNDS     equ 2000
SPIN_LIMIT equ 20000000

section .text
global _start
_start:
        cmp rdi, 1
        je target                       ; CPU 1 runs the patched code
        ja park
        lea rsp, [stack_top]
        call uart_init
        cmp rsi, 2
        jb .alone
        mov r12d, 1                     ; round
.round: mov [imm_a], r12d               ; patch both immediates
        mov [imm_b], r12d               ; (this store straddles the page boundary)
        mov ecx, SPIN_LIMIT
.wait:  cmp [seen_a], r12d
        jne .spin
        cmp [seen_b], r12d
        je .next
.spin:  pause
        dec ecx
        jnz .wait
        lea rsi, [s_stale]
        call puts
        mov eax, r12d
        call putdec
        lea rsi, [s_seen]
        call puts
        mov eax, [seen_a]
        call putdec
        mov al, ' '
        call putc
        mov eax, [seen_b]
        call putdec
        lea rsi, [s_close]
        call puts
        mov al, 1
        jmp exit_with
.next:  inc r12d
        cmp r12d, ROUNDS
        jbe .round
        lea rsi, [s_ok]
        call puts
        mov al, 0
        jmp exit_with
.alone: lea rsi, [s_alone]
        call puts
        mov al, 2
        jmp exit_with

park:   cli
        hlt
        jmp park

section .rodata
s_ok:    db "xmc: ok, 2000 rounds", 10, 0
s_stale: db "xmc: stale code in round ", 0
s_seen:  db " (seen ", 0
s_close: db ")", 10, 0
s_alone: db "xmc: needs 2 CPUs", 10, 0

; The patched code lives in writable memory.
section .data
        align 4096
        times 4089 db 0x90
target:                                 ; page offset 4089
        db 0xB8                         ; mov eax, imm32
imm_a:  dd 0
        db 0xBB                         ; mov ebx, imm32, at offset 4094
imm_b:  dd 0                            ; offsets 4095..4098: across the page boundary
        mov [seen_a], eax
        mov [seen_b], ebx
        ; Until both immediates are the last round's: CPU 0's two patches can fall
        ; between this CPU's two movs (old A, new B), also on hardware.
        cmp eax, ROUNDS
        jb target
        cmp ebx, ROUNDS
        jb target
        jmp park

        align 64
seen_a: dd 0
        align 64
seen_b: dd 0

section .bss
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart64.inc"
