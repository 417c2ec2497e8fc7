import Dispatch
import Devices
import GDBStub
import GuestMemory
import KVM
import Loaders
import Tracing

/// Which execution backend runs the vCPUs.
public enum BackendKind: String, CaseIterable, Sendable {
    /// KVM where /dev/kvm opens, the interpreter otherwise.
    case auto
    case kvm
    case interp
    /// 64-bit user mode on KVM, everything else on the interpreter (Documentation/Hybrid.md).
    case hybrid
}

/// `--switch-every`: how long each vCPU stays on one engine before it moves to the other
/// (for testing engine switching; Documentation/Switching.md).
public enum SwitchInterval: Sendable, Equatable, CustomStringConvertible {
    /// This many instructions on the interpreter, and this many single-steps on KVM (which
    /// counts no instructions; a step is one instruction except where the host's stepping
    /// runs more, as PVM does in 64-bit user mode).
    case instructions(UInt64)
    /// This many seconds of host time, on either engine.
    case seconds(Double)

    /// "N" (instructions), or a time with a unit: "Nms", "Ns" (N may have a fraction).
    public init?(parsing text: String) {
        if let n = UInt64(text) {
            guard n > 0 else { return nil }
            self = .instructions(n)
            return
        }
        guard let seconds = parseDuration(text) else { return nil }
        guard seconds >= Self.shortestSeconds && seconds <= MachineConfiguration.maxTimeout else { return nil }
        self = .seconds(seconds)
    }

    /// The shortest time interval (a switch costs tens of microseconds to a millisecond).
    public static let shortestSeconds = 0.001

    public var description: String {
        switch self {
        case .instructions(let n): "\(n) instructions"
        case .seconds(let s): "\(formatSeconds(s)) s"
        }
    }
}

/// A time with a unit — "Nus", "Nms" or "Ns", N a decimal number that may have a
/// fraction — in seconds; nil for anything else (no unit, a negative or non-finite N).
public func parseDuration(_ text: String) -> Double? {
    let (number, scale): (Substring, Double) = text.hasSuffix("us") ? (text.dropLast(2), 1e-6)
        : text.hasSuffix("ms") ? (text.dropLast(2), 1e-3)
        : text.hasSuffix("s") ? (text.dropLast(1), 1) : ("", 0)
    guard let value = Double(number), value.isFinite, value >= 0 else { return nil }
    return value * scale
}

/// Where machine time comes from.
public enum ClockKind: String, CaseIterable, Sendable {
    /// The host's monotonic clock.
    case host
    /// Retired instructions (the interpreter): one nanosecond per instruction, so timers
    /// fire at the same instruction on every run of a single-vCPU guest.
    case instructions
}

/// Everything `tandem run` needs to build and run a machine.
public struct MachineConfiguration: Sendable {
    public var imagePath: String
    public var backend: BackendKind = .auto
    public var cpus: Int = 1
    public var memorySize: UInt64 = 128 << 20
    public var format: ImageFormat = .auto
    public var serial: Console.Sink = .stdout
    public var input: ConsoleInput = .none()
    /// Seconds of wall-clock time before the run is stopped (nil: no limit).
    public var timeout: Double? = nil
    /// When `timeout` started counting: when the command began, so reading the image and
    /// building the VM count too (nil: when `Machine.run` starts).
    public var started: DispatchTime? = nil
    /// Stop each vCPU after this many instructions (backends that count them: interp).
    public var maxInstructions: UInt64? = nil
    /// `--translate`: the interpreter translates hot traces to host code.
    public var translate = true
    /// `--clock`.
    public var clock: ClockKind = .host
    /// The kernel command line: `--cmdline` or `--append` (Multiboot's or Linux's).
    public var commandLine: String = ""
    /// `--initrd`: a Linux initrd file.
    public var initrdPath: String? = nil
    /// `--module` values: "PATH [ARGS]"; the whole value is the module's string.
    public var modules: [String] = []
    public var kvmDevicePath: String = KVMDevice.defaultPath
    /// `--trace` and its filters (nil: no trace).
    public var trace: TraceOptions? = nil
    /// Print a line naming the backend chosen by `auto` on stderr.
    public var announceBackend = true
    /// `--cpu-model`: which CPU of `CPUModel.catalogue` the guest sees (CPUID, model MSRs).
    public var cpuModel: String = "sapphirerapids"
    /// `--gdb` (nil: no debugger).
    public var gdb: GDBOptions? = nil
    /// Whether CPUID offers x2APIC (and IA32_APIC_BASE may enable it).
    public var x2APIC = true
    /// `--snapshot-on-exit FILE`: where the run writes a snapshot of the whole machine
    /// when it stops, and on SIGUSR2 while it runs (Documentation/Snapshots.md).
    public var snapshotPath: String? = nil
    /// `--restore FILE`: the snapshot the machine is rebuilt from instead of an image (its
    /// CONF section gives the RAM size, vCPUs, CPU model and clock: `restoring` applies it).
    public var restore: SnapshotFile? = nil
    /// `--switch-every`: each vCPU alternates between the interpreter and KVM (nil: it stays
    /// on its engine unless moved through `Machine.switch(vcpu:to:)`, SIGUSR1 or gdb).
    public var switchEvery: SwitchInterval? = nil
    /// `--timer-slack`, in nanoseconds: how late periodic ticks may come (a local APIC
    /// timer's to a halted vCPU, the PIT's, the RTC's), one after another, none lost
    /// (0: on time).
    public var timerSlack: UInt64 = 0
    /// The largest `--timer-slack` (ns): past that a guest's idle ticks come in bursts a
    /// person would notice.
    public static let maxTimerSlack: UInt64 = 100_000_000

    public static let maxCPUs = 256
    /// The most guest RAM KVM is given: every GiB in a memory slot costs the host kernel
    /// about 2.5 MiB of slot tables, allocated up front (1 TiB: 2.5 GB and half a second;
    /// 8 TiB: 21 GB and minutes), so larger guests go to the interpreter.
    public static let maxMemoryKVM: UInt64 = 256 << 30
    /// The most guest RAM the interpreter is given: RAM is reserved lazily, but the elf64
    /// identity page tables cost 4 KiB per GiB (16 MiB at 4 TiB).
    public static let maxMemoryInterpreter: UInt64 = 4 << 40
    /// The largest image or module file: it is read whole, before the guest starts.
    public static let maxFileSize = 1 << 30
    /// The longest `--timeout`: about 31 years (what a `DispatchTime` can hold with room).
    public static let maxTimeout: Double = 1e9
    /// The most `--trace-last` records kept in memory (a few hundred bytes each).
    public static let maxTraceLast = 1_000_000

    public init(imagePath: String) { self.imagePath = imagePath }
}

/// Parses a memory size: plain bytes or with a K, M, G or T suffix (powers of 1024).
public func parseMemorySize(_ text: String) -> UInt64? {
    var digits = text.uppercased()
    if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B") { digits.removeLast() }
    var shift: UInt64 = 0
    switch digits.last {
    case "K": shift = 10
    case "M": shift = 20
    case "G": shift = 30
    case "T": shift = 40
    default: break
    }
    if shift > 0 { digits.removeLast() }
    guard let n = UInt64(digits), n > 0 else { return nil }
    let (value, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
    return overflow ? nil : value
}
