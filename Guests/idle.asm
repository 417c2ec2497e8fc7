; idle.asm -> idle.elf                          (format: elf64, linked at 2 MiB)
;
; Tests and benchmark (Tools/bench platform): an idle machine, whose periodic LAPIC
; timer ticks all reach vCPUs that wait for them in STI;HLT, as an idle kernel does,
; on time or (with `--timer-slack`) late but none lost. Every CPU arms a 1 kHz
; periodic timer (1,000,000 counts at the 1 GHz bus clock, divide by 1), reads the
; ACPI PM timer (3.579545 MHz, port 0x608), waits in HLT for TICKS ticks, and reads
; the PM timer again. Its TICKS-th tick is due TICKS ms after the arm, so the
; time between is at least TICKS ms; a timer that dropped the ticks a late wake-up
; passed over (one interrupt per wake-up at a 10 ms slack) would take ten times that.
; CPU 0 waits (in HLT, on its own ticks) for the others, then prints one line per CPU:
;
;     cpuN ticks=T ms=M
;
; T at least 2000 (a burst of late ticks may run past it), M the whole milliseconds
; between the two PM timer reads. Exit status 0.

bits 64
default rel

APIC    equ 0xFEE00000
PMTMR   equ 0x608
TICKS   equ 2000

section .text
global _start
_start:
        mov r15, rdi                            ; this CPU's index
        mov r14, rsi                            ; how many CPUs
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
        mov dword [rbx + 0x3E0], 0xB            ; divide by 1
        mov dword [rbx + 0x320], 0x20040        ; periodic, vector 0x40
        xor r12, r12                            ; ticks taken
        mov edx, PMTMR
        in eax, dx
        mov r13d, eax                           ; PM timer at the arm
        mov dword [rbx + 0x380], 1000000        ; 1 ms: the first tick is due 1 ms from here
.wait:  cli
        cmp r12, TICKS
        jae .done
        sti
        hlt
        jmp .wait
.done:  mov edx, PMTMR
        in eax, dx
        sub eax, r13d
        and eax, 0xFFFFFF                       ; 24 bits: wraps after 4.7 s
        mov ecx, 1000
        mul ecx                                 ; EDX:EAX = counts * 1000
        mov ecx, 3579545
        div ecx                                 ; EAX = whole ms
        lea rdx, [elapsed]
        mov [rdx + r15*8], rax
        lea rdx, [taken]
        mov [rdx + r15*8], r12
        lock inc qword [finished]
        test r15, r15
        jz .report
        mov dword [rbx + 0x320], 0x10040        ; masked: this CPU is done
.park:  cli
        hlt
        jmp .park
.report:                                        ; CPU 0 waits for the others in HLT,
        cli                                     ; woken by its own ticks
        cmp [finished], r14
        jae .print
        sti
        hlt
        jmp .report
.print: mov dword [rbx + 0x320], 0x10040
        call uart_init
        xor r15, r15
.line:  lea rsi, [s_cpu]
        call puts
        mov rax, r15
        call putdec
        lea rsi, [s_ticks]
        call puts
        lea rdx, [taken]
        mov rax, [rdx + r15*8]
        call putdec
        lea rsi, [s_ms]
        call puts
        lea rdx, [elapsed]
        mov rax, [rdx + r15*8]
        call putdec
        mov al, 10
        call putc
        inc r15
        cmp r15, r14
        jb .line
        mov al, 0
        jmp exit_with

on_timer:
        inc r12
        mov dword [rbx + 0xB0], 0
        iretq

section .data
s_cpu:   db "cpu", 0
s_ticks: db " ticks=", 0
s_ms:    db " ms=", 0

section .bss
        alignb 16
idt:    resb 256 * 16
finished: resq 1
taken:  resq 256
elapsed: resq 256
        alignb 4096
stacks: resb 4096 * 256

%include "uart64.inc"
%include "idt64.inc"
