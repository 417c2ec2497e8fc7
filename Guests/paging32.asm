; paging32.asm -> paging32.elf                (format: multiboot, ELF32 at 1 MiB)
;
; Tests: 32-bit (non-PAE) paging. Builds its own GDT, an IDT (a #PF
; handler; every other vector ends the run) and a page directory with
;   - PDE 0: a 4 MiB page (CR4.PSE) identity-mapping 0-4 MiB, where the
;     code, data, stack and the tables themselves live;
;   - PDE 0x300: a page table of 4 KiB pages mapping the alias window
;     virtual 0xC0000000 + x -> physical 0x00100000 + x for x < 1 MiB
;     (the kernel image), PTEs P | RW with A = D = 0.
; Then, with CR0.PG:
;   1. writes a value through the alias of a .data word and reads it back
;      through the identity map;
;   2. prints the A and D bits of the alias PTE of a fresh page: untouched,
;      after a read through the alias, after a write through the alias;
;   3. makes one alias page read-only, sets CR0.WP and writes to it at CPL 0:
;      the #PF handler prints the fault, makes the PTE writable, INVLPGs and
;      IRETs, so the write is retried and lands;
;   4. reads an unmapped alias address (0xC0200ABC, past the mapped 1 MiB):
;      the handler prints the fault and maps a spare page there, filled with
;      0x5EED5EED beforehand, and the read is retried.
; The #PF handler prints "page fault cr2=%08x error=%08x" (error: P 1,
; W/R 2, U/S 4); a fault outside the alias window, a fifth fault, or any
; other exception prints a message and exits with status 1.
;
; Expected COM1 output (exactly; the alias addresses follow the link
; addresses of this source as built by Tools/build-guests):
;     paging32: alias c0002000 wrote cafef00d, identity 00102000 read cafef00d
;     paging32: pte of c0005000 untouched: a=0 d=0
;     paging32: pte of c0005000 after a read: a=1 d=0
;     paging32: pte of c0005000 after a write: a=1 d=1
;     page fault cr2=c0006000 error=00000003
;     paging32: write-protected page written after the fault: 0000beef
;     page fault cr2=c0200abc error=00000000
;     paging32: unmapped page read after the fault: 5eed5eed
;     paging32: done
; Expected exit: status 0.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

KCODE   equ 0x08
KDATA   equ 0x10

ALIAS       equ 0xC0000000      ; virtual start of the alias window
ALIAS_PHYS  equ 0x00100000      ; what it maps: the kernel
ALIAS_PAGES equ 256             ; 1 MiB mapped; the rest of the table is empty
UNMAPPED    equ ALIAS + 0x200ABC

PG_P    equ 1 << 0
PG_RW   equ 1 << 1
PG_A    equ 1 << 5
PG_D    equ 1 << 6
PG_PS   equ 1 << 7

; alias(ADDRESS): the alias-window address of a kernel address (a link-time expression)
%define alias(a) ((a) - ALIAS_PHYS + ALIAS)

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call uart_init
        call setup_cpu
        call setup_paging

        ; 1. write through the alias, read through the identity map
        mov dword [alias(word1)], 0xCAFEF00D
        mov esi, s_alias
        call puts
        mov eax, alias(word1)
        call puthex32
        mov esi, s_wrote
        call puts
        mov eax, 0xCAFEF00D
        call puthex32
        mov esi, s_identity
        call puts
        mov eax, word1
        call puthex32
        mov esi, s_read
        call puts
        mov eax, [word1]
        call puthex32
        call newline

        ; 2. Accessed and Dirty of a fresh page's PTE
        mov edi, s_untouched
        call print_ad
        mov eax, [alias(ad_page)]       ; a read through the alias
        mov edi, s_after_read
        call print_ad
        mov dword [alias(ad_page)], 1   ; a write through the alias
        mov edi, s_after_write
        call print_ad

        ; 3. a write to a read-only page with CR0.WP set: the handler makes it writable
        mov eax, wp_page
        call pte_of
        and dword [edi], ~PG_RW
        invlpg [alias(wp_page)]
        mov eax, cr0
        or eax, 1 << 16                 ; CR0.WP: read-only applies to CPL 0 too
        mov cr0, eax
        mov dword [alias(wp_page)], 0xBEEF
        mov esi, s_wp
        call puts
        mov eax, [wp_page]              ; what landed, read through the identity map
        call puthex32
        call newline

        ; 4. a read of an unmapped page: the handler maps the spare page there
        mov dword [spare_page + (UNMAPPED & 0xFFF)], 0x5EED5EED
        mov ebx, [UNMAPPED]
        mov esi, s_unmapped
        call puts
        mov eax, ebx
        call puthex32
        call newline

        mov esi, s_done
        call puts
        mov al, 0
        jmp exit_with

; print_ad: EDI = the line's middle part; prints the A and D bits of ad_page's alias PTE.
print_ad:
        mov esi, s_pte
        call puts
        mov eax, alias(ad_page)
        call puthex32
        mov esi, edi
        call puts
        mov eax, ad_page
        call pte_of
        mov ebx, [edi]
        mov esi, s_a
        call puts
        mov eax, ebx
        shr eax, 5                      ; A
        call putbit
        mov esi, s_d
        call puts
        mov eax, ebx
        shr eax, 6                      ; D
        call putbit
        jmp newline

; pte_of: EAX = a kernel address; EDI = the address of its alias PTE.
pte_of:
        lea edi, [eax - ALIAS_PHYS]
        shr edi, 12
        lea edi, [pt + edi * 4]
        ret

putbit:                                 ; '0' or '1' from bit 0 of EAX
        and eax, 1
        add al, '0'
        jmp putc

newline:
        push eax
        mov al, 10
        call putc
        pop eax
        ret

; setup_cpu: our own GDT (the Multiboot one may be gone) and IDT.
setup_cpu:
        lgdt [gdtr]
        jmp KCODE:.cs
.cs:    mov ax, KDATA
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        xor ecx, ecx
.gate:  mov eax, [stubs + ecx * 4]
        mov [idt + ecx * 8], ax                 ; offset 15:0
        mov word [idt + ecx * 8 + 2], KCODE
        and eax, 0xFFFF0000
        or eax, 0x8E00                          ; P, DPL 0, 32-bit interrupt gate
        mov [idt + ecx * 8 + 4], eax
        inc ecx
        cmp ecx, 32
        jb .gate
        lidt [idtr]
        ret

; setup_paging: the page directory and the alias page table, then CR4.PSE, CR3, CR0.PG.
setup_paging:
        mov edi, pd                     ; .bss is not zeroed for us
        mov ecx, 2 * 1024               ; pd and pt are adjacent
        xor eax, eax
        rep stosd
        mov dword [pd], 0 | PG_PS | PG_RW | PG_P        ; 0-4 MiB, one 4 MiB page
        mov dword [pd + (ALIAS >> 22) * 4], pt + (PG_RW | PG_P)
        mov edi, pt
        mov eax, ALIAS_PHYS | PG_RW | PG_P
        mov ecx, ALIAS_PAGES
.pte:   stosd
        add eax, 0x1000
        loop .pte
        mov eax, cr4
        or eax, 1 << 4                  ; CR4.PSE: 4 MiB pages
        mov cr4, eax
        mov eax, pd
        mov cr3, eax
        mov eax, cr0
        or eax, 1 << 31                 ; CR0.PG
        mov cr0, eax
        jmp .paged                      ; (identity-mapped: nothing moves)
.paged: ret

; Exception stubs: #PF goes to pf_handler, every other vector to unexpected.
%assign v 0
%rep 32
%if v == 14
%elif v == 8 || (v >= 10 && v <= 13) || v == 17 || v == 21 || v == 29 || v == 30
stub_ %+ v:
        push dword v                    ; on top of the CPU's error code
        jmp unexpected
%else
stub_ %+ v:
        push dword 0                    ; no error code from the CPU
        push dword v
        jmp unexpected
%endif
%assign v v + 1
%endrep
stub_14 equ pf_handler

unexpected:
        mov esi, s_unexpected
        call puts
        pop eax                         ; vector
        call putdec32
        mov esi, s_error
        call puts
        pop eax
        call puthex32
        mov esi, s_eip
        call puts
        pop eax
        call puthex32
        call newline
        mov al, 1
        jmp exit_with

; The #PF handler: the CPU pushed the error code, EIP, CS, EFLAGS.
pf_handler:
        pushad
        mov ebx, cr2
        mov esi, s_pf
        call puts
        mov eax, ebx
        call puthex32
        mov esi, s_error
        call puts
        mov eax, [esp + 32]             ; the error code
        call puthex32
        call newline

        inc dword [pf_count]
        cmp dword [pf_count], 4
        ja .bad                         ; a fault that does not go away
        mov eax, ebx                    ; only the alias window is ours to fix
        sub eax, ALIAS
        cmp eax, 0x400000
        jae .bad
        shr eax, 12
        lea edi, [pt + eax * 4]
        test dword [edi], PG_P
        jnz .ro
        mov dword [edi], spare_page + (PG_RW | PG_P)    ; not present: map the spare page
        jmp .flush
.ro:    or dword [edi], PG_RW           ; present: it was the read-only one
.flush: invlpg [ebx]
        popad
        add esp, 4                      ; the error code
        iret
.bad:   mov esi, s_pf_bad
        call puts
        mov al, 1
        jmp exit_with

section .data
        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF   ; 0x08: code, DPL 0, flat, 32-bit
        dq 0x00CF92000000FFFF   ; 0x10: data, DPL 0, flat
gdt_end:
gdtr:   dw gdt_end - gdt - 1
        dd gdt
idtr:   dw 32 * 8 - 1
        dd idt
stubs:
%assign v 0
%rep 32
        dd stub_ %+ v
%assign v v + 1
%endrep
pf_count: dd 0

s_alias:       db "paging32: alias ", 0
s_wrote:       db " wrote ", 0
s_identity:    db ", identity ", 0
s_read:        db " read ", 0
s_pte:         db "paging32: pte of ", 0
s_untouched:   db " untouched:", 0
s_after_read:  db " after a read:", 0
s_after_write: db " after a write:", 0
s_a:           db " a=", 0
s_d:           db " d=", 0
s_wp:          db "paging32: write-protected page written after the fault: ", 0
s_unmapped:    db "paging32: unmapped page read after the fault: ", 0
s_done:        db "paging32: done", 10, 0
s_pf:          db "page fault cr2=", 0
s_error:       db " error=", 0
s_eip:         db " eip=", 0
s_pf_bad:      db "paging32: cannot resolve this page fault", 10, 0
s_unexpected:  db "paging32: unexpected exception ", 0

        align 4096
word1:  dd 0                    ; test 1 (its own page: 0x00102000 if .data starts there)

section .bss
        alignb 4096
pd:     resb 4096               ; page directory
pt:     resb 4096               ; the alias window's page table (right after pd)
ad_page:    resb 4096           ; test 2
wp_page:    resb 4096           ; test 3
spare_page: resb 4096           ; test 4: mapped by the handler
idt:    resb 32 * 8
        alignb 16
stack:  resb 8192
stack_top:

; COM1 routines, kept after the main code
%include "uart32.inc"
