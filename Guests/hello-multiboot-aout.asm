; hello-multiboot-aout.asm -> hello-multiboot-aout.bin (format: multiboot, a.out kludge)
;
; Tests: the same program as hello-multiboot.asm (shared body:
; include/hello-multiboot.inc), but as a flat binary loaded at 1 MiB through
; the Multiboot "a.out kludge": header flags bit 16 (0x00010003) tells the
; loader to use the address fields below instead of ELF headers, including
; zeroing the bss between load_end_addr and bss_end_addr.
;
; Expected COM1 output and exit status: identical to hello-multiboot.elf
; (see hello-multiboot.asm).

bits 32
org 0x100000                    ; load_addr: file offset 0 lands here

MBH_MAGIC equ 0x1BADB002
MBH_FLAGS equ 0x00010003        ; bit 16: address fields are valid

section .text
mb_header:
        dd MBH_MAGIC
        dd MBH_FLAGS
        dd -(MBH_MAGIC + MBH_FLAGS)
        dd mb_header            ; header_addr: where this header is loaded
        dd 0x100000             ; load_addr: start of the file's image
        dd load_end             ; load_end_addr: end of the file's image
        dd bss_end              ; bss_end_addr: zeroed up to here
        dd _start               ; entry_addr

%include "hello-multiboot.inc"

section .data
load_end:                       ; .data is the last section with file contents
section .bss
bss_end:
