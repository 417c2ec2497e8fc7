; uart-echo.asm -> uart-echo.elf             (format: elf64, linked at 2 MiB)
;
; Tests: interrupt-driven serial input routed through the IOAPIC. CPU 0 masks the
; 8259A pair, points IOAPIC pin 4 (COM1, ISA IRQ 4) at vector 0x24 on its own
; APIC (edge, physical), enables the UART's received-data interrupt (IER bit 0,
; MCR OUT2), and waits in STI;HLT. The handler drains the receive FIFO (while
; LSR.DR), echoing each byte; a '.' ends the run. Other CPUs halt.
;
; Expected COM1 output: the input up to and including the first '.', byte for
; byte, then "\necho: <n> bytes\n" with n the number of bytes echoed.
; Expected exit: status 0; a run whose input ends before a '.' halts (status 0 with
; the "no interrupt source" message) once the input has ended.

bits 64
default rel

APIC    equ 0xFEE00000
IOAPIC  equ 0xFEC00000
COM1    equ 0x3F8

section .text
global _start
_start:
        test rdi, rdi
        jz .bsp
.park:  cli
        hlt
        jmp .park

.bsp:   lea rsp, [stack_top]
        call uart_init
        ; IDT: every vector to the spurious handler, 0x24 to the UART handler.
        lea rax, [on_spurious]
        call fill_idt
        mov edi, 0x24
        lea rax, [on_uart]
        call set_gate
        lidt [idtr]

        mov al, 0xFF                            ; mask both 8259As
        out 0x21, al
        out 0xA1, al
        mov rbx, APIC
        mov dword [rbx + 0xF0], 0x1FF           ; APIC on
        mov rbx, IOAPIC
        mov dword [rbx], 0x18                   ; pin 4, low dword
        mov dword [rbx + 0x10], 0x24            ; vector 0x24, fixed, physical, edge, unmasked
        mov dword [rbx], 0x19                   ; pin 4, high dword
        mov dword [rbx + 0x10], 0               ; destination APIC 0

        mov dx, COM1 + 4
        mov al, 0x0B                            ; DTR, RTS, OUT2 (gates the IRQ on PCs)
        out dx, al
        mov dx, COM1 + 1
        mov al, 0x01                            ; IER: received data available
        out dx, al

.wait:  cli
        cmp byte [finished], 0
        jne .done
        sti
        hlt
        jmp .wait
.done:  lea rsi, [s_echo]
        call puts
        mov rax, [count]
        call putdec
        lea rsi, [s_bytes]
        call puts
        mov al, 0
        jmp exit_with

on_uart:
        push rax
        push rdx
.more:  mov dx, COM1 + 5
        in al, dx
        test al, 1                              ; LSR.DR
        jz .empty
        mov dx, COM1
        in al, dx
        call putc
        inc qword [count]
        cmp al, '.'
        jne .more
        mov byte [finished], 1
        mov dx, COM1 + 1                        ; no more receive interrupts
        xor al, al
        out dx, al
.empty: mov rax, APIC
        mov dword [rax + 0xB0], 0               ; EOI
        pop rdx
        pop rax
        iretq

on_spurious:
        iretq

section .data
s_echo: db 10, "echo: ", 0
s_bytes: db " bytes", 10, 0

section .bss
        alignb 16
idt:    resb 256 * 16
count:  resq 1
finished: resb 1
        alignb 16
stack:  resb 8192
stack_top:

%include "uart64.inc"
%include "idt64.inc"
