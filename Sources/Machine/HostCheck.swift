#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GuestMemory
import HostOS
import KVM
import RunLoop
import X86

/// What `tandem check` finds out about this host's KVM.
public struct HostCheck: Sendable {
    public enum KVMKind: String, Sendable {
        /// VMX/SVM: guests run natively in every mode.
        case hardware
        /// KVM without VMX/SVM (PVM and the like): 64-bit CPL 3 runs natively, everything
        /// else goes through the host kernel's instruction emulator.
        case emulated
        case unavailable
    }

    /// The verdict, also the exit status of `tandem check`.
    public enum Verdict: Int32, Sendable {
        case hardwareKVM = 0
        case emulatedKVM = 1
        case noKVM = 2
    }

    public var cpuFlags: [String] = []
    public var devicePath: String
    public var deviceExists = false
    public var openError: String? = nil
    public var apiVersion: Int? = nil
    public var pvmModuleLoaded = false
    public var capabilities: [(name: String, value: Int)] = []
    /// Guest instructions per second of a real-mode loop at CPL 0 (nil if it could not run).
    public var calibrationRate: Double? = nil
    public var calibrationError: String? = nil
    public var kind: KVMKind = .unavailable

    /// A real-mode loop this many iterations long decides whether CPL 0 code is emulated.
    static let calibrationIterations: UInt32 = 100_000
    /// Above this rate (instructions/s) CPL 0 code runs natively; PVM's emulator does ~2 M.
    public static let nativeThreshold = 100e6

    public var verdict: Verdict {
        switch kind {
        case .hardware: .hardwareKVM
        case .emulated: .emulatedKVM
        case .unavailable: .noKVM
        }
    }

    /// Which backend `--backend auto` picks here, and why.
    public var autoChoice: String {
        switch kind {
        case .hardware: "kvm: /dev/kvm opens and runs guests natively"
        case .emulated: "interp: /dev/kvm opens, but only 64-bit CPL 3 runs natively (other code would go through the host kernel's emulator), and the interpreter is faster than the hybrid engine that puts that on KVM (--backend hybrid; Documentation/Hybrid.md; kvm with --max-instructions or --gdb)"
        case .unavailable: "interp: \(openError ?? "KVM is unavailable")"
        }
    }

    public init(devicePath: String) {
        self.devicePath = devicePath
        if let text = try? readText("/proc/cpuinfo"),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) {
            cpuFlags = line.split(separator: " ").map(String.init).filter { $0 == "vmx" || $0 == "svm" }
        }
        var st = stat()
        deviceExists = stat(devicePath, &st) == 0
        pvmModuleLoaded = access("/sys/module/kvm_pvm", F_OK) == 0
        let device: KVMDevice
        do { device = try KVMDevice(path: devicePath) } catch {
            openError = Self.explain(error, path: devicePath, exists: deviceExists)
            return
        }
        apiVersion = device.apiVersion
        capabilities = KVMCapability.allCases.map { ($0.name, device.check($0)) }
        do {
            calibrationRate = try Self.calibrate(device)
        } catch {
            calibrationError = "\(error)"
        }
        if let rate = calibrationRate {
            kind = rate >= Self.nativeThreshold ? .hardware : .emulated
        } else {
            kind = cpuFlags.isEmpty ? .emulated : .hardware
        }
    }

    static func explain(_ error: KVMError, path: String, exists: Bool) -> String {
        switch error.errno.rawValue {
        case ENOENT: return "\(path) does not exist: the kvm module is not loaded (modprobe kvm_intel, kvm_amd or kvm_pvm)"
        case EACCES, EPERM: return "\(path) exists but cannot be opened: permission denied (add yourself to the kvm group or run as root)"
        case ENXIO, ENODEV: return "\(path) exists but no KVM driver answers (module not loaded?)"
        default: return "\(error)"
        }
    }

    /// Runs `dec ecx; jnz` in real mode (CPL 0) and measures guest instructions per second.
    static func calibrate(_ device: KVMDevice) throws -> Double {
        let memory = try GuestMemoryMap(ramSize: 1 << 20)
        let n = calibrationIterations
        // mov ecx, n; l: dec ecx; jnz l; hlt
        let code: [UInt8] = [0x66, 0xB9, UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24),
                             0x66, 0x49, 0x75, 0xFC, 0xF4]
        try memory.load(code, at: 0x7C00)
        // A calibration loop: any CPU model does.
        let cpu = GuestCPU(cpuid: GuestCPUID(model: .default, available: MachineCPU.availableFeatures(kvmDevicePath: nil, x2APIC: true), cpuCount: 1))
        let (vm, vcpus) = try device.makeMachine(memory: memory, cpus: 1, cpu: cpu)
        defer { _ = vm }
        var state = CPUState()
        state.cs = .realMode(0, code: true)
        state.ds = .realMode(0); state.es = .realMode(0); state.ss = .realMode(0); state.fs = .realMode(0); state.gs = .realMode(0)
        state.rip = 0x7C00
        state.cr0 = CR0.et
        try vcpus[0].writeState(state)
        let watchdog = DispatchWorkItem { vcpus[0].kick() }
        DispatchQueue.global().asyncAfter(deadline: .now() + 10, execute: watchdog)
        defer { watchdog.cancel() }
        let start = DispatchTime.now()
        switch vcpus[0].runWithoutDevices(maxExits: 1_000_000) {
        case .halted:
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            return Double(2 * n + 2) / max(seconds, 1e-9)
        case .stopped:
            throw BackendError("the calibration loop did not finish within 10 s")
        default:
            throw BackendError("the calibration loop stopped unexpectedly")
        }
    }
}

package func readText(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw Errno.current }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension HostCheck {
    /// Whether /proc/cpuinfo advertises VMX or SVM.
    package static func cpuHasVirtualization() -> Bool {
        guard let text = try? readText("/proc/cpuinfo") else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("flags") && ($0.contains(" vmx") || $0.contains(" svm")) }
    }
}
