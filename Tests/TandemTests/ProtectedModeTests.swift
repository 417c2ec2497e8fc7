// Protected-mode corner cases the interpreter once got wrong: stack widths of POP SS and
// ENTER, supervisor pushes for an interrupt from CPL 3, INT n from v86 mode to a
// conforming segment, the EIP saved by a nested task's IRET, 16-bit TSS loads, SYSCALL
// from compatibility mode, non-canonical descriptor-table bases in 64-bit mode. Each
// guest reports what it saw on port 0xE9; the tests compare that output exactly.
import Foundation
import Machine
import Testing

/// A 32-bit protected-mode boot sector: real mode at 0x7C00 loads `gdtr` and `idtr`
/// (the body defines both), enters protected mode with CS = 0x08, DS = ES = SS = 0x10
/// and ESP = 0x7000, then runs `body` (bits 32). `hexn` prints the low ECX hex digits
/// of EAX on port 0xE9, keeping every register.
private func protectedModeProgram(_ body: String) -> String {
    """
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
    \(body)

    bits 32
    hexn:   push eax
            push ecx
            push edx
            mov edx, eax
            shl ecx, 2
            ror edx, cl               ; the wanted digits to the top (32 rotates by 0)
    .next:  rol edx, 4
            mov al, dl
            and al, 0x0f
            add al, '0'
            cmp al, '9'
            jbe .out
            add al, 'a' - '9' - 1
    .out:   out 0xe9, al
            sub ecx, 4
            jnz .next
            pop edx
            pop ecx
            pop eax
            ret
    """
}

/// The same printer for 64-bit guests: the low ECX hex digits of RAX.
private let hexn64 = """
bits 64
hexn:   push rax
        push rcx
        push rdx
        mov rdx, rax
        shl ecx, 2
        ror rdx, cl
.next:  rol rdx, 4
        mov al, dl
        and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe .out
        add al, 'a' - '9' - 1
.out:   out 0xe9, al
        sub ecx, 4
        jnz .next
        pop rdx
        pop rcx
        pop rax
        ret
"""

@Suite("Protected-mode corner cases")
struct ProtectedModeTests {
    func runBoot(_ source: String, on backend: BackendKind) throws -> GuestRun {
        try runImage(try assemble(source), backend: backend, name: "pm.bin", timeout: 20)
    }

    @Test("o32 POP SS moves ESP by 4 within the old stack's width", arguments: backends(kvm: true))
    func popSSWidth(backend: BackendKind) throws {
        // From a 16-bit stack to a 32-bit one: SP wraps, ESP's upper half stays.
        // From a 32-bit stack to a 16-bit one: ESP advances as a 32-bit value.
        let r = try runBoot(protectedModeProgram("""
                mov dword [0xfffc], 0x10      ; the value popped from the 16-bit stack (SP = 0xFFFC)
                mov dword [0x1fffc], 0x18     ; the value popped from the 32-bit stack
                mov ax, 0x18
                mov ss, ax                    ; a 16-bit stack
                mov esp, 0x0001fffc
                pop ss                        ; o32 (bits 32): SS = 0x10, a 32-bit stack
                mov ebx, esp
                mov esp, 0x0001fffc
                pop ss                        ; o32 from the 32-bit stack: SS = 0x18
                mov edx, esp
                mov ax, 0x10
                mov ss, ax
                mov esp, 0x7000
                mov ecx, 8
                mov eax, ebx
                call hexn                     ; 00010000: SP wrapped, upper half kept
                mov al, ' '
                out 0xe9, al
                mov eax, edx
                call hexn                     ; 00020000: a 32-bit increment
                mov al, 0
                out 0xf4, al
        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0
                dd 0
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 code, 32-bit
                dq 0x00CF92000000FFFF         ; 0x10 data, B = 1
                dq 0x008F92000000FFFF         ; 0x18 data, B = 0 (4 GiB limit: ESP's upper half is no fault)
        gdt_end:
        """), on: backend)
        #expect(r.output == "00010000 00020000", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// `transfer` goes from CPL 3 to a CPL 0 handler at `handler`; the handler prints its
    /// ESP and the CS and SS the transfer pushed (SS `ssOffset` bytes above ESP).
    func supervisorStackProgram(transfer: String, ssOffset: Int) -> String {
        // Paging maps the first 4 MiB as user pages except the page of TSS.ESP0. The
        // handler reports its ESP (five dwords below ESP0) and the pushed CS and SS. First,
        // as a control, a CPL 3 read of that page must be #PF (its handler's pushes go to
        // the same supervisor stack).
        // Interpreter only: this host's KVM (no VMX/SVM) triple-faults as soon as non-PAE
        // paging is turned on (a known PVM difference, see pvmDivergentGuests).
        protectedModeProgram("""
                mov edi, 0x10000              ; page directory, then the page table at 0x11000
                xor eax, eax
                mov ecx, 2048
                rep stosd
                mov edi, 0x11000
                mov eax, 0x7                  ; present, writable, user
                mov ecx, 1024
        .map:   stosd
                add eax, 0x1000
                loop .map
                mov dword [0x11000 + 0x20 * 4], 0x20000 | 0x3   ; the ring 0 stack page: supervisor
                mov dword [0x10000], 0x11000 | 0x7
                mov eax, 0x10000
                mov cr3, eax
                mov eax, cr0
                or eax, 0x80000000
                mov cr0, eax
                mov ax, 0x28
                ltr ax
                push dword 0x23               ; SS, ESP, EFLAGS, CS, EIP of ring 3
                push dword 0x30000
                push dword 0x2
                push dword 0x1b
                push dword ring3
                iretd
        ring3:  mov eax, [ss:0x20000]         ; a user read of the supervisor page: #PF
                mov al, 1                     ; not reached
                out 0xf4, al
        ring3b: \(transfer)                   ; the pushes go to 0x20000..0x20fff
                jmp ring3b                    ; not reached

        pf:     mov eax, [esp]                ; the error code: 0005 (present, user read)
                mov ecx, 4
                call hexn
                mov al, ' '
                out 0xe9, al
                mov eax, cr2
                mov ecx, 8
                call hexn                     ; 00020000
                mov al, ' '
                out 0xe9, al
                add esp, 4
                mov dword [esp], ring3b       ; resume ring 3 after the read
                iretd

        handler: mov eax, esp
                mov ecx, 8
                call hexn                     ; 00020fec (interrupt) or 00020ff0 (call)
                mov al, ' '
                out 0xe9, al
                mov eax, [esp + 4]
                mov ecx, 4
                call hexn                     ; 001b
                mov al, ' '
                out 0xe9, al
                mov eax, [esp + \(ssOffset)]
                call hexn                     ; 0023
                mov al, 0
                out 0xf4, al

        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0x41 * 8 - 1
                dd idt
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 ring 0 code
                dq 0x00CF92000000FFFF         ; 0x10 ring 0 data
                dq 0x00CFFA000000FFFF         ; 0x18 ring 3 code
                dq 0x00CFF2000000FFFF         ; 0x20 ring 3 data
                dw 0x67, tss, 0x8900, 0       ; 0x28 TSS
                dw handler, 0x08, 0xEC00, 0   ; 0x30 call gate, DPL 3, no parameters
        gdt_end:
        idt:    times 14 dq 0
                dw pf, 0x08, 0x8E00, 0        ; 14: #PF
                times 0x40 - 15 dq 0
                dw handler, 0x08, 0xEE00, 0   ; 0x40: interrupt gate, DPL 3
        tss:    dd 0, 0x21000, 0x10           ; link, ESP0 (top of the supervisor page), SS0
                times 0x68 - 12 db 0
        """)
    }

    @Test("an interrupt from CPL 3 pushes onto a supervisor-only ring 0 stack", arguments: backends(kvm: false))
    func supervisorStackPushes(backend: BackendKind) throws {
        let r = try runBoot(supervisorStackProgram(transfer: "int 0x40", ssOffset: 16), on: backend)
        #expect(r.output == "0005 00020000 00020fec 001b 0023", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// The sibling of the interrupt case: a far call through a call gate to ring 0.
    @Test("a call gate from CPL 3 pushes onto a supervisor-only ring 0 stack", arguments: backends(kvm: false))
    func supervisorStackPushesThroughCallGate(backend: BackendKind) throws {
        let r = try runBoot(supervisorStackProgram(transfer: "call 0x33:0", ssOffset: 12), on: backend)
        #expect(r.output == "0005 00020000 00020ff0 001b 0023", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("INT n in v86 mode to a conforming or DPL 3 code segment is #GP(selector)", arguments: backends(kvm: false))
    func v86IntToConforming(backend: BackendKind) throws {
        // The #GP handler prints the error code and resumes after the 2-byte INT n; a
        // last INT through a gate to the DPL 0 non-conforming segment ends the run.
        // Interpreter only: this host's KVM (no VMX/SVM) runs no virtual-8086 mode (a
        // known PVM difference, see pvmDivergentGuests): it triple-faults at the first INT.
        let r = try runBoot(protectedModeProgram("""
                mov ax, 0x28
                ltr ax
                push dword 0                  ; GS, FS, DS, ES, SS, ESP of v86 mode
                push dword 0
                push dword 0
                push dword 0
                push dword 0
                push dword 0x6000
                push dword 0x23002            ; VM, IOPL = 3
                push dword 0                  ; CS, IP
                push dword v86
                iretd
        bits 16
        v86:    int 0x40                      ; to 0x18, conforming DPL 0: #GP(0x18)
                int 0x41                      ; to 0x20, non-conforming DPL 3: #GP(0x20)
                int 0x42                      ; to 0x08: delivered
                jmp v86                       ; not reached
        bits 32
        gp:     inc dword [ss:gps]            ; DS is null after leaving v86 mode
                cmp dword [ss:gps], 2
                ja .loop
                pop eax                       ; the error code
                mov ecx, 4
                call hexn
                mov al, ' '
                out 0xe9, al
                add dword [esp], 2            ; resume after the INT n
                iretd
        .loop:  mov al, 4                     ; more #GPs than INT n's to fault
                out 0xf4, al
        good:   mov al, 'V'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        conforming: mov al, 'C'               ; must not be reached
                out 0xe9, al
                mov al, 2
                out 0xf4, al
        ring3:  mov al, 'D'                   ; must not be reached
                out 0xe9, al
                mov al, 3
                out 0xf4, al

        gps:    dd 0
        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0x43 * 8 - 1
                dd idt
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 code, DPL 0
                dq 0x00CF92000000FFFF         ; 0x10 data
                dq 0x00CF9E000000FFFF         ; 0x18 code, conforming, DPL 0
                dq 0x00CFFA000000FFFF         ; 0x20 code, DPL 3
                dw 0x67, tss, 0x8900, 0       ; 0x28 TSS
        gdt_end:
        idt:    times 13 dq 0
                dw gp, 0x08, 0x8E00, 0        ; 13: #GP, interrupt gate to the DPL 0 code
                times 0x40 - 14 dq 0
                dw conforming, 0x18, 0xEE00, 0   ; 0x40
                dw ring3, 0x20, 0xEE00, 0        ; 0x41
                dw good, 0x08, 0xEE00, 0         ; 0x42
        tss:    dd 0, 0x9000, 0x10            ; link, ESP0, SS0
                times 0x68 - 12 db 0
        """), on: backend)
        #expect(r.output == "0018 0020 V", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }


    @Test("a task left by IRET resumes after the IRET when called again", arguments: backends(kvm: true))
    func nestedTaskResumesAfterIret(backend: BackendKind) throws {
        // T: first entry, R: back in the caller, A: the second entry resumed after the
        // IRET (re-running the IRET would return at once: "TRS"), S: back again.
        let r = try runBoot(protectedModeProgram("""
                mov ax, 0x18
                ltr ax
                call 0x20:0                   ; a nested task: NT set, back link
                mov al, 'R'
                out 0xe9, al
                call 0x20:0                   ; the same task again
                mov al, 'S'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        task:   mov al, 'T'
                out 0xe9, al
                iretd                         ; back to the caller through the link
                mov al, 'A'                   ; the second CALL resumes here
                out 0xe9, al
                iretd
                mov al, 1                     ; not reached
                out 0xf4, al

        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0
                dd 0
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 code
                dq 0x00CF92000000FFFF         ; 0x10 data
                dw 0x67, tss1, 0x8900, 0      ; 0x18 TSS of the caller
                dw 0x67, tss2, 0x8900, 0      ; 0x20 TSS of the called task
        gdt_end:
        align 16
        tss1:   times 0x68 db 0
        tss2:   dd 0, 0, 0, 0, 0, 0, 0, 0     ; link, esp0..ss2, cr3
                dd task, 0x2                  ; eip, eflags
                dd 0, 0, 0, 0, 0x6000, 0, 0, 0   ; eax ecx edx ebx esp ebp esi edi
                dd 0x10, 0x08, 0x10, 0x10, 0x10, 0x10   ; es cs ss ds fs gs
                dd 0, 0                       ; ldt, iomap
        """), on: backend)
        #expect(r.output == "TRAS", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("o32 ENTER on a 16-bit stack sets EBP to the full ESP", arguments: backends(kvm: false))
    func enterOn16BitStack(backend: BackendKind) throws {
        // ESP = 0x00020000 on a B = 0 stack: SP wraps, the push goes to SS:0xFFFC and ESP
        // becomes 0x0002FFFC (a 16-bit stack keeps ESP's upper half); EBP is that whole
        // value (the operand-size FrameTemp, as Bochs), not 0x0000FFFC.
        // Interpreter only: this host's KVM (no VMX/SVM: the kernel's instruction
        // emulator) pushes only BP on a 16-bit stack: "cafefffe 0002fffe babe0000".
        let r = try runBoot(protectedModeProgram("""
                mov ax, 0x18
                mov ss, ax                    ; a 16-bit stack
                mov esp, 0x00020000
                mov ebp, 0xcafebabe
                enter 0, 0                    ; o32 (bits 32)
                mov ebx, ebp
                mov edx, esp
                mov ax, 0x10
                mov ss, ax
                mov esp, 0x7000
                mov ecx, 8
                mov eax, ebx
                call hexn                     ; EBP
                mov al, ' '
                out 0xe9, al
                mov eax, edx
                call hexn                     ; ESP
                mov al, ' '
                out 0xe9, al
                mov eax, [0xfffc]
                call hexn                     ; the pushed EBP
                mov al, 0
                out 0xf4, al
        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0
                dd 0
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 code
                dq 0x00CF92000000FFFF         ; 0x10 data, B = 1
                dq 0x008F92000000FFFF         ; 0x18 data, B = 0, 4 GiB limit
        gdt_end:
        """), on: backend)
        #expect(r.output == "0002fffc 0002fffc cafebabe", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("a switch to a 16-bit TSS sets the upper halves of the registers to 0xFFFF, of EFLAGS to 0", arguments: backends(kvm: true))
    func switchTo16BitTSS(backend: BackendKind) throws {
        // The caller's EAX, ECX and EFLAGS have distinct upper halves (AC and ID set,
        // printed first) that the new task must not inherit. The 16-bit task saves its
        // full registers and reports them from 32-bit code.
        let r = try runBoot(protectedModeProgram("""
                mov ax, 0x30
                ltr ax
                pushfd
                or dword [esp], 0x240000      ; AC, ID
                popfd
                pushfd
                pop eax
                shr eax, 16
                mov ecx, 4
                call hexn                     ; the caller's upper EFLAGS: 0024
                mov al, ' '
                out 0xe9, al
                mov eax, 0x12340000
                mov ecx, 0x56780000
                jmp 0x28:0                    ; to the 16-bit TSS
        bits 16
        task16: mov [s_eax], eax              ; o32 in a 16-bit segment: the full registers
                mov [s_ecx], ecx
                mov [s_esp], esp
                pushfd
                pop dword [s_flags]
                jmp 0x08:report
        bits 32
        report: mov ax, 0x10
                mov ss, ax
                mov esp, 0x7000
                mov ecx, 8
                mov eax, [s_eax]
                call hexn                     ; ffff1111
                mov al, ' '
                out 0xe9, al
                mov eax, [s_ecx]
                call hexn                     ; ffff2222
                mov al, ' '
                out 0xe9, al
                mov eax, [s_esp]
                call hexn                     ; ffff6000
                mov al, ' '
                out 0xe9, al
                mov eax, [s_flags]
                shr eax, 16
                mov ecx, 4
                call hexn                     ; 0000
                mov al, 0
                out 0xf4, al

        s_eax:  dd 0
        s_ecx:  dd 0
        s_esp:  dd 0
        s_flags: dd 0
        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        idtr:   dw 0
                dd 0
        gdt:    dq 0
                dq 0x00CF9A000000FFFF         ; 0x08 code, 32-bit
                dq 0x00CF92000000FFFF         ; 0x10 data, 32-bit
                dq 0x00009A000000FFFF         ; 0x18 code, 16-bit
                dq 0x000092000000FFFF         ; 0x20 data, 16-bit (the task's stack)
                dw 0x2b, tss16, 0x8100, 0     ; 0x28 16-bit TSS, available (type 1)
                dw 0x67, tss32, 0x8900, 0     ; 0x30 the caller's 32-bit TSS
        gdt_end:
        tss16:  dw 0                          ; link
                dw 0, 0, 0, 0, 0, 0           ; sp0, ss0 .. sp2, ss2
                dw task16, 0x0002             ; ip, flags
                dw 0x1111, 0x2222, 0x3333, 0x4444   ; ax, cx, dx, bx
                dw 0x6000, 0, 0, 0            ; sp, bp, si, di
                dw 0x10, 0x18, 0x20, 0x10     ; es, cs, ss, ds
                dw 0                          ; ldt
        tss32:  times 0x68 db 0
        """), on: backend)
        #expect(r.output == "0024 ffff1111 ffff2222 ffff6000 0000", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// Builds `source` (bits 64, elf64, linked at 2 MiB) with `hexn` appended and runs it.
    func runELF64(_ source: String, name: String, on backend: BackendKind) throws -> GuestRun {
        let image = try assembleELF64(source + "\nsection .text\n" + hexn64, name: name)
        return runGuest(image, backend: backend, timeout: 20)
    }

    /// The start of the 64-bit guests: a stack, this GDT (0x08 64-bit code, 0x10 data,
    /// 0x18 32-bit code, then `extra`), CS and SS reloaded from it.
    static func longModeStart(extraGDT extra: String = "") -> String {
        """
        bits 64
        default rel
        section .bss
        align 16
                resb 4096
        stack_top:
        section .data
        gdtr:   dw gdt_end - gdt - 1
                dq gdt
        gdt:    dq 0
                dq 0x00AF9A000000FFFF         ; 0x08 code, 64-bit
                dq 0x00CF92000000FFFF         ; 0x10 data
                dq 0x00CF9A000000FFFF         ; 0x18 code, 32-bit (compatibility mode)
        \(extra)
        gdt_end:
        section .text
        global _start
        _start: lea rsp, [stack_top]
                lgdt [gdtr]
                push 0x08
                lea rax, [.cs]
                push rax
                retfq
        .cs:    mov ax, 0x10
                mov ss, ax
                mov ds, ax
                mov es, ax

        """
    }

    /// What Linux runs at CPL 0 when PVM's KVM shows it the host's SMAP, FSGSBASE and PCID
    /// flags and hands these instructions to the interpreter: CLAC/STAC set RFLAGS.AC,
    /// RD/WRFSBASE and RD/WRGSBASE are the segment bases (the MSRs agree; a 32-bit read
    /// zero-extends), MOV to CR3 with PCIDE does not store bit 63, INVPCID flushes.
    @Test("CLAC/STAC, FSGSBASE, INVPCID and CR3 bit 63 with PCIDE (interpreter, for KVM handoffs)")
    func handedOverSystemInstructions() throws {
        let r = try runELF64(Self.longModeStart() + """
                stac
                pushfq
                pop rax
                shr eax, 18
                and eax, 1
                mov ecx, 1
                call hexn                     ; AC after STAC: 1
                clac
                pushfq
                pop rax
                shr eax, 18
                and eax, 1
                call hexn                     ; AC after CLAC: 0
                mov al, ' '
                out 0xe9, al
                mov rax, cr4
                or eax, (1 << 16) | (1 << 17) ; FSGSBASE, PCIDE
                mov cr4, rax
                mov rax, 0x123456789a
                wrfsbase rax
                mov ecx, 0xc0000100           ; IA32_FS_BASE
                rdmsr
                shl rdx, 32
                or rax, rdx
                mov ecx, 10
                call hexn                     ; 123456789a
                mov al, ' '
                out 0xe9, al
                mov rax, 0xfedcba9876
                wrgsbase rax
                rdgsbase rbx
                mov rax, rbx
                call hexn                     ; fedcba9876
                mov al, ' '
                out 0xe9, al
                mov rbx, -1
                rdgsbase ebx
                mov rax, rbx
                mov ecx, 16
                call hexn                     ; 00000000dcba9876
                mov al, ' '
                out 0xe9, al
                mov rax, cr3
                bts rax, 63
                mov cr3, rax
                mov rax, cr3
                shr rax, 63
                mov ecx, 1
                call hexn                     ; bit 63 of CR3: 0
                mov eax, 2                    ; all contexts, global pages too
                invpcid rax, [descriptor]
                mov al, ' '
                out 0xe9, al
                mov al, 'k'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        section .data
        align 16
        descriptor: dq 0, 0
        """, name: "handover", on: .interp)
        #expect(r.output == "10 123456789a fedcba9876 00000000dcba9876 0 k", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("SYSCALL from compatibility mode goes to CSTAR in 64-bit mode", arguments: backends(kvm: false))
    func syscallFromCompatibilityMode(backend: BackendKind) throws {
        // Reports RCX minus the address after the SYSCALL, R11, RFLAGS in the handler
        // (FMASK clears DF), CS and SS (from STAR[47:32]). This is AMD's SYSCALL (APM
        // vol. 3, SYSCALL: compatibility mode uses CSTAR); Intel CPUs raise #UD outside
        // 64-bit mode, so KVM on this Intel host triple-faults: interpreter only.
        let r = try runELF64(Self.longModeStart() + """
                mov ecx, 0xc0000080           ; EFER.SCE
                rdmsr
                or eax, 1
                wrmsr
                mov ecx, 0xc0000081           ; STAR[47:32] = 0x08: CS 0x08, SS 0x10
                xor eax, eax
                mov edx, 0x08
                wrmsr
                mov ecx, 0xc0000082           ; LSTAR: for 64-bit callers only
                lea rax, [from64]
                mov rdx, rax
                shr rdx, 32
                wrmsr
                mov ecx, 0xc0000083           ; CSTAR: for compatibility-mode callers
                lea rax, [fromcompat]
                mov rdx, rax
                shr rdx, 32
                wrmsr
                mov ecx, 0xc0000084           ; FMASK: DF
                mov eax, 0x400
                xor edx, edx
                wrmsr
                push 0x18                     ; to 32-bit code
                lea rax, [compat]
                push rax
                retfq
        bits 32
        compat: xor eax, eax
                cmp eax, eax                  ; ZF PF, no CF AF SF OF
                stc
                std                           ; RFLAGS = 0x447
                syscall
        after:  mov al, 1                     ; not reached: SYSCALL does not come back here
                out 0xf4, al
        bits 64
        from64: mov al, 'L'                   ; must not be reached
                out 0xe9, al
                mov al, 2
                out 0xf4, al
        fromcompat:
                pushfq
                pop r14
                mov ebx, cs
                mov ebp, ss
                lea rsp, [stack_top]
                mov rax, rcx
                lea rdx, [after]
                sub rax, rdx
                mov ecx, 16
                call hexn                     ; RCX - after: 0
                mov al, ' '
                out 0xe9, al
                mov rax, r11
                call hexn                     ; R11: 0000000000000447
                mov al, ' '
                out 0xe9, al
                mov rax, r14
                mov ecx, 8
                call hexn                     ; RFLAGS: 00000047
                mov al, ' '
                out 0xe9, al
                mov eax, ebx
                mov ecx, 4
                call hexn                     ; CS: 0008
                mov al, ' '
                out 0xe9, al
                mov eax, ebp
                call hexn                     ; SS: 0010
                mov al, 0
                out 0xf4, al
        """, name: "syscall-compat", on: backend)
        #expect(r.output == "0000000000000000 0000000000000447 00000047 0008 0010", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("LGDT, LIDT and LTR with a non-canonical base in 64-bit mode are #GP", arguments: backends(kvm: false))
    func nonCanonicalTableBases(backend: BackendKind) throws {
        // Each check prints the #GP error code, or "ok" when the instruction completes;
        // the handler resumes at the next check. The tables are reloaded after each one.
        // AMD APM vol. 3 lists #GP(0) for a non-canonical new GDT/IDT base (LGDT, LIDT)
        // and #GP(selector) for a non-canonical TSS base (LTR); Bochs does the same.
        // Interpreter only: this host's KVM (no VMX/SVM: the kernel's emulator) faults on
        // none of them: "ok ok ok ok ok 0030".
        let r = try runELF64(Self.longModeStart(extraGDT: """
                dw 0x67, 0, 0x8930, 0         ; 0x20 64-bit TSS at 0x0000800000300000: non-canonical
                dd 0x00008000, 0
                dw 0x67, 0, 0x8930, 0         ; 0x30 64-bit TSS at 0x300000 (LTR reads nothing there)
                dd 0, 0
        """) + """
                lea rax, [gp]                 ; IDT entry 13: interrupt gate to 0x08:gp
                lea rdi, [idt + 13 * 16]
                mov [rdi], ax
                mov word [rdi + 2], 0x08
                mov word [rdi + 4], 0x8E00
                shr rax, 16
                mov [rdi + 6], ax
                shr rax, 16
                mov [rdi + 8], eax
                lidt [idtr]
        %macro CHECK 1                        ; runs %1: the #GP handler resumes at %%next
                lea rax, [%%next]
                mov [resume], rax
                %1
                mov al, 'o'
                out 0xe9, al
                mov al, 'k'
                out 0xe9, al
                mov al, ' '
                out 0xe9, al
        %%next: lgdt [gdtr]
                lidt [idtr]
        %endmacro
                CHECK {lgdt [bad_gdtr]}       ; #GP(0)
                CHECK {lidt [bad_idtr]}       ; #GP(0)
                CHECK {lgdt [high_gdtr]}      ; canonical upper half: ok
                mov dx, 0x20                  ; (CHECK uses RAX)
                CHECK {ltr dx}                ; #GP(0x20)
                mov dx, 0x30
                CHECK {ltr dx}                ; ok
                str eax
                mov ecx, 4
                call hexn                     ; 0030
                mov al, 0
                out 0xf4, al
        gp:     pop rax                       ; the error code
                mov ecx, 4
                call hexn
                mov al, ' '
                out 0xe9, al
                inc qword [gps]
                cmp qword [gps], 3            ; three checks fault
                ja .many
                mov rax, [resume]
                mov [rsp], rax
                iretq
        .many:  mov al, 4
                out 0xf4, al
        section .data
        idtr:   dw 14 * 16 - 1
                dq idt
        bad_gdtr: dw 0x37
                dq 0x0000800000000000
        bad_idtr: dw 0xff
                dq 0x0000800000000000
        high_gdtr: dw 0x37
                dq 0xffff800000000000
        resume: dq 0
        gps:    dq 0
        section .bss
        align 16
        idt:    resb 14 * 16
        """, name: "noncanonical", on: backend)
        #expect(r.output == "0000 0000 ok 0020 ok 0030", "\(backend) status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }
}
