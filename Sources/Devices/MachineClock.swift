#if canImport(Glibc)
import Glibc
#endif
import HostOS
import Synchronization
import X86

/// The time devices see: nanoseconds since the machine was built, from the host's
/// monotonic clock. One per machine, shared by every device and vCPU, so timers and the
/// TSC agree across vCPUs and engines.
public final class MachineClock: Sendable {
    private let origin: UInt64
    /// Replaces the host clock (`--clock instructions`, tests that drive time by hand);
    /// nil on ordinary machines, so `now()` stays one clock_gettime.
    private let source: (@Sendable () -> UInt64)?

    /// A clock that reads `start` now (a restored snapshot's machine time, so that every
    /// time a device kept goes on from where it was).
    public init(startingAt start: UInt64 = 0) {
        origin = Self.hostMonotonic() &- start
        source = nil
    }

    /// A clock whose time is whatever `source` returns (machine nanoseconds; it must never
    /// go backwards). Used with a manual `TimerService`.
    public init(source: @escaping @Sendable () -> UInt64) {
        origin = 0
        self.source = source
    }

    /// Whether time comes from a source rather than the host clock.
    public var isVirtual: Bool { source != nil }

    /// Nanoseconds since the machine was built.
    public func now() -> UInt64 {
        if let source { return source() }
        return Self.hostMonotonic() &- origin
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    public static func hostMonotonic() -> UInt64 { TimerDeadline.hostNow() }

    /// CLOCK_MONOTONIC at machine time 0 (0 for a virtual clock).
    var hostOrigin: UInt64 { origin }
}

/// Fires every device timer of a machine at its deadline. Timers of the machine's
/// devices (PIT, RTC, ACPI PM timer) run on one thread ("timers") that sleeps until the
/// earliest deadline, so many timers cost one host thread, started with the first armed
/// timer. A timer owned by a vCPU (its local APIC timer) is fired by that vCPU's own
/// thread once the vCPU has `attach`ed to it: the vCPU sleeps in HLT until that deadline,
/// and a running engine leaves its run when it passes (`TimerDeadline`), so an idle
/// vCPU's tick costs one host wakeup and arming it costs no system call. Until attached,
/// and after `detach`, the timer thread fires it too. Handlers must not block; they lock
/// their device's state themselves.
public final class TimerService: @unchecked Sendable {
    public let clock: MachineClock
    fileprivate let core: TimerCore

    /// `manual`: no thread; timers fire only from `fireDue()` (a virtual clock, tests),
    /// and vCPUs do not attach. `wakeOwner(n)` is called when a thread other than vCPU
    /// n's arms the timer vCPU n fires itself (so that it looks at the new deadline).
    /// `slack` (`--timer-slack`, nanoseconds; 0: none): how late the ticks of a periodic
    /// timer that makes up late ticks may come (`DeviceTimer.hostWakeup`).
    public init(clock: MachineClock, manual: Bool = false, slack: UInt64 = 0, wakeOwner: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.clock = clock
        core = TimerCore(clock: clock, manual: manual, slack: slack, wakeOwner: wakeOwner)
    }

    /// `--timer-slack` in nanoseconds (0: every deadline is kept to).
    public var slack: UInt64 { core.slack }

    /// The earliest armed deadline, if any.
    public func nextDeadline() -> UInt64? { core.nextDeadline() }

    /// Fires, in deadline order, every timer due at the clock's current time (including
    /// ones their handlers re-arm for a time already past), on the calling thread; for
    /// manual services. Returns how many fired.
    @discardableResult
    public func fireDue() -> Int { core.fireDue() }

    deinit { core.stop() }

    /// A timer that calls `fire` when its deadline passes: on the timer thread, or, for
    /// a timer with an `owner` (a vCPU index; at most one timer per vCPU), on that vCPU's
    /// thread while it is attached.
    public func makeTimer(_ name: String, owner: Int? = nil, fire: @escaping @Sendable () -> Void) -> DeviceTimer {
        let timer = DeviceTimer(name: name, owner: owner, core: core, fire: fire)
        core.add(timer)
        return timer
    }

    /// A timer whose handler is `fire(device)`. The handler reaches the device through a
    /// holder that only the device keeps (in `holder`) and the handler references weakly,
    /// so a timer that outlives its device does nothing. (`[weak self]` would do the same,
    /// but a weak reference gives the device a side table, and from then on every retain
    /// and release of it — several per interrupt or port access — takes the Swift
    /// runtime's slow path: a tenth of the samples of an idle guest's ticks, perf said.)
    public func makeTimer<Device: AnyObject>(_ name: String, owner: Int? = nil, handler device: Device, holder: inout AnyObject?,
                                             fire: @escaping @Sendable (Device) -> Void) -> DeviceTimer {
        let target = DeviceReference(device)
        holder = target
        return makeTimer(name, owner: owner) { [weak target] in if let target { fire(target.device) } }
    }

    /// Called on vCPU `owner`'s thread: from now on that thread fires the timer the vCPU
    /// owns (`DeviceTimer.fireIfDue`, after every exit and in HLT), until `detach()`; an
    /// arm from any other thread calls `wakeOwner`. nil when it owns none, or when the
    /// service is manual.
    public func attach(owner: Int) -> DeviceTimer? { core.attach(owner) }

    /// Whether any timer is armed (a halted machine with one can still be woken).
    public var anyArmed: Bool { core.anyArmed }

    /// Stops the thread; timers armed later never fire.
    public func stop() { core.stop() }

    /// Holds the timer thread (after any handler it is running returns) until `resume()`:
    /// the devices' state stays still while a snapshot reads it. Owned timers are not held:
    /// their vCPUs' threads fire them, and those are parked for the snapshot.
    public func pause() { core.setPaused(true) }
    public func resume() { core.setPaused(false) }
}

/// The timer thread's state, kept apart from `TimerService` so that the thread holds it
/// strongly and never outlives what it touches.
final class TimerCore: @unchecked Sendable {
    let clock: MachineClock
    let slack: UInt64
    let wakeOwner: @Sendable (Int) -> Void
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `lock`.
    private var timers: [DeviceTimer] = []
    private var thread: HostThread?
    private var threadID: pthread_t?
    private var stopping = false
    private var firing: DeviceTimer?
    private var paused = false
    private let manual: Bool
    /// How many owner threads are inside a timer's handler (its deadline already cleared,
    /// its interrupt perhaps not yet raised): the machine is not idle for good meanwhile.
    let ownersFiring = Atomic<Int>(0)

    init(clock: MachineClock, manual: Bool, slack: UInt64, wakeOwner: @escaping @Sendable (Int) -> Void) {
        self.clock = clock
        self.manual = manual
        self.slack = slack
        self.wakeOwner = wakeOwner
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
        precondition(timer.owner == nil || !timers.contains { $0.owner == timer.owner }, "one timer per owner")
        timers.append(timer)
        pthread_mutex_unlock(lock)
    }

    var anyArmed: Bool {
        pthread_mutex_lock(lock)
        let armed = timers.contains { $0.isArmed } || firing != nil
        pthread_mutex_unlock(lock)
        // Read after the deadlines: an owner clears the deadline only after counting itself.
        return armed || ownersFiring.load(ordering: .sequentiallyConsistent) > 0
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

    func setPaused(_ on: Bool) {
        pthread_mutex_lock(lock)
        paused = on
        pthread_cond_broadcast(wake)
        // A handler the thread is running now finishes before the pause counts.
        while on && firing != nil {
            pthread_mutex_unlock(lock)
            usleep(50)
            pthread_mutex_lock(lock)
        }
        pthread_mutex_unlock(lock)
    }

    func arm(_ timer: DeviceTimer, at deadline: UInt64?, catchesUp: Bool = false) {
        // UInt64.max means disarmed: a deadline that far away never comes anyway.
        let value = deadline.map { min($0, .max - 1) } ?? .max
        // Before the deadline: whoever sees the new deadline sees how it may be delayed.
        timer.catchesUp.store(catchesUp && value != .max, ordering: .sequentiallyConsistent)
        if let owner = timer.owner {
            // Stored before `attached` is read, as `detach` clears it before waking the
            // timer thread: either the owner or the timer thread sees the new deadline.
            timer.due.machineNanoseconds.store(value, ordering: .sequentiallyConsistent)
            if timer.attached.load(ordering: .sequentiallyConsistent) {
                // The owner's own arms (a periodic timer re-armed as it fires, the guest's
                // register writes) need no wakeup: it looks before it sleeps or enters.
                if pthread_equal(pthread_t(timer.ownerThread.load(ordering: .relaxed)), pthread_self()) == 0 { wakeOwner(owner) }
                return
            }
        }
        pthread_mutex_lock(lock)
        timer.due.machineNanoseconds.store(value, ordering: .relaxed)
        if value != .max { startThreadLocked() }
        pthread_cond_signal(wake)
        pthread_mutex_unlock(lock)
    }

    private func startThreadLocked() {
        if thread == nil, !stopping, !manual {
            thread = HostThread.spawn(name: "timers") { [self] in loop() }
        }
    }

    func attach(_ owner: Int) -> DeviceTimer? {
        guard !manual else { return nil }
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard let timer = timers.first(where: { $0.owner == owner }) else { return nil }
        timer.ownerThread.store(UInt(pthread_self()), ordering: .relaxed)
        timer.attached.store(true, ordering: .sequentiallyConsistent)
        return timer
    }

    func detach(_ timer: DeviceTimer) {
        timer.attached.store(false, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(lock)
        if timer.isArmed { startThreadLocked() }
        pthread_cond_signal(wake)
        pthread_mutex_unlock(lock)
    }

    func nextDeadline() -> UInt64? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return timers.compactMap(\.armedDeadline).min()
    }

    func fireDue() -> Int {
        var fired = 0
        while fired < 1_000_000 {
            pthread_mutex_lock(lock)
            let next = earliestLocked(dueBy: clock.now())
            next?.due.machineNanoseconds.store(.max, ordering: .relaxed)
            pthread_mutex_unlock(lock)
            guard let next else { break }
            next.fire()
            fired += 1
        }
        return fired
    }

    /// The armed timer with the earliest deadline not after `limit` (a manual service's:
    /// no owner attaches to one).
    private func earliestLocked(dueBy limit: UInt64) -> DeviceTimer? {
        var earliest: DeviceTimer?
        var best = UInt64.max
        for t in timers {
            let d = t.due.machineNanoseconds.load(ordering: .relaxed)
            if d <= limit && d < best {
                earliest = t
                best = d
            }
        }
        return earliest
    }

    /// The unattached armed timer to wake for first, its deadline, and when to wake for it
    /// (CLOCK_MONOTONIC: the deadline, or later with a timer slack, `DeviceTimer.hostWakeup`).
    private func earliestWakeupLocked() -> (DeviceTimer, UInt64, UInt64)? {
        var earliest: (DeviceTimer, UInt64, UInt64)?
        for t in timers where !t.attached.load(ordering: .sequentiallyConsistent) {
            let d = t.due.machineNanoseconds.load(ordering: .relaxed)
            guard d != .max else { continue }
            // The board's timers do not know whether a vCPU runs: with a slack, a periodic
            // one's ticks come late (none lost) even to a busy guest (Platform.md).
            let host = t.wakeup(forDeadline: d)
            if host < earliest?.2 ?? .max { earliest = (t, d, host) }
        }
        return earliest
    }

    private func loop() {
        pthread_mutex_lock(lock)
        threadID = pthread_self()
        while !stopping {
            if paused {
                pthread_cond_wait(wake, lock)
                continue
            }
            guard let (next, deadline, host) = earliestWakeupLocked() else {
                pthread_cond_wait(wake, lock)
                continue
            }
            if host > MachineClock.hostMonotonic() {
                var t = timespec(tv_sec: Int(host / 1_000_000_000), tv_nsec: Int(host % 1_000_000_000))
                pthread_cond_timedwait(wake, lock, &t)
                continue
            }
            // An owner that attached meanwhile fires it itself (the exchange decides who).
            guard next.due.machineNanoseconds.compareExchange(expected: deadline, desired: .max, ordering: .sequentiallyConsistent).exchanged else { continue }
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

/// The device a callback calls (a timer's handler, `TimerService.makeTimer(_:owner:handler:holder:fire:)`;
/// an acknowledge listener, `IRQLine.onAcknowledge`): not counted as a reference, valid while
/// the holder lives, which only the device keeps. The callback holds the holder weakly, so
/// one that outlives its device does nothing, and the device itself gets no side table.
final class DeviceReference<Device: AnyObject>: @unchecked Sendable {
    unowned(unsafe) let device: Device
    init(_ device: Device) { self.device = device }
}

/// A one-shot timer of `TimerService`: armed for an absolute machine time, disarmed when
/// it fires (a periodic device re-arms it from its handler).
public final class DeviceTimer: @unchecked Sendable {
    public let name: String
    /// The vCPU whose thread fires this timer while attached (nil: the timer thread).
    public let owner: Int?
    fileprivate let core: TimerCore
    fileprivate let fire: @Sendable () -> Void
    /// When it falls due. Written under the core's lock, except for an owned timer.
    public let due: TimerDeadline
    /// Whether the armed deadline may be kept late (`arm(at:catchesUp:)`).
    fileprivate let catchesUp = Atomic<Bool>(false)
    /// Whether the owner's thread fires it now (`TimerService.attach`), and that thread.
    fileprivate let attached = Atomic<Bool>(false)
    fileprivate let ownerThread = Atomic<UInt>(0)

    fileprivate init(name: String, owner: Int?, core: TimerCore, fire: @escaping @Sendable () -> Void) {
        self.name = name
        self.owner = owner
        self.core = core
        self.fire = fire
        due = TimerDeadline(hostOrigin: core.clock.hostOrigin)
    }

    /// Fires at machine time `deadline` (nanoseconds; in the past: at once). Replaces any
    /// earlier deadline. `catchesUp`: the deadline is a periodic tick, and the device makes
    /// up ticks that fall due while it waits to fire (it counts them and raises each one
    /// later, none lost), so with `--timer-slack` a halted owner may sleep past it
    /// (`hostWakeup`).
    public func arm(at deadline: UInt64, catchesUp: Bool = false) { core.arm(self, at: deadline, catchesUp: catchesUp) }

    /// Fires `nanoseconds` from now.
    public func arm(after nanoseconds: UInt64) { arm(at: core.clock.now() &+ nanoseconds) }

    public func disarm() { core.arm(self, at: nil) }

    /// The pending deadline, or nil.
    public var armedDeadline: UInt64? {
        let d = due.machineNanoseconds.load(ordering: .sequentiallyConsistent)
        return d == .max ? nil : d
    }

    var isArmed: Bool { armedDeadline != nil }

    /// `--timer-slack` in nanoseconds (0: none).
    public var slack: UInt64 { core.slack }

    /// With a timer slack, the most late ticks of a periodic timer with this `period` (ns)
    /// its device may owe at once: a slack's worth, and one more. What all three
    /// catching-up devices (local APIC, PIT, RTC) bound their counts by.
    public func owedTicksLimit(period: UInt64) -> UInt64 { core.slack / max(period, 1) + 1 }

    /// When a halted owner wakes for this timer, in CLOCK_MONOTONIC nanoseconds (nil while
    /// disarmed): the deadline itself, or, for a deadline armed with `catchesUp` on a
    /// machine with a timer slack, the first multiple of the slack at or after it. Every
    /// vCPU uses the same multiples, so an idle machine's vCPUs wake together, at most
    /// once per slack, and each takes the ticks that fell due meanwhile one after another
    /// (a 1 kHz timer with a 10 ms slack: 100 host wake-ups a second instead of 1,000).
    public var hostWakeup: UInt64? {
        // Acquiring: `arm` stores how the deadline may be delayed before the deadline.
        let d = due.machineNanoseconds.load(ordering: .acquiring)
        return d == .max ? nil : wakeup(forDeadline: d)
    }

    /// `hostWakeup` for machine time `deadline`.
    fileprivate func wakeup(forDeadline deadline: UInt64) -> UInt64 {
        let host = due.hostOrigin &+ deadline
        let slack = core.slack
        guard slack > 0, catchesUp.load(ordering: .sequentiallyConsistent) else { return host }
        let (quotient, remainder) = host.quotientAndRemainder(dividingBy: slack)
        return remainder == 0 ? host : (quotient &+ 1) &* slack
    }

    /// On the attached owner's thread: fires the timer if its deadline has passed (once;
    /// a periodic timer's next deadline is in the future). Returns whether it fired.
    @discardableResult
    public func fireIfDue() -> Bool {
        let d = due.machineNanoseconds.load(ordering: .relaxed)
        guard d != .max, d <= core.clock.now() else { return false }
        core.ownersFiring.add(1, ordering: .sequentiallyConsistent)
        defer { core.ownersFiring.subtract(1, ordering: .sequentiallyConsistent) }
        // Another thread may re-arm it meanwhile: that deadline stays for the next look.
        guard due.machineNanoseconds.compareExchange(expected: d, desired: .max, ordering: .sequentiallyConsistent).exchanged else { return false }
        fire()
        return true
    }

    /// Back to the timer thread (the owner's thread is ending).
    public func detach() { core.detach(self) }
}

extension DeviceTimer {
    /// The deadline as the time left after machine time `now` (a snapshot's), or none.
    public func saveDeadline(_ w: inout StateWriter, now: UInt64) {
        w.optional(armedDeadline) { w, d in w.u64(d > now ? d - now : 0) }
    }

    /// Re-arms the timer for the time left after `now` that `saveDeadline` recorded (on
    /// a clock that reads `now` at the snapshot's moment: the same deadline), or disarms it.
    public func restoreDeadline(_ r: inout StateReader, now: UInt64) throws(SnapshotError) {
        if let left = try r.optional({ (r) throws(SnapshotError) in try r.u64() }) { arm(at: now &+ left) } else { disarm() }
    }
}
