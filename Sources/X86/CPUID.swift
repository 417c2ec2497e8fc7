/// The CPUID a guest sees: one model, answered the same by every engine.
///
/// A vCPU may move between KVM and the interpreter in the middle of a run, so both
/// engines answer CPUID from one `GuestCPUID` value built once per machine: a catalogue
/// CPU (`CPUModel`: vendor, signature, brand string, caches) with its feature bits cut
/// down to what the engines execute, and topology leaves for the machine's vCPU count
/// (one thread per core, all cores in one package, APIC ID = vCPU index).

/// The CPUID feature flags Tandem knows by name: where each lives (leaf, register, bit).
/// Only flags that say an instruction or an architectural facility exists are here; flags
/// that describe topology (HTT, CmpLegacy, TopologyExtensions) are computed by `GuestCPUID`.
public enum CPUFeature: String, CaseIterable, Sendable, Hashable {
    // Leaf 1 EDX
    case fpu, vme, de, pse, tsc, msr, pae, mce, cx8, apic, sep, mtrr, pge, mca, cmov, pat, pse36, clflush
    case mmx, fxsr, sse, sse2
    // Leaf 1 ECX
    case sse3, pclmulqdq, monitor, ssse3, fma, cx16, pcid, sse41 = "sse4.1", sse42 = "sse4.2", x2apic, movbe, popcnt
    case tscDeadline = "tsc-deadline", aes, xsave, avx, f16c, rdrand
    // Leaf 7 subleaf 0 EBX
    case fsgsbase, bmi1, hle, avx2, smep, bmi2, erms, invpcid, rtm, avx512f, rdseed, adx, smap, clflushopt, clwb, sha
    // Leaf 7 subleaf 0 ECX
    case umip, pku, gfni, vaes, rdpid
    // Leaf 7 subleaf 0 EDX
    case fsrm, archCapabilities = "arch-capabilities"
    // 0x8000_0001 ECX
    case lahfLM = "lahf-lm", abm, sse4a, prefetchw
    // 0x8000_0001 EDX
    case syscall, nx, mmxext, pdpe1gb, rdtscp, lm

    /// Which CPUID output register holds the flag.
    public enum Word: Int, CaseIterable, Sendable {
        case leaf1EDX, leaf1ECX, leaf7EBX, leaf7ECX, leaf7EDX, ext1ECX, ext1EDX
    }

    public var location: (word: Word, bit: Int) {
        switch self {
        case .fpu: (.leaf1EDX, 0)
        case .vme: (.leaf1EDX, 1)
        case .de: (.leaf1EDX, 2)
        case .pse: (.leaf1EDX, 3)
        case .tsc: (.leaf1EDX, 4)
        case .msr: (.leaf1EDX, 5)
        case .pae: (.leaf1EDX, 6)
        case .mce: (.leaf1EDX, 7)
        case .cx8: (.leaf1EDX, 8)
        case .apic: (.leaf1EDX, 9)
        case .sep: (.leaf1EDX, 11)
        case .mtrr: (.leaf1EDX, 12)
        case .pge: (.leaf1EDX, 13)
        case .mca: (.leaf1EDX, 14)
        case .cmov: (.leaf1EDX, 15)
        case .pat: (.leaf1EDX, 16)
        case .pse36: (.leaf1EDX, 17)
        case .clflush: (.leaf1EDX, 19)
        case .mmx: (.leaf1EDX, 23)
        case .fxsr: (.leaf1EDX, 24)
        case .sse: (.leaf1EDX, 25)
        case .sse2: (.leaf1EDX, 26)
        case .sse3: (.leaf1ECX, 0)
        case .pclmulqdq: (.leaf1ECX, 1)
        case .monitor: (.leaf1ECX, 3)
        case .ssse3: (.leaf1ECX, 9)
        case .fma: (.leaf1ECX, 12)
        case .cx16: (.leaf1ECX, 13)
        case .pcid: (.leaf1ECX, 17)
        case .sse41: (.leaf1ECX, 19)
        case .sse42: (.leaf1ECX, 20)
        case .x2apic: (.leaf1ECX, 21)
        case .movbe: (.leaf1ECX, 22)
        case .popcnt: (.leaf1ECX, 23)
        case .tscDeadline: (.leaf1ECX, 24)
        case .aes: (.leaf1ECX, 25)
        case .xsave: (.leaf1ECX, 26)
        case .avx: (.leaf1ECX, 28)
        case .f16c: (.leaf1ECX, 29)
        case .rdrand: (.leaf1ECX, 30)
        case .fsgsbase: (.leaf7EBX, 0)
        case .bmi1: (.leaf7EBX, 3)
        case .hle: (.leaf7EBX, 4)
        case .avx2: (.leaf7EBX, 5)
        case .smep: (.leaf7EBX, 7)
        case .bmi2: (.leaf7EBX, 8)
        case .erms: (.leaf7EBX, 9)
        case .invpcid: (.leaf7EBX, 10)
        case .rtm: (.leaf7EBX, 11)
        case .avx512f: (.leaf7EBX, 16)
        case .rdseed: (.leaf7EBX, 18)
        case .adx: (.leaf7EBX, 19)
        case .smap: (.leaf7EBX, 20)
        case .clflushopt: (.leaf7EBX, 23)
        case .clwb: (.leaf7EBX, 24)
        case .sha: (.leaf7EBX, 29)
        case .umip: (.leaf7ECX, 2)
        case .pku: (.leaf7ECX, 3)
        case .gfni: (.leaf7ECX, 8)
        case .vaes: (.leaf7ECX, 9)
        case .rdpid: (.leaf7ECX, 22)
        case .fsrm: (.leaf7EDX, 4)
        case .archCapabilities: (.leaf7EDX, 29)
        case .lahfLM: (.ext1ECX, 0)
        case .abm: (.ext1ECX, 5)
        case .sse4a: (.ext1ECX, 6)
        case .prefetchw: (.ext1ECX, 8)
        case .syscall: (.ext1EDX, 11)
        case .nx: (.ext1EDX, 20)
        case .mmxext: (.ext1EDX, 22)
        case .pdpe1gb: (.ext1EDX, 26)
        case .rdtscp: (.ext1EDX, 27)
        case .lm: (.ext1EDX, 29)
        }
    }

    /// The flags set in `value`, read as the register `word`.
    public static func decode(_ word: Word, _ value: UInt32) -> Set<CPUFeature> {
        Set(allCases.filter { $0.location.word == word && value >> UInt32($0.location.bit) & 1 != 0 })
    }

    /// Flags that only say an instruction exists: nothing in KVM's state stands behind
    /// them. On KVM such an instruction runs on the host CPU at CPL 3 and, at CPL 0, in the
    /// host kernel's emulator or (when that cannot) in the interpreter, so KVM's own list
    /// of supported flags (which on PVM hosts leaves out POPCNT, MOVBE, BMI, ...) need not
    /// cover them; the host CPU must. Everything else (paging and CR4 features, x2APIC,
    /// TSC_AUX behind RDTSCP, XSAVE state, ...) needs KVM's support too, and so does MOVBE:
    /// KVM's emulator runs it at CPL 0 only when KVM itself supports it, and raises #UD
    /// (no hand-off to the interpreter) otherwise.
    public var isInstructionOnly: Bool {
        switch self {
        case .cmov, .cx8, .cx16, .clflush, .popcnt, .rdrand, .rdseed, .bmi1, .bmi2, .adx, .abm, .lahfLM,
             .prefetchw, .clflushopt, .mmx, .sse, .sse2, .sse3, .ssse3, .sse41, .sse42, .pclmulqdq, .aes, .sha, .sse4a,
             .mmxext, .erms, .fsrm:
            true
        default:
            false
        }
    }

    /// The name Linux gives the flag in /proc/cpuinfo (for the host CPU check).
    public var linuxName: String {
        switch self {
        case .sse41: "sse4_1"
        case .sse42: "sse4_2"
        case .tscDeadline: "tsc_deadline_timer"
        case .lahfLM: "lahf_lm"
        case .prefetchw: "3dnowprefetch"
        case .archCapabilities: "arch_capabilities"
        case .pse36: "pse36"
        case .clflush: "clflush"
        case .sse3: "pni"
        case .mmxext: "mmxext"
        default: rawValue
        }
    }
}

public enum CPUVendor: String, Sendable {
    case intel = "GenuineIntel"
    case amd = "AuthenticAMD"
}

/// One cache level, as leaf 4 (Intel) and 0x8000_001D (AMD) describe it.
public struct CacheLevel: Sendable, Equatable {
    public enum Kind: UInt32, Sendable { case data = 1, instruction = 2, unified = 3 }
    public var kind: Kind
    public var level: UInt32
    public var sizeKiB: UInt32
    public var ways: UInt32
    public var lineSize: UInt32 = 64
    /// Shared by every core of the package (L3); otherwise private to a core.
    public var sharedByPackage: Bool = false
    public var inclusive: Bool = false

    public var sets: UInt32 { sizeKiB * 1024 / (ways * lineSize) }
}

/// A CPU of the catalogue `--cpu-model` picks from: what it says about itself. Its
/// feature list is the real part's; `GuestCPUID` offers only those the engines execute.
public struct CPUModel: Sendable {
    public var name: String
    /// One line for `tandem help run` and the README.
    public var summary: String
    public var vendor: CPUVendor
    public var family: UInt32
    public var model: UInt32
    public var stepping: UInt32
    public var brand: String
    public var maxBasicLeaf: UInt32
    public var maxExtendedLeaf: UInt32
    public var features: Set<CPUFeature>
    public var caches: [CacheLevel]
    public var physicalAddressBits: UInt32
    public var linearAddressBits: UInt32 = 48
    /// IA32_BIOS_SIGN_ID[63:32] (Intel) or PATCH_LEVEL (AMD): the microcode revision.
    public var microcode: UInt32
    /// CLFLUSH line size in 8-byte units (leaf 1 EBX[15:8]).
    public var clflushChunks: UInt32 = 8

    /// Leaf 1 EAX: stepping, model, family with the extended fields as the SDM encodes them.
    public var signature: UInt32 {
        let baseFamily = min(family, 0xF), extendedFamily = family > 0xF ? family - 0xF : 0
        let baseModel = model & 0xF, extendedModel = (family == 6 || family >= 0xF) ? model >> 4 : 0
        return extendedFamily << 20 | extendedModel << 16 | baseFamily << 8 | baseModel << 4 | stepping
    }

    static let baseline: Set<CPUFeature> = [
        .fpu, .vme, .de, .pse, .tsc, .msr, .pae, .mce, .cx8, .apic, .sep, .mtrr, .pge, .mca, .cmov, .pat, .pse36,
        .clflush, .mmx, .fxsr, .sse, .sse2, .sse3, .ssse3, .cx16, .sse41, .sse42, .popcnt, .lahfLM, .syscall, .nx, .lm,
    ]

    /// Intel Xeon X5670 (Westmere-EP, 2010): x86-64-v2 and little more.
    public static let westmere = CPUModel(
        name: "westmere", summary: "Intel Xeon X5670 (Westmere-EP), a CPU of the x86-64-v2 level",
        vendor: .intel, family: 6, model: 0x2C, stepping: 2,
        brand: "Intel(R) Xeon(R) CPU           X5670  @ 2.93GHz",
        maxBasicLeaf: 0xB, maxExtendedLeaf: 0x8000_0008,
        features: baseline.union([.pclmulqdq, .monitor, .x2apic, .aes, .pdpe1gb, .rdtscp]),
        caches: [
            CacheLevel(kind: .data, level: 1, sizeKiB: 32, ways: 8),
            CacheLevel(kind: .instruction, level: 1, sizeKiB: 32, ways: 4),
            CacheLevel(kind: .unified, level: 2, sizeKiB: 256, ways: 8),
            CacheLevel(kind: .unified, level: 3, sizeKiB: 12288, ways: 16, sharedByPackage: true, inclusive: true),
        ],
        physicalAddressBits: 40, microcode: 0x1F)

    /// Intel Xeon Platinum 8480+ (Sapphire Rapids, 2023): MOVBE, RDRAND, BMI1/2, ADX, RDSEED, ...
    public static let sapphireRapids = CPUModel(
        name: "sapphirerapids",
        summary: "Intel Xeon Platinum 8480+ (Sapphire Rapids), with MOVBE, RDRAND/RDSEED, BMI, ADX, TSC-deadline (the default)",
        vendor: .intel, family: 6, model: 0x8F, stepping: 8,
        brand: "Intel(R) Xeon(R) Platinum 8480+",
        maxBasicLeaf: 0x1F, maxExtendedLeaf: 0x8000_0008,
        features: baseline.union([
            .pclmulqdq, .monitor, .fma, .pcid, .x2apic, .movbe, .tscDeadline, .aes, .xsave, .avx, .f16c, .rdrand,
            .fsgsbase, .bmi1, .avx2, .smep, .bmi2, .erms, .invpcid, .avx512f, .rdseed, .adx, .smap, .clflushopt, .clwb,
            .sha, .umip, .pku, .gfni, .vaes, .rdpid, .fsrm, .archCapabilities, .abm, .prefetchw, .pdpe1gb, .rdtscp,
        ]),
        caches: [
            CacheLevel(kind: .data, level: 1, sizeKiB: 48, ways: 12),
            CacheLevel(kind: .instruction, level: 1, sizeKiB: 32, ways: 8),
            CacheLevel(kind: .unified, level: 2, sizeKiB: 2048, ways: 16),
            CacheLevel(kind: .unified, level: 3, sizeKiB: 107_520, ways: 15, sharedByPackage: true),
        ],
        physicalAddressBits: 46, linearAddressBits: 48, microcode: 0x2B00_0461)

    /// AMD EPYC 7402 (Zen 2, 2019).
    public static let zen2 = CPUModel(
        name: "zen2", summary: "AMD EPYC 7402 (Zen 2): AuthenticAMD, AMD cache and topology leaves and MSRs",
        vendor: .amd, family: 0x17, model: 0x31, stepping: 0,
        brand: "AMD EPYC 7402 24-Core Processor",
        maxBasicLeaf: 0x10, maxExtendedLeaf: 0x8000_001E,
        features: baseline.union([
            .pclmulqdq, .monitor, .fma, .x2apic, .movbe, .aes, .xsave, .avx, .f16c, .rdrand, .fsgsbase, .bmi1, .avx2, .smep,
            .bmi2, .rdseed, .adx, .smap, .clflushopt, .clwb, .sha, .umip, .rdpid, .abm, .sse4a, .prefetchw, .mmxext,
            .pdpe1gb, .rdtscp,
        ]),
        caches: [
            CacheLevel(kind: .data, level: 1, sizeKiB: 32, ways: 8),
            CacheLevel(kind: .instruction, level: 1, sizeKiB: 32, ways: 8),
            CacheLevel(kind: .unified, level: 2, sizeKiB: 512, ways: 8, inclusive: true),
            CacheLevel(kind: .unified, level: 3, sizeKiB: 16384, ways: 16, sharedByPackage: true),
        ],
        physicalAddressBits: 43, microcode: 0x0830_1034)

    /// The models `--cpu-model` accepts, the default first.
    public static let catalogue: [CPUModel] = [sapphireRapids, westmere, zen2]
    public static var `default`: CPUModel { catalogue[0] }

    public static func named(_ name: String) -> CPUModel? {
        catalogue.first { $0.name == name.lowercased() }
    }
}

/// The CPUID of one machine: a model, the flags offered (the model's, cut down to what
/// the engines execute) and the vCPU count. Every engine answers from this value.
public struct GuestCPUID: Sendable {
    public let model: CPUModel
    public let offered: Set<CPUFeature>
    public let cpuCount: Int
    /// Guest RAM below 4 GiB and the end of RAM above it (AMD's TOP_MEM and TOP_MEM2).
    public var topOfMemory: UInt64 = 0
    public var topOfMemory2: UInt64 = 0

    /// `model` offering only `available`, for `cpuCount` vCPUs.
    public init(model: CPUModel, available: Set<CPUFeature>, cpuCount: Int) {
        self.model = model
        self.offered = model.features.intersection(available)
        self.cpuCount = max(1, cpuCount)
    }

    public var vendor: CPUVendor { model.vendor }

    /// Bits of the APIC ID that number the cores of the package: enough for every vCPU.
    public var coreBits: UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < cpuCount { bits += 1 }
        return bits
    }

    func word(_ w: CPUFeature.Word) -> UInt32 {
        offered.reduce(0) { $1.location.word == w ? $0 | 1 << UInt32($1.location.bit) : $0 }
    }

    /// The subleaves a leaf has, for a guest that asks every one (KVM needs each listed):
    /// nil for a leaf whose answer does not depend on ECX.
    public func subleaves(of leaf: UInt32) -> ClosedRange<UInt32>? {
        switch leaf {
        case 4: vendor == .intel ? 0...UInt32(model.caches.count) : nil
        case 7: 0...0
        case 0xD: offered.contains(.xsave) ? 0...1 : nil
        case 0xB, 0x1F: vendor == .intel ? 0...2 : nil
        case 0x8000_001D: vendor == .amd ? 0...UInt32(model.caches.count) : nil
        default: nil
        }
    }

    /// Every leaf that answers something of its own (for `KVM_SET_CPUID2`): 0 to the
    /// highest basic leaf, 0x8000_0000 to the highest extended one.
    public var leaves: [UInt32] {
        Array(0...model.maxBasicLeaf) + Array(0x8000_0000...model.maxExtendedLeaf)
    }

    /// CPUID(leaf, subleaf) on vCPU `vcpu`: (EAX, EBX, ECX, EDX).
    public func query(leaf: UInt32, subleaf: UInt32, vcpu: Int) -> (UInt32, UInt32, UInt32, UInt32) {
        let inBasic = leaf <= model.maxBasicLeaf
        let inExtended = leaf >= 0x8000_0000 && leaf <= model.maxExtendedLeaf
        if !inBasic && !inExtended {
            // Intel: a leaf past the highest (basic or extended) returns the highest basic
            // leaf's answer (SDM, CPUID: "If a value entered for CPUID.EAX is higher than the
            // maximum input value..."). AMD: zeros.
            return vendor == .intel ? query(leaf: model.maxBasicLeaf, subleaf: subleaf, vcpu: vcpu) : (0, 0, 0, 0)
        }
        let apicID = UInt32(truncatingIfNeeded: vcpu)
        let n = UInt32(cpuCount)
        switch leaf {
        case 0:
            let v = vendorWords
            return (model.maxBasicLeaf, v.0, v.1, v.2)
        case 1:
            // EBX: APIC ID, addressable logical processors per package, CLFLUSH size.
            let logical = min(UInt32(1) << coreBits, 255)
            let ebx = (apicID & 0xFF) << 24 | logical << 16 | model.clflushChunks << 8
            // HTT: more than one logical processor per package.
            let htt: UInt32 = cpuCount > 1 ? 1 << 28 : 0
            return (model.signature, ebx, word(.leaf1ECX), word(.leaf1EDX) | htt)
        case 2 where vendor == .intel:
            // One descriptor, 0xFF: "no cache information here, use leaf 4".
            return (0x0000_FF01, 0, 0, 0)
        case 4 where vendor == .intel:
            return cacheParameters(subleaf)
        case 7:
            guard subleaf == 0 else { return (0, 0, 0, 0) }
            return (0, word(.leaf7EBX), word(.leaf7ECX), word(.leaf7EDX))
        case 0xB where vendor == .intel, 0x1F where vendor == .intel:
            return topology(subleaf, apicID: apicID)
        case 0xD where offered.contains(.xsave):
            return xsaveComponents(subleaf)
        case 0x8000_0000:
            let v = vendor == .amd ? vendorWords : (0, 0, 0)
            return (model.maxExtendedLeaf, v.0, v.1, v.2)
        case 0x8000_0001:
            var ecx = word(.ext1ECX), edx = word(.ext1EDX)
            if vendor == .amd {
                // AMD repeats leaf 1's EDX flags here (all but bits 10, 18-22, 25-28).
                edx |= word(.leaf1EDX) & 0x0183_F3FF
                // CmpLegacy and TopologyExtensions (leaf 0x8000_001E is answered).
                ecx |= (cpuCount > 1 ? 1 << 1 : 0) | 1 << 22
            }
            return (vendor == .amd ? model.signature : 0, 0, ecx, edx)
        case 0x8000_0002...0x8000_0004:
            var brand = Array(model.brand.utf8.prefix(47))
            brand += [UInt8](repeating: 0, count: 48 - brand.count)
            let base = Int(leaf - 0x8000_0002) * 16
            return (le32(brand, base), le32(brand, base + 4), le32(brand, base + 8), le32(brand, base + 12))
        case 0x8000_0005 where vendor == .amd:
            // L1 TLBs (EAX, EBX) and L1 data (ECX) and instruction (EDX) caches.
            let l1d = model.caches.first { $0.level == 1 && $0.kind == .data }!
            let l1i = model.caches.first { $0.level == 1 && $0.kind == .instruction }!
            func l1(_ c: CacheLevel) -> UInt32 { c.sizeKiB << 24 | c.ways << 16 | 1 << 8 | c.lineSize }
            return (0xFF40_FF40, 0xFF40_FF40, l1(l1d), l1(l1i))
        case 0x8000_0006:
            let l2 = model.caches.first { $0.level == 2 }!
            if vendor == .intel {
                // ECX: L2 size in KiB, associativity (Intel's encoding), line size.
                return (0, 0, l2.sizeKiB << 16 | associativityCode(l2.ways) << 12 | l2.lineSize, 0)
            }
            let l3 = model.caches.first { $0.level == 3 }!
            let l2ecx = l2.sizeKiB << 16 | associativityCode(l2.ways) << 12 | 1 << 8 | l2.lineSize
            let l3edx = (l3.sizeKiB / 512) << 18 | associativityCode(l3.ways) << 12 | 1 << 8 | l3.lineSize
            return (0x4800_4800, 0x6400_6400, l2ecx, l3edx)
        case 0x8000_0007:
            // EDX bit 8: invariant TSC (both engines count the host's, which is).
            return (0, 0, 0, 1 << 8)
        case 0x8000_0008:
            let eax = model.linearAddressBits << 8 | model.physicalAddressBits
            // AMD: ECX[7:0] cores - 1, ECX[15:12] APIC ID bits numbering the cores.
            return (eax, 0, vendor == .amd ? coreBits << 12 | (n - 1) & 0xFF : 0, 0)
        case 0x8000_001D where vendor == .amd:
            return cacheParameters(subleaf)
        case 0x8000_001E where vendor == .amd:
            // Extended APIC ID, core ID (one thread per core), node 0 of 1 per package.
            return (apicID, apicID & 0xFF, 0, 0)
        default:
            return (0, 0, 0, 0)
        }
    }

    private var vendorWords: (UInt32, UInt32, UInt32) {
        let v = Array(model.vendor.rawValue.utf8)
        return (le32(v, 0), le32(v, 8), le32(v, 4))   // EBX, ECX, EDX: "Genu" "ntel" "ineI"
    }

    /// Leaf 4 (Intel) or 0x8000_001D (AMD): one subleaf per cache, then a null one.
    private func cacheParameters(_ subleaf: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        guard Int(subleaf) < model.caches.count else { return (0, 0, 0, 0) }
        let c = model.caches[Int(subleaf)]
        let sharing = c.sharedByPackage ? (UInt32(1) << coreBits) - 1 : 0
        var eax = c.kind.rawValue | c.level << 5 | 1 << 8 | min(sharing, 0xFFF) << 14
        if vendor == .intel {
            // EAX[31:26]: addressable core IDs in the package, minus one.
            eax |= min((UInt32(1) << coreBits) - 1, 63) << 26
        }
        let ebx = (c.lineSize - 1) | 0 << 12 | (c.ways - 1) << 22
        return (eax, ebx, c.sets - 1, c.inclusive ? 1 << 1 : 0)
    }

    /// The XSAVE state components offered in XCR0: x87 (bit 0) and SSE (bit 1). AVX and
    /// later components are not implemented by the interpreter, so not offered.
    public static let xsaveComponents: UInt64 = 0x3
    /// The standard-form XSAVE area for x87 | SSE: the 512-byte legacy area and the
    /// 64-byte header. The compacted form of the same components has the same size.
    public static let xsaveAreaSize: UInt32 = 576

    /// Leaf 0xD: subleaf 0 = the XCR0 bits offered and the area sizes (the size for the
    /// components XCR0 enables is 576 whichever of the two is enabled, x87 being
    /// mandatory), subleaf 1 = XSAVEOPT and XSAVEC (no XGETBV with ECX = 1, no
    /// XSAVES/IA32_XSS), subleaves 2-63 = zeros: no further component exists.
    private func xsaveComponents(_ subleaf: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        switch subleaf {
        case 0: return (UInt32(Self.xsaveComponents), Self.xsaveAreaSize, Self.xsaveAreaSize, 0)
        case 1: return (1 << 0 | 1 << 1, Self.xsaveAreaSize, 0, 0)
        default: return (0, 0, 0, 0)
        }
    }

    /// Leaf 0xB / 0x1F: level 0 = SMT (one thread per core), level 1 = core (every vCPU
    /// in one package); EDX = x2APIC ID on every subleaf.
    private func topology(_ subleaf: UInt32, apicID: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        switch subleaf {
        case 0: return (0, 1, 1 << 8, apicID)
        case 1: return (coreBits, UInt32(cpuCount), 2 << 8 | 1, apicID)
        default: return (0, 0, subleaf & 0xFF, apicID)
        }
    }

    /// The 4-bit associativity code of 0x8000_0006 (same table on Intel and AMD for the
    /// values used here).
    private func associativityCode(_ ways: UInt32) -> UInt32 {
        switch ways {
        case 1: 1
        case 2: 2
        case 4: 4
        case 8: 6
        case 16: 8
        case 32: 0xA
        case 48: 0xB
        case 64: 0xC
        case 96: 0xD
        case 128: 0xE
        default: 0xF   // fully associative / see leaf 0x8000_001D
        }
    }
}

private func le32(_ bytes: [UInt8], _ i: Int) -> UInt32 {
    UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
}
