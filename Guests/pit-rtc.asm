; pit-rtc.asm -> pit-rtc.bin                 (format: boot)
;
; Tests: the PC's timers in real mode, waiting in HLT, through the 8259A pair.
;   1. PIC: ICW1-ICW4 (vectors 0x20-0x27 and 0x28-0x2F, cascade on IRQ 2), only
;      IRQ 0, IRQ 2 and IRQ 8 unmasked.
;   2. PIT channel 0, mode 2, divisor 1193 (~1 kHz), on IRQ 0: 50 ticks counted
;      by the handler (non-specific EOI) while the CPU waits in STI;HLT.
;   3. PIT channel 2 through port 0x61 (gate on, speaker off), mode 0, 11932
;      counts (~10 ms): polls bit 5 (OUT) until it rises, as Linux's TSC
;      calibration does; a latch command and a read-back status in between.
;   4. RTC: waits for UIP clear, reads the date and time in BCD (register B's
;      DM clear) and in binary (DM set), checks they agree; then the periodic
;      interrupt (register A rate 6 = 1024 Hz, register B PIE) on IRQ 8: 32
;      interrupts, each acknowledged by reading register C.
;
; Expected COM1 output, lines:
;     pit: 50 ticks
;     pit: channel 2 out=1 status=<2 hex digits>
;     rtc: 20YY-MM-DD HH:MM:SS        (the host's UTC date and time)
;     rtc: binary agrees
;     rtc: 32 periodic interrupts
; Expected exit: status 0 (1 if the BCD and binary readings disagree).

bits 16
org 0x7C00

COM1    equ 0x3F8

%include "real16.inc"

start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        cld
        com1_init

        ; IVT: IRQ 0 → 0x20, IRQ 8 → 0x28.
        mov word [0x20 * 4], on_pit
        mov word [0x20 * 4 + 2], 0
        mov word [0x28 * 4], on_rtc
        mov word [0x28 * 4 + 2], 0

        ; The 8259A pair: IRQ 0 and 2 unmasked on the master, IRQ 8 on the slave.
        pic_init 0xFA, 0xFE

        ; PIT channel 0: mode 2, lo/hi, binary, 1193.
        outb 0x43, 0x34
        outb 0x40, 1193 & 0xFF
        outb 0x40, 1193 >> 8
.tick:  cli
        cmp word [ticks], 50
        jae .ticked
        sti
        hlt
        jmp .tick
.ticked:
        outb 0x43, 0x30                 ; channel 0 back to mode 0: one more edge at most
        outb 0x40, 0
        outb 0x40, 0
        mov si, s_pit
        call puts
        mov ax, [ticks]
        call putdec
        mov si, s_ticks
        call puts

        ; PIT channel 2 through port 0x61.
        in al, 0x61
        and al, 0xFC
        or al, 0x01                     ; gate 2 on, speaker data off
        out 0x61, al
        outb 0x43, 0xB0                 ; channel 2, lo/hi, mode 0, binary
        outb 0x42, 11932 & 0xFF
        outb 0x42, 11932 >> 8
        outb 0x43, 0x80                 ; latch channel 2 (the count is read and dropped)
        in al, 0x42
        in al, 0x42
.poll:  in al, 0x61
        test al, 0x20
        jz .poll
        outb 0x43, 0xE8                 ; read-back: status of channel 2, no count
        in al, 0x42
        mov [status2], al
        mov si, s_ch2
        call puts
        mov al, [status2]
        call puthex8
        mov al, 10
        call putc

        ; RTC: BCD reading, after the update-in-progress flag clears.
        call rtc_wait
        call rtc_read_bcd
        mov si, s_rtc
        call puts
        mov al, [bcd + 6]               ; century
        call puthex8
        mov al, [bcd + 5]
        call puthex8
        mov al, '-'
        call putc
        mov al, [bcd + 4]
        call puthex8
        mov al, '-'
        call putc
        mov al, [bcd + 3]
        call puthex8
        mov al, ' '
        call putc
        mov al, [bcd + 2]
        call puthex8
        mov al, ':'
        call putc
        mov al, [bcd + 1]
        call puthex8
        mov al, ':'
        call putc
        mov al, [bcd + 0]
        call puthex8
        mov al, 10
        call putc

        ; Binary reading: each field must be the BCD one converted. The clock may
        ; tick between the two readings (a second, or at a boundary every field):
        ; on a disagreement read both again, and fail only after three tries.
        mov byte [tries], 3
.binary:
        outb 0x70, 0x0B
        in al, 0x71
        or al, 0x04                     ; DM = 1: binary
        mov ah, al
        outb 0x70, 0x0B
        mov al, ah
        out 0x71, al
        call rtc_wait
        mov di, bin
        call rtc_read
        mov cx, 6                       ; seconds .. year (century byte stays BCD)
        xor bx, bx
        mov byte [mismatch], 0
.cmp:   mov al, [bcd + bx]
        mov ah, al
        shr ah, 4
        and al, 0x0F
        aad                             ; AL = 10 * AH + AL
        cmp al, [bin + bx]
        je .same
        mov byte [mismatch], 1
.same:  inc bx
        loop .cmp
        cmp byte [mismatch], 0
        je .agree
        dec byte [tries]
        jz .disagree
        call rtc_read_bcd               ; back to BCD and read it again
        jmp .binary
.agree: mov si, s_agree
        call puts

        ; The periodic interrupt at 1024 Hz on IRQ 8.
        outb 0x70, 0x0A
        outb 0x71, 0x26                 ; divider 32.768 kHz, rate 6
        outb 0x70, 0x0B
        in al, 0x71
        or al, 0x40                     ; PIE
        mov ah, al
        outb 0x70, 0x0B
        mov al, ah
        out 0x71, al
.rtick: cli
        cmp word [rtc_ticks], 32
        jae .rticked
        sti
        hlt
        jmp .rtick
.rticked:
        outb 0x70, 0x0B
        in al, 0x71
        and al, 0xBF                    ; PIE off
        mov ah, al
        outb 0x70, 0x0B
        mov al, ah
        out 0x71, al
        mov si, s_periodic
        call puts
        mov ax, [rtc_ticks]
        call putdec
        mov si, s_interrupts
        call puts
        xor al, al
        out 0xF4, al
.disagree:
        mov si, s_disagree
        call puts
        mov al, 1
        out 0xF4, al
        cli
        hlt

on_pit: push ax
        inc word [cs:ticks]
        mov al, 0x20
        out 0x20, al
        pop ax
        iret

on_rtc: push ax

        mov al, 0x0C
        out 0x70, al
        in al, 0x71                     ; reading C acknowledges (and lowers IRQ 8)
        test al, 0x40                   ; PF
        jz .not_periodic
        inc word [cs:rtc_ticks]
.not_periodic:
        mov al, 0x20
        out 0xA0, al                    ; EOI to the slave, then the master
        out 0x20, al
        pop ax
        iret

; Waits until register A's UIP bit is clear.
; Switches the RTC to BCD and 24-hour mode and reads it into bcd.
rtc_read_bcd:
        outb 0x70, 0x0B
        in al, 0x71
        and al, 0xFB                    ; DM = 0: BCD
        or al, 0x02                     ; 24-hour
        mov ah, al
        outb 0x70, 0x0B
        mov al, ah
        out 0x71, al
        call rtc_wait
        mov di, bcd
        jmp rtc_read

rtc_wait:
        mov al, 0x0A
        out 0x70, al
        in al, 0x71
        test al, 0x80
        jnz rtc_wait
        ret

; Reads seconds, minutes, hours, day, month, year, century into DI[0..6].
rtc_read:
        mov si, rtc_regs
        mov cx, 7
.r:     lodsb
        out 0x70, al
        in al, 0x71
        stosb
        loop .r
        ret

puthex8:
        push ax
        shr al, 4
        call .digit
        pop ax
        and al, 0x0F
.digit: push bx
        mov bx, hexdigits
        xlatb
        call putc
        pop bx
        ret

%include "print16.inc"

rtc_regs: db 0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32
hexdigits: db "0123456789abcdef"
s_pit:  db "pit: ", 0
s_ticks: db " ticks", 10, 0
s_ch2:  db "pit: channel 2 out=1 status=", 0
s_rtc:  db "rtc: ", 0
s_agree: db "rtc: binary agrees", 10, 0
s_disagree: db "rtc: binary disagrees", 10, 0
s_periodic: db "rtc: ", 0
s_interrupts: db " periodic interrupts", 10, 0
ticks:  dw 0
rtc_ticks: dw 0
status2: db 0
mismatch: db 0
tries:  db 0
bcd:    times 8 db 0
bin:    times 8 db 0
