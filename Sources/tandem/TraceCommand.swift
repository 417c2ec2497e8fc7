#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import HostOS
import Machine
import Tracing

/// `tandem trace show|grep|convert`: reads a binary trace (`--trace-format bin`).
struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Read a binary trace (--trace-format bin): print, filter or convert it.",
        discussion: """
        Exit status: 0 done; 1 (grep) no record matched; 200 bad option; \
        201 the file cannot be read, is not a Tandem binary trace, is of another version, \
        or is truncated or damaged (the records before the damage are written first); \
        211 the output could not be written.
        """,
        subcommands: [Show.self, Grep.self, Convert.self]
    )

    struct Filters: ParsableArguments {
        @Option(help: "Only records with RIP in START-END (hex, e.g. 7c00-7dff).")
        var rip: String?

        @Option(help: "Only instructions with this mnemonic (repeatable: mov, rep movsb, ...).")
        var mnemonic: [String] = []

        @Option(help: "Only records of this vCPU (repeatable).")
        var vcpu: [Int] = []

        @Option(help: "Only records of this kind (repeatable): \(TraceFilter.kindNames.joined(separator: ", ")).")
        var kind: [String] = []

        func filter() throws -> TraceFilter {
            var f = TraceFilter()
            if let rip { f.rip = try parseRange(rip, option: "--rip") }
            f.mnemonics = Set(mnemonic.map { $0.lowercased() })
            f.vcpus = Set(vcpu)
            for k in kind where !TraceFilter.kindNames.contains(k) {
                throw ValidationError("--kind '\(k)' is not one of \(TraceFilter.kindNames.joined(separator: ", "))")
            }
            f.kinds = Set(kind)
            return f
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a binary trace as text (or JSONL), optionally filtered.")
        @Argument(help: "The trace file.") var file: String
        @OptionGroup var filters: Filters
        @Option(help: "Output: text or jsonl.") var format: TraceFormat = .text
        func validate() throws { try checkTextFormat(format) }
        func run() throws {
            _ = try printTrace(file, try filters.filter(), format: format, output: nil)
        }
    }

    struct Grep: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the records that pass the filters; status 1 if none does.")
        @Argument(help: "The trace file.") var file: String
        @OptionGroup var filters: Filters
        @Option(help: "Output: text or jsonl.") var format: TraceFormat = .text
        func validate() throws {
            try checkTextFormat(format)
            if try filters.filter().isEmpty { throw ValidationError("grep needs a filter: --rip, --mnemonic, --vcpu or --kind") }
        }
        func run() throws {
            if try printTrace(file, try filters.filter(), format: format, output: nil) == 0 { throw ExitCode(1) }
        }
    }

    struct Convert: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Convert a binary trace to JSONL or text (what --trace-format jsonl|text would have written).")
        @Argument(help: "The trace file.") var file: String
        @OptionGroup var filters: Filters
        @Option(help: "Output format: jsonl or text.") var to: TraceFormat = .jsonl
        @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?
        func validate() throws { try checkTextFormat(to) }
        func run() throws {
            _ = try printTrace(file, try filters.filter(), format: to, output: output)
        }
    }
}

private func checkTextFormat(_ format: TraceFormat) throws {
    if format == .bin { throw ValidationError("the output format is text or jsonl (the input is already bin)") }
}

/// Writes the records of `path` that pass `filter` as `format` lines to standard output or
/// `output`; returns how many. A damaged file ends it with status 201 after the records
/// before the damage, a write error with 211.
private func printTrace(_ path: String, _ filter: TraceFilter, format: TraceFormat, output: String?) throws -> Int {
    let fd: Int32
    if let output {
        switch openOutputFile(output) {
        case .success(let opened): fd = opened
        case .failure(let error): throw Failure(status: ExitStatus.usage.rawValue, message: "cannot open \(output): \(describeOpenError(error))")
        }
    } else {
        fd = 1
    }
    defer { if fd != 1 { close(fd) } }
    let file: TraceFile
    do { file = try TraceFile(path: path) } catch {
        throw Failure(status: ExitStatus.badImage.rawValue, message: error.description)
    }
    let formatter = TraceFormatter(format, fieldNames: file.fieldNames)
    var buffer: [UInt8] = []
    buffer.reserveCapacity(1 << 20)
    var writeError: Errno? = nil
    var matched = 0
    func flush() {
        if writeError == nil, !buffer.isEmpty { writeError = buffer.withUnsafeBytes { writeAll(fd, $0) } }
        buffer.removeAll(keepingCapacity: true)
    }
    var damage: TraceFileError? = nil
    var scanned = 0
    do {
        try file.forEachRecord { record in
            // A search through a long trace (a Linux boot: ~1.8 G records) shows what it
            // found so far every million records, not only when a megabyte has gathered.
            scanned &+= 1
            if scanned & 0xF_FFFF == 0 && !buffer.isEmpty { flush() }
            guard filter.matches(record, formatter) else { return true }
            matched += 1
            buffer.append(contentsOf: formatter.line(record).utf8)
            buffer.append(0x0A)
            if buffer.count >= 1 << 20 { flush() }
            return writeError == nil
        }
    } catch { damage = error }
    flush()
    if let writeError {
        throw Failure(status: ExitStatus.outputError.rawValue, message: "cannot write \(output ?? "standard output"): \(writeError)")
    }
    if let damage { throw Failure(status: ExitStatus.badImage.rawValue, message: damage.description) }
    return matched
}

/// START-END in hex (`7c00-7dff`, `0x7c00-0x7dff`).
func parseRange(_ text: String, option: String) throws -> ClosedRange<UInt64> {
    let parts = text.split(separator: "-", omittingEmptySubsequences: false)
    func number(_ s: Substring) -> UInt64? { UInt64(s.hasPrefix("0x") ? s.dropFirst(2) : s, radix: 16) }
    guard parts.count == 2, let a = number(parts[0]), let b = number(parts[1]), a <= b else {
        throw ValidationError("\(option) '\(text)' must be START-END in hex, e.g. 7c00-7dff")
    }
    return a...b
}
