#if canImport(Glibc)
import Glibc
#endif
import HostOS
import Synchronization

/// The time devices see: nanoseconds since the machine was built, from the host's
/// monotonic clock. One per machine, shared by every device and vCPU, so timers and the
/// TSC agree across vCPUs and engines.
public final class MachineClock: Sendable {
    private let origin: UInt64
    /// Replaces the host clock (tests drive time by hand); nil on real machines, so `now()`
    /// stays one clock_gettime.
    private let source: (@Sendable () -> UInt64)?

    public init() {
        origin = Self.hostMonotonic()
        source = nil
    }

    /// A clock whose time is whatever `source` returns (machine nanoseconds; it must never
    /// go backwards). For deterministic tests, together with a manual `TimerService`.
    public init(source: @escaping @Sendable () -> UInt64) {
        origin = 0
        self.source = source
    }

    /// Nanoseconds since the machine was built.
    public func now() -> UInt64 {
        if let source { return source() }
        return Self.hostMonotonic() &- origin
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    public static func hostMonotonic() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
    }

    /// Host monotonic nanoseconds for machine time `t`.
    func hostTime(_ t: UInt64) -> UInt64 { origin &+ t }
}

/// One thread ("timers") that fires every device timer of a machine at its deadline, so
/// that a machine with many timers (a PIT, an RTC, a LAPIC timer per vCPU) costs one host
/// thread that sleeps until the earliest deadline. Handlers run on that thread and must
/// not block; they lock their device's state themselves. The thread starts with the first
/// armed timer and ends with `stop()` or when the service goes away.
public final class TimerService: @unchecked Sendable {
    public let clock: MachineClock
    fileprivate let core: TimerCore

    /// `manual`: no thread; timers fire only from `fireDue()` (tests, with a hand-driven clock).
    public init(clock: MachineClock, manual: Bool = false) {
        self.clock = clock
        core = TimerCore(clock: clock, manual: manual)
    }

    /// The earliest armed deadline, if any.
    public func nextDeadline() -> UInt64? { core.nextDeadline() }

    /// Manual services: fires, in deadline order, every timer due at the clock's current
    /// time (including ones their handlers re-arm for a time already past), on the calling
    /// thread. Returns how many fired.
    @discardableResult
    public func fireDue() -> Int { core.fireDue() }

    deinit { core.stop() }

    /// A timer that calls `fire` on the timer thread when its deadline passes.
    public func makeTimer(_ name: String, fire: @escaping @Sendable () -> Void) -> DeviceTimer {
        let timer = DeviceTimer(name: name, core: core, fire: fire)
        core.add(timer)
        return timer
    }

    /// Whether any timer is armed (a halted machine with one can still be woken).
    public var anyArmed: Bool { core.anyArmed }

    /// Stops the thread; timers armed later never fire.
    public func stop() { core.stop() }
}

/// The timer thread's state, kept apart from `TimerService` so that the thread holds it
/// strongly and never outlives what it touches.
final class TimerCore: @unchecked Sendable {
    let clock: MachineClock
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `lock`.
    private var timers: [DeviceTimer] = []
    private var thread: HostThread?
    private var threadID: pthread_t?
    private var stopping = false
    private var firing: DeviceTimer?
    /// No thread: timers fire only from `fireDue()` (tests, with a hand-driven clock).
    private let manual: Bool

    init(clock: MachineClock, manual: Bool) {
        self.clock = clock
        self.manual = manual
        pthread_mutex_init(lock, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(wake, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(lock)
        lock.deallocate()
        wake.deallocate()
    }

    func add(_ timer: DeviceTimer) {
        pthread_mutex_lock(lock)
        timers.append(timer)
        pthread_mutex_unlock(lock)
    }

    var anyArmed: Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return timers.contains { $0.deadline != nil } || firing != nil
    }

    func stop() {
        pthread_mutex_lock(lock)
        stopping = true
        let t = thread
        let onTimerThread = threadID.map { pthread_equal($0, pthread_self()) != 0 } ?? false
        pthread_cond_signal(wake)
        pthread_mutex_unlock(lock)
        if !onTimerThread { t?.join() }
    }

    func arm(_ timer: DeviceTimer, at deadline: UInt64?) {
        pthread_mutex_lock(lock)
        timer.deadline = deadline
        if deadline != nil, thread == nil, !stopping, !manual {
            thread = HostThread.spawn(name: "timers") { [self] in loop() }
        }
        pthread_cond_signal(wake)
        pthread_mutex_unlock(lock)
    }

    /// The earliest armed deadline, if any.
    func nextDeadline() -> UInt64? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return timers.compactMap(\.deadline).min()
    }

    /// Manual services: fires, in deadline order, every timer due at the clock's current
    /// time (including ones their handlers re-arm for a time already past), on the calling
    /// thread. Returns how many fired.
    func fireDue() -> Int {
        var fired = 0
        while true {
            pthread_mutex_lock(lock)
            let now = clock.now()
            var earliest: DeviceTimer?
            for t in timers where t.deadline != nil && t.deadline! <= now {
                if earliest == nil || t.deadline! < earliest!.deadline! { earliest = t }
            }
            earliest?.deadline = nil
            pthread_mutex_unlock(lock)
            guard let next = earliest, fired < 1_000_000 else { return fired }
            next.fire()
            fired += 1
        }
    }

    func deadline(of timer: DeviceTimer) -> UInt64? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return timer.deadline
    }

    private func loop() {
        pthread_mutex_lock(lock)
        threadID = pthread_self()
        while !stopping {
            var earliest: DeviceTimer?
            for t in timers where t.deadline != nil {
                if earliest == nil || t.deadline! < earliest!.deadline! { earliest = t }
            }
            guard let next = earliest, let deadline = next.deadline else {
                pthread_cond_wait(wake, lock)
                continue
            }
            if deadline > clock.now() {
                let host = clock.hostTime(deadline)
                var t = timespec(tv_sec: Int(host / 1_000_000_000), tv_nsec: Int(host % 1_000_000_000))
                pthread_cond_timedwait(wake, lock, &t)
                continue
            }
            next.deadline = nil
            firing = next
            pthread_mutex_unlock(lock)
            next.fire()
            pthread_mutex_lock(lock)
            firing = nil
        }
        // Timers hold the core; the core's list holds them: break the cycle at the end.
        timers.removeAll()
        pthread_mutex_unlock(lock)
    }
}

/// A one-shot timer of `TimerService`: armed for an absolute machine time, disarmed when
/// it fires (a periodic device re-arms it from its handler).
public final class DeviceTimer: @unchecked Sendable {
    public let name: String
    fileprivate let core: TimerCore
    fileprivate let fire: @Sendable () -> Void
    /// Guarded by the core's lock.
    fileprivate var deadline: UInt64?

    fileprivate init(name: String, core: TimerCore, fire: @escaping @Sendable () -> Void) {
        self.name = name
        self.core = core
        self.fire = fire
    }

    /// Fires at machine time `deadline` (nanoseconds; in the past: at once). Replaces any
    /// earlier deadline.
    public func arm(at deadline: UInt64) { core.arm(self, at: deadline) }

    /// Fires `nanoseconds` from now.
    public func arm(after nanoseconds: UInt64) { arm(at: core.clock.now() &+ nanoseconds) }

    public func disarm() { core.arm(self, at: nil) }

    /// The pending deadline, or nil.
    public var armedDeadline: UInt64? { core.deadline(of: self) }
}
