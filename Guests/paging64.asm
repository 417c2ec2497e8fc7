; paging64.asm -> paging64.elf                (format: elf64, linked at 2 MiB)
;
; Tests: 4-level paging built by the guest itself, in place of the loader's
; identity map. CPU 0 (the others halt) builds, in .bss:
;   - PML4[0] -> PDPT -> PD: an identity map of the first 1 GiB in 2 MiB pages;
;   - PML4[256] -> PDPT -> PD -> two PTs: a high alias of physical 0-4 MiB at
;     0xFFFF800000000000 in 4 KiB pages (the image is at 2 MiB), and a third,
;     empty PT behind PD[2] (virtual 0xFFFF800000400000-0xFFFF8000005FFFFF);
; loads its own GDT (0x08 64-bit code, 0x10 data) and CR3, jumps to its code
; through the high alias, moves its stack there, installs an IDT (through
; the alias) whose #PF handler prints
;     page fault cr2=%016x error=%08x
; and resolves the fault by mapping a fresh zeroed page at CR2, allocating
; any missing PDPT/PD/PT on the way from a pool in .bss. Then it
;   1. reads 0xFFFF800000401238 (its PTE in the empty PT is not present):
;      error 0 (not present, read), then the read returns 0;
;   2. writes 0x1122334455667788 to 0xFFFFC00000003008 (PML4[384] not
;      present: a new PDPT, PD, PT and page): error 2 (not present, write),
;      then reads it back.
; Any other exception, a fault the handler cannot resolve, or a fifth fault
; prints a message and exits with status 1.
;
; Expected COM1 output (exactly; the RIP is the high alias of a link address
; of this source as built by Tools/build-guests):
;     paging64: own page tables loaded, rip=ffff80000020006c
;     page fault cr2=ffff800000401238 error=00000000
;     paging64: read 0000000000000000 from the new page
;     page fault cr2=ffffc00000003008 error=00000002
;     paging64: wrote 1122334455667788, read back 1122334455667788
;     paging64: done
; Expected exit: status 0.

bits 64
default rel

HIGH     equ 0xFFFF800000000000 ; the alias of physical 0
TOUCH_A  equ 0xFFFF800000401238
TOUCH_B  equ 0xFFFFC00000003008
VALUE_B  equ 0x1122334455667788
POOL_PAGES equ 8

KCODE   equ 0x08
KDATA   equ 0x10

PG_P    equ 1 << 0
PG_RW   equ 1 << 1
PG_PS   equ 1 << 7
ADDR_MASK equ 0x000FFFFFFFFFF000

section .text
global _start
_start:
        test rdi, rdi                   ; CPU 0 only
        jnz park
        lea rsp, [stack_top]
        call uart_init

        ; our own GDT, CS reloaded with a far return
        lea rax, [gdt]
        mov [gdtr + 2], rax
        lgdt [gdtr]
        push KCODE
        lea rax, [.cs]
        push rax
        retfq
.cs:    mov ax, KDATA
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax

        call build_tables
        lea rax, [pml4]
        mov cr3, rax                    ; CR4.PAE and EFER.LMA are already on

        mov rdx, HIGH                   ; continue through the alias
        add rsp, rdx
        lea rax, [high]
        add rax, rdx
        jmp rax

high:   lea rbx, [rel high]             ; RIP-relative: the high alias now
        lea rsi, [s_loaded]
        call puts
        mov rax, rbx
        call puthex64
        call newline
        mov rdx, HIGH                   ; leave the identity map's addresses behind
        cmp rbx, rdx
        jb fail

        call build_idt

        ; 1. a read of a page whose PTE is not present
        mov rax, TOUCH_A
        mov rbx, [rax]
        lea rsi, [s_read]
        call puts
        mov rax, rbx
        call puthex64
        lea rsi, [s_new_page]
        call puts

        ; 2. a write where even the PML4 entry is missing
        mov rax, TOUCH_B
        mov rbx, VALUE_B
        mov [rax], rbx
        mov rbx, [rax]
        lea rsi, [s_wrote]
        call puts
        mov rax, VALUE_B
        call puthex64
        lea rsi, [s_read_back]
        call puts
        mov rax, rbx
        call puthex64
        call newline

        lea rsi, [s_done]
        call puts
        mov al, 0
        jmp exit_with

fail:   lea rsi, [s_fail]
        call puts
        mov al, 1
        jmp exit_with

park:   cli
        hlt
        jmp park

; build_tables: all the tables above, from scratch (.bss is not zeroed for us).
build_tables:
        lea rdi, [tables]
        mov ecx, TABLES_SIZE / 8
        xor eax, eax
        rep stosq
        lea rax, [pdpt_lo]
        or rax, PG_RW | PG_P
        mov [pml4], rax
        lea rax, [pd_lo]
        or rax, PG_RW | PG_P
        mov [pdpt_lo], rax
        lea rdi, [pd_lo]                ; 512 x 2 MiB = 1 GiB identity
        mov eax, PG_PS | PG_RW | PG_P
        mov ecx, 512
.pde:   stosq
        add rax, 1 << 21
        loop .pde

        lea rax, [pdpt_hi]
        or rax, PG_RW | PG_P
        mov [pml4 + 256 * 8], rax
        lea rax, [pd_hi]
        or rax, PG_RW | PG_P
        mov [pdpt_hi], rax
        lea rax, [pt_hi]                ; three PTs, the third left empty
        or rax, PG_RW | PG_P
        mov [pd_hi], rax
        add rax, 0x1000
        mov [pd_hi + 8], rax
        add rax, 0x1000
        mov [pd_hi + 16], rax
        lea rdi, [pt_hi]                ; 1024 x 4 KiB = physical 0-4 MiB
        mov eax, PG_RW | PG_P
        mov ecx, 1024
.pte:   stosq
        add rax, 0x1000
        loop .pte
        ret

; build_idt: 32 interrupt gates, all through the high alias; #PF is pf_handler.
build_idt:
        mov r8, HIGH
        xor ecx, ecx
        lea rdi, [idt]
.gate:  lea rax, [stubs]
        mov rax, [rax + rcx * 8]        ; link address of the stub
        add rax, r8
        mov [rdi], ax                   ; offset 15:0
        mov word [rdi + 2], KCODE
        mov word [rdi + 4], 0x8E00      ; IST 0, P, DPL 0, 64-bit interrupt gate
        shr rax, 16
        mov [rdi + 6], ax               ; offset 31:16
        shr rax, 16
        mov [rdi + 8], eax              ; offset 63:32
        mov dword [rdi + 12], 0
        add rdi, 16
        inc ecx
        cmp ecx, 32
        jb .gate
        lea rax, [idt]                  ; RIP-relative: already the alias
        mov [idtr + 2], rax
        lidt [idtr]
        ret

; Exception stubs: #PF goes to pf_handler, every other vector to unexpected.
%assign v 0
%rep 32
%if v == 14
%elif v == 8 || (v >= 10 && v <= 13) || v == 17 || v == 21 || v == 29 || v == 30
stub_ %+ v:
        push v                          ; on top of the CPU's error code
        jmp unexpected
%else
stub_ %+ v:
        push 0                          ; no error code from the CPU
        push v
        jmp unexpected
%endif
%assign v v + 1
%endrep
stub_14 equ pf_handler

unexpected:
        lea rsi, [s_unexpected]
        call puts
        pop rax                         ; vector
        call putdec
        lea rsi, [s_error]
        call puts
        pop rax
        call puthex32
        lea rsi, [s_rip]
        call puts
        pop rax
        call puthex64
        call newline
        mov al, 1
        jmp exit_with

; The #PF handler. Frame: error code, RIP, CS, RFLAGS, RSP, SS.
pf_handler:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        mov rbx, cr2
        lea rsi, [s_pf]
        call puts
        mov rax, rbx
        call puthex64
        lea rsi, [s_error]
        call puts
        mov rax, [rsp + 6 * 8]          ; the error code
        call puthex32
        call newline

        inc dword [pf_count]
        cmp dword [pf_count], 4
        ja .bad                         ; a fault that does not go away
        test byte [rsp + 6 * 8], PG_P
        jnz .bad                        ; only not-present faults are ours to fix

        ; walk PML4, PDPT, PD: allocate a table for each missing entry
        mov rdi, cr3
        mov rdx, ADDR_MASK
        and rdi, rdx                    ; tables are reached through the identity map
        mov ecx, 39
.level: mov rax, rbx
        shr rax, cl
        and eax, 511
        lea rsi, [rdi + rax * 8]        ; the entry
        mov rax, [rsi]
        test al, PG_P
        jnz .present
        call alloc_page
        or rax, PG_RW | PG_P
        mov [rsi], rax
.present:
        test al, PG_PS
        jnz .bad                        ; a large page: not ours
        and rax, rdx
        mov rdi, rax                    ; the next level's table
        sub ecx, 9
        cmp ecx, 12
        ja .level
        mov rax, rbx                    ; the PT entry: a fresh page
        shr rax, 12
        and eax, 511
        lea rsi, [rdi + rax * 8]
        call alloc_page
        or rax, PG_RW | PG_P
        mov [rsi], rax
        invlpg [rbx]

        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
        add rsp, 8                      ; the error code
        iretq
.bad:   lea rsi, [s_pf_bad]
        call puts
        mov al, 1
        jmp exit_with

; alloc_page: RAX = the physical address of a zeroed page from the pool.
alloc_page:
        push rcx
        push rdi
        mov eax, [pool_used]
        cmp eax, POOL_PAGES
        jae pf_handler.bad
        inc dword [pool_used]
        shl eax, 12
        lea rdi, [pool]
        add rdi, rax
        mov rax, HIGH                   ; pool is reached through the alias here:
        sub rdi, rax                    ; its physical address is the link address
        push rdi
        mov ecx, 512
        xor eax, eax
        rep stosq                       ; zeroed through the identity map
        pop rax
        pop rdi
        pop rcx
        ret

; puthex64 RAX / puthex32 EAX: 16 or 8 lowercase hex digits. Keep every register.
puthex64:
        push rcx
        mov ecx, 16
        jmp puthex
puthex32:
        push rcx
        mov ecx, 8
puthex: push rax
        push rdx
        mov rdx, rax
        cmp ecx, 16
        je .digit
        shl rdx, 32                     ; 8 digits: start from bit 31
.digit: rol rdx, 4
        mov eax, edx
        and eax, 0x0F
        add al, '0'
        cmp al, '9'
        jbe .out
        add al, 'a' - '9' - 1
.out:   call putc
        dec ecx
        jnz .digit
        pop rdx
        pop rax
        pop rcx
        ret

newline:
        push rax
        mov al, 10
        call putc
        pop rax
        ret

section .data
        align 8
gdt:    dq 0
        dq 0x00AF9A000000FFFF   ; 0x08: 64-bit code, DPL 0
        dq 0x00CF92000000FFFF   ; 0x10: data, DPL 0
gdt_end:
        align 8
        dw 0, 0, 0
gdtr:   dw gdt_end - gdt - 1
        dq 0                    ; base: filled in (RIP-relative address of gdt)
        dw 0, 0, 0
idtr:   dw 32 * 16 - 1
        dq 0                    ; base: filled in
stubs:
%assign v 0
%rep 32
        dq stub_ %+ v
%assign v v + 1
%endrep
pf_count:  dd 0
pool_used: dd 0

s_loaded:     db "paging64: own page tables loaded, rip=", 0
s_read:       db "paging64: read ", 0
s_new_page:   db " from the new page", 10, 0
s_wrote:      db "paging64: wrote ", 0
s_read_back:  db ", read back ", 0
s_done:       db "paging64: done", 10, 0
s_fail:       db "paging64: not running through the high alias", 10, 0
s_pf:         db "page fault cr2=", 0
s_error:      db " error=", 0
s_rip:        db " rip=", 0
s_pf_bad:     db "paging64: cannot resolve this page fault", 10, 0
s_unexpected: db "paging64: unexpected exception ", 0

section .bss
        alignb 4096
tables:
pml4:    resb 4096
pdpt_lo: resb 4096
pd_lo:   resb 4096
pdpt_hi: resb 4096
pd_hi:   resb 4096
pt_hi:   resb 3 * 4096          ; physical 0-2 MiB, 2-4 MiB, and an empty one
TABLES_SIZE equ $ - tables
pool:    resb POOL_PAGES * 4096 ; pages for the #PF handler
idt:     resb 32 * 16
        alignb 16
stack:   resb 8192
stack_top:

; COM1 routines, kept after the main code
%include "uart64.inc"
