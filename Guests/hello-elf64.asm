; hello-elf64.asm -> hello-elf64.elf          (format: elf64, linked at 2 MiB)
;
; Tests: 64-bit long-mode entry on every CPU at once (RDI = CPU index,
; RSI = CPU count, RDX = RAM bytes, RSP = 0), per-CPU stacks, a spinlock
; built on LOCK CMPXCHG with PAUSE, a LOCK INC counter, and COM1 output.
;
; Expected COM1 output, for N CPUs and R MiB of RAM, one line per CPU in
; CPU index order (0, 1, ..., N-1):
;     Hello from CPU %u of %u, RAM %u MiB
; e.g. with 2 CPUs and 128 MiB:
;     "Hello from CPU 0 of 2, RAM 128 MiB\nHello from CPU 1 of 2, RAM 128 MiB\n"
; (R = RDX >> 20, i.e. RAM size rounded down to whole MiB.)
; Expected exit: CPU 0 writes 0 to port 0xF4 once all N CPUs are done =>
; status 0. With more than MAX_CPUS CPUs, CPU 0 exits with status 1 at once.
;
; The lock: the lock word holds the index of the CPU whose turn it is, or
; HELD. A CPU acquires it with LOCK CMPXCHG (expected = its own index,
; new = HELD) and releases it by storing the next index. So it excludes
; like any spinlock but grants in index order, which keeps the output
; deterministic for byte-for-byte tests.

bits 64
default rel

MAX_CPUS   equ 256
STACK_SIZE equ 4096
HELD       equ 0xFFFFFFFF

section .text
global _start
_start:
        ; Interrupts are off and RSP = 0: nothing may touch the stack yet.
        cmp rsi, MAX_CPUS
        ja too_many
        lea rsp, [stacks]               ; this CPU's stack: stacks[RDI], top end
        lea rax, [rdi + 1]
        imul rax, rax, STACK_SIZE       ; (index + 1) * STACK_SIZE
        add rsp, rax
        mov r12, rdi                    ; index, CPU count and RAM size survive
        mov r13, rsi                    ; in callee-preserved registers
        mov r14, rdx

        ; acquire: spin until the lock word equals our index, then mark it held
        mov ecx, HELD
.spin:  mov eax, r12d
        lock cmpxchg [print_lock], ecx
        je .locked
        pause
        jmp .spin
.locked:
        test r12, r12                   ; CPU 0 always goes first: set up the UART
        jnz .print
        call uart_init
.print: lea rsi, [s_hello]
        call puts
        mov rax, r12
        call putdec
        lea rsi, [s_of]
        call puts
        mov rax, r13
        call putdec
        lea rsi, [s_ram]
        call puts
        mov rax, r14
        shr rax, 20
        call putdec
        lea rsi, [s_mib]
        call puts

        ; release: a plain store is enough on x86 (stores are not reordered
        ; with earlier loads or stores), and it hands the turn to the next CPU
        mov eax, r12d
        inc eax
        mov [print_lock], eax

        lock inc qword [done]

        test r12, r12
        jnz park
.wait:  pause                           ; CPU 0: wait for everyone
        cmp [done], r13
        jb .wait
        mov al, 0
        jmp exit_with

too_many:
        test rdi, rdi                   ; no stack for everyone: CPU 0 reports it
        jnz park
        mov al, 1
        out 0xF4, al
park:   cli
        hlt
        jmp park

section .data
        align 4
print_lock: dd 0                        ; CPU 0's turn first
        align 8
done:   dq 0
s_hello: db "Hello from CPU ", 0
s_of:    db " of ", 0
s_ram:   db ", RAM ", 0
s_mib:   db " MiB", 10, 0

section .bss
        alignb 4096
stacks: resb MAX_CPUS * STACK_SIZE      ; 1 MiB: one 4 KiB stack per CPU

; COM1 routines, kept after the main code
%include "uart64.inc"
