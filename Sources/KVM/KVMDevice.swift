#if canImport(Glibc)
import Glibc
#endif
import CKVM
import HostOS
import Synchronization

/// A failed KVM call: which ioctl (or open) and the errno it returned.
public struct KVMError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Errno
    public init(_ call: String, _ errno: Errno = .current) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(errno)" }
}

/// Capabilities Tandem looks at (`KVM_CAP_*`).
public enum KVMCapability: Int32, CaseIterable, Sendable {
    case userMemory = 3
    case setTSSAddress = 4
    case nrVCPUs = 9
    case maxVCPUs = 66
    case syncRegs = 74
    case debugRegisters = 50
    case readonlyMemory = 81
    case immediateExit = 136
    case setGuestDebug = 23
    case extendedCPUID = 7
    case userSpaceMSR = 188
    case msrFilter = 189
    case vcpuEvents = 41
    case xsave = 55
    case xcrs = 56

    public var name: String {
        switch self {
        case .userMemory: "KVM_CAP_USER_MEMORY"
        case .setTSSAddress: "KVM_CAP_SET_TSS_ADDR"
        case .nrVCPUs: "KVM_CAP_NR_VCPUS"
        case .maxVCPUs: "KVM_CAP_MAX_VCPUS"
        case .syncRegs: "KVM_CAP_SYNC_REGS"
        case .debugRegisters: "KVM_CAP_DEBUGREGS"
        case .readonlyMemory: "KVM_CAP_READONLY_MEM"
        case .immediateExit: "KVM_CAP_IMMEDIATE_EXIT"
        case .setGuestDebug: "KVM_CAP_SET_GUEST_DEBUG"
        case .extendedCPUID: "KVM_CAP_EXT_CPUID"
        case .userSpaceMSR: "KVM_CAP_X86_USER_SPACE_MSR"
        case .msrFilter: "KVM_CAP_X86_MSR_FILTER"
        case .vcpuEvents: "KVM_CAP_VCPU_EVENTS"
        case .xsave: "KVM_CAP_XSAVE"
        case .xcrs: "KVM_CAP_XCRS"
        }
    }
}

/// The `/dev/kvm` file descriptor: system-wide queries and VM creation.
public final class KVMDevice: @unchecked Sendable {
    public static let defaultPath = "/dev/kvm"
    /// The KVM API version Tandem is written against (`KVM_GET_API_VERSION`).
    public static let expectedAPIVersion = 12

    let fd: Int32
    public let path: String

    /// `open(path, O_RDWR | O_CLOEXEC)` and a check of `KVM_GET_API_VERSION`.
    public init(path: String = defaultPath) throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw KVMError("open \(path)") }
        let version = ckvm_ioctl_int(fd, CKVM_GET_API_VERSION, 0)
        let failure = Errno.current
        // Checked before the object exists: a failed class initializer still runs deinit,
        // which would close the descriptor a second time (someone else's, by then).
        guard version == Self.expectedAPIVersion else {
            close(fd)
            if version < 0 { throw KVMError("\(path) is not a KVM device (KVM_GET_API_VERSION)", failure) }
            throw KVMError("\(path) speaks KVM API version \(version), Tandem needs \(Self.expectedAPIVersion)", Errno(EINVAL))
        }
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    /// `KVM_GET_API_VERSION`.
    public var apiVersion: Int { Int(ckvm_ioctl_int(fd, CKVM_GET_API_VERSION, 0)) }

    /// `KVM_CHECK_EXTENSION`: 0 when absent, otherwise a capability-specific positive value.
    public func check(_ capability: KVMCapability) -> Int {
        max(0, Int(ckvm_ioctl_int(fd, CKVM_CHECK_EXTENSION, UInt(capability.rawValue))))
    }

    /// `KVM_GET_VCPU_MMAP_SIZE`: the size of each vCPU's shared `kvm_run` area.
    func vcpuMmapSize() throws(KVMError) -> Int {
        let n = ckvm_ioctl_int(fd, CKVM_GET_VCPU_MMAP_SIZE, 0)
        guard n > 0 else { throw KVMError("KVM_GET_VCPU_MMAP_SIZE") }
        return Int(n)
    }

    /// `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves this host's KVM can offer a guest.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var capacity = 128
        while true {
            let bytes = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            let header = raw.assumingMemoryBound(to: kvm_cpuid2.self)
            header.pointee.nent = UInt32(capacity)
            if ckvm_ioctl_ptr(fd, CKVM_GET_SUPPORTED_CPUID, raw) == 0 {
                let entries = (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
                return Array(UnsafeBufferPointer(start: entries, count: Int(header.pointee.nent)))
            }
            guard errno == E2BIG, capacity < 4096 else { throw KVMError("KVM_GET_SUPPORTED_CPUID") }
            capacity *= 2
        }
    }

    /// `KVM_CREATE_VM`.
    public func createVM() throws(KVMError) -> KVMVirtualMachine {
        var fd: Int32
        repeat { fd = ckvm_ioctl_int(self.fd, CKVM_CREATE_VM, 0) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw KVMError("KVM_CREATE_VM") }
        return KVMVirtualMachine(fd: fd, device: self)
    }
}

/// A VM file descriptor: memory slots and vCPU creation.
public final class KVMVirtualMachine: @unchecked Sendable {
    let fd: Int32
    public let device: KVMDevice
    /// The owner of the host memory behind the memslots: it must outlive the VM fd.
    var memoryOwner: AnyObject?
    /// The RAM memslots log dirty pages (`makeMachine(logDirtyPages:)`).
    public internal(set) var logsDirtyPages = false
    /// Serialises `forgetTranslations` between vCPU threads.
    let memslotLock: UnsafeMutablePointer<pthread_mutex_t> = {
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        return lock
    }()

    /// Held for reading by every vCPU thread inside `KVM_RUN`, and for writing while the
    /// memslots are remapped (`forgetTranslations`): a vCPU running meanwhile would find
    /// no memory behind its page tables.
    let runLock: UnsafeMutablePointer<pthread_rwlock_t> = {
        let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
        ckvm_rwlock_init_writer_preferring(lock)
        return lock
    }()
    /// What kicks each of the VM's vCPUs out of `KVM_RUN` for a remap (not the vCPUs:
    /// see `KVMKicker`).
    private let kickers = Mutex<[KVMKicker]>([])

    /// Makes every vCPU of the VM leave `KVM_RUN` soon (each returns `.interrupted` once).
    func kickAllVCPUs() {
        for kicker in kickers.withLock({ $0 }) { kicker.kick() }
    }

    init(fd: Int32, device: KVMDevice) {
        self.fd = fd
        self.device = device
        // Intel VMX needs three pages for real-mode emulation; elsewhere this is a no-op.
        // The address sits just below the largest ROM alias (top 256 KiB of 4 GiB).
        _ = ckvm_ioctl_int(fd, CKVM_SET_TSS_ADDR, 0xFFFB_D000)
    }

    deinit {
        close(fd)
        pthread_mutex_destroy(memslotLock)
        memslotLock.deallocate()
        pthread_rwlock_destroy(runLock)
        runLock.deallocate()
    }

    /// `KVM_SET_USER_MEMORY_REGION`: backs `size` bytes of guest-physical memory at
    /// `guestAddress` with host memory at `host` (read-only if `readonly`).
    public func mapMemory(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, readonly: Bool,
                          logDirtyPages: Bool = false) throws(KVMError) {
        var flags: UInt32 = readonly ? UInt32(KVM_MEM_READONLY) : 0
        if logDirtyPages { flags |= UInt32(KVM_MEM_LOG_DIRTY_PAGES) }
        var region = kvm_userspace_memory_region(
            slot: slot, flags: flags,
            guest_phys_addr: guestAddress, memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        guard ckvm_ioctl_ptr(fd, CKVM_SET_USER_MEMORY_REGION, &region) == 0 else {
            throw KVMError("KVM_SET_USER_MEMORY_REGION slot \(slot) at 0x\(String(guestAddress, radix: 16)) (\(size) bytes)")
        }
    }

    /// `KVM_GET_DIRTY_LOG`: the pages of memslot `slot` (of `pages` pages) written since
    /// the last call, as page indices within the slot. Needs `logDirtyPages` at mapping.
    public func dirtyPages(slot: UInt32, pages: Int) throws(KVMError) -> [Int] {
        let words = (pages + 63) / 64
        var bitmap = [UInt64](repeating: 0, count: max(words, 1))
        let result = bitmap.withUnsafeMutableBytes { bytes -> Int32 in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = bytes.baseAddress
            return ckvm_ioctl_ptr(fd, CKVM_GET_DIRTY_LOG, &log)
        }
        guard result == 0 else { throw KVMError("KVM_GET_DIRTY_LOG slot \(slot)") }
        var dirty: [Int] = []
        for (w, word) in bitmap.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let b = bits.trailingZeroBitCount
                dirty.append(w * 64 + b)
                bits &= bits - 1
            }
        }
        return dirty
    }

    /// `KVM_CREATE_VCPU` and the mmap of its `kvm_run` area.
    public func createVCPU(index: Int) throws(KVMError) -> KVMVCPU {
        let fd = ckvm_ioctl_int(self.fd, CKVM_CREATE_VCPU, UInt(index))
        guard fd >= 0 else { throw KVMError("KVM_CREATE_VCPU \(index)") }
        let size = try device.vcpuMmapSize()
        let run = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let run, run != MAP_FAILED else {
            close(fd)
            throw KVMError("mmap kvm_run of vCPU \(index)")
        }
        let sync = device.check(.syncRegs)
        let syncEvents = sync & Int(CKVM_SYNC_X86_EVENTS) != 0
        let syncRegisters = sync & Int(CKVM_SYNC_X86_REGS | CKVM_SYNC_X86_SREGS) == Int(CKVM_SYNC_X86_REGS | CKVM_SYNC_X86_SREGS)
        let state = KVMVCPU.StateIoctls(events: device.check(.vcpuEvents) > 0, debugRegisters: device.check(.debugRegisters) > 0,
                                        xsave: device.check(.xsave) > 0, xcrs: device.check(.xcrs) > 0)
        let vcpu = KVMVCPU(fd: fd, index: index, run: run, runSize: size, vm: self, syncEvents: syncEvents, stateIoctls: state)
        vcpu.canSyncRegisters = syncRegisters
        kickers.withLock { $0.append(vcpu.kicker) }
        return vcpu
    }
}

