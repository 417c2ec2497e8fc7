/// Why a backend stopped executing guest instructions and returned to the shared run loop.
///
/// Both backends produce these; RunLoop's `ExitHandler` answers them the same way for
/// both, for every caller. Port and MMIO data buffers belong to the backend and stay valid
/// until its next `run()`: for an `in` the handler fills the buffer, for an `out` it reads it.
public enum VCPUExit {
    /// `in`/`ins`: `count` values of `size` bytes each, to be read from `port` into `data`.
    case portIn(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer)
    /// `out`/`outs`: `count` values of `size` bytes each, from `data`, to `port`.
    case portOut(port: UInt16, size: Int, count: Int, data: UnsafeRawPointer)
    /// A read of `size` bytes from a physical address no RAM backs.
    case mmioRead(address: UInt64, size: Int, data: UnsafeMutableRawPointer)
    /// A write of `size` bytes to a physical address no RAM backs (or to ROM).
    case mmioWrite(address: UInt64, size: Int, data: UnsafeRawPointer)
    /// `hlt` executed.
    case halt
    /// The vCPU shut down (triple fault).
    case shutdown
    /// An instruction the backend cannot execute.
    case unsupportedInstruction(String)
    /// The hardware refused to enter the guest.
    case failedEntry(reason: UInt64)
    /// The backend reported an internal error it could not classify.
    case internalError(String)
    /// A single step completed (debugging / lockstep).
    case debugStep
    /// `run()` was interrupted by `kick()` or a signal; nothing happened in the guest.
    case interrupted
    /// The backend ran out of its instruction budget.
    case instructionLimit
}

/// An error from a backend's own machinery (not the guest's behaviour).
public struct BackendError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// An execution backend for one vCPU: executes guest instructions and reports exits.
///
/// The shared vCPU loop owns everything else (devices, stop handling, reporting).
/// One instance per vCPU; `run()` is only called from that vCPU's thread, `kick()`
/// from any thread.
public protocol VCPUBackend: AnyObject {
    /// Runs the guest until something needs the shared loop's attention.
    func run() throws(BackendError) -> VCPUExit
    /// Reads the complete architectural state.
    func readState() throws(BackendError) -> CPUState
    /// Replaces the complete architectural state.
    func writeState(_ state: CPUState) throws(BackendError)
    /// Translates a linear address through the guest's page tables (nil when unmapped).
    func translate(linear: UInt64) -> UInt64?
    /// Makes a `run()` in progress on another thread return `.interrupted` soon.
    func kick()
    /// RFLAGS.IF as of the last exit (cheaper than `readState` on KVM: HLT asks for it).
    var interruptFlag: Bool { get }
    /// Instructions this vCPU has retired, or nil when the backend does not count them (KVM).
    var instructionsRetired: UInt64? { get }
    /// Where external interrupts come from (nil: none); consulted at instruction boundaries
    /// (the interpreter) or before each entry (KVM's injection).
    var interruptController: (any InterruptController)? { get set }
    /// The vCPU's own timer (its local APIC timer), which the shared loop fires on this
    /// vCPU's thread: `run()` returns `.interrupted` soon after its deadline passes.
    var ownTimer: TimerDeadline? { get set }
}

/// One guest memory access, as the interpreter's trace records it.
public struct MemoryAccess: Sendable, Equatable {
    public var write: Bool
    public var linear: UInt64
    public var physical: UInt64
    public var size: Int
    public var value: UInt64
    public init(write: Bool, linear: UInt64, physical: UInt64, size: Int, value: UInt64) {
        self.write = write
        self.linear = linear
        self.physical = physical
        self.size = size
        self.value = value
    }
}

/// An exception or interrupt a backend delivered to the guest.
public struct InterruptEvent: Sendable, Equatable {
    public enum Kind: String, Sendable { case exception, software, external }
    public var kind: Kind
    public var vector: UInt8
    public var errorCode: UInt32?
    /// Where the guest was when it happened (CS:RIP of the faulting or interrupted instruction).
    public var cs: UInt16
    public var rip: UInt64
    public init(kind: Kind, vector: UInt8, errorCode: UInt32?, cs: UInt16, rip: UInt64) {
        self.kind = kind
        self.vector = vector
        self.errorCode = errorCode
        self.cs = cs
        self.rip = rip
    }
}

/// A backend that can report the memory accesses and interrupts of single-stepped
/// instructions (the interpreter; KVM cannot see them).
public protocol TraceSource: AnyObject {
    /// Single-step and record memory accesses and interrupt deliveries.
    var tracing: Bool { get set }
    /// The accesses and events since the last call.
    func drainTrace() -> (accesses: [MemoryAccess], events: [InterruptEvent])
}

/// The interrupt controllers' side of a vCPU (the PIC and APICs plug in here). Both
/// backends use it the same way: at an instruction boundary with RFLAGS.IF set and no
/// interrupt shadow, a pending interrupt is acknowledged and delivered through the
/// guest's IVT or IDT. A controller that raises an interrupt kicks the vCPU, so a
/// running backend reaches a boundary soon and a halted one wakes up.
public protocol InterruptController: AnyObject, Sendable {
    /// Whether a maskable interrupt is pending for `vcpu`.
    func hasPendingInterrupt(vcpu: Int) -> Bool
    /// Takes (acknowledges, as an INTA cycle does) the highest-priority pending
    /// interrupt for `vcpu`, returning its vector.
    func acknowledgeInterrupt(vcpu: Int) -> UInt8?
    /// Takes a pending NMI for `vcpu`. NMIs ignore RFLAGS.IF; a second one waits until the
    /// guest's handler has returned with IRET.
    func takeNMI(vcpu: Int) -> Bool
    /// Whether an NMI is pending for `vcpu` (without taking it).
    func hasNMI(vcpu: Int) -> Bool
    /// RDMSR of an MSR the interrupt controller owns (IA32_APIC_BASE, IA32_TSC_DEADLINE,
    /// the x2APIC range): its value, or nil when it is not the controller's or faults now.
    func readMSR(vcpu: Int, _ index: UInt32) -> UInt64?
    /// WRMSR of such an MSR (`tscNow`: the vCPU's TSC, ticking at `tscKHz`, for TSC-deadline
    /// mode): true when written, false when the write faults (#GP), nil when it is not the
    /// controller's.
    func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64, tscNow: UInt64, tscKHz: UInt64) -> Bool?
    /// The local APIC's task-priority register (CR8 is its bits 7:4).
    func taskPriority(vcpu: Int) -> UInt8
    func setTaskPriority(vcpu: Int, _ tpr: UInt8)
}

extension InterruptController {
    /// Controllers without an NMI source.
    public func takeNMI(vcpu: Int) -> Bool { false }
    public func hasNMI(vcpu: Int) -> Bool { false }
    /// Controllers without MSRs or a TPR (the 8259A pair alone).
    public func readMSR(vcpu: Int, _ index: UInt32) -> UInt64? { nil }
    public func writeMSR(vcpu: Int, _ index: UInt32, _ value: UInt64, tscNow: UInt64, tscKHz: UInt64) -> Bool? { nil }
    public func taskPriority(vcpu: Int) -> UInt8 { 0 }
    public func setTaskPriority(vcpu: Int, _ tpr: UInt8) {}
}
