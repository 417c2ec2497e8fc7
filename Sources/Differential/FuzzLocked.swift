#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GuestMemory
import KVM
import Machine
import X86

/// `tandem fuzz --cpus N`: every vCPU runs a loop of LOCKed read-modify-write instructions
/// (every lockable form and width, in its own random order, with its own operands) on
/// counters in shared memory, free-running on KVM and then on the interpreter. Each
/// counter is only ever changed by operations that commute with each other (additions,
/// XORs, ORs, ANDs, negations, exchanges), so its final value is known exactly whatever the
/// interleaving: an engine whose LOCK is not atomic loses updates and misses it.
public final class LockedFuzzCampaign {
    public struct Options: Sendable {
        public var seed: UInt64 = 1
        public var cpus = 2
        /// Loop iterations on each vCPU.
        public var iterations = 2000
        public var kvmDevicePath: String = KVMDevice.defaultPath
        /// Only these forms (as the summary names them, e.g. "lock inc m32"): to narrow a
        /// wrong counter down to the forms that lose updates. Empty: every form.
        public var onlyForms: Set<String> = []
        public init() {}
    }

    public struct Summary: Sendable {
        /// Distinct forms (mnemonic, width, operand kind) in the loop.
        public var forms = Set<String>()
        public var counters = 0
        /// "counter: expected X, got Y" for each counter an engine got wrong.
        public var kvmMismatches: [String] = []
        public var interpreterMismatches: [String] = []
        /// Counters whose final values differ between the engines.
        public var engineDifferences: [String] = []
        /// How each run ended, when not with every vCPU halted.
        public var problems: [String] = []
        public var seconds = 0.0
        public var failed: Bool { !kvmMismatches.isEmpty || !interpreterMismatches.isEmpty || !engineDifferences.isEmpty || !problems.isEmpty }
    }

    /// What a counter accumulates: each kind's operations commute with one another.
    enum Kind: Int, CaseIterable { case sum, xor, or, and, negate, exchange }

    /// One counter: a kind and width (bytes; 16 for the cmpxchg16b sum) at an offset of the shared page.
    struct Counter: Hashable {
        var kind: Kind
        var width: Int
        var offset: UInt64 { width == 16 ? 0x700 : UInt64(kind.rawValue) * 0x100 + UInt64(Self.widths.firstIndex(of: width)!) * 0x40 }
        var name: String { "\(kind) \(width * 8)-bit" }
        static let widths = [1, 2, 4, 8]
    }

    /// One LOCKed operation of the loop and its effect on its counter.
    struct Operation {
        var counter: Counter
        var form: String
        var code: [UInt8]
        /// sum: the amount added; xor/or/and: the operand; negate: 1; exchange: 0.
        var operand: UInt64
    }

    let options: Options
    static let base: UInt64 = 0x20_0000
    static let shared: UInt64 = 0x6000
    static let cells: UInt64 = 0x6800        // each vCPU's exchange tokens, 0x100 apart
    static let entries: UInt64 = 0x2400      // each vCPU's user-mode entry point
    static let userCode: UInt64 = 0xA000     // each vCPU's loop, 0x2000 apart

    public init(_ options: Options) throws(MachineError) {
        guard (1...8).contains(options.cpus) else { throw MachineError(.usage, "tandem fuzz --cpus takes 1 to 8 vCPUs") }
        // The loop counter is 32 bits and the loop tests it after the body: 0 would mean 2^32.
        guard (1...1_000_000_000).contains(options.iterations) else { throw MachineError(.usage, "tandem fuzz --cpus: --count (loop iterations) must be 1 to 10^9") }
        self.options = options
    }

    public func run() -> Summary {
        let start = DispatchTime.now()
        var rng = SplitMix64(seed: options.seed)
        var generator = InstructionGenerator(mode: .user64, rng: SplitMix64(seed: rng.next()))
        let loops = (0..<options.cpus).map { cpu in makeLoop(cpu: cpu, &generator) }
        var initial: [Counter: [UInt8]] = [:]
        for counter in Self.allCounters {
            initial[counter] = (0..<counter.width).map { _ in generator.byte() }
        }
        // Exchange tokens: each vCPU's cell per width starts with a distinct value.
        var tokens: [[UInt8]] = []
        for _ in 0..<options.cpus { tokens.append((0..<32).map { _ in generator.byte() }) }
        let image = makeImage(loops: loops, initial: initial, tokens: tokens)

        var summary = Summary()
        summary.forms = Set(loops.flatMap { $0.map(\.form) })
        summary.counters = Self.allCounters.count
        let expected = expectedValues(loops: loops, initial: initial, tokens: tokens)
        var finals: [BackendKind: [Counter: String]] = [:]
        for backend in [BackendKind.kvm, .interp] {
            switch runImage(image, backend: backend) {
            case .failure(let problem): summary.problems.append("\(backend.rawValue): \(problem)")
            case .success(let memory):
                let got = observedValues(memory)
                finals[backend] = got
                let wrong = Self.allCounters.filter { got[$0] != expected[$0] }.map { "\($0.name): expected \(expected[$0]!), got \(got[$0]!)" }
                if backend == .kvm { summary.kvmMismatches = wrong } else { summary.interpreterMismatches = wrong }
            }
        }
        if let k = finals[.kvm], let i = finals[.interp] {
            summary.engineDifferences = Self.allCounters.filter { k[$0] != i[$0] }.map { "\($0.name): kvm \(k[$0]!), interp \(i[$0]!)" }
        }
        summary.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return summary
    }

    static let allCounters: [Counter] = Kind.allCases.flatMap { kind in Counter.widths.map { Counter(kind: kind, width: $0) } } + [Counter(kind: .sum, width: 16)]

    /// The loop body of one vCPU: every lockable form at every width, shuffled, each with its
    /// own operand. rSI points at the shared counters, rDI at this vCPU's exchange cells.
    func makeLoop(cpu: Int, _ g: inout InstructionGenerator) -> [Operation] {
        var ops: [Operation] = []
        func slot(_ c: Counter, _ extra: UInt64 = 0) -> InstructionGenerator.RM {
            InstructionGenerator.RM(modrmLowBits: 0x86, rexB: false, isMemory: true, disp: FuzzSandbox.le(c.offset + extra, 4))   // [rsi + disp32]
        }
        func register(_ r: UInt8) -> InstructionGenerator.RM { InstructionGenerator.RM(modrmLowBits: 0xC0 | r, rexB: false, isMemory: false, disp: []) }
        func mask(_ w: Int) -> UInt64 { w == 8 ? .max : (1 << UInt64(8 * w)) - 1 }
        for w in Counter.widths {
            let width: OpcodeEntry.Width = w == 1 ? .byte : .full
            let opcodeW: UInt8 = w == 1 ? 0 : 1
            // add or adc sbb and sub xor: with an immediate and with a register (rDX).
            for (digit, name) in [(0, "add"), (1, "or"), (2, "adc"), (3, "sbb"), (4, "and"), (5, "sub"), (6, "xor")] {
                let kind: Kind = name == "or" ? .or : name == "and" ? .and : name == "xor" ? .xor : .sum
                let counter = Counter(kind: kind, width: w)
                let carry: UInt64 = g.chance(50) ? 1 : 0
                let flagsSetup: [UInt8] = name == "adc" || name == "sbb" ? [carry == 1 ? 0xF9 : 0xF8] : []   // stc / clc
                for useRegister in [false, true] {
                    var v = EdgeValues.value(bits: min(w, 4) * 8, &g.rng)
                    if w == 8 && v & 0x8000_0000 != 0 { v |= 0xFFFF_FFFF_0000_0000 }   // imm32 is sign-extended
                    v &= mask(w)
                    let code: [UInt8]
                    if useRegister {
                        code = g.load(2, v) + flagsSetup + [0xF0] + g.assemble(size: w, width: width, opcode: [UInt8(digit * 8) | opcodeW], reg: 2, rm: slot(counter))
                    } else {
                        let imm = FuzzSandbox.le(v, min(w, 4))
                        code = flagsSetup + [0xF0] + g.assemble(size: w, width: width, opcode: [w == 1 ? 0x80 : 0x81], reg: UInt8(digit), rm: slot(counter), immediate: imm)
                    }
                    let added = name == "adc" ? v &+ carry : name == "sub" ? 0 &- v : name == "sbb" ? 0 &- (v &+ carry) : v
                    ops.append(Operation(counter: counter, form: "lock \(name) m\(w * 8), \(useRegister ? "r" : "imm")", code: code, operand: kind == .sum ? added & mask(w) : v))
                }
            }
            // inc dec not neg.
            for (opcode, digit, name, kind, operand) in [(0xFE, 0, "inc", Kind.sum, UInt64(1)), (0xFE, 1, "dec", .sum, mask(w)),
                                                          (0xF6, 2, "not", .xor, mask(w)), (0xF6, 3, "neg", .negate, 1)] as [(UInt8, UInt8, String, Kind, UInt64)] {
                let counter = Counter(kind: kind, width: w)
                let code = [0xF0] + g.assemble(size: w, width: width, opcode: [opcode | opcodeW], reg: digit, rm: slot(counter))
                ops.append(Operation(counter: counter, form: "lock \(name) m\(w * 8)", code: code, operand: operand))
            }
            // xadd: adds rDX (and returns the old value in it).
            let addend = EdgeValues.value(bits: w * 8, &g.rng)
            ops.append(Operation(counter: Counter(kind: .sum, width: w), form: "lock xadd m\(w * 8), r",
                                 code: g.load(2, addend) + [0xF0] + g.assemble(size: w, width: width, opcode: [0x0F, 0xC0 | opcodeW], reg: 2, rm: slot(Counter(kind: .sum, width: w))),
                                 operand: addend))
            // cmpxchg: a compare-and-swap loop adding k; rAX holds the expected value, rCX the new one.
            let k = UInt64(1 + g.rng.next() % 100)
            let sum = Counter(kind: .sum, width: w)
            let body = g.assemble(size: w, width: width, opcode: [0x88 | opcodeW], reg: 0, rm: register(1))                    // mov rcx, rax
                + g.assemble(size: w, width: width, opcode: [w == 1 ? 0x80 : 0x83], reg: 0, rm: register(1), immediate: [UInt8(k)])   // add rcx, k
                + [0xF0] + g.assemble(size: w, width: width, opcode: [0x0F, 0xB0 | opcodeW], reg: 1, rm: slot(sum))           // lock cmpxchg [slot], rcx
            let casCode = g.assemble(size: w, width: width, opcode: [0x8A | opcodeW], reg: 0, rm: slot(sum)) + body + [0x75, UInt8(bitPattern: Int8(-(body.count + 2)))]
            ops.append(Operation(counter: sum, form: "lock cmpxchg m\(w * 8), r", code: casCode, operand: k))
            // xchg (implicitly locked; with an explicit LOCK half the time): this vCPU's token
            // goes into the counter and the counter's value into the token's cell.
            let cell = InstructionGenerator.RM(modrmLowBits: 0x87, rexB: false, isMemory: true, disp: FuzzSandbox.le(UInt64(Counter.widths.firstIndex(of: w)! * 8), 4))   // [rdi + disp32]
            let exchange = Counter(kind: .exchange, width: w)
            let lock: [UInt8] = g.chance(50) ? [0xF0] : []
            let xchgCode = g.assemble(size: w, width: width, opcode: [0x8A | opcodeW], reg: 2, rm: cell)
                + lock + g.assemble(size: w, width: width, opcode: [0x86 | opcodeW], reg: 2, rm: slot(exchange))
                + g.assemble(size: w, width: width, opcode: [0x88 | opcodeW], reg: 2, rm: cell)
            ops.append(Operation(counter: exchange, form: "\(lock.isEmpty ? "" : "lock ")xchg m\(w * 8), r", code: xchgCode, operand: 0))
            // bts btr btc: with an immediate bit and with a bit in rDX (below the width, so it
            // stays inside the counter).
            if w > 1 {
                for (digit, opcode, name, kind) in [(5, 0xAB, "bts", Kind.or), (6, 0xB3, "btr", .and), (7, 0xBB, "btc", .xor)] as [(UInt8, UInt8, String, Kind)] {
                    let counter = Counter(kind: kind, width: w)
                    for useRegister in [false, true] {
                        let bit = g.rng.next() % UInt64(w * 8)
                        let code = useRegister
                            ? g.load(2, bit) + [0xF0] + g.assemble(size: w, width: width, opcode: [0x0F, opcode], reg: 2, rm: slot(counter))
                            : [0xF0] + g.assemble(size: w, width: width, opcode: [0x0F, 0xBA], reg: digit, rm: slot(counter), immediate: [UInt8(bit)])
                        let operand: UInt64 = name == "btr" ? ~(1 << bit) & mask(w) : 1 << bit
                        ops.append(Operation(counter: counter, form: "lock \(name) m\(w * 8), \(useRegister ? "r" : "imm8")", code: code, operand: operand))
                    }
                }
            }
        }
        // cmpxchg8b (on the 64-bit sum) and cmpxchg16b (on the 128-bit one): compare-and-swap
        // loops adding k, expected value in rDX:rAX, new one in rCX:rBX.
        for w in [8, 16] {
            let counter = Counter(kind: .sum, width: w)
            let half = w / 2
            let k = UInt64(1 + g.rng.next() % 100)
            let size = half == 4 ? 4 : 8
            let body = g.assemble(size: size, width: .full, opcode: [0x89], reg: 0, rm: register(3))        // mov rbx, rax
                + g.assemble(size: size, width: .full, opcode: [0x89], reg: 2, rm: register(1))             // mov rcx, rdx
                + g.assemble(size: size, width: .full, opcode: [0x83], reg: 0, rm: register(3), immediate: [UInt8(k)])   // add rbx, k
                + g.assemble(size: size, width: .full, opcode: [0x83], reg: 2, rm: register(1), immediate: [0])          // adc rcx, 0
                + [0xF0] + g.assemble(size: size, width: .dword, opcode: [0x0F, 0xC7], reg: 1, rm: slot(counter))       // lock cmpxchg8b/16b
            let code = g.assemble(size: size, width: .full, opcode: [0x8B], reg: 0, rm: slot(counter))
                + g.assemble(size: size, width: .full, opcode: [0x8B], reg: 2, rm: slot(counter, UInt64(half)))
                + body + [0x75, UInt8(bitPattern: Int8(-(body.count + 2)))]
            ops.append(Operation(counter: counter, form: w == 8 ? "lock cmpxchg8b m64" : "lock cmpxchg16b m128", code: code, operand: k))
        }
        if !options.onlyForms.isEmpty { ops = ops.filter { options.onlyForms.contains($0.form) } }
        // Each vCPU its own order.
        for i in stride(from: ops.count - 1, to: 0, by: -1) { ops.swapAt(i, Int(g.rng.next() % UInt64(i + 1))) }
        return ops
    }

    /// Every counter's final value, as the operations determine it whatever the interleaving.
    func expectedValues(loops: [[Operation]], initial: [Counter: [UInt8]], tokens: [[UInt8]]) -> [Counter: String] {
        let n = UInt64(options.iterations)
        var out: [Counter: String] = [:]
        for counter in Self.allCounters {
            let bytes = initial[counter]!
            let ops = loops.flatMap { $0 }.filter { $0.counter == counter }
            if counter.width == 16 {
                // A 128-bit sum: two 64-bit halves with a carry.
                var low = Self.value(bytes[0..<8]), high = Self.value(bytes[8..<16])
                for op in ops {
                    let product = op.operand.multipliedFullWidth(by: n)
                    let (l, carry) = low.addingReportingOverflow(product.low)
                    low = l
                    high = high &+ product.high &+ (carry ? 1 : 0)
                }
                out[counter] = hex(high) + "_" + String(low, radix: 16)
                continue
            }
            let mask: UInt64 = counter.width == 8 ? .max : (1 << UInt64(8 * counter.width)) - 1
            var v = Self.value(bytes[...])
            switch counter.kind {
            case .sum: for op in ops { v = v &+ op.operand &* n }
            case .xor: for op in ops where n % 2 == 1 { v ^= op.operand }
            case .or: for op in ops where n > 0 { v |= op.operand }
            case .and: for op in ops where n > 0 { v &= op.operand }
            case .negate: if (UInt64(ops.count) &* n) % 2 == 1 { v = 0 &- v }
            case .exchange:
                // Tokens are only moved around: the counter plus every vCPU's cell is constant.
                let index = Counter.widths.firstIndex(of: counter.width)! * 8
                for cpu in 0..<options.cpus { v = v &+ Self.value(tokens[cpu][index..<index + counter.width]) }
            }
            out[counter] = hex(v & mask)
        }
        return out
    }

    /// Every counter's value in `memory` (the shared page, then the exchange cells).
    func observedValues(_ memory: [UInt8]) -> [Counter: String] {
        var out: [Counter: String] = [:]
        for counter in Self.allCounters {
            let at = Int(counter.offset)
            if counter.width == 16 {
                out[counter] = hex(Self.value(memory[at + 8..<at + 16])) + "_" + String(Self.value(memory[at..<at + 8]), radix: 16)
                continue
            }
            let mask: UInt64 = counter.width == 8 ? .max : (1 << UInt64(8 * counter.width)) - 1
            var v = Self.value(memory[at..<at + counter.width])
            if counter.kind == .exchange {
                let index = Counter.widths.firstIndex(of: counter.width)! * 8
                for cpu in 0..<options.cpus {
                    let cell = Int(Self.cells - Self.shared) + cpu * 0x100 + index
                    v = v &+ Self.value(memory[cell..<cell + counter.width])
                }
            }
            out[counter] = hex(v & mask)
        }
        return out
    }

    static func value(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) } }

    /// An ELF64 image: each vCPU sets up its own TSS and kernel stack, enters CPL 3 (where
    /// KVM runs code natively even on PVM hosts) at its loop, runs it `iterations` times and
    /// ends with HLT, whose #GP lands on a HLT at CPL 0 with interrupts disabled.
    func makeImage(loops: [[Operation]], initial: [Counter: [UInt8]], tokens: [[UInt8]]) -> [UInt8] {
        let base = Self.base, le = FuzzSandbox.le
        var img = [UInt8](repeating: 0, count: Int(Self.userCode) + 0x2000 * loops.count)
        func put(_ offset: UInt64, _ bytes: [UInt8]) { img.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes) }
        for v in 0..<32 { put(FuzzSandbox.handlers + UInt64(v) * 16, [0xF4]) }
        // GDT: null, code64 0x08, data 0x10, user code64 0x18, user data 0x20, a TSS per vCPU from 0x28.
        for (i, d) in [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00AF_FB00_0000_FFFF, 0x00CF_F300_0000_FFFF].enumerated() {
            put(FuzzSandbox.gdt + UInt64(i * 8), le(UInt64(d), 8))
        }
        let tssArea: UInt64 = 0x1800, kernelStacks: UInt64 = 0x9000, userStacks: UInt64 = 0x7800
        for cpu in 0..<loops.count {
            let tss = base + tssArea + UInt64(cpu) * 0x80
            let low: UInt64 = 0x67 | (tss & 0xFFFF) << 16 | ((tss >> 16) & 0xFF) << 32 | 0x89 << 40 | ((tss >> 24) & 0xFF) << 56
            put(FuzzSandbox.gdt + 0x28 + UInt64(cpu) * 16, le(low, 8) + le(tss >> 32, 8))
            put(tssArea + UInt64(cpu) * 0x80 + 4, le(base + kernelStacks - UInt64(cpu) * 0x200, 8))   // RSP0
        }
        put(FuzzSandbox.gdt + 0x1F0, le(UInt64(0x28 + 16 * loops.count - 1), 2) + le(base + FuzzSandbox.gdt, 8))   // GDTR
        let idt: UInt64 = 0x2000
        for v in 0..<32 {
            let handler = base + FuzzSandbox.handlers + UInt64(v) * 16
            let low: UInt64 = handler & 0xFFFF | 0x08 << 16 | 0x8E << 40 | (handler >> 16 & 0xFFFF) << 48
            put(idt + UInt64(v) * 16, le(low, 8) + le(handler >> 32, 8))
        }
        put(idt + 0x200, le(0x1FF, 2) + le(base + idt, 8))                                   // IDTR
        put(FuzzSandbox.pml4, le(base + FuzzSandbox.pdpt | 7, 8))
        put(FuzzSandbox.pdpt, le(base + FuzzSandbox.pd | 7, 8))
        put(FuzzSandbox.pd, le(0x83, 8) + le(0x20_0000 | 0x87, 8))                           // 0-2 MiB supervisor, 2-4 MiB user
        for (counter, bytes) in initial { put(Self.shared + counter.offset, bytes) }
        for cpu in 0..<loops.count { put(Self.cells + UInt64(cpu) * 0x100, tokens[cpu]) }

        var c: [UInt8] = [0x48, 0x89, 0xF8, 0x48, 0xC1, 0xE0, 0x09]                           // rax = cpu * 0x200
        c += [0x48, 0xBC] + le(base + kernelStacks, 8) + [0x48, 0x29, 0xC4]                  // rsp = kernel stack - rax
        c += [0x48, 0xB8] + le(base + FuzzSandbox.gdt + 0x1F0, 8) + [0x0F, 0x01, 0x10]       // lgdt
        c += [0x48, 0xB8] + le(base + idt + 0x200, 8) + [0x0F, 0x01, 0x18]                  // lidt
        c += [0x48, 0xB8] + le(base + FuzzSandbox.pml4, 8) + [0x0F, 0x22, 0xD8]              // mov cr3
        c += [0x89, 0xF8, 0xC1, 0xE0, 0x04, 0x83, 0xC0, 0x28, 0x0F, 0x00, 0xD8]               // ltr 0x28 + 16 * cpu
        c += [0x66, 0xB8, 0x23, 0x00, 0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xE0, 0x8E, 0xE8]         // user data selectors
        c += [0x48, 0x89, 0xF8, 0x48, 0xC1, 0xE0, 0x08]                                       // rax = cpu * 0x100
        c += [0x48, 0xB9] + le(base + userStacks, 8) + [0x48, 0x29, 0xC1]                    // rcx = user stack - rax
        c += [0x6A, 0x23, 0x51, 0x68, 0x02, 0x02, 0x00, 0x00, 0x6A, 0x1B]                     // ss, rsp, rflags (IF), cs
        c += [0x48, 0xB8] + le(base + Self.entries, 8) + [0xFF, 0x34, 0xF8]                  // push entries[cpu]
        c += [0x48, 0xCF]                                                                      // iretq
        put(0, c)
        for (cpu, ops) in loops.enumerated() {
            let entry = Self.userCode + UInt64(cpu) * 0x2000
            put(Self.entries + UInt64(cpu) * 8, le(base + entry, 8))
            var loop: [UInt8] = [0x48, 0xBE] + le(base + Self.shared, 8)                     // rsi = counters
            loop += [0x48, 0xBF] + le(base + Self.cells + UInt64(cpu) * 0x100, 8)            // rdi = this vCPU's cells
            loop += [0x41, 0xBF] + le(UInt64(options.iterations), 4)                         // r15d = iterations
            let body = ops.flatMap(\.code) + [0x41, 0xFF, 0xCF]                              // ...; dec r15d
            loop += body + [0x0F, 0x85] + le(UInt64(bitPattern: Int64(-(body.count + 6))), 4) + [0xF4]   // jnz; hlt (#GP)
            precondition(loop.count <= 0x2000, "the loop does not fit its page")
            put(entry, loop)
        }
        return FuzzSandbox(mode: .user64).elf64(img)
    }

    enum RunResult { case success([UInt8]), failure(String) }

    /// Runs the image free on `backend` with every vCPU; the shared page and cells afterwards.
    func runImage(_ image: [UInt8], backend: BackendKind) -> RunResult {
        var template = Array("/tmp/tandem-locked-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { return .failure("cannot create a temporary image file") }
        let path = String(cString: template)
        defer { unlink(path) }
        _ = image.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        var c = MachineConfiguration(imagePath: path)
        c.backend = backend
        c.cpus = options.cpus
        c.memorySize = 16 << 20
        c.serial = .capture
        c.kvmDevicePath = options.kvmDevicePath
        c.timeout = 120
        c.announceBackend = false
        let machine: Machine
        do { machine = try Machine(c) } catch { return .failure(error.description) }
        let outcome = machine.run()
        guard case .allHalted = outcome.reason else { return .failure(outcome.message ?? "status \(outcome.status)") }
        return .success(machine.memory.bytes(at: Self.base + Self.shared, count: 0x1000))
    }
}
