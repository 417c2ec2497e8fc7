import Disassembler
import X86

/// One record of a trace, as `tandem trace` and the text and JSONL writers see it.
public enum TraceRecord: Sendable {
    case instruction(InstructionRecord)
    /// An exception or interrupt delivered to the guest.
    case event(vcpu: Int, seq: UInt64, InterruptEvent)
    /// The instruction `seq` changed the execution mode; CS:RIP is where the guest went on.
    case mode(vcpu: Int, seq: UInt64, from: ExecutionMode, to: ExecutionMode, cs: UInt16, rip: UInt64)
    /// `--trace-exits`: one VM exit, with its details as (name, JSON value) pairs.
    case exit(vcpu: Int, seq: UInt64, name: String, rip: UInt64, details: [(String, String)])
    /// A POST code (a write to port 0x80).
    case post(code: UInt8)

    /// What `tandem trace --kind` selects: insn, exception, interrupt, mode, exit, post.
    public var kind: String {
        switch self {
        case .instruction: "insn"
        case .event(_, _, let e): e.kind == .exception ? "exception" : "interrupt"
        case .mode: "mode"
        case .exit: "exit"
        case .post: "post"
        }
    }

    /// The vCPU, or nil for a record of the machine (POST codes).
    public var vcpu: Int? {
        switch self {
        case .instruction(let i): i.vcpu
        case .event(let v, _, _), .mode(let v, _, _, _, _, _), .exit(let v, _, _, _, _): v
        case .post: nil
        }
    }

    /// The RIP the record is about (where the instruction, event or exit happened).
    public var rip: UInt64? {
        switch self {
        case .instruction(let i): i.rip
        case .event(_, _, let e): e.rip
        case .mode(_, _, _, _, _, let rip), .exit(_, _, _, let rip, _): rip
        case .post: nil
        }
    }
}

/// One instruction: where it ran, its bytes, the registers it changed (new values), its
/// memory accesses (interpreter) and port I/O.
public struct InstructionRecord: Sendable {
    public var vcpu: Int
    public var seq: UInt64
    public var mode: ExecutionMode
    public var cs: UInt16
    public var rip: UInt64
    public var bytes: [UInt8]
    /// Indices into `CPUState.fieldNames` (the file's own table when read back) and values.
    public var changes: [(field: Int, value: UInt64)]
    public var accesses: [MemoryAccess]
    public var io: [PortAccess]
}

/// Turns records into the text and JSONL lines of `--trace-format text|jsonl`. Disassembles
/// instruction bytes here, at formatting time, so recording stays cheap.
public final class TraceFormatter {
    let format: TraceFormat
    let fieldNames: [String]
    let disassembler = Disassembler()

    /// `format` is text or jsonl; `fieldNames` names the changed-register indices.
    public init(_ format: TraceFormat, fieldNames: [String] = CPUState.fieldNames) {
        self.format = format
        self.fieldNames = fieldNames
    }

    /// The instruction's disassembly ("(unknown)" when its bytes are not an instruction).
    /// Traces repeat instructions (loops), so the text is cached by address, mode and
    /// bytes: Capstone is most of the cost of a JSONL line.
    public func assembly(_ i: InstructionRecord) -> String {
        let key = DisassemblyKey(rip: i.rip, bits: i.mode.bits, bytes: i.bytes)
        if let text = disassembled[key] { return text }
        let text = disassembler.disassemble(i.bytes, address: i.rip, bits: i.mode.bits)?.text ?? "(unknown)"
        if disassembled.count >= 1 << 16 { disassembled.removeAll(keepingCapacity: true) }
        disassembled[key] = text
        return text
    }

    private struct DisassemblyKey: Hashable {
        var rip: UInt64
        var bits: Int
        var bytes: [UInt8]
    }
    private var disassembled: [DisassemblyKey: String] = [:]

    func name(_ field: Int) -> String { field < fieldNames.count ? fieldNames[field] : "field\(field)" }

    /// One line, without its newline.
    public func line(_ record: TraceRecord) -> String {
        let json = format == .jsonl
        switch record {
        case .instruction(let i):
            let asm = assembly(i)
            if json {
                var s = "{\"type\":\"insn\",\"vcpu\":\(i.vcpu),\"seq\":\(i.seq),\"mode\":\"\(i.mode.rawValue)\",\"cs\":\"\(hex(i.cs))\",\"rip\":\"\(hex(i.rip))\""
                s += ",\"bytes\":\"\(i.bytes.map { byteHex($0) }.joined())\",\"asm\":\"\(asm)\""
                s += ",\"regs\":{" + i.changes.map { "\"\(name($0.field))\":\"\(hex($0.value))\"" }.joined(separator: ",") + "}"
                if !i.accesses.isEmpty {
                    s += ",\"mem\":[" + i.accesses.map {
                        "{\"op\":\"\($0.write ? "W" : "R")\",\"linear\":\"\(hex($0.linear))\",\"physical\":\"\(hex($0.physical))\",\"size\":\($0.size),\"value\":\"\(hex($0.value))\"}"
                    }.joined(separator: ",") + "]"
                }
                if !i.io.isEmpty {
                    s += ",\"io\":[" + i.io.map { "{\"dir\":\"\($0.out ? "out" : "in")\",\"port\":\"\(hex($0.port))\",\"size\":\($0.size),\"value\":\"\(hex($0.value))\"}" }.joined(separator: ",") + "]"
                }
                return s + "}"
            }
            let cs = String(i.cs, radix: 16)
            var s = "vcpu\(i.vcpu) #\(i.seq) \(padRight(i.mode.rawValue, 6)) \(String(repeating: "0", count: max(0, 4 - cs.count)) + cs):\(hex(i.rip))  "
            s += padRight(i.bytes.map { byteHex($0) }.joined(separator: " "), 30)
            s += padRight(asm, 36)
            s += i.changes.map { "\(name($0.field))=\(hex($0.value))" }.joined(separator: " ")
            for a in i.accesses {
                s += " | \(a.write ? "W" : "R") \(hex(a.linear))/\(hex(a.physical)) \(a.size) \(hex(a.value))"
            }
            for o in i.io { s += " | \(o.out ? "out" : "in") port \(hex(o.port)) \(o.size) \(hex(o.value))" }
            return s
        case let .event(vcpu, seq, e):
            if json {
                return "{\"type\":\"\(e.kind == .exception ? "exception" : "interrupt")\",\"kind\":\"\(e.kind.rawValue)\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"vector\":\(e.vector)" +
                    (e.errorCode.map { ",\"error_code\":\"\(hex($0))\"" } ?? "") + ",\"cs\":\"\(hex(e.cs))\",\"rip\":\"\(hex(e.rip))\"}"
            }
            return "vcpu\(vcpu) #\(seq) \(e.kind == .exception ? "exception" : "interrupt (\(e.kind.rawValue))") vector \(e.vector)" +
                (e.errorCode.map { " error=\(hex($0))" } ?? "") + " at \(hex(e.cs)):\(hex(e.rip))"
        case let .mode(vcpu, seq, from, to, cs, rip):
            if json {
                return "{\"type\":\"mode\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"from\":\"\(from.rawValue)\",\"to\":\"\(to.rawValue)\",\"cs\":\"\(hex(cs))\",\"rip\":\"\(hex(rip))\"}"
            }
            return "vcpu\(vcpu) #\(seq) mode \(from.rawValue) -> \(to.rawValue) at \(hex(cs)):\(hex(rip))"
        case let .exit(vcpu, seq, name, rip, details):
            if json {
                return "{\"type\":\"exit\",\"vcpu\":\(vcpu),\"seq\":\(seq),\"exit\":\"\(name)\",\"rip\":\"\(hex(rip))\"\(details.isEmpty ? "" : ",")\(details.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ","))}"
            }
            return "vcpu\(vcpu) #\(seq) exit \(name) rip=\(hex(rip)) " + details.map { "\($0.0)=\($0.1.filter { $0 != "\"" })" }.joined(separator: " ")
        case .post(let code):
            let text = byteHex(code)
            return json ? "{\"type\":\"post\",\"code\":\"0x\(text)\"}" : "post code 0x\(text)"
        }
    }
}

func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
func byteHex(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }

func padRight(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}
