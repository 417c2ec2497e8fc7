import Interpreter
import KVM
import X86

/// The one CPU model of a machine (CPUID and model MSRs: Sources/X86/CPUID.swift and
/// GuestCPU.swift) and how it is chosen.
public enum MachineCPU {
    /// `--cpu-model` names, with what each is.
    public static var usage: String {
        CPUModel.catalogue.map { "\($0.name): \($0.summary)" }.joined(separator: "; ")
    }

    /// The model named `name`, or a usage error listing the names.
    public static func model(named name: String) throws(MachineError) -> CPUModel {
        guard let model = CPUModel.named(name) else {
            throw MachineError(.usage, "--cpu-model '\(name)' is not one of \(CPUModel.catalogue.map(\.name).joined(separator: ", "))")
        }
        return model
    }

    /// The flags a machine may offer: what the interpreter implements (its one list,
    /// Sources/Interpreter/ImplementedFeatures.swift), without x2APIC unless `x2APIC`,
    /// and, where the KVM device opens, only what the KVM engine can stand behind too
    /// (`KVMDevice.availableFeatures`). The KVM cut applies whichever backend runs the
    /// guest: a host gives one CPUID, so a guest sees the same on `--backend interp`,
    /// `kvm` and `auto`, and a vCPU handed from one engine to the other sees no change.
    public static func availableFeatures(kvmDevicePath: String?, x2APIC: Bool) -> Set<CPUFeature> {
        var features = InterpreterMachine.implementedFeatures
        if !x2APIC { features.remove(.x2apic) }
        if let path = kvmDevicePath, let device = try? KVMDevice(path: path),
           let kvm = try? device.availableFeatures(among: features) {
            features = kvm
            // Where KVM's kernel emulator runs CPL 0 code (PVM: no VMX/SVM), it executes
            // LZCNT as BSR and TZCNT as BSF (it ignores their F3 prefix) instead of failing
            // and handing them over: LZCNT (ABM) and TZCNT (BMI1) give wrong answers there.
            if !HostCheck.cpuHasVirtualization() { features.subtract([.abm, .bmi1]) }
        }
        return features
    }

    /// The CPUID of a machine built from `c`.
    public static func cpuid(for c: MachineConfiguration) throws(MachineError) -> GuestCPUID {
        let model = try model(named: c.cpuModel)
        var cpuid = GuestCPUID(model: model, available: availableFeatures(kvmDevicePath: c.kvmDevicePath, x2APIC: c.x2APIC),
                               cpuCount: c.cpus)
        // RAM below 4 GiB ends at min(RAM, 3 GiB); the rest starts at 4 GiB (README, "The machine").
        let low = min(c.memorySize, 3 << 30)
        cpuid.topOfMemory = low
        cpuid.topOfMemory2 = c.memorySize > low ? (4 << 30) + (c.memorySize - low) : 0
        return cpuid
    }
}
