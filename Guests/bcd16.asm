; bcd16.asm -> bcd16.bin                      (format: boot, 512-byte boot sector)
;
; Tests: the BCD / ASCII-adjust instructions DAA, DAS, AAA, AAS, AAM, AAD
; (including AAM 16 and AAD 16, the imm8 forms) in 16-bit real mode, on a
; fixed table of inputs: their AX result and their defined output flags.
; For each entry it loads AX and FLAGS (with POPF), runs the instruction,
; saves FLAGS (PUSHF) and prints one line:
;     <insn> ax=<AX in> fl=<flags in> -> ax=<AX out> fl=<flags out & defined>
; <insn> is padded to 6 characters, AX is 4 hex digits, flags 2 (the low
; byte of FLAGS: CF 01, PF 04, AF 10, ZF 40, SF 80). Flags in are only ever
; CF and AF (the inputs DAA/DAS/AAA/AAS read). Flags out are masked to the
; ones the Intel SDM defines for the instruction; the rest are undefined:
;     DAA, DAS:  CF AF SF ZF PF  (mask d5; OF undefined)
;     AAA, AAS:  CF AF           (mask 11; OF SF ZF PF undefined)
;     AAM, AAD:  SF ZF PF        (mask c4; OF AF CF undefined)
; AAA/AAS follow the current SDM: AX := AX + 106H (so AL = FAH carries into
; AH twice), AX := AX - 6 then AH := AH - 1 (a borrow from AL reaches AH).
; DAS keeps the CF of its low-nibble borrow when the high step does not
; apply (there is no ELSE CF := 0 in its second step).
;
; Expected COM1 output (exactly, 16 lines; checked against QEMU TCG and by
; hand against the SDM pseudocode):
;     daa    ax=001c fl=00 -> ax=0022 fl=14
;     daa    ax=129a fl=00 -> ax=1200 fl=55
;     daa    ax=0012 fl=11 -> ax=0078 fl=15
;     daa    ax=0099 fl=00 -> ax=0099 fl=84
;     das    ax=002d fl=00 -> ax=0027 fl=14
;     das    ax=3403 fl=10 -> ax=34fd fl=91
;     das    ax=0000 fl=01 -> ax=00a0 fl=85
;     aaa    ax=0105 fl=00 -> ax=0105 fl=00
;     aaa    ax=010b fl=00 -> ax=0201 fl=11
;     aaa    ax=00fa fl=00 -> ax=0200 fl=11
;     aas    ax=0208 fl=10 -> ax=0102 fl=11
;     aas    ax=0302 fl=10 -> ax=010c fl=11
;     aam    ax=004f fl=00 -> ax=0709 fl=04
;     aam 16 ax=55f0 fl=00 -> ax=0f00 fl=44
;     aad    ax=0709 fl=00 -> ax=004f fl=00
;     aad 16 ax=1f0a fl=00 -> ax=00fa fl=84
; Expected exit: writes 0 to port 0xF4 => status 0.

bits 16
org 0x7C00

COM1    equ 0x3F8

%macro outb 2                   ; outb port, value
        mov dx, %1
        mov al, %2
        out dx, al
%endmacro

start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        cld

        outb COM1+1, 0x00       ; IER: no interrupts
        outb COM1+3, 0x80       ; LCR: DLAB=1
        outb COM1+0, 0x01       ; DLL: divisor 1 = 115200 baud
        outb COM1+1, 0x00       ; DLM
        outb COM1+3, 0x03       ; LCR: 8N1, DLAB=0
        outb COM1+2, 0xC7       ; FCR: enable + clear FIFOs
        outb COM1+4, 0x0B       ; MCR: DTR, RTS, OUT2

        mov bx, tests
.test:  cmp bx, tests_end
        jae .done
        movzx di, byte [bx]     ; DI -> the instruction's record in ops
        imul di, di, OP_SIZE
        add di, ops
        mov si, di              ; its name (6 characters)
        mov cx, 6
.name:  lodsb
        call putc
        loop .name
        mov si, s_ax
        call puts
        mov ax, [bx + 2]
        call hex16
        mov si, s_fl
        call puts
        mov al, [bx + 1]
        call hex8

        movzx ax, byte [bx + 1]
        or al, 0x02             ; FLAGS bit 1 is always 1
        push ax
        mov ax, [bx + 2]
        popf                    ; flags in, interrupts stay off
        call [di + OP_STUB]     ; CALL and RET leave FLAGS alone
        pushf
        pop dx
        and dl, [di + OP_MASK]  ; keep the defined flags only
        mov cx, ax              ; AX out (puts clobbers AL)

        mov si, s_arrow
        call puts
        mov ax, cx
        call hex16
        mov si, s_fl
        call puts
        mov al, dl
        call hex8
        mov al, 10
        call putc
        add bx, 4
        jmp .test

.done:  xor al, al
        out 0xF4, al            ; exit device: status 0
.hang:  cli
        hlt
        jmp .hang

; putc AL; keeps every register.
putc:
        push ax
        push dx
        mov ah, al
        mov dx, COM1+5
.busy:  in al, dx               ; LSR bit 5: transmit holding register empty
        test al, 0x20
        jz .busy
        mov al, ah
        mov dx, COM1
        out dx, al
        pop dx
        pop ax
        ret

; puts SI (NUL-terminated); advances SI.
puts:
        lodsb
        test al, al
        jz .ret
        call putc
        jmp puts
.ret:   ret

; hex16 AX / hex8 AL: 4 or 2 lowercase hex digits; keep every register.
hex16:
        xchg al, ah
        call hex8
        xchg al, ah
hex8:
        push ax
        shr al, 4
        call .nib
        pop ax
        push ax
        call .nib
        pop ax
        ret
.nib:   and al, 0x0F
        add al, '0'
        cmp al, '9'
        jbe .out
        add al, 'a' - '9' - 1
.out:   jmp putc

; The instructions under test, each followed by RET.
i_daa:   daa
         ret
i_das:   das
         ret
i_aaa:   aaa
         ret
i_aas:   aas
         ret
i_aam:   aam                    ; D4 0A
         ret
i_aam16: aam 16                 ; D4 10
         ret
i_aad:   aad                    ; D5 0A
         ret
i_aad16: aad 16                 ; D5 10
         ret

; One record per instruction: name (6 characters), defined-flags mask, stub.
OP_MASK equ 6
OP_STUB equ 7
OP_SIZE equ 9
%macro op 3                     ; op name, mask, stub
        db %1
        times 6 - %strlen(%1) db ' '
        db %2
        dw %3
%endmacro
DAA_ equ 0
DAS_ equ 1
AAA_ equ 2
AAS_ equ 3
AAM_ equ 4
AAM16 equ 5
AAD_ equ 6
AAD16 equ 7
ops:    op "daa",    0xD5, i_daa
        op "das",    0xD5, i_das
        op "aaa",    0x11, i_aaa
        op "aas",    0x11, i_aas
        op "aam",    0xC4, i_aam
        op "aam 16", 0xC4, i_aam16
        op "aad",    0xC4, i_aad
        op "aad 16", 0xC4, i_aad16

; The inputs: instruction, flags in (CF 01, AF 10), AX in.
%macro t 3
        db %1, %2
        dw %3
%endmacro
tests:  t DAA_,  0x00, 0x001C   ; low nibble > 9: +6, AF
        t DAA_,  0x00, 0x129A   ; both steps: AL = 00, CF, ZF; AH untouched
        t DAA_,  0x11, 0x0012   ; AF and CF in: +66
        t DAA_,  0x00, 0x0099   ; no adjustment; SF, PF from 99
        t DAS_,  0x00, 0x002D   ; low nibble > 9: -6, AF
        t DAS_,  0x10, 0x3403   ; AF in, AL < 6: the borrow sets CF
        t DAS_,  0x01, 0x0000   ; CF in: -60
        t AAA_,  0x00, 0x0105   ; no adjustment: AF = CF = 0
        t AAA_,  0x00, 0x010B   ; AX + 106, AL &= 0F
        t AAA_,  0x00, 0x00FA   ; AX + 106 carries from AL: AH + 2
        t AAS_,  0x10, 0x0208   ; AF in: AX - 6, AH - 1
        t AAS_,  0x10, 0x0302   ; AX - 6 borrows from AH: AH - 2
        t AAM_,  0x00, 0x004F   ; 79 = 7 * 10 + 9
        t AAM16, 0x00, 0x55F0   ; AH in is ignored; ZF
        t AAD_,  0x00, 0x0709   ; 7 * 10 + 9 = 79
        t AAD16, 0x00, 0x1F0A   ; 1F * 16 + 0A = 1FA: AL = FA, AH = 0
tests_end:

s_ax:    db " ax=", 0
s_fl:    db " fl=", 0
s_arrow: db " -> ax=", 0

        times 510 - ($ - $$) db 0
        db 0x55, 0xAA           ; boot signature
