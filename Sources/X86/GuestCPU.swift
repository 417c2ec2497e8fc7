/// The CPU model of one machine as both engines see it: the CPUID (`GuestCPUID`) and the
/// MSRs that CPUID implies (IA32_MISC_ENABLE, IA32_TSC_AUX, the microcode and machine-
/// check MSRs, AMD's HWCR/SYSCFG/TOP_MEM, ...), with one MSR file per vCPU.
///
/// One object serves the interpreter and KVM vCPUs of a machine alike, so a vCPU that
/// moves between engines keeps these MSRs without any state transfer (each vCPU's file is
/// only touched by the thread running that vCPU, on whichever engine).
/// MSRs kept in `CPUState` (EFER, STAR, ..., PAT), the MTRRs and the local APIC's MSRs are
/// not here: the engines own those.
public final class GuestCPU: @unchecked Sendable {
    public let cpuid: GuestCPUID
    private let files: [MSRFile]

    /// Per-vCPU storage of the writable model MSRs.
    final class MSRFile {
        var tscAux: UInt64
        var miscEnable: UInt64 = GuestCPU.miscEnableReset
        var mcgStatus: UInt64 = 0
        var perfCtl: UInt64 = 0
        var thermInterrupt: UInt64 = 0
        var hwcr: UInt64 = GuestCPU.hwcrReset
        var syscfg: UInt64 = GuestCPU.syscfgReset
        var topMem: UInt64 = 0
        var topMem2: UInt64 = 0
        var deCfg: UInt64 = 0
        init(index: Int) { tscAux = UInt64(index) }
    }

    public init(cpuid: GuestCPUID) {
        self.cpuid = cpuid
        files = (0..<cpuid.cpuCount).map { i in
            let f = MSRFile(index: i)
            f.topMem = cpuid.topOfMemory
            f.topMem2 = cpuid.topOfMemory2
            return f
        }
    }

    public var vendor: CPUVendor { cpuid.vendor }

    public func query(leaf: UInt32, subleaf: UInt32, vcpu: Int) -> (UInt32, UInt32, UInt32, UInt32) {
        cpuid.query(leaf: leaf, subleaf: subleaf, vcpu: vcpu)
    }

    // MARK: MSR numbers

    public static let platformID: UInt32 = 0x17
    public static let featureControl: UInt32 = 0x3A
    public static let biosSignID: UInt32 = 0x8B   // AMD: PATCH_LEVEL
    public static let mcgCap: UInt32 = 0x179
    public static let mcgStatus: UInt32 = 0x17A
    public static let perfStatus: UInt32 = 0x198
    public static let perfCtl: UInt32 = 0x199
    public static let thermInterrupt: UInt32 = 0x19B
    public static let thermStatus: UInt32 = 0x19C
    public static let miscEnable: UInt32 = 0x1A0
    public static let tscAux: UInt32 = 0xC000_0103
    public static let syscfg: UInt32 = 0xC001_0010
    public static let hwcr: UInt32 = 0xC001_0015
    public static let topMem: UInt32 = 0xC001_001A
    public static let topMem2: UInt32 = 0xC001_001D
    public static let deCfg: UInt32 = 0xC001_1029

    /// Fast strings on; BTS and PEBS unavailable (no performance monitoring is offered).
    static let miscEnableReset: UInt64 = 1 << 0 | 1 << 11 | 1 << 12
    /// The MISC_ENABLE bits a guest may change: fast strings, automatic thermal control,
    /// xTPR message disable. Every other bit is fixed: a write that changes one is #GP.
    static let miscEnableWritable: UInt64 = 1 << 0 | 1 << 3 | 1 << 23
    /// HWCR: TscFreqSel (bit 24, read-only 1: the TSC counts at a fixed rate).
    static let hwcrReset: UInt64 = 1 << 24
    /// SYSCFG: MtrrFixDramEn, MtrrVarDramEn (TOP_MEM bounds DRAM), MtrrTom2En.
    static let syscfgReset: UInt64 = 1 << 18 | 1 << 20 | 1 << 21

    /// The MSRs this model answers for (on either vendor), for KVM's MSR filter: KVM must
    /// send them to user space instead of answering from its own emulation.
    public static let modelMSRs: [UInt32] = [
        platformID, featureControl, biosSignID, mcgCap, mcgStatus, perfStatus, perfCtl, thermInterrupt,
        thermStatus, miscEnable, tscAux, syscfg, hwcr, topMem, topMem2, deCfg,
    ]

    /// Whether TSC_AUX exists: with RDTSCP or RDPID offered.
    public var hasTSCAux: Bool { !cpuid.offered.isDisjoint(with: [.rdtscp, .rdpid]) }

    /// The TSC_AUX value of `vcpu` (what RDTSCP returns in ECX).
    public func tscAux(vcpu: Int) -> UInt64 { files[vcpu].tscAux }

    /// RDMSR of a model MSR on `vcpu`: nil for an MSR the model does not have (#GP).
    public func readMSR(vcpu: Int, _ index: UInt32) -> UInt64? {
        let f = files[vcpu]
        let intel = vendor == .intel
        switch index {
        case Self.tscAux where hasTSCAux: return f.tscAux
        case Self.mcgCap: return 0           // no banks: nothing to report
        case Self.mcgStatus: return f.mcgStatus
        case Self.biosSignID: return intel ? UInt64(cpuid.model.microcode) << 32 : UInt64(cpuid.model.microcode)
        case Self.platformID where intel: return 0
        case Self.featureControl where intel: return 1   // locked, VMX off inside and outside SMX
        case Self.miscEnable where intel: return f.miscEnable
        case Self.perfStatus where intel: return 0
        case Self.perfCtl where intel: return f.perfCtl
        case Self.thermInterrupt where intel: return f.thermInterrupt
        case Self.thermStatus where intel: return 0
        case Self.hwcr where !intel: return f.hwcr
        case Self.syscfg where !intel: return f.syscfg
        case Self.topMem where !intel: return f.topMem
        case Self.topMem2 where !intel: return f.topMem2
        case Self.deCfg where !intel: return f.deCfg
        default: return nil
        }
    }

    /// WRMSR of a model MSR on `vcpu`: false for an MSR the model does not have or a value
    /// it refuses (#GP).
    public func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64) -> Bool {
        let f = files[vcpu]
        let intel = vendor == .intel
        switch index {
        case Self.tscAux where hasTSCAux:
            guard value >> 32 == 0 else { return false }
            f.tscAux = value
        case Self.mcgStatus:
            guard value & ~0xF == 0 else { return false }   // RIPV, EIPV, MCIP, LMCE_S
            f.mcgStatus = value
        case Self.biosSignID where intel:
            break   // the microcode update protocol writes 0 here before CPUID(1); nothing to load
        case Self.miscEnable where intel:
            guard (value ^ f.miscEnable) & ~Self.miscEnableWritable == 0 else { return false }
            f.miscEnable = value
        case Self.perfCtl where intel: f.perfCtl = value & 0xFFFF
        case Self.thermInterrupt where intel: f.thermInterrupt = value & 0x01FF_FF1F
        case Self.thermStatus where intel:
            guard value == 0 else { return false }   // only the sticky log bits could be cleared
        case Self.hwcr where !intel: f.hwcr = value | Self.hwcrReset
        case Self.syscfg where !intel:
            // The DRAM/MTRR enables are writable; the rest stays as reset.
            let writable: UInt64 = 0x7F << 16
            guard (value ^ f.syscfg) & ~writable == 0 else { return false }
            f.syscfg = value
        case Self.topMem where !intel: f.topMem = value & 0xFFFF_FF80_0000
        case Self.topMem2 where !intel: f.topMem2 = value & 0xFFFF_FF80_0000
        case Self.deCfg where !intel: f.deCfg = value
        default: return false
        }
        return true
    }
}

extension GuestCPU {
    /// The model MSRs of `vcpu` (its MSR file), for a snapshot.
    public func saveMSRs(vcpu: Int, _ w: inout StateWriter) {
        let f = files[vcpu]
        for v in [f.tscAux, f.miscEnable, f.mcgStatus, f.perfCtl, f.thermInterrupt, f.hwcr, f.syscfg, f.topMem, f.topMem2, f.deCfg] {
            w.u64(v)
        }
    }

    public func restoreMSRs(vcpu: Int, _ r: inout StateReader) throws(SnapshotError) {
        let f = files[vcpu]
        f.tscAux = try r.u64(); f.miscEnable = try r.u64(); f.mcgStatus = try r.u64(); f.perfCtl = try r.u64()
        f.thermInterrupt = try r.u64(); f.hwcr = try r.u64(); f.syscfg = try r.u64(); f.topMem = try r.u64()
        f.topMem2 = try r.u64(); f.deCfg = try r.u64()
    }
}
