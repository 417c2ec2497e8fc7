; v86.asm -> v86.bin   (format: boot)
;
; Tests: virtual-8086 mode: IRETD with VM set loads real-mode-style segments from the
; frame, the TSS I/O bitmap allows a port at IOPL 0, CLI at IOPL 0 raises #GP to the
; ring-0 handler, which sees VM in the saved EFLAGS, the saved GS, and nulled DS.
;
; Expected output on port 0xE9 (exactly): "VGK\n"   (V: in v86 mode, G: in the #GP handler, K: its checks passed)
; Expected exit: status 0 (1 on a failed check).
; On PVM hosts KVM's emulator fails the handler's checks; the interpreter is the reference.

bits 16
org 0x7c00
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7c00
        lgdt [gdtr]
        lidt [idtr]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x08:pm
bits 32
pm:     mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x7000
        mov ax, 0x18
        ltr ax
        ; IRETD into virtual-8086 mode at 0000:v86code, IOPL 0
        push dword 0x0300           ; gs
        push dword 0x0200           ; fs
        push dword 0x0100           ; ds
        push dword 0x0000           ; es
        push dword 0x0000           ; ss
        push dword 0x6800           ; esp
        push dword 0x00020002       ; eflags: VM
        push dword 0x0000           ; cs
        push dword v86code          ; eip
        iretd
bits 16
v86code:
        mov ax, ds                  ; the segment registers came from the frame
        cmp ax, 0x0100
        jne .bad
        mov al, 'V'
        out 0xe9, al                ; allowed by the TSS I/O bitmap
        cli                         ; IOPL 0: #GP to the ring-0 handler
.bad:   mov al, 'x'
        out 0xe9, al
        hlt
bits 32
gp:     mov al, 'G'
        out 0xe9, al
        mov eax, [esp + 12]         ; the frame: error code, eip, cs, eflags, esp, ss, es, ds, fs, gs
        bt eax, 17                  ; VM in the saved EFLAGS
        jnc fail
        cmp dword [esp + 4], v86code + 0x0a   ; the faulting cli (offset of cli below)
        cmp dword [esp + 36], 0x0300          ; saved GS
        jne fail
        mov ax, ds                  ; data segments were nulled on entry from v86
        test ax, ax
        jnz fail
        mov al, 'K'
        out 0xe9, al
        mov al, 10
        out 0xe9, al
        mov al, 0
        out 0xf4, al
fail:   mov al, 1
        out 0xf4, al

gdtr:   dw gdt_end - gdt - 1
        dd gdt
idtr:   dw 14 * 8 - 1
        dd idt
gdt:    dq 0
        dq 0x00CF9A000000FFFF       ; 0x08 code
        dq 0x00CF92000000FFFF       ; 0x10 data
        dw tss_end - tss - 1, tss, 0x8900, 0    ; 0x18 TSS
gdt_end:
idt:    times 13 dq 0
        dw gp, 0x08, 0x8E00, 0      ; #GP: 32-bit interrupt gate
align 16
tss:    dd 0, 0x7000, 0x10          ; link, esp0, ss0
        times 22 dd 0
        dw 0, iomap - tss           ; T, I/O bitmap base
iomap:  times 32 db 0               ; ports 0-255 allowed
        db 0xff
tss_end:
