import X86

/// The register layouts the gdb stub offers, and their target descriptions
/// (`qXfer:features:read:target.xml`).
///
/// gdb fixes a connection's register layout when it connects: it reads the target
/// description once. The layout is therefore chosen from vCPU 0's mode at that moment
/// (`GDBArchitecture.at`): x86-64 in long mode, i386 in protected mode, i386 with gdb's
/// `i8086` architecture (16-bit disassembly) in real and virtual-8086 mode. QEMU instead
/// fixes it per binary (qemu-system-x86_64 always reports x86-64, so real-mode code shows
/// 64-bit registers and disassembles as 64-bit). A guest that changes mode later keeps
/// the layout until gdb reconnects (`target remote` again); the stub says so on gdb's
/// console at the first stop in the new mode. Documentation/Debugging.md.
enum GDBArchitecture: String, Sendable {
    case i8086
    case i386
    case x86_64 = "i386:x86-64"

    static func at(_ mode: ExecutionMode) -> GDBArchitecture {
        switch mode {
        case .long64: .x86_64
        case .protected32, .protected16: .i386
        case .real, .virtual8086: .i8086
        }
    }

    /// Whether this layout shows a vCPU in `mode` completely (the 32-bit ones cannot show
    /// long mode's registers).
    func fits(_ mode: ExecutionMode) -> Bool { self == .x86_64 || mode != .long64 }

    var wide: Bool { self == .x86_64 }

    var registers: [GDBRegister] { wide ? GDBRegister.x86_64 : GDBRegister.i386 }

    /// The target description: gdb's own feature names (`org.gnu.gdb.i386.core`, `.sse`,
    /// `.segments`) with its register names, so gdb's x86 support recognises them, and the
    /// system registers QEMU shows (`cr0`, `cr2`, `cr3`, `cr4`, `cr8`, `efer`, `k_gs_base`)
    /// in a feature of their own.
    var targetXML: String {
        var xml = """
            <?xml version="1.0"?>
            <!DOCTYPE target SYSTEM "gdb-target.dtd">
            <target version="1.0">
            <architecture>\(rawValue)</architecture>
            <osabi>none</osabi>

            """
        var feature: String? = nil
        for r in registers {
            if r.feature != feature {
                if feature != nil { xml += "</feature>\n" }
                feature = r.feature
                xml += "<feature name=\"\(r.feature)\">\n"
                if r.feature == "org.gnu.gdb.i386.core" { xml += Self.coreTypes }
                if r.feature == "org.gnu.gdb.i386.sse" { xml += Self.vectorTypes }
            }
            var line = "<reg name=\"\(r.name)\" bitsize=\"\(r.bits)\" type=\"\(r.type)\""
            if let group = r.group { line += " group=\"\(group)\"" }
            xml += line + "/>\n"
        }
        xml += "</feature>\n</target>\n"
        return xml
    }

    private static let coreTypes = """
        <flags id="i386_eflags" size="4">
        <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
        <field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
        <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
        <field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
        <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
        <field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
        </flags>

        """

    private static let vectorTypes = """
        <vector id="v4f" type="ieee_single" count="4"/>
        <vector id="v2d" type="ieee_double" count="2"/>
        <vector id="v16i8" type="int8" count="16"/>
        <vector id="v8i16" type="int16" count="8"/>
        <vector id="v4i32" type="int32" count="4"/>
        <vector id="v2i64" type="int64" count="2"/>
        <union id="vec128">
        <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>
        <field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
        <field name="uint128" type="uint128"/>
        </union>

        """
}

/// One register of a layout: where gdb finds it (the position is its number in `p`/`P`
/// and its place in `g`/`G`) and which part of `CPUState` it is.
struct GDBRegister: Sendable {
    enum Field: Sendable {
        case gpr(GPR), rip, eflags
        /// A segment selector by `CPUState.segmentRegisters` index (es, cs, ss, ds, fs, gs).
        case selector(Int)
        /// ST(i): the x87 stack, relative to TOP.
        case st(Int)
        case fctrl, fstat, ftag, fiseg, fioff, foseg, fooff, fop
        case xmm(Int), mxcsr
        case fsBase, gsBase, kernelGSBase
        case cr0, cr2, cr3, cr4, cr8, efer
    }

    var name: String
    var bits: Int
    var type: String
    var group: String? = nil
    var feature: String
    var field: Field

    var bytes: Int { bits / 8 }

    /// The register's value in `state`, little-endian, `bytes` long.
    func read(_ state: CPUState) -> [UInt8] {
        switch field {
        case .st(let i):
            let r = state.fpu.st[(state.fpu.top + i) & 7]
            return littleEndian(r.significand, 8) + littleEndian(UInt64(r.signExponent), 2)
        case .xmm(let i):
            return littleEndian(state.fpu.xmm[i].low, 8) + littleEndian(state.fpu.xmm[i].high, 8)
        default:
            return littleEndian(scalar(state), bytes)
        }
    }

    /// Sets the register in `state` from `value` (`bytes` long, little-endian). A selector
    /// written in real or virtual-8086 mode moves the segment's base with it (selector × 16);
    /// in protected mode only the selector changes (the descriptor cache is not reloaded).
    func write(_ value: [UInt8], to state: inout CPUState) {
        func word(_ from: Int, _ count: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in (from..<from + count).reversed() { v = v << 8 | UInt64(value[k]) }
            return v
        }
        let narrow = bytes < 8 ? word(0, bytes) : word(0, 8)
        /// Registers narrower in the layout than in the state keep their upper bits.
        func merge(_ old: UInt64) -> UInt64 { bytes >= 8 ? narrow : (old & ~((1 << UInt64(bits)) - 1)) | narrow }
        switch field {
        case .gpr(let r): state[r] = merge(state[r])
        case .rip: state.rip = merge(state.rip)
        case .eflags: state.rflags = (merge(state.rflags) & 0x3F_7FD7) | 2
        case .selector(let i):
            let path = CPUState.writableSegments[i]
            state[keyPath: path].selector = UInt16(truncatingIfNeeded: narrow)
            if state.mode == .real || state.mode == .virtual8086 { state[keyPath: path].base = UInt64(UInt16(truncatingIfNeeded: narrow)) << 4 }
        case .st(let i):
            state.fpu.st[(state.fpu.top + i) & 7] = X87Register(significand: word(0, 8), signExponent: UInt16(word(8, 2)))
        case .fctrl: state.fpu.fcw = UInt16(truncatingIfNeeded: narrow)
        case .fstat: state.fpu.fsw = UInt16(truncatingIfNeeded: narrow)
        case .ftag: state.fpu.ftw = FPUState.abridgedTags(UInt16(truncatingIfNeeded: narrow))
        case .fiseg: state.fpu.fcs = UInt16(truncatingIfNeeded: narrow)
        case .fioff: state.fpu.fip = merge(state.fpu.fip)
        case .foseg: state.fpu.fds = UInt16(truncatingIfNeeded: narrow)
        case .fooff: state.fpu.fdp = merge(state.fpu.fdp)
        case .fop: state.fpu.fop = UInt16(truncatingIfNeeded: narrow) & 0x7FF
        case .xmm(let i): state.fpu.xmm[i] = XMMRegister(low: word(0, 8), high: word(8, 8))
        case .mxcsr: state.fpu.mxcsr = UInt32(truncatingIfNeeded: narrow)
        case .fsBase: state.fs.base = merge(state.fs.base)
        case .gsBase: state.gs.base = merge(state.gs.base)
        case .kernelGSBase: state.msrs.kernelGSBase = narrow
        case .cr0: state.cr0 = merge(state.cr0)
        case .cr2: state.cr2 = merge(state.cr2)
        case .cr3: state.cr3 = merge(state.cr3)
        case .cr4: state.cr4 = merge(state.cr4)
        case .cr8: state.cr8 = narrow
        case .efer: state.efer = narrow
        }
    }

    private func scalar(_ s: CPUState) -> UInt64 {
        switch field {
        case .gpr(let r): s[r]
        case .rip: s.rip
        case .eflags: s.rflags
        case .selector(let i): UInt64(s[keyPath: CPUState.writableSegments[i]].selector)
        case .fctrl: UInt64(s.fpu.fcw)
        case .fstat: UInt64(s.fpu.fsw)
        case .ftag: UInt64(s.fpu.fullTagWord)
        case .fiseg: UInt64(s.fpu.fcs)
        case .fioff: s.fpu.fip
        case .foseg: UInt64(s.fpu.fds)
        case .fooff: s.fpu.fdp
        case .fop: UInt64(s.fpu.fop)
        case .mxcsr: UInt64(s.fpu.mxcsr)
        case .fsBase: s.fs.base
        case .gsBase: s.gs.base
        case .kernelGSBase: s.msrs.kernelGSBase
        case .cr0: s.cr0
        case .cr2: s.cr2
        case .cr3: s.cr3
        case .cr4: s.cr4
        case .cr8: s.cr8
        case .efer: s.efer
        case .st, .xmm: 0
        }
    }

    private func littleEndian(_ v: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 < 8 ? v >> (8 * UInt64($0)) : 0) }
    }

    // MARK: Layouts

    private static let core = "org.gnu.gdb.i386.core", sse = "org.gnu.gdb.i386.sse"
    private static let segments = "org.gnu.gdb.i386.segments", system = "org.tandem.x86.system"

    /// The x87 part of gdb's core feature, after the segment selectors.
    private static let x87: [GDBRegister] =
        (0..<8).map { GDBRegister(name: "st\($0)", bits: 80, type: "i387_ext", feature: core, field: .st($0)) }
        + ([("fctrl", Field.fctrl), ("fstat", .fstat), ("ftag", .ftag), ("fiseg", .fiseg), ("fioff", .fioff),
            ("foseg", .foseg), ("fooff", .fooff), ("fop", .fop)] as [(String, Field)]).map {
            GDBRegister(name: $0.0, bits: 32, type: "int", group: "float", feature: core, field: $0.1)
        }

    private static func selectors() -> [GDBRegister] {
        // gdb's order: cs ss ds es fs gs (CPUState.segmentRegisters: es cs ss ds fs gs).
        [("cs", 1), ("ss", 2), ("ds", 3), ("es", 0), ("fs", 4), ("gs", 5)].map {
            GDBRegister(name: $0.0, bits: 32, type: "int32", feature: core, field: .selector($0.1))
        }
    }

    private static func vector(_ count: Int) -> [GDBRegister] {
        (0..<count).map { GDBRegister(name: "xmm\($0)", bits: 128, type: "vec128", feature: sse, field: .xmm($0)) }
            + [GDBRegister(name: "mxcsr", bits: 32, type: "int", group: "vector", feature: sse, field: .mxcsr)]
    }

    /// gdb's amd64 order, then fs_base/gs_base, then QEMU's system registers.
    static let x86_64: [GDBRegister] = {
        let gprs: [GPR] = [.rax, .rbx, .rcx, .rdx, .rsi, .rdi, .rbp, .rsp, .r8, .r9, .r10, .r11, .r12, .r13, .r14, .r15]
        var list = gprs.map { GDBRegister(name: $0.name, bits: 64, type: $0 == .rsp || $0 == .rbp ? "data_ptr" : "int64", feature: core, field: .gpr($0)) }
        list.append(GDBRegister(name: "rip", bits: 64, type: "code_ptr", feature: core, field: .rip))
        list.append(GDBRegister(name: "eflags", bits: 32, type: "i386_eflags", feature: core, field: .eflags))
        list += selectors() + x87 + vector(16)
        list.append(GDBRegister(name: "fs_base", bits: 64, type: "int", feature: segments, field: .fsBase))
        list.append(GDBRegister(name: "gs_base", bits: 64, type: "int", feature: segments, field: .gsBase))
        list.append(GDBRegister(name: "k_gs_base", bits: 64, type: "int", feature: system, field: .kernelGSBase))
        for (name, field) in [("cr0", Field.cr0), ("cr2", .cr2), ("cr3", .cr3), ("cr4", .cr4), ("cr8", .cr8), ("efer", .efer)] {
            list.append(GDBRegister(name: name, bits: 64, type: "int", feature: system, field: field))
        }
        return list
    }()

    /// gdb's i386 order (eax ecx edx ebx esp ebp esi edi), the low halves of the state.
    static let i386: [GDBRegister] = {
        let gprs: [(String, GPR)] = [("eax", .rax), ("ecx", .rcx), ("edx", .rdx), ("ebx", .rbx), ("esp", .rsp), ("ebp", .rbp), ("esi", .rsi), ("edi", .rdi)]
        var list = gprs.map { GDBRegister(name: $0.0, bits: 32, type: $0.1 == .rsp || $0.1 == .rbp ? "data_ptr" : "int32", feature: core, field: .gpr($0.1)) }
        list.append(GDBRegister(name: "eip", bits: 32, type: "code_ptr", feature: core, field: .rip))
        list.append(GDBRegister(name: "eflags", bits: 32, type: "i386_eflags", feature: core, field: .eflags))
        list += selectors() + x87 + vector(8)
        list.append(GDBRegister(name: "fs_base", bits: 32, type: "int", feature: segments, field: .fsBase))
        list.append(GDBRegister(name: "gs_base", bits: 32, type: "int", feature: segments, field: .gsBase))
        for (name, field) in [("cr0", Field.cr0), ("cr2", .cr2), ("cr3", .cr3), ("cr4", .cr4)] {
            list.append(GDBRegister(name: name, bits: 32, type: "int", feature: system, field: field))
        }
        list.append(GDBRegister(name: "efer", bits: 64, type: "int", feature: system, field: .efer))
        return list
    }()
}

extension CPUState {
    /// ES, CS, SS, DS, FS, GS, writable (the order of `segmentRegisters`).
    nonisolated(unsafe) static let writableSegments: [WritableKeyPath<CPUState, SegmentRegister>] = [\.es, \.cs, \.ss, \.ds, \.fs, \.gs]
}
