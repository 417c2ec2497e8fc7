// The interpreter's translator (Sources/Interpreter/Translator) against the interpreter
// itself: random programs made of the instructions it has templates for run in a loop
// long enough for their traces to be translated and chained, once with `translate` on and
// once off, and everything is compared — every general register, RIP, RFLAGS, the image's
// memory (code, data, stack, page tables) and the instruction count, at the guest's end and
// at an instruction limit in the middle of the loop.
#if canImport(Glibc)
import Glibc
#endif
import Differential
import Foundation
import Machine
import Testing
import X86

/// Where a generated program runs.
enum TranslatorTestMode: String, CaseIterable, CustomStringConvertible, Sendable {
    case protected32          // Multiboot entry: 32-bit protected mode, flat segments, no paging
    case paged32              // the same with legacy 32-bit paging, the data page also aliased
    case long64               // elf64 entry: 64-bit long mode
    case real16               // a `boot` image: real mode, CS = DS = the image, ES, SS, FS elsewhere
    var description: String { rawValue }
    var bits: Int { self == .long64 ? 64 : self == .real16 ? 16 : 32 }
    /// Where the image is loaded.
    var base: UInt64 { self == .long64 ? 0x20_0000 : self == .real16 ? 0x7C00 : 0x10_0000 }
}

/// A random program: a loop of 250-400 rounds over instructions with templates (and a few
/// without, so that translated and interpreted code meet in the middle of a loop), with
/// conditional branches inside, stores into the code page (other lines; the same line
/// every 128th round), self-modifying code that patches an immediate the loop then uses,
/// in its own page (every round, by a translated store) and in the loop's page.
///
/// Layout (offsets from the image's base): 0x0000 set-up code, 0x1000 the loop (its own
/// code page; variables at +0xE00, lines no code is in), 0x2000 the patched code the loop
/// jumps to, 0x3000 the loop counter and the flags at the end, 0x4000 the data page the
/// memory operands address, 0x5000 the stack (top 0x6000), 0x6000-0x8FFF page tables
/// (paged32: a page directory, an identity page table for 0-4 MiB, and one mapping
/// 0x400000 and 0x480000 to the data page). real16: the same offsets, as offsets in CS and DS
/// (segment 0x07C0, the image); SS is the image + 0x3000 (SP 0x3000: the same stack), ES
/// the image - 0x100 and FS the data page, so that every override moves the operand's
/// offset; no page tables.
struct TranslatorProgram {
    static let imageSize = 0x9000
    static let dataSize = 4096
    static let farVariables = 0xE00   // in the loop's page
    static let aliasedData: UInt64 = 0x48_0000   // (its TLB slot is not the counter page's)

    let mode: TranslatorTestMode
    var rng: SplitMix64
    var lines: [String] = []
    var patchedCode: [String] = []   // the page at 0x2000
    var label = 0
    var pushedWidths: [Int] = []   // the stack the loop has pushed, in bytes per push
    let rounds: Int

    init(mode: TranslatorTestMode, seed: UInt64) {
        self.mode = mode
        rng = SplitMix64(seed: seed &* 0x9E37_79B9 &+ UInt64(TranslatorTestMode.allCases.firstIndex(of: mode)!))
        rounds = 250 + Int(rng.next() % 151)
    }

    // MARK: Registers

    static let names64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"]
    /// Registers the random instructions write: all but RSP, RSI (the data pointer) and RDI
    /// (an index, set from a masked register right before the memory operand that uses it).
    var free: [Int] { mode.bits == 64 ? [0, 1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15] : [0, 1, 2, 3, 5] }
    var widths: [Int] { mode.bits == 64 ? [1, 2, 4, 8] : [1, 2, 4] }

    func name(_ r: Int, _ w: Int) -> String {
        switch w {
        case 8: return r < 8 ? Self.names64[r] : "r\(r)"
        case 4: return r < 8 ? "e" + Self.names64[r].dropFirst() : "r\(r)d"
        case 2: return r < 8 ? String(Self.names64[r].dropFirst()) : "r\(r)w"
        default: return r < 4 ? ["al", "cl", "dl", "bl"][r] : r < 8 ? ["spl", "bpl", "sil", "dil"][r - 4] : "r\(r)b"
        }
    }

    static func sizeKeyword(_ w: Int) -> String { [1: "byte", 2: "word", 4: "dword", 8: "qword"][w]! }

    mutating func pick<T>(_ items: [T]) -> T { items[Int(rng.next() % UInt64(items.count))] }
    mutating func chance(_ percent: UInt64) -> Bool { rng.next() % 100 < percent }
    mutating func below(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

    /// A free register that has an 8-bit form without REX in 32-bit code.
    mutating func freeRegister(_ w: Int) -> Int {
        if w == 1 && mode.bits != 64 { return pick([0, 1, 2, 3]) }
        return pick(free)
    }

    mutating func newLabel(_ prefix: String) -> String {
        label += 1
        return "\(prefix)\(label)"
    }

    // MARK: Values

    /// A value of `w` bytes, often an edge (0, ±1, the sign boundaries).
    mutating func value(_ w: Int) -> UInt64 {
        let mask: UInt64 = w == 8 ? ~0 : (1 << UInt64(8 * w)) - 1
        let sign: UInt64 = 1 << UInt64(8 * w - 1)
        let edges: [UInt64] = [0, 1, 2, mask, mask - 1, sign, sign - 1, sign + 1, 0x7F, 0x80, 0xFF, 0x100, 0x8000, 0xFFFF, 0x8000_0000, 0xFFFF_FFFF]
        let v = chance(40) ? pick(edges) : (chance(30) ? rng.next() % 300 : rng.next())
        return v & mask
    }

    /// An immediate for an ALU or imul instruction of width `w` as nasm takes it (64-bit:
    /// a sign-extended 32-bit value, written signed).
    mutating func immediate(_ w: Int) -> String {
        if w == 8 { return String(Int32(truncatingIfNeeded: value(4))) }
        if chance(30) { return String(Int8(truncatingIfNeeded: value(1))) }   // the imm8 forms
        return "0x" + String(value(w), radix: 16)
    }

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    // MARK: Memory operands

    /// A memory operand of `w` bytes inside the data page: base + displacement, base +
    /// index * scale + displacement, absolute (RIP-relative in 64-bit code), index without
    /// base, a pointer made by lea (RBP: SS by default in 32-bit code), segment overrides
    /// (DS, ES, SS, and FS with a base and a limit in 32-bit code; FS and GS with non-zero
    /// bases in 64-bit code). Lines the
    /// operand needs first are emitted.
    mutating func memory(_ w: Int) -> String {
        if mode == .real16 { return memory16(w) }
        let size = Self.sizeKeyword(w)
        let last = Self.dataSize - 8
        let b64 = mode.bits == 64
        let si = b64 ? "rsi" : "esi", di = b64 ? "rdi" : "edi"
        func setIndex(_ g: inout TranslatorProgram) -> Int {
            g.lines.append("mov edi, \(g.name(g.pick(g.free), 4))")
            g.lines.append("and edi, 0x7F")
            return g.pick([1, 2, 4, 8])
        }
        var segment = ""
        if !b64 && chance(25) { segment = pick(["ds:", "es:", "ss:"]) }
        switch below(b64 ? 8 : 7) {
        case 0, 1:
            return "\(size) [\(segment)\(si) + \(below(last))]"
        case 2:
            let s = setIndex(&self)
            return "\(size) [\(segment)\(si) + \(di)*\(s) + \(below(last - 127 * s))]"
        case 3:
            return b64 ? "\(size) [rel data + \(below(last))]" : "\(size) [\(segment)data + \(below(last))]"
        case 4:
            // paged32: half of these through a second alias, 0x400000, whose TLB slot is the
            // loop counter's page's, so that translated accesses miss and return.
            let s = setIndex(&self)
            let page = mode == .paged32 && chance(50) ? "0x400000" : "data"
            return "\(size) [\(segment)\(di)*\(s) + \(page) + \(below(last - 127 * s))]"
        case 5:
            let x = below(last), d = below(last)
            lines.append("lea \(name(5, mode.bits / 8)), [\(si) + \(x)]")
            return "\(size) [\(segment)\(name(5, mode.bits / 8)) + \(d - x)]"
        case 6 where !b64:   // FS: base the data page, limit 0xFFF
            if chance(50) {
                let s = setIndex(&self)
                return "\(size) [fs:edi*\(s) + \(below(last - 127 * s))]"
            }
            return "\(size) [fs:\(below(last))]"
        case 6:   // GS base 0x100
            if chance(50) {
                let s = setIndex(&self)
                return "\(size) [gs:rsi + rdi*\(s) + \(below(last - 0x100 - 127 * s))]"
            }
            return "\(size) [gs:rsi + \(below(last - 0x100))]"
        default:   // FS base: the data page
            return "\(size) [fs:abs \(below(last))]"
        }
    }

    /// real16: a memory operand of `w` bytes inside the data page, in the 16-bit addressing
    /// forms ([si+d], [bx+si+d], [bp+si+d], [bp+di+d], [bx+d], [di+d], [disp16]) with DS, ES, SS or
    /// FS. SI is the data page's offset in DS, 0x4000; BX, DI and BP are set right before.
    /// Many of the sums pass 0xFFFF and must wrap: negative displacements (an SS or FS
    /// override), [bp+...] (SS by default), and BX set to 0x10000 - k with k added back in
    /// the displacement.
    mutating func memory16(_ w: Int) -> String {
        let size = Self.sizeKeyword(w)
        let last = Self.dataSize - 8
        // What the data page's DS offset (0x4000) is off by in the segment an override names.
        let overrides: [(String, Int)] = [("ds:", 0), ("es:", 0x100), ("ss:", -0x3000), ("fs:", -0x4000)]
        var (segment, delta) = chance(30) ? pick(overrides) : ("", 0)
        func setIndex(_ g: inout TranslatorProgram, _ r: String) {
            g.lines.append("mov \(r), \(g.name(g.pick(g.free), 2))")
            g.lines.append("and \(r), 0x7F")
        }
        switch below(8) {
        case 0:
            return "\(size) [\(segment)si + \(below(last) + delta)]"
        case 1:
            setIndex(&self, "bx")
            return "\(size) [\(segment)bx + si + \(below(last - 127) + delta)]"
        case 2:
            setIndex(&self, "di")
            return "\(size) [\(segment)di + data + \(below(last - 127) + delta)]"
        case 3:
            return "\(size) [\(segment)data + \(below(last) + delta)]"
        case 4:
            setIndex(&self, "bx")
            return "\(size) [\(segment)bx + data + \(below(last - 127) + delta)]"
        case 5:   // BX + SI past 0xFFFF
            let k = 1 + below(0x1000)
            lines.append("mov bx, \(hex(UInt64(0x10000 - k)))")
            return "\(size) [\(segment)bx + si + \(k + below(last) + delta)]"
        default:   // BP: SS unless overridden
            if segment.isEmpty { delta = -0x3000 }
            if chance(50) {
                setIndex(&self, "bp")
                return "\(size) [\(segment)bp + si + \(below(last - 127) + delta)]"
            }
            let x = below(last), d = below(last - 127)
            lines.append("lea bp, [si + \(x)]")
            setIndex(&self, "di")
            return "\(size) [\(segment)bp + di + \(d - x + delta)]"
        }
    }

    // MARK: Instructions

    static let aluOps = ["add", "sub", "and", "or", "xor", "cmp", "test"]
    static let conditions = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]

    /// An instruction that sets flags (mostly with a template; adc, sbb, inc, dec without).
    mutating func flagProducer() {
        let w = pick(widths)
        let r = freeRegister(w), n = name(r, w)
        switch below(20) {
        case 0...8:
            let op = pick(Self.aluOps)
            switch below(5) {
            case 0: lines.append("\(op) \(n), \(name(freeRegister(w), w))")
            case 1: lines.append(op == "test" ? "test \(n), \(immediate(w))" : "\(op) \(n), \(immediate(w))")
            case 2: lines.append(op == "test" ? "test \(memory(w)), \(n)" : "\(op) \(n), \(memory(w))")
            case 3: lines.append("\(op) \(memory(w)), \(n)")
            default: lines.append("\(op) \(memory(w)), \(immediate(w))")
            }
        case 9: lines.append("neg \(n)")
        case 10, 11, 12:
            let op = pick(["shl", "sal", "shr", "sar"])
            lines.append("\(op) \(n), \(pick([0, 1, 2, 7, 8, 15, 16, 31, 32, 63, below(64)]) & (w == 8 ? 63 : 31))")
        case 13, 14, 15:
            guard w > 1 else { lines.append("neg \(n)"); return }
            if chance(50) { lines.append("imul \(n), \(chance(50) ? name(freeRegister(w), w) : memory(w))") } else {
                lines.append("imul \(n), \(chance(50) ? name(freeRegister(w), w) : memory(w)), \(immediate(w))")
            }
        case 16: lines.append("\(pick(["adc", "sbb"])) \(n), \(chance(50) ? name(freeRegister(w), w) : immediate(w))")
        case 17: lines.append("\(pick(["inc", "dec"])) \(n)")
        default: lines.append("\(pick(Self.aluOps)) \(n), \(name(freeRegister(w), w))")
        }
    }

    /// An instruction that reads the flags the last producer left.
    mutating func flagConsumer(allowBranch: Bool) {
        let cc = pick(Self.conditions)
        switch below(allowBranch ? 3 : 2) {
        case 0: lines.append("set\(cc) \(name(freeRegister(1), 1))")
        case 1:
            let w = pick(widths.filter { $0 > 1 })
            lines.append("cmov\(cc) \(name(freeRegister(w), w)), \(chance(50) ? name(freeRegister(w), w) : memory(w))")
        default:
            // A forward branch over a few instructions (both ways taken, as the data goes).
            let skip = newLabel("skip")
            lines.append("j\(cc) \(skip)")
            for _ in 0..<(1 + below(4)) { plain(allowStack: false) }
            lines.append("\(skip):")
        }
    }

    /// One instruction that is not a flag consumer.
    mutating func plain(allowStack: Bool) {
        let w = pick(widths)
        let r = freeRegister(w), n = name(r, w)
        switch below(20) {
        case 0, 1:   // mov register, register / immediate
            lines.append(chance(50) ? "mov \(n), \(name(freeRegister(w), w))" : "mov \(n), \(hex(value(w)))")
        case 2, 3: lines.append("mov \(n), \(memory(w))")
        case 4, 5: lines.append("mov \(memory(w)), \(n)")
        case 6: lines.append("mov \(memory(w)), \(w == 8 ? String(Int32(truncatingIfNeeded: value(4))) : hex(value(w)))")
        case 7, 8, 9, 10, 11, 12:
            flagProducer()
            // Their flags read: by a template (the lazy record's kind), or by pushf (the
            // interpreter materialises all six from the record translated code left).
            if chance(40) { flagConsumer(allowBranch: allowStack) } else if chance(15) { flagsIntoRegister() }
        case 13:
            let lw = pick(mode.bits == 64 ? [2, 4, 8] : [2, 4])
            let m = memory(1)
            lines.append("lea \(name(freeRegister(lw), lw)), \(m.drop { $0 != "[" })")
        case 14:
            let dw = pick(mode.bits == 64 ? [4, 8] : mode.bits == 16 ? [2, 4] : [4])
            let sw = pick(mode.bits == 64 && dw == 8 ? [1, 2, 4] : dw == 2 ? [1] : [1, 2])
            let d = name(freeRegister(dw), dw)
            if sw == 4 {
                lines.append("movsxd \(d), \(chance(50) ? name(freeRegister(4), 4) : memory(4))")
            } else {
                lines.append("\(pick(["movzx", "movsx"])) \(d), \(chance(50) ? name(freeRegister(sw), sw) : memory(sw))")
            }
        case 15 where allowStack && pushedWidths.count < 12:
            // real16: some pushes of 32-bit registers (interpreted there) among the 16-bit.
            let pw = mode == .real16 && chance(30) ? 4 : mode.bits / 8
            lines.append("push \(name(pick(free), pw))")
            pushedWidths.append(pw)
        case 16 where allowStack && !pushedWidths.isEmpty:
            popOne()
        case 17:   // the loop page's variables: other lines than the code's
            let m = absolute("code_a + \(Self.farVariables + 8 * below(60))")
            lines.append(chance(50) ? "mov \(Self.sizeKeyword(w)) \(m), \(n)" : "mov \(n), \(Self.sizeKeyword(w)) \(m)")
        case 18 where chance(30): flagsIntoRegister()
        case 19 where mode.bits != 64 && chance(30):   // AH-BH: no fast form
            lines.append("\(pick(["add", "mov", "xor"])) \(pick(["ah", "ch", "dh", "bh"])), \(pick(["al", "bl", "ch", "dh"]))")
        default:
            flagProducer()
            flagConsumer(allowBranch: allowStack)
        }
    }

    /// pushf (generic: every flag materialised from the lazy record) and pop into a register.
    mutating func flagsIntoRegister() {
        lines.append(mode.bits == 64 ? "pushfq" : mode.bits == 16 ? "pushf" : "pushfd")
        lines.append("pop \(name(pick(free), mode.bits / 8))")
    }

    /// Pops what the last push pushed, into a random free register of its width.
    mutating func popOne() {
        lines.append("pop \(name(pick(free), pushedWidths.removeLast()))")
    }

    /// Where a 32-bit immediate of `mov r32, imm32` starts (real16: after the 0x66 prefix).
    var operandSizePrefix: Int { mode == .real16 ? 1 : 0 }

    /// The 32-bit register a patched `mov r32, imm32` (B8+r: the immediate at +1) or
    /// `add r32, imm32` (81 /0: at +2) writes.
    mutating func patchTarget() -> String { name(pick([1, 2, 3, 5]), 4) }

    mutating func loopBody() {
        for _ in 0..<(3 + below(4)) {
            for _ in 0..<(4 + below(12)) { plain(allowStack: true) }
            if chance(25) { flagProducer(); flagConsumer(allowBranch: true) }
            let site = label + 1
            switch below(6) {
            case 0:
                // A translated store patches code on another page, which runs next.
                label += 1
                let target = patchTarget()
                lines.append("mov dword \(absolute("smc_b\(site) + \(1 + operandSizePrefix)")), \(name(pick(free), 4))")
                lines.append("jmp smc_b\(site)")
                lines.append("smc_ret\(site):")
                patchedCode.append("smc_b\(site): mov \(target), 0x12345678")
                patchedCode.append("add \(name(pick(free), 4)), \(target)")
                patchedCode.append("jmp smc_ret\(site)")
            case 1:
                // Every 128th round: patch an add in this page, right before it runs.
                label += 1
                let target = patchTarget()
                storeEvery128thRound(site, at: "smc_a\(site) + \(2 + operandSizePrefix)")
                lines.append("smc_a\(site): add \(target), strict dword 0x1000")
            case 2:
                // Every 128th round: a store into the same 128-byte line as code.
                label += 1
                storeEvery128thRound(site, at: "near\(site)")
                lines.append("jmp over\(site)")
                lines.append("near\(site): dd 0")
                lines.append("over\(site):")
            default: break
            }
        }
        while !pushedWidths.isEmpty { popOne() }
    }

    /// A dword store of a random register to `address` when the loop counter is a
    /// multiple of 128.
    mutating func storeEvery128thRound(_ site: Int, at address: String) {
        lines.append("test byte \(counter), 127")
        lines.append("jnz gate\(site)")
        lines.append("mov dword \(absolute(address)), \(name(pick(free), 4))")
        lines.append("gate\(site):")
    }

    /// The memory operand at a label expression: absolute, or RIP-relative in 64-bit code.
    func absolute(_ address: String) -> String { mode.bits == 64 ? "[rel \(address)]" : "[\(address)]" }

    var counter: String { absolute("counter") }

    /// The whole program, as nasm source.
    mutating func source() -> String {
        loopBody()
        let b64 = mode.bits == 64
        var s: [String] = []
        if b64 {
            s += ["bits 64", "default rel", "section .text", "global _start", "image:", "_start:",
                  "lea rsp, [stack_top]",
                  "mov ecx, 0xC0000100", "lea rax, [data]", "mov rdx, rax", "shr rdx, 32", "wrmsr",   // FS base: the data page
                  "mov ecx, 0xC0000101", "mov eax, 0x100", "xor edx, edx", "wrmsr"]                  // GS base: 0x100
        } else if mode == .real16 {
            // Loaded at 0x7C00 with CS = 0: a far jump makes the image's offsets CS's.
            s += ["bits 16", "org 0", "image:", "jmp 0x07C0:_start", "_start:",
                  "mov ax, 0x07C0", "mov ds, ax", "mov ax, 0x07B0", "mov es, ax", "mov ax, 0x0BC0", "mov fs, ax",
                  "mov ax, 0x0AC0", "mov ss, ax", "mov sp, 0x3000"]
        } else {
            s += ["bits 32", "org \(hex(mode.base))", "image:",
                  "dd 0x1BADB002, 0x00010003, -(0x1BADB002 + 0x00010003), image, image, image_end, image_end, _start",
                  "_start:", "mov esp, stack_top"]
            // A GDT like the loader's, and 0x18: data, base the data page, limit 0xFFF, for FS.
            let data = mode.base + 0x4000
            let limited = 0xFFF | (data & 0xFFFF) << 16 | (data >> 16 & 0xFF) << 32 | 0x93 << 40 | 0x4 << 52 | (data >> 24) << 56
            s += ["lgdt [gdtr]", "mov ax, 0x18", "mov fs, ax"]
            s += ["jmp gdt_end", "align 8", "gdt: dq 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, \(hex(limited))",
                  "gdtr: dw 31", "dd gdt", "gdt_end:"]
            if mode == .paged32 {
                s += ["mov eax, page_directory", "mov cr3, eax", "mov eax, cr0", "or eax, 0x80000000", "mov cr0, eax", "jmp .paged", ".paged:"]
            }
        }
        let registerWidth = max(mode.bits / 8, 4)
        for r in free { s.append("mov \(name(r, registerWidth)), \(hex(value(registerWidth)))") }
        s.append(b64 ? "lea rsi, [data]" : (mode == .paged32 ? "mov esi, \(hex(Self.aliasedData))" : "mov esi, data"))
        s.append("mov edi, \(below(128))")
        s.append("push \(mode.bits == 16 ? "word " : "")\(hex(rng.next() & 0x8D5))")   // CF PF AF ZF SF OF
        s.append(b64 ? "popfq" : mode.bits == 16 ? "popf" : "popfd")
        s.append("jmp loop_top")
        s.append("times 0x1000 - ($ - image) db 0xCC")
        s += ["code_a:", "loop_top:"] + lines
        s += ["sub dword \(counter), 1", "jnz loop_top"]
        s += [b64 ? "pushfq" : "pushfd", "pop \(b64 ? "qword" : "dword") \(absolute("final_flags"))", "cli", "hlt"]   // (real16: pushfd/pop dword interpreted)
        s.append("times 0x1000 + \(Self.farVariables) - ($ - image) db 0xCC")   // (fails to assemble when the loop is too long)
        for _ in 0..<((0x1000 - Self.farVariables) / 8) { s.append("dq \(hex(rng.next()))") }
        s += ["code_b:"] + patchedCode
        s.append("times 0x3000 - ($ - image) db 0xCC")
        s += ["counter: dd \(rounds)", "final_flags: dq 0"]
        s.append("times 0x4000 - ($ - image) db 0")
        s.append("data:")
        for _ in 0..<(Self.dataSize / 8) { s.append("dq \(hex(rng.next()))") }
        s.append("times 0x6000 - ($ - image) db 0")
        s.append("stack_top:")
        if mode.bits == 32 {
            s += ["page_directory: dd page_table + 3, alias_table + 3", "times 1022 dd 0",
                  "page_table:", "%assign i 0", "%rep 1024", "dd i * 4096 + 3", "%assign i i + 1", "%endrep",
                  "alias_table: dd data + 3", "times 0x7F dd 0", "dd data + 3", "times 1023 - 0x80 dd 0"]
        }
        s.append("times \(Self.imageSize) - ($ - image) db 0")
        s.append("image_end:")
        return s.joined(separator: "\n") + "\n"
    }
}

/// What a run of a generated program left.
struct TranslatorRunResult {
    var status: Int32
    var gpr: [UInt64]
    var rip: UInt64
    var rflags: UInt64
    var memory: [UInt8]
    var instructions: UInt64
    var output: String

    /// The fields that differ from `other`, for the failure message.
    func differences(from other: TranslatorRunResult) -> String {
        var d: [String] = []
        if status != other.status { d.append("status \(status) vs \(other.status)") }
        for i in 0..<16 where gpr[i] != other.gpr[i] { d.append("gpr[\(i)] \(String(gpr[i], radix: 16)) vs \(String(other.gpr[i], radix: 16))") }
        if rip != other.rip { d.append("rip \(String(rip, radix: 16)) vs \(String(other.rip, radix: 16))") }
        if rflags != other.rflags { d.append("rflags \(String(rflags, radix: 16)) vs \(String(other.rflags, radix: 16))") }
        if let i = memory.indices.first(where: { memory[$0] != other.memory[$0] }) {
            d.append("memory differs first at image + 0x\(String(i, radix: 16)) (\(memory[i]) vs \(other.memory[i]))")
        }
        if instructions != other.instructions { d.append("instructions \(instructions) vs \(other.instructions)") }
        if output != other.output { d.append("output \(output.debugDescription) vs \(other.output.debugDescription)") }
        return d.joined(separator: "; ")
    }
}

/// Assembles `source` for `mode` into an image.
func assembleTranslatorProgram(_ source: String, mode: TranslatorTestMode, name: String) throws -> String {
    if mode == .long64 { return try assembleELF64(source, name: name) }
    let asm = try writeScratchFile(Array(source.utf8), name: "\(name).asm")
    let image = scratchPath("\(name).bin")
    let nasm = try runProcess("/usr/bin/env", ["nasm", "-f", "bin", "-o", image, asm])
    guard nasm.status == 0 else { throw GuestBuildFailure(description: "nasm: \(nasm.stderr)") }
    return image
}

/// Runs `image` on the interpreter, free-running, and reads what it left; `translated`
/// receives the instructions translated code ran.
func runTranslatorProgram(_ image: String, mode: TranslatorTestMode, translate: Bool, cpus: Int = 1,
                          maxInstructions: UInt64? = nil, translated: inout UInt64) throws -> TranslatorRunResult {
    var c = MachineConfiguration(imagePath: image)
    c.backend = .interp
    c.cpus = cpus
    c.memorySize = 64 << 20
    c.serial = .capture
    c.input = .none()
    c.timeout = 60
    c.announceBackend = false
    c.translate = translate
    c.maxInstructions = maxInstructions
    let machine = try Machine(c)
    let outcome = machine.run()
    let state = try #require(machine.finalStates()[0])
    translated = outcome.statistics.translated ?? 0
    return TranslatorRunResult(
        status: outcome.status, gpr: (0..<16).map { state.gpr[$0] }, rip: state.rip, rflags: state.rflags,
        memory: machine.memory.bytes(at: mode.base, count: TranslatorProgram.imageSize),
        instructions: outcome.statistics.instructions.compactMap { $0 }.reduce(0, +), output: machine.capturedOutput)
}

@Suite("Translator", .serialized)
struct TranslatorTests {
    /// Seeds per mode: enough programs that every template meets edge values and every
    /// condition, in well under a minute.
    static let seeds: [UInt64] = Array(1...150)

    @Test("random programs of translatable instructions: identical with the translator on and off, to the end and at an instruction limit mid-loop",
          arguments: TranslatorTestMode.allCases)
    func randomPrograms(mode: TranslatorTestMode) throws {
        var totalTranslated: UInt64 = 0, totalInstructions: UInt64 = 0
        for seed in Self.seeds {
            var program = TranslatorProgram(mode: mode, seed: seed)
            let source = program.source()
            let image = try assembleTranslatorProgram(source, mode: mode, name: "xlt-\(mode)-\(seed)")
            // To look at a failing program: TANDEM_XLT_KEEP=DIR keeps every source and image there.
            if let keep = ProcessInfo.processInfo.environment["TANDEM_XLT_KEEP"] {
                try source.write(toFile: "\(keep)/xlt-\(mode)-\(seed).asm", atomically: true, encoding: .utf8)
                try FileManager.default.copyItem(atPath: image, toPath: "\(keep)/xlt-\(mode)-\(seed)\(mode == .long64 ? ".elf" : ".bin")")
            }
            var translated: UInt64 = 0, none: UInt64 = 0
            let on = try runTranslatorProgram(image, mode: mode, translate: true, translated: &translated)
            let off = try runTranslatorProgram(image, mode: mode, translate: false, translated: &none)
            #expect(off.status == 0 && off.output.isEmpty, "\(mode) seed \(seed): the program did not run to its end: status \(off.status) \(off.output)")
            #expect(on.differences(from: off) == "", "\(mode) seed \(seed): translator on vs off: \(on.differences(from: off))")
            #expect(none == 0)
            // The loop ran translated: a good part of its instructions were retired by host
            // code (the rest: the rounds before a trace is hot and after each patch of the
            // loop's page, and the instructions without a template, which end a translation).
            #expect(translated * 20 > on.instructions, "\(mode) seed \(seed): only \(translated) of \(on.instructions) instructions translated")
            if ProcessInfo.processInfo.environment["TANDEM_XLT_KEEP"] != nil { print("\(mode) seed \(seed): \(translated) of \(on.instructions) translated") }
            totalTranslated += translated
            totalInstructions += on.instructions

            // Stopped in the middle: the translations' instruction counts and RIPs are exact.
            let limit = on.instructions / 4 + UInt64(seed * 7919) % (on.instructions / 2)
            let onLimited = try runTranslatorProgram(image, mode: mode, translate: true, maxInstructions: limit, translated: &translated)
            let offLimited = try runTranslatorProgram(image, mode: mode, translate: false, maxInstructions: limit, translated: &none)
            #expect(offLimited.status == 207 && offLimited.instructions == limit)
            #expect(onLimited.differences(from: offLimited) == "", "\(mode) seed \(seed) stopped after \(limit): \(onLimited.differences(from: offLimited))")
        }
        #expect(totalTranslated * 3 > totalInstructions, "\(mode): \(totalTranslated) of \(totalInstructions) instructions translated")
        print("translator \(mode): \(Self.seeds.count) programs, \(totalInstructions) instructions, \(totalTranslated) of them translated")
    }
}

/// A 2-vCPU elf64 guest: vCPU 1 runs a loop on a page of its own — a `mov eax, imm32`,
/// a store of EAX, a compare and a branch back, which the translator turns into one
/// translation chained to itself — while vCPU 0 patches the immediate to 1, 2, ...
/// `rounds` in turn and waits, after each patch, until vCPU 1 has stored the new value.
/// A translation that went on with the old instruction would leave vCPU 1 storing the
/// old value: vCPU 0 then gives up and reports the round.
private func crossModifyingLoopSource(rounds: Int) -> String {
    """
    bits 64
    default rel
    ROUNDS equ \(rounds)
    section .text
    global _start
    _start:
            cmp rdi, 1
            je loop_page
            ja park
            mov r12d, 1
    .round: mov [imm], r12d
            mov ecx, 200000000
    .wait:  cmp [seen], r12d
            je .next
            dec ecx
            jnz .wait
            mov al, 1                       ; stale: vCPU 1 kept the old immediate
            out 0xE9, al
            mov eax, r12d
            out 0xF4, al
    .next:  inc r12d
            cmp r12d, ROUNDS
            jbe .round
            mov al, 0
            out 0xF4, al
    park:   cli
            hlt
            jmp park

            align 4096
    loop_page:
            db 0xB8                         ; mov eax, imm32
    imm:    dd 0
            mov [seen], eax
            cmp eax, ROUNDS
            jb loop_page
            jmp park

            align 4096
    seen:   dd 0
    """
}

/// Runs `image` on `cpus` vCPUs of the interpreter; the console output, the status and
/// the instructions translated code ran.
private func runOnInterpreter(_ image: String, cpus: Int = 1, translate: Bool, commandLine: String? = nil) throws -> (output: String, status: Int32, translated: UInt64) {
    var c = MachineConfiguration(imagePath: image)
    c.backend = .interp
    c.cpus = cpus
    if let commandLine { c.commandLine = commandLine }
    c.serial = .capture
    c.input = .none()
    c.timeout = 120
    c.announceBackend = false
    c.translate = translate
    let machine = try Machine(c)
    let outcome = machine.run()
    return (machine.capturedOutput, outcome.status, outcome.statistics.translated ?? 0)
}

extension TranslatorTests {
    @Test("cross-modifying code: a chained translation on one vCPU sees every patch another vCPU makes to it, with the translator on and off")
    func crossModifyingLoop() throws {
        let image = try assembleELF64(crossModifyingLoopSource(rounds: 300), name: "xlt-xmc")
        for translate in [true, false] {
            let r = try runOnInterpreter(image, cpus: 2, translate: translate)
            #expect(r.output == "" && r.status == 0, "translate \(translate): stale code in round \(r.status)")
            #expect(translate ? r.translated > 10_000 : r.translated == 0, "translate \(translate): \(r.translated) translated")
        }
    }

    @Test("the SMP guests give their own verdicts with the translator on and off, and on it ran translated",
          arguments: [("smp-xmc.elf", 2, "xmc: ok, 2000 rounds\n"), ("smp-counter.elf", 4, "total=400000\n"), ("smp-locks.elf", 4, nil)])
    func smpGuests(name: String, cpus: Int, expected: String?) throws {
        for translate in [true, false] {
            let r = try runOnInterpreter(try guest(name), cpus: cpus, translate: translate)
            #expect(r.status == 0, "\(name) translate \(translate): status \(r.status): \(r.output)")
            if let expected { #expect(r.output == expected, "\(name) translate \(translate)") } else {
                #expect(r.output.hasSuffix("locks: ok\n") && !r.output.contains("errors=1"), "\(name) translate \(translate): \(r.output)")
            }
            #expect(translate ? r.translated > 0 : r.translated == 0, "\(name) translate \(translate): \(r.translated) translated")
        }
    }
}

extension TranslatorTests {
    /// Guests/bench/string32.asm: REP MOVS/STOS/CMPS/SCAS and LODS/STOS loops, byte and
    /// dword, over 4 KiB buffers; its checksum for 2,000 rounds is QEMU 7.2 TCG's
    /// (`qemu-system-i386 -accel tcg -debugcon stdio -kernel string32.elf -append iterations=2000`).
    @Test("string32 (REP string instructions, copies and fills a page at a time) gives QEMU's checksum, with the translator on and off")
    func stringChecksum() throws {
        for translate in [true, false] {
            let r = try runOnInterpreter(try guest("string32.elf"), translate: translate, commandLine: "iterations=2000")
            #expect(r.status == 0 && r.output == "string32 done sum=bd424b35\n", "translate \(translate): status \(r.status): \(r.output)")
        }
    }

    @Test("tandem run --stats says how many instructions translated code ran: most of loop32's with --translate on, none with off",
          .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
    func statsLine() throws {
        for translate in ["on", "off"] {
            let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--stats", "--translate", translate, try guest("loop32.elf")])
            #expect(r.status == 0, "\(r.stderr)")
            let line = try #require(r.stderr.split(separator: "\n").first { $0.hasPrefix("tandem: stats:") }.map(String.init))
            let words = line.components(separatedBy: " ")   // "..., 80000498 instructions (... M/s), translated 49980172"
            let instructions = try #require(words.firstIndex(of: "instructions").flatMap { UInt64(words[$0 - 1]) }, "\(line)")
            let translated = try #require(line.components(separatedBy: ", translated ").last.flatMap { UInt64($0) }, "\(line)")
            #expect(translate == "on" ? translated * 2 > instructions : translated == 0, "\(line)")
        }
    }
}
