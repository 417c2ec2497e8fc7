; nmi-pingpong.asm -> nmi-pingpong.elf          (format: elf64, linked at 2 MiB)
;
; Tests: NMIs wake vCPUs halted with interrupts disabled, and a machine whose vCPUs are
; all halted is not "halted for good" while an NMI still waits for one of them. With IF
; clear throughout, ROUNDS times: CPU 1 says it waits and halts; CPU 0 lets it fall asleep,
; sends it an NMI and halts at once, before CPU 1's thread can have woken — for a moment
; every vCPU is halted with IF clear and one NMI is pending (memtest86+'s halt barrier
; does the same); CPU 1's NMI handler counts, and CPU 1 answers with NMIs until CPU 0 has
; moved on. A waiter re-checks its count before each HLT, and the answer is repeated, so
; an NMI that lands just before a HLT costs nothing but the handler. CPUs 2 and up park.
;
; Expected COM1 output (2 or more CPUs): "nmi: 200 rounds\n"; "nmi: needs 2 CPUs\n"
; with one. Exit status 0 (2 with one CPU).

bits 64
default rel

APIC    equ 0xFEE00000
ROUNDS  equ 200
SETTLE  equ 20000                               ; CPU 0's pauses before each NMI

section .text
global _start
_start:
        cli
        mov r15, rdi                            ; this CPU's index
        lea rax, [rdi + 1]
        shl rax, 12
        lea rsp, [stacks]
        add rsp, rax
        cmp rsi, 2
        jb .alone
        cmp r15, 1
        ja .park
        lea rax, [on_nmi]                       ; gate 2: NMI
        mov edi, 2
        call set_gate
        lidt [idtr]
        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF           ; software-enabled
        xor r12, r12                            ; this round
        test r15, r15
        jnz .receiver

.sender:                                        ; CPU 0
        inc r12
.ready: cmp [waiting], r12                      ; CPU 1 waits for this round's NMI
        jae .settle
        pause
        jmp .ready
.settle:
        mov ecx, SETTLE                         ; and has had time to fall asleep
.s:     pause
        loop .s
        mov eax, 1 << 24
        call send_nmi
.w0:    cmp [answered], r12                     ; halt at once, until CPU 1 answers
        jae .moved
        hlt
        jmp .w0
.moved: mov [moved_on], r12
        cmp r12, ROUNDS
        jb .sender
        call uart_init
        lea rsi, [s_done]
        call puts
        mov al, 0
        jmp exit_with

.receiver:                                      ; CPU 1
        inc r12
        mov [waiting], r12
.w1:    cmp [received + 8], r12
        jae .answer
        hlt
        jmp .w1
.answer:
        mov [answered], r12
.again: xor eax, eax                            ; NMI to CPU 0, again until it moves on
        call send_nmi
        mov ecx, 2000
.poll:  cmp [moved_on], r12
        jae .done1
        pause
        loop .poll
        jmp .again
.done1: cmp r12, ROUNDS
        jb .receiver
.park:  cli
        hlt
        jmp .park
.alone: call uart_init
        lea rsi, [s_alone]
        call puts
        mov al, 2
        jmp exit_with

send_nmi:                                       ; EAX = destination << 24
        mov dword [rbx + 0x310], eax
        mov dword [rbx + 0x300], 0x4400         ; NMI, physical, assert
        ret

on_nmi: push rax                                ; count on this CPU (R15 is its index)
        lea rax, [received]
        lock inc qword [rax + r15*8]
        pop rax
        iretq

section .data
s_done:  db "nmi: 200 rounds", 10, 0
s_alone: db "nmi: needs 2 CPUs", 10, 0

section .bss
        alignb 16
idt:    resb 256 * 16
received: resq 2
waiting:  resq 1
answered: resq 1
moved_on: resq 1
        alignb 4096
stacks: resb 4096 * 256

%include "uart64.inc"
%include "idt64.inc"
