; hello-boot.asm -> hello-boot.bin            (format: boot)
;
; Tests: a 512-byte boot sector in 16-bit real mode, loaded at 0x7C00
; (CS:IP = 0000:7C00, DS = ES = SS = 0, SP = 0x7C00); port I/O to the 16550A
; UART (programmed like a real driver would, then LSR-polled byte by byte)
; and the exit device.
;
; Expected COM1 output (exactly):  "Hello from real mode!\n"
; Expected exit: writes 0 to port 0xF4 => status 0.

bits 16
org 0x7C00

COM1    equ 0x3F8               ; THR/RBR/DLL; +1 IER/DLM, +2 FCR, +3 LCR, +4 MCR, +5 LSR

%macro outb 2                   ; outb port, value
        mov dx, %1
        mov al, %2
        out dx, al
%endmacro

start:
        cli
        xor ax, ax              ; the contract gives us zero segments, but a
        mov ds, ax              ; real boot sector cannot rely on that
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        cld                     ; lodsb must walk forwards

        ; 115200 8N1, FIFOs on, DTR/RTS/OUT2: the usual 16550 bring-up.
        outb COM1+1, 0x00       ; IER: no interrupts
        outb COM1+3, 0x80       ; LCR: DLAB=1 to reach the divisor latch
        outb COM1+0, 0x01       ; DLL: divisor 1 = 115200 baud
        outb COM1+1, 0x00       ; DLM
        outb COM1+3, 0x03       ; LCR: 8 data bits, no parity, 1 stop, DLAB=0
        outb COM1+2, 0xC7       ; FCR: enable + clear FIFOs, 14-byte trigger
        outb COM1+4, 0x0B       ; MCR: DTR, RTS, OUT2

        mov si, msg
.next:  lodsb
        test al, al
        jz .done
        mov ah, al              ; keep the byte while polling clobbers AL
        mov dx, COM1+5
.busy:  in al, dx               ; LSR bit 5: transmit holding register empty
        test al, 0x20
        jz .busy
        mov al, ah
        mov dx, COM1
        out dx, al
        jmp .next

.done:  xor al, al
        out 0xF4, al            ; exit device: status 0
.hang:  cli                     ; only reached if there is no exit device
        hlt
        jmp .hang

msg:    db "Hello from real mode!", 10, 0

        times 510 - ($ - $$) db 0
        db 0x55, 0xAA           ; boot signature
