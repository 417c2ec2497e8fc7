#if canImport(Glibc)
import Glibc
#endif

/// Opens `path` for writing, created or truncated (or, with `append`, created or kept,
/// writes going to its end), for the console file and the trace.
///
/// The open itself does not block: a FIFO that no process reads fails at once (ENXIO)
/// instead of waiting for a reader before `--timeout` or any signal handling is armed.
/// Once open, the descriptor blocks again, like a pipe on standard output.
public func openOutputFile(_ path: String, append: Bool = false) -> Result<Int32, Errno> {
    let fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC) | O_CLOEXEC | O_NONBLOCK, 0o644)
    guard fd >= 0 else { return .failure(.current) }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    return .success(fd)
}

/// What `openOutputFile` failures say: ENXIO on a FIFO means nobody reads it.
public func describeOpenError(_ error: Errno) -> String {
    error.rawValue == ENXIO ? "\(error) (a FIFO with no reader)" : error.description
}

/// Writes all of `bytes` to `fd`: retries after EINTR and short writes, and waits in
/// `poll(2)` when the descriptor was made non-blocking by someone else (EAGAIN).
/// Returns the error that stopped it (EPIPE, ENOSPC, EBADF, ...), if any.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Errno? {
    var offset = 0
    while offset < bytes.count {
        let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if n > 0 { offset += n; continue }
        if n == 0 { return Errno(EIO) }
        switch errno {
        case EINTR: continue
        case EAGAIN:
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, -1)
        default: return .current
        }
    }
    return nil
}
