; io-interrupted.asm -> io-interrupted.elf   (format: elf64, linked at 2 MiB)
;
; Tests: an interrupt that a device raises *because of* an I/O instruction (it becomes
; pending while the vCPU is out of its engine for that instruction's exit) is taken
; after the instruction, which runs once. KVM completes an `out` or an MMIO write only at
; its next entry; a vCPU moved to the interpreter to take the interrupt before that ran
; the instruction again after the handler (`--backend kvm` on a PVM host, where the
; interpreter delivers KVM's interrupts: every character below came out twice).
;   1. Self-IPIs through the local APIC's ICR (an MMIO write), ROUNDS of them.
;   2. COM1 with THR-empty interrupts on, through IOAPIC pin 4: each character written
;      to THR raises IRQ 4 at once; ROUNDS characters.
;   3. fw_cfg's signature read byte by byte (each `in` returns the next byte: one run
;      twice skips one), FWROUNDS times, with the local APIC timer set to fire 0, 1, 2 ...
;      microseconds after the round starts, so that in some rounds it comes due while the
;      vCPU is out of KVM for an `in` (whose value KVM stores only at its next entry).
; Between two rounds the vCPU spins for ~120,000 instructions, longer than a fallback
; stretch (100,000), so that on `--backend kvm` each write is KVM's again.
; Only CPU 0 works; any others park.
;
; Expected COM1 output (exactly), status 0:
;     abcdefghijklmnop
;     ipi=16 uart=17 fw_cfg=64 timer=63
; (uart=17: enabling the THR-empty interrupt raises one too; timer=63: a count of 0, the
; first round's, starts no timer.)

bits 64
%include "put-field.inc"
default rel

APIC    equ 0xFEE00000
IOAPIC  equ 0xFEC00000
ROUNDS  equ 16
FWROUNDS equ 64
SPIN    equ 60000                               ; iterations of a 2-instruction loop

section .text
global _start
_start:
        test rdi, rdi
        jz .cpu0
.park:  cli
        hlt
        jmp .park
.cpu0:
        lea rsp, [stack_top]
        call uart_init
        lea rax, [on_spurious]
        call fill_idt
        mov edi, 0x41
        lea rax, [on_uart]
        call set_gate
        mov edi, 0x42
        lea rax, [on_ipi]
        call set_gate
        mov edi, 0x43
        lea rax, [on_timer]
        call set_gate
        lidt [idtr]

        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF           ; SVR: APIC on
        mov rcx, IOAPIC                         ; pin 4: vector 0x41, edge, to APIC ID 0
        mov dword [rcx], 0x10 + 2 * 4 + 1
        mov dword [rcx + 0x10], 0
        mov dword [rcx], 0x10 + 2 * 4
        mov dword [rcx + 0x10], 0x41
        sti

        mov r12d, ROUNDS                        ; 1. self-IPIs
.ipi:   mov dword [rbx + 0x300], 0x40042        ; ICR: shorthand self, fixed, vector 0x42
        call spin
        dec r12d
        jnz .ipi

        mov dx, COM1 + 1                        ; 2. THR-empty interrupts (OUT2 is on)
        mov al, 0x02
        out dx, al
        call spin
        mov r12d, ROUNDS
        mov al, 'a'
        mov dx, COM1
.char:  out dx, al
        call spin
        inc al
        dec r12d
        jnz .char
        mov dx, COM1 + 1
        mov al, 0
        out dx, al

        mov dword [rbx + 0x3E0], 0xB            ; 3. timer: divide by 1 (1 ns a count)
        mov dword [rbx + 0x320], 0x43           ; one-shot, vector 0x43
        xor r12d, r12d
.fw:    imul eax, r12d, 1000
        mov dword [rbx + 0x380], eax            ; fires R12 microseconds from now
        mov dx, 0x510
        xor eax, eax
        out dx, ax                              ; the signature, from its first byte
        inc dx
        xor r8d, r8d
        mov r9d, 4
.byte:  in al, dx
        shl r8d, 8
        mov r8b, al
        dec r9d
        jnz .byte
        cmp r8d, 0x51454D55                     ; "QEMU"
        jne .next
        inc qword [fw_ok]
.next:  call spin
        inc r12d
        cmp r12d, FWROUNDS
        jb .fw
        cli

        mov al, 10
        call putc
        lea rsi, [s_ipi]
        call puts
        mov rax, [ipis]
        call putdec
        xor ecx, ecx                            ; (put_field indexes by RCX)
        put_field s_uart, uarts
        put_field s_fw, fw_ok
        put_field s_timer, timers
        mov al, 10
        call putc
        mov al, 0
        jmp exit_with

spin:   push rcx
        mov ecx, SPIN
.loop:  dec ecx
        jnz .loop
        pop rcx
        ret

on_ipi:
        inc qword [ipis]
        mov dword [rbx + 0xB0], 0               ; EOI (RBX is the APIC's base throughout)
        iretq

on_uart:
        push rax
        push rdx
        mov dx, COM1 + 2                        ; IIR: acknowledges THR empty
        in al, dx
        inc qword [uarts]
        mov dword [rbx + 0xB0], 0
        pop rdx
        pop rax
        iretq

on_timer:
        inc qword [timers]
        mov dword [rbx + 0xB0], 0
        iretq

on_spurious:
        iretq

section .data
s_ipi:  db "ipi=", 0
s_uart: db " uart=", 0
s_fw:   db " fw_cfg=", 0
s_timer: db " timer=", 0

section .bss
        alignb 16
idt:    resb 256 * 16
ipis:   resq 1
uarts:  resq 1
fw_ok:  resq 1
timers: resq 1
        alignb 16
        resb 8192
stack_top:

%include "uart64.inc"
%include "idt64.inc"
