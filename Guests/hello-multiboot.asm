; hello-multiboot.asm -> hello-multiboot.elf  (format: multiboot, ELF32 at 1 MiB)
;
; Tests: Multiboot v1 loading of an ELF32 kernel (header flags 0x00000003:
; page-aligned modules + memory info), the entry state (EAX = 0x2BADB002,
; EBX = info), and the info structure the loader builds: flags, mem_lower,
; mem_upper, cmdline, modules and the memory map. Output goes to COM1.
;
; Expected COM1 output, one line each:
;     multiboot: magic ok
;     flags=0x%08x
;     mem_lower=%u KiB
;     mem_upper=%u KiB
;     cmdline=%s                      (empty if flags bit 2 is clear)
;     mods_count=%u                   (0 if flags bit 3 is clear)
;     module %u: size=%u cmdline=%s   (per module, if flags bit 3; size = mod_end - mod_start)
;     mmap: base=0x%016x length=0x%016x type=%u   (per entry, if flags bit 6)
; mem_lower/mem_upper print as 0 if flags bit 0 is clear. Hex is lowercase.
; Then exit status 0. If EAX is not 0x2BADB002 it prints
;     multiboot: bad magic 0x%08x
; and exits with status 1.

bits 32

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00000003        ; bit 0: page-align modules, bit 1: want memory info

section .multiboot progbits alloc noexec nowrite align=4
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)     ; the three fields sum to 0

global _start
%include "hello-multiboot.inc"
