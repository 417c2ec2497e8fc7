; portio64.asm -> portio64.elf               (format: elf64, linked at 2 MiB)
;
; A benchmark, never a test: the cost of a port-I/O exit, the path every device access
; takes (engine → exit handler → port bus → device → back into the engine). CPU 0 reads
; the UART's line status register (port 0x3FD, a `Serial16550` read under its lock)
; ITERATIONS times in a 3-instruction loop, so nearly all the run is exits; then it
; writes "portio64 done\n" to port 0xE9 and exits through port 0xF4 (status 0). Other
; CPUs halt with interrupts off.
;
;   tandem run --backend interp --stats .build/guests/portio64.elf    (or: Tools/bench exits)
;
; Expected port 0xE9 output: "portio64 done\n". Exit status 0.

bits 64
default rel

%ifndef ITERATIONS
%define ITERATIONS 2000000
%endif

section .text
global _start
_start:
        test rdi, rdi
        jnz .park
        mov dx, 0x3FD                   ; COM1 LSR
        mov ecx, ITERATIONS
.l:     in al, dx
        dec ecx
        jnz .l
        lea rsi, [done]
.puts:  lodsb
        test al, al
        jz .exit
        out 0xE9, al
        jmp .puts
.exit:  xor eax, eax
        out 0xF4, al
.park:  cli
        hlt
        jmp .park

section .data
done:   db "portio64 done", 10, 0
