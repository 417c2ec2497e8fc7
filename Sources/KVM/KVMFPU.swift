import CKVM
import HostOS
import X86

// The x87, MMX and SSE registers and MXCSR between CPUState and KVM, so state moves between
// KVM and the interpreter with the vCPU (a handoff of one SSE instruction at CPL 0 must see
// the XMM values KVM left). Through KVM_GET_XSAVE/KVM_SET_XSAVE: its legacy area is the
// 64-bit FXSAVE layout (fcw 0, fsw 2, abridged ftw 4, fop 6, fip 8, fdp 16, MXCSR 24,
// ST(0)-ST(7) from 32 in stack order, XMM0-15 from 160) and XSTATE_BV at 512 says which
// components hold values (a clear bit: the component is in its initial state). This
// host's PVM KVM_GET_FPU reports MXCSR as 0 (Documentation/HostLimitations.md), so
// KVM_GET_FPU/KVM_SET_FPU (struct kvm_fpu: the same fields at other offsets) are only the
// fallback when XSAVE is unavailable. XCR0 moves through KVM_GET_XCRS/KVM_SET_XCRS where
// KVM has them (KVM_CAP_XCRS; not under this host's PVM, which offers no XSAVE). Each
// ioctl the host's KVM has (KVM_CHECK_EXTENSION) must succeed, or the state is not moved.
extension KVMVCPU {
    func readFPU(into s: inout CPUState) throws(BackendError) {
        var xcrs = kvm_xcrs()
        if stateIoctls.xcrs {
            guard ckvm_ioctl_ptr(fd, CKVM_GET_XCRS, &xcrs) == 0 else { throw BackendError("KVM_GET_XCRS: \(Errno.current)") }
            let count = min(Int(xcrs.nr_xcrs), 16)
            withUnsafeBytes(of: xcrs.xcrs) { b in
                for i in 0..<count {
                    let x = b.loadUnaligned(fromByteOffset: i * MemoryLayout<kvm_xcr>.stride, as: kvm_xcr.self)
                    if x.xcr == 0 { s.fpu.xcr0 = x.value }
                }
            }
        }
        var xsave = kvm_xsave()
        if stateIoctls.xsave {
            guard ckvm_ioctl_ptr(fd, CKVM_GET_XSAVE, &xsave) == 0 else { throw BackendError("KVM_GET_XSAVE: \(Errno.current)") }
            withUnsafeBytes(of: &xsave) { b in
                let bv = b.loadUnaligned(fromByteOffset: 512, as: UInt64.self)
                if bv & 1 != 0 { Self.loadX87(b, into: &s, fop: 6, fip: 8, fdp: 16, fpr: 32) } else { s.fpu.initializeX87() }
                for i in 0..<16 {
                    s.fpu.xmm[i] = bv & 2 != 0 ? XMMRegister(low: b.loadUnaligned(fromByteOffset: 160 + 16 * i, as: UInt64.self),
                                                             high: b.loadUnaligned(fromByteOffset: 168 + 16 * i, as: UInt64.self)) : XMMRegister()
                }
                s.fpu.mxcsr = b.loadUnaligned(fromByteOffset: 24, as: UInt32.self)
            }
            return
        }
        var fpu = kvm_fpu()
        guard ckvm_ioctl_ptr(fd, CKVM_GET_FPU, &fpu) == 0 else { throw BackendError("KVM_GET_FPU: \(Errno.current)") }
        withUnsafeBytes(of: &fpu) { b in
            Self.loadX87(b, into: &s, fop: 134, fip: 136, fdp: 144, fpr: 0)
            for i in 0..<16 {
                s.fpu.xmm[i] = XMMRegister(low: b.loadUnaligned(fromByteOffset: 152 + 16 * i, as: UInt64.self),
                                           high: b.loadUnaligned(fromByteOffset: 160 + 16 * i, as: UInt64.self))
            }
            s.fpu.mxcsr = b.loadUnaligned(fromByteOffset: 408, as: UInt32.self)
        }
    }

    func writeFPU(_ s: CPUState) throws(BackendError) {
        // XCR0 first: XSAVE state for a component XCR0 leaves off would not load. Without
        // KVM_CAP_XCRS KVM keeps XCR0 as x87 only, which is all a guest without XSAVE has.
        if stateIoctls.xcrs {
            var xcrs = kvm_xcrs()
            xcrs.nr_xcrs = 1
            xcrs.xcrs.0.xcr = 0
            xcrs.xcrs.0.value = s.fpu.xcr0
            guard ckvm_ioctl_ptr(fd, CKVM_SET_XCRS, &xcrs) == 0 else { throw BackendError("KVM_SET_XCRS(XCR0 = 0x\(String(s.fpu.xcr0, radix: 16))): \(Errno.current)") }
        }
        var xsave = kvm_xsave()
        if stateIoctls.xsave {
            // The current image first: its other components stay as they are.
            guard ckvm_ioctl_ptr(fd, CKVM_GET_XSAVE, &xsave) == 0 else { throw BackendError("KVM_GET_XSAVE: \(Errno.current)") }
            withUnsafeMutableBytes(of: &xsave) { b in
                Self.storeX87(s, b, fop: 6, fip: 8, fdp: 16, fpr: 32)
                for i in 0..<16 {
                    b.storeBytes(of: s.fpu.xmm[i].low, toByteOffset: 160 + 16 * i, as: UInt64.self)
                    b.storeBytes(of: s.fpu.xmm[i].high, toByteOffset: 168 + 16 * i, as: UInt64.self)
                }
                b.storeBytes(of: s.fpu.mxcsr, toByteOffset: 24, as: UInt32.self)
                let bv = b.loadUnaligned(fromByteOffset: 512, as: UInt64.self)
                b.storeBytes(of: bv | 3, toByteOffset: 512, as: UInt64.self)
            }
            guard ckvm_ioctl_ptr(fd, CKVM_SET_XSAVE, &xsave) == 0 else { throw BackendError("KVM_SET_XSAVE: \(Errno.current)") }
            return
        }
        var fpu = kvm_fpu()
        withUnsafeMutableBytes(of: &fpu) { b in
            Self.storeX87(s, b, fop: 134, fip: 136, fdp: 144, fpr: 0)
            for i in 0..<16 {
                b.storeBytes(of: s.fpu.xmm[i].low, toByteOffset: 152 + 16 * i, as: UInt64.self)
                b.storeBytes(of: s.fpu.xmm[i].high, toByteOffset: 160 + 16 * i, as: UInt64.self)
            }
            b.storeBytes(of: s.fpu.mxcsr, toByteOffset: 408, as: UInt32.self)
        }
        guard ckvm_ioctl_ptr(fd, CKVM_SET_FPU, &fpu) == 0 else { throw BackendError("KVM_SET_FPU: \(Errno.current)") }
    }

    /// fcw, fsw and the abridged tag byte are at 0, 2, 4 (FXSAVE) or 128, 130, 132 (kvm_fpu).
    private static func loadX87(_ b: UnsafeRawBufferPointer, into s: inout CPUState, fop: Int, fip: Int, fdp: Int, fpr: Int) {
        let base = fpr == 0 ? 128 : 0
        s.fpu.fcw = b.loadUnaligned(fromByteOffset: base, as: UInt16.self)
        s.fpu.fsw = b.loadUnaligned(fromByteOffset: base + 2, as: UInt16.self)
        s.fpu.ftw = b[base + 4]
        s.fpu.fop = b.loadUnaligned(fromByteOffset: fop, as: UInt16.self)
        s.fpu.fip = b.loadUnaligned(fromByteOffset: fip, as: UInt64.self)
        s.fpu.fdp = b.loadUnaligned(fromByteOffset: fdp, as: UInt64.self)
        let top = s.fpu.top
        for i in 0..<8 {
            s.fpu.st[(top + i) & 7] = X87Register(significand: b.loadUnaligned(fromByteOffset: fpr + 16 * i, as: UInt64.self),
                                                  signExponent: b.loadUnaligned(fromByteOffset: fpr + 16 * i + 8, as: UInt16.self))
        }
    }

    private static func storeX87(_ s: CPUState, _ b: UnsafeMutableRawBufferPointer, fop: Int, fip: Int, fdp: Int, fpr: Int) {
        let base = fpr == 0 ? 128 : 0
        b.storeBytes(of: s.fpu.fcw, toByteOffset: base, as: UInt16.self)
        b.storeBytes(of: s.fpu.fsw, toByteOffset: base + 2, as: UInt16.self)
        b[base + 4] = s.fpu.ftw
        b.storeBytes(of: s.fpu.fop, toByteOffset: fop, as: UInt16.self)
        b.storeBytes(of: s.fpu.fip, toByteOffset: fip, as: UInt64.self)
        b.storeBytes(of: s.fpu.fdp, toByteOffset: fdp, as: UInt64.self)
        let top = s.fpu.top
        for i in 0..<8 {
            b.storeBytes(of: s.fpu.st[(top + i) & 7].significand, toByteOffset: fpr + 16 * i, as: UInt64.self)
            b.storeBytes(of: s.fpu.st[(top + i) & 7].signExponent, toByteOffset: fpr + 16 * i + 8, as: UInt16.self)
        }
    }
}
