; reboot.asm -> reboot.bin                    (format: boot)
;
; Tests: `tandem run --reboot restart`. The guest resets the machine three times, each
; time another way, and tells its boots apart by a counter in CMOS byte 0x40, which a
; reset leaves alone (the RTC's RAM is battery-backed on a PC, and Tandem carries it into
; the restarted machine). Guest RAM must come back clean: each boot checks that the
; marker the one before left at 0x600 is gone.
;
;   boot 1: resets through the PIIX reset control register, port 0xCF9 (value 6, as the
;           FADT's RESET_REG and RESET_VALUE say)
;   boot 2: pulses the reset line through the i8042 (command 0xFE to port 0x64)
;   boot 3: triple-faults (an interrupt with an empty real-mode IVT: #GP, #DF, shutdown)
;   boot 4: exits with status 42
;
; Expected port 0xE9 output with --reboot restart:
;   "reboot: boot 1\nreboot: boot 2\nreboot: boot 3\nreboot: boot 4, RAM clean after each reset\n"
; Expected exit: 42 with --reboot restart; without it, status 212 after "reboot: boot 1\n".
; Status 1 ("reboot: RAM survived a reset\n") if the marker is still there; 0 (all
; vCPUs halted) if a reset did not happen; 3 ("reboot: int3 ignored the IVT limit\n")
; where real-mode interrupt delivery does not check the IVT limit: KVM on PVM hosts,
; whose kernel emulator delivers it (Documentation/HostLimitations.md).

bits 16
org 0x7C00

CMOS_INDEX  equ 0x70
CMOS_DATA   equ 0x71
BOOT_COUNT  equ 0x40            ; a CMOS byte no firmware of ours uses
MARKER_AT   equ 0x600
MARKER      equ 0x4D444E54      ; "TNDM"

start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        cld

        cmp dword [MARKER_AT], MARKER
        je dirty
        mov dword [MARKER_AT], MARKER

        mov al, BOOT_COUNT
        out CMOS_INDEX, al
        in al, CMOS_DATA
        mov bl, al              ; BL = resets so far
        inc al
        out CMOS_DATA, al       ; the index is still BOOT_COUNT

        mov si, msg_boot
        call print
        mov al, bl
        add al, '1'
        out 0xE9, al

        cmp bl, 0
        je reset_cf9
        cmp bl, 1
        je reset_i8042
        cmp bl, 2
        je triple_fault

        mov si, msg_done
        call print
        mov al, 42
        out 0xF4, al
        jmp hang

reset_cf9:
        call newline
        mov dx, 0xCF9
        mov al, 0x06
        out dx, al
        jmp hang

reset_i8042:
        call newline
        mov al, 0xFE
        out 0x64, al
        jmp hang

triple_fault:
        call newline
        lidt [empty_ivt]
        int3                    ; beyond the IVT's limit: #GP, then #DF, then shutdown
        jmp hang

limit_ignored:                  ; vector 3 of the table, reached only if the limit is not checked
        mov si, msg_limit
        call print
        mov al, 3
        out 0xF4, al
        jmp hang

dirty:
        mov si, msg_dirty
        call print
        mov al, 1
        out 0xF4, al
hang:
        hlt
        jmp hang

newline:
        mov al, 10
        out 0xE9, al
        ret

print:                          ; SI = NUL-terminated string, to port 0xE9
        lodsb
        test al, al
        jz .done
        out 0xE9, al
        jmp print
.done:
        ret

empty_ivt:
        dw 0                    ; limit 0: no vector fits
        dd ivt                  ; (the table behind it, used only when the limit is ignored)
ivt:    times 3 dd 0
        dw limit_ignored, 0     ; vector 3: 0000:limit_ignored

msg_boot:  db "reboot: boot ", 0
msg_done:  db ", RAM clean after each reset", 10, 0
msg_dirty: db "reboot: RAM survived a reset", 10, 0
msg_limit: db "reboot: int3 ignored the IVT limit", 10, 0

        times 510 - ($ - $$) db 0
        dw 0xAA55
