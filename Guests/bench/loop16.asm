; loop16.asm -> loop16.bin                 (format: boot; Tools/bench makes a floppy of it for Bochs)
;
; A benchmark, never a test: 16-bit real-mode integer throughput on the same guest for
; Tandem (`tandem run`, boot format) and Bochs (the BIOS boots it from a floppy). Runs
; this 8-instruction loop 65,536 x OUTER times (OUTER = 500: 262,144,000 instructions):
;     .l: add ax, bx / xor dx, ax / mov [si], dx / add bx, cx
;         and bx, 0x7fff / rol dx, 3 / dec cx / jnz .l
; then writes "loop16 done dx=XXXX\n" to port 0xE9 (Bochs: port_e9_hack) and stops:
; port 0xF4 (Tandem's exit device, status 0) and "Shutdown" to port 0x8900 (Bochs).
; Tools/bench pads a copy to 1,474,560 bytes for Bochs, which boots it as a floppy.

; The loop stores to a word just past the boot sector (0x7E00): the same 4 KiB page as
; the code, as a boot sector's variables are, but not the same 128-byte line.
buf equ 0x7e00

%ifndef OUTER
%define OUTER 500
%endif
bits 16
org 0x7c00
start:
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7c00
        mov si, buf
        xor ax, ax
        mov bx, 1
        xor dx, dx
        mov bp, OUTER
.outer: xor cx, cx              ; 65,536 iterations of the inner loop
.l:     add ax, bx
        xor dx, ax
        mov [si], dx
        add bx, cx
        and bx, 0x7fff
        rol dx, 3
        dec cx
        jnz .l
        dec bp
        jnz .outer

        mov si, done
.puts:  lodsb
        test al, al
        jz .hex
        out 0xe9, al
        jmp .puts
.hex:   mov cx, 4
.digit: rol dx, 4
        mov al, dl
        and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe .out
        add al, 'a' - '0' - 10
.out:   out 0xe9, al
        loop .digit
        mov al, 10
        out 0xe9, al
        xor al, al
        out 0xf4, al            ; Tandem: exit, status 0
        mov dx, 0x8900          ; Bochs: the shutdown port
        mov si, shutdown
.sd:    lodsb
        test al, al
        jz .halt
        out dx, al
        jmp .sd
.halt:  hlt
        jmp .halt

done:     db "loop16 done dx=", 0
shutdown: db "Shutdown", 0
        times 510 - ($ - $$) db 0
        dw 0xaa55
