#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import Devices
import GDBStub
import Loaders
import Machine
import Tracing
import X86

/// The `tandem` command line.
@main
struct Tandem: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem",
        abstract: "An x86 guest emulator: one guest image, on KVM or on an interpreter.",
        subcommands: [Run.self, Diff.self, Fuzz.self, Check.self, ConformanceCommand.self, TraceCommand.self]
    )

    /// Parses and runs, mapping every usage error to status 200 (the guest contract
    /// keeps 200-254 for Tandem's own statuses) and help to status 0.
    static func main() {
        occupyClosedStandardDescriptors()
        // Before parsing: a signal at any moment ends the process the documented way.
        StopSignals.install()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if let exit = error as? ExitCode, exit != .validationFailure { terminate(exit.rawValue) }
            if code == .success {
                print(fullMessage(for: error))
                terminate(0)
            }
            if let failure = error as? Failure {
                printError("tandem: \(failure.message)\n")
                terminate(failure.status)
            }
            // One line, as the guest contract asks of every failure report.
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            printError("tandem: \(message) (see 'tandem help')\n")
            terminate(ExitStatus.usage.rawValue)
        }
    }
}

/// A failure with its own exit status, reported in one line.
struct Failure: Error {
    var status: Int32
    var message: String
}

extension ImageFormat: ExpressibleByArgument {}
extension BackendKind: ExpressibleByArgument {}
extension TraceFormat: ExpressibleByArgument {}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest image.",
        discussion: """
        Exit status: the guest's own (a value written to port 0xF4, & 0xFF); 0 when every \
        vCPU halted with nothing to wake it; or one of Tandem's: \
        \(ExitStatus.allCases.map { "\($0.rawValue) \($0.meaning)" }.joined(separator: "; ")).
        """
    )

    @Option(help: "Execution backend: auto (KVM if it opens, else the interpreter), kvm, interp, hybrid (64-bit user mode on KVM, the rest on the interpreter).")
    var backend: BackendKind = .auto

    @OptionGroup var machine: MachineOptions

    @Option(help: "Stop the guest after this many seconds (status 206).")
    var timeout: Double?

    @Option(help: "Stop each vCPU after this many instructions (status 207; interpreter only).")
    var maxInstructions: UInt64?

    @Option(help: "Machine time: host (the host's monotonic clock) or instructions (1 ns per retired instruction, so timer interrupts land on the same instruction every run; interpreter only).")
    var clock: ClockKind = .host

    @Flag(help: "Print run statistics (backend, seconds, instructions) on stderr at the end.")
    var stats = false

    @Option(help: "Write an instruction trace to this file (KVM single-steps the guest; the interpreter records as it runs).")
    var trace: String?

    @Option(help: "Trace format: text (QEMU -d in_asm,cpu style), jsonl (one JSON object per line) or bin (compact binary; read it with tandem trace).")
    var traceFormat: TraceFormat = .text

    @Flag(help: "Trace only VM exits, at full speed (no single-stepping).")
    var traceExits = false

    @Option(help: "Trace only instructions with RIP in START-END (hex).")
    var traceRange: String?

    @Option(help: "Trace from this sequence number on.")
    var traceFrom: UInt64 = 0

    @Option(help: "Trace at most this many records, then run at full speed.")
    var traceCount: UInt64?

    @Option(help: "Keep the last N records in memory; write them only if the run ends with a nonzero status.")
    var traceLast: Int?

    @Flag(help: "Do not say which backend --backend auto chose.")
    var quiet = false

    @Option(help: ArgumentHelp("Serve the GDB remote protocol on tcp:[HOST:]PORT (HOST: 127.0.0.1 by default; PORT 0: any free port, named on stderr).", valueName: "tcp:[host:]port"))
    var gdb: String?

    @Flag(help: "With --gdb: stop every vCPU before its first instruction until gdb resumes it.")
    var gdbWait = false

    @Option(help: ArgumentHelp("Write a snapshot of the whole machine to this file when the run stops, and on SIGUSR2 while it runs (Documentation/Snapshots.md).", valueName: "file"))
    var snapshotOnExit: String?

    @Option(help: ArgumentHelp("Move every vCPU between KVM and the interpreter, for testing: N instructions on the interpreter and N single-steps on KVM, or a time (e.g. 5ms, 0.5s) on each (Documentation/Switching.md). SIGUSR1 flips the engines of any KVM machine.", valueName: "n|time"))
    var switchEvery: String?

    @Option(help: ArgumentHelp("Rebuild the machine from this snapshot, instead of an image, and continue the guest (on either backend; status 214 when the file cannot be used).", valueName: "file"))
    var restore: String?

    @Option(help: ArgumentHelp("How late periodic timer ticks may come — a local APIC timer in periodic mode (to a halted vCPU), PIT channel 0 in modes 2 and 3, the RTC's periodic interrupt: 0 (on time) or a time with a unit, e.g. 10ms (at most 100ms). Tandem then wakes at multiples of that time and the ticks that fell due meanwhile come one after another, none lost, so an idle guest costs fewer host wake-ups (Documentation/Platform.md).", valueName: "time"))
    var timerSlack: String = "0"

    @Option(help: "What a reset by the guest (port 0xCF9, the i8042, a triple fault) does: exit (the run ends: status 212, a triple fault 204) or restart (the guest starts again from its image in a fresh machine: clean RAM, the CMOS RAM and the console carried over).")
    var reboot: RebootAction = .exit

    func traceOptions() throws -> TraceOptions? {
        guard let trace else {
            if traceExits || traceRange != nil || traceCount != nil || traceLast != nil || traceFrom != 0 {
                throw ValidationError("the --trace-* options need --trace FILE")
            }
            return nil
        }
        var o = TraceOptions(path: trace)
        o.format = traceFormat
        o.exitsOnly = traceExits
        o.from = traceFrom
        o.count = traceCount
        if let last = traceLast {
            guard (1...MachineConfiguration.maxTraceLast).contains(last) else {
                throw ValidationError("--trace-last must be between 1 and \(MachineConfiguration.maxTraceLast)")
            }
            o.last = last
        }
        if let range = traceRange { o.range = try parseRange(range, option: "--trace-range") }
        return o
    }

    /// `--timer-slack` in nanoseconds, nil when it is not 0 or a time up to the limit.
    var timerSlackNanoseconds: UInt64? {
        if timerSlack == "0" { return 0 }
        guard let seconds = parseDuration(timerSlack), seconds * 1e9 <= Double(MachineConfiguration.maxTimerSlack) else { return nil }
        return UInt64((seconds * 1e9).rounded())
    }

    func validate() throws {
        _ = try traceOptions()
        if let timeout, !(timeout > 0 && timeout <= MachineConfiguration.maxTimeout) {
            throw ValidationError("--timeout must be a positive number of seconds, at most \(Int(MachineConfiguration.maxTimeout))")
        }
        if maxInstructions == 0 { throw ValidationError("--max-instructions must be at least 1") }
        if traceCount == 0 { throw ValidationError("--trace-count must be at least 1") }
        if let gdb, GDBOptions.parse(gdb) == nil {
            throw ValidationError("--gdb '\(gdb)' must be tcp:[HOST:]PORT, e.g. tcp:1234 or tcp:127.0.0.1:1234 (HOST a numeric IPv4 address)")
        }
        if let switchEvery, SwitchInterval(parsing: switchEvery) == nil {
            throw ValidationError("--switch-every '\(switchEvery)' must be a number of instructions (at least 1) or a time with a unit, ms or s (at least 1ms)")
        }
        if timerSlackNanoseconds == nil {
            throw ValidationError("--timer-slack '\(timerSlack)' must be 0 or a time with a unit, us, ms or s (at most 100ms)")
        }
        if gdbWait && gdb == nil { throw ValidationError("--gdb-wait needs --gdb tcp:[HOST:]PORT") }
        if restore == nil && machine.image == nil { throw ValidationError("Missing expected argument '<image>'") }
        if reboot == .restart {
            // Each boot is a new machine: a debugger, a trace file or a snapshot to resume
            // would each be about one boot only.
            for (name, given) in [("--restore", restore != nil), ("--gdb", gdb != nil), ("--trace", trace != nil)] where given {
                throw ValidationError("--reboot restart starts a new machine at each reset: \(name) cannot be given with it")
            }
        }
        if restore != nil {
            // The snapshot describes the machine: options that would describe another are refused.
            let m = machine
            let given = [("<image>", m.image != nil), ("--cpus", m.cpus != 1), ("--mem", m.mem != "128M"), ("--format", m.format != .auto),
                         ("--cmdline", m.cmdline != nil), ("--append", m.append != nil), ("--initrd", m.initrd != nil),
                         ("--module", !m.modules.isEmpty), ("--cpu-model", m.cpuModel != CPUModel.default.name), ("--clock", clock != .host)]
            if let (name, _) = given.first(where: { $0.1 }) {
                throw ValidationError("--restore takes the machine from the snapshot: \(name) cannot be given with it")
            }
        }
    }

    func run() throws {
        // First, before any file is opened: a FIFO or a slow disk must not outlast --timeout.
        let started = DispatchTime.now()
        StopSignals.arm(timeout: timeout)
        var c = try machine.configuration()
        c.started = started
        c.backend = backend
        c.timeout = timeout
        c.maxInstructions = maxInstructions
        c.clock = clock
        c.trace = try traceOptions()
        c.announceBackend = !quiet
        c.gdb = gdb.flatMap(GDBOptions.parse)
        c.gdb?.waitForDebugger = gdbWait
        c.snapshotPath = snapshotOnExit
        c.switchEvery = switchEvery.flatMap(SwitchInterval.init(parsing:))
        c.timerSlack = timerSlackNanoseconds ?? 0
        if let restore {
            do { c = c.restoring(try SnapshotFile.read(from: restore)) } catch {
                throw Failure(status: ExitStatus.badSnapshot.rawValue, message: error.description)
            }
        }
        var boot = 1
        var cmosRAM: [UInt8]? = nil
        while true {
            let vm: Machine
            do { vm = try Machine(c) } catch {
                throw Failure(status: error.status.rawValue, message: error.description)
            }
            if let cmosRAM { vm.devices.rtc.restoreCMOSRAM(cmosRAM) }
            if backend == .auto && !quiet && boot == 1 {
                let why = vm.backendNote.map { " (\($0))" } ?? ""
                printError("tandem: --backend auto chose \(vm.backendName)\(why)")
            }
            if let port = vm.gdbPort, let gdb = c.gdb {
                printError("tandem: gdb stub listening on tcp:\(gdb.host):\(port)\(gdb.waitForDebugger ? "; the guest waits for gdb (--gdb-wait)" : "")")
            }
            let outcome = vm.run()
            if stats { printError("tandem: stats: \(outcome.statistics)") }
            if reboot == .restart, let reset = Self.reset(outcome) {
                // As a PC does: the guest boots again, from its image, in a new machine
                // (clean RAM, devices and vCPUs in their power-on state); what a reset
                // leaves alone on a PC, the battery-backed CMOS RAM, and the console go on.
                boot += 1
                if !quiet { printError("tandem: \(reset); restarting it (boot \(boot), --reboot restart)") }
                cmosRAM = vm.devices.rtc.cmosRAM
                if case .file(let path) = c.serial { c.serial = .continuedFile(path) }
                continue
            }
            if let message = outcome.message { printError(message) }
            terminate(outcome.status)
        }
    }

    /// What reset the machine, when the run ended by a reset (a reset control write or a
    /// triple fault) with every vCPU thread stopped; nil for any other end.
    static func reset(_ outcome: RunOutcome) -> String? {
        guard outcome.message?.hasSuffix(Machine.notStoppedNote) != true else { return nil }
        switch outcome.reason {
        case .guestReset?: return "the guest reset the machine"
        case .tripleFault(let at)?: return "triple fault: \(at); the machine resets"
        default: return nil
        }
    }
}

/// `tandem run --reboot`: what a reset by the guest does.
enum RebootAction: String, CaseIterable, ExpressibleByArgument {
    /// The run ends (status 212; a triple fault: 204), as QEMU's `-no-reboot`.
    case exit
    /// The guest starts again from its image, as on a PC (and in QEMU by default).
    case restart
}

/// Writes `text` to standard error unbuffered (`write(2)`), so it is ordered with guest output.
func printError(_ text: String) {
    var bytes = Array(text.utf8)
    if bytes.last != 0x0A { bytes.append(0x0A) }
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// Opens /dev/null on any of descriptors 0, 1 and 2 that the caller closed (`>&-`), so no
/// file Tandem opens (the trace, a serial file) can become "standard output" by reuse.
/// A closed standard output gets a read-only descriptor: console writes then fail (EBADF)
/// and are reported (status 211) rather than landing somewhere else.
func occupyClosedStandardDescriptors() {
    for (fd, flags) in [(Int32(0), O_RDONLY), (1, O_RDONLY), (2, O_WRONLY)] where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
        let opened = open("/dev/null", flags)
        if opened >= 0 && opened != fd {
            dup2(opened, fd)
            close(opened)
        }
    }
}

/// Ends the process with `status` (`exit(3)`).
func terminate(_ status: Int32) -> Never {
    Glibc.exit(status)
}

extension ClockKind: ExpressibleByArgument {}
