/// An exception raised while executing an instruction, or a request to leave the
/// execution loop (an exit the shared vCPU loop must handle).
struct Fault: Error {
    var vector: UInt8
    var errorCode: UInt32?

    static let exitVector: UInt8 = 0xFF

    static func de() -> Fault { Fault(vector: 0) }
    static func db() -> Fault { Fault(vector: 1) }
    static func br() -> Fault { Fault(vector: 5) }
    static func ud() -> Fault { Fault(vector: 6) }
    static func nm() -> Fault { Fault(vector: 7) }
    static func ts(_ code: UInt32) -> Fault { Fault(vector: 10, errorCode: code) }
    static func np(_ code: UInt32) -> Fault { Fault(vector: 11, errorCode: code) }
    static func ss(_ code: UInt32 = 0) -> Fault { Fault(vector: 12, errorCode: code) }
    static func gp(_ code: UInt32 = 0) -> Fault { Fault(vector: 13, errorCode: code) }
    static func pf(_ code: UInt32) -> Fault { Fault(vector: 14, errorCode: code) }
    /// SIMD floating-point exception (unmasked MXCSR exception with CR4.OSXMMEXCPT).
    static func xm() -> Fault { Fault(vector: 19) }
    /// Leave the loop: the pending exit is stored in the vCPU.
    static let exit = Fault(vector: exitVector)

    /// Faults (RIP at the instruction) versus traps (RIP after it): #DB from single-step,
    /// INT n, INT3 and INTO are delivered as traps by their instructions themselves.
    var isContributory: Bool { vector == 0 || (10...13).contains(vector) }
}
