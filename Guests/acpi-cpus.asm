; acpi-cpus.asm -> acpi-cpus.elf            (format: multiboot, ELF32 at 1 MiB)
;
; Tests: the firmware tables the loader installs, read the way an OS reads
; them, with nothing but the tables themselves to go on:
;   ACPI: scan 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " with a
;         valid checksum over its first 20 bytes; with revision 2 or later
;         check the 36-byte extended checksum and take the XSDT (64-bit
;         entries), else the RSDT; verify the root table's checksum, find the
;         "APIC" table (the MADT) among its entries, verify its checksum, and
;         count its enabled Processor Local APIC (type 0) and Processor Local
;         x2APIC (type 9) entries.
;   MP:   scan 0xF0000-0xFFFFF for "_MP_" with a valid 16-byte checksum,
;         follow it to the "PCMP" configuration table, verify its checksum and
;         count the enabled processor entries among its entries.
;
; Expected COM1 output for N vCPUs (--cpus N):
;     acpi: cpus=N
;     mp: cpus=M                (M = N, but at most 255: the MP table has no
;                                room for APIC ID 255)
; Expected exit: status 0. If a table is missing or its checksum is wrong it
; prints "acpi: FAIL <what>" or "mp: FAIL <what>" and exits with status 1.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003        ; page-align modules, want memory info

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)

section .text
global _start
_start:
        cli
        cld
        mov esp, stack_top      ; the loader gives us no stack
        call uart_init

; --- ACPI -------------------------------------------------------------------
        mov esi, 0xE0000
.scan:  cmp dword [esi], 'RSD '
        jne .next
        cmp dword [esi + 4], 'PTR '
        jne .next
        mov ecx, 20             ; the ACPI 1.0 part
        call checksum
        test al, al
        jz .rsdp
.next:  add esi, 16
        cmp esi, 0x100000
        jb .scan
        mov esi, s_no_rsdp
        jmp acpi_fail

.rsdp:  cmp byte [esi + 15], 2  ; revision: 2 and later have the XSDT
        jb .rsdt
        mov ecx, [esi + 20]     ; length, for the extended checksum
        call checksum
        test al, al
        mov ebx, s_bad_rsdp
        jnz acpi_fail_ebx
        cmp dword [esi + 28], 0 ; an XSDT above 4 GiB is out of reach here
        jne .rsdt
        mov ebx, [esi + 24]     ; XSDT
        mov edx, 8              ; entry size
        jmp .root
.rsdt:  mov ebx, [esi + 16]     ; RSDT
        mov edx, 4

.root:  mov esi, ebx
        mov ecx, [ebx + 4]
        call checksum
        test al, al
        mov ebx, s_bad_root
        jnz acpi_fail_ebx
        lea edi, [esi + 36]     ; first entry
        mov ebp, esi
        add ebp, [esi + 4]      ; end of the table
.entry: cmp edi, ebp
        jae .nomadt
        cmp edx, 8
        jne .low
        cmp dword [edi + 4], 0  ; a table above 4 GiB: not ours to read
        jne .skip
.low:   mov esi, [edi]
        cmp dword [esi], 'APIC'
        je .madt
.skip:  add edi, edx
        jmp .entry
.nomadt:
        mov esi, s_no_madt
        jmp acpi_fail

.madt:  mov ecx, [esi + 4]
        call checksum
        test al, al
        mov ebx, s_bad_madt
        jnz acpi_fail_ebx
        lea edi, [esi + 44]     ; interrupt controller structures
        mov ebp, esi
        add ebp, [esi + 4]
        xor ebx, ebx            ; processors counted
.m:     cmp edi, ebp
        jae .counted
        movzx ecx, byte [edi + 1]
        cmp ecx, 2              ; a zero length would loop for ever
        jb .badlen
        cmp byte [edi], 0       ; Processor Local APIC: flags at +4
        jne .x2
        test byte [edi + 4], 1
        jz .mnext
        inc ebx
        jmp .mnext
.x2:    cmp byte [edi], 9       ; Processor Local x2APIC: flags at +8
        jne .mnext
        test byte [edi + 8], 1
        jz .mnext
        inc ebx
.mnext: add edi, ecx
        jmp .m
.badlen:
        mov esi, s_bad_entry
        jmp acpi_fail
.counted:
        mov esi, s_acpi_cpus
        call puts
        mov eax, ebx
        call putdec32
        mov al, 10
        call putc

; --- MP -----------------------------------------------------------------------
        mov esi, 0xF0000
.mscan: cmp dword [esi], '_MP_'
        jne .mnextp
        mov ecx, 16
        call checksum
        test al, al
        jz .mpfp
.mnextp:
        add esi, 16
        cmp esi, 0x100000
        jb .mscan
        mov esi, s_no_mpfp
        jmp mp_fail
.mpfp:  mov esi, [esi + 4]      ; the configuration table
        test esi, esi
        jz .nocfg
        cmp dword [esi], 'PCMP'
        jne .nocfg
        movzx ecx, word [esi + 4]   ; base table length
        call checksum
        test al, al
        jnz .badcfg
        movzx ecx, word [esi + 34]  ; entry count
        lea edi, [esi + 44]
        xor ebx, ebx
.e:     test ecx, ecx
        jz .mpdone
        cmp byte [edi], 0       ; processor entries are 20 bytes, the rest 8
        jne .small
        test byte [edi + 3], 1  ; EN
        jz .big
        inc ebx
.big:   add edi, 20
        dec ecx
        jmp .e
.small: add edi, 8
        dec ecx
        jmp .e
.nocfg: mov esi, s_no_cfg
        jmp mp_fail
.badcfg:
        mov esi, s_bad_cfg
        jmp mp_fail
.mpdone:
        mov esi, s_mp_cpus
        call puts
        mov eax, ebx
        call putdec32
        mov al, 10
        call putc
        mov al, 0
        call exit_with

; checksum: AL = the sum of the ECX bytes at ESI (0 for a valid table).
checksum:
        push ecx
        push esi
        xor eax, eax
.add:   test ecx, ecx
        jz .sum
        add al, [esi]
        inc esi
        dec ecx
        jmp .add
.sum:   pop esi
        pop ecx
        ret

acpi_fail_ebx:
        mov esi, ebx
acpi_fail:
        push esi
        mov esi, s_acpi_fail
        jmp fail
mp_fail:
        push esi
        mov esi, s_mp_fail
fail:   call puts
        pop esi
        call puts
        mov al, 10
        call putc
        mov al, 1
        call exit_with

section .data
s_acpi_cpus:    db "acpi: cpus=", 0
s_mp_cpus:      db "mp: cpus=", 0
s_acpi_fail:    db "acpi: FAIL ", 0
s_mp_fail:      db "mp: FAIL ", 0
s_no_rsdp:      db "no RSDP", 0
s_bad_rsdp:     db "RSDP extended checksum", 0
s_bad_root:     db "root table checksum", 0
s_no_madt:      db "no MADT", 0
s_bad_madt:     db "MADT checksum", 0
s_bad_entry:    db "MADT entry length", 0
s_no_mpfp:      db "no floating pointer", 0
s_no_cfg:       db "no configuration table", 0
s_bad_cfg:      db "configuration table checksum", 0

section .bss
        alignb 16
stack:  resb 4096
stack_top:

; COM1 routines, kept after the main code
%include "uart32.inc"
