#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// When a device timer falls due, readable without a lock from any thread.
///
/// A vCPU's own timer (its local APIC timer) is fired on that vCPU's thread: the device
/// model arms it here, and the vCPU's backend reads it to leave `run()` once it passes
/// (the interpreter between blocks of instructions, KVM through a host timer that
/// signals the vCPU thread), so that no other thread has to watch the clock for it and
/// then wake or kick the vCPU.
public final class TimerDeadline: Sendable {
    /// Machine nanoseconds; `UInt64.max` while disarmed.
    public let machineNanoseconds = Atomic<UInt64>(.max)
    /// CLOCK_MONOTONIC nanoseconds at machine time 0.
    public let hostOrigin: UInt64

    public init(hostOrigin: UInt64) { self.hostOrigin = hostOrigin }

    /// The deadline in CLOCK_MONOTONIC nanoseconds, or nil while disarmed.
    @inline(__always)
    public var hostNanoseconds: UInt64? {
        let d = machineNanoseconds.load(ordering: .relaxed)
        return d == .max ? nil : hostOrigin &+ d
    }

    /// Whether it is armed and CLOCK_MONOTONIC has reached it (one clock read, and only
    /// while armed).
    @inline(__always)
    public var isDue: Bool {
        guard let host = hostNanoseconds else { return false }
        return Self.hostNow() >= host
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    @inline(__always)
    public static func hostNow() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
    }
}
