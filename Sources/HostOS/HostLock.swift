#if canImport(Glibc)
import Glibc
#endif
import CHostOS

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

/// A wakeup one thread sleeps on until a CLOCK_MONOTONIC deadline and any thread signals:
/// a POSIX semaphore (`sem_clockwait(3)` on the monotonic clock, so that a deadline
/// computed from machine time is met as it is). A signal that comes while nobody waits
/// is kept for the next wait. Unlike a condition variable it takes no mutex: a
/// condition variable's waiter re-takes its mutex as contended, so every wait would
/// end with a futex wake on unlock — one system call per idle timer tick.
public final class HostWakeup: @unchecked Sendable {
    private let semaphore = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

    public init() { sem_init(semaphore, 0, 0) }

    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }

    /// Wakes the waiter (a system call only when one is asleep).
    public func signal() { sem_post(semaphore) }

    /// Sleeps until signalled or until CLOCK_MONOTONIC reaches `deadline` (nanoseconds).
    /// Returns whether it was signalled; it may also return early (a signal handler ran,
    /// or a signal from before this wait was still counted), so callers look again.
    @discardableResult
    public func wait(untilMonotonic deadline: UInt64) -> Bool {
        tandem_sem_wait_monotonic(semaphore, deadline) == 0
    }
}
