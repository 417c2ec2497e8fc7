; start64.asm: the entry of cbench64.elf (elf64: Guests/bench/cbench32.c built with -m64,
; linked by Guests/ld/cbench64.ld). A benchmark, never a test.
;
; Every vCPU starts here at once (RDI = index, RSI = count, RSP = 0, long mode, the
; loader's identity map). Each one runs the whole of bench_main on its own data, in its
; own address space: it copies the 2 MiB page of .data and .bss (0x400000, as loaded:
; .data initialised, .bss zero) to COPIES + index * 2 MiB, builds its own 4-level tables
; (0-1 GiB identity in 2 MiB pages, except 0x400000 -> its copy), loads CR3, takes the
; stack in its copy, enables SSE as an OS would for compiled code, and calls bench_main.
; bench_main prints its four checksum lines between output_lock and output_unlock, which
; hand out port 0xE9 one vCPU at a time in index order. vCPU 0 waits for all, then writes
; the OR of the return values to port 0xF4; the others halt.
;
; Expected port 0xE9 output with N vCPUs: cbench32's four lines, N times. Exit status 0;
; 1 with more than MAX_CPUS vCPUs (nothing printed). Needs COPIES + N * 2 MiB of RAM
; (the default 128 MiB: up to MAX_CPUS).
bits 64
default rel
extern bench_main
extern private_end                      ; cbench64.ld: the end of .bss

MAX_CPUS equ 16
PRIVATE  equ 0x400000                   ; the per-vCPU page (cbench64.ld)
COPIES   equ 0x1000000                  ; vCPU i's copy: COPIES + i * 2 MiB
HELD     equ 0xFFFFFFFF

section .text
global _start
_start:
        ; RSP = 0: nothing may touch the stack before it is set up below.
        cmp rsi, MAX_CPUS
        ja too_many
        mov r12, rdi                    ; index
        mov r13, rsi                    ; count
        cld
        ; this vCPU's copy of the private page
        mov rbx, rdi
        shl rbx, 21
        add rbx, COPIES                 ; RBX = the copy's physical address
        mov rdi, rbx
        mov esi, PRIVATE
        mov rcx, private_end
        sub rcx, PRIVATE
        add rcx, 7
        shr rcx, 3
        rep movsq
        ; its tables: PML4, PDPT, PD, 4 KiB each, in .shared
        imul rdx, r12, 3 * 4096
        lea rax, [tables]
        add rdx, rax                    ; RDX = PML4
        lea rax, [rdx + 4096 + 3]       ; present, writable
        mov [rdx], rax                  ; PML4[0] -> PDPT
        lea rax, [rdx + 8192 + 3]
        mov [rdx + 4096], rax           ; PDPT[0] -> PD
        lea rdi, [rdx + 8192]
        mov eax, 0x83                   ; present, writable, 2 MiB
        mov ecx, 512
.pd:    mov [rdi], rax
        add rax, 0x200000
        add rdi, 8
        dec ecx
        jnz .pd
        lea rax, [rbx + 0x83]
        mov [rdx + 8192 + (PRIVATE >> 21) * 8], rax
        mov cr3, rdx
        ; from here on .data and .bss are this vCPU's own
        mov [cpu_index], r12
        lea rsp, [stack_top]
        mov rax, cr0
        and rax, ~(1 << 2)              ; EM off
        or rax, 1 << 1                  ; MP on
        mov cr0, rax
        mov rax, cr4
        or rax, (1 << 9) | (1 << 10)    ; OSFXSR, OSXMMEXCPT
        mov cr4, rax
        fninit
        call bench_main
        lock or [status], eax
        lock inc qword [done]
        test r12, r12
        jnz park
.wait:  cmp [done], r13
        jae .all
        pause
        jmp .wait
.all:   mov eax, [status]
        out 0xF4, al
park:   cli
        hlt
        jmp park
too_many:
        test rdi, rdi
        jnz park
        mov al, 1
        out 0xF4, al
        jmp park

; output_lock, output_unlock: called from C (they keep every callee-saved register).
; The lock word holds the index of the vCPU whose turn it is, or HELD.
global output_lock
output_lock:
        mov ecx, HELD
.spin:  mov eax, [cpu_index]
        lock cmpxchg [turn], ecx
        je .held
        pause
        jmp .spin
.held:  ret
global output_unlock
output_unlock:
        mov eax, [cpu_index]
        inc eax
        mov [turn], eax                 ; the next vCPU's turn
        ret

section .bss                            ; per vCPU
        alignb 8
cpu_index: resq 1
        alignb 16
stack:  resb 65536
stack_top:

section .shared nobits alloc noexec write align=4096   ; one for all vCPUs, zeroed by the loader
tables: resb MAX_CPUS * 3 * 4096        ; per vCPU: PML4, PDPT, PD
        alignb 64
turn:   resd 1                          ; whose turn to print: vCPU 0 first
        alignb 64
done:   resq 1                          ; vCPUs finished
        alignb 64
status: resd 1                          ; OR of bench_main's return values
