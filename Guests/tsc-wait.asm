; tsc-wait.asm -> tsc-wait.bin                  (format: boot, 512-byte boot sector)
;
; Tests: time read through RDTSC moves on while a guest polls it, with interrupts
; off and no timer armed: the loop makes no exit, so nothing but the TSC itself can
; end it. Linux's `delay_tsc` (udelay before any timer is armed) is such a loop.
; Under `--clock instructions` machine time advances with retired instructions; a
; TSC that stood still inside a run hung this guest (and Linux after
; "pnp: PnP ACPI: found 0 devices").
; It reads the TSC, then polls it until 2,000,000 cycles have passed (2 ms at the
; interpreter's 1 GHz) and prints one line.
;
; Expected COM1 output (exactly):
;     tsc-wait: ok
; Expected exit: writes 0 to port 0xF4 => status 0.

bits 16
org 0x7C00

COM1    equ 0x3F8
CYCLES  equ 2000000

start:
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7C00
        cld

        rdtsc                           ; EDX:EAX = start
        mov esi, eax
        mov edi, edx
.poll:  rdtsc
        sub eax, esi                    ; EDX:EAX = now - start
        sbb edx, edi
        jnz .done                       ; 2^32 cycles or more
        cmp eax, CYCLES
        jb .poll
.done:
        mov si, message
.print: lodsb
        test al, al
        jz .exit
        mov bl, al
        mov dx, COM1 + 5                ; LSR: wait for THR empty
.wait:  in al, dx
        test al, 0x20
        jz .wait
        mov al, bl
        mov dx, COM1
        out dx, al
        jmp .print
.exit:
        xor al, al
        out 0xF4, al
        hlt

message: db "tsc-wait: ok", 10, 0

        times 510 - ($ - $$) db 0
        dw 0xAA55
