#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import HostOS
import Synchronization

/// How `tandem run`, `diff` and `fuzz` stop on SIGINT, SIGTERM, SIGHUP and SIGQUIT, and
/// on `--timeout` before the guest has started (README, "Exit status").
///
/// `install` comes first, before the arguments are parsed: from then on each of the four
/// signals is caught by a handler that only writes its number to a pipe, and handled on a
/// thread named "signals" that reads it, never by its default action (no death by signal,
/// no SIGQUIT backtrace). The handler is in place when `install` returns (a dispatch
/// signal source registers asynchronously, and a signal in between was lost). While a run has `route`d them, a signal goes to it and
/// the run stops, flushes and reports (status 209). Before that (reading the image,
/// building the VM), a signal ends the process at once with status 209, and `--timeout`
/// with status 206, each with one line on stderr: nothing has been written yet that
/// would need flushing. SIGPIPE is ignored, so writing to a closed pipe is an error the
/// console reports rather than a silent death.
public enum StopSignals {
    public static let handled: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]
    /// Asks a run with `--snapshot-on-exit` for a snapshot; it then continues. Caught from
    /// `install` on, like the four above, and ignored when no run takes it.
    public static let snapshotSignal = SIGUSR2
    /// Asks a run whose vCPUs can move between engines to move each to the other one
    /// (Documentation/Switching.md). Caught like the others; ignored when no run takes it.
    public static let engineFlipSignal = SIGUSR1
    /// The signals a run asks for something with, and then continues.
    static let requestSignals = [snapshotSignal, engineFlipSignal]

    private struct State {
        var installed = false
        var route: (@Sendable (Int32) -> Void)?
        var routedTimeout = false
        /// Where each of `requestSignals` goes (class holders: see the README's note on closures in a Mutex).
        var requestRoutes: [Int32: SignalRoute] = [:]
    }
    private static let state = Mutex(State())
    /// The `--timeout` timers, kept for the life of the process (appended under `state`'s lock).
    nonisolated(unsafe) private static var timers: [any DispatchSourceTimer] = []
    /// The pipe from the signal handler to the "signals" thread: set once, before the
    /// handler is installed, so the handler only reads it.
    nonisolated(unsafe) private static var pipeToThread: Int32 = -1

    /// Installs the handlers, once per process.
    public static func install() {
        let first = state.withLock { s -> Bool in
            defer { s.installed = true }
            return !s.installed
        }
        guard first else { return }
        signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            endProcess("tandem: host error (status 208): cannot create the signal pipe: \(String(cString: strerror(errno)))", status: ExitStatus.hostError.rawValue)
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        pipeToThread = fds[1]
        let reader = fds[0]
        HostThread.spawn(name: "signals") {
            var number: Int32 = 0
            while true {
                let n = read(reader, &number, 4)
                if n == 4 { deliver(number) } else if n < 0 && errno == EINTR { continue } else { return }
            }
        }
        // A parent may have left them blocked (a libdispatch worker thread blocks every
        // signal, and a child started from one inherits that): unblock them here, in the
        // main thread, so that every thread started later can take them.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for sig in handled + requestSignals { sigaddset(&unblock, sig) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        for sig in handled + requestSignals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var number = sig
                let saved = errno
                _ = write(StopSignals.pipeToThread, &number, 4)
                errno = saved
            }
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(sig, &action, nil)
        }
    }

    /// Arms `--timeout` for the time before the run takes over: when it expires first, the
    /// process ends with status 206.
    public static func arm(timeout: Double?) {
        install()
        guard let timeout else { return }
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + timeout)
        timer.setEventHandler { expireBeforeStart(timeout) }
        timer.resume()
        state.withLock { _ in timers.append(timer) }
    }

    /// Runs `body` with the signals going to `onSignal` (and `--timeout` left to the run).
    public static func routed<T>(to onSignal: @escaping @Sendable (Int32) -> Void, _ body: () throws -> T) rethrows -> T {
        install()
        state.withLock { $0.route = onSignal; $0.routedTimeout = true }
        defer { state.withLock { $0.route = nil } }
        return try body()
    }

    /// "SIGINT", "SIGTERM", ...
    public static func name(_ sig: Int32) -> String {
        switch sig {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGHUP: "SIGHUP"
        case SIGQUIT: "SIGQUIT"
        default: "signal \(sig)"
        }
    }

    /// Runs `body` with `signal` (one of `requestSignals`) going to `onSignal`.
    public static func routingRequests<T>(_ signal: Int32, to onSignal: @escaping @Sendable () -> Void, _ body: () throws -> T) rethrows -> T {
        install()
        let route = SignalRoute(onSignal)
        state.withLock { $0.requestRoutes[signal] = route }
        defer { state.withLock { $0.requestRoutes[signal] = nil } }
        return try body()
    }

    private static func deliver(_ sig: Int32) {
        if requestSignals.contains(sig) {
            state.withLock { $0.requestRoutes[sig] }?.body()
            return
        }
        if let route = state.withLock({ $0.route }) {
            route(sig)
        } else {
            endProcess("tandem: interrupted by \(name(sig)) (status 209)", status: ExitStatus.interrupted.rawValue)
        }
    }

    private static func expireBeforeStart(_ timeout: Double) {
        guard !state.withLock({ $0.routedTimeout }) else { return }
        endProcess("tandem: timeout after \(formatSeconds(timeout)) s before the guest started (status 206)", status: ExitStatus.timeout.rawValue)
    }

    /// One line on stderr and `_exit`: other threads may hold locks `exit` would need.
    private static func endProcess(_ line: String, status: Int32) -> Never {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        _exit(status)
    }
}

/// The first request to end a run that checks between steps (`diff` between instructions,
/// `fuzz` between sequences): its status and its report line (without "tandem: ").
package final class PendingStop: Sendable {
    package init() {}
    private let first = Mutex<(status: Int32, line: String)?>(nil)

    package func request(_ status: ExitStatus, _ line: String) {
        first.withLock { if $0 == nil { $0 = (status.rawValue, line) } }
    }

    package var current: (status: Int32, line: String)? { first.withLock { $0 } }

    /// Routes the stop signals here while `body` runs.
    package func routingSignals<T>(_ body: () throws -> T) rethrows -> T {
        try StopSignals.routed(to: { [self] sig in request(.interrupted, "interrupted by \(StopSignals.name(sig)) (status 209)") }, body)
    }
}

/// A signal's handler, kept in a class (StopSignals' state holds the object, not the closure).
final class SignalRoute: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}
