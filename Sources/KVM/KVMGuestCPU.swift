#if canImport(Glibc)
import Glibc
#endif
import CKVM
import X86

// The guest CPU model on KVM: the machine's one CPUID (Sources/X86/CPUID.swift) handed to
// KVM_SET_CPUID2, and the MSRs that model implies answered in user space from the same
// GuestCPU object the interpreter uses, so both engines agree on them.

extension KVMDevice {
    /// The flags of `candidates` this host's KVM engine can stand behind: a flag KVM must
    /// virtualize (paging, CR4 and APIC features, TSC_AUX, XSAVE state, ...) only when
    /// `KVM_GET_SUPPORTED_CPUID` lists it; a flag that only says an instruction exists
    /// (`CPUFeature.isInstructionOnly`) when the host CPU has it, for KVM runs such
    /// instructions on the host CPU at CPL 3 and otherwise in the host kernel's emulator
    /// or, when that cannot, in the interpreter (PVM's KVM leaves POPCNT, MOVBE, BMI, ...
    /// out of its list although its guests run them on the hardware).
    public func availableFeatures(among candidates: Set<CPUFeature>) throws(KVMError) -> Set<CPUFeature> {
        var supported = Set<CPUFeature>()
        for e in try supportedCPUID() {
            switch (e.function, e.index) {
            case (1, _):
                supported.formUnion(CPUFeature.decode(.leaf1ECX, e.ecx))
                supported.formUnion(CPUFeature.decode(.leaf1EDX, e.edx))
            case (7, 0):
                supported.formUnion(CPUFeature.decode(.leaf7EBX, e.ebx))
                supported.formUnion(CPUFeature.decode(.leaf7ECX, e.ecx))
                supported.formUnion(CPUFeature.decode(.leaf7EDX, e.edx))
            case (0x8000_0001, _):
                supported.formUnion(CPUFeature.decode(.ext1ECX, e.ecx))
                supported.formUnion(CPUFeature.decode(.ext1EDX, e.edx))
            default: break
            }
        }
        let host = Self.hostCPUFlags()
        // The local APIC is Tandem's, in user space: its MSRs reach it when KVM can send
        // MSRs to user space (KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER).
        let userSpaceMSRs = ckvm_ioctl_int(fd, CKVM_CHECK_EXTENSION, 188) > 0 && ckvm_ioctl_int(fd, CKVM_CHECK_EXTENSION, 189) > 0
        return candidates.filter { f in
            switch f {
            case .apic, .x2apic, .tscDeadline: userSpaceMSRs
            default: f.isInstructionOnly ? host.contains(f.linuxName) : supported.contains(f)
            }
        }
    }

    /// The host CPU's flags as Linux names them (/proc/cpuinfo, first processor).
    static func hostCPUFlags() -> Set<String> {
        guard let file = fopen("/proc/cpuinfo", "r") else { return [] }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            let text = String(cString: line!)
            if text.hasPrefix("flags") {
                return Set(text.split(separator: ":", maxSplits: 1).last?.split(whereSeparator: { $0 == " " || $0 == "\n" })
                    .map(String.init) ?? [])
            }
        }
        return []
    }
}

extension KVMVirtualMachine {
    /// Sends the MSRs Tandem answers itself to user space (`KVM_CAP_X86_USER_SPACE_MSR`
    /// and an MSR filter): the CPU model's MSRs, the local APIC's (IA32_APIC_BASE,
    /// TSC_DEADLINE, x2APIC: the interrupt controller lives in user space), and every MSR
    /// neither engine implements, which KVM would otherwise answer from its own emulation
    /// (TSC_ADJUST, its paravirtual MSRs, ...) where the interpreter raises #GP. KVM keeps
    /// those whose state it holds and the interpreter implements alike (TSC, SYSENTER,
    /// PAT, MTRRs, EFER, STAR..FMASK, FS/GS bases).
    func routeMSRsToUserSpace(keepingLSTAR: Bool = true) throws(KVMError) {
        var cap = kvm_enable_cap()
        cap.cap = 188   // KVM_CAP_X86_USER_SPACE_MSR
        cap.args.0 = 1 | 2 | 4   // exits for MSRs KVM would #GP (INVAL), does not know (UNKNOWN), is filtered from (FILTER)
        guard ckvm_ioctl_ptr(fd, CKVM_ENABLE_CAP, &cap) == 0 else { throw KVMError("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)") }

        let kept: [UInt32] = [0x10, 0x174, 0x175, 0x176, 0x277, 0xFE, 0x250, 0x258, 0x259, 0x2FF]
            + Array(0x200...0x20F) + Array(0x268...0x26F)
            + [0xC000_0080, 0xC000_0081, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101, 0xC000_0102]
            + (keepingLSTAR ? [MSR.lstar] : [])
        let ranges: [(base: UInt32, count: UInt32)] = [(0, 0x2000), (0xC000_0000, 0x2000), (0xC001_0000, 0x2000), (0x4B56_4D00, 0x100)]
        var bitmaps: [UnsafeMutablePointer<UInt8>] = []
        defer { bitmaps.forEach { $0.deallocate() } }
        for range in ranges {
            let bytes = Int(range.count / 8)
            let bitmap = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes)
            bitmap.initialize(repeating: 0, count: bytes)
            for msr in kept where msr >= range.base && msr - range.base < range.count {
                let bit = Int(msr - range.base)
                bitmap[bit / 8] |= 1 << UInt8(bit % 8)
            }
            bitmaps.append(bitmap)
        }
        let bases = ranges.map(\.base), counts = ranges.map(\.count)
        let result = bitmaps.map { Optional($0) }.withUnsafeBufferPointer { maps in
            ckvm_set_msr_filter(fd, Int32(ranges.count), bases, counts, maps.baseAddress)
        }
        guard result == 0 else { throw KVMError("KVM_X86_SET_MSR_FILTER") }
    }
}

extension KVMVirtualMachine {
    /// The guest's RDMSR and WRMSR of LSTAR to user space too, where a vCPU that
    /// `deliversNoEvents` answers them from the guest's LSTAR it keeps aside.
    public func routeLSTARToUserSpace() throws(KVMError) {
        try routeMSRsToUserSpace(keepingLSTAR: false)
    }
}

extension KVMVCPU {
    /// `KVM_SET_CPUID2` with the machine's CPUID as this vCPU answers it (its APIC IDs).
    func setCPUID(_ cpu: GuestCPU) throws(KVMError) {
        var entries: [kvm_cpuid_entry2] = []
        for leaf in cpu.cpuid.leaves {
            let subleaves = cpu.cpuid.subleaves(of: leaf)
            for sub in subleaves ?? 0...0 {
                let (a, b, c, d) = cpu.query(leaf: leaf, subleaf: sub, vcpu: index)
                // KVM answers a leaf within range that has no entry with zeros, as the model
                // does. Kept all the same: leaves 0xB/0x1F (KVM answers their undefined
                // subleaves only when subleaf 1 exists) and 0xD (without it KVM lets the guest
                // have every XCR0 state the host has, and PVM then shows AVX in leaf 1; KVM
                // rewrites its EBX from XCR0: Documentation/HostLimitations.md).
                if a | b | c | d == 0 && leaf != 0xB && leaf != 0x1F && leaf != 0xD { continue }
                var e = kvm_cpuid_entry2()
                e.function = leaf
                e.index = sub
                e.flags = subleaves == nil ? 0 : 1   // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                (e.eax, e.ebx, e.ecx, e.edx) = (a, b, c, d)
                entries.append(e)
            }
        }
        try setCPUID(entries)
        // RDTSCP at CPL 3 runs on the hardware, which reads the TSC_AUX KVM loads.
        if cpu.hasTSCAux { _ = try? exchangeMSRs([(GuestCPU.tscAux, cpu.tscAux(vcpu: index))], set: true) }
    }

    /// KVM_EXIT_X86_RDMSR / WRMSR: answers the MSR as the interpreter would (System.swift's
    /// readMSR/writeMSR): the local APIC's through the interrupt controller, the model's
    /// from `guestCPU`; anything else is #GP (KVM injects it when `error` is set).
    func answerMSR(write: Bool) {
        let index = shared.pointee.msr.index
        let value = shared.pointee.msr.data
        var ok = false
        if index == MSR.lstar && deliversNoEvents {
            // (The guest's own, kept aside while KVM holds the sentinel; not canonical: #GP.)
            ok = !write || isCanonical(value)
            if !write { shared.pointee.msr.data = guestLSTAR } else if ok { guestLSTAR = value }
        } else if Self.isAPICMSR(index), let c = interruptController {
            if write {
                let tsc = (try? exchangeMSRs([(MSR.tsc, 0)], set: false).first?.1) ?? 0
                ok = c.writeMSR(vcpu: self.index, index, value, tscNow: tsc, tscKHz: tscKHz) == true
            } else if let v = c.readMSR(vcpu: self.index, index) {
                shared.pointee.msr.data = v
                ok = true
            }
        } else if let cpu = guestCPU {
            if write {
                ok = cpu.writeMSR(vcpu: self.index, index, value)
                if ok && index == GuestCPU.tscAux { _ = try? exchangeMSRs([(index, value)], set: true) }
            } else if let v = cpu.readMSR(vcpu: self.index, index) {
                shared.pointee.msr.data = v
                ok = true
            }
        }
        shared.pointee.msr.error = ok ? 0 : 1
    }

    /// The MSRs the local APIC owns (as the interpreter's `isAPICMSR`).
    static func isAPICMSR(_ index: UInt32) -> Bool {
        index == MSR.apicBase || index == MSR.tscDeadline || (0x800...0x8FF).contains(index)
    }
}
