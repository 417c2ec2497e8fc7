; x2apic.asm -> x2apic.elf                   (format: elf64, linked at 2 MiB)
;
; Tests: x2APIC mode and the TSC-deadline timer, through MSRs only, on every CPU.
; Each CPU switches its APIC to x2APIC mode (IA32_APIC_BASE bits 10 and 11), reads
; its 32-bit ID (MSR 0x802), enables it (SVR, MSR 0x80F), then:
;   - arms the TSC-deadline timer (LVT timer mode 2, vector 0x40) 100,000 TSC ticks
;     ahead, DEADLINES times, waiting for each interrupt in STI;HLT;
;   - sends itself an IPI through the SELF IPI register (MSR 0x83F, vector 0x41);
;   - sends vector 0x42 to the next CPU (ICR, MSR 0x830, destination in bits 63:32)
;     and waits for the one from the previous CPU.
; CPU 0 waits for all and prints one line per CPU.
;
; Expected COM1 output with N CPUs, one line per CPU i (exactly):
;     cpu<i> id=<i> deadline=5 self=1 ring=1
; Expected exit: status 0.

bits 64
%include "put-field.inc"
default rel

DEADLINES equ 5
MAXCPU  equ 64

section .text
global _start
_start:
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

        mov ecx, 0x1B                           ; IA32_APIC_BASE: enable x2APIC
        rdmsr
        or eax, 0xC00
        wrmsr
        mov ecx, 0x802                          ; ID
        rdmsr
        lea rdx, [ids]
        mov [rdx + r15*8], rax
        mov ecx, 0x80F                          ; SVR: on, spurious 0xFF
        mov eax, 0x1FF
        xor edx, edx
        wrmsr
        mov ecx, 0x832                          ; LVT timer: TSC-deadline, vector 0x40
        mov eax, 0x40040
        wrmsr

        xor ebx, ebx                            ; deadlines taken so far
.arm:   rdtsc
        shl rdx, 32
        or rax, rdx
        add rax, 100000
        mov rdx, rax
        shr rdx, 32
        mov ecx, 0x6E0                          ; IA32_TSC_DEADLINE
        wrmsr
        inc rbx
.tick:  cli
        lea rax, [deadline]
        cmp [rax + r15*8], rbx
        jae .ticked
        sti
        hlt
        jmp .tick
.ticked:
        cmp rbx, DEADLINES
        jb .arm

        mov ecx, 0x83F                          ; SELF IPI
        mov eax, 0x41
        xor edx, edx
        wrmsr
.self:  cli
        lea rax, [self]
        cmp qword [rax + r15*8], 1
        jae .selfed
        sti
        hlt
        jmp .self
.selfed:
        sti
        lock inc qword [ready]                  ; everyone can take IPIs now
.all_ready:
        cmp [ready], r14
        jae .ring
        pause
        jmp .all_ready
.ring:  lea rax, [r15 + 1]                      ; the next CPU, round the ring
        cmp rax, r14
        jb .send
        xor eax, eax
.send:  mov rdx, rax                            ; destination x2APIC ID in EDX (ICR 63:32)
        mov eax, 0x4042                         ; fixed, physical, assert, vector 0x42
        mov ecx, 0x830
        wrmsr
.wait_ring:
        cli
        lea rax, [ring]
        cmp qword [rax + r15*8], 1
        jae .rang
        sti
        hlt
        jmp .wait_ring
.rang:  lock inc qword [done]
        test r15, r15
        jnz .park
.all_done:
        cmp [done], r14
        jae .report
        pause
        jmp .all_done
.park:  cli
        hlt
        jmp .park

.report:
        call uart_init
        xor ecx, ecx
.line:  cmp rcx, r14
        jae .exit
        lea rsi, [s_cpu]
        call puts
        mov rax, rcx
        call putdec
        put_field s_id, ids
        put_field s_deadline, deadline
        put_field s_self, self
        put_field s_ring, ring
        mov al, 10
        call putc
        inc rcx
        jmp .line
.exit:  mov al, 0
        jmp exit_with

; Handlers count per x2APIC ID (MSR 0x802) and EOI through MSR 0x80B.
%macro counting_handler 2
%1:     push rax
        push rcx
        push rdx
        mov ecx, 0x802
        rdmsr
        mov ecx, eax
        lea rdx, [%2]
        lock inc qword [rdx + rcx*8]
        mov ecx, 0x80B
        xor eax, eax
        xor edx, edx
        wrmsr
        pop rdx
        pop rcx
        pop rax
        iretq
%endmacro
counting_handler on_deadline, deadline
counting_handler on_self, self
counting_handler on_ring, ring

on_spurious:
        iretq

build_idt:
        lea rax, [on_spurious]
        call fill_idt
        mov edi, 0x40
        lea rax, [on_deadline]
        call set_gate
        mov edi, 0x41
        lea rax, [on_self]
        call set_gate
        mov edi, 0x42
        lea rax, [on_ring]
        call set_gate
        ret

section .data
s_cpu:  db "cpu", 0
s_id:   db " id=", 0
s_deadline: db " deadline=", 0
s_self: db " self=", 0
s_ring: db " ring=", 0

section .bss
        alignb 16
idt:    resb 256 * 16
idt_ready: resq 1
ready:  resq 1
done:   resq 1
ids:    resq MAXCPU
deadline: resq MAXCPU
self:   resq MAXCPU
ring:   resq MAXCPU
        alignb 4096
stacks: resb 4096 * MAXCPU

%include "uart64.inc"
%include "idt64.inc"
