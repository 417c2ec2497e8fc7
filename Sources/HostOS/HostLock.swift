#if canImport(Glibc)
import Glibc
#endif

/// A plain mutex for hot paths that cannot take closures (`pthread_mutex_lock(3)`).
public final class HostLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    public init() { pthread_mutex_init(mutex, nil) }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
}

/// A wakeup one thread sleeps on until a CLOCK_MONOTONIC deadline and any thread signals
/// (`pthread_cond_timedwait(3)` on the monotonic clock, so that a deadline computed from
/// machine time is met as it is, with no conversion to wall-clock time). A signal that
/// comes while nobody waits is kept for the next wait.
public final class HostWakeup: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var signalled = false   // guarded by `mutex`

    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func signal() {
        pthread_mutex_lock(mutex)
        signalled = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Sleeps until signalled or until CLOCK_MONOTONIC reaches `deadline` (nanoseconds).
    /// Returns whether it was signalled (and takes the signal).
    @discardableResult
    public func wait(untilMonotonic deadline: UInt64) -> Bool {
        var t = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_mutex_lock(mutex)
        while !signalled {
            if pthread_cond_timedwait(condition, mutex, &t) == ETIMEDOUT { break }
        }
        let was = signalled
        signalled = false
        pthread_mutex_unlock(mutex)
        return was
    }
}
