; exceptions32.asm -> exceptions32.elf        (format: multiboot, ELF32 at 1 MiB)
;
; Tests: protected-mode exception delivery through its own GDT, IDT and TSS.
; GDT: 0x08/0x10 flat code/data DPL 0, 0x1B/0x23 flat code/data DPL 3,
; 0x28 a 32-bit TSS (ESP0/SS0 = a ring-0 stack of its own), 0x30 a data
; segment with P = 0, 0x38 a stack (data) segment with P = 0; limit 0x3F.
; IDT: interrupt gates (DPL 0) for vectors 0-31, a trap gate with DPL 3 for
; vector 0x80. Each vector's stub pushes a 0 error code if the CPU pushes
; none, then its vector; the common handler prints
;     exception <vector, decimal> error=<error code> eip=<saved EIP>
; (for vector 0x80: "int 0x80 eax=<EAX> cs=<saved CS> eip=<saved EIP>"), then
; resumes: at CPL 0 it IRETs, to the test's recovery label for a fault or
; to the saved EIP (the next instruction) for a trap; from CPL 3 it does
; not IRET: it reloads the ring-0 stack and segments and jumps to the
; test's ring-0 continuation. An unexpected vector, or a test whose
; instruction did not fault, ends the run with a message and status 1.
; The tests, in order:
;   #DE  div ecx with ECX = 0                       fault, error 0 (none)
;   #BR  bound eax, [b] with EAX above the bounds   fault, error 0 (none)
;   #UD  ud2                                        fault, error 0 (none)
;   #GP  mov ds, ax with 0x80 (beyond GDT limit)    fault, error 0x80
;   #NP  mov ds, ax with 0x30 (P = 0)               fault, error 0x30
;   #SS  mov ss, ax with 0x38 (P = 0)               fault, error 0x38
;   #GP  hlt at CPL 3 (entered with IRET)           fault, error 0
;   #BP  int3                                       trap: EIP after int3
;   #OF  into with OF = 1 (0x7F + 1)                trap: EIP after into
;   int 0x80 from CPL 3 through the DPL 3 trap gate, EAX = 0x600DCAFE
;
; Expected COM1 output (exactly; the EIPs are link addresses of this source
; as built by Tools/build-guests: change the code and they move):
;     exception 0 error=00000000 eip=0010003e
;     exception 5 error=00000000 eip=00100066
;     exception 6 error=00000000 eip=0010008d
;     exception 13 error=00000080 eip=001000b4
;     exception 11 error=00000030 eip=001000db
;     exception 12 error=00000038 eip=00100102
;     exception 13 error=00000000 eip=001001ea
;     exception 3 error=00000000 eip=0010014d
;     exception 4 error=00000000 eip=0010016f
;     int 0x80 eax=600dcafe cs=0000001b eip=001001f4
;     exceptions: done
; Expected exit: status 0 (1 after an unexpected or missing exception).

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

KCODE   equ 0x08
KDATA   equ 0x10
UCODE   equ 0x18 | 3
UDATA   equ 0x20 | 3
TSS_SEL equ 0x28
NP_SEL  equ 0x30                ; data, P = 0
NPSS_SEL equ 0x38               ; stack, P = 0
BAD_SEL equ 0x80                ; beyond the GDT limit (0x3F)

NO_VECTOR equ -1

; expect VECTOR, LABEL: the next exception must be VECTOR; a fault (or any
; exception from CPL 3) resumes at LABEL, a trap at CPL 0 (LABEL = 0) after
; the trapping instruction.
%macro expect 2
        mov dword [expect_vec], %1
        mov dword [resume], %2
%endmacro

; check_taken: the expected exception happened (the handler clears expect_vec).
%macro check_taken 0
        cmp dword [expect_vec], NO_VECTOR
        jne missing
%endmacro

section .text
global _start
_start:
        cli
        cld
        mov esp, kstack_top
        call uart_init
        call setup

        ; #DE: divide by zero
        expect 0, .de
        xor edx, edx
        mov eax, 1
        xor ecx, ecx
        div ecx
.de:    check_taken

        ; #BR: 10 is outside [0, 5]
        expect 5, .br
        mov eax, 10
        bound eax, [bounds]
.br:    check_taken

        ; #UD
        expect 6, .ud
        ud2
.ud:    check_taken

        ; #GP(0x80): a selector beyond the GDT limit
        expect 13, .gp
        mov ax, BAD_SEL
        mov ds, ax
.gp:    check_taken

        ; #NP(0x30): a data segment that is not present
        expect 11, .np
        mov ax, NP_SEL
        mov ds, ax
.np:    check_taken

        ; #SS(0x38): a stack segment that is not present
        expect 12, .ss
        mov ax, NPSS_SEL
        mov ss, ax
.ss:    check_taken

        ; #GP(0): hlt at CPL 3
        expect 13, .gp3
        mov eax, user_hlt
        jmp to_ring3
.gp3:   check_taken

        ; #BP: a trap, EIP is after the int3
        expect 3, 0
        int3
        check_taken

        ; #OF: into with OF = 1, a trap
        expect 4, 0
        mov al, 0x7F
        add al, 1               ; signed overflow: OF = 1
        into
        check_taken

        ; int 0x80 from CPL 3 through the DPL 3 trap gate
        expect 0x80, .sys
        mov eax, user_syscall
        jmp to_ring3
.sys:   check_taken

        mov esi, s_done
        call puts
        mov al, 0
        jmp exit_with

missing:                        ; the test's instruction did not fault
        mov esi, s_missing
        call puts
        mov eax, [expect_vec]
        call putdec32
        mov al, 10
        call putc
        mov al, 1
        jmp exit_with

; to_ring3: IRET to CPL 3 at EAX with a ring-3 stack. The handler of the
; exception it ends with comes back to [resume] on the ring-0 stack as it
; is here.
to_ring3:
        mov [kernel_esp], esp
        push dword UDATA        ; SS
        push dword ustack_top   ; ESP
        push dword 0x00000002   ; EFLAGS: IF = 0, IOPL = 0
        push dword UCODE        ; CS
        push eax                ; EIP
        mov cx, UDATA
        mov ds, cx
        mov es, cx
        iret

; Ring-3 code (flat DPL 3 code segment)
user_hlt:
        hlt                     ; privileged: #GP(0)
        jmp user_hlt
user_syscall:
        mov eax, 0x600DCAFE
        int 0x80
        jmp user_syscall

; setup: GDT (with the TSS base filled in), IDT, TSS, segment registers.
setup:
        mov eax, tss            ; the TSS descriptor's base, split in three
        mov [gdt_tss + 2], ax
        shr eax, 16
        mov [gdt_tss + 4], al
        mov [gdt_tss + 7], ah
        lgdt [gdtr]
        jmp KCODE:.cs
.cs:    mov ax, KDATA
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax

        mov dword [tss + 4], istack_top ; ESP0
        mov dword [tss + 8], KDATA      ; SS0
        ltr word [tss_sel]

        mov edi, idt            ; 256 empty (not present) gates
        mov ecx, 256 * 2
        xor eax, eax
        rep stosd
        xor ecx, ecx
.gate:  mov eax, [stubs + ecx * 4]
        mov edx, 0x8E00         ; P, DPL 0, 32-bit interrupt gate
        call set_gate
        inc ecx
        cmp ecx, 32
        jb .gate
        mov ecx, 0x80
        mov eax, stub_0x80
        mov edx, 0xEF00         ; P, DPL 3, 32-bit trap gate
        call set_gate
        lidt [idtr]
        ret

; set_gate: ECX = vector, EAX = handler, EDX = type/attribute word.
set_gate:
        push eax
        mov [idt + ecx * 8], ax                 ; offset 15:0
        mov word [idt + ecx * 8 + 2], KCODE
        and eax, 0xFFFF0000
        or eax, edx
        mov [idt + ecx * 8 + 4], eax            ; offset 31:16, P, DPL, type
        pop eax
        ret

; Vector stubs: leave [error code, vector] on the stack, then the common handler.
%macro stub_noerr 1
stub_%1: push dword 0
        push dword %1
        jmp handler
%endmacro
%macro stub_err 1
stub_%1: push dword %1
        jmp handler
%endmacro
%assign v 0
%rep 32
%if v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
        stub_err v
%else
        stub_noerr v
%endif
%assign v v + 1
%endrep
        stub_noerr 0x80

; The frame after PUSHAD: EAX at +28, vector +32, error +36, EIP +40,
; CS +44, EFLAGS +48 (+ ESP +52, SS +56 when it came from CPL 3).
F_EAX    equ 28
F_VECTOR equ 32
F_ERROR  equ 36
F_EIP    equ 40
F_CS     equ 44
handler:
        pushad
        mov ebp, esp
        mov ax, KDATA
        mov ds, ax
        mov es, ax

        mov ebx, [ebp + F_VECTOR]
        cmp ebx, 0x80
        je .int80
        mov esi, s_exception
        call puts
        mov eax, ebx
        call putdec32
        mov esi, s_error
        call puts
        mov eax, [ebp + F_ERROR]
        call puthex32
        jmp .eip
.int80: mov esi, s_int80
        call puts
        mov eax, [ebp + F_EAX]
        call puthex32
        mov esi, s_cs
        call puts
        mov eax, [ebp + F_CS]
        call puthex32
.eip:   mov esi, s_eip
        call puts
        mov eax, [ebp + F_EIP]
        call puthex32
        mov al, 10
        call putc

        cmp ebx, [expect_vec]
        jne .unexpected
        mov dword [expect_vec], NO_VECTOR
        test byte [ebp + F_CS], 3
        jnz .from_ring3
        mov eax, [resume]       ; a fault: go on at the test's label
        test eax, eax
        jz .iret                ; a trap: go on after the instruction
        mov [ebp + F_EIP], eax
.iret:  popad
        add esp, 8              ; vector and error code
        iret

.from_ring3:                    ; back to ring 0 without an IRET
        mov ax, KDATA
        mov fs, ax              ; the IRET to CPL 3 nulled FS and GS (DPL 0)
        mov gs, ax
        mov esp, [kernel_esp]
        jmp [resume]

.unexpected:
        mov esi, s_unexpected
        call puts
        mov al, 1
        jmp exit_with

section .data
        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF   ; 0x08: code, DPL 0, flat, 32-bit
        dq 0x00CF92000000FFFF   ; 0x10: data, DPL 0, flat
        dq 0x00CFFA000000FFFF   ; 0x18: code, DPL 3, flat, 32-bit
        dq 0x00CFF2000000FFFF   ; 0x20: data, DPL 3, flat
gdt_tss:
        dw 103                  ; 0x28: 32-bit TSS (available), limit 103
        dw 0                    ; base 15:0 (setup fills in the base)
        db 0                    ; base 23:16
        db 0x89                 ; P, DPL 0, type 9
        db 0x00                 ; G = 0, limit 19:16 = 0
        db 0                    ; base 31:24
        dq 0x00CF12000000FFFF   ; 0x30: data, DPL 0, P = 0
        dq 0x00CF12000000FFFF   ; 0x38: data (for SS), DPL 0, P = 0
gdt_end:
gdtr:   dw gdt_end - gdt - 1    ; 0x3F
        dd gdt
idtr:   dw 256 * 8 - 1
        dd idt
tss_sel: dw TSS_SEL
        align 4
bounds: dd 0, 5                 ; bound's lower and upper limits
stubs:
%assign v 0
%rep 32
        dd stub_ %+ v
%assign v v + 1
%endrep
expect_vec: dd NO_VECTOR
resume:     dd 0
kernel_esp: dd 0
        align 4
tss:    times 102 db 0          ; ESP0 at +4, SS0 at +8: set by setup
        dw 104                  ; I/O map base beyond the limit: no bitmap

s_exception:  db "exception ", 0
s_error:      db " error=", 0
s_eip:        db " eip=", 0
s_int80:      db "int 0x80 eax=", 0
s_cs:         db " cs=", 0
s_done:       db "exceptions: done", 10, 0
s_unexpected: db "exceptions: unexpected exception", 10, 0
s_missing:    db "exceptions: no exception, expected ", 0

section .bss
        alignb 8
idt:    resb 256 * 8
        alignb 16
kstack: resb 8192
kstack_top:
istack: resb 8192               ; TSS ESP0: entered from CPL 3
istack_top:
ustack: resb 4096               ; ring 3
ustack_top:

; COM1 routines, kept after the main code
%include "uart32.inc"
