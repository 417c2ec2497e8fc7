; smp-boot.asm -> smp-boot.elf               (format: multiboot, ELF32 at 1 MiB)
;
; Tests: SMP bring-up as PC firmware and kernels do it. Only the bootstrap CPU
; starts; the others wait for a start-up IPI. The BSP copies a real-mode
; trampoline to 0x8000, enables its local APIC, sends INIT (all excluding self),
; waits 10 ms, sends two SIPIs with vector 0x08 (200 us apart), then waits
; 200 ms on its APIC timer. Each AP starts in real mode at 0800:0000, sets
; bit <initial APIC ID from CPUID> in a mask at 0x7000 and counts itself at
; 0x7008 (both LOCKed), then halts with interrupts off. The second SIPI must
; not start an AP twice.
;
; Expected COM1 output with N CPUs (exactly), mask in lowercase hex:
;     aps=<N-1> mask=<bits 1..N-1 set, as 16 hex digits>
;     e.g. 4 CPUs: "aps=3 mask=000000000000000e"
; Expected exit: status 0.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

APIC      equ 0xFEE00000
TRAMPOLINE equ 0x8000
MASK      equ 0x7000
COUNT     equ 0x7008

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

section .text
global _start
_start:
        mov esp, stack_top
        call uart_init
        cld
        mov esi, trampoline
        mov edi, TRAMPOLINE
        mov ecx, trampoline_end - trampoline
        rep movsb
        mov dword [MASK], 0
        mov dword [MASK + 4], 0
        mov dword [COUNT], 0

        mov ebx, APIC
        mov dword [ebx + 0xF0], 0x1FF           ; SVR: APIC software-enabled
        mov dword [ebx + 0x310], 0
        mov dword [ebx + 0x300], 0x000C4500     ; INIT, assert, all excluding self
        call wait_icr
        mov eax, 10000000                       ; 10 ms
        call delay
        mov dword [ebx + 0x300], 0x000C4608     ; SIPI, vector 0x08
        call wait_icr
        mov eax, 200000                         ; 200 us
        call delay
        mov dword [ebx + 0x300], 0x000C4608     ; SIPI again, as the MP spec says
        call wait_icr
        mov eax, 200000000                      ; 200 ms for the APs to check in
        call delay

        mov esi, s_aps
        call puts
        mov eax, [COUNT]
        call putdec32
        mov esi, s_mask
        call puts
        mov eax, [MASK + 4]
        call puthex32
        mov eax, [MASK]
        call puthex32
        mov al, 10
        call putc
        mov al, 0
        jmp exit_with

; EAX nanoseconds on the APIC timer (one-shot, masked, divide by 1 at the 1 GHz bus
; clock): polls the current count down to 0.
delay:
        mov dword [ebx + 0x3E0], 0xB
        mov dword [ebx + 0x320], 0x10000
        mov [ebx + 0x380], eax
.poll:  pause
        cmp dword [ebx + 0x390], 0
        jne .poll
        ret

wait_icr:
        test dword [ebx + 0x300], 0x1000
        jz .ok
        pause
        jmp wait_icr
.ok:    ret

; The AP trampoline: copied to 0x8000, runs in real mode at 0800:0000.
bits 16
trampoline:
        cli
        xor ax, ax
        mov ds, ax
        mov eax, 1
        cpuid
        shr ebx, 24                             ; initial APIC ID
        lock bts [MASK], ebx
        lock inc dword [COUNT]
.park:  hlt
        jmp .park
trampoline_end:
bits 32

section .data
s_aps:  db "aps=", 0
s_mask: db " mask=", 0

section .bss
        alignb 16
stack:  resb 4096
stack_top:

%include "uart32.inc"
