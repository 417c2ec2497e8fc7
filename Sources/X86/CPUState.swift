/// A segment register with its hidden (descriptor-cache) part.
///
/// `attributes` uses the layout of the descriptor's access-rights bytes as VMX keeps
/// them: bits 0-3 type, 4 S, 5-6 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable.
public struct SegmentRegister: Equatable, Hashable, Sendable {
    public var selector: UInt16
    public var base: UInt64
    public var limit: UInt32
    public var attributes: UInt32

    public init(selector: UInt16 = 0, base: UInt64 = 0, limit: UInt32 = 0xFFFF, attributes: UInt32 = 0) {
        self.selector = selector
        self.base = base
        self.limit = limit
        self.attributes = attributes
    }

    public var type: UInt8 { UInt8(attributes & 0xF) }
    public var isSystem: Bool { attributes & (1 << 4) == 0 }
    public var dpl: UInt8 { UInt8((attributes >> 5) & 3) }
    public var present: Bool { attributes & (1 << 7) != 0 }
    public var available: Bool { attributes & (1 << 12) != 0 }
    public var long: Bool { attributes & (1 << 13) != 0 }
    public var defaultBig: Bool { attributes & (1 << 14) != 0 }
    public var granularity: Bool { attributes & (1 << 15) != 0 }
    public var unusable: Bool { attributes & (1 << 16) != 0 }

    /// Builds attributes from the individual fields.
    public static func attributes(
        type: UInt8, s: Bool, dpl: UInt8 = 0, present: Bool = true, available: Bool = false,
        long: Bool = false, big: Bool = false, granularity: Bool = false, unusable: Bool = false
    ) -> UInt32 {
        var a = UInt32(type & 0xF) | UInt32(dpl & 3) << 5
        if s { a |= 1 << 4 }
        if present { a |= 1 << 7 }
        if available { a |= 1 << 12 }
        if long { a |= 1 << 13 }
        if big { a |= 1 << 14 }
        if granularity { a |= 1 << 15 }
        if unusable { a |= 1 << 16 }
        return a
    }

    /// A real-mode segment: base = selector * 16, 64 KiB limit, read/write (or execute/read for CS).
    public static func realMode(_ selector: UInt16, code: Bool = false) -> SegmentRegister {
        SegmentRegister(
            selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF,
            attributes: attributes(type: code ? 0xB : 0x3, s: true))
    }
}

/// GDTR or IDTR.
public struct DescriptorTable: Equatable, Hashable, Sendable {
    public var base: UInt64
    public var limit: UInt16
    public init(base: UInt64 = 0, limit: UInt16 = 0xFFFF) {
        self.base = base
        self.limit = limit
    }
}

/// One x87 data register: the 80-bit extended-precision format (64-bit significand with
/// its explicit integer bit, then sign and 15-bit exponent), as FXSAVE stores it.
public struct X87Register: Equatable, Hashable, Sendable {
    public var significand: UInt64
    public var signExponent: UInt16
    public init(significand: UInt64 = 0, signExponent: UInt16 = 0) {
        self.significand = significand
        self.signExponent = signExponent
    }
}

/// One 128-bit XMM register, little-endian halves.
public struct XMMRegister: Equatable, Hashable, Sendable {
    public var low: UInt64
    public var high: UInt64
    public init(low: UInt64 = 0, high: UInt64 = 0) {
        self.low = low
        self.high = high
    }
}

/// The floating-point and vector state: what FXSAVE stores (and KVM_GET_FPU returns), plus
/// XCR0. Values after power-on/INIT (FNINIT's control word, MXCSR's reset value).
///
/// `st` holds the *physical* registers R0-R7 (as FSAVE's tag word numbers them), not the
/// stack: ST(i) is `st[(top + i) & 7]` with TOP from bits 11-13 of `fsw`. FXSAVE and
/// KVM's `kvm_fpu` store the stack order, so converters rotate. `ftw` is the abridged tag
/// word of FXSAVE (bit i set: physical register i is not empty).
public struct FPUState: Equatable, Hashable, Sendable {
    public var fcw: UInt16 = 0x037F
    public var fsw: UInt16 = 0
    public var ftw: UInt8 = 0
    /// Last x87 opcode (11 bits), instruction pointer and data pointer (with selectors for
    /// the 32-bit formats).
    public var fop: UInt16 = 0
    public var fip: UInt64 = 0
    public var fcs: UInt16 = 0
    public var fdp: UInt64 = 0
    public var fds: UInt16 = 0
    public var st: InlineArray<8, X87Register> = .init(repeating: X87Register())
    public var mxcsr: UInt32 = 0x1F80
    public var xmm: InlineArray<16, XMMRegister> = .init(repeating: XMMRegister())
    /// XCR0 (XSETBV register 0): bit 0 (x87) is always set.
    public var xcr0: UInt64 = 1

    public init() {}

    public var top: Int { Int(fsw >> 11) & 7 }

    /// The full tag word (FSTENV, FSAVE, gdb's `ftag`) from the abridged tags and the
    /// registers' contents: 00 valid, 01 zero, 10 special (NaN, infinity, denormal,
    /// unnormal), 11 empty; two bits per physical register.
    public var fullTagWord: UInt16 {
        var tw: UInt16 = 0
        for i in 0..<8 {
            let tag: UInt16
            if ftw & (1 << UInt8(i)) == 0 {
                tag = 3
            } else {
                let r = st[i]
                let e = r.signExponent & 0x7FFF
                if e == 0x7FFF { tag = 2 }
                else if e == 0 { tag = r.significand == 0 ? 1 : 2 }
                else { tag = r.significand >> 63 != 0 ? 0 : 2 }
            }
            tw |= tag << UInt16(2 * i)
        }
        return tw
    }

    /// The abridged tags (FXSAVE) of a full tag word: set where a register is not empty.
    public static func abridgedTags(_ fullTagWord: UInt16) -> UInt8 {
        var abridged: UInt8 = 0
        for i in 0..<8 where (fullTagWord >> UInt16(2 * i)) & 3 != 3 { abridged |= 1 << UInt8(i) }
        return abridged
    }

    public static func == (a: FPUState, b: FPUState) -> Bool {
        for i in 0..<8 where a.st[i] != b.st[i] { return false }
        for i in 0..<16 where a.xmm[i] != b.xmm[i] { return false }
        return a.fcw == b.fcw && a.fsw == b.fsw && a.ftw == b.ftw && a.fop == b.fop && a.fip == b.fip
            && a.fcs == b.fcs && a.fdp == b.fdp && a.fds == b.fds && a.mxcsr == b.mxcsr && a.xcr0 == b.xcr0
    }

    public func hash(into h: inout Hasher) {
        h.combine(fcw); h.combine(fsw); h.combine(mxcsr)
        for i in 0..<16 { h.combine(xmm[i]) }
    }

    /// Puts the x87 component in its initial configuration (SDM 13.6: what XRSTOR loads for
    /// an absent component): FCW 0x037F, everything else zero, registers included. FNINIT
    /// differs: it leaves the registers.
    public mutating func initializeX87() {
        fcw = 0x037F; fsw = 0; ftw = 0; fop = 0
        fip = 0; fcs = 0; fdp = 0; fds = 0
        for i in 0..<8 { st[i] = X87Register() }
    }
}

/// Indices into `CPUState.gpr`, in the instruction encoding's order.
public enum GPR: Int, CaseIterable, Sendable {
    case rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15

    public var name: String { String(describing: self) }
}

/// The architectural state of one x86 vCPU: the one type every backend reads and writes.
///
/// The KVM backend converts KVM's regs/sregs/msrs to and from it; the interpreter
/// executes on it directly; diffs, traces and backend switches all speak it.
public struct CPUState: Equatable, Sendable {
    /// General registers, indexed by `GPR.rawValue` (encoding order).
    public var gpr: InlineArray<16, UInt64> = .init(repeating: 0)
    public var rip: UInt64 = 0
    public var rflags: UInt64 = 0x2

    public var es = SegmentRegister()
    public var cs = SegmentRegister()
    public var ss = SegmentRegister()
    public var ds = SegmentRegister()
    public var fs = SegmentRegister()
    public var gs = SegmentRegister()
    public var ldtr = SegmentRegister(attributes: SegmentRegister.attributes(type: 2, s: false))
    public var tr = SegmentRegister(attributes: SegmentRegister.attributes(type: 11, s: false))
    public var gdtr = DescriptorTable()
    public var idtr = DescriptorTable(base: 0, limit: 0x3FF)

    public var cr0: UInt64 = 0x6000_0010
    public var cr2: UInt64 = 0
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var cr8: UInt64 = 0
    public var efer: UInt64 = 0

    public var dr0: UInt64 = 0
    public var dr1: UInt64 = 0
    public var dr2: UInt64 = 0
    public var dr3: UInt64 = 0
    public var dr6: UInt64 = 0xFFFF_0FF0
    public var dr7: UInt64 = 0x400

    public var msrs = ModelSpecificRegisters()
    /// x87, MMX and SSE state (the FXSAVE image's contents) and XCR0.
    public var fpu = FPUState()
    /// Events between instructions: the interrupt shadow, NMI blocking, and what is being
    /// injected (KVM's `kvm_vcpu_events`).
    public var events = VCPUEvents()
    /// Running, halted (HLT) or waiting for a start-up IPI.
    public var runState = RunState.running

    public init() {}

    public static func == (a: CPUState, b: CPUState) -> Bool {
        for i in 0..<16 where a.gpr[i] != b.gpr[i] { return false }
        return a.rip == b.rip && a.rflags == b.rflags
            && a.es == b.es && a.cs == b.cs && a.ss == b.ss && a.ds == b.ds && a.fs == b.fs && a.gs == b.gs
            && a.ldtr == b.ldtr && a.tr == b.tr && a.gdtr == b.gdtr && a.idtr == b.idtr
            && a.cr0 == b.cr0 && a.cr2 == b.cr2 && a.cr3 == b.cr3 && a.cr4 == b.cr4 && a.cr8 == b.cr8
            && a.efer == b.efer
            && a.dr0 == b.dr0 && a.dr1 == b.dr1 && a.dr2 == b.dr2 && a.dr3 == b.dr3
            && a.dr6 == b.dr6 && a.dr7 == b.dr7 && a.msrs == b.msrs && a.fpu == b.fpu
            && a.events == b.events && a.runState == b.runState
    }

    public subscript(_ r: GPR) -> UInt64 {
        get { gpr[r.rawValue] }
        set { gpr[r.rawValue] = newValue }
    }

    /// The execution mode the current state implies.
    public var mode: ExecutionMode {
        if cr0 & 1 == 0 { return .real }
        if rflags & (1 << 17) != 0 { return .virtual8086 }
        if efer & EFER.lma != 0 && cs.long { return .long64 }
        return cs.defaultBig ? .protected32 : .protected16
    }

    /// Interrupt flag.
    public var interruptsEnabled: Bool { rflags & (1 << 9) != 0 }

    /// The state a start-up IPI with `vector` gives an application processor: the INIT
    /// state (real mode, caches as after reset, EDX = the processor signature) with
    /// CS = vector << 8, IP = 0, so it runs from physical address vector << 12.
    public static func startup(vector: UInt8, signature: UInt64 = 0x600) -> CPUState {
        var s = CPUState()
        let selector = UInt16(vector) << 8
        s.cs = SegmentRegister(selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF,
                               attributes: SegmentRegister.attributes(type: 0xB, s: true))
        for path in [\CPUState.ds, \.es, \.ss, \.fs, \.gs] {
            s[keyPath: path] = SegmentRegister(selector: 0, base: 0, limit: 0xFFFF, attributes: SegmentRegister.attributes(type: 3, s: true))
        }
        s.rip = 0
        s[.rdx] = signature
        return s
    }
}

/// MSRs kept as storage in the CPU state (EFER is a field of its own).
public struct ModelSpecificRegisters: Equatable, Hashable, Sendable {
    public var star: UInt64 = 0
    public var lstar: UInt64 = 0
    public var cstar: UInt64 = 0
    public var fmask: UInt64 = 0
    public var kernelGSBase: UInt64 = 0
    public var sysenterCS: UInt64 = 0
    public var sysenterESP: UInt64 = 0
    public var sysenterEIP: UInt64 = 0
    public var tsc: UInt64 = 0
    public var pat: UInt64 = 0x0007_0406_0007_0406
    public var apicBase: UInt64 = 0xFEE0_0000 | (1 << 11)
    /// The MTRRs (IA32_MTRR_DEF_TYPE, the fixed and the variable ranges): storage only,
    /// as neither engine models memory types.
    public var mtrrs = MTRRs()

    public init() {}
}

/// The MTRR MSRs, indexed by `MTRRs.numbers` (MTRRcap, 0xFE, is read-only and constant).
public struct MTRRs: Equatable, Hashable, Sendable {
    /// IA32_MTRR_PHYSBASE0/PHYSMASK0 ... 7 (0x200-0x20F), the eleven fixed-range MTRRs,
    /// IA32_MTRR_DEF_TYPE.
    public static let numbers: [UInt32] = Array(0x200...0x20F) + [0x250, 0x258, 0x259] + Array(0x268...0x26F) + [0x2FF]
    public static let count = 28
    public var values: InlineArray<28, UInt64> = .init(repeating: 0)

    public init() {}

    /// Where MSR `number` is in `values`, or nil when it is not an MTRR kept here.
    public static func slot(_ number: UInt32) -> Int? {
        switch number {
        case 0x200...0x20F: Int(number - 0x200)
        case 0x250: 16
        case 0x258, 0x259: Int(number - 0x258) + 17
        case 0x268...0x26F: Int(number - 0x268) + 19
        case 0x2FF: 27
        default: nil
        }
    }

    public subscript(number: UInt32) -> UInt64 {
        get { values[Self.slot(number)!] }
        set { values[Self.slot(number)!] = newValue }
    }

    public static func == (a: MTRRs, b: MTRRs) -> Bool {
        for i in 0..<count where a.values[i] != b.values[i] { return false }
        return true
    }

    public func hash(into h: inout Hasher) {
        for i in 0..<Self.count { h.combine(values[i]) }
    }
}

/// What stands between two instructions besides the registers (SDM 6.8-6.9, 26.3.1.5):
/// an exception, interrupt or NMI whose delivery has begun and must complete before the
/// next instruction (KVM reports one when an exit came in the middle of it), an NMI
/// waiting for NMI blocking to end, the interrupt shadow, and NMI blocking. The
/// interpreter delivers events at once, so on it only the shadow, NMI blocking and a
/// pending NMI are ever set; it delivers what KVM left injected before its next instruction.
public struct VCPUEvents: Equatable, Hashable, Sendable {
    /// An exception being delivered (RIP: the faulting instruction, or the next one for a trap).
    public var exception: InjectedException?
    /// An interrupt being delivered: an external one (acknowledged at the controller
    /// already), or a software one (`soft`: INT n, delivered by running it again).
    public var interrupt: InjectedInterrupt?
    /// An NMI being delivered.
    public var nmiInjected = false
    /// An NMI accepted from the controller, waiting for blocking to end.
    public var nmiPending = false
    /// NMIs are blocked (an NMI handler runs, until its IRET).
    public var nmiBlocked = false
    /// `InterruptShadow` bits: interrupts (and, after MOV SS, debug traps and NMIs) are
    /// held off for one instruction after STI or MOV SS/POP SS.
    public var interruptShadow: UInt8 = 0

    public init() {}

    /// Whether something must be delivered before the next instruction.
    @inlinable public var hasInjection: Bool { exception != nil || interrupt != nil || nmiInjected }
}

public struct InjectedException: Equatable, Hashable, Sendable {
    public var vector: UInt8
    public var errorCode: UInt32?
    public init(vector: UInt8, errorCode: UInt32?) {
        self.vector = vector
        self.errorCode = errorCode
    }
}

public struct InjectedInterrupt: Equatable, Hashable, Sendable {
    public var vector: UInt8
    public var soft: Bool
    public init(vector: UInt8, soft: Bool) {
        self.vector = vector
        self.soft = soft
    }
}

/// The interrupt shadow's causes, as KVM encodes them (KVM_X86_SHADOW_INT_*).
public enum InterruptShadow {
    public static let movSS: UInt8 = 1
    public static let sti: UInt8 = 2
}

/// Whether a vCPU executes, waits in HLT for an event, or waits for a start-up IPI (an
/// application processor before its INIT-SIPI-SIPI, or any vCPU after INIT). The vCPU
/// loop keeps it (both engines return to it at HLT); snapshots record it.
public enum RunState: UInt8, Sendable {
    case running = 0, halted = 1, waitForSIPI = 2
}

/// Architectural MSR numbers.
public enum MSR {
    public static let tsc: UInt32 = 0x10
    public static let apicBase: UInt32 = 0x1B
    public static let sysenterCS: UInt32 = 0x174
    public static let sysenterESP: UInt32 = 0x175
    public static let sysenterEIP: UInt32 = 0x176
    public static let pat: UInt32 = 0x277
    public static let tscDeadline: UInt32 = 0x6E0
    public static let efer: UInt32 = 0xC000_0080
    public static let star: UInt32 = 0xC000_0081
    public static let lstar: UInt32 = 0xC000_0082
    public static let cstar: UInt32 = 0xC000_0083
    public static let fmask: UInt32 = 0xC000_0084
    public static let fsBase: UInt32 = 0xC000_0100
    public static let gsBase: UInt32 = 0xC000_0101
    public static let kernelGSBase: UInt32 = 0xC000_0102
}

/// Whether `address` is canonical for 48-bit linear addresses: bits 63-47 all equal.
@inlinable @inline(__always)
public func isCanonical(_ address: UInt64) -> Bool {
    UInt64(bitPattern: Int64(bitPattern: address << 16) >> 16) == address
}

public enum EFER {
    public static let sce: UInt64 = 1 << 0
    public static let lme: UInt64 = 1 << 8
    public static let lma: UInt64 = 1 << 10
    public static let nxe: UInt64 = 1 << 11
}

public enum CR0 {
    public static let pe: UInt64 = 1 << 0
    public static let mp: UInt64 = 1 << 1
    public static let em: UInt64 = 1 << 2
    public static let ts: UInt64 = 1 << 3
    public static let et: UInt64 = 1 << 4
    public static let ne: UInt64 = 1 << 5
    public static let wp: UInt64 = 1 << 16
    public static let pg: UInt64 = 1 << 31
}

public enum CR4 {
    public static let pse: UInt64 = 1 << 4
    public static let pae: UInt64 = 1 << 5
    public static let pge: UInt64 = 1 << 7
}

public enum ExecutionMode: String, Sendable {
    case real, virtual8086 = "vm86", protected16 = "prot16", protected32 = "prot32", long64 = "long64"

    /// Default operand/address size in bits.
    public var bits: Int {
        switch self {
        case .real, .virtual8086, .protected16: 16
        case .protected32: 32
        case .long64: 64
        }
    }
}

extension CPUState {
    /// The segment registers by name, in the order reports list them.
    public nonisolated(unsafe) static let segmentRegisters: [(name: String, path: KeyPath<CPUState, SegmentRegister>)] = [
        ("es", \.es), ("cs", \.cs), ("ss", \.ss), ("ds", \.ds), ("fs", \.fs), ("gs", \.gs), ("tr", \.tr), ("ldtr", \.ldtr),
    ]

    /// Every field that traces and diffs show, by name, in a fixed order: general registers,
    /// RIP, RFLAGS, each segment's selector, base, limit and attributes (type, S, DPL, P,
    /// AVL, L, D/B, G), control registers, EFER, GDTR and IDTR.
    public var namedFields: [(name: String, value: UInt64)] {
        var values = [UInt64](repeating: 0, count: Self.fieldCount)
        values.withUnsafeMutableBufferPointer { out in withUnsafePointer(to: self) { Self.fieldValues($0, into: out.baseAddress!) } }
        return zip(Self.fieldNames, values).map { ($0, $1) }
    }

    /// The names of `namedFields`, in order (binary traces store a field by its index here).
    public static let fieldNames: [String] = {
        var names = GPR.allCases.map(\.name) + ["rip", "rflags"]
        for (name, _) in segmentRegisters { names += [name, name + ".base", name + ".limit", name + ".attributes"] }
        return names + ["cr0", "cr2", "cr3", "cr4", "efer", "gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit"]
    }()
    /// (Inlinable constants: the trace recorder uses them after every instruction.)
    @inlinable public static var fieldCount: Int { 16 + 2 + 8 * 4 + 9 }
    /// Where RIP is in `fieldNames`.
    @inlinable public static var ripField: Int { 16 }

    /// Writes the values of `namedFields` to `out` (`fieldCount` of them) without allocating:
    /// the trace recorder calls this after every instruction.
    @inline(__always)
    public static func fieldValues(_ s: UnsafePointer<CPUState>, into out: UnsafeMutablePointer<UInt64>) {
        for i in 0..<16 { out[i] = s.pointee.gpr[i] }
        out[16] = s.pointee.rip
        out[17] = s.pointee.rflags
        @inline(__always) func segment(_ k: Int, _ r: SegmentRegister) {
            out[18 + 4 * k] = UInt64(r.selector)
            out[19 + 4 * k] = r.base
            out[20 + 4 * k] = UInt64(r.limit)
            out[21 + 4 * k] = UInt64(r.attributes & 0xF0FF)
        }
        // The order of `segmentRegisters`.
        segment(0, s.pointee.es); segment(1, s.pointee.cs); segment(2, s.pointee.ss); segment(3, s.pointee.ds)
        segment(4, s.pointee.fs); segment(5, s.pointee.gs); segment(6, s.pointee.tr); segment(7, s.pointee.ldtr)
        out[50] = s.pointee.cr0
        out[51] = s.pointee.cr2
        out[52] = s.pointee.cr3
        out[53] = s.pointee.cr4
        out[54] = s.pointee.efer
        out[55] = s.pointee.gdtr.base
        out[56] = UInt64(s.pointee.gdtr.limit)
        out[57] = s.pointee.idtr.base
        out[58] = UInt64(s.pointee.idtr.limit)
    }
}
