import Glibc
import GuestMemory
import HostOS
import X86

extension KVMDevice {
    /// A VM over `memory` with `cpus` vCPUs, each given the CPUID of `cpu` with its own
    /// APIC IDs, and the MSRs that model implies answered in user space from `cpu`.
    ///
    /// Every region of the memory map becomes a memslot on the same host pages the
    /// interpreter uses. ROM is mapped writable: on PVM hosts, a descriptor load from a
    /// GDT in a read-only memslot (the CPU setting the accessed bit) loops forever in
    /// the host's instruction emulator (see Documentation/KVM.md).
    /// With `logDirtyPages`, RAM slots track writes for `KVMVirtualMachine.dirtyPages`
    /// (slot numbers are the indices of `memory.regions`).
    public func makeMachine(memory: GuestMemoryMap, cpus: Int, logDirtyPages: Bool = false, cpu: GuestCPU) throws(KVMError) -> (KVMVirtualMachine, [KVMVCPU]) {
        let vm = try createVM()
        vm.memoryOwner = memory
        for (slot, region) in memory.regions.enumerated() {
            try vm.mapMemory(slot: UInt32(slot), guestAddress: region.start, size: region.size, host: region.host, readonly: false,
                             logDirtyPages: logDirtyPages && region.kind == .ram)
        }
        // Without user-space MSRs (kernels before 5.10) KVM answers the model's MSRs itself.
        let routed = (try? vm.routeMSRsToUserSpace()) != nil
        var vcpus: [KVMVCPU] = []
        for i in 0..<cpus {
            let vcpu = try vm.createVCPU(index: i)
            try vcpu.setCPUID(cpu)
            if routed { vcpu.guestCPU = cpu }
            vcpus.append(vcpu)
        }
        vm.logsDirtyPages = logDirtyPages
        return (vm, vcpus)
    }
}

extension KVMVirtualMachine {
    /// Makes KVM drop every translation it built from the guest's page tables (shadow
    /// paging: PVM) by removing and re-adding each memslot of `memory`, with every vCPU
    /// kicked out of `KVM_RUN` and kept out meanwhile. Removing a slot discards its dirty
    /// log: the pages it holds go to `written` first.
    public func forgetTranslations(_ memory: GuestMemoryMap, written: (UInt64) -> Void) throws(KVMError) {
        // One vCPU thread at a time: two removing the same slot would fail.
        pthread_mutex_lock(memslotLock)
        defer { pthread_mutex_unlock(memslotLock) }
        // No vCPU in KVM_RUN meanwhile: one would find no memory behind its page tables
        // (seen: an AP's fetch failed and it triple-faulted).
        kickAllVCPUs()
        pthread_rwlock_wrlock(runLock)
        defer { pthread_rwlock_unlock(runLock) }
        for (slot, region) in memory.regions.enumerated() {
            let logged = logsDirtyPages && region.kind == .ram
            if logged { try takeWrittenPages(slot: slot, region, written: written) }
            try mapMemory(slot: UInt32(slot), guestAddress: region.start, size: 0, host: region.host, readonly: false)
            try mapMemory(slot: UInt32(slot), guestAddress: region.start, size: region.size, host: region.host, readonly: false,
                          logDirtyPages: logged)
        }
    }

    /// The guest-physical addresses of the RAM pages KVM's vCPUs wrote since the last
    /// look (the memslots' dirty logs, which this clears), to `written`.
    public func takeWrittenPages(_ memory: GuestMemoryMap, written: (UInt64) -> Void) throws(KVMError) {
        guard logsDirtyPages else { throw KVMError("the memory slots do not log dirty pages", Errno(EINVAL)) }
        // Not while another thread has a slot removed (`forgetTranslations`).
        pthread_mutex_lock(memslotLock)
        defer { pthread_mutex_unlock(memslotLock) }
        for (slot, region) in memory.regions.enumerated() where region.kind == .ram {
            try takeWrittenPages(slot: slot, region, written: written)
        }
    }

    /// Memslot `slot`'s dirty log (cleared), as the guest-physical addresses of `region`'s pages.
    private func takeWrittenPages(slot: Int, _ region: MemoryRegion, written: (UInt64) -> Void) throws(KVMError) {
        for page in try dirtyPages(slot: UInt32(slot), pages: Int(region.size >> 12)) { written(region.start + UInt64(page) << 12) }
    }
}
