import Dispatch
import KVM
import Machine
import Synchronization

/// Bounds `tandem diff`'s steps in wall-clock time. The comparison looks at `--timeout`,
/// signals and output errors between steps, but a step itself waits on KVM (its
/// `KVM_RUN`s end at the single-step trap, an exit, or the native slice's kick:
/// DiffUserMode.swift) and on loops that end when KVM's and the interpreter's states
/// meet; should this host's KVM never end one, the diff would wait for ever. Once a
/// second, on a Dispatch thread, the watchdog turns `--timeout` into a pending stop, turns
/// a step that has run longer than `stepLimit` into one (a host error, naming the step),
/// and kicks KVM while a stop is pending; the step's loops look at the pending stop when
/// an engine run comes back interrupted.
final class StepWatchdog: Sendable {
    /// Wall-clock seconds one step may take (waiting in HLT for an interrupt does not
    /// count). A step is one instruction, or a native slice of at most 256 ms tried a dozen
    /// times, and the interpreter's catch-up of at most 50 M instructions: far past that
    /// it is a hang, not a slow host.
    static let stepLimit: UInt64 = 300
    /// When the current step began (host monotonic ns; 0: between steps, or halted).
    private let stepStarted = Atomic<UInt64>(0)
    private let stepNumber = Atomic<UInt64>(0)

    /// Step `number` begins.
    func stepBegins(_ number: UInt64) {
        stepNumber.store(number, ordering: .relaxed)
        stepStarted.store(DispatchTime.now().uptimeNanoseconds, ordering: .releasing)
    }

    /// Both sides wait in HLT: time not counted against a step.
    func notStepping() { stepStarted.store(0, ordering: .releasing) }

    /// `--timeout` (`deadline` in host monotonic ns) has passed: the pending stop says so.
    /// Called between steps by the diff and once a second by the watchdog.
    static func checkTimeout(deadline: UInt64?, timeout: Double?, _ pendingStop: PendingStop) {
        guard let deadline, let timeout, DispatchTime.now().uptimeNanoseconds >= deadline else { return }
        pendingStop.request(.timeout, "timeout after \(formatSeconds(timeout)) s (status 206)")
    }

    /// Starts looking, once a second, until the timer returned is cancelled. `deadline`:
    /// `--timeout`'s end in host monotonic ns.
    func start(kvm: KVMVCPU, pendingStop: PendingStop, deadline: UInt64?, timeout: Double?) -> any DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + 1, repeating: 1)
        timer.setEventHandler { [self] in
            Self.checkTimeout(deadline: deadline, timeout: timeout, pendingStop)
            let now = DispatchTime.now().uptimeNanoseconds
            let started = stepStarted.load(ordering: .acquiring)
            if started != 0, now &- started > Self.stepLimit * 1_000_000_000 {
                pendingStop.request(.hostError, "host error (status 208): step \(stepNumber.load(ordering: .relaxed)) did not end within \(Self.stepLimit) s (KVM or the catch-up never got there)")
            }
            // Sticky: a kick while KVM is between runs ends its next KVM_RUN at once.
            if pendingStop.current != nil { kvm.kick() }
        }
        timer.resume()
        return timer
    }
}
