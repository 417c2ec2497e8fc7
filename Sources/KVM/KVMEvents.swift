#if canImport(Glibc)
import Glibc
#endif
import CKVM
import HostOS
import X86

// The events between instructions (CPUState.events) through KVM_GET_VCPU_EVENTS /
// KVM_SET_VCPU_EVENTS: an exception, NMI or interrupt KVM has begun to inject, a queued
// NMI, NMI blocking and the interrupt shadow. The run state (running, HLT, wait-for-SIPI)
// is not KVM's here: without an in-kernel local APIC, HLT exits to user space and KVM's MP
// state stays RUNNABLE (KVM_SET_MP_STATE refuses anything else), so the vCPU loop keeps it.
extension KVMVCPU {
    func readEvents(into s: inout CPUState) throws(BackendError) {
        guard stateIoctls.events else { return }
        var k = kvm_vcpu_events()
        guard ckvm_ioctl_ptr(fd, CKVM_GET_VCPU_EVENTS, &k) == 0 else { throw BackendError("KVM_GET_VCPU_EVENTS: \(Errno.current)") }
        var e = VCPUEvents()
        if k.exception.injected != 0 {
            e.exception = InjectedException(vector: k.exception.nr, errorCode: k.exception.has_error_code != 0 ? k.exception.error_code : nil)
        }
        if k.interrupt.injected != 0 { e.interrupt = InjectedInterrupt(vector: k.interrupt.nr, soft: k.interrupt.soft != 0) }
        e.nmiInjected = k.nmi.injected != 0
        e.nmiPending = k.nmi.pending != 0
        e.nmiBlocked = k.nmi.masked != 0
        e.interruptShadow = k.interrupt.shadow & (InterruptShadow.movSS | InterruptShadow.sti)
        s.events = e
    }

    func writeEvents(_ s: CPUState) throws(BackendError) {
        guard stateIoctls.events else { return }
        var k = kvm_vcpu_events()
        let e = s.events
        if let x = e.exception {
            k.exception.injected = 1
            k.exception.nr = x.vector
            k.exception.has_error_code = x.errorCode != nil ? 1 : 0
            k.exception.error_code = x.errorCode ?? 0
        }
        if let i = e.interrupt {
            k.interrupt.injected = 1
            k.interrupt.nr = i.vector
            k.interrupt.soft = i.soft ? 1 : 0
        }
        k.interrupt.shadow = e.interruptShadow
        k.nmi.injected = e.nmiInjected ? 1 : 0
        k.nmi.pending = e.nmiPending ? 1 : 0
        k.nmi.masked = e.nmiBlocked ? 1 : 0
        k.flags = UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW)
        guard ckvm_ioctl_ptr(fd, CKVM_SET_VCPU_EVENTS, &k) == 0 else { throw BackendError("KVM_SET_VCPU_EVENTS: \(Errno.current)") }
        // The events kvm_run kept from the last exit are stale now (`injectAtEntry` would
        // write them back).
        eventsCurrent = false
    }
}

extension KVMVCPU {
    /// Completes the exit the vCPU loop has answered (an `in`'s value, an `out`, an MMIO
    /// access: KVM advances RIP past them only at the next KVM_RUN) with a KVM_RUN that
    /// returns at once (`immediate_exit`), so that the registers are at an instruction
    /// boundary: a snapshot taken without it would run an `out` again on restore.
    /// Nothing to do when no exit awaits its ending (`exitAwaitingEntry`).
    public func completePendingExit() throws(BackendError) {
        guard exitAwaitingEntry else { return }
        shared.pointee.immediate_exit = 1
        defer { shared.pointee.immediate_exit = 0 }
        pthread_rwlock_rdlock(vm.runLock)
        let result = ckvm_ioctl_int(fd, CKVM_RUN, 0)
        let error = errno
        pthread_rwlock_unlock(vm.runLock)
        guard result < 0, error == EINTR || error == EAGAIN else {
            throw BackendError("KVM_RUN with immediate_exit on vCPU \(index): \(result < 0 ? Errno(error).description : "it ran the guest (exit reason \(shared.pointee.exit_reason))")")
        }
        exitAwaitingEntry = false
        eventsCurrent = false
    }
}

extension KVMVCPU {
    /// Has KVM store the general and segment registers in `kvm_run` at every exit
    /// (KVM_SYNC_X86_REGS and _SREGS, where KVM offers them), for `nextInstruction`.
    public func storeRegistersAtExits(_ on: Bool) {
        guard canSyncRegisters else { return }
        let bits = UInt64(CKVM_SYNC_X86_REGS | CKVM_SYNC_X86_SREGS)
        if on { shared.pointee.kvm_valid_regs |= bits } else { shared.pointee.kvm_valid_regs &= ~bits }
    }

    /// Where the vCPU's next instruction is, after an exit: its linear address, and
    /// whether paging translates it. From `kvm_run` when `storeRegistersAtExits` is on
    /// (no system call), else from KVM_GET_REGS and KVM_GET_SREGS. Nil: unreadable.
    public func nextInstruction() -> (linear: UInt64, paging: Bool)? {
        var regs = kvm_regs(), sregs = kvm_sregs()
        if canSyncRegisters && shared.pointee.kvm_valid_regs & UInt64(CKVM_SYNC_X86_REGS) != 0 {
            regs = shared.pointee.s.regs.regs
            sregs = shared.pointee.s.regs.sregs
        } else {
            guard ckvm_ioctl_ptr(fd, CKVM_GET_REGS, &regs) == 0, ckvm_ioctl_ptr(fd, CKVM_GET_SREGS, &sregs) == 0 else { return nil }
        }
        let long64 = sregs.efer & EFER.lma != 0 && sregs.cs.l != 0
        let linear = long64 ? regs.rip : (sregs.cs.base &+ regs.rip) & 0xFFFF_FFFF
        return (linear, sregs.cr0 & CR0.pg != 0)
    }
}
