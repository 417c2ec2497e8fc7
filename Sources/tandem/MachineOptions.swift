#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import Devices
import Differential
import Loaders
import Machine
import X86

/// The options that describe a machine and its image, shared by `run` and `diff`.
struct MachineOptions: ParsableArguments {
    @Option(help: "Number of vCPUs (1-\(MachineConfiguration.maxCPUs)); each is a host thread named vcpuN.")
    var cpus: Int = 1

    @Option(help: "Guest RAM, e.g. 128M, 4G, 64G (reserved lazily: untouched pages cost nothing).")
    var mem: String = "128M"

    @Option(help: "Image format: auto, boot, bios, multiboot, elf64, linux.")
    var format: ImageFormat = .auto

    @Option(help: "Where COM1 and port 0xE9 output goes: stdio, file:PATH, none.")
    var serial: String = "stdio"

    @Option(help: "The kernel command line (Multiboot or Linux); --append is the same option.")
    var cmdline: String?

    @Option(help: "The kernel command line, as QEMU names it: the same as --cmdline.")
    var append: String?

    @Option(help: ArgumentHelp("A Linux initrd (initramfs) for a linux image.", valueName: "file"))
    var initrd: String?

    @Option(name: .customLong("module"), help: "Multiboot module: \"PATH [ARGS]\" (repeatable).")
    var modules: [String] = []

    @Option(help: "KVM device path (default /dev/kvm, or $TANDEM_KVM_DEVICE).")
    var kvmDevice: String?

    @Option(help: ArgumentHelp("The CPU the guest sees (CPUID, model MSRs): \(MachineCPU.usage).", valueName: "name"))
    var cpuModel: String = CPUModel.default.name

    @Option(help: "The interpreter's translator: on (hot traces of 32- and 64-bit code run as host code) or off (every instruction interpreted).")
    var translate: Toggle = .on

    @Argument(help: "The guest image (none with run --restore).")
    var image: String?

    func validate() throws {
        guard let size = parseMemorySize(mem) else { throw ValidationError("--mem '\(mem)' is not a size like 128M or 64G") }
        // Guest RAM is mapped (and given to KVM as memslots) in whole host pages.
        guard size % 4096 == 0 else { throw ValidationError("--mem \(size) bytes is not a whole number of 4 KiB pages") }
        _ = try serialSink()
        if let cmdline, let append, cmdline != append {
            throw ValidationError("--cmdline and --append are the same option (the kernel command line); give one")
        }
        guard CPUModel.named(cpuModel) != nil else {
            throw ValidationError("--cpu-model '\(cpuModel)' is not one of \(CPUModel.catalogue.map(\.name).joined(separator: ", "))")
        }
    }

    enum Toggle: String, ExpressibleByArgument { case on, off }

    func serialSink() throws -> Console.Sink {
        switch serial {
        case "stdio": return .stdout
        case "none": return .none
        case let s where s.hasPrefix("file:") && s.count > 5: return .file(String(s.dropFirst(5)))
        default: throw ValidationError("--serial '\(serial)' must be stdio, file:PATH or none")
        }
    }

    func configuration() throws -> MachineConfiguration {
        var c = MachineConfiguration(imagePath: image ?? "")
        c.cpus = cpus
        c.memorySize = parseMemorySize(mem)!
        c.format = format
        c.serial = try serialSink()
        c.input = c.serial == .stdout ? .stdin() : .none()
        c.commandLine = append ?? cmdline ?? ""
        c.initrdPath = initrd
        c.modules = modules
        c.cpuModel = cpuModel
        c.translate = translate == .on
        c.kvmDevicePath = kvmDevice ?? getenv("TANDEM_KVM_DEVICE").map { String(cString: $0) } ?? c.kvmDevicePath
        return c
    }
}

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an image on KVM (single-stepped) and on the interpreter in lockstep; report the first divergence.",
        discussion: """
        Each side has its own copy of guest memory; one device model answers both (a port \
        or MMIO read happens once, on KVM, and its value is replayed to the interpreter). \
        After every instruction the CPU state (undefined flags masked) and the memory the \
        instruction wrote are compared. Exit status: 0 no divergence over the whole run, \
        1 a divergence (with a report), 2 stopped early (no divergence in what was \
        compared, but this host's KVM cannot follow the guest, or neither side can run an \
        instruction: the report says how many of the run's instructions were compared, and \
        why), or one of `tandem run`'s statuses when the machine cannot be built. \
        Instructions this host's KVM cannot run are executed by the interpreter for both \
        sides and listed as host limitations, not divergences. \
        Interrupts: both sides run on the machine's interrupt controllers and timers; KVM \
        takes each interrupt, and the interpreter is given the same vector at the same \
        instruction boundary (the report shows it before the handler's first instruction). \
        With --clock host, time runs while the guest is single-stepped, so interrupts come \
        many times more often per instruction than in `tandem run`; --clock instructions \
        (1 ns per instruction, HLT skips to the next timer) makes a diff reproducible, \
        step for step, but a guest that polls a timer then runs for many instructions.
        """
    )

    @OptionGroup var machine: MachineOptions

    @Option(help: "Compare at most this many instructions.")
    var steps: UInt64 = 1_000_000

    @Option(help: "Machine time: host (the host's monotonic clock) or instructions (1 ns per instruction: interrupts land on the same step in every diff).")
    var clock: ClockKind = .host

    @Option(help: "Stop after this many seconds (status 206).")
    var timeout: Double?

    func validate() throws {
        if machine.image == nil { throw ValidationError("Missing expected argument '<image>'") }
        if steps == 0 { throw ValidationError("--steps must be at least 1") }
        if let timeout, !(timeout > 0 && timeout <= MachineConfiguration.maxTimeout) {
            throw ValidationError("--timeout must be a positive number of seconds, at most \(Int(MachineConfiguration.maxTimeout))")
        }
    }

    @Option(help: "Testing aid: plant a bug in the interpreter, MNEMONIC:FLAG (e.g. add:cf), or irq:vector (replay each interrupt KVM takes with the next vector); or $TANDEM_INJECT_FAULT.")
    var injectFault: String?

    func run() throws {
        let started = DispatchTime.now()
        StopSignals.arm(timeout: timeout)
        var c = try machine.configuration()
        c.started = started
        c.clock = clock
        c.timeout = timeout
        let fault = injectFault ?? getenv("TANDEM_INJECT_FAULT").map { String(cString: $0) }
        let diff: DifferentialRun
        do { diff = try DifferentialRun(c, steps: steps, injectFault: fault) } catch {
            throw Failure(status: error.status.rawValue, message: error.description)
        }
        let outcome = diff.run()
        if outcome.status == 0 || outcome.status == DifferentialRun.stoppedEarly { print(outcome.report) } else { printError(outcome.report) }
        throw ExitCode(outcome.status)
    }
}

extension FuzzMode: ExpressibleByArgument {}

struct Fuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run random instruction sequences on KVM and on the interpreter and compare them.",
        discussion: """
        Each sequence runs in a sandbox guest from a random register and memory state; the \
        final states and memory are compared. Divergences are shrunk to the fewest \
        instructions that still diverge and saved in --out as a runnable image plus JSON. \
        user64 runs at CPL 3 in 64-bit mode, which KVM executes natively even on PVM hosts. \
        A fixed seed gives the same campaign. Exit status: 0 no divergence, 1 divergences. \
        With --cpus N (N > 1): every LOCKable form in a loop (--count iterations) on N vCPUs, \
        on shared counters whose final values are known exactly; 1 when a counter is wrong.
        """
    )

    @Option(help: "user64, long64, prot32 or real16.")
    var mode: FuzzMode = .user64

    @Option(help: "Campaign seed.")
    var seed: UInt64 = 1

    @Option(help: "Number of sequences (1-\(Self.maxCount)).")
    var count: Int = 1000

    @Option(help: "With N > 1: LOCKed read-modify-write loops on shared counters on N vCPUs (--count: loop iterations per vCPU).")
    var cpus: Int = 1

    @Option(help: "Testing aid: plant a bug in the interpreter, MNEMONIC:FLAG (e.g. shl:cf), or $TANDEM_INJECT_FAULT; the interpreter is then single-stepped.")
    var injectFault: String?

    @Option(help: "With --cpus: only this LOCKed form, as the summary names it (e.g. \"lock inc m32\"); repeatable.")
    var only: [String] = []
    static let maxCount = 1_000_000_000

    @Option(help: "Where to save reproducers (created if missing).")
    var out: String?

    @Option(help: "KVM device path.")
    var kvmDevice: String?

    func validate() throws {
        guard (1...Self.maxCount).contains(count) else { throw ValidationError("--count must be between 1 and \(Self.maxCount), not \(count)") }
        guard (1...256).contains(cpus) else { throw ValidationError("--cpus must be between 1 and 256, not \(cpus)") }
    }

    func run() throws {
        if cpus > 1 { return try runLocked() }
        var o = FuzzCampaign.Options()
        o.mode = mode
        o.seed = seed
        o.count = count
        o.outputDirectory = out
        if let fault = injectFault ?? getenv("TANDEM_INJECT_FAULT").map({ String(cString: $0) }) {
            guard let (mnemonic, bit) = DifferentialRun.parseFault(fault) else {
                throw Failure(status: ExitStatus.usage.rawValue, message: "fault injection '\(fault)' must be MNEMONIC:FLAG, e.g. shl:cf")
            }
            o.injectFault = (mnemonic, bit)
        }
        o.kvmDevicePath = kvmDevice ?? getenv("TANDEM_KVM_DEVICE").map { String(cString: $0) } ?? o.kvmDevicePath
        let campaign: FuzzCampaign
        do { campaign = try FuzzCampaign(o) } catch {
            throw Failure(status: error.status.rawValue, message: error.description)
        }
        let s = campaign.run { n, s in printError("fuzz: \(n)/\(o.count) sequences, \(s.divergenceCount) divergences") }
        print("fuzz: mode \(mode.rawValue), seed \(seed): \(s.sequences) sequences, \(s.instructions) instructions, \(s.divergenceCount) divergences, \(s.hostLimited.values.reduce(0, +)) host-limited, \(String((s.seconds * 10).rounded() / 10)) s")
        print("  coverage: \(s.mnemonics.count) mnemonics, \(s.forms.count) forms (opcode, operand kinds, size), \(s.flagComparisons) RFLAGS comparisons")
        for (m, n) in s.divergences.sorted(by: { $0.value > $1.value }) { print("  divergence \(m): \(n)") }
        for (m, n) in s.hostLimited.sorted(by: { $0.key < $1.key }) { print("  host limitation (\(n)x): \(m)") }
        for r in s.reproducers { print("  reproducer: \(r)") }
        if let (status, line) = s.stoppedEarly {
            throw Failure(status: status, message: "\(line) after \(s.sequences) of \(count) sequences")
        }
        if s.divergenceCount > 0 { throw ExitCode(1) }
    }

    func runLocked() throws {
        guard mode == .user64 else { throw Failure(status: ExitStatus.usage.rawValue, message: "tandem fuzz --cpus runs in --mode user64 (CPL 3, native under KVM)") }
        var o = LockedFuzzCampaign.Options()
        o.seed = seed
        o.cpus = cpus
        o.iterations = count
        o.onlyForms = Set(only)
        o.kvmDevicePath = kvmDevice ?? getenv("TANDEM_KVM_DEVICE").map { String(cString: $0) } ?? o.kvmDevicePath
        let campaign: LockedFuzzCampaign
        do { campaign = try LockedFuzzCampaign(o) } catch {
            throw Failure(status: error.status.rawValue, message: error.description)
        }
        let s = campaign.run()
        if !only.isEmpty && s.forms.count != Set(only).count {
            throw Failure(status: ExitStatus.usage.rawValue, message: "--only: unknown forms \(Set(only).subtracting(s.forms).sorted())")
        }
        print("fuzz: --cpus \(cpus), seed \(seed): \(s.forms.count) LOCKed forms on \(s.counters) shared counters, \(count) iterations per vCPU, \(String((s.seconds * 10).rounded() / 10)) s")
        for p in s.problems { print("  run did not complete: \(p)") }
        for m in s.kvmMismatches { print("  kvm wrong: \(m)") }
        for m in s.interpreterMismatches { print("  interpreter wrong: \(m)") }
        for d in s.engineDifferences { print("  engines differ: \(d)") }
        if s.failed { throw ExitCode(1) }
        print("  every counter has its expected value on both engines")
    }
}
