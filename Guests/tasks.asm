; tasks.asm -> tasks.bin   (format: boot)
;
; Tests: hardware task switches: CALL to a TSS (a nested task: NT set, back link),
; IRET with NT back to the caller, INT through a task gate, STR afterwards.
;
; Expected output on port 0xE9 (exactly): "TRGS\n"   (T: in the called task, R: returned, G: in the gate's task, S: back, TR = 0x18)
; Expected exit: status 0 (1 on a failed check).

bits 16
org 0x7c00
        cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7c00
        lgdt [gdtr]
        lidt [idtr]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp 0x08:pm
bits 32
pm:     mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x7000
        mov ax, 0x18                ; the current task's TSS
        ltr ax
        call 0x20:0                 ; a CALL to a TSS: nested task, NT set, back link
        mov al, 'R'
        out 0xe9, al
        int 0x30                    ; through a task gate
        mov al, 'S'
        out 0xe9, al
        str ax                      ; still the first task
        cmp ax, 0x18
        jne bad
        mov al, 10
        out 0xe9, al
        mov al, 0
        out 0xf4, al
bad:    mov al, 1
        out 0xf4, al

task:   mov al, 'T'
        out 0xe9, al
        pushfd
        pop eax
        bt eax, 14                  ; NT
        jnc bad
        mov ax, [tss2]              ; back link = the caller's TSS
        cmp ax, 0x18
        jne bad
        iretd                       ; back to the caller through the link
        jmp task                    ; a later switch resumes here

gate:   mov al, 'G'
        out 0xe9, al
        iretd
        jmp gate

gdtr:   dw gdt_end - gdt - 1
        dd gdt
idtr:   dw 0x30 * 8 + 7
        dd idt
gdt:    dq 0
        dq 0x00CF9A000000FFFF       ; 0x08 code
        dq 0x00CF92000000FFFF       ; 0x10 data
        dw 0x67, tss1, 0x8900, 0    ; 0x18 TSS of the first task
        dw 0x67, tss2, 0x8900, 0    ; 0x20 TSS of the called task
        dw 0x67, tss3, 0x8900, 0    ; 0x28 TSS of the gate's task
gdt_end:
idt:    times 0x30 dq 0
        dw 0, 0x28, 0x8500, 0       ; vector 0x30: task gate to 0x28

%macro TSS 2                        ; entry, stack
        dd 0, 0, 0, 0, 0, 0, 0, 0   ; link, esp0..ss2, cr3
        dd %1, 0x2                  ; eip, eflags
        dd 0, 0, 0, 0, %2, 0, 0, 0  ; eax ecx edx ebx esp ebp esi edi
        dd 0x10, 0x08, 0x10, 0x10, 0x10, 0x10   ; es cs ss ds fs gs
        dd 0, 0                     ; ldt, iomap
%endmacro
align 16
tss1:   TSS 0, 0
tss2:   TSS task, 0x6000
tss3:   TSS gate, 0x5000
