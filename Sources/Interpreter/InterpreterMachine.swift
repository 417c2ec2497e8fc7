import GuestMemory
import HostOS
import X86

typealias HostLockRef = HostLock

/// What the interpreter vCPUs of one machine share: the code-page table that keeps every
/// decode cache honest, the lock that makes LOCK-prefixed instructions atomic across
/// vCPU threads, and the guest CPU model (CPUID and model MSRs, shared with KVM's vCPUs
/// when the machine runs on both engines).
public final class InterpreterMachine: @unchecked Sendable {
    public let memory: GuestMemoryMap
    let codePages: CodePages
    let atomicLock = HostLock()
    public let cpuCount: Int
    /// CPUID and the MSRs it implies; one object for every engine of the machine.
    public let cpu: GuestCPU

    /// Whether its vCPUs translate hot traces to host code (Translator/).
    public let translate: Bool

    /// `cpu` nil: the default model offering what the interpreter implements.
    public init(memory: GuestMemoryMap, cpuCount: Int, cpu: GuestCPU? = nil, translate: Bool = true) {
        self.memory = memory
        self.translate = translate
        self.cpu = cpu ?? GuestCPU(cpuid: GuestCPUID(model: .default, available: Self.implementedFeatures, cpuCount: cpuCount))
        self.codePages = CodePages(memory: memory)
        self.cpuCount = cpuCount
        codePages.concurrentWriters = cpuCount > 1
    }

    /// A new vCPU of this machine.
    public func makeVCPU(index: Int) -> InterpreterVCPU {
        InterpreterVCPU(index: index, shared: self)
    }
}
