import CCapstone
import Disassembler

/// Where an operand lives.
enum OperandKind: UInt8 {
    case none, register, memory, immediate, segment, control, debug
    /// SIMD registers: XMM0-15 and MM0-7 (SSEDecode.swift).
    case xmm, mmx
}

/// One operand in the interpreter's compact form.
struct Operand {
    var kind: OperandKind = .none
    /// Size in bytes.
    var size: UInt8 = 0
    /// Register: GPR index 0-15, or 16-19 for AH, CH, DH, BH; segment index (ES=0 ... GS=5);
    /// control or debug register number.
    var reg: UInt8 = 0
    /// Memory: base register (noRegister when absent, ripBase for RIP-relative).
    var base: UInt8 = Operand.noRegister
    var index: UInt8 = Operand.noRegister
    var scale: UInt8 = 1
    /// Memory: effective segment (override or default).
    var segment: UInt8 = Segment.ds
    /// Memory displacement or immediate value.
    var value: Int64 = 0

    static let noRegister: UInt8 = 0xFF
    static let ripBase: UInt8 = 0xFE
}

/// Segment register indices, in the encoding's order.
enum Segment {
    static let es: UInt8 = 0, cs: UInt8 = 1, ss: UInt8 = 2, ds: UInt8 = 3, fs: UInt8 = 4, gs: UInt8 = 5
}

/// Prefix bits of a decoded instruction.
enum PrefixBits {
    static let lock: UInt8 = 1
    static let rep: UInt8 = 2
    static let repne: UInt8 = 4
    static let segmentOverride: UInt8 = 8
}

/// An instruction decoded once by Capstone and kept in the decode cache.
struct DecodedInstruction {
    var op: Op = .invalid
    var length: UInt8 = 0
    /// Operand-size attribute in bytes (2, 4 or 8).
    var operandSize: UInt8 = 4
    /// Address-size attribute in bytes (2, 4 or 8).
    var addressSize: UInt8 = 4
    var prefixes: UInt8 = 0
    /// The segment for implicit DS-relative accesses (string sources, xlat): DS or the override.
    var dataSegment: UInt8 = Segment.ds
    var operandCount: UInt8 = 0
    /// First opcode byte (after 0F when `twoByte`), for forms Capstone names alike.
    var opcode: UInt8 = 0
    var twoByte = false
    /// The ModRM byte (x87 escapes dispatch on it).
    var modrm: UInt8 = 0
    var o0 = Operand()
    var o1 = Operand()
    var o2 = Operand()
    /// Relative branches: the displacement from the next instruction.
    var relative: Int64 = 0
    /// MMX/SSE instructions (`op == .sse`): their decoded form (SSEDecode.swift).
    var simd = SIMDForm()
    /// The handler `executeFast` runs it with, chosen when the decode is cached.
    var form = FastForm.generic
    /// setcc and cmovcc forms: the condition (the encoding's tttn), set with `form` (so
    /// that the handler does not compute it from `op`).
    var condition: UInt8 = 0
}

/// Turns instruction bytes into `DecodedInstruction`s with Capstone (detail on).
/// One per vCPU: Capstone handles are not thread-safe.
final class Decoder {
    private var handles: [csh] = []   // 16, 32, 64-bit
    private var insnTable: [Op] = []
    private var regTable: [(kind: OperandKind, reg: UInt8, size: UInt8)] = []
    private let insn: UnsafeMutablePointer<cs_insn>

    init() {
        capstoneLock.lock()
        defer { capstoneLock.unlock() }
        for mode in [CS_MODE_16, CS_MODE_32, CS_MODE_64] {
            var h = csh()
            precondition(cs_open(CS_ARCH_X86, mode, &h) == CS_ERR_OK, "Capstone could not be opened")
            cs_option(h, CS_OPT_DETAIL, size_t(CS_OPT_ON.rawValue))
            handles.append(h)
        }
        insn = cs_malloc(handles[0])
        let byName = Dictionary(uniqueKeysWithValues: Op.allCases.map { ("\($0)", $0) })
        let h = handles[0]
        insnTable = (0..<Int(X86_INS_ENDING.rawValue)).map { id in
            guard let name = cs_insn_name(h, UInt32(id)) else { return .invalid }
            return byName[String(cString: name)] ?? .unimplemented
        }
        regTable = (0..<Int(X86_REG_ENDING.rawValue)).map { id in
            guard let name = cs_reg_name(h, UInt32(id)) else { return (.none, 0, 0) }
            return Self.register(named: String(cString: name))
        }
    }

    deinit {
        capstoneLock.lock()
        defer { capstoneLock.unlock() }
        var i = insn
        cs_free(i, 1)
        _ = i
        for var h in handles { cs_close(&h) }
    }

    private static func register(named name: String) -> (kind: OperandKind, reg: UInt8, size: UInt8) {
        let legacy = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]
        if let i = legacy.firstIndex(of: name) { return (.register, UInt8(i), 2) }
        if name.count == 3, name.first == "e", let i = legacy.firstIndex(of: String(name.dropFirst())) { return (.register, UInt8(i), 4) }
        if name.count == 3, name.first == "r", let i = legacy.firstIndex(of: String(name.dropFirst())) { return (.register, UInt8(i), 8) }
        if let i = ["al", "cl", "dl", "bl"].firstIndex(of: name) { return (.register, UInt8(i), 1) }
        if let i = ["ah", "ch", "dh", "bh"].firstIndex(of: name) { return (.register, UInt8(16 + i), 1) }
        if let i = ["spl", "bpl", "sil", "dil"].firstIndex(of: name) { return (.register, UInt8(4 + i), 1) }
        if name.hasPrefix("r"), let n = Int(name.dropFirst().prefix { $0.isNumber }), (8...15).contains(n) {
            switch name.last {
            case "b": return (.register, UInt8(n), 1)
            case "w": return (.register, UInt8(n), 2)
            case "d": return (.register, UInt8(n), 4)
            default: return (.register, UInt8(n), 8)
            }
        }
        if let i = ["es", "cs", "ss", "ds", "fs", "gs"].firstIndex(of: name) { return (.segment, UInt8(i), 2) }
        if name.hasPrefix("cr"), let n = UInt8(name.dropFirst(2)) { return (.control, n, 8) }
        if name.hasPrefix("dr"), let n = UInt8(name.dropFirst(2)) { return (.debug, n, 8) }
        if name == "rip" || name == "eip" || name == "ip" { return (.register, Operand.ripBase, 8) }
        if name.hasPrefix("xmm"), let n = UInt8(name.dropFirst(3)), n < 16 { return (.xmm, n, 16) }
        if name.hasPrefix("mm"), let n = UInt8(name.dropFirst(2)), n < 8 { return (.mmx, n, 8) }
        return (.none, 0, 0)
    }

    /// Decodes one instruction from `bytes` in a `bits`-bit code segment.
    /// Returns nil for bytes that are not a valid instruction (#UD).
    func decode(_ bytes: UnsafeRawBufferPointer, bits: Int) -> DecodedInstruction? {
        if bits != 64, let legacy = decodeLegacyForm(bytes, bits: bits) { return legacy.instruction }
        if bytes.count >= 3, bytes[0] == 0x0F, bytes[1] == 0x01, bytes[2] == 0xE8 { return decodeSerialize(bits: bits) }
        return decodeWithCapstone(bytes, bits: bits)
    }

    /// SERIALIZE, which Capstone 4 does not decode: as XGETBV (0F 01 D0: the same length,
    /// no ModRM memory operand), renamed. Only the form without prefixes: with 66, F2 or F3
    /// the same bytes are other instructions (TSXLDTRK's XSUSLDTRK, ...), left to Capstone.
    private func decodeSerialize(bits: Int) -> DecodedInstruction? {
        let xgetbv: [UInt8] = [0x0F, 0x01, 0xD0]
        guard var d = xgetbv.withUnsafeBytes({ decodeWithCapstone($0, bits: bits) }) else { return nil }
        d.op = .serialize
        d.opcode = 0x01
        return d
    }

    /// Outside 64-bit mode, C4, C5 and 62 with a memory operand are LES, LDS and BOUND,
    /// never VEX or EVEX; Capstone 4 decodes them as VEX/EVEX regardless. They are decoded
    /// as `mov r, r/m` (the same ModRM encoding) and renamed. With a register operand
    /// they are #UD here (VEX/EVEX need CR4.OSXSAVE, which the interpreter never offers).
    private func decodeLegacyForm(_ bytes: UnsafeRawBufferPointer, bits: Int) -> (instruction: DecodedInstruction?, Void)? {
        // A switch, not a Set literal: this runs for every decode outside 64-bit mode, and
        // a Set is built and hashed each time (7% of the samples of a guest that re-decodes a page on each tick).
        func isPrefix(_ b: UInt8) -> Bool {
            switch b {
            case 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3: true
            default: false
            }
        }
        guard let i = bytes.firstIndex(where: { !isPrefix($0) }), bytes[i] == 0xC4 || bytes[i] == 0xC5 || bytes[i] == 0x62 else { return nil }
        guard i + 1 < bytes.count, bytes[i + 1] >> 6 != 3 else { return (nil, ()) }
        var copy = Array(bytes)
        let original = copy[i]
        copy[i] = 0x8B
        let decoded = copy.withUnsafeBytes { decodeWithCapstone($0, bits: bits) }
        guard var d = decoded else { return (nil, ()) }
        d.op = original == 0xC4 ? .les : original == 0xC5 ? .lds : .bound
        d.opcode = original
        return (d, ())
    }

    private func decodeWithCapstone(_ bytes: UnsafeRawBufferPointer, bits: Int) -> DecodedInstruction? {
        capstoneLock.lock()
        defer { capstoneLock.unlock() }
        let h = handles[bits == 64 ? 2 : bits == 32 ? 1 : 0]
        var code: UnsafePointer<UInt8>? = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var size = bytes.count
        var address: UInt64 = 0
        guard cs_disasm_iter(h, &code, &size, &address, insn) else { return nil }
        let x = insn.pointee.detail.pointee.x86
        var d = DecodedInstruction()
        d.length = UInt8(insn.pointee.size)
        let id = Int(insn.pointee.id)
        d.op = id < insnTable.count ? insnTable[id] : .unimplemented
        let rexW = bits == 64 && x.rex & 0x08 != 0
        let opsizePrefix = x.prefix.2 == 0x66
        d.operandSize = rexW ? 8 : bits == 16 ? (opsizePrefix ? 4 : 2) : (opsizePrefix ? 2 : 4)
        // Capstone 4's addr_size is unreliable in 16-bit code: derive it from the mode and 0x67.
        let addressOverride = x.prefix.3 == 0x67
        d.addressSize = bits == 64 ? (addressOverride ? 4 : 8) : bits == 32 ? (addressOverride ? 2 : 4) : (addressOverride ? 4 : 2)
        switch x.prefix.0 {
        case 0xF0: d.prefixes |= PrefixBits.lock
        case 0xF3: d.prefixes |= PrefixBits.rep
        case 0xF2: d.prefixes |= PrefixBits.repne
        default: break
        }
        // Capstone folds a LOCK that precedes REP away; look at the raw bytes too.
        for i in 0..<Int(d.length) {
            let b = bytes[i]
            if b == 0xF0 { d.prefixes |= PrefixBits.lock; continue }
            if b == 0xF2 || b == 0xF3 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x26 || b == 0x64 || b == 0x65 || b == 0x66 || b == 0x67 { continue }
            if bits == 64 && b & 0xF0 == 0x40 { continue }
            break
        }
        var override: UInt8? = nil
        switch x.prefix.1 {
        case 0x26: override = Segment.es
        case 0x2E: override = Segment.cs
        case 0x36: override = Segment.ss
        case 0x3E: override = Segment.ds
        case 0x64: override = Segment.fs
        case 0x65: override = Segment.gs
        default: break
        }
        if bits == 64, let o = override, o < Segment.fs { override = nil }
        if let o = override {
            d.prefixes |= PrefixBits.segmentOverride
            d.dataSegment = o
        }
        d.twoByte = x.opcode.0 == 0x0F
        d.opcode = d.twoByte ? x.opcode.1 : x.opcode.0
        d.operandCount = min(x.op_count, 3)
        withUnsafeBytes(of: x.operands) { raw in
            let ops = raw.bindMemory(to: cs_x86_op.self)
            for i in 0..<Int(d.operandCount) {
                let o = convert(ops[i], override: override, bits: bits)
                switch i {
                case 0: d.o0 = o
                case 1: d.o1 = o
                default: d.o2 = o
                }
            }
        }
        // MMX, SSE..SSE4.2 and the state instructions: decoded from the bytes (SSEDecode.swift).
        if let form = simdForm(bytes, &d, bits: bits) {
            d.op = form.kind == .invalid ? .invalid : .sse
            d.simd = form
            return d
        }
        // Forms whose width Capstone 4 names by the wrong mode in 16-bit code: go by opcode and operand size.
        if !d.twoByte {
            let wide = d.operandSize
            switch d.opcode {
            case 0x98: d.op = wide == 2 ? .cbw : wide == 4 ? .cwde : .cdqe
            case 0x99: d.op = wide == 2 ? .cwd : wide == 4 ? .cdq : .cqo
            case 0xA5: d.op = wide == 2 ? .movsw : wide == 4 ? .movsd : .movsq
            case 0xA7: d.op = wide == 2 ? .cmpsw : wide == 4 ? .cmpsd : .cmpsq
            case 0xAB: d.op = wide == 2 ? .stosw : wide == 4 ? .stosd : .stosq
            case 0xAD: d.op = wide == 2 ? .lodsw : wide == 4 ? .lodsd : .lodsq
            case 0xAF: d.op = wide == 2 ? .scasw : wide == 4 ? .scasd : .scasq
            case 0x6D: d.op = wide == 2 ? .insw : .insd
            case 0x6F: d.op = wide == 2 ? .outsw : .outsd
            case 0x60 where bits != 64: d.op = wide == 2 ? .pushaw : .pushal
            case 0x61 where bits != 64: d.op = wide == 2 ? .popaw : .popal
            case 0x9C: d.op = bits == 64 ? (wide == 2 ? .pushf : .pushfq) : (wide == 2 ? .pushf : .pushfd)
            case 0x9D: d.op = bits == 64 ? (wide == 2 ? .popf : .popfq) : (wide == 2 ? .popf : .popfd)
            case 0xCF: d.op = wide == 2 ? .iret : wide == 4 ? .iretd : .iretq
            default: break
            }
        }
        // Fix up the forms Capstone names alike or describes with implicit operands.
        // x87 escapes D8-DF: one operation, dispatched on opcode and ModRM (X87.swift).
        if !d.twoByte && d.opcode >= 0xD8 && d.opcode <= 0xDF { d.op = .x87; d.modrm = x.modrm }
        if d.op == .movsd && !(x.opcode.0 == 0xA5) { d.op = .unimplemented }   // SSE movsd
        if d.op == .cmpsd && !(x.opcode.0 == 0xA7) { d.op = .unimplemented }   // SSE cmpsd
        if isRelativeBranch(d, opcode0: x.opcode.0, opcode1: x.opcode.1) {
            let width = relativeWidth(opcode0: x.opcode.0, operandSize: d.operandSize)
            var rel: Int64 = 0
            let start = Int(d.length) - width
            for k in (0..<width).reversed() { rel = rel << 8 | Int64(bytes[start + k]) }
            let shift = Int64(64 - 8 * width)
            d.relative = (rel << shift) >> shift
            if bits == 64 && d.operandSize == 2 { d.operandSize = 8 }   // near branches are 64-bit in long mode
        }
        return d
    }

    private func isRelativeBranch(_ d: DecodedInstruction, opcode0: UInt8, opcode1: UInt8) -> Bool {
        switch opcode0 {
        case 0x70...0x7F, 0xE0...0xE3, 0xE8, 0xE9, 0xEB: return true
        case 0x0F: return (0x80...0x8F).contains(opcode1)
        default: return false
        }
    }

    private func relativeWidth(opcode0: UInt8, operandSize: UInt8) -> Int {
        switch opcode0 {
        case 0x70...0x7F, 0xE0...0xE3, 0xEB: return 1
        default: return operandSize == 2 ? 2 : 4
        }
    }

    private func convert(_ op: cs_x86_op, override: UInt8?, bits: Int) -> Operand {
        var o = Operand()
        o.size = op.size
        switch op.type {
        case X86_OP_REG:
            let r = regTable[Int(op.reg.rawValue)]
            o.kind = r.kind
            o.reg = r.reg
            if o.size == 0 { o.size = r.size }
        case X86_OP_IMM:
            o.kind = .immediate
            o.value = op.imm
        case X86_OP_MEM:
            o.kind = .memory
            let m = op.mem
            // Anything that is not a general register (Capstone's EIZ/RIZ "no index" in
            // padding such as `lea esi, [esi + eiz]`) contributes nothing.
            func addressRegister(_ r: x86_reg) -> UInt8 {
                guard r != X86_REG_INVALID else { return Operand.noRegister }
                let entry = regTable[Int(r.rawValue)]
                return entry.kind == .register ? entry.reg : Operand.noRegister
            }
            o.base = addressRegister(m.base)
            o.index = addressRegister(m.index)
            o.scale = UInt8(truncatingIfNeeded: m.scale)
            o.value = m.disp
            if let override {
                o.segment = override
            } else if m.segment != X86_REG_INVALID, regTable[Int(m.segment.rawValue)].kind == .segment {
                o.segment = regTable[Int(m.segment.rawValue)].reg
            } else {
                // BP/SP-based addressing defaults to SS.
                o.segment = (o.base == 4 || o.base == 5) ? Segment.ss : Segment.ds
            }
        default:
            break
        }
        return o
    }
}
