; usermode64.asm -> usermode64.elf              (format: elf64, linked at 2 MiB)
;
; Tests: a small kernel and a user program at CPL 3 in 64-bit mode, the way an
; operating system runs one. CPU 0 (the others halt) sets up its own GDT (kernel
; and user segments, a 64-bit TSS with RSP0), its own 4-level page tables (an
; identity map of 0-4 GiB in 2 MiB pages, user-accessible; a demand-paged user
; region at 0x8000000000 that starts empty), a 256-entry IDT, SYSCALL/SYSRET
; (EFER.SCE, STAR, LSTAR, FMASK) and the local APIC timer (periodic, 1 ms,
; vector 0x40). It enters the user program with IRETQ. The user program, at CPL 3
; with interrupts on:
;   1. writes a line through SYSCALL (returns with SYSRETQ);
;   2. writes a line through INT 0x80 (a DPL 3 gate; returns with IRETQ);
;   3. reads one page and writes eight pages of the demand region: each first
;      touch is a #PF (error 4 for the read, 6 for the writes) the kernel
;      resolves by mapping a fresh zeroed page; it sums what it reads back;
;   4. runs UD2 (#UD), INT3 (#BP), HLT (#GP(0)) and DIV by zero (#DE): the kernel
;      counts each and resumes after it;
;   5. runs a hash (xorshift64 folded into an FNV-style product) of HASH_ROUNDS
;      rounds, about 12 instructions each, entirely in user mode;
;   6. spins until the kernel's timer handler has counted 5 ticks (interrupts
;      taken at CPL 3), reading the kernel's counter directly;
;   7. writes the hash in hex through SYSCALL and exits through SYSCALL.
; The kernel then prints its counters and exits with the status the user passed.
;
; Expected COM1 output (exactly):
;     kernel: entering user mode
;     user: hello through syscall
;     user: hello through int 0x80
;     kernel: #PF cr2=0000008000000000 error=4
;     kernel: #PF cr2=0000008000001008 error=6
;     ... (one line per page, cr2=00000080000k_k*8 for k = 1..8, error=6)
;     user: demand pages sum=36
;     user: hash=<16 hex digits>        (see Tests/TandemTests/HybridTests.swift)
;     kernel: syscalls=6 int80=1 pf=9 ud=1 bp=1 gp=1 de=1 ticks>=5
; Expected exit: status 0; 1 on an unexpected exception or fault (printed).

bits 64
default rel

USER_BASE   equ 0x0000008000000000  ; PML4[1]: the demand-paged user region
USER_PAGES  equ 9                   ; pages the user touches (1 read + 8 written)
HASH_ROUNDS equ 2500000
APIC        equ 0xFEE00000
TICKS       equ 5

KCODE   equ 0x08
KDATA   equ 0x10
UDATA   equ 0x18 | 3
UCODE   equ 0x20 | 3
TSSSEL  equ 0x28

PG_P    equ 1 << 0
PG_RW   equ 1 << 1
PG_US   equ 1 << 2
PG_PS   equ 1 << 7

MSR_EFER  equ 0xC0000080
MSR_STAR  equ 0xC0000081
MSR_LSTAR equ 0xC0000082
MSR_FMASK equ 0xC0000084

SYS_WRITE equ 1
SYS_EXIT  equ 60

section .text
global _start
_start:
        test rdi, rdi                   ; CPU 0 only
        jnz park
        lea rsp, [kstack_top]
        call uart_init
        lea rdi, [counters]             ; RAM need not be zero (a reset keeps it)
        mov ecx, COUNTERS_SIZE / 8
        xor eax, eax
        rep stosq

        call build_tables
        lea rax, [pml4]
        mov cr3, rax

        ; GDT with the TSS descriptor, CS reloaded with a far return
        lea rax, [tss]
        mov word [gdt_tss + 2], ax      ; base 15:0
        shr rax, 16
        mov byte [gdt_tss + 4], al      ; base 23:16
        mov byte [gdt_tss + 7], ah      ; base 31:24
        shr rax, 16
        mov dword [gdt_tss + 8], eax    ; base 63:32
        lea rax, [kstack_top]
        mov [tss + 4], rax              ; RSP0
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
        xor eax, eax
        mov fs, ax
        mov gs, ax
        mov ax, TSSSEL
        ltr ax

        lea rax, [unexpected_vector]
        call fill_idt
        mov edi, 0
        lea rax, [de_handler]
        call set_gate
        mov edi, 3
        lea rax, [bp_handler]
        call set_gate
        mov byte [idt + 3 * 16 + 5], 0xEE   ; DPL 3: INT3 from user mode
        mov edi, 6
        lea rax, [ud_handler]
        call set_gate
        mov edi, 13
        lea rax, [gp_handler]
        call set_gate
        mov edi, 14
        lea rax, [pf_handler]
        call set_gate
        mov edi, 0x40
        lea rax, [timer_handler]
        call set_gate
        mov edi, 0x80
        lea rax, [int80_handler]
        call set_gate
        mov byte [idt + 0x80 * 16 + 5], 0xEE ; DPL 3: INT 0x80 from user mode
        lea rax, [idt]
        mov [idtr + 2], rax
        lidt [idtr]

        ; SYSCALL: kernel CS 0x08 / SS 0x10; SYSRET: SS 0x18|3, CS 0x20|3
        mov ecx, MSR_EFER
        rdmsr
        or eax, 1                       ; SCE
        wrmsr
        mov ecx, MSR_STAR
        xor eax, eax
        mov edx, (0x10 << 16) | KCODE
        wrmsr
        mov ecx, MSR_LSTAR
        lea rax, [syscall_entry]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, MSR_FMASK
        mov eax, 0x47700                ; IF, TF, DF, AC, NT cleared on entry
        xor edx, edx
        wrmsr

        ; the local APIC timer: periodic, 1 ms at the 1 GHz bus clock, vector 0x40
        mov ebx, APIC
        mov dword [rbx + 0xF0], 0x1FF
        mov dword [rbx + 0x3E0], 0xB
        mov dword [rbx + 0x320], 0x20040
        mov dword [rbx + 0x380], 1000000

        lea rsi, [s_enter]
        call puts
        push UDATA
        lea rax, [ustack_top]
        push rax
        push 0x202                      ; IF on
        push UCODE
        lea rax, [user_main]
        push rax
        iretq

park:   cli
        hlt
        jmp park

; ---------------------------------------------------------------- the kernel
; SYSCALL: RAX = number; write(RDI = buffer, RSI = length), exit(RDI = status).
; RCX and R11 hold the user's RIP and RFLAGS; every other register is kept.
syscall_entry:
        mov [user_rsp], rsp
        lea rsp, [kstack_top]
        push rcx
        push r11
        inc qword [n_syscall]
        call do_syscall
        pop r11
        pop rcx
        mov rsp, [user_rsp]
        o64 sysret

int80_handler:
        inc qword [n_int80]
        call do_syscall
        iretq

do_syscall:
        cmp rax, SYS_EXIT
        je sys_exit
        cmp rax, SYS_WRITE
        jne bad_syscall
        push rax
        push rcx
        push rsi
        mov rcx, rsi
        mov rsi, rdi
.out:   test rcx, rcx
        jz .done
        mov al, [rsi]
        call putc
        inc rsi
        dec rcx
        jmp .out
.done:  pop rsi
        pop rcx
        pop rax
        ret

sys_exit:
        mov rbx, rdi
        cli
        mov eax, APIC
        mov dword [rax + 0x320], 0x10040    ; mask and stop the timer
        mov dword [rax + 0x380], 0
        lea rsi, [s_k_syscalls]
        mov rax, [n_syscall]
        call put_count
        lea rsi, [s_k_int80]
        mov rax, [n_int80]
        call put_count
        lea rsi, [s_k_pf]
        mov rax, [n_pf]
        call put_count
        lea rsi, [s_k_ud]
        mov rax, [n_ud]
        call put_count
        lea rsi, [s_k_bp]
        mov rax, [n_bp]
        call put_count
        lea rsi, [s_k_gp]
        mov rax, [n_gp]
        call put_count
        lea rsi, [s_k_de]
        mov rax, [n_de]
        call put_count
        lea rsi, [s_k_ticks]
        call puts
        mov al, bl
        jmp exit_with

bad_syscall:
        lea rsi, [s_bad_syscall]
        call puts
        call putdec
        mov al, 10
        call putc
        mov al, 1
        jmp exit_with

put_count:                              ; RSI label, RAX count
        call puts
        call putdec
        ret

; Exceptions from user mode the kernel expects: counted, and the user resumes
; after the faulting instruction (the frame's RIP is advanced past it).
de_handler:
        inc qword [n_de]
        add qword [rsp], 3              ; div rcx: 48 F7 F1
        jmp user_fault_return
ud_handler:
        inc qword [n_ud]
        add qword [rsp], 2              ; ud2
        jmp user_fault_return
bp_handler:
        inc qword [n_bp]                ; a trap: RIP is already past INT3
        jmp user_fault_return
gp_handler:
        add rsp, 8                      ; the error code (0 for HLT)
        inc qword [n_gp]
        add qword [rsp], 1              ; hlt
user_fault_return:
        test byte [rsp + 8], 3          ; CS: only faults of user mode are ours
        jz kernel_fault
        iretq

timer_handler:
        push rax
        inc qword [ticks]
        mov eax, APIC
        mov dword [rax + 0xB0], 0       ; EOI
        pop rax
        iretq

; #PF: map a fresh zeroed page at CR2 if it lies in the user region.
pf_handler:
        push rax
        push rbx
        push rcx
        push rdi
        push rsi
        mov rbx, cr2
        lea rsi, [s_pf]
        call puts
        mov rax, rbx
        call puthex64
        lea rsi, [s_error]
        call puts
        mov rax, [rsp + 5 * 8]          ; the error code
        call putdec
        mov al, 10
        call putc
        inc qword [n_pf]
        test byte [rsp + 5 * 8], PG_P
        jnz .bad                        ; only not-present faults are ours to fix
        mov rax, rbx
        mov rcx, USER_BASE
        sub rax, rcx
        shr rax, 12
        cmp rax, 512
        jae .bad                        ; outside the user region's one page table
        mov rcx, [pool_next]
        cmp rcx, USER_PAGES
        jae .bad
        inc qword [pool_next]
        shl rcx, 12
        lea rdi, [pool]
        add rdi, rcx                    ; the next pool page
        push rax
        push rdi
        mov ecx, 4096 / 8
        xor eax, eax
        rep stosq
        pop rdi
        pop rax
        or rdi, PG_US | PG_RW | PG_P
        lea rcx, [pt_user]
        mov [rcx + rax * 8], rdi
        pop rsi
        pop rdi
        pop rcx
        pop rbx
        pop rax
        add rsp, 8                      ; the error code
        iretq
.bad:   lea rsi, [s_pf_bad]
        call puts
        mov al, 1
        jmp exit_with

kernel_fault:
        lea rsi, [s_kernel_fault]
        call puts
        mov al, 1
        jmp exit_with

unexpected_vector:
        lea rsi, [s_unexpected]
        call puts
        mov rax, [rsp]                  ; the RIP (or error code) on top
        call puthex64
        mov al, 10
        call putc
        mov al, 1
        jmp exit_with

; build_tables: PML4[0] -> identity 0-4 GiB in 2 MiB pages, PML4[1] -> the user
; region (one PD, one PT, all entries empty). Every level user-accessible.
build_tables:
        lea rdi, [tables]
        mov ecx, TABLES_SIZE / 8
        xor eax, eax
        rep stosq
        lea rax, [pdpt_lo]
        or rax, PG_US | PG_RW | PG_P
        mov [pml4], rax
        lea rax, [pd_lo]
        or rax, PG_US | PG_RW | PG_P
        xor ecx, ecx
.pdpte: mov [pdpt_lo + rcx * 8], rax
        add rax, 4096
        inc ecx
        cmp ecx, 4
        jb .pdpte
        lea rdi, [pd_lo]                ; 2048 x 2 MiB = 4 GiB identity
        mov eax, PG_PS | PG_US | PG_RW | PG_P
        mov ecx, 2048
.pde:   stosq
        add rax, 1 << 21
        loop .pde
        lea rax, [pdpt_user]
        or rax, PG_US | PG_RW | PG_P
        mov [pml4 + 8], rax
        lea rax, [pd_user]
        or rax, PG_US | PG_RW | PG_P
        mov [pdpt_user], rax
        lea rax, [pt_user]
        or rax, PG_US | PG_RW | PG_P
        mov [pd_user], rax
        ret

; puthex64 RAX: 16 lowercase hex digits. Keeps every register.
puthex64:
        push rax
        push rcx
        push rdx
        mov rdx, rax
        mov ecx, 16
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
        pop rcx
        pop rax
        ret

; ---------------------------------------------------------------- user mode
user_main:
        lea rdi, [u_hello_sys]
        mov esi, u_hello_sys_len
        mov eax, SYS_WRITE
        syscall
        lea rdi, [u_hello_int]
        mov esi, u_hello_int_len
        mov eax, SYS_WRITE
        int 0x80

        ; demand pages: one read, then eight written at offset 8k of page k
        mov rbx, USER_BASE
        mov r12, [rbx]                  ; #PF error 4 (user, read); reads 0
        mov ecx, 1
.touch: mov rax, rcx
        shl rax, 12
        lea rdx, [rbx + rax]
        mov [rdx + rcx * 8], rcx        ; #PF error 6 (user, write)
        inc ecx
        cmp ecx, 9
        jb .touch
        mov ecx, 1
.sum:   mov rax, rcx
        shl rax, 12
        lea rdx, [rbx + rax]
        add r12, [rdx + rcx * 8]
        inc ecx
        cmp ecx, 9
        jb .sum
        lea rdi, [u_sum]
        mov esi, u_sum_len
        mov eax, SYS_WRITE
        syscall
        mov rax, r12
        call user_putdec_line

        ; exceptions the kernel resumes from
        ud2
        int3
        hlt
        xor edx, edx
        mov eax, 1
        xor ecx, ecx
        div rcx                         ; 48 F7 F1

        ; the hash, all in user mode
        mov rax, 0x9E3779B97F4A7C15     ; xorshift64 state
        mov rbx, 0xCBF29CE484222325     ; FNV-1a offset basis
        mov r8, 0x100000001B3           ; FNV prime
        mov ecx, HASH_ROUNDS
.round: mov rdx, rax
        shl rdx, 13
        xor rax, rdx
        mov rdx, rax
        shr rdx, 7
        xor rax, rdx
        mov rdx, rax
        shl rdx, 17
        xor rax, rdx
        xor rbx, rax
        imul rbx, r8
        dec ecx
        jnz .round
        mov r13, rbx

        ; timer interrupts taken at CPL 3: wait for the kernel to count them
.wait:  pause
        cmp qword [ticks], TICKS
        jb .wait

        lea rdi, [u_hash]
        mov esi, u_hash_len
        mov eax, SYS_WRITE
        syscall
        lea rdi, [ubuf]                 ; 16 hex digits and a newline
        mov rax, r13
        mov ecx, 16
.hex:   rol rax, 4
        mov edx, eax
        and edx, 0x0F
        add edx, '0'
        cmp edx, '9'
        jbe .put
        add edx, 'a' - '9' - 1
.put:   mov [rdi], dl
        inc rdi
        dec ecx
        jnz .hex
        mov byte [rdi], 10
        lea rdi, [ubuf]
        mov esi, 17
        mov eax, SYS_WRITE
        syscall

        xor edi, edi
        mov eax, SYS_EXIT
        syscall
.never: jmp .never

; user_putdec_line RAX: decimal and a newline through SYSCALL write.
user_putdec_line:
        lea rdi, [ubuf + 31]
        mov byte [rdi], 10
        mov ecx, 10
.div:   xor edx, edx
        div rcx
        add dl, '0'
        dec rdi
        mov [rdi], dl
        test rax, rax
        jnz .div
        lea rsi, [ubuf + 32]
        sub rsi, rdi
        mov eax, SYS_WRITE
        syscall
        ret

%include "uart64.inc"
%include "idt64.inc"

section .data
s_enter:        db "kernel: entering user mode", 10, 0
s_pf:           db "kernel: #PF cr2=", 0
s_error:        db " error=", 0
s_pf_bad:       db "kernel: a page fault it cannot resolve", 10, 0
s_kernel_fault: db "kernel: an exception in kernel mode", 10, 0
s_unexpected:   db "kernel: unexpected exception, top of stack ", 0
s_bad_syscall:  db "kernel: unknown system call ", 0
s_k_syscalls:   db "kernel: syscalls=", 0
s_k_int80:      db " int80=", 0
s_k_pf:         db " pf=", 0
s_k_ud:         db " ud=", 0
s_k_bp:         db " bp=", 0
s_k_gp:         db " gp=", 0
s_k_de:         db " de=", 0
s_k_ticks:      db " ticks>=5", 10, 0
u_hello_sys:    db "user: hello through syscall", 10
u_hello_sys_len equ $ - u_hello_sys
u_hello_int:    db "user: hello through int 0x80", 10
u_hello_int_len equ $ - u_hello_int
u_sum:          db "user: demand pages sum="
u_sum_len       equ $ - u_sum
u_hash:         db "user: hash="
u_hash_len      equ $ - u_hash

        align 8
gdt:    dq 0
        dq 0x00AF9A000000FFFF   ; 0x08: 64-bit code, DPL 0
        dq 0x00CF92000000FFFF   ; 0x10: data, DPL 0
        dq 0x00CFF2000000FFFF   ; 0x18: data, DPL 3
        dq 0x00AFFA000000FFFF   ; 0x20: 64-bit code, DPL 3
gdt_tss:
        dw 103                  ; 0x28: 64-bit TSS, limit 103, base filled in
        dw 0
        db 0, 0x89, 0, 0
        dq 0
gdt_end:
        align 8
        dw 0, 0, 0
gdtr:   dw gdt_end - gdt - 1
        dq 0

section .bss
        alignb 4096
tables:
pml4:       resb 4096
pdpt_lo:    resb 4096
pd_lo:      resb 4 * 4096
pdpt_user:  resb 4096
pd_user:    resb 4096
pt_user:    resb 4096
TABLES_SIZE equ $ - tables
pool:       resb USER_PAGES * 4096
idt:        resb 256 * 16
kstack:     resb 16384
kstack_top:
ustack:     resb 16384
ustack_top:
tss:        resb 104
        alignb 8
counters:
user_rsp:   resq 1
pool_next:  resq 1
ticks:      resq 1
n_syscall:  resq 1
n_int80:    resq 1
n_pf:       resq 1
n_ud:       resq 1
n_bp:       resq 1
n_gp:       resq 1
n_de:       resq 1
COUNTERS_SIZE equ $ - counters
ubuf:       resb 32
