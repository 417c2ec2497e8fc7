; apic-ipi.asm -> apic-ipi.elf               (format: elf64, linked at 2 MiB)
;
; Tests: the local APIC on every CPU, in long mode, waiting in HLT.
;   1. Each CPU enables its xAPIC (SVR), programs its timer periodic (vector 0x40,
;      divide by 1, 200,000 counts = 200 us at the 1 GHz APIC bus clock) and counts
;      TICKS interrupts in a STI;HLT loop, EOIing each; then masks the timer.
;   2. CPU 0 sends ROUNDS fixed IPIs (vector 0x41) to each other CPU by physical APIC
;      ID, waiting for each to be counted; then one IPI "all excluding self"
;      (vector 0x42) and one "all including self" (vector 0x43).
;   3. The other CPUs HLT until they have seen all of them, then report done.
;   4. CPU 0 prints one line per CPU and exits with status 0.
;
; Expected COM1 output with N CPUs, one line per CPU i (exactly):
;     cpu<i> ticks=ok ipi=<0 for cpu0, else 100> all-but-self=<0 for cpu0, else 1> all=1
; Expected exit: status 0. A lost interrupt hangs (the test's timeout catches it).

bits 64
%include "put-field.inc"
default rel

APIC    equ 0xFEE00000
TICKS   equ 20
ROUNDS  equ 100
MAXCPU  equ 64

section .text
global _start
_start:
        ; RDI = CPU index, RSI = CPU count. A 4 KiB stack per CPU.
        mov r15, rdi
        mov r14, rsi
        lea rax, [rdi + 1]
        shl rax, 12
        lea rsp, [stacks]
        add rsp, rax

        test r15, r15
        jnz .wait_idt
        call build_idt
        mov byte [idt_ready], 1
.wait_idt:
        cmp byte [idt_ready], 1
        je .load_idt
        pause
        jmp .wait_idt
.load_idt:
        lidt [idtr]

        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF           ; SVR: APIC on, spurious vector 0xFF
        mov dword [rbx + 0x80], 0               ; TPR: accept everything
        mov dword [rbx + 0x3E0], 0xB            ; divide by 1
        mov dword [rbx + 0x320], 0x20040        ; LVT timer: periodic, vector 0x40
        mov dword [rbx + 0x380], 200000         ; initial count: starts the timer
        ; Wait with the classic race-free pattern: check with interrupts off, then
        ; STI;HLT (the STI shadow keeps an interrupt from slipping in between).
.tick:  cli
        lea rax, [ticks]
        cmp qword [rax + r15*8], TICKS
        jae .ticked
        sti
        hlt
        jmp .tick
.ticked:
        mov dword [rbx + 0x320], 0x10040        ; mask the timer
        mov dword [rbx + 0x380], 0              ; and stop it

        sti                                     ; IPIs may arrive from here on
        lock inc qword [ready]
.all_ready:
        cmp [ready], r14
        jae .phase2
        pause
        jmp .all_ready

.phase2:
        test r15, r15
        jnz receiver

        ; CPU 0: ROUNDS IPIs to each other CPU, one at a time.
        mov rcx, 1
.next_cpu:
        cmp rcx, r14
        jae .broadcasts
        xor edx, edx
.round: inc rdx
        mov eax, ecx
        shl eax, 24
        call wait_icr
        mov dword [rbx + 0x310], eax            ; destination: APIC ID rcx
        mov dword [rbx + 0x300], 0x4041         ; fixed, physical, assert, vector 0x41
        lea rax, [ipi]
.counted:
        cmp [rax + rcx*8], rdx
        jae .done_round
        pause
        jmp .counted
.done_round:
        cmp rdx, ROUNDS
        jb .round
        inc rcx
        jmp .next_cpu

.broadcasts:
        call wait_icr
        mov dword [rbx + 0x300], 0xC4042        ; all excluding self, vector 0x42
        call wait_icr
        mov dword [rbx + 0x300], 0x84043        ; all including self, vector 0x43
.self:  cli                                     ; our own 0x43 arrives as an interrupt
        cmp qword [all], 1
        jae .got_self
        sti
        hlt
        jmp .self
.got_self:
        mov rax, r14
        dec rax
.wait_done:
        cmp [done], rax
        jae .report
        pause
        jmp .wait_done

.report:
        call uart_init
        xor ecx, ecx
.line:  cmp rcx, r14
        jae .exit
        lea rsi, [s_cpu]
        call puts
        mov rax, rcx
        call putdec
        lea rsi, [s_ticks]                      ; "ok" for at least TICKS: one more
        call puts                               ; may be pending when the timer is masked
        lea rax, [ticks]
        lea rsi, [s_ok]
        cmp qword [rax + rcx*8], TICKS
        jae .ticks_ok
        lea rsi, [s_few]
.ticks_ok:
        call puts
        put_field s_ipi, ipi
        put_field s_abs, all_but_self
        put_field s_all, all
        mov al, 10
        call putc
        inc rcx
        jmp .line
.exit:  mov al, 0
        jmp exit_with

; The other CPUs wait in HLT for ROUNDS IPIs and both broadcasts.
receiver:
        cli
        lea rax, [ipi]
        cmp qword [rax + r15*8], ROUNDS
        jb .sleep
        lea rax, [all_but_self]
        cmp qword [rax + r15*8], 1
        jb .sleep
        lea rax, [all]
        cmp qword [rax + r15*8], 1
        jae .received
.sleep: sti
        hlt
        jmp receiver
.received:
        lock inc qword [done]
.park:  cli
        hlt
        jmp .park

; Waits until the ICR's delivery status (bit 12) says the last IPI went out.
wait_icr:
        test dword [rbx + 0x300], 0x1000
        jz .ok
        pause
        jmp wait_icr
.ok:    ret

; Interrupt handlers: count per APIC ID, EOI.
%macro counting_handler 2
%1:     push rax
        push rdx
        mov rdx, APIC
        mov eax, [rdx + 0x20]
        shr eax, 24
        mov dword [rdx + 0xB0], 0               ; EOI
        lea rdx, [%2]
        lock inc qword [rdx + rax*8]
        pop rdx
        pop rax
        iretq
%endmacro
counting_handler on_timer, ticks
counting_handler on_ipi, ipi
counting_handler on_all_but_self, all_but_self
counting_handler on_all, all

on_spurious:
        iretq                                   ; no EOI for the spurious vector

; Builds 256 gates: the spurious handler everywhere, then the four vectors.
build_idt:
        push rdi
        push rax
        lea rax, [on_spurious]
        call fill_idt
        mov edi, 0x40
        lea rax, [on_timer]
        call set_gate
        mov edi, 0x41
        lea rax, [on_ipi]
        call set_gate
        mov edi, 0x42
        lea rax, [on_all_but_self]
        call set_gate
        mov edi, 0x43
        lea rax, [on_all]
        call set_gate
        pop rax
        pop rdi
        ret

section .data
s_cpu:  db "cpu", 0
s_ticks: db " ticks=", 0
s_ipi:  db " ipi=", 0
s_ok:   db "ok", 0
s_few:  db "too-few", 0
s_abs:  db " all-but-self=", 0
s_all:  db " all=", 0

section .bss
        alignb 16
idt:    resb 256 * 16
idt_ready: resq 1
ready:  resq 1
done:   resq 1
ticks:  resq MAXCPU
ipi:    resq MAXCPU
all_but_self: resq MAXCPU
all:    resq MAXCPU
        alignb 4096
stacks: resb 4096 * MAXCPU

; COM1 routines and the IDT helpers
%include "uart64.inc"
%include "idt64.inc"
