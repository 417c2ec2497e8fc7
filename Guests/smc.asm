; smc.asm -> smc.elf                          (format: multiboot, ELF32 at 1 MiB)
;
; Tests: self-modifying code, i.e. that a store to memory that holds code
; is seen by the next fetch of that code (an interpreter's decode cache or
; a JIT's translation must be invalidated by the store).
;   (a) copies a function (mov eax, 1 / ret) into a buffer in .data, calls
;       it, patches the imm32 of its MOV to 2 and calls it again;
;   (b) a loop of 1000 iterations that, in each iteration, rewrites the
;       opcode byte of an instruction (0x40 inc eax on odd counts, 0x43
;       inc ebx on even ones) and the imm32 of an `add esi, imm32` (to the
;       count), each store followed by a `jmp` to the patched instruction,
;       which comes next: the portable (486-safe) way, SDM vol. 3A 9.1.3;
;   (c) the same loop without the jumps: the patched instruction directly
;       follows the store, in the same basic block. Since the Pentium, x86
;       CPUs check stores against prefetched instructions (SDM vol. 3A
;       11.6), so this must work too.
; A loop is ok when EAX = EBX = 500 and ESI = 1+2+...+1000 = 500500.
;
; Expected COM1 output (exactly):
;     "smc: first=00000001 second=00000002\n"
;     "smc: patched loop ok\n"
;     "smc: next-instruction patch ok\n"
; Expected exit: status 0. On a wrong result the line instead reads
; "smc: first=%08x second=%08x\n" with the values seen, or
; "smc: patched loop FAILED eax=%08x ebx=%08x esi=%08x\n" (or
; "smc: next-instruction patch FAILED ..."), and the exit status is 1.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

COUNT equ 1000                  ; loop iterations: odd and even counts alternate

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call uart_init
        xor ebp, ebp            ; EBP = 1 once anything failed

        ; (a) copy the template, call it, patch its immediate, call it again
        mov esi, fn_template
        mov edi, fnbuf
        mov ecx, fn_len
        rep movsb
        call fnbuf
        mov ebx, eax            ; first result
        mov dword [fnbuf + 1], 2        ; the imm32 of "mov eax, imm32"
        call fnbuf
        mov ecx, eax            ; second result
        mov esi, s_first
        call puts
        mov eax, ebx
        call puthex32
        mov esi, s_second
        call puts
        mov eax, ecx
        call puthex32
        mov al, 10
        call putc
        cmp ebx, 1
        jne .a_bad
        cmp ecx, 2
        je .b
.a_bad: mov ebp, 1

        ; (b) patch, jump to the patched instruction, run it
.b:     xor eax, eax
        xor ebx, ebx
        xor esi, esi
        mov ecx, COUNT
.lb:    mov edx, ecx
        and edx, 1
        imul edx, edx, 3
        neg edx
        add edx, 0x43           ; odd count: 0x40 (inc eax), even: 0x43 (inc ebx)
        mov [.b_op], dl
        jmp .b_op               ; EB 00: a jump to the next instruction
.b_op:  nop                     ; becomes inc eax / inc ebx
        mov [.b_add + 2], ecx   ; the imm32 of "add esi, imm32" (81 C6 id)
        jmp .b_add
.b_add: add esi, strict dword 0x7fffffff
        dec ecx
        jnz .lb
        mov edi, s_loop
        call check

        ; (c) the same without the jumps: the store's next instruction is patched
        xor eax, eax
        xor ebx, ebx
        xor esi, esi
        mov ecx, COUNT
.lc:    mov edx, ecx
        and edx, 1
        imul edx, edx, 3
        neg edx
        add edx, 0x43
        mov [.c_op], dl
.c_op:  nop                     ; becomes inc eax / inc ebx
        mov [.c_add + 2], ecx
.c_add: add esi, strict dword 0x7fffffff
        dec ecx
        jnz .lc
        mov edi, s_next
        call check

        mov eax, ebp            ; 0, or 1 after a failure
        jmp exit_with

; check: EDI = the loop's name; EAX, EBX, ESI = what the loop computed.
; Prints "smc: <name> ok" or "smc: <name> FAILED eax=.. ebx=.. esi=..";
; sets EBP = 1 on failure.
check:
        push esi
        mov esi, s_smc
        call puts
        mov esi, edi
        call puts
        pop esi
        cmp eax, COUNT / 2
        jne .bad
        cmp ebx, COUNT / 2
        jne .bad
        cmp esi, COUNT * (COUNT + 1) / 2
        jne .bad
        push esi
        mov esi, s_ok
        call puts
        pop esi
        ret
.bad:   mov ebp, 1
        push esi
        mov esi, s_failed_eax
        call puts
        call puthex32           ; EAX
        mov esi, s_ebx
        call puts
        mov eax, ebx
        call puthex32
        mov esi, s_esi
        call puts
        pop eax
        call puthex32           ; ESI
        mov al, 10
        jmp putc

; The function that (a) copies: 6 bytes, position independent.
fn_template:
        mov eax, strict dword 1 ; B8 01 00 00 00: the imm32 starts at +1
        ret
fn_len equ $ - fn_template

section .data
s_first:      db "smc: first=", 0
s_second:     db " second=", 0
s_smc:        db "smc: ", 0
s_loop:       db "patched loop", 0
s_next:       db "next-instruction patch", 0
s_ok:         db " ok", 10, 0
s_failed_eax: db " FAILED eax=", 0
s_ebx:        db " ebx=", 0
s_esi:        db " esi=", 0
        align 16
fnbuf:  times 16 db 0xCC        ; the copied function runs here (int3 filler)

section .bss
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart32.inc"
