#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import KVM
import Machine
import X86

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report what this host offers Tandem: KVM, its kind, and what --backend auto picks.",
        discussion: """
        Exit status: 0 KVM runs guests natively (VMX/SVM); 1 KVM works but runs CPL 0 and \
        non-64-bit code through the host kernel's emulator (PVM-style); 2 no usable KVM \
        (--backend auto uses the interpreter).
        """
    )

    @Option(help: "KVM device path (default /dev/kvm, or $TANDEM_KVM_DEVICE).")
    var kvmDevice: String?

    func run() throws {
        let path = kvmDevice ?? getenv("TANDEM_KVM_DEVICE").map { String(cString: $0) } ?? KVMDevice.defaultPath
        let c = HostCheck(devicePath: path)
        print("cpu virtualization flags: \(c.cpuFlags.isEmpty ? "none (no vmx or svm in /proc/cpuinfo)" : c.cpuFlags.joined(separator: " "))")
        print("kvm_pvm module:           \(c.pvmModuleLoaded ? "loaded" : "not loaded")")
        print("\(path):".padding(toLength: 26, withPad: " ", startingAt: 0) + (c.deviceExists ? "exists" : "missing"))
        if let error = c.openError {
            print("open:                     failed: \(error)")
        } else {
            print("open:                     ok, API version \(c.apiVersion ?? 0)")
            for cap in c.capabilities {
                print("  \(cap.name.padding(toLength: 24, withPad: " ", startingAt: 0)) \(cap.value)")
            }
            if let rate = c.calibrationRate {
                print("CPL 0 calibration:        \(String(format3M: rate)) M guest instructions/s (native is > \(Int(HostCheck.nativeThreshold / 1e6)) M)")
            } else {
                print("CPL 0 calibration:        failed: \(c.calibrationError ?? "?")")
            }
        }
        let kind: String
        switch c.kind {
        case .hardware: kind = "hardware-backed (VMX/SVM)"
        case .emulated: kind = "emulated CPL 0 (PVM-style: 64-bit CPL 3 native, the rest through the host kernel's emulator)"
        case .unavailable: kind = "unavailable"
        }
        // The CPUID every backend offers on this host (one CPUID: KVM's cut applies to the
        // interpreter too), and what the interpreter alone would add.
        let offered = MachineCPU.availableFeatures(kvmDevicePath: path, x2APIC: true)
        let interpreterOnly = MachineCPU.availableFeatures(kvmDevicePath: nil, x2APIC: true).subtracting(offered)
        let model = CPUModel.default
        func names(_ f: Set<CPUFeature>) -> String {
            f.intersection(model.features).map(\.rawValue).sorted().joined(separator: " ")
        }
        print("CPUID (\(model.name)):".padding(toLength: 26, withPad: " ", startingAt: 0) + names(offered))
        print("  left out for KVM:       \(interpreterOnly.isEmpty ? "nothing" : names(interpreterOnly))")
        print("KVM:                      \(kind)")
        print("--backend auto:           \(c.autoChoice)")
        throw ExitCode(c.verdict.rawValue)
    }
}

extension String {
    init(format3M value: Double) {
        self = String((value / 1e6 * 10).rounded() / 10)
    }
}
