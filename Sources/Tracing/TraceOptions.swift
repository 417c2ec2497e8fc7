/// `--trace-format`.
public enum TraceFormat: String, CaseIterable, Sendable {
    /// QEMU `-d in_asm,cpu`-style lines.
    case text
    /// One JSON object per line.
    case jsonl
    /// The compact binary format of Documentation/Traces.md, turned into text or JSONL by
    /// `tandem trace`.
    case bin
}

/// What `tandem run --trace` records, and where.
public struct TraceOptions: Sendable {
    public var path: String
    public var format: TraceFormat = .text
    /// Only VM exits, at full speed (no single-stepping).
    public var exitsOnly = false
    /// Only instructions whose RIP is in this range.
    public var range: ClosedRange<UInt64>? = nil
    /// The first sequence number recorded.
    public var from: UInt64 = 0
    /// At most this many records (then tracing stops and the guest runs at full speed).
    public var count: UInt64? = nil
    /// Keep only the last N records in memory and write them only if the run ends badly.
    public var last: Int? = nil

    public init(path: String) { self.path = path }
}

/// One port access of a traced instruction.
public struct PortAccess: Sendable, Equatable {
    public var out: Bool
    public var port: UInt16
    public var size: Int
    public var value: UInt32
    public init(out: Bool, port: UInt16, size: Int, value: UInt32) {
        self.out = out
        self.port = port
        self.size = size
        self.value = value
    }
}
