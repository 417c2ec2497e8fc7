; longmode-switch.asm -> longmode-switch.bin   (format: boot)
;
; Tests: entering long mode the architectural way from real mode (CR4.PAE, EFER.LME,
; CR0.PG, a far jump to a 64-bit code segment whose limit is 0, as memtest86+'s is: in
; IA-32e mode a 64-bit code segment has no limit), EFER.LMA, an interrupt taken in
; compatibility mode (through a 16-byte IDT gate to 64-bit code, IRETQ back), and leaving
; long mode again (retfq to compatibility mode, paging off clears LMA, LME off).
;
; Expected output on port 0xE9 (exactly): "L1I0P\n"   (L: in 64-bit code, 1: LMA set, I: the
; interrupt's 64-bit handler ran from compatibility mode, 0: LMA clear after leaving, P: back in
; 32-bit protected mode)
; Expected exit: status 0.

bits 16
org 0x7c00
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7c00
        ; page tables at 0x10000: PML4 -> PDPT -> PD with one 2 MiB identity page
        mov ax, 0x1000
        mov es, ax
        xor di, di
        mov cx, 0x1800
        xor ax, ax
        rep stosw
        mov dword [es:0x0000], 0x11003      ; PML4[0] -> 0x11000
        mov dword [es:0x1000], 0x12003      ; PDPT[0] -> 0x12000
        mov dword [es:0x2000], 0x00083      ; PD[0]: 2 MiB page at 0
        lgdt [gdtr]
        mov eax, cr4
        or eax, 1 << 5                      ; PAE
        mov cr4, eax
        mov eax, 0x10000
        mov cr3, eax
        mov ecx, 0xC0000080
        rdmsr
        or eax, 1 << 8                      ; EFER.LME
        wrmsr
        mov eax, cr0
        or eax, 0x80000001                  ; PG | PE: long mode becomes active
        mov cr0, eax
        jmp 0x20:lm64
bits 64
lm64:   mov ax, 0x10
        mov ds, ax
        mov ss, ax
        ; IDT at 0x20000: only gate 0x40 is used
        mov rdi, 0x20400                    ; gate 0x40, 16 bytes
        lea rax, [rel on_int]
        mov word [rdi], ax                  ; offset 15:0
        mov word [rdi + 2], 0x20            ; selector: the 64-bit code segment
        mov word [rdi + 4], 0x8E00          ; present, DPL 0, 64-bit interrupt gate
        shr rax, 16
        mov word [rdi + 6], ax              ; offset 31:16
        mov qword [rdi + 8], 0              ; offset 63:32, reserved
        lidt [rel idtr]
        mov al, 'L'
        out 0xe9, al
        mov ecx, 0xC0000080
        rdmsr
        bt eax, 10                          ; EFER.LMA is set
        setc al
        add al, '0'
        out 0xe9, al
        ; leave long mode: to compatibility mode, paging off, LME off
        push 0x18
        lea rax, [rel compat]
        push rax
        retfq
on_int: mov al, 'I'
        out 0xe9, al
        iretq
bits 32
compat: int 0x40                            ; from compatibility mode: a 64-bit gate
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax                        ; paging off: LMA clears
        mov ecx, 0xC0000080
        rdmsr
        bt eax, 10
        setc bl
        and eax, ~(1 << 8)
        wrmsr
        mov al, bl
        add al, '0'
        out 0xe9, al
        mov al, 'P'
        out 0xe9, al
        mov al, 10
        out 0xe9, al
        mov al, 0
        out 0xf4, al
gdtr:   dw gdt_end - gdt - 1
        dd gdt
gdt:    dq 0
        dq 0x00AF9A000000FFFF               ; 0x08 64-bit code
        dq 0x00CF92000000FFFF               ; 0x10 data
        dq 0x00CF9A000000FFFF               ; 0x18 32-bit code
        dq 0x00209A0000000000               ; 0x20 64-bit code, limit 0 (memtest86+'s)
gdt_end:
idtr:   dw 0x40F
        dq 0x20000
