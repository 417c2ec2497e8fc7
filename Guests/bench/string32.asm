; string32.asm -> string32.elf                (format: multiboot, ELF32 at 1 MiB)
;
; A benchmark, never a test: string instructions in 32-bit protected mode (CPL 0, paging
; off), for Tools/bench speeds. Each of N rounds (N = 5000 unless the Multiboot command
; line has a word "iterations=N", read as loop32.asm reads it) works on three 4 KiB
; buffers, forward (DF = 0):
;   rep stosd    fills A with a value that depends on the round (1024 dwords)
;   lodsd/stosd  rewrites A in place, 1024 times: each dword mixed with a running value
;   rep movsd    copies A to B (1024 dwords)
;   repe cmpsd   compares A with B (equal: all 1024 dwords)
;   rep stosd    fills C with another value (1024 dwords)
;   repe scasd   compares C's dwords with that value (equal: all 1024)
;   rep movsb    copies A + 1 to C + 3 (4091 bytes, unaligned)
;   rep stosb    fills 256 bytes of C at an offset that depends on the round
;   repe cmpsb   compares B with C + 2 (equal up to the bytes rep stosb wrote)
;   repne scasb  looks in C for a byte of A (stops where it is found)
;   lodsb        sums the bytes of the first 1 KiB of C, 1024 times
; About 12,000 iterations of REP instructions, 2,048 of LODS/STOS and 10,000 other
; instructions a round. Every remaining count (ECX after each compare or scan), the byte
; sum and A's last dword go into a checksum.
; Writes "string32 done sum=XXXXXXXX\n" to port 0xE9 and exits through port 0xF4
; (status 0); QEMU runs it too (-debugcon stdio, isa-debug-exit at 0xF4).
;
; Expected port 0xE9 output (exactly; QEMU 7.2 TCG prints the same):
;     N = 5000 (default):   "string32 done sum=644a572c\n"
;     N = 2000:             "string32 done sum=bd424b35\n"
; Expected exit: status 0.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

ITERATIONS  equ 5000            ; the default N
MB_MAGIC    equ 0x2BADB002
MBI_CMDLINE equ 16              ; valid if flags bit 2
SIZE        equ 4096

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top
        call iterations                 ; EDI = N
        mov [rounds], edi
        xor ebp, ebp                    ; EBP = round
        mov dword [sum], 0
        cmp dword [rounds], 0
        je .done

.round:
        ; rep stosd: A = the round's value
        mov eax, ebp
        imul eax, eax, 0x9E3779B9
        mov edi, buf_a
        mov ecx, SIZE / 4
        rep stosd
        ; lodsd/stosd: A[i] = A[i] + x, x = rol(x, 5) ^ A[i]
        mov esi, buf_a
        mov edi, buf_a
        mov edx, ebp
        or edx, 1
        mov ecx, SIZE / 4
.mix:   lodsd
        add eax, edx
        rol edx, 5
        xor edx, eax
        stosd
        dec ecx
        jnz .mix
        ; rep movsd: B = A
        mov esi, buf_a
        mov edi, buf_b
        mov ecx, SIZE / 4
        rep movsd
        ; repe cmpsd: A against B, all equal
        mov esi, buf_a
        mov edi, buf_b
        mov ecx, SIZE / 4
        repe cmpsd
        add [sum], ecx                  ; 0
        ; rep stosd, repe scasd: C = another value, then C against it (all 1024 equal)
        mov eax, ebp
        not eax
        imul eax, eax, 0x01000193
        mov edi, buf_c
        mov ecx, SIZE / 4
        rep stosd
        mov edi, buf_c
        mov ecx, SIZE / 4
        repe scasd
        add [sum], ecx                  ; 0
        ; rep movsb: C + 3 = A + 1, 4091 bytes
        mov esi, buf_a + 1
        mov edi, buf_c + 3
        mov ecx, SIZE - 5
        rep movsb
        ; rep stosb: 256 bytes of C at (round * 37) mod 3840
        mov eax, ebp
        imul eax, eax, 37
        xor edx, edx
        mov ecx, SIZE - 256
        div ecx
        lea edi, [buf_c + edx]
        mov eax, ebp
        mov ecx, 256
        rep stosb
        ; repe cmpsb: B against C + 2 (B[i] = A[i] = C[i + 2] up to the bytes stosb wrote)
        mov esi, buf_b
        mov edi, buf_c + 2
        mov ecx, SIZE - 2
        repe cmpsb
        add [sum], ecx
        rol dword [sum], 7
        ; repne scasb: the first C byte equal to A[round mod 4096]
        mov eax, ebp
        and eax, SIZE - 1
        movzx eax, byte [buf_a + eax]
        mov edi, buf_c
        mov ecx, SIZE
        repne scasb
        add [sum], ecx
        rol dword [sum], 7
        ; lodsb: a sum of C's first 1 KiB
        mov esi, buf_c
        xor eax, eax
        mov ebx, ebp
        mov ecx, 1024
.bytes: lodsb
        add ebx, eax
        rol ebx, 3
        dec ecx
        jnz .bytes
        xor [sum], ebx
        ; and A's last dword
        mov eax, [buf_a + SIZE - 4]
        add [sum], eax

        inc ebp
        cmp ebp, [rounds]
        jb .round

.done:  mov esi, s_done
        call puts
        mov eax, [sum]
        call puthex32
        mov al, 10
        out 0xE9, al
        mov al, 0
        out 0xF4, al
.halt:  hlt
        jmp .halt

; puts: ESI = NUL-terminated string to port 0xE9. Clobbers AL, ESI.
puts:   lodsb
        test al, al
        jz .ret
        out 0xE9, al
        jmp puts
.ret:   ret

; puthex32: EAX as 8 lowercase hex digits to port 0xE9. Clobbers EAX, ECX, EDX.
puthex32:
        mov edx, eax
        mov ecx, 8
.d:     rol edx, 4
        mov eax, edx
        and eax, 15
        mov al, [hex + eax]
        out 0xE9, al
        dec ecx
        jnz .d
        ret

%include "multiboot-iterations.inc"

section .data
s_done: db "string32 done sum=", 0
hex:    db "0123456789abcdef"

section .bss
        alignb 4096
buf_a:  resb SIZE
buf_b:  resb SIZE
buf_c:  resb SIZE
        alignb 4
rounds: resd 1
sum:    resd 1
        alignb 16
stack:  resb 4096
stack_top:
