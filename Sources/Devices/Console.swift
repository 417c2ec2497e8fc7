#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import HostOS

/// Where guest console bytes (COM1 THR, port 0xE9) go: stdout, a file, or nowhere.
///
/// Output is buffered and flushed at each newline and when the machine stops, so a
/// byte-at-a-time guest does not cost a system call per character.
public final class Console: Sendable {
    public enum Sink: Sendable, Equatable {
        case stdout
        case file(String)
        case none
        /// Kept in memory (tests).
        case capture
    }

    private struct State {
        var fd: Int32
        var pending: [UInt8] = []
        var captured: [UInt8] = []
    }

    public let sink: Sink
    private let state: Mutex<State>

    public struct OpenError: Error, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot open serial file \(path): \(String(cString: strerror(errno)))" }
    }

    public init(_ sink: Sink) throws(OpenError) {
        self.sink = sink
        var fd: Int32 = -1
        switch sink {
        case .stdout: fd = 1
        case .file(let path):
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            if fd < 0 { throw OpenError(path: path, errno: errno) }
        case .none, .capture: break
        }
        state = Mutex(State(fd: fd))
    }

    deinit {
        flush()
        if case .file = sink { state.withLock { _ = close($0.fd) } }
    }

    public func write(_ byte: UInt8) {
        state.withLock { s in
            switch sink {
            case .none: return
            case .capture: s.captured.append(byte)
            case .stdout, .file:
                s.pending.append(byte)
                if byte == 0x0A || s.pending.count >= 4096 { Self.drain(&s) }
            }
        }
    }

    public func flush() {
        state.withLock { Self.drain(&$0) }
    }

    /// Everything written so far, for `.capture`.
    public var captured: [UInt8] { state.withLock { $0.captured } }

    private static func drain(_ s: inout State) {
        guard !s.pending.isEmpty, s.fd >= 0 else { s.pending.removeAll(keepingCapacity: true); return }
        s.pending.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(s.fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 { if errno == EINTR { continue } else { break } }
                offset += n
            }
        }
        s.pending.removeAll(keepingCapacity: true)
    }
}

/// Where UART receive bytes come from: standard input (read lazily on a background
/// thread once the guest first looks), or a fixed byte string (tests).
public final class ConsoleInput: Sendable {
    private struct State {
        var queue: [UInt8] = []
        var started = false
        var ended = false
    }
    private let state: Mutex<State>
    private let readsStdin: Bool

    /// Input from stdin.
    public static func stdin() -> ConsoleInput { ConsoleInput(readsStdin: true, bytes: []) }
    /// Fixed input, then end of input.
    public static func bytes(_ bytes: [UInt8]) -> ConsoleInput { ConsoleInput(readsStdin: false, bytes: bytes) }
    /// No input ever.
    public static func none() -> ConsoleInput { ConsoleInput(readsStdin: false, bytes: []) }

    private init(readsStdin: Bool, bytes: [UInt8]) {
        self.readsStdin = readsStdin
        state = Mutex(State(queue: bytes, started: !readsStdin, ended: !readsStdin))
    }

    /// True when a byte is waiting.
    public func hasByte() -> Bool {
        startIfNeeded()
        return state.withLock { !$0.queue.isEmpty }
    }

    /// Takes the next byte, if any.
    public func take() -> UInt8? {
        startIfNeeded()
        return state.withLock { $0.queue.isEmpty ? nil : $0.queue.removeFirst() }
    }

    /// Adds a byte (loopback).
    public func push(_ byte: UInt8) { state.withLock { $0.queue.append(byte) } }

    private func startIfNeeded() {
        guard readsStdin, state.withLock({ s in
            if s.started { return false }
            s.started = true
            return true
        }) else { return }
        HostThread.spawn(name: "stdin") { [self] in
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, 256) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { state.withLock { $0.ended = true }; return }
                state.withLock { $0.queue.append(contentsOf: buffer[0..<n]) }
            }
        }
    }
}
