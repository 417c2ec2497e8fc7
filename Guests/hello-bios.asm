; hello-bios.asm -> hello-bios.rom            (format: bios)
;
; Tests: the x86 reset state (real mode, CS = F000 with base FFFF0000,
; IP = FFF0), the ROM mapping at 0xF0000 and its alias below 4 GiB, a far
; jump that reloads CS, LGDT with a 32-bit base, the switch to 32-bit
; protected mode with flat segments, and the 0xE9 debug console.
;
; Expected debug-console (port 0xE9) output (exactly):
;     "Hello from the BIOS ROM in protected mode!\n"
; Expected exit: writes 0 to port 0xF4 => status 0.
;
; The image is exactly 64 KiB. Offsets in this file are offsets within
; segment F000, so linear address = ROM_BASE + label.

bits 16
org 0

ROM_BASE equ 0xF0000            ; where the ROM sits in the first MiB
CODE_SEL equ 0x08
DATA_SEL equ 0x10

start:                          ; reached from the reset vector with CS base 0xF0000
        cli
        cld
        o32 lgdt [cs:gdtr]      ; o32: load all 32 bits of the GDT base
        mov eax, cr0
        or al, 1                ; CR0.PE
        mov cr0, eax
        jmp dword CODE_SEL:(ROM_BASE + pm32)   ; reload CS: now 32-bit code

bits 32
pm32:
        mov ax, DATA_SEL        ; flat data everywhere
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, 0x8000         ; not used, but never leave SS:ESP dangling

        mov esi, ROM_BASE + msg
.next:  lodsb
        test al, al
        jz .done
        out 0xE9, al            ; debug console: no status to poll
        jmp .next

.done:  mov al, 0
        out 0xF4, al            ; exit device: status 0
.hang:  cli
        hlt
        jmp .hang

        align 8
gdt:    dq 0                    ; null descriptor
        dq 0x00CF9A000000FFFF   ; 0x08: code, base 0, limit 4 GiB, 32-bit, execute/read
        dq 0x00CF92000000FFFF   ; 0x10: data, base 0, limit 4 GiB, read/write
gdt_end:

gdtr:   dw gdt_end - gdt - 1
        dd ROM_BASE + gdt       ; linear address through the 0xF0000 alias

msg:    db "Hello from the BIOS ROM in protected mode!", 10, 0

        times 0xFFF0 - ($ - $$) db 0xFF     ; unused ROM reads as erased flash

bits 16                         ; the CPU is in real mode at reset
reset:  jmp 0xF000:start        ; the reset vector (F000:FFF0): leave the 4 GiB alias
        times 0x10000 - ($ - $$) db 0xFF
