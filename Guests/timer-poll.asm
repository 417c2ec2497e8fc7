; timer-poll.asm -> timer-poll.elf           (format: elf64, linked at 2 MiB)
;
; Tests: local APIC timer interrupts reach a CPU that never exits to the host — it
; spins with interrupts enabled (no HLT, no PAUSE, no device access) until its
; handler has run. The engine must leave the guest at the timer's deadline by itself:
; the interpreter between blocks, KVM through a host timer that signals the vCPU's
; thread (a CPU in HLT is woken differently: Guests/apic-ipi.asm covers that).
;   1. Each CPU programs its timer periodic (vector 0x40, divide by 1, 1 ms) and
;      spins until TICKS interrupts came; the handler masks the timer at TICKS.
;   2. Then one-shot (vector 0x41, 2 ms), spinning until it came.
;   3. Then, where CPUID offers it, TSC-deadline (vector 0x42, about 1 ms ahead),
;      spinning until it came.
;   4. CPU 0 waits for the others and prints one line per CPU.
;
; Expected COM1 output with N CPUs, one line per CPU i (exactly):
;     cpu<i> periodic=10 one-shot=1 deadline=<1, or 1 as well when not offered>
; Expected exit: status 0. A timer that never interrupts the spin hangs (the test's
; timeout catches it).

bits 64
%include "put-field.inc"
default rel

APIC    equ 0xFEE00000
TICKS   equ 10
MAXCPU  equ 64

section .text
global _start
_start:
        mov r15, rdi                            ; CPU index
        mov r14, rsi                            ; CPU count
        lea rax, [rdi + 1]
        shl rax, 12
        lea rsp, [stacks]
        add rsp, rax
        test r15, r15
        jnz .wait_idt
        lea rax, [on_spurious]
        call fill_idt
        mov edi, 0x40
        lea rax, [on_periodic]
        call set_gate
        mov edi, 0x41
        lea rax, [on_oneshot]
        call set_gate
        mov edi, 0x42
        lea rax, [on_deadline]
        call set_gate
        mov byte [idt_ready], 1
.wait_idt:
        cmp byte [idt_ready], 1
        jne .wait_idt
        lidt [idtr]

        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF           ; SVR: APIC on
        mov dword [rbx + 0x3E0], 0xB            ; divide by 1
        mov dword [rbx + 0x320], 0x20040        ; periodic, vector 0x40
        sti
        mov dword [rbx + 0x380], 1000000        ; 1 ms
        lea rax, [periodic]
.spin1: cmp qword [rax + r15*8], TICKS          ; the handler masks the timer at TICKS
        jb .spin1

        mov dword [rbx + 0x320], 0x00041        ; one-shot, vector 0x41
        mov dword [rbx + 0x380], 2000000        ; 2 ms
        lea rax, [oneshot]
.spin2: cmp qword [rax + r15*8], 1
        jb .spin2

        mov eax, 1                              ; TSC-deadline offered? CPUID.1:ECX[24]
        cpuid
        mov rbx, APIC                           ; (CPUID wrote EBX)
        bt ecx, 24
        jc .deadline
        lea rax, [deadline]
        mov qword [rax + r15*8], 1
        jmp .finished
.deadline:
        mov dword [rbx + 0x320], 0x40042        ; TSC-deadline, vector 0x42
        rdtsc
        shl rdx, 32
        or rax, rdx
        add rax, 1000000                        ; ~1 ms at 1 GHz (sooner on a faster TSC)
        mov rdx, rax
        shr rdx, 32
        mov ecx, 0x6E0                          ; IA32_TSC_DEADLINE
        wrmsr
        lea rax, [deadline]
.spin3: cmp qword [rax + r15*8], 1
        jb .spin3

.finished:
        lock inc qword [done]
        test r15, r15
        jz .report
.park:  cli
        hlt
        jmp .park

.report:
        cmp [done], r14
        jb .report
        call uart_init
        xor ecx, ecx
.line:  cmp rcx, r14
        jae .exit
        lea rsi, [s_cpu]
        call puts
        mov rax, rcx
        call putdec
        put_field s_periodic, periodic
        put_field s_oneshot, oneshot
        put_field s_deadline, deadline
        mov al, 10
        call putc
        inc rcx
        jmp .line
.exit:  mov al, 0
        jmp exit_with

; Handlers count per CPU (R15 is the CPU index in every handler: it is never changed).
on_periodic:
        push rax
        lea rax, [periodic]
        ; A tick already in IRR when the timer was masked is still delivered (as on
        ; hardware, when the handler ran longer than a period): not counted.
        cmp qword [rax + r15*8], TICKS
        jae .eoi
        inc qword [rax + r15*8]
        cmp qword [rax + r15*8], TICKS
        jb .eoi
        mov dword [rbx + 0x320], 0x30040        ; masked (and still periodic)
.eoi:   mov dword [rbx + 0xB0], 0
        pop rax
        iretq

%macro counting_handler 2
%1:     push rax
        lea rax, [%2]
        inc qword [rax + r15*8]
        mov dword [rbx + 0xB0], 0               ; EOI
        pop rax
        iretq
%endmacro
counting_handler on_oneshot, oneshot
counting_handler on_deadline, deadline

on_spurious:
        iretq

section .data
s_cpu:      db "cpu", 0
s_periodic: db " periodic=", 0
s_oneshot:  db " one-shot=", 0
s_deadline: db " deadline=", 0

section .bss
        alignb 16
idt:    resb 256 * 16
idt_ready: resq 1
done:   resq 1
periodic: resq MAXCPU
oneshot:  resq MAXCPU
deadline: resq MAXCPU
        alignb 4096
stacks: resb 4096 * MAXCPU

%include "uart64.inc"
%include "idt64.inc"
