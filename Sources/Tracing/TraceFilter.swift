/// What `tandem trace show|grep|convert` keeps: every condition given must hold.
public struct TraceFilter: Sendable {
    /// Records whose RIP is in this range (POST codes, which have none, are dropped).
    public var rip: ClosedRange<UInt64>? = nil
    /// Instructions whose mnemonic is one of these (Capstone's, e.g. "mov", "rep movsb";
    /// any record that is not an instruction is dropped).
    public var mnemonics: Set<String> = []
    /// Records of these vCPUs.
    public var vcpus: Set<Int> = []
    /// Records of these kinds (`TraceRecord.kind`: insn, exception, interrupt, mode, exit, post).
    public var kinds: Set<String> = []

    public static let kindNames = ["insn", "exception", "interrupt", "mode", "exit", "post"]

    public init() {}

    public var isEmpty: Bool { rip == nil && mnemonics.isEmpty && vcpus.isEmpty && kinds.isEmpty }

    /// Whether `record` passes; `formatter` disassembles for the mnemonic test.
    public func matches(_ record: TraceRecord, _ formatter: TraceFormatter) -> Bool {
        if !kinds.isEmpty && !kinds.contains(record.kind) { return false }
        if !vcpus.isEmpty && !(record.vcpu.map { vcpus.contains($0) } ?? false) { return false }
        if let rip, !(record.rip.map { rip.contains($0) } ?? false) { return false }
        if !mnemonics.isEmpty {
            guard case .instruction(let i) = record else { return false }
            let text = formatter.assembly(i)
            // "rep movsb ..." is both "rep" and "rep movsb".
            let words = text.split(separator: " ", maxSplits: 2)
            guard let first = words.first else { return false }
            if mnemonics.contains(String(first)) { return true }
            return words.count > 1 && mnemonics.contains("\(first) \(words[1])")
        }
        return true
    }
}
