; idle-pit.asm -> idle-pit.bin                  (format: boot)
;
; Tests and benchmark (Tools/bench platform): an idle real-mode machine on the PIT. The
; 8259A pair is programmed (vectors 0x20-0x2F, only IRQ 0 unmasked), PIT channel 0
; runs in mode 2 with divisor 1193 (1.000 kHz) on IRQ 0, and the CPU waits for TICKS
; ticks in STI;HLT, as a real-mode kernel idles; the handler counts and sends a
; non-specific EOI. The ACPI PM timer (3.579545 MHz, port 0x608) is read when the PIT
; is programmed and after the last tick: the ticks are due every 1193 / 1.193182 MHz
; = 0.99985 ms, so the wait is at least 1,999 ms, on time or (with `--timer-slack`) late
; but none lost; a PIT that dropped the rises a late timer passed over would take ten
; times as long at a 10 ms slack.
;
; Expected COM1 output (one line):
;     idle-pit: ticks=T ms=M
; T at least 2000 (the last late ones may run past it), M the whole milliseconds of the
; wait. Exit status 0.

bits 16
org 0x7C00

COM1    equ 0x3F8
PMTMR   equ 0x608
TICKS   equ 2000
; The variables live at 0x500, a page away from the code: a write next to code (the
; same 128-byte line) would throw away the interpreter's decodes of the page each tick.
ticks    equ 0x500
ms       equ 0x504
start_pm equ 0x508

%include "real16.inc"

start:
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7C00
        cld
        mov word [ticks], 0
        com1_init

        mov word [0x20 * 4], on_pit     ; IRQ 0 -> vector 0x20
        mov word [0x20 * 4 + 2], 0

        pic_init 0xFE, 0xFF             ; the 8259A pair: IRQ 0 only

        mov dx, PMTMR
        in eax, dx
        mov [start_pm], eax
        outb 0x43, 0x34                 ; channel 0: mode 2, lo/hi, binary, 1193
        outb 0x40, 1193 & 0xFF
        outb 0x40, 1193 >> 8
.wait:  cli
        cmp word [ticks], TICKS
        jae .done
        sti
        hlt
        jmp .wait
.done:  mov dx, PMTMR
        in eax, dx
        sub eax, [start_pm]
        and eax, 0xFFFFFF               ; 24 bits: wraps after 4.7 s
        mov ecx, 1000
        mul ecx                         ; EDX:EAX = counts * 1000
        mov ecx, 3579545
        div ecx                         ; EAX = whole ms
        mov [ms], eax
        outb 0x43, 0x30                 ; channel 0 to mode 0: no more periodic ticks
        outb 0x40, 0
        outb 0x40, 0
        mov si, s_ticks
        call puts
        mov ax, [ticks]
        call putdec
        mov si, s_ms
        call puts
        mov ax, [ms]
        call putdec
        mov al, 10
        call putc
        outb 0xF4, 0

on_pit: inc word [cs:ticks]
        push ax
        mov al, 0x20                    ; non-specific EOI
        out 0x20, al
        pop ax
        iret

%include "print16.inc"

s_ticks: db "idle-pit: ticks=", 0
s_ms:    db " ms=", 0

        times 510 - ($ - $$) db 0
        dw 0xAA55
