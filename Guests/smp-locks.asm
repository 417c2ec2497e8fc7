; smp-locks.asm -> smp-locks.elf          (format: elf64, linked at 2 MiB)
;
; Tests: every LOCK-able read-modify-write form is atomic across vCPUs that run
; at once: add adc and btc btr bts cmpxchg cmpxchg8b cmpxchg16b dec inc neg not
; or sbb sub xor xadd xchg, at 8/16/32/64 bits, aligned, across a cache line
; and across a page (those one round in eight). All CPUs meet at a barrier, then each runs ITERATIONS
; rounds of the whole battery on shared memory:
;   - counters whose final value is exact (add, adc, sub, sbb, inc, dec, xadd,
;     cmpxchg/cmpxchg8b/cmpxchg16b increment loops, a counter incremented with
;     plain instructions under an XCHG spinlock);
;   - neg and not applied twice a round (the value must come back);
;   - or/and, xor, bts/btr/btc on a word shared by all CPUs, each CPU owning one
;     bit: right after its own set (clear) the bit must read as set (clear), and
;     bts/btr/btc must report the bit's old value in CF. A lost update breaks
;     these at once; each break counts one error.
; CPU 0 waits for the others, then prints every counter and the error count.
;
; Expected COM1 output with N CPUs: one "name=value" line per counter, then
; "errors=0" and "locks: ok" (on a wrong value: "name=value expected=E", and
; "locks: FAIL"). Exit status 0 when everything matched, 1 otherwise.

bits 64
default rel

ITERATIONS equ 10000               ; a multiple of 8

section .text
global _start
_start:
        ; RDI = CPU index, RSI = CPU count; no stack on the APs (RSP = 0).
        mov r15, rdi                    ; this CPU's bit number
        mov r14, rsi
        xor r13d, r13d                  ; errors seen by this CPU
        lock inc qword [arrived]
.barrier:
        cmp [arrived], r14
        jae .go
        pause
        jmp .barrier
.go:    mov r12d, ITERATIONS
        mov rbx, 1
        mov ecx, r15d
        shl rbx, cl                     ; RBX = 1 << index
round:
        ; add, adc, sub, sbb
        lock add qword [q_add], 3
        stc
        lock adc word [w_adc], 0
        lock sub byte [b_sub], 1
        stc
        lock sbb dword [d_sbb], 0
        ; inc and dec at every width (the qword dec straddles a cache line)
        lock inc byte [b_inc]
        lock inc word [w_inc]
        lock inc dword [d_inc]
        lock inc qword [q_inc]
        lock dec byte [b_dec]
        lock dec word [w_dec]
        lock dec dword [d_dec]
        ; split locks (across a cache line, across a page) cost the host
        ; microseconds each: one round in eight
        test r12d, 7
        jnz .aligned
        lock add dword [d_add_line], 1
        lock dec qword [q_dec_line]
        lock add dword [d_cross], 1
.aligned:
        ; neg and not, twice each
        lock neg qword [q_neg]
        lock neg byte [b_neg]
        lock not dword [d_not]
        lock not word [w_not]
        lock neg qword [q_neg]
        lock neg byte [b_neg]
        lock not dword [d_not]
        lock not word [w_not]
        ; xadd
        mov eax, 1
        lock xadd dword [d_xadd], eax
        mov ax, 1
        lock xadd word [w_xadd], ax
        ; or/and on my bit of a shared qword
        lock or qword [q_bits], rbx
        test [q_bits], rbx
        jnz .or_ok
        inc r13
.or_ok: mov rax, rbx
        not rax
        lock and qword [q_bits], rax
        test [q_bits], rbx
        jz .and_ok
        inc r13
.and_ok:
        ; xor toggles my bit of a shared dword twice
        lock xor dword [d_xor], ebx
        test [d_xor], ebx
        jnz .x1
        inc r13
.x1:    lock xor dword [d_xor], ebx
        test [d_xor], ebx
        jz .x2
        inc r13
.x2:
        ; bts / btr / btc with a register bit offset, on qword, dword and word
        lock bts qword [q_bt], r15
        jnc .b1
        inc r13
.b1:    lock btr qword [q_bt], r15
        jc .b2
        inc r13
.b2:    lock btc dword [d_bt], r15d
        jnc .b3
        inc r13
.b3:    lock btc dword [d_bt], r15d
        jc .b4
        inc r13
.b4:    lock bts word [w_bt], r15w
        jnc .b5
        inc r13
.b5:    lock btr word [w_bt], r15w
        jc .b6
        inc r13
.b6:
        ; xchg as a spinlock around a plain read-modify-write
        mov eax, 1
.acquire:
        xchg [spin], eax
        test eax, eax
        jz .held
        pause
        mov eax, 1
        jmp .acquire
.held:  mov rax, [plain]
        inc rax
        mov [plain], rax
        mov dword [spin], 0
        ; cmpxchg increment loops, qword and word
        mov rax, [q_cas]
.cas64: lea rdx, [rax + 1]
        lock cmpxchg [q_cas], rdx
        jnz .cas64
        mov ax, [w_cas]
.cas16: lea edx, [rax + 1]
        lock cmpxchg [w_cas], dx
        jnz .cas16
        ; cmpxchg8b: both halves +1; cmpxchg16b: both qwords +1
        mov r11, rbx                    ; (the APs have no stack)
        mov eax, [q_cas8]
        mov edx, [q_cas8 + 4]
.cas8:  lea ebx, [rax + 1]
        lea ecx, [rdx + 1]
        lock cmpxchg8b [q_cas8]
        jnz .cas8
        mov rax, [o_cas16]
        mov rdx, [o_cas16 + 8]
.cas128:
        lea rbx, [rax + 1]
        lea rcx, [rdx + 1]
        lock cmpxchg16b [o_cas16]
        jnz .cas128
        mov rbx, r11

        dec r12d
        jnz round

        lock add [errors], r13
        lock inc qword [done]
        test r15, r15
        jnz park
        lea rsp, [stack_top]            ; only CPU 0 calls anything
.wait:  cmp [done], r14
        jae report
        pause
        jmp .wait

park:   cli
        hlt
        jmp park

; CHECK name, load instruction, expected value in RDX (already truncated)
%macro CHECK 2
        lea rsi, [%1_name]
        %2
        call check
%endmacro

report: call uart_init
        xor r13d, r13d                  ; wrong values
        imul r12, r14, ITERATIONS       ; T = rounds in all

        lea rdx, [r12 + r12 * 2]
        CHECK n_q_add, {mov rax, [q_add]}
        mov rdx, r12
        shr rdx, 3
        CHECK n_d_add_line, {mov eax, [d_add_line]}
        movzx edx, r12w
        CHECK n_w_adc, {movzx eax, word [w_adc]}
        mov rdx, r12
        neg rdx
        movzx edx, dl
        CHECK n_b_sub, {movzx eax, byte [b_sub]}
        mov rdx, r12
        neg rdx
        mov edx, edx
        CHECK n_d_sbb, {mov eax, [d_sbb]}
        movzx edx, r12b
        CHECK n_b_inc, {movzx eax, byte [b_inc]}
        movzx edx, r12w
        CHECK n_w_inc, {movzx eax, word [w_inc]}
        mov edx, r12d
        CHECK n_d_inc, {mov eax, [d_inc]}
        mov rdx, r12
        CHECK n_q_inc, {mov rax, [q_inc]}
        mov rdx, r12
        neg rdx
        movzx edx, dl
        CHECK n_b_dec, {movzx eax, byte [b_dec]}
        mov rdx, r12
        neg rdx
        movzx edx, dx
        CHECK n_w_dec, {movzx eax, word [w_dec]}
        mov rdx, r12
        neg rdx
        mov edx, edx
        CHECK n_d_dec, {mov eax, [d_dec]}
        mov rdx, r12
        shr rdx, 3
        neg rdx
        CHECK n_q_dec_line, {mov rax, [q_dec_line]}
        mov rdx, r12
        shr rdx, 3
        CHECK n_d_cross, {mov eax, [d_cross]}
        mov edx, 5
        CHECK n_q_neg, {mov rax, [q_neg]}
        mov edx, 5
        CHECK n_b_neg, {movzx eax, byte [b_neg]}
        mov edx, 7
        CHECK n_d_not, {mov eax, [d_not]}
        mov edx, 7
        CHECK n_w_not, {movzx eax, word [w_not]}
        mov edx, r12d
        CHECK n_d_xadd, {mov eax, [d_xadd]}
        movzx edx, r12w
        CHECK n_w_xadd, {movzx eax, word [w_xadd]}
        xor edx, edx
        CHECK n_q_bits, {mov rax, [q_bits]}
        xor edx, edx
        CHECK n_d_xor, {mov eax, [d_xor]}
        mov rdx, r12
        CHECK n_plain, {mov rax, [plain]}
        mov rdx, r12
        CHECK n_q_cas, {mov rax, [q_cas]}
        movzx edx, r12w
        CHECK n_w_cas, {movzx eax, word [w_cas]}
        mov rdx, r12
        shl rdx, 32
        or rdx, r12
        CHECK n_q_cas8, {mov rax, [q_cas8]}
        mov rdx, r12
        CHECK n_o_cas16_lo, {mov rax, [o_cas16]}
        mov rdx, r12
        CHECK n_o_cas16_hi, {mov rax, [o_cas16 + 8]}
        xor edx, edx
        CHECK n_errors, {mov rax, [errors]}

        lea rsi, [s_ok]
        test r13, r13
        jz .print
        lea rsi, [s_fail]
.print: call puts
        test r13, r13
        setnz al
        jmp exit_with

; Prints "name=RAX" (and " expected=RDX" when they differ, counting it in R13).
check:  call puts
        mov r8, rax
        mov al, '='
        call putc
        mov rax, r8
        call putdec
        cmp r8, rdx
        je .same
        inc r13
        lea rsi, [s_expected]
        call puts
        mov rax, rdx
        call putdec
.same:  mov al, 10
        jmp putc

section .rodata
%macro NAME 1
n_%1_name: db %str(%1), 0
%endmacro
NAME q_add
NAME d_add_line
NAME w_adc
NAME b_sub
NAME d_sbb
NAME b_inc
NAME w_inc
NAME d_inc
NAME q_inc
NAME b_dec
NAME w_dec
NAME d_dec
NAME q_dec_line
NAME d_cross
NAME q_neg
NAME b_neg
NAME d_not
NAME w_not
NAME d_xadd
NAME w_xadd
NAME q_bits
NAME d_xor
NAME plain
NAME q_cas
NAME w_cas
NAME q_cas8
NAME o_cas16_lo
NAME o_cas16_hi
NAME errors
s_expected: db " expected=", 0
s_ok:   db "locks: ok", 10, 0
s_fail: db "locks: FAIL", 10, 0

section .data
        align 4096
arrived: dq 0
done:   dq 0
errors: dq 0
spin:   dd 0
        align 64
q_add:  dq 0
        align 64
        times 62 db 0
d_add_line: dd 0                        ; bytes 62..65 of a line pair
        align 64
w_adc:  dw 0
b_sub:  db 0
        align 8
d_sbb:  dd 0
        align 64
b_inc:  db 0
        align 2
w_inc:  dw 0
d_inc:  dd 0
q_inc:  dq 0
        align 64
b_dec:  db 0
        align 2
w_dec:  dw 0
d_dec:  dd 0
        align 64
        times 60 db 0
q_dec_line: dq 0                        ; bytes 60..67 of a line pair
        align 64
q_neg:  dq 5
b_neg:  db 5
        align 4
d_not:  dd 7
w_not:  dw 7
        align 64
d_xadd: dd 0
w_xadd: dw 0
        align 64
q_bits: dq 0
d_xor:  dd 0
        align 64
q_bt:   dq 0
d_bt:   dd 0
w_bt:   dw 0
        align 64
plain:  dq 0
        align 64
q_cas:  dq 0
w_cas:  dw 0
        align 8
q_cas8: dq 0
        align 16
o_cas16: dq 0, 0
        align 4096
        times 4094 db 0
d_cross: dd 0                           ; the last 2 bytes of a page and the first 2 of the next
        align 4096

section .bss
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart64.inc"
