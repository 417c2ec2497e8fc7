#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Machine
import VCPURuntime
import Testing

/// Guests KVM runs wrongly on a PVM host whatever the switching (Documentation/HostLimitations.md:
/// the host kernel's emulator), so the instruction that decides their output gives another
/// result whenever it lands on KVM. They are compared only where KVM has VMX/SVM.
private let wrongOnPVM: Set<String> = [
    "bcd16.bin",        // AAM/AAD flags
    "exceptions32.elf", // int n at CPL 3 in 32-bit code raises #UD
    "paging32.elf",     // enabling legacy paging faults
    "v86.bin",          // virtual-8086 mode
    "usermode64.elf",   // SYSCALL from user mode: PVM jumps to LSTAR at CPL 3
    "smp-locks.elf",    // LOCK ADC/SBB are not atomic in the emulator (fails on --backend kvm alone too)
]

/// `output` with the RTC's date and time (pit-rtc prints it) masked: two runs may read the
/// clock a second apart; and idle's "cpuN ticks=T ms=M" as whether it took all 2,000 ticks
/// in at least 1,999 ms (a burst may run past 2,000; M is the run's own time).
private func withoutClockReading(_ output: String) -> String {
    output.split(separator: "\n", omittingEmptySubsequences: false).map { line in
        if line.hasPrefix("rtc: 20") && line.count == "rtc: 2026-11-30 07:59:56".count { return "rtc: (date and time)" }
        let fields = line.split(separator: " ")
        if fields.count == 3, fields[0].hasPrefix("cpu"), fields[1].hasPrefix("ticks="), fields[2].hasPrefix("ms="),
           let ticks = Int(fields[1].dropFirst(6)), let ms = Int(fields[2].dropFirst(3)) {
            return "\(fields[0]) " + (ticks >= 2000 && ms >= 1999 ? "all ticks" : "ticks=\(ticks) ms=\(ms)")
        }
        return String(line)
    }.joined(separator: "\n")
}

@Suite("Engine switching: vCPUs moving between KVM and the interpreter while the guest runs",
       .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"), .serialized)
struct SwitchingTests {
    /// Every guest in Guests/ (but the two benchmarks, and io-interrupted.elf: its 12 M
    /// instructions of spinning between rounds, there to outlast the KVM fallback's
    /// stretches, would be half single-stepped on KVM: hours), with the vCPUs it is run with.
    static let guests: [(String, Int)] = [
        ("acpi-cpus.elf", 2), ("apic-ipi.elf", 2), ("c-compute.elf", 1), ("c-compute-387.elf", 1), ("exceptions32.elf", 1),
        ("gdb-target.elf", 1), ("hello-elf64.elf", 2), ("hello-multiboot.elf", 1), ("idle.elf", 2), ("paging32.elf", 1),
        ("paging64.elf", 1), ("smc.elf", 1), ("smp-boot.elf", 2), ("smp-counter.elf", 2), ("smp-locks.elf", 2),
        ("smp-xmc.elf", 2), ("timer-poll.elf", 1), ("timer-rate.elf", 1), ("uart-echo.elf", 1), ("usermode64.elf", 1),
        ("x2apic.elf", 2), ("bcd16.bin", 1), ("hello-boot.bin", 1), ("hello-multiboot-aout.bin", 1),
        ("longmode-switch.bin", 1), ("pit-rtc.bin", 1), ("tasks.bin", 1), ("v86.bin", 1), ("hello-bios.rom", 1),
        ("tsc-wait.bin", 1),
    ]

    static var compared: [(String, Int)] {
        hostHasHardwareVirtualization() ? guests : guests.filter { !wrongOnPVM.contains($0.0) }
    }

    @Test("every guest, moved every 1000 instructions (starting on either engine), prints what the interpreter alone prints",
          arguments: compared)
    func everyGuest(image: String, cpus: Int) throws {
        let path = try guest(image)
        let alone = runGuest(path, backend: .interp, cpus: cpus, timeout: 120)
        for start in [BackendKind.interp, .kvm] {
            let switched = runGuest(path, backend: start, cpus: cpus, timeout: 120) { $0.switchEvery = .instructions(1000) }
            #expect(switched.status == alone.status, "starting on \(start): \(switched.message ?? "")")
            #expect(withoutClockReading(switched.output) == withoutClockReading(alone.output), "starting on \(start)")
        }
    }

    @Test("a long guest moved every 5 ms (time slices): loop32's 80 M instructions")
    func timeSlices() throws {
        let path = try guest("loop32.elf")
        let alone = runGuest(path, backend: .interp)
        var statistics: RunStatistics?
        var c = MachineConfiguration(imagePath: path)
        c.backend = .interp
        c.serial = .capture
        c.input = .none()
        c.timeout = 120
        c.switchEvery = .seconds(0.005)
        let machine = try Machine(c)
        let outcome = machine.run()
        statistics = outcome.statistics
        #expect(outcome.status == alone.status)
        #expect(machine.capturedOutput == alone.output)
        let engines = try #require(statistics?.engines)
        #expect(engines.switches >= 2, "\(engines.switches) switches")
        #expect(engines.kvmSeconds > 0 && engines.interpreterSeconds > 0)
    }

    @Test("Machine.switch(vcpu:to:) moves one vCPU of a running machine there and back; engine(of:) follows")
    func switchAPI() throws {
        let path = try guest("smp-counter.elf")
        let alone = runGuest(path, backend: .interp, cpus: 2)
        let seen = Recorder<Engine>()
        let run = runGuest(path, backend: .kvm, cpus: 2, timeout: 120) { _ in } prepare: { machine in
            #expect(machine.canSwitchEngines)
            #expect(throws: MachineError.self) { try machine.switch(vcpu: 2, to: .interp) }
            Thread.detachNewThread {
                for target in [Engine.interp, .kvm, .interp] {
                    try? machine.switch(vcpu: 1, to: target)
                    for _ in 0..<200 where machine.engine(of: 1) != target { usleep(1_000) }
                    seen.append(machine.engine(of: 1))
                }
            }
        }
        #expect(run.status == alone.status)
        #expect(run.output == alone.output)
        // (The guest may end before all three moves: those it saw must be where they were asked.)
        for (i, engine) in seen.all.enumerated() { #expect(engine == [Engine.interp, .kvm, .interp][i]) }
    }

    @Test("the hybrid engine and an interpreter machine without KVM cannot be switched")
    func notSwitchable() throws {
        let path = try guest("hello-elf64.elf")
        var c = MachineConfiguration(imagePath: path)
        c.backend = .interp
        c.serial = .capture
        let machine = try Machine(c)
        #expect(!machine.canSwitchEngines)
        #expect(throws: MachineError.self) { try machine.switch(vcpu: 0, to: .kvm) }
        c.backend = .hybrid
        c.switchEvery = .instructions(10)
        #expect(throws: MachineError.self) { _ = try Machine(c) }
    }

    @Test("SIGUSR1 flips every vCPU of a running `tandem run --backend kvm`, and --stats counts the switches",
          .enabled(if: haveBinary, "no .build/release/tandem"))
    func flipSignal() throws {
        let path = try guest("loop32.elf")
        let alone = try runProcess(tandemBinary, ["run", "--backend", "interp", "--quiet", path])
        // A SIGUSR1 that comes before the machine runs is ignored (nothing to flip yet), and
        // on a loaded host starting up can take more than a second: signal on, every 0.3 s
        // for up to 6 s, while the run lasts (on PVM's KVM alone it takes ~30 s; once on
        // the interpreter, about one).
        let r = try runProcess(tandemBinary, ["run", "--backend", "kvm", "--stats", path]) { process in
            for _ in 0..<20 where process.isRunning {
                usleep(300_000)
                kill(process.processIdentifier, SIGUSR1)
            }
        }
        #expect(r.status == alone.status)
        #expect(r.stdout == alone.stdout)
        let line = try #require(r.stderr.split(separator: "\n").first { $0.contains("stats:") })
        #expect(line.contains("engine switches") && !line.contains(" 0 engine switches"), "\(line)")
    }

    @Test("bad --switch-every values and combinations: a usage error", .enabled(if: haveBinary, "no .build/release/tandem"))
    func usage() throws {
        let path = try guest("hello-elf64.elf")
        for args in [["--switch-every", "0"], ["--switch-every", "5x"], ["--switch-every", "0.1ms"],
                     ["--switch-every", "100", "--backend", "hybrid"], ["--switch-every", "100", "--max-instructions", "5"]] {
            let r = try runProcess(tandemBinary, ["run"] + args + [path])
            #expect(r.status == 200, "\(args): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
        }
    }
}
