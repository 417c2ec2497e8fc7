// POPCNT, LZCNT, TZCNT, BMI1, BMI2, ADX and MOVBE against this machine's own CPU: the same
// instruction sequence runs natively as a Linux program and as a guest on the interpreter,
// and the results (with each instruction's defined flags) must be identical.
import Foundation
import Machine
import Testing

/// The shared body: every pair of ten edge values through each instruction, each result
/// (and the defined flags) stored in `results`; R15 ends as the count.
private let body = """
    ; Computes bit-manipulation results for every pair of test values into [results].
    ; In: nothing. Uses rax..r15 (r14 = results base, r15 = index). Leaves r15 = count.
    %macro REC 1
            mov [r14 + r15 * 8], %1
            inc r15
    %endmacro
    %macro FLAGS 1
            pushfq
            pop rax
            and rax, %1
            REC rax
    %endmacro
            lea r14, [results]
            xor r15d, r15d
            xor r12d, r12d                  ; i
    .outer: xor r13d, r13d                  ; j
    .inner: mov rsi, [values + r12 * 8]     ; a
            mov rdi, [values + r13 * 8]     ; b
            ; clear the flags we compare so that "unchanged" is seen too
            push 2
            popfq
            popcnt rax, rsi
            REC rax
            FLAGS 0x8D5
            popcnt eax, esi
            REC rax
            lzcnt rax, rsi
            REC rax
            FLAGS 0x41
            lzcnt eax, esi
            REC rax
            FLAGS 0x41
            tzcnt rax, rsi
            REC rax
            FLAGS 0x41
            tzcnt ax, si
            REC rax
            FLAGS 0x41
            andn rax, rsi, rdi
            REC rax
            FLAGS 0x8C1
            andn eax, esi, edi
            REC rax
            bextr rax, rsi, rdi
            REC rax
            FLAGS 0x841
            bextr eax, esi, edi
            REC rax
            blsi rax, rsi
            REC rax
            FLAGS 0x8C1
            blsmsk rax, rsi
            REC rax
            FLAGS 0x8C1
            blsr eax, esi
            REC rax
            FLAGS 0x8C1
            bzhi rax, rsi, rdi
            REC rax
            FLAGS 0x8C1
            bzhi eax, esi, edi
            REC rax
            FLAGS 0x8C1
            pdep rax, rsi, rdi
            REC rax
            pext rax, rsi, rdi
            REC rax
            pdep eax, esi, edi
            REC rax
            pext eax, esi, edi
            REC rax
            rorx rax, rsi, 13
            REC rax
            rorx eax, esi, 31
            REC rax
            sarx rax, rsi, rdi
            REC rax
            shlx eax, esi, edi
            REC rax
            shrx rax, rsi, rdi
            REC rax
            mov rdx, rdi
            mulx rcx, rax, rsi
            REC rax
            REC rcx
            mov edx, edi
            mulx ecx, eax, esi
            REC rax
            REC rcx
            mov rax, rsi
            push 0x8D7                      ; CF and OF set, others too
            popfq
            adcx rax, rdi
            REC rax
            FLAGS 0x8D5
            mov eax, esi
            push 2
            popfq
            adox eax, edi
            REC rax
            FLAGS 0x8D5
            mov [scratch], rsi
            movbe rax, [scratch]
            REC rax
            movbe [scratch], edi
            mov rax, [scratch]
            REC rax
            movbe ax, [scratch]
            REC rax
            inc r13
            cmp r13, VALUES
            jb .inner
            inc r12
            cmp r12, VALUES
            jb .outer
"""

private let values = """
    VALUES equ 10
    values: dq 0, 1, -1, 0x80000000, 0x8000000000000000, 0x00ff00ff00ff00f0, 0x123456789abcdef0, 0xFFFFFFFF, 7, 0x0000000000001004
"""

@Suite("Bit manipulation against the host CPU",
       .enabled(if: hostCPUHas(["popcnt", "abm", "bmi1", "bmi2", "adx", "movbe"]), "this CPU lacks POPCNT/LZCNT/BMI1/BMI2/ADX/MOVBE"))
struct BitManipulationTests {
    @Test("4,700 results of popcnt lzcnt tzcnt andn bextr blsi blsmsk blsr bzhi pdep pext rorx sarx shlx shrx mulx adcx adox movbe equal the CPU's")
    func againstHostCPU() throws {
        let (native, guest) = try runNativeAndOnInterpreter(
            name: "bmi", body: body, data: values, bss: "scratch: resq 1\nresults: resq 6000", length: { "lea \($0), [r15 * 8]" })
        #expect(native.status == 0)
        #expect(guest.status == 0, "\(guest.message ?? "")")
        let expected = Array(native.stdoutBytes)
        #expect(expected.count == 4700 * 8)
        #expect(guest.outputBytes == expected, "first difference at byte \(zip(guest.outputBytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(guest.outputBytes.count, expected.count))")
    }
}
