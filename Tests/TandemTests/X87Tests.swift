// The x87 FPU on the interpreter. One test runs ~70,000 x87 operations (every arithmetic,
// comparison, conversion, load, store and transcendental form over edge values: signed
// zeros, denormals, pseudo-denormals, unnormals, infinities, quiet and signalling NaNs,
// values on rounding boundaries, under several precision and rounding controls) natively
// on this machine's CPU and as a guest, and requires identical results. The others pin
// down concrete values computed independently, the environment formats, stack faults,
// #NM and #MF.
import Foundation
import GuestMemory
import KVM
import Machine
import Testing
import X86

private let body = """
; x87 results for the test values under several control words: after each instruction,
; FSW, the full tag word and ST(0)-ST(2) (from FNSAVE), RFLAGS' status flags, and any
; memory result. In: nothing. Uses rax, rbx, rcx, rsi, rdi, r12-r14. Out: r14 = end of results.
%macro SNAP 0
        pushfq
        pop rax
        and eax, 0x8D5
        mov [r14], ax
        fnsave [scratch]
        mov ax, [scratch + 4]
        mov [r14 + 2], ax
        mov ax, [scratch + 8]
        mov [r14 + 4], ax
        lea rsi, [scratch + 28]
        lea rdi, [r14 + 6]
        mov ecx, 30
        rep movsb
        add r14, 36
%endmacro
; GROUP controls, b-count, loader, instructions...: every control word (the first
; `controls`), every a, every b (the first `b-count` values), each instruction after the loader.
%macro GROUP 3-*
        %xdefine GROUP_CONTROLS %1
        %xdefine GROUP_BCOUNT %2
        %xdefine GROUP_LOADER %3
        xor ebx, ebx
%%c:    xor r12d, r12d
%%a:    xor r13d, r13d
%%b:
        %rotate 3
        %rep %0 - 3
        call GROUP_LOADER
        cmp r12, r13
        %1
        SNAP
        %rotate 1
        %endrep
        inc r13
        cmp r13, GROUP_BCOUNT
        jb %%b
        inc r12
        cmp r12, VALUES
        jb %%a
        inc rbx
        cmp rbx, GROUP_CONTROLS
        jb %%c
%endmacro
        lea r14, [results]
        GROUP CONTROLS, VALUES, load2, {fadd st0, st1}, {fadd st1, st0}, {faddp st1}, {fsub st0, st1}, {fsub st1, st0}, {fsubp st1}, {fsubr st0, st1}, {fsubrp st1}, {fmul st0, st1}, {fmulp st1}, {fdiv st0, st1}, {fdiv st1, st0}, {fdivp st1}, {fdivr st0, st1}, {fdivrp st1}, {fsqrt}, {fprem}, {fprem1}, {fscale}, {fpatan}, {fyl2x}, {fyl2xp1}, {frndint}
        GROUP 1, VALUES, load2, {fcom st1}, {fcomp st1}, {fcompp}, {fucom st1}, {fucomp st1}, {fucompp}, {fcomi st0, st1}, {fucomi st0, st1}, {fcomip st0, st1}, {fucomip st0, st1}, {fxch st1}, {fcmovb st0, st1}, {fcmove st0, st1}, {fcmovbe st0, st1}, {fcmovu st0, st1}, {fcmovnb st0, st1}, {fcmovne st0, st1}, {fcmovnbe st0, st1}, {fcmovnu st0, st1}, {ftst}, {fxam}, {fchs}, {fabs}, {fxtract}
        GROUP ALLCONTROLS, 1, load2, {fsin}, {fcos}, {fsincos}, {fptan}, {f2xm1}, {frndint}, {fsqrt}, {fld st0}, {fld st1}, {fst st1}, {fstp st1}, {fincstp}, {fdecstp}, {ffree st1}, {ffreep st0}, {fnop}, {fld1}, {fldl2t}, {fldl2e}, {fldpi}, {fldlg2}, {fldln2}, {fldz}, {fxtract}, {fscale}
        GROUP CONTROLS, VALUES, load1, {fadd dword [f32vals + r13 * 4]}, {fmul dword [f32vals + r13 * 4]}, {fcom dword [f32vals + r13 * 4]}, {fcomp dword [f32vals + r13 * 4]}, {fsub dword [f32vals + r13 * 4]}, {fsubr dword [f32vals + r13 * 4]}, {fdiv dword [f32vals + r13 * 4]}, {fdivr dword [f32vals + r13 * 4]}, {fadd qword [f64vals + r13 * 8]}, {fsub qword [f64vals + r13 * 8]}, {fdivr qword [f64vals + r13 * 8]}, {fcom qword [f64vals + r13 * 8]}, {fiadd word [i16vals + r13 * 2]}, {fimul word [i16vals + r13 * 2]}, {ficom word [i16vals + r13 * 2]}, {fisubr word [i16vals + r13 * 2]}, {fidiv dword [i32vals + r13 * 4]}, {fisub dword [i32vals + r13 * 4]}, {ficomp dword [i32vals + r13 * 4]}, {fidivr dword [i32vals + r13 * 4]}
        GROUP 1, VALUES, load1, {fld dword [f32vals + r13 * 4]}, {fld qword [f64vals + r13 * 8]}, {fild word [i16vals + r13 * 2]}, {fild dword [i32vals + r13 * 4]}, {fild qword [i64vals + r13 * 8]}, {fbld [bcdvals + rdx]}, {fld tword [values + rdx]}
        GROUP ALLCONTROLS, 1, load1, {call st32}, {call st64}, {call st80}, {call sti16}, {call sti32}, {call sti64}, {call stt16}, {call stt32}, {call stt64}, {call stbcd}
        GROUP 1, 1, load1, {fadd st0, st2}, {fxch st3}, {fcom st4}, {fucomi st0, st5}, {fst st7}, {fcmovb st0, st6}, {fprem}, {fpatan}, {fsincos}, {fxtract}
        GROUP 1, 1, load8, {fld st0}, {fld1}, {fptan}, {fsincos}, {fxtract}, {fldz}, {fld dword [f32vals]}
        jmp x87done
load2:  fninit
        fldcw [controls + rbx * 2]
        mov rax, r13
        shl rax, 4
        fld tword [values + rax]
        mov rax, r12
        shl rax, 4
        fld tword [values + rax]
        ret
load1:  fninit
        fldcw [controls + rbx * 2]
        mov rdx, r13
        shl rdx, 4
        mov rax, r12
        shl rax, 4
        fld tword [values + rax]
        ret
load8:  call load1
        fld st0
        fld st0
        fld st0
        fld st0
        fld st0
        fld st0
        fld st0
        ret
; stores: the memory result (zeroed first) into the results.
%macro STORE 3
%1:     mov qword [r14], 0
        mov qword [r14 + 8], 0
        %2 [r14]
        add r14, %3
        ret
%endmacro
        STORE st32, fst dword, 4
        STORE st64, fst qword, 8
        STORE st80, fstp tword, 10
        STORE sti16, fist word, 2
        STORE sti32, fistp dword, 4
        STORE sti64, fistp qword, 8
        STORE stt16, fisttp word, 2
        STORE stt32, fisttp dword, 4
        STORE stt64, fisttp qword, 8
        STORE stbcd, fbstp, 10
x87done:
"""

private let values = """
VALUES equ 18
values:
        dq 0x0000000000000000
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000000
        dw 0x8000, 0, 0, 0
        dq 0x8000000000000000
        dw 0x3fff, 0, 0, 0
        dq 0xa000000000000000
        dw 0xc000, 0, 0, 0
        dq 0xc90fdaa22168c235
        dw 0x4000, 0, 0, 0
        dq 0x0000000000000123
        dw 0x0000, 0, 0, 0
        dq 0x8000000000000001
        dw 0x0000, 0, 0, 0
        dq 0x4000000000000000
        dw 0x3fff, 0, 0, 0
        dq 0x8000000000000000
        dw 0x7fff, 0, 0, 0
        dq 0x8000000000000000
        dw 0xffff, 0, 0, 0
        dq 0xc000000000000001
        dw 0x7fff, 0, 0, 0
        dq 0x8000000000000001
        dw 0xffff, 0, 0, 0
        dq 0xffffffffffffffff
        dw 0x7ffe, 0, 0, 0
        dq 0x8000000000000000
        dw 0x0001, 0, 0, 0
        dq 0x8000000000000400
        dw 0x3fff, 0, 0, 0
        dq 0x8000008000000000
        dw 0xbfff, 0, 0, 0
        dq 0x9502f90000000000
        dw 0x4020, 0, 0, 0
        dq 0xc000000000000000
        dw 0x3ffd, 0, 0, 0
f32vals: dd 0x00000000, 0x80000000, 0x3f800000, 0xbfc00000, 0x7f800000, 0xff800000, 0x7fc00001, 0x7f800001, 0x00000001, 0x7f7fffff, 0x00800000, 0x3f800001, 0x40400000, 0x501502f9, 0x80000010, 0xc2f6e979, 0x3eaaaaab, 0x4b000001
f64vals: dq 0x0000000000000000, 0x8000000000000000, 0x3ff0000000000000, 0xbff8000000000000, 0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000001, 0x7ff0000000000001, 0x0000000000000001, 0x7fefffffffffffff, 0x0010000000000000, 0x3ff0000000000001, 0x4008000000000000, 0x4202a05f20000000, 0x800fffffffffffff, 0xc05edd2f1a9fbe77, 0x3fd5555555555555, 0x4330000000000001
i16vals: dw 0x0000, 0x0001, 0xffff, 0x7fff, 0x8000, 0x1234, 0xff00, 0x0002, 0x0003, 0xfffe, 0x0064, 0x4000, 0x0007, 0x7ffe, 0x8001, 0x0005, 0xfffd, 0x0010
i32vals: dd 0x00000000, 0x00000001, 0xffffffff, 0x7fffffff, 0x80000000, 0x12345678, 0xffff0000, 0x00000002, 0x00000003, 0xfffffffe, 0x000f4240, 0x40000000, 0x01000001, 0x7ffffffe, 0x80000001, 0x00ffffff, 0xfffffffd, 0x01000001
i64vals: dq 0x0000000000000000, 0x0000000000000001, 0xffffffffffffffff, 0x7fffffffffffffff, 0x8000000000000000, 0x123456789abcdef0, 0xffffffff00000000, 0x0000000000000002, 0x0000000000000003, 0xfffffffffffffffe, 0x0de0b6b3a7640000, 0x4000000000000000, 0x0020000000000001, 0xc000000000000000, 0x8000000000000001, 0x7ffffffffffffc00, 0xfffffffffffffffd, 0x4000000000000001
bcdvals:
        dq 0x0000000000000000
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000000
        dw 0x8000, 0, 0, 0
        dq 0x0000000000000001
        dw 0x0000, 0, 0, 0
        dq 0x9999999999999999
        dw 0x9999, 0, 0, 0
        dq 0x0000000123456789
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000042
        dw 0x8000, 0, 0, 0
        dq 0x000000000000000a
        dw 0x0000, 0, 0, 0
        dq 0x00000000000000ff
        dw 0x0000, 0, 0, 0
        dq 0x1234567890123456
        dw 0x0000, 0, 0, 0
        dq 0x9999999999999999
        dw 0x0099, 0, 0, 0
        dq 0x0000000000000001
        dw 0x7f00, 0, 0, 0
        dq 0x00000000000000fa
        dw 0x0000, 0, 0, 0
        dq 0x0000000000005000
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000999
        dw 0x8000, 0, 0, 0
        dq 0x0000000000000010
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000009
        dw 0x0000, 0, 0, 0
        dq 0x000000000000001f
        dw 0x0000, 0, 0, 0
        dq 0x0000000000000123
        dw 0x0000, 0, 0, 0
CONTROLS equ 4
controls: dw 0x037F, 0x007F, 0x0A7F, 0x0C7F, 0x027F, 0x017F, 0x047F, 0x087F
ALLCONTROLS equ 8
"""

/// Prints the 80-bit value at [si] as 20 hex digits (sign/exponent first), then a space.
private let dumpHelper = """
dump80: push si
        add si, 8
        mov cx, 5
.w:     mov ax, [si]
        call hex16
        sub si, 2
        loop .w
        pop si
        mov al, ' '
        out 0xe9, al
        ret
"""

/// The 20-hex-digit form `dump80` prints.
private func hex80(_ v: Float80) -> String {
    let sig = v.isNormal || v.isInfinite ? (UInt64(1) << 63) | v.significandBitPattern : v.significandBitPattern
    let se = UInt16(v.exponentBitPattern) | (v.sign == .minus ? 0x8000 : 0)
    return hex(se, width: 4) + hex(sig, width: 16)
}

@Suite("x87 FPU")
struct X87Tests {
    func run(_ source: String, timeout: Double = 20) throws -> GuestRun {
        try runImage(try assemble(bootProgram(source + "\n" + hexHelpers + "\n" + dumpHelper)), backend: .interp, name: "x87.bin", timeout: timeout)
    }

    @Test("2.5 MB of x87 results (every form, edge operands, precision and rounding controls) equal this CPU's")
    func againstHostCPU() throws {
        let (native, guest) = try runNativeAndOnInterpreter(
            name: "x87", body: body, data: values, bss: "scratch: resb 128\nresults: resb 4000000",
            length: { "mov \($0), r14\n        sub \($0), rsi" })   // R14: the end of the results
        #expect(native.status == 0)
        #expect(guest.status == 0, "\(guest.message ?? "")")
        let expected = Array(native.stdoutBytes)
        #expect(expected.count == 2_568_888)
        let first = zip(guest.outputBytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        // Each record is 36 bytes (flags, FSW, tags, ST0-ST2) plus any stored memory result.
        // (Compared apart from the expectation, so that a failure does not print 2.5 MB.)
        let same = guest.outputBytes == expected
        #expect(same, "first difference at byte \(first ?? min(guest.outputBytes.count, expected.count)) of \(expected.count)")
    }

    @Test("constants, arithmetic and square root round as Float80 does on this host; precision control rounds to single")
    func concreteValues() throws {
        let r = try run("""
                fninit
                fldpi
                fstp tword [v]
                mov si, v
                call dump80
                fldcw [down]
                fldpi
                fstp tword [v]
                call dump80
                fninit
                fld1
                fld1
                faddp st1
                fsqrt
                fstp tword [v]
                call dump80
                fldcw [single]
                fld1
                fidiv word [three]
                fstp tword [v]
                call dump80
                fninit
                fild word [three]
                fldlg2
                fmulp st1
                fstp tword [v]
                call dump80
                mov al, 0
                out 0xf4, al
        down:   dw 0x077F
        single: dw 0x007F
        three:  dw 3
        v:      times 10 db 0
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        let sqrt2 = Float80(2).squareRoot()
        let third = Float80(Float(1) / Float(3))
        #expect(r.output.split(separator: " ").prefix(4).map(String.init) == [
            "4000c90fdaa22168c235", "4000c90fdaa22168c234", hex80(sqrt2), hex80(third),
        ])
        // log10(2) (FLDLG2's constant) times 3, rounded once: the host's Float80 product.
        let lg2 = Float80(sign: .plus, exponentBitPattern: 0x3FFD, significandBitPattern: 0x9A209A84FBCFF799 & ~(1 << 63))
        #expect(r.output.split(separator: " ").dropFirst(4).first.map(String.init) == hex80(3 * lg2))
    }

    @Test("stack overflow and underflow: IE, SF and C1, the indefinite value; integer and BCD stores")
    func stackFaultsAndStores() throws {
        let r = try run("""
                fninit
                mov cx, 8
        .push:  fld1
                loop .push
                fldz                        ; a ninth: overflow
                fnstsw ax
                call hex16
                mov al, ' '
                out 0xe9, al
                fstp tword [v]
                mov si, v
                call dump80
                fninit
                fadd st0, st1               ; both empty: underflow
                fnstsw ax
                call hex16
                mov al, ' '
                out 0xe9, al
                fninit
                fld dword [big]
                fistp word [w]              ; out of range: the integer indefinite
                fnstsw ax
                call hex16
                mov ax, [w]
                call hex16
                mov al, ' '
                out 0xe9, al
                fninit
                fild word [n]
                fchs
                fbstp [v]
                mov si, v
                call dump80
                mov al, 0
                out 0xf4, al
        big:    dd 1.0e10
        n:      dw 12345
        w:      dw 0
        v:      times 10 db 0
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        // FSW 0x3A41: TOP 7, C1 (overflow), SF, IE. The value is the QNaN indefinite.
        // Underflow: TOP 0, C1 clear, SF, IE. FISTP: IE (and PE is not set), 0x8000.
        #expect(r.output == "3a41 ffffc000000000000000 0041 00018000 80000000000000012345 ")
    }

    @Test("FNSTENV and FNSAVE in the 16-bit real-mode format; FRSTOR and FLDENV; tags from the contents")
    func environmentFormats() throws {
        let r = try run("""
                xor ax, ax
                mov ds, ax
                fninit
                fldz                        ; R7: zero (tag 01)
                fld1                        ; R6: valid (00)
                fld tword [inf]             ; R5: special (10)
        here:   fnstenv [env]
                mov si, env
                mov cx, 7
        .e:     lodsw
                call hex16
                mov al, ' '
                out 0xe9, al
                loop .e
                fnsave [state]
                fnstsw ax                   ; FNSAVE reinitialised the FPU
                call hex16
                mov al, ' '
                out 0xe9, al
                frstor [state]
                fstp tword [v]
                mov si, v
                call dump80
                fnstcw [cw]
                mov ax, [cw]
                call hex16
                mov al, ' '
                out 0xe9, al
                mov word [env + 2], 0x0004  ; ZE set, ZE unmasked: ES and B follow
                mov word [env], 0x037B
                fldenv [env]
                fnstsw ax
                call hex16
                mov ax, here
                mov al, ' '
                out 0xe9, al
                mov ax, here
                call hex16
                mov al, 0
                out 0xf4, al
        inf:    dq 0x8000000000000000
                dw 0x7FFF
        v:      times 10 db 0
        cw:     dw 0
        env:    times 14 db 0
        state:  times 94 db 0
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        let words = r.output.split(separator: " ").map(String.init)
        // FCW, FSW (TOP 5), tags R7..R0 = 01 00 10 11 11 11 11 11, FIP (linear: the last
        // non-control instruction, the 4-byte fld tword before `here`), FOP and FIP's high
        // bits, FDP (FOP and FDP change only with an unmasked exception on this CPU model).
        #expect(words.count == 12)
        guard words.count == 12, let here = UInt16(words[11], radix: 16) else { return }
        #expect(Array(words[0...2]) == ["037f", "2800", "4bff"])
        #expect(words[3] == hex(here - 4, width: 4))
        #expect(words[7] == "0000")
        #expect(words[8] == "7fff8000000000000000")
        #expect(words[9] == "037f")
        #expect(words[10] == "8084")   // B, ES, ZE (TOP 0, as loaded)
    }

    @Test("#MF at the next waiting instruction with CR0.NE; FNCLEX in the handler; no #MF with CR0.NE clear")
    func unmaskedExceptions() throws {
        let r = try run("""
                xor ax, ax
                mov ds, ax
                mov word [16 * 4], mf
                mov word [16 * 4 + 2], 0
                mov eax, cr0
                or eax, 0x20                ; NE
                mov cr0, eax
                fninit
                fldcw [unmaskZE]
                fld1
                fldz
                fdivp st1                   ; 1/0, ZE unmasked: ES, result not stored
                mov al, 'a'
                out 0xe9, al
                fwait                       ; #MF here
                mov al, 'b'
                out 0xe9, al
                fstp tword [v]              ; the stack was not popped: 0 and 1 remain
                mov si, v
                call dump80
                mov eax, cr0
                and eax, ~0x20
                mov cr0, eax
                fninit
                fldcw [unmaskZE]
                fld1
                fldz
                fdivp st1
                fwait                       ; NE clear: no #MF (IGNNE#)
                fnstsw ax
                call hex16
                mov al, 0
                out 0xf4, al
        mf:     mov al, 'M'
                out 0xe9, al
                fnstsw ax
                call hex16
                fnclex
                iret
        unmaskZE: dw 0x037B
        v:      times 10 db 0
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        // FSW in the handler: B, TOP 6 (the unmasked exception popped nothing), ES, ZE.
        // The quotient was not stored: ST(0) is still the zero. With NE clear, FWAIT goes on.
        #expect(r.output == "aMb084b00000000000000000000 b084")
    }

    @Test("#NM: EM or TS for x87 instructions, TS with MP for FWAIT")
    func deviceNotAvailable() throws {
        let r = try run("""
                xor ax, ax
                mov ds, ax
                mov word [7 * 4], nm
                mov word [7 * 4 + 2], 0
                fninit
                mov eax, cr0
                or eax, 8                   ; TS, MP clear
                mov cr0, eax
                fwait                       ; no fault
                mov al, '1'
                out 0xe9, al
                fld1                        ; #NM
                mov al, '2'
                out 0xe9, al
                mov eax, cr0
                or eax, 0xA                 ; TS and MP
                mov cr0, eax
                fwait                       ; #NM
                mov al, '3'
                out 0xe9, al
                mov eax, cr0
                and eax, ~0xA
                or eax, 4                   ; EM only
                mov cr0, eax
                fwait                       ; no fault
                mov al, '4'
                out 0xe9, al
                fnstsw ax                   ; #NM (every escape opcode)
                mov al, '5'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        nm:     mov al, 'N'
                out 0xe9, al
                clts                        ; clears TS
                mov eax, cr0
                and eax, ~4                 ; and EM
                mov cr0, eax
                iret
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        #expect(r.output == "1N2N34N5")
    }

    @Test("stores to a device register (an MMIO exit, then the instruction again) pop once")
    func storeToDeviceWindow() throws {
        let image = try assembleELF64("""
        bits 64
        default rel
        section .text
        global _start
        _start:
                fninit
                fld1
                fldz
                mov rbx, 0xFEC00000
                fstp dword [rbx]
                fstp tword [rbx + 16]
                fnstsw ax
                mov [buf], ax
                lea rsi, [buf]
                mov ecx, 2
                mov dx, 0xe9
                rep outsb
                mov al, 0
                out 0xf4, al
        section .bss
        buf:    resb 16
        """, name: "x87-mmio")
        let r = runGuest(image, backend: .interp)
        #expect(r.status == 0, "\(r.message ?? "")")
        // Two values, two pops: TOP back to 0, no stack fault.
        #expect(r.outputBytes == [0, 0])
    }

    @Test("KVM_SET_FPU then KVM_GET_FPU give the x87 and SSE state back (rotation checked against the CPU by the user64 fuzz)",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func kvmStateExchange() throws {
        let memory = try GuestMemoryMap(ramSize: 1 << 20)
        let (vm, vcpus) = try KVMDevice().makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
        _ = vm
        var s = try vcpus[0].readState()
        s.fpu.fcw = 0x0A7B
        s.fpu.fsw = 0x3000 | 0x0204   // TOP 6, C1, ZE (masked)
        s.fpu.ftw = 0b1100_0001        // R7, R6 and R0 in use
        for i in 0..<8 { s.fpu.st[i] = X87Register(significand: 0x8000_0000_0000_0000 | UInt64(i) << 8, signExponent: 0x3FFF + UInt16(i)) }
        s.fpu.fop = 0x5E9
        s.fpu.fip = 0x1234_5678
        s.fpu.fdp = 0x9ABC
        s.fpu.xmm[3] = XMMRegister(low: 0x1111, high: 0x2222)
        try vcpus[0].writeState(s)
        let back = try vcpus[0].readState()
        #expect(back.fpu.fcw == s.fpu.fcw)
        #expect(back.fpu.fsw == s.fpu.fsw)
        #expect(back.fpu.ftw == s.fpu.ftw)
        for i in 0..<8 { #expect(back.fpu.st[i] == s.fpu.st[i], "R\(i)") }
        #expect(back.fpu.fop == s.fpu.fop && back.fpu.fip == s.fpu.fip && back.fpu.fdp == s.fpu.fdp)
        #expect(back.fpu.xmm[3] == s.fpu.xmm[3])
        #expect(back.fpu == s.fpu)
    }

    @Test("reserved x87 encodings are #UD (never run on the host FPU), with a pending exception or not")
    func reservedEncodings() throws {
        // Each reserved encoding, then a nop to land on: the #UD handler steps over the
        // 2-byte instruction (3 with a displacement-free memory form) and prints U.
        let encodings: [[UInt8]] = [[0xD9, 0xD1], [0xD9, 0xE2], [0xD9, 0xE7], [0xD9, 0xEF], [0xDA, 0xE0], [0xDA, 0xFF], [0xDB, 0xE5],
                                    [0xDB, 0xF8], [0xDD, 0xF0], [0xDD, 0xFF], [0xDE, 0xD8], [0xDE, 0xDF], [0xDF, 0xE1], [0xDF, 0xF8],
                                    [0xD9, 0x0F], [0xDB, 0x27], [0xDB, 0x37], [0xDD, 0x2F]]
        let body = encodings.map { "        db " + $0.map { "0x" + hex($0, width: 2) }.joined(separator: ", ") }.joined(separator: "\n")
        let r = try run("""
                xor ax, ax
                mov ds, ax
                mov word [6 * 4], ud
                mov word [6 * 4 + 2], 0
                fninit
                fldcw [unmasked]
                fldz
                fld1
                fdivrp st1                  ; 1/0 unmasked: ES pending (CR0.NE clear: no #MF)
        \(body)
                mov al, 0
                out 0xf4, al
        ud:     push bp
                mov bp, sp
                add word [bp + 2], 2
                pop bp
                mov al, 'U'
                out 0xe9, al
                iret
        unmasked: dw 0x037B
        """)
        #expect(r.status == 0, "\(r.message ?? "")")
        #expect(r.output == String(repeating: "U", count: encodings.count))
    }
}
