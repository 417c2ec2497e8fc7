import CZlib

/// Reads the lines of a gzip-compressed text file (zlib's `gzopen`/`gzread`).
struct GzipLines: Sequence, IteratorProtocol {
    private let file: gzFile
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)
    private var pending: [UInt8] = []
    private var start = 0
    private var done = false

    init?(path: String) {
        guard let f = gzopen(path, "rb") else { return nil }
        file = f
        gzbuffer(f, 1 << 17)
    }

    func close() { gzclose(file) }

    mutating func next() -> [UInt8]? {
        while true {
            if let nl = pending[start...].firstIndex(of: 0x0A) {
                let line = Array(pending[start..<nl])
                start = nl + 1
                if start > 1 << 16 { pending.removeFirst(start); start = 0 }
                return line
            }
            if done {
                if start < pending.count { let line = Array(pending[start...]); start = pending.count; return line }
                return nil
            }
            let n = buffer.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            if n <= 0 { done = true } else { pending.append(contentsOf: buffer[0..<Int(n)]) }
        }
    }
}
