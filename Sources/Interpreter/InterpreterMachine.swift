import GuestMemory
import HostOS

typealias HostLockRef = HostLock

/// What the interpreter vCPUs of one machine share: the code-page table that keeps every
/// decode cache honest, the lock that makes LOCK-prefixed instructions atomic across
/// vCPU threads, and the CPUID the interpreter reports.
public final class InterpreterMachine: @unchecked Sendable {
    public let memory: GuestMemoryMap
    let codePages: CodePages
    let atomicLock = HostLock()
    public let cpuCount: Int

    public init(memory: GuestMemoryMap, cpuCount: Int) {
        self.memory = memory
        self.codePages = CodePages(memory: memory)
        self.cpuCount = cpuCount
        codePages.concurrentWriters = cpuCount > 1
    }

    /// A new vCPU of this machine.
    public func makeVCPU(index: Int) -> InterpreterVCPU {
        InterpreterVCPU(index: index, shared: self)
    }

    /// CPUID as the interpreter implements it: it offers exactly what the interpreter
    /// executes (POPCNT, LZCNT, MOVBE, BMI1, BMI2, ADX, RDRAND and RDSEED, but no FPU, SSE, APIC, x2APIC,
    /// 1 GiB pages or FSGSBASE yet).
    func cpuid(leaf: UInt32, subleaf: UInt32, vcpu: Int) -> (UInt32, UInt32, UInt32, UInt32) {
        let vendor = Array("TandemInterp".utf8)
        func word(_ i: Int) -> UInt32 {
            UInt32(vendor[i]) | UInt32(vendor[i + 1]) << 8 | UInt32(vendor[i + 2]) << 16 | UInt32(vendor[i + 3]) << 24
        }
        switch leaf {
        case 0: return (7, word(0), word(8), word(4))
        case 1:
            // Family 6, model 15, stepping 1.
            let eax: UInt32 = 0x0000_06F1
            let ebx = UInt32(vcpu & 0xFF) << 24 | UInt32(min(cpuCount, 255)) << 16 | 8 << 8
            // CMPXCHG16B, x2APIC, MOVBE, POPCNT, TSC-deadline, RDRAND
            let ecx: UInt32 = 1 << 13 | 1 << 21 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 30
            // PSE, TSC, MSR, PAE, CX8, APIC, SEP, MTRR, PGE, CMOV, PAT, PSE-36, CLFSH
            let edx: UInt32 = 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 8 | 1 << 9 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 15 | 1 << 16 | 1 << 17 | 1 << 19
            return (eax, ebx, ecx, edx | (cpuCount > 1 ? 1 << 28 : 0))
        case 7 where subleaf == 0:
            return (0, 1 << 3 | 1 << 8 | 1 << 18 | 1 << 19, 0, 0)   // BMI1, BMI2, RDSEED, ADX
        case 0x8000_0000: return (0x8000_0008, word(0), word(8), word(4))
        case 0x8000_0001:
            // LAHF/SAHF in long mode, LZCNT (ABM); SYSCALL, NX, RDTSCP, long mode.
            return (0, 0, 1 | 1 << 5, 1 << 11 | 1 << 20 | 1 << 27 | 1 << 29)
        case 0x8000_0002...0x8000_0004:
            var brand = Array("Tandem x86 interpreter".utf8)
            brand += [UInt8](repeating: 0, count: 48 - brand.count)
            let base = Int(leaf - 0x8000_0002) * 16
            func w(_ i: Int) -> UInt32 {
                UInt32(brand[base + i]) | UInt32(brand[base + i + 1]) << 8 | UInt32(brand[base + i + 2]) << 16 | UInt32(brand[base + i + 3]) << 24
            }
            return (w(0), w(4), w(8), w(12))
        case 0x8000_0008: return (0x3028, 0, 0, 0)   // 40 physical, 48 linear address bits
        default: return (0, 0, 0, 0)
        }
    }
}
