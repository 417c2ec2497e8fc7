#if canImport(Glibc)
import Glibc
#endif
import CZlib

/// Reads the lines of a gzip-compressed text file (zlib's `gzopen`/`gzread`).
public struct GzipLines: Sequence, IteratorProtocol {
    private let file: gzFile
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)
    private var pending: [UInt8] = []
    private var start = 0
    /// Where the search for the next newline resumes: bytes before it hold none, so a
    /// long line is scanned once, not once per read (which was quadratic).
    private var scanned = 0
    private var done = false
    /// Bytes searched for a newline so far: each byte at most once, however long its line.
    public private(set) var bytesSearched = 0

    /// Nil when the file cannot be opened or is not a regular file (a FIFO is refused, not
    /// waited on: it is opened without blocking and checked before zlib reads it).
    public init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, let f = gzdopen(fd, "rb") else {
            Glibc.close(fd)
            return nil
        }
        file = f
        gzbuffer(f, 1 << 17)
    }

    public func close() { gzclose(file) }

    public mutating func next() -> [UInt8]? {
        while true {
            let from = Swift.max(start, scanned)
            let nl = pending[from...].firstIndex(of: 0x0A)
            bytesSearched += (nl ?? pending.count) - from + (nl == nil ? 0 : 1)
            if let nl {
                let line = Array(pending[start..<nl])
                start = nl + 1
                scanned = start
                if start > 1 << 16 { pending.removeFirst(start); start = 0; scanned = 0 }
                return line
            }
            scanned = pending.count
            if done {
                if start < pending.count { let line = Array(pending[start...]); start = pending.count; return line }
                return nil
            }
            let n = buffer.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            if n <= 0 { done = true } else { pending.append(contentsOf: buffer[0..<Int(n)]) }
        }
    }
}
