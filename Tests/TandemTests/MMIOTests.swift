// MMIO as devices see it: every access of a free-running guest arrives once, in program
// order, before the next instruction runs, on both backends; unmapped memory reads as all
// ones at once, however many accesses an instruction makes.
import Devices
import Foundation
import GuestMemory
import Machine
import Tracing
import Synchronization
import Testing

/// Records every access that reaches it, MMIO and port alike, in one sequence.
final class AccessProbe: MMIODevice, PortDevice, @unchecked Sendable {
    let log = Mutex<[String]>([])
    func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        // A value that names the access, so that a value read twice would show.
        let value = (address & 0xFFFF) &* 0x0101 &+ UInt64(size)
        log.withLock { $0.append("R \(hex(address, width: 8)) \(size)") }
        return value
    }
    func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        log.withLock { $0.append("W \(hex(address, width: 8)) \(size) \(hex(value, width: 1))") }
    }
    func portRead(_ port: UInt16, size: Int) -> UInt32 {
        log.withLock { $0.append("in \(hex(port, width: 2))") }
        return 0x5A
    }
    func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        log.withLock { $0.append("out \(hex(port, width: 2)) \(hex(value, width: 1))") }
    }
}

@Suite("MMIO")
struct MMIOTests {
    static let base: UInt64 = 0xFED0_0000   // clear of the IOAPIC (0xFEC00000) and the local APICs (0xFEE00000)

    /// Stores, loads, string and locked forms on the probe, with a port read in the middle.
    let program = """
    bits 64
    default rel
    section .text
    global _start
    _start:
            test rdi, rdi
            jnz park
            lea rsp, [stack_top]
            mov rbx, 0xFED00000
            mov dword [rbx], 1
            mov dword [rbx + 4], 2
            mov byte [rbx + 8], 3
            mov rax, 0x1122334455667788
            mov [rbx + 0x10], rax
            in al, 0x99
            mov eax, [rbx + 0x100]
            mov [rbx + 0x20], eax
            lea rsi, [rbx + 0x200]
            lea rdi, [rbx + 0x300]
            movsd
            lea rdi, [rbx + 0x400]
            mov ecx, 3
            mov al, 0xAB
            rep stosb
            mov ecx, 7
            xchg [rbx + 0x500], ecx
            lock inc dword [rbx + 0x600]
            push qword [rbx + 0x700]
            pop rax
            mov [rbx + 0x800], rax
            mov al, 0
            out 0xf4, al
    park:   cli
            hlt
            jmp park
    section .bss
            resb 4096
    stack_top:
    """

    /// What the probe must see, in this order (values as `AccessProbe` answers them).
    let expected = [
        "W fed00000 4 1", "W fed00004 4 2", "W fed00008 1 3", "W fed00010 8 1122334455667788",
        "in 99",
        "R fed00100 4", "W fed00020 4 10104",
        "R fed00200 4", "W fed00300 4 20204",
        "W fed00400 1 ab", "W fed00401 1 ab", "W fed00402 1 ab",
        "R fed00500 4", "W fed00500 4 7",
        "R fed00600 4", "W fed00600 4 60605",
        "R fed00700 8", "W fed00800 8 70708",
    ]

    func run(_ backend: BackendKind, cpus: Int = 1, trace: Bool = false) throws -> (GuestRun, [String]) {
        let image = try assembleELF64(program, name: "mmio-order")
        let probe = AccessProbe()
        let traceFile = scratchPath("mmio-order-\(backend).trace")
        let r = runGuest(image, backend: backend, cpus: cpus, configure: { c in
            if trace { c.trace = TraceOptions(path: traceFile) }
        }, prepare: { machine in
            machine.devices.mmio.attach(probe, range: Self.base...(Self.base + 0xFFF))
            machine.devices.ports.attach(probe, ports: 0x99...0x99)
        })
        return (r, probe.log.withLock { $0 })
    }

    @Test("free-running interpreter: each MMIO access reaches the device once, in order, with port I/O in between", arguments: [1, 2])
    func interpreterOrder(cpus: Int) throws {
        let (r, log) = try run(.interp, cpus: cpus)
        #expect(r.status == 0, "\(r.message ?? "")")
        #expect(log == expected)
    }

    @Test("KVM sees the same sequence", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func kvmOrder() throws {
        let (r, log) = try run(.kvm)
        #expect(r.status == 0, "\(r.message ?? "")")
        #expect(log == expected)
    }

    @Test("single-stepped (traced) interpreter: the same sequence")
    func steppedOrder() throws {
        let (r, log) = try run(.interp, trace: true)
        #expect(r.status == 0, "\(r.message ?? "")")
        #expect(log == expected)
    }

    /// Instructions that make several reads of unmapped memory: a load straddling the end
    /// of RAM, cmpxchg16b and a string compare in the 3-4 GiB hole, an int3 whose IDT is in
    /// the hole (all-ones gate: #GP, then #DF through the same IDT, then a triple fault).
    @Test("unmapped memory reads as all ones at once, even several times in one instruction", arguments: backends())
    func unmappedReads(backend: BackendKind) throws {
        let image = try assembleELF64("""
        bits 64
        section .text
        global _start
        _start:
                mov rax, [0x7FFFFFC]             ; 4 bytes of RAM (128 MiB), 4 unmapped
                mov rbx, 0xFFFFFFFF
                cmp eax, 0                       ; RAM is zero
                jne bad
                shr rax, 32
                cmp rax, rbx
                jne bad
                mov rsi, 0xE0000000
                xor eax, eax
                xor edx, edx
                mov rbx, 1
                xor ecx, ecx
                cmpxchg16b [rsi]                 ; compares all ones: fails, loads them
                jz bad
                inc rax
                jnz bad
                inc rdx
                jnz bad
                mov rdi, 0xE0001000
                mov ecx, 4
                repe cmpsq                       ; all ones against all ones, 4 times
                jnz bad
                test ecx, ecx
                jnz bad
                mov al, 0
                out 0xf4, al
        bad:    mov al, 1
                out 0xf4, al
        """, name: "unmapped-reads")
        let r = runGuest(image, backend: backend, timeout: 20)
        #expect(r.status == 0, "\(r.message ?? "")")
    }
}
