import Foundation
import Machine
import Testing

/// The output `usermode64.elf` must print (Guests/usermode64.asm), with its hash computed
/// here from the guest's description rather than taken from a run.
let usermode64Expected: String = {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for _ in 0..<2_500_000 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        hash = (hash ^ state) &* 0x100_0000_01B3
    }
    var lines = [
        "kernel: entering user mode",
        "user: hello through syscall",
        "user: hello through int 0x80",
        "kernel: #PF cr2=0000008000000000 error=4",
    ]
    for k in 1...8 { lines.append("kernel: #PF cr2=\(hex(0x80_0000_0000 + UInt64(k) * 4096 + UInt64(k) * 8, width: 16)) error=6") }
    lines += [
        "user: demand pages sum=36",
        "user: hash=\(hex(hash, width: 16))",
        "kernel: syscalls=6 int80=1 pf=9 ud=1 bp=1 gp=1 de=1 ticks>=5",
    ]
    return lines.joined(separator: "\n") + "\n"
}()

@Suite("The hybrid engine: 64-bit user mode on KVM, the rest on the interpreter")
struct HybridTests {
    /// Runs `image` to its end and returns its console output, status and statistics.
    func run(_ image: String, backend: BackendKind, cpus: Int = 1) throws -> (output: String, status: Int32, statistics: RunStatistics) {
        var c = MachineConfiguration(imagePath: try guest(image))
        c.backend = backend
        c.cpus = cpus
        c.serial = .capture
        c.input = .none()
        c.timeout = 120
        c.announceBackend = false
        let machine = try Machine(c)
        let outcome = machine.run()
        return (machine.capturedOutput, outcome.status, outcome.statistics)
    }

    @Test("usermode64.elf on the interpreter: system calls, faults, timer interrupts at CPL 3")
    func userModeOnInterpreter() throws {
        let r = try run("usermode64.elf", backend: .interp)
        #expect(r.status == 0)
        #expect(r.output == usermode64Expected)
    }

    @Test("usermode64.elf on the hybrid engine: the interpreter's results, user mode on KVM",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"), arguments: [1, 2])
    func userModeOnHybrid(cpus: Int) throws {
        let r = try run("usermode64.elf", backend: .hybrid, cpus: cpus)
        #expect(r.status == 0)
        #expect(r.output == usermode64Expected)
        let h = try #require(r.statistics.engines)
        // Into user mode once, and back for each of the 6 SYSCALLs, the INT 0x80, the 9
        // page faults and the 4 other exceptions at least.
        #expect(h.switches >= 2 * 20, "\(h.switches) switches")
        #expect(h.kvmSeconds > 0)
    }

    @Test("usermode64.elf on --backend kvm: SYSCALL, int 0x80, faults and ticks at CPL 3 (on PVM through the interpreter's fallback stretches)",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"), arguments: [1, 2])
    func userModeOnKVM(cpus: Int) throws {
        let r = try run("usermode64.elf", backend: .kvm, cpus: cpus)
        #expect(r.status == 0)
        #expect(r.output == usermode64Expected)
        if !hostHasHardwareVirtualization() {
            // KVM delivers none of the events: each SYSCALL, fault and tick is handed over.
            #expect(r.statistics.handoffs >= 20, "\(r.statistics.handoffs) handoffs")
            let engines = try #require(r.statistics.engines)
            #expect(engines.kvmSeconds > 0)
            #expect(r.statistics.fallbackInstructions > 0)
        }
    }

    /// An interrupt that comes due while the vCPU is out of KVM for an `in` (or an MMIO
    /// access) is taken after that instruction, which runs once, and nothing of it is
    /// applied later: KVM finishes an `in` only at its next entry, and a vCPU handed to the
    /// interpreter before that got the `in`'s ending applied to its state on its way back
    /// (RIP set past the old `in`): this guest then looped for ever in about half the runs.
    /// The fw_cfg rounds depend on timing, so the guest is run three times.
    @Test("io-interrupted.elf: I/O instructions an interrupt lands on run once, on every engine (on PVM's --backend kvm, the fallback's handoffs in the middle of an exit)",
          arguments: backends() + (canOpenKVM() ? [.hybrid] : []))
    func interruptedIO(backend: BackendKind) throws {
        for _ in 0..<3 {
            let r = try run("io-interrupted.elf", backend: backend, cpus: 1)
            #expect(r.status == 0, "output: \(r.output)")
            #expect(r.output == "abcdefghijklmnop\nipi=16 uart=17 fw_cfg=64 timer=63\n")
        }
    }

    @Test("guests that never reach user mode run on the interpreter alone under hybrid, with its output",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"),
          arguments: [("hello-elf64.elf", 4), ("smp-counter.elf", 4), ("paging64.elf", 1), ("apic-ipi.elf", 2), ("tasks.bin", 1), ("bcd16.bin", 1)])
    func kernelOnlyGuests(image: String, cpus: Int) throws {
        let interp = try run(image, backend: .interp, cpus: cpus)
        let hybrid = try run(image, backend: .hybrid, cpus: cpus)
        #expect(hybrid.status == interp.status)
        #expect(hybrid.output == interp.output)
        #expect(hybrid.statistics.engines?.switches == 0)
    }
}
