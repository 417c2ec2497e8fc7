// The interpreter backend: the same guests give the same results as on KVM, small
// hand-assembled programs pin down instruction and system behaviour, SMP is atomic.
import Conformance
import Foundation
import GuestMemory
import Interpreter
import Machine
import Testing
import X86

/// Assembles `source` with nasm into a flat binary (`bits 16` etc. inside the source).
func assemble(_ source: String) throws -> [UInt8] {
    let input = try writeScratchFile(Array(source.utf8), name: "program.asm")
    let output = scratchPath("program.bin")
    let result = try runProcess("/usr/bin/env", ["nasm", "-f", "bin", "-o", output, input])
    guard result.status == 0 else { throw GuestBuildFailure(description: "nasm: \(result.stderr)") }
    return try readFileBytes(output)
}

/// A boot-sector program: real mode at 0x7C00; `body` ends by writing the exit device.
func bootProgram(_ body: String) -> String {
    """
    bits 16
    org 0x7c00
    \(body)
    """
}

/// Prints AL-sized hex helpers used by several tests: `call hex16` prints AX in hex on 0xE9.
let hexHelpers = """
hex16:  push cx
        mov cx, 4
.next:  rol ax, 4
        push ax
        and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe .out
        add al, 'a' - '9' - 1
.out:   out 0xe9, al
        pop ax
        loop .next
        pop cx
        ret
"""

@Suite("Both backends agree")
struct BackendAgreementTests {
    @Test("loop32 computes the documented value over its full 80M instructions on the interpreter")
    func loop32() throws {
        let run = runGuest(try guest("loop32.elf"), backend: .interp)
        #expect(run.output == "loop32 done edx=2c653f59\n")
    }

    @Test("every guest gives the same output and status on both backends", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func sameOnBothBackends() throws {
        let guests = ["hello-boot.bin", "hello-bios.rom", "hello-multiboot.elf", "hello-multiboot-aout.bin", "hello-elf64.elf", "smp-counter.elf"]
        for name in guests {
            let cpus = name.hasSuffix("elf64.elf") || name.hasPrefix("smp") ? 2 : 1
            let kvm = runGuest(try guest(name), backend: .kvm, cpus: cpus) { $0.commandLine = "same args" }
            let interp = runGuest(try guest(name), backend: .interp, cpus: cpus) { $0.commandLine = "same args" }
            #expect(kvm.output == interp.output, "\(name)")
            #expect(kvm.status == interp.status, "\(name)")
            #expect(!interp.output.isEmpty, "\(name)")
        }
    }
}

@Suite("Interpreter instructions and system behaviour")
struct InterpreterProgramTests {
    func run(_ body: String, timeout: Double = 20, configure: (inout MachineConfiguration) -> Void = { _ in }) throws -> GuestRun {
        try runImage(try assemble(bootProgram(body + "\n" + hexHelpers)), backend: .interp, name: "test.bin", timeout: timeout, configure: configure)
    }

    /// IRETD with NT set, back to a busy 32-bit TSS whose EFLAGS has VM: the task
    /// switch lands in virtual-8086 mode, whose I/O goes through that TSS's bitmap.
    @Test("a task return (iretd with NT) into a virtual-8086 task", arguments: backends())
    func taskReturnIntoVirtual8086(backend: BackendKind) throws {
        let r = try runImage(try assemble("""
        bits 16
        org 0x7c00
                cli
                xor ax, ax
                mov ds, ax
                mov ss, ax
                mov sp, 0x7c00
                lgdt [gdtr]
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
                mov ax, 0x18
                ltr ax
                mov word [tss1], 0x20       ; back link: the v86 task
                pushfd
                or dword [esp], 1 << 14     ; NT
                popfd
                iretd                       ; task return into the v86 task
                mov al, 'X'
                out 0xe9, al
                mov al, 1
                out 0xf4, al
        bits 16
        v86:    mov al, 'V'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
                jmp $
        gdtr:   dw gdt_end - gdt - 1
                dd gdt
        gdt:    dq 0
                dq 0x00CF9A000000FFFF
                dq 0x00CF92000000FFFF
                dw 0x67, tss1, 0x8900, 0
                dw tss2_end - tss2 - 1, tss2, 0x8B00, 0   ; busy, as a task return needs
        gdt_end:
        align 16
        tss1:   times 0x68 db 0
        tss2:   dd 0, 0, 0, 0, 0, 0, 0, 0
                dd v86, 0x23002             ; eip, eflags: VM, IOPL 3
                dd 0, 0, 0, 0, 0x6000, 0, 0, 0
                dd 0, 0, 0, 0, 0, 0         ; es cs ss ds fs gs (real-mode values)
                dw 0, 0, 0, 0x68            ; ldt, trap, iomap base
                times 32 db 0               ; ports 0-255 allowed
                db 0xFF
        tss2_end:
        """), backend: backend, name: "v86-task.bin", timeout: 10)
        #expect(r.output == "V", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// What compilers sprinkle everywhere: endbr64 at every function's start (Debian's gcc),
    /// endbr32, and the rest of the hint-NOP space 0F 18-0F 1F with prefixes.
    @Test("endbr64, endbr32 and the hint-NOP space run as NOPs", arguments: backends())
    func hintNOPs(backend: BackendKind) throws {
        let image = try assembleELF64("""
        bits 64
        section .text
        global _start
        _start:
                endbr64
                db 0xF3, 0x0F, 0x1E, 0xFB                        ; endbr32
                nop dword [rax + rax]
                db 0x0F, 0x18, 0x00                              ; prefetchnta [rax]
                db 0x0F, 0x19, 0xC0                              ; reserved hint NOP
                db 0x0F, 0x1C, 0x00                              ; another
                db 0x66, 0x2E, 0x0F, 0x1F, 0x84, 0, 0, 0, 0, 0   ; the longest NOP gcc pads with
                mov al, 7
                out 0xf4, al
        """, name: "hint-nops")
        let r = runGuest(image, backend: backend)
        #expect(r.status == 7, "\(r.message ?? "")")
    }

    /// RDRAND/RDSEED: CF = 1 with a value, 64 times each; the values are not all alike.
    @Test("rdrand and rdseed return random values with CF set")
    func randomNumbers() throws {
        let image = try assembleELF64("""
        bits 64
        section .text
        global _start
        _start:
                mov ecx, 64
                xor r8, r8                       ; OR of the values
                mov r9, -1                       ; AND of the values
        again:  rdrand rax
                jnc bad
                rdseed edx
                jnc bad
                or r8, rax
                and r9, rax
                loop again
                cmp r8, r9                       ; all 64 alike: not random
                je bad
                mov al, 0
                out 0xf4, al
        bad:    mov al, 1
                out 0xf4, al
        """, name: "random")
        let r = runGuest(image, backend: .interp)
        #expect(r.status == 0, "\(r.message ?? "")")
    }

    @Test("self-modifying code: a patched immediate takes effect")
    func selfModifyingCode() throws {
        let r = try run("""
                mov cx, 3
        again:  call patched
                call hex16
                mov al, ' '
                out 0xe9, al
                inc word [patched + 1]     ; patch the immediate of the mov below
                loop again
                mov al, 0
                out 0xf4, al
        patched: mov ax, 0x1234
                ret
        """)
        #expect(r.output == "1234 1235 1236 ", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// Code pages are tracked per 128-byte line (CodePages): a write to another line of the
    /// code's page keeps the decodes, a write to the part of an instruction that lies in the
    /// next line still drops it.
    @Test("self-modifying code: a patch in the next 128-byte line of an instruction takes effect, data writes on its page do not disturb it")
    func selfModifyingCodeAcrossLines() throws {
        let r = try run("""
                mov cx, 3
        again:  call patched
                call hex16
                mov al, ' '
                out 0xe9, al
                inc word [data]            ; another line of the same page
                inc byte [patched + 2]     ; the immediate's high byte: the next line
                loop again
                mov ax, [data]
                call hex16
                mov al, 0
                out 0xf4, al
                align 128, db 0x90
                times 126 db 0x90
        patched: mov ax, 0x1234            ; B8 34 12 at line offsets 126, 127 and 0
                ret
                align 128, db 0
        data:   dw 0
        """)
        #expect(r.output == "1234 1334 1434 0003", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("code copied into a buffer and rewritten between runs")
    func copiedCode() throws {
        let r = try run("""
                mov si, template
                mov di, 0x1000
                mov cx, template_end - template
                rep movsb
                call 0x1000
                call hex16
                mov byte [0x1001], 0x77     ; rewrite the low byte of the immediate
                call 0x1000
                call hex16
                mov al, 0
                out 0xf4, al
        template: mov ax, 0xab00
                ret
        template_end:
        """)
        #expect(r.output == "ab00ab77")
    }

    @Test("divide error in real mode vectors through the IVT with the faulting IP")
    func divideError() throws {
        let r = try run("""
                mov word [0], handler
                mov word [2], 0
                xor cx, cx
                mov ax, 100
        fault:  div cl
                mov al, 1
                out 0xf4, al
        handler: pop ax                ; the pushed IP: the div itself
                cmp ax, fault
                jne bad
                mov al, 'D'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        bad:    mov al, 2
                out 0xf4, al
        """)
        #expect(r.output == "D")
        #expect(r.status == 0)
    }

    @Test("arithmetic flags: add, sub, adc, sbb, inc, neg, shifts")
    func flags() throws {
        // Each line pushes FLAGS after an operation and prints the low byte of the arithmetic flags.
        let r = try run("""
                mov ax, 0x7fff
                add ax, 1            ; OF SF AF PF? -> 0x8000: OF=1 SF=1 AF=1 PF=1 ZF=0 CF=0
                pushf
                pop ax
                and ax, 0x08d5
                call hex16
                mov al, 0xff
                add al, 1            ; CF=1 ZF=1 AF=1 PF=1
                pushf
                pop ax
                and ax, 0x08d5
                call hex16
                mov ax, 0
                sub ax, 1            ; CF=1 SF=1 AF=1 PF=1
                pushf
                pop ax
                and ax, 0x08d5
                call hex16
                stc
                mov al, 0x10
                sbb al, 0x0f         ; 0x10 - 0x0f - 1 = 0: ZF=1 PF=1 AF=1
                pushf
                pop ax
                and ax, 0x08d5
                call hex16
                mov al, 0x80
                shl al, 1            ; CF=1 OF=1 ZF=1 PF=1
                pushf
                pop ax
                and ax, 0x08c5
                call hex16
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "0894" + "0055" + "0095" + "0054" + "0845")
    }

    @Test("rep movsw and repne scasb")
    func strings() throws {
        let r = try run("""
                push cs
                pop es
                mov si, src
                mov di, 0x2000
                mov cx, 3
                cld
                rep movsw
                mov ax, [0x2004]
                call hex16
                mov di, src
                mov al, 0x56
                mov cx, 10
                repne scasb
                mov ax, cx
                call hex16
                mov al, 0
                out 0xf4, al
        src:    db 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc
        """)
        #expect(r.output == "bc9a" + "0007", "status \(r.status): \(r.message ?? "")")
    }

    /// REP MOVS and REP STOS run a page at a time as one host copy or fill
    /// (`bulkString`): the cases where that could differ from iteration by iteration.
    @Test("rep movs/stos in bulk: an overlapping copy replicates, a fill crosses a page, DI wraps in its segment, a copy over decoded code is seen")
    func bulkStrings() throws {
        let r = try run("""
                cld
                xor ax, ax
                mov es, ax
                ; 1. dst = src + 1: a forward copy replicates the first byte
                mov byte [0x1800], 0xab
                mov si, 0x1800
                mov di, 0x1801
                mov cx, 100
                rep movsb
                mov ax, [0x1800 + 57]
                call hex16
                mov ax, [0x1800 + 100]      ; the last byte written and the one after it
                call hex16
                ; 2. words across the page boundary at 0x3000
                mov di, 0x2ff0
                mov ax, 0x5a6b
                mov cx, 0x20
                rep stosw
                mov ax, [0x2ffe]
                call hex16
                mov ax, [0x302e]
                call hex16
                mov ax, di
                call hex16
                ; 3. DI wraps at 64 KiB inside ES = 0x1000: 16 bytes at the top, 16 at the bottom
                mov ax, 0x1000
                mov es, ax
                mov di, 0xfff0
                mov al, 0x77
                mov cx, 0x20
                rep stosb
                mov ax, [es:0x000e]
                call hex16
                mov ax, [es:0xfffe]
                call hex16
                mov ax, di
                call hex16
                ; 4. code that ran, then rewritten by a copy
                xor ax, ax
                mov es, ax
                call patched
                call hex16
                mov si, template
                mov di, patched
                mov cx, template_end - template
                rep movsb
                call patched
                call hex16
                mov al, 0
                out 0xf4, al
        patched: mov ax, 0x1111
                ret
        template: mov ax, 0x2222
                ret
        template_end:
        """)
        #expect(r.output == "abab" + "00ab" + "5a6b" + "5a6b" + "3030" + "7777" + "7777" + "0010" + "1111" + "2222",
                "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    /// REPE/REPNE CMPS and SCAS compare a page at a time in host memory (`bulkCompare`):
    /// where they stop, CX, DI and the last comparison's flags, across a page boundary.
    @Test("repe/repne cmps/scas in bulk: stop at the first difference or match past a page boundary, or run out, with the last comparison's flags")
    func bulkCompares() throws {
        let r = try run("""
                cld
                xor ax, ax
                mov es, ax
                ; byte i of 0x1000.. and of 0x2e00.. is i & 0xff (0x400 bytes each)
                xor bx, bx
        fill:   mov [bx + 0x1000], bl
                mov [bx + 0x2e00], bl
                inc bx
                cmp bx, 0x400
                jb fill
                ; 1. repe cmpsb: one difference, at 0x3123 (past the page at 0x3000)
                mov byte [0x2e00 + 0x323], 0x99
                mov si, 0x1000
                mov di, 0x2e00
                mov cx, 0x400
                repe cmpsb
                call report
                mov byte [0x2e00 + 0x323], 0x23
                ; 2. repe cmpsw: all equal, across the page
                mov si, 0x1000
                mov di, 0x2e00
                mov cx, 0x200
                repe cmpsw
                call report
                ; 3. repne scasb: 0x47 first at 0x3047
                mov al, 0x47
                mov di, 0x2f50
                mov cx, 0x300
                repne scasb
                call report
                ; 4. repne scasb: no 0x47 in 0x2fd0..0x303f
                mov al, 0x47
                mov di, 0x2fd0
                mov cx, 0x70
                repne scasb
                call report
                ; 5. repe cmpsd: different at the first element
                mov si, 0x1000
                mov di, 0x2e04
                mov cx, 0x10
                repe cmpsd
                call report
                mov al, 0
                out 0xf4, al
        report: pushf
                mov ax, cx
                call hex16
                mov ax, di
                call hex16
                pop ax
                and ax, 0x8d5
                call hex16
                ret
        """)
        #expect(r.output == "00dc" + "3124" + "0891"
                          + "0000" + "3200" + "0044"
                          + "0208" + "3048" + "0044"
                          + "0000" + "3040" + "0010"
                          + "000f" + "2e08" + "0095",
                "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("idiv of the most negative dividend by -1 is #DE for the guest, not a host crash")
    func idivOverflow() throws {
        let r = try run("""
                mov word [0], handler
                mov word [2], 0
                mov edx, 0x80000000
                xor eax, eax
                mov ecx, -1
                idiv ecx                     ; EDX:EAX = -2^63: the quotient overflows Int64 too
                mov al, 1
                out 0xf4, al
        handler: mov al, 'D'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "D")
        #expect(r.status == 0)
    }

    @Test("a SIB byte with no index (Capstone's EIZ) adds nothing to the address")
    func sibWithoutIndex() throws {
        let r = try run("""
                mov eax, 0x100
                mov esi, 0x7e00
                db 0x67, 0x8d, 0x74, 0x26, 0x00      ; lea si, [esi + eiz*1 + 0]
                mov ax, si
                call hex16
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "7e00")
    }

    @Test("unmapped ports read as all ones, the debug console reads 0xE9")
    func ports() throws {
        let r = try run("""
                mov dx, 0x1234
                in ax, dx
                call hex16
                in al, 0xe9
                mov ah, 0
                call hex16
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "ffff00e9", "status \(r.status): \(r.message ?? "")")
    }

    @Test("A20 off through port 0x92 wraps addresses at 1 MiB")
    func a20() throws {
        let r = try run("""
                mov ax, 0xffff
                mov es, ax
                mov word [0x0010], 0x1111     ; physical 0x10 (segment 0)
                mov word [es:0x0020], 0x2222  ; physical 0x100010 with A20 on
                mov ax, [0x0010]
                call hex16
                in al, 0x92
                and al, ~2
                out 0x92, al                  ; A20 off
                mov word [es:0x0020], 0x3333  ; now aliases physical 0x10
                mov ax, [0x0010]
                call hex16
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "1111" + "3333")
    }

    @Test("an instruction the interpreter does not implement stops the run with the contract's report")
    func unimplementedInstruction() throws {
        let r = try run("""
                mov eax, cr4
                or eax, 0x200               ; OSFXSR: SSE-space opcodes are not #UD
                mov cr4, eax
                sha1rnds4 xmm0, xmm1, 0
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.status == ExitStatus.unsupportedInstruction.rawValue)
        #expect(r.message?.contains("vcpu0") == true)
        #expect(r.message?.contains("sha1rnds4") == true)
    }

    @Test("x87 with CR0.EM set raises #NM (vector 7)")
    func x87WithEM() throws {
        let r = try run("""
                mov word [7*4], handler
                mov word [7*4+2], 0
                smsw ax
                or ax, 4
                lmsw ax
                fld1
                mov al, 1
                out 0xf4, al
        handler: mov al, 'N'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        """)
        #expect(r.output == "N")
        #expect(r.status == 0)
    }

    @Test("--max-instructions stops with status 207 and names the instruction")
    func instructionLimit() throws {
        let r = try run("spin: jmp spin") { $0.maxInstructions = 1000 }
        #expect(r.status == ExitStatus.instructionLimit.rawValue)
        #expect(r.message?.contains("jmp 0x7c00") == true)
    }

    @Test("cli; hlt ends the run with status 0")
    func halt() throws {
        let r = try run("cli\nhlt")
        #expect(r.status == 0)
        #expect(r.message?.contains("halted") == true)
    }

    @Test("a triple fault is status 204")
    func tripleFault() throws {
        // An IDT limit of 0 in protected mode: #UD cannot be delivered, nor #GP, nor #DF.
        let r = try run("""
                cli
                lgdt [gdtr]
                lidt [idtr]
                mov eax, cr0
                or al, 1
                mov cr0, eax
                jmp 8:pm
        bits 32
        pm:     ud2
        gdtr:   dw 15
                dd gdt
        idtr:   dw 0
                dd 0
        gdt:    dq 0
                dq 0x00cf9a000000ffff
        bits 16
        """)
        #expect(r.status == ExitStatus.tripleFault.rawValue)
        #expect(r.message?.contains("ud2") == true)
    }
}

@Suite("Conformance")
struct ConformanceSuiteTests {
    static let suite = "\(repoRoot)/../shared/conformance/sst286"

    @Test("every applicable SingleStepTests 286 test passes on the interpreter",
          .enabled(if: FileManager.default.fileExists(atPath: suite + "/metadata.json"),
                   "shared/conformance/sst286 is not beside this clone"))
    func sst286() throws {
        let memory = try GuestMemoryMap(ramSize: 32 << 20)
        let vcpu = InterpreterMachine(memory: memory, cpuCount: 1).makeVCPU(index: 0)
        let runner = try SST286Runner(directory: Self.suite, memory: memory, vcpu: vcpu) { vcpu.memoryWritten(at: $0, length: $1) }
        runner.beforeEach = { vcpu.instructionLimit = vcpu.retired + 1_000 }
        runner.lastFaultWasWraparound = {
            guard let l = vcpu.lastLimitViolation else { return false }
            return l.offset <= 0xFFFF && l.offset + UInt64(l.size) - 1 > 0xFFFF
        }
        let summary = runner.run(forms: runner.forms())
        let shown = summary.failures.prefix(20).map { "\($0.form) \($0.name): \($0.details.joined(separator: "; "))" }
        #expect(summary.failed == 0, "\(summary.line)\n\(shown.joined(separator: "\n"))")
        #expect(summary.passed >= 59_000, "\(summary.line)")
        // Only the documented 286-versus-modern groups are skipped.
        #expect(summary.skipped < 2_000, "\(summary.skipReasons)")
    }
}
