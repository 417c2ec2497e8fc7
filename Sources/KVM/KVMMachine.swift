import GuestMemory
import X86

extension KVMDevice {
    /// A VM over `memory` with `cpus` vCPUs, each given the host's supported CPUID with
    /// its own APIC ID.
    ///
    /// Every region of the memory map becomes a memslot on the same host pages the
    /// interpreter uses. ROM is mapped writable: on PVM hosts, a descriptor load from a
    /// GDT in a read-only memslot (the CPU setting the accessed bit) loops forever in
    /// the host's instruction emulator (see Documentation/KVM.md).
    /// With `logDirtyPages`, RAM slots track writes for `KVMVirtualMachine.dirtyPages`
    /// (slot numbers are the indices of `memory.regions`).
    public func makeMachine(memory: GuestMemoryMap, cpus: Int, logDirtyPages: Bool = false) throws(KVMError) -> (KVMVirtualMachine, [KVMVCPU]) {
        let vm = try createVM()
        vm.memoryOwner = memory
        for (slot, region) in memory.regions.enumerated() {
            try vm.mapMemory(slot: UInt32(slot), guestAddress: region.start, size: region.size, host: region.host, readonly: false,
                             logDirtyPages: logDirtyPages && region.kind == .ram)
        }
        vm.enableAPICMSRExits(filtered: [MSR.apicBase, MSR.tscDeadline])
        let cpuid = try supportedCPUID()
        var vcpus: [KVMVCPU] = []
        for i in 0..<cpus {
            let vcpu = try vm.createVCPU(index: i)
            try vcpu.setCPUID(cpuid.map { e in
                var e = e
                if e.function == 1 { e.ebx = e.ebx & 0x00FF_FFFF | UInt32(i & 0xFF) << 24 }
                if e.function == 0xB || e.function == 0x1F { e.edx = UInt32(i) }
                return e
            })
            vcpus.append(vcpu)
        }
        return (vm, vcpus)
    }
}
