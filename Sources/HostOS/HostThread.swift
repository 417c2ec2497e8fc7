#if canImport(Glibc)
import Glibc
#endif

/// A joinable host thread with a name visible in `ps -T` and `/proc/PID/task/*/comm`.
public final class HostThread: @unchecked Sendable {
    private var handle = pthread_t()
    private let body: () -> Void
    public let name: String

    private init(name: String, body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    /// Starts `body` on a new thread named `name` (at most 15 characters are kept by Linux).
    /// `pthread_create(3)` + `pthread_setname_np(3)`.
    @discardableResult
    public static func spawn(name: String, stackSize: Int = 1 << 20, _ body: @escaping () -> Void) -> HostThread {
        let thread = HostThread(name: name, body: body)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, stackSize)
        let context = Unmanaged.passRetained(thread).toOpaque()
        let result = pthread_create(&thread.handle, &attributes, { raw in
            let thread = Unmanaged<HostThread>.fromOpaque(raw!).takeRetainedValue()
            setCurrentThreadName(thread.name)
            thread.body()
            return nil
        }, context)
        pthread_attr_destroy(&attributes)
        precondition(result == 0, "pthread_create failed: \(result)")
        return thread
    }

    /// Waits for the thread to finish. `pthread_join(3)`.
    public func join() {
        pthread_join(handle, nil)
    }

    /// Sends `signal` to the thread. `pthread_kill(3)`.
    public func signal(_ signal: Int32) {
        pthread_kill(handle, signal)
    }
}

/// Names the calling thread (Linux keeps 15 bytes) by writing /proc/thread-self/comm,
/// which is what `pthread_setname_np(3)` does; Glibc's Swift overlay does not export it.
public func setCurrentThreadName(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// A C `errno` value with its message. `strerror(3)`.
public struct Errno: Error, Equatable, CustomStringConvertible, Sendable {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }
    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(errno) }
    public var description: String { String(cString: strerror(rawValue)) }
}
