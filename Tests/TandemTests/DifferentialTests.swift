// tandem diff, tandem fuzz, traces, the host check and KVM's fallback to the interpreter.
import Differential
import Foundation
import Interpreter
import KVM
import Machine
import Tracing
import Testing
import X86

func diffGuest(_ name: String, steps: UInt64 = 2_000_000, inject: String? = nil, configure: (inout MachineConfiguration) -> Void = { _ in }) throws -> DifferentialRun.Outcome {
    var c = MachineConfiguration(imagePath: try guest(name))
    c.serial = .capture
    // A bound for a diff that would never end (its watchdog ends even a step at it).
    c.timeout = 600
    configure(&c)
    return try DifferentialRun(c, steps: steps, injectFault: inject).run()
}

@Suite("Differential testing", .serialized, .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
struct DifferentialTests {
    @Test("a diff of every other guest in Guests/ is clean and compares the whole run, to the guest's exit", arguments: [
        "hello-boot.bin", "hello-bios.rom", "hello-multiboot.elf", "hello-multiboot-aout.bin", "smc.elf",
        "bcd16.bin", "hello-elf64.elf", "exceptions32.elf", "paging64.elf", "longmode-switch.bin", "tasks.bin",
    ])
    func cleanDiff(_ name: String) throws {
        let outcome = try diffGuest(name)
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.report.hasPrefix("tandem diff: no divergence: all \(outcome.compared) instructions compared"), "\(outcome.report)")
        #expect(outcome.compared == outcome.ran && outcome.compared > 0)
        #expect(outcome.end == "the guest exited with status 0", "\(outcome.report)")
    }

    @Test("paging32 and v86 stop early on a PVM host, with their reason and how much was compared; on hardware KVM they compare whole",
          arguments: [("paging32.elf", "cannot enable legacy 32-bit paging at CPL 0"), ("v86.bin", "does not run virtual-8086 mode")])
    func stoppedEarlyDiff(_ name: String, _ reason: String) throws {
        let outcome = try diffGuest(name)
        if hostHasHardwareVirtualization() {
            #expect(outcome.status == 0, "\(outcome.report)")
            #expect(outcome.compared == outcome.ran)
            return
        }
        #expect(outcome.status == DifferentialRun.stoppedEarly, "\(outcome.report)")
        #expect(outcome.end.hasSuffix("host limitation: this host's KVM \(reason)"), "\(outcome.end)")
        // Part of the run was compared, and the rest was run (by the interpreter) and counted.
        #expect(outcome.compared > 0 && outcome.compared < outcome.ran, "\(outcome.report)")
        #expect(outcome.report.hasPrefix("tandem diff: stopped early: \(outcome.compared) of \(outcome.ran) instructions compared"), "\(outcome.report)")
        #expect(outcome.report.contains("the interpreter alone: the guest exited with status 0 after \(outcome.ran) instructions"), "\(outcome.report)")
    }

    @Test("an instruction neither side can execute stops the comparison early, and says which", .enabled(if: !hostHasHardwareVirtualization()))
    func neitherSideCanExecute() throws {
        // Real mode: CR4.OSFXSR on; sha1rnds4 (SHA: this host's KVM emulator cannot run it,
        // the interpreter does not implement it); hlt.
        let code: [UInt8] = [0x0F, 0x20, 0xE0, 0x66, 0x0D, 0x00, 0x02, 0x00, 0x00, 0x0F, 0x22, 0xE0, 0x0F, 0x3A, 0xCC, 0xC1, 0x00, 0xF4]
        var c = MachineConfiguration(imagePath: try writeScratchFile(code, name: "sha1rnds4.bin"))
        c.serial = .capture
        let outcome = try DifferentialRun(c, steps: 100).run()
        #expect(outcome.status == DifferentialRun.stoppedEarly, "\(outcome.report)")
        #expect(outcome.compared == 3 && outcome.ran == 4, "\(outcome.report)")
        #expect(outcome.end.hasPrefix("at step 3, sha1rnds4 xmm0, xmm1, 0: neither KVM nor the interpreter can execute it"), "\(outcome.end)")
    }

    @Test("smp-counter and loop32 stay in lockstep for their first 20,000 instructions")
    func longerGuests() throws {
        for name in ["smp-counter.elf", "loop32.elf"] {
            let outcome = try diffGuest(name, steps: 20_000)
            #expect(outcome.status == 0, "\(name): \(outcome.report)")
            #expect(outcome.compared == 20_000 && outcome.end == "--steps 20000 reached", "\(name): \(outcome.report)")
        }
    }

    @Test("usermode64 (own GDT/TSS/IDT/page tables, SYSCALL, INT 0x80, demand paging, exceptions and timer ticks at CPL 3, a 30 M-instruction hash in user mode) diffs clean to its exit; on PVM, where KVM's single step runs on natively in user mode, the interpreter catches up and the report counts it")
    func userModeDiff() throws {
        // The instruction clock: the guest's 1 ms ticks then land at the same places in its
        // kernel code on every run (on the host clock they come far more often per step).
        let outcome = try diffGuest("usermode64.elf", steps: 10_000_000) { $0.clock = .instructions }
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.end == "the guest exited with status 0", "\(outcome.report)")
        #expect(outcome.report.hasPrefix("tandem diff: no divergence: all \(outcome.compared) instructions compared"), "\(outcome.report)")
        // The kernel's 13,000 set-up instructions and every exception, system call and tick.
        #expect(outcome.compared > 13_000 && outcome.interrupts >= 5, "\(outcome.report)")
        #expect(outcome.ran == outcome.compared + outcome.caughtUpInstructions, "\(outcome.report)")
        if hostHasHardwareVirtualization() {
            #expect(outcome.catchUps == 0 && outcome.ran == outcome.compared, "\(outcome.report)")
            return
        }
        // 2,500,000 hash rounds of 12 instructions: most of them run on KVM natively and are
        // caught up with.
        #expect(outcome.catchUps > 0 && outcome.ran > 30_000_000, "\(outcome.report)")
        #expect(outcome.report.contains("caught up \(outcome.catchUps) times over \(outcome.caughtUpInstructions) instructions"), "\(outcome.report)")
        // The six system calls: executed by the interpreter for both sides.
        #expect(outcome.report.contains("host limitation (6x): this host's KVM carries out SYSCALL in 64-bit user mode"), "\(outcome.report)")
    }

    @Test("pit-rtc (PIT and RTC interrupts through the 8259A pair, real mode, waiting in HLT) diffs to its exit with every interrupt taken by both at the same instruction")
    func interruptDrivenRealMode() throws {
        let outcome = try diffGuest("pit-rtc.bin")
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.end == "the guest exited with status 0" && outcome.compared == outcome.ran, "\(outcome.report)")
        // 50 PIT ticks and 32 RTC periodic interrupts at least (more when interrupts pile up
        // while single-stepping on the host clock).
        #expect(outcome.interrupts >= 82, "\(outcome.report)")
        #expect(outcome.report.contains("\(outcome.interrupts) interrupts taken by both at the same instruction"), "\(outcome.report)")
    }

    @Test("LAPIC timer, IPI and x2APIC/TSC-deadline guests in long mode diff to their exits", arguments: ["apic-ipi.elf", "x2apic.elf", "idle.elf"])
    func interruptDrivenLongMode(_ name: String) throws {
        let outcome = try diffGuest(name)
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.end == "the guest exited with status 0" && outcome.compared == outcome.ran, "\(outcome.report)")
        #expect(outcome.interrupts >= 5, "\(outcome.report)")
    }

    @Test("uart-echo (COM1's receive interrupt through the IOAPIC) diffs to its exit, the input read once and replayed")
    func interruptDrivenSerialInput() throws {
        let outcome = try diffGuest("uart-echo.elf") { $0.input = .bytes(Array("hello, world. after".utf8)) }
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.end == "the guest exited with status 0" && outcome.interrupts >= 1, "\(outcome.report)")
    }

    @Test("with --clock instructions a diff with timer interrupts is reproducible, step for step")
    func deterministicClockDiff() throws {
        let runs = try (0..<2).map { _ in try diffGuest("apic-ipi.elf") { $0.clock = .instructions } }
        for r in runs { #expect(r.status == 0 && r.end == "the guest exited with status 0", "\(r.report)") }
        // 20 timer ticks and the broadcast IPI that includes itself.
        #expect(runs[0].interrupts == 21, "\(runs[0].report)")
        #expect(runs[0].compared == runs[1].compared && runs[0].interrupts == runs[1].interrupts, "\(runs.map(\.report))")
    }

    @Test("an interrupt replayed to the interpreter with the wrong vector is reported where it is taken")
    func wrongInterruptReplay() throws {
        let outcome = try diffGuest("pit-rtc.bin", inject: DifferentialRun.wrongVectorFault)
        #expect(outcome.status == 1, "\(outcome.report)")
        let lines = outcome.report.split(separator: "\n").map(String.init)
        // The step that diverges is the first interrupt: PIT IRQ 0 at vector 0x20.
        #expect(lines.count > 1 && lines[1].contains("external interrupt vector 0x20 at 0000:"), "\(outcome.report)")
        #expect(lines.contains { $0.hasPrefix("  rip") && $0.hasSuffix("<<<") }, "\(outcome.report)")
    }

    @Test("a flag bug planted in the interpreter is caught at the first instruction it affects, with the field marked")
    func injectedFault() throws {
        let outcome = try diffGuest("hello-multiboot.elf", inject: "add:cf")
        #expect(outcome.status == 1)
        let lines = outcome.report.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("tandem diff: divergence at step") == true, "\(outcome.report)")
        // The instruction named is an add, and only RFLAGS is marked.
        #expect(lines.count > 1 && lines[1].contains(" add "), "\(outcome.report)")
        let marked = lines.filter { $0.hasSuffix("<<<") }
        #expect(marked.count == 1 && marked[0].trimmingCharacters(in: .whitespaces).hasPrefix("rflags"), "\(marked)")
        // The kvm and interp values differ exactly in CF.
        let values = marked[0].split(separator: " ").compactMap { UInt64($0.dropFirst(2), radix: 16) }
        #expect(values.count == 2 && values[0] ^ values[1] == 1, "\(marked)")
        #expect(outcome.report.contains("previous instructions:"))
    }

    @Test("the same planted bug on a mnemonic the guest never runs changes nothing")
    func injectedFaultElsewhere() throws {
        let outcome = try diffGuest("hello-boot.bin", inject: "sbb:cf")
        #expect(outcome.status == 0, "\(outcome.report)")
        #expect(outcome.compared == outcome.ran && outcome.end == "the guest exited with status 0", "\(outcome.report)")
    }

    @Test("a small fixed-seed fuzz campaign is clean in every mode", arguments: FuzzMode.allCases)
    func fuzzCampaign(_ mode: FuzzMode) throws {
        var o = FuzzCampaign.Options()
        o.mode = mode
        o.seed = 20261125
        o.count = 300
        let s = try FuzzCampaign(o).run()
        #expect(s.sequences == 300)
        #expect(s.divergenceCount == 0, "\(s.divergences)")
    }

    @Test("a CF bug planted in the interpreter's shl is found by a fuzz campaign and shrunk to that shl")
    func fuzzFindsPlantedShiftBug() throws {
        var o = FuzzCampaign.Options()
        o.seed = 31
        o.count = 300
        let clean = try FuzzCampaign(o).run()
        #expect(clean.divergences["shl"] == nil, "\(clean.divergences)")
        o.injectFault = ("shl", 1)
        let planted = try FuzzCampaign(o).run()
        #expect((planted.divergences["shl"] ?? 0) > 0, "\(planted.divergences)")
        // Shrunk to the shl alone (after the mov cl, N that sets its count, for shl r/m, cl).
        let example = planted.examples["shl"] ?? []
        #expect(example.last?.contains("  shl ") == true, "\(example)")
        #expect(example.count == 1 || (example.count == 2 && example[0].contains("  mov cl, ")), "\(example)")
    }

    @Test("LOCKed read-modify-write loops on 2 vCPUs leave every shared counter at its exact expected value, on KVM and on the interpreter")
    func lockedFuzzCampaign() throws {
        var o = LockedFuzzCampaign.Options()
        o.seed = 2026
        o.cpus = 2
        o.iterations = 100_000
        let s = try LockedFuzzCampaign(o).run()
        // Every lockable mnemonic at every width it has.
        #expect(s.forms.count >= 100, "\(s.forms.sorted())")
        for m in ["add", "adc", "and", "btc", "btr", "bts", "cmpxchg", "cmpxchg8b", "cmpxchg16b", "dec", "inc", "neg", "not", "or", "sbb", "sub", "xor", "xadd", "xchg"] {
            #expect(s.forms.contains { $0.hasPrefix("lock \(m) ") || $0.hasPrefix("\(m) ") }, "\(m)")
        }
        #expect(s.problems.isEmpty, "\(s.problems)")
        #expect(s.kvmMismatches.isEmpty, "\(s.kvmMismatches)")
        #expect(s.interpreterMismatches.isEmpty, "\(s.interpreterMismatches)")
        #expect(s.engineDifferences.isEmpty, "\(s.engineDifferences)")
    }

    @Test("a fixed seed gives the same campaign")
    func fuzzDeterminism() throws {
        var o = FuzzCampaign.Options()
        o.seed = 99
        o.count = 50
        let a = try FuzzCampaign(o).run(), b = try FuzzCampaign(o).run()
        #expect(a.instructions == b.instructions)
        #expect(a.divergences == b.divergences)
    }
}

@Suite("Fuzz generator")
struct FuzzGeneratorTests {
    @Test("the fuzz opcode table accounts for every one-byte and 0F opcode Capstone decodes (generated or excluded with a reason)",
          arguments: [16, 32, 64])
    func opcodeTableComplete(_ bits: Int) {
        #expect(FuzzOpcodeTable.unaccounted(bits: bits) == [])
    }

    @Test("undefined flags depend on the shift count as the SDM says")
    func countDependentFlags() {
        let cf: UInt64 = 1, pf: UInt64 = 4, af: UInt64 = 0x10, zf: UInt64 = 0x40, sf: UInt64 = 0x80, of: UInt64 = 0x800
        // A masked count of 0 changes no flag; 32 is 0 for a 32-bit shift, not for a 64-bit one.
        #expect(UndefinedFlags.mask(for: "shl", operandBits: 32, count: 0) == 0)
        #expect(UndefinedFlags.mask(for: "shl", operandBits: 32, count: 32) == 0)
        #expect(UndefinedFlags.mask(for: "shl", operandBits: 64, count: 32) == af | of)
        // OF is defined for a count of 1 only; SHL/SHR lose CF from the operand width on, SAR does not.
        #expect(UndefinedFlags.mask(for: "shr", operandBits: 16, count: 1) == af)
        #expect(UndefinedFlags.mask(for: "shr", operandBits: 8, count: 8) == af | of | cf)
        #expect(UndefinedFlags.mask(for: "sar", operandBits: 8, count: 9) == af | of)
        #expect(UndefinedFlags.mask(for: "rcl", operandBits: 8, count: 1) == 0)
        #expect(UndefinedFlags.mask(for: "rol", operandBits: 8, count: 8) == of)
        // SHLD/SHRD above the operand width: every flag undefined.
        #expect(UndefinedFlags.mask(for: "shld", operandBits: 16, count: 17) == cf | of | sf | zf | af | pf)
        #expect(UndefinedFlags.mask(for: "shrd", operandBits: 16, count: 16) == af | of)
        // Not shifts: the count is irrelevant.
        #expect(UndefinedFlags.mask(for: "imul", operandBits: 32, count: nil) == sf | zf | af | pf)
        #expect(UndefinedFlags.mask(for: "bsr", operandBits: 32, count: nil) == cf | of | sf | af | pf)
    }
}

@Suite("Traces")
struct TraceTests {
    func trace(_ name: String, backend: BackendKind, format: TraceFormat, configure: (inout TraceOptions) -> Void = { _ in }) throws -> [String] {
        var options = TraceOptions(path: scratchPath("trace.\(format.rawValue)"))
        options.format = format
        configure(&options)
        let run = runGuest(try guest(name), backend: backend) { $0.trace = options }
        #expect(run.status == 0)
        return String(decoding: try readFileBytes(options.path), as: UTF8.self).split(separator: "\n").map(String.init)
    }

    func instructions(_ lines: [String]) throws -> [(String, String)] {
        try lines.compactMap { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            guard object?["type"] as? String == "insn" else { return nil }
            return (object?["rip"] as? String ?? "", object?["bytes"] as? String ?? "")
        }
    }

    @Test("JSONL traces: one object per line, with registers and memory accesses on the interpreter")
    func jsonl() throws {
        let lines = try trace("hello-boot.bin", backend: .interp, format: .jsonl)
        #expect(lines.count > 200)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        #expect(first?["type"] as? String == "insn")
        #expect(first?["rip"] as? String == "0x7c00")
        #expect(first?["mode"] as? String == "real")
        // lodsb reads memory: the record says where, physically too.
        let lods = try lines.first { $0.contains("\"asm\":\"lodsb") }.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let mem = (lods??["mem"] as? [[String: Any]])?.first
        #expect(mem?["op"] as? String == "R")
        #expect(mem?["size"] as? Int == 1)
        #expect(mem?["physical"] != nil)
        // Port output is recorded with its value.
        #expect(lines.contains { $0.contains("\"io\":[{\"dir\":\"out\",\"port\":\"0x3f8\"") })
    }

    @Test("a deterministic guest gives the same instruction sequence (RIP and bytes) on both backends",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func sameOnBothBackends() throws {
        for name in ["hello-boot.bin", "hello-multiboot.elf"] {
            let a = try instructions(try trace(name, backend: .interp, format: .jsonl))
            let b = try instructions(try trace(name, backend: .kvm, format: .jsonl))
            #expect(a.count == b.count, "\(name)")
            #expect(a.elementsEqual(b, by: { $0 == $1 }), "\(name)")
        }
    }

    @Test("exceptions and mode switches get records of their own")
    func events() throws {
        let lines = try trace("exceptions32.elf", backend: .interp, format: .jsonl)
        #expect(lines.contains { $0.contains("\"type\":\"exception\"") && $0.contains("\"vector\":0,") })
        #expect(lines.contains { $0.contains("\"type\":\"exception\"") && $0.contains("\"vector\":13,") && $0.contains("error_code") })
        let boot = try trace("hello-bios.rom", backend: .interp, format: .text)
        #expect(boot.contains { $0.contains("mode real -> prot") })
    }

    @Test("filters: range, from and count")
    func filters() throws {
        let ranged = try trace("hello-boot.bin", backend: .interp, format: .text) { $0.range = 0x7C00...0x7C10 }
        #expect(!ranged.isEmpty)
        #expect(ranged.allSatisfy { $0.contains("0000:0x7c0") || $0.contains("0000:0x7c10") })
        let counted = try trace("hello-boot.bin", backend: .interp, format: .text) { $0.from = 5; $0.count = 10 }
        #expect(counted.count == 10)
        #expect(counted.first?.hasPrefix("vcpu0 #5 ") == true)
    }

    @Test("--trace-last writes the ring only when the run ends badly")
    func flightRecorder() throws {
        let ok = try trace("hello-boot.bin", backend: .interp, format: .text) { $0.last = 5 }
        #expect(ok.isEmpty)
        var options = TraceOptions(path: scratchPath("last.txt"))
        options.last = 5
        let run = try runImage([0x0F, 0x0B] + [UInt8](repeating: 0, count: 16), backend: .interp, name: "ud.bin") {
            // #UD in real mode through an IVT of zeros: runs into garbage until the limit.
            $0.trace = options
            $0.maxInstructions = 50
        }
        #expect(run.status != 0)
        let lines = String(decoding: try readFileBytes(options.path), as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 5)
    }

    @Test("--trace-exits records exits without single-stepping")
    func exits() throws {
        let lines = try trace("hello-boot.bin", backend: .interp, format: .jsonl) { $0.exitsOnly = true }
        #expect(lines.allSatisfy { $0.contains("\"type\":\"exit\"") })
        #expect(lines.contains { $0.contains("\"exit\":\"io-out\"") && $0.contains("\"port\":\"0x3f8\"") })
        #expect(lines.count < 100)
    }
}

@Suite("Host check and fallback")
struct HostAndFallbackTests {
    @Test("tandem check's verdict for a path that is not a KVM device")
    func checkWithoutKVM() {
        let check = HostCheck(devicePath: "/dev/null")
        #expect(check.kind == .unavailable)
        #expect(check.verdict == .noKVM)
        #expect(check.openError?.contains("not a KVM device") == true)
        #expect(check.autoChoice.hasPrefix("interp"))
        let missing = HostCheck(devicePath: "/nonexistent/kvm")
        #expect(missing.openError?.contains("does not exist") == true)
    }

    @Test("tandem check on this host", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func checkWithKVM() {
        let check = HostCheck(devicePath: KVMDevice.defaultPath)
        #expect(check.apiVersion == 12)
        #expect(check.calibrationRate != nil)
        if hostHasHardwareVirtualization() { #expect(check.kind == .hardware) } else { #expect(check.kind == .emulated) }
        #expect(check.capabilities.contains { $0.name == "KVM_CAP_IMMEDIATE_EXIT" && $0.value > 0 })
    }

    @Test("--backend auto uses the interpreter where KVM cannot be opened")
    func autoFallsBack() throws {
        let run = runGuest(try guest("hello-boot.bin"), backend: .auto) { $0.kvmDevicePath = "/dev/null" }
        #expect(run.output == "Hello from real mode!\n")
        #expect(run.status == 0)
    }

    @Test("BCD and protected-mode iret complete on --backend kvm: the interpreter takes what KVM cannot emulate",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func fallback() throws {
        var c = MachineConfiguration(imagePath: try guest("exceptions32.elf"))
        c.backend = .kvm
        c.serial = .capture
        c.timeout = 60
        let machine = try Machine(c)
        let outcome = machine.run()
        let interp = runGuest(try guest("exceptions32.elf"), backend: .interp)
        if hostHasHardwareVirtualization() {
            #expect(outcome.status == 0)
        } else {
            // Here KVM's emulator fails on iretd, bound, into, int3: each is handed over.
            #expect(outcome.statistics.handoffs > 0)
            #expect(outcome.statistics.fallbackInstructions >= UInt64(outcome.statistics.handoffs))
            // Up to the INT 0x80 at CPL 3 this host turns into #UD, the outputs agree.
            let prefix = interp.output.components(separatedBy: "exception 13").first ?? ""
            #expect(machine.capturedOutput.hasPrefix(prefix), "\(machine.capturedOutput)")
        }
        let bcd = runGuest(try guest("smc.elf"), backend: .kvm)
        #expect(bcd.status == 0)
    }
}
