; gdb-target.asm -> gdb-target.elf            (format: elf64, linked at 2 MiB)
;
; Tests: the gdb stub (--gdb). A 64-bit guest with symbols to break at, step
; through and watch, on every vCPU at once:
;   add_step   adds 3 to the shared `counter` (LOCK XADD), called 5 times per vCPU
;   done       reached by vCPU 0 once every vCPU has finished: loads `counter`
;   report     writes AL to the exit device
; Other vCPUs halt with interrupts off once finished. While `hold` is nonzero
; (a debugger sets it), vCPU 0 spins before `done`: something to interrupt.
;
; Expected console output (port 0xE9), once, from vCPU 0:  "gdb-target done\n"
; Expected exit: status = counter & 0xFF = 15 * CPU count (15 with one vCPU),
; unless a debugger changed `counter` or RAX on the way.

bits 64
default rel

STACK_SIZE equ 4096
MAX_CPUS   equ 16

section .text
global _start, add_step, done, report, counter, finished, hold
_start:
        cmp rsi, MAX_CPUS
        ja too_many
        lea rsp, [stacks]
        lea rax, [rdi + 1]
        imul rax, rax, STACK_SIZE
        add rsp, rax
        mov r12, rdi                    ; CPU index
        mov r13, rsi                    ; CPU count
        xor ebx, ebx
.loop:  call add_step
        inc ebx
        cmp ebx, 5
        jne .loop
        lock inc dword [finished]
        test r12, r12
        jnz .park
.wait:  cmp [finished], r13d            ; vCPU 0 waits for the others
        jne .again
        cmp dword [hold], 0
        je done
.again: pause
        jmp .wait
.park:  cli
        hlt
        jmp .park

add_step:
        mov eax, 3
        lock xadd [counter], eax
        ret

done:
        lea rsi, [message]
        mov ecx, message_length
        mov dx, 0xE9
        rep outsb
        mov eax, [counter]
report:
        out 0xF4, al
        cli
        hlt

too_many:
        mov al, 1
        out 0xF4, al
        hlt

message: db "gdb-target done", 10
message_length equ $ - message

section .data
counter:  dd 0
finished: dd 0
hold:     dd 0

section .bss
alignb 4096
stacks: resb STACK_SIZE * MAX_CPUS
