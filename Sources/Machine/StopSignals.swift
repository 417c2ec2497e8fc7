#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization

/// How `tandem run`, `diff` and `fuzz` stop on SIGINT, SIGTERM, SIGHUP and SIGQUIT, and
/// on `--timeout` before the guest has started (README, "Exit status").
///
/// `install` comes first, before any file is opened: from then on each of the four
/// signals is handled on a dispatch queue, never by its default action (no death by
/// signal, no SIGQUIT backtrace). While a run has `route`d them, a signal goes to it and
/// the run stops, flushes and reports (status 209). Before that (reading the image,
/// building the VM), a signal ends the process at once with status 209, and `--timeout`
/// with status 206, each with one line on stderr: nothing has been written yet that
/// would need flushing. SIGPIPE is ignored, so writing to a closed pipe is an error the
/// console reports rather than a silent death.
public enum StopSignals {
    public static let handled: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    private struct State {
        var installed = false
        var route: (@Sendable (Int32) -> Void)?
        var routedTimeout = false
    }
    private static let state = Mutex(State())
    /// The dispatch sources, kept for the life of the process (appended under `state`'s lock).
    nonisolated(unsafe) private static var sources: [any DispatchSourceProtocol] = []

    /// Installs the handlers (once per process) and, with `timeout`, a timer that ends the
    /// process if the run has not taken over by then.
    public static func install(timeout: Double? = nil) {
        let first = state.withLock { s -> Bool in
            defer { s.installed = true }
            return !s.installed
        }
        var made: [any DispatchSourceProtocol] = []
        if first {
            signal(SIGPIPE, SIG_IGN)
            for sig in handled {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { deliver(sig) }
                source.resume()
                made.append(source)
            }
        }
        if let timeout {
            let timer = DispatchSource.makeTimerSource(queue: .global())
            timer.schedule(deadline: .now() + timeout)
            timer.setEventHandler { expireBeforeStart(timeout) }
            timer.resume()
            made.append(timer)
        }
        state.withLock { _ in sources += made }
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

    private static func deliver(_ sig: Int32) {
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
final class PendingStop: Sendable {
    private let first = Mutex<(status: Int32, line: String)?>(nil)

    func request(_ status: ExitStatus, _ line: String) {
        first.withLock { if $0 == nil { $0 = (status.rawValue, line) } }
    }

    var current: (status: Int32, line: String)? { first.withLock { $0 } }

    /// Routes the stop signals here while `body` runs.
    func routingSignals<T>(_ body: () throws -> T) rethrows -> T {
        try StopSignals.routed(to: { [self] sig in request(.interrupted, "interrupted by \(StopSignals.name(sig)) (status 209)") }, body)
    }
}
