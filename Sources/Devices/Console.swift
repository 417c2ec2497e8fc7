#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization
import HostOS

/// Where guest console bytes (COM1 THR, port 0xE9) go: stdout, a file, or nowhere.
///
/// Output is buffered and flushed at each newline and when the machine stops, so a
/// byte-at-a-time guest does not cost a system call per character; a line left
/// unfinished (a shell's prompt) is flushed `partialLineDelay` after its first byte, so an
/// interactive guest's prompt shows before anything is typed. The first write
/// error (a closed pipe, a full disk) is reported once through `onWriteError`, and the
/// console drops everything after it.
public final class Console: Sendable {
    public enum Sink: Sendable, Equatable {
        case stdout
        case file(String)
        /// A file written on from its end: the console of a machine restarted after the
        /// guest reset it (`tandem run --reboot restart`) follows the earlier boots' output.
        case continuedFile(String)
        case none
        /// Kept in memory (tests).
        case capture
    }

    private struct State {
        var fd: Int32
        var pending: [UInt8] = []
        var captured: [UInt8] = []
        var failed = false
        /// A flush of an unfinished line is due (`partialLineDelay`).
        var partialFlushDue = false
    }

    /// How long an unfinished line waits for the rest before it is written anyway.
    static let partialLineDelay: DispatchTimeInterval = .milliseconds(20)

    public let sink: Sink
    private let state: Mutex<State>
    private let onWriteError: @Sendable (String) -> Void

    public struct OpenError: Error, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot open serial file \(path): \(describeOpenError(Errno(errno)))" }
    }

    /// `onWriteError` gets one line (without "tandem: ") the first time output cannot be written.
    public init(_ sink: Sink, onWriteError: @escaping @Sendable (String) -> Void = { _ in }) throws(OpenError) {
        self.sink = sink
        self.onWriteError = onWriteError
        var fd: Int32 = -1
        switch sink {
        case .stdout: fd = 1
        case .file(let path), .continuedFile(let path):
            switch openOutputFile(path, append: sink == .continuedFile(path)) {
            case .success(let opened): fd = opened
            case .failure(let error): throw OpenError(path: path, errno: error.rawValue)
            }
        case .none, .capture: break
        }
        state = Mutex(State(fd: fd))
    }

    deinit {
        flush()
        switch sink {
        case .file, .continuedFile: state.withLock { _ = close($0.fd) }
        case .stdout, .none, .capture: break
        }
    }

    public func write(_ byte: UInt8) {
        let (error, flushLater) = state.withLock { s -> (Errno?, Bool) in
            switch sink {
            case .none: return (nil, false)
            case .capture: s.captured.append(byte); return (nil, false)
            case .stdout, .file, .continuedFile:
                s.pending.append(byte)
                if byte == 0x0A || s.pending.count >= 4096 { return (Self.drain(&s), false) }
                guard !s.partialFlushDue else { return (nil, false) }
                s.partialFlushDue = true
                return (nil, true)
            }
        }
        if flushLater {
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.partialLineDelay) { [weak self] in self?.flush() }
        }
        if let error { report(error) }
    }

    public func flush() {
        if let error = state.withLock({ s -> Errno? in
            s.partialFlushDue = false
            return Self.drain(&s)
        }) { report(error) }
    }

    /// Everything written so far, for `.capture`.
    public var captured: [UInt8] { state.withLock { $0.captured } }

    /// Writes what is pending; returns the error when this drain is the one that failed.
    private static func drain(_ s: inout State) -> Errno? {
        defer { s.pending.removeAll(keepingCapacity: true) }
        guard !s.pending.isEmpty, s.fd >= 0, !s.failed else { return nil }
        guard let error = s.pending.withUnsafeBytes({ writeAll(s.fd, $0) }) else { return nil }
        s.failed = true
        return error
    }

    private func report(_ error: Errno) {
        let target = switch sink {
        case .file(let path), .continuedFile(let path): "serial file \(path)"
        default: "standard output"
        }
        onWriteError("cannot write the guest's console to \(target): \(error)")
    }
}

/// The UART's receive FIFO and where its bytes come from: standard input (read lazily
/// on a background thread once the guest first looks), or a fixed byte string (tests).
///
/// The FIFO holds `capacity` bytes, as a 16550A's does. Standard input is read only
/// while there is room (back-pressure: `< /dev/zero` costs 16 bytes, not gigabytes);
/// a loopback byte that finds the FIFO full is dropped (`push` returns false: overrun).
public final class ConsoleInput: Sendable {
    /// A 16550A's receive FIFO.
    public static let capacity = 16

    private struct State {
        var queue: [UInt8] = []
        /// Fixed input (tests) not yet in the FIFO.
        var backlog: [UInt8] = []
        var started = false
        var ended = false
    }
    private let state: Mutex<State>
    private let readsStdin: Bool
    /// Called on the stdin thread after bytes arrive (the UART raises its interrupt). Kept
    /// in a class: a function value read out of a `Mutex` through its `inout` is written
    /// back re-wrapped in a reabstraction thunk, so each call would add two frames to the
    /// next one (found by the torture campaign: a stack overflow after some 30,000 reads).
    private let arrival = Mutex<ArrivalHandler?>(nil)
    /// Signalled when the guest takes a byte from a full FIFO: the stdin thread may read again.
    private let room = DispatchSemaphore(value: 0)

    /// Input from stdin.
    public static func stdin() -> ConsoleInput { ConsoleInput(readsStdin: true, bytes: []) }
    /// Fixed input, then end of input; it enters the FIFO as the guest makes room.
    public static func bytes(_ bytes: [UInt8]) -> ConsoleInput { ConsoleInput(readsStdin: false, bytes: bytes) }
    /// No input ever.
    public static func none() -> ConsoleInput { ConsoleInput(readsStdin: false, bytes: []) }

    private init(readsStdin: Bool, bytes: [UInt8]) {
        self.readsStdin = readsStdin
        var s = State(started: !readsStdin, ended: !readsStdin)
        s.backlog = bytes
        Self.refill(&s)
        state = Mutex(s)
    }

    /// True when a byte is waiting.
    public func hasByte() -> Bool {
        startIfNeeded()
        return state.withLock { !$0.queue.isEmpty }
    }

    /// Whether a byte is waiting or may still arrive (stdin is not at its end).
    public var mayReceive: Bool {
        state.withLock { !$0.queue.isEmpty || !$0.backlog.isEmpty || !$0.ended }
    }

    /// Sets what is called when bytes arrive from stdin, for `owner` (one UART at a time:
    /// the UART of a machine restarted on the same console replaces the last one's).
    public func onArrival(for owner: AnyObject, _ body: @escaping @Sendable () -> Void) {
        let handler = ArrivalHandler(owner: ObjectIdentifier(owner), body)
        arrival.withLock { $0 = handler }
    }

    /// `owner` is going away: its handler is not called again, and a call in progress has
    /// returned when this does (the stdin thread calls it under the same lock).
    public func removeArrival(for owner: AnyObject) {
        arrival.withLock { if $0?.owner == ObjectIdentifier(owner) { $0 = nil } }
    }

    /// Takes the next byte, if any.
    public func take() -> UInt8? {
        startIfNeeded()
        let (byte, wasFull) = state.withLock { s -> (UInt8?, Bool) in
            guard !s.queue.isEmpty else { return (nil, false) }
            let wasFull = s.queue.count == Self.capacity
            let byte = s.queue.removeFirst()
            Self.refill(&s)
            return (byte, wasFull)
        }
        if wasFull { room.signal() }
        return byte
    }

    /// Adds a byte (loopback); false when the FIFO is full and the byte is lost (overrun).
    public func push(_ byte: UInt8) -> Bool {
        state.withLock { s in
            guard s.queue.count < Self.capacity else { return false }
            s.queue.append(byte)
            return true
        }
    }

    /// Empties the FIFO (FCR bit 1).
    public func clear() {
        let wasFull = state.withLock { s -> Bool in
            let wasFull = s.queue.count == Self.capacity
            s.queue.removeAll(keepingCapacity: true)
            Self.refill(&s)
            return wasFull
        }
        if wasFull { room.signal() }
    }

    private static func refill(_ s: inout State) {
        let n = min(capacity - s.queue.count, s.backlog.count)
        guard n > 0 else { return }
        s.queue += s.backlog.prefix(n)
        s.backlog.removeFirst(n)
    }

    private func startIfNeeded() {
        guard readsStdin, state.withLock({ s in
            if s.started { return false }
            s.started = true
            return true
        }) else { return }
        HostThread.spawn(name: "stdin") { [self] in
            var buffer = [UInt8](repeating: 0, count: Self.capacity)
            while true {
                let free = state.withLock { Self.capacity - $0.queue.count }
                if free == 0 { room.wait(); continue }
                let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, free) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { state.withLock { $0.ended = true }; return }
                state.withLock { $0.queue.append(contentsOf: buffer[0..<n]) }
                arrival.withLock { $0?.body() }
            }
        }
    }
}

/// What `ConsoleInput.onArrival` calls.
final class ArrivalHandler: Sendable {
    let owner: ObjectIdentifier
    let body: @Sendable () -> Void
    init(owner: ObjectIdentifier, _ body: @escaping @Sendable () -> Void) {
        self.owner = owner
        self.body = body
    }
}

// MARK: Snapshot

extension ConsoleInput {
    /// The bytes in the receive FIFO (received, not yet read by the guest).
    var received: [UInt8] { state.withLock { $0.queue } }

    /// Puts a snapshot's received bytes back in front of the FIFO (what arrives from
    /// this run's input follows them, as far as there is room).
    func restoreReceived(_ bytes: [UInt8]) {
        state.withLock { s in
            s.queue = Array((bytes + s.queue).prefix(Self.capacity))
        }
    }
}
