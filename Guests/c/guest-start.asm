; guest-start.asm: the entry of c-compute.elf (elf64). CPU 0 takes a stack, enables SSE
; (CR0.MP, CR0.EM off, CR4.OSFXSR and OSXMMEXCPT, as an OS does before running compiled
; code) and calls guest_main; the other CPUs halt.
bits 64
default rel
extern guest_main
section .text
global _start
_start:
        test rdi, rdi
        jnz .park
        lea rsp, [stack_top]
        mov rax, cr0
        and rax, ~(1 << 2)                      ; EM off
        or rax, 1 << 1                          ; MP on
        mov cr0, rax
        mov rax, cr4
        or rax, (1 << 9) | (1 << 10)            ; OSFXSR, OSXMMEXCPT
        mov cr4, rax
        fninit
        call guest_main
.park:  cli
        hlt
        jmp .park
section .bss
        alignb 16
stack:  resb 65536
stack_top:
