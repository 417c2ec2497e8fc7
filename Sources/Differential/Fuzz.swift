#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Disassembler
import GuestMemory
import HostOS
import Interpreter
import KVM
import Loaders
import Machine
import RunLoop
import X86

/// `tandem fuzz`: random instruction sequences, each run from the same random state on
/// KVM and on the interpreter, final states and memory compared; divergences shrunk to
/// the fewest instructions that still diverge and saved as reproducers.
public final class FuzzCampaign {
    public struct Options: Sendable {
        public var mode: FuzzMode = .user64
        public var seed: UInt64 = 1
        public var count: Int = 1000
        public var outputDirectory: String? = nil
        public var kvmDevicePath: String = KVMDevice.defaultPath
        public var maxLength = 12
        /// A bug planted in the interpreter (testing the tester): after every `mnemonic`
        /// (Capstone's name), RFLAGS ^= `flags`.
        public var injectFault: (mnemonic: String, flags: UInt64)? = nil
        public init() {}
    }

    public struct Summary: Sendable {
        public var sequences = 0
        public var instructions = 0
        public var divergences: [String: Int] = [:]
        public var hostLimited: [String: Int] = [:]
        public var reproducers: [String] = []
        /// The first shrunk sequence of each diverging mnemonic, as "bytes  assembly" lines.
        public var examples: [String: [String]] = [:]
        /// Coverage of the sequences that were compared: distinct mnemonics (Capstone's) and
        /// forms (opcode, operand kinds, size, register or memory).
        public var mnemonics = Set<String>()
        public var forms = Set<String>()
        /// RFLAGS values compared: one per instruction that ran (its flag record) and the final one.
        public var flagComparisons = 0
        public var seconds = 0.0
        /// Why the campaign ended early ("interrupted by SIGINT (status 209)"), with its status.
        public var stoppedEarly: (status: Int32, line: String)? = nil

        public var divergenceCount: Int { divergences.values.reduce(0, +) }
    }

    let options: Options
    let kvmMemory: GuestMemoryMap
    let interpMemory: GuestMemoryMap
    let vm: KVMVirtualMachine
    let kvm: KVMVCPU
    let interp: InterpreterVCPU
    let sandbox: FuzzSandbox
    let disassembler = Disassembler()
    /// PVM runs CPL 3 code with the host's segment selectors (Documentation/HostLimitations.md).
    let hostSelectorsVisible: Bool

    public init(_ options: Options) throws(MachineError) {
        self.options = options
        sandbox = FuzzSandbox(mode: options.mode)
        hostSelectorsVisible = options.mode == .user64 && !HostCheck.cpuHasVirtualization()
        // Both sides answer CPUID alike (each keeps its own model MSRs).
        let cpuid = GuestCPUID(model: .default, available: MachineCPU.availableFeatures(kvmDevicePath: options.kvmDevicePath, x2APIC: true), cpuCount: 1)
        do {
            kvmMemory = try GuestMemoryMap(ramSize: 8 << 20)
            interpMemory = try GuestMemoryMap(ramSize: 8 << 20)
        } catch { throw MachineError(.hostError, error.description) }
        do {
            let (vm, vcpus) = try KVMDevice(path: options.kvmDevicePath).makeMachine(memory: kvmMemory, cpus: 1, cpu: GuestCPU(cpuid: cpuid))
            self.vm = vm
            kvm = vcpus[0]
        } catch {
            throw MachineError(.backendUnavailable, "tandem fuzz compares against KVM: \(error)")
        }
        interp = InterpreterMachine(memory: interpMemory, cpuCount: 1, cpu: GuestCPU(cpuid: cpuid)).makeVCPU(index: 0)
        if let fault = options.injectFault {
            guard interp.injectFault(mnemonic: fault.mnemonic, flipFlags: fault.flags) else {
                throw MachineError(.usage, "fault injection: the interpreter has no instruction '\(fault.mnemonic)'")
            }
            // The interpreter applies a planted fault only to single-stepped instructions.
            interp.singleStep = true
        }
    }

    /// One generated program: instructions, start state.
    struct Program {
        var instructions: [FuzzInstruction]
        var registers: [UInt64]
        var flags: UInt64
        var data: [UInt8]
        /// user64: XMM0-15, MM0-7 and MXCSR before the sequence (FuzzSSE.swift).
        var vectors: [UInt8] = []

        /// The sequence: each instruction with its setup, then its flag record.
        func code(_ sandbox: FuzzSandbox) -> [UInt8] {
            instructions.enumerated().flatMap { i, insn in insn.setup + insn.bytes + sandbox.flagRecord(index: i, undefinedFlags: insn.undefinedFlags) }
        }
    }

    struct Result {
        var state: CPUState
        var stop: String
        var memory: [UInt8]
    }

    /// Runs the campaign; a signal ends it after the sequence in progress (the summary
    /// says which signal).
    public func run(progress: (Int, Summary) -> Void = { _, _ in }) -> Summary {
        let pendingStop = PendingStop()
        return pendingStop.routingSignals { runSequences(progress: progress, until: pendingStop) }
    }

    private func runSequences(progress: (Int, Summary) -> Void, until pendingStop: PendingStop) -> Summary {
        var summary = Summary()
        var rng = SplitMix64(seed: options.seed)
        let start = DispatchTime.now()
        for index in 0..<max(options.count, 0) {
            if let stop = pendingStop.current { summary.stoppedEarly = stop; break }
            var generator = InstructionGenerator(mode: options.mode, rng: SplitMix64(seed: rng.next()), hostSelectorsVisible: hostSelectorsVisible)
            let program = makeProgram(&generator)
            summary.sequences += 1
            summary.instructions += program.instructions.count
            let (k, i) = execute(program)
            if let limitation = hostLimitation(k) {
                summary.hostLimited[limitation, default: 0] += 1
                continue
            }
            countCoverage(program, k, into: &summary)
            if !Self.differences(k, i).isEmpty {
                let shrunk = shrink(program)
                if let known = knownHostDifference(shrunk) {
                    summary.hostLimited[known, default: 0] += 1
                    continue
                }
                let (sk, si) = execute(shrunk)
                let mnemonic = culpritInstruction(shrunk, sk, si).map(mnemonic(of:)) ?? "?"
                summary.divergences[mnemonic, default: 0] += 1
                if summary.examples[mnemonic] == nil { summary.examples[mnemonic] = listing(shrunk).map { "\($0.0)  \($0.1)" } }
                if let dir = options.outputDirectory {
                    summary.reproducers.append(saveReproducer(shrunk, sk, si, index: index, directory: dir))
                }
            }
            if index % 100 == 99 { progress(index + 1, summary) }
        }
        summary.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return summary
    }

    func makeProgram(_ g: inout InstructionGenerator) -> Program {
        let length = 1 + Int(g.rng.next() % UInt64(options.maxLength))
        let base = sandbox.base + FuzzSandbox.data
        // Half the free registers' values and of the data page's words come from the edges.
        var registers = (0..<16).map { _ in EdgeValues.register(&g.rng) }
        for r in InstructionGenerator.baseRegisters { registers[Int(r)] = base + 0x400 + (g.rng.next() % 0x800) }
        if options.mode.bits < 64 { for r in 8..<16 { registers[r] = 0 } }
        registers[4] = 0
        g.rbx = registers[3]
        var instructions: [FuzzInstruction] = []
        for _ in 0..<length {
            // Keep only what Capstone decodes (the table holds nothing else; this is a check).
            var insn = g.next()
            while disassembler.disassemble(insn.bytes, address: 0, bits: options.mode.bits) == nil { insn = g.next() }
            instructions.append(insn)
        }
        let flags: UInt64 = 2 | (g.rng.next() & 0x8D5)
        var data: [UInt8] = []
        data.reserveCapacity(4096)
        for _ in 0..<512 { withUnsafeBytes(of: EdgeValues.register(&g.rng).littleEndian) { data.append(contentsOf: $0) } }
        if g.x87Share > 0 {
            // Half the 16-byte slots hold floating-point and BCD operands (FuzzX87.swift).
            for slot in 0..<256 where g.chance(50) { data.replaceSubrange(slot * 16..<slot * 16 + 16, with: X87EdgeValues.slot(&g.rng)) }
        }
        var vectors: [UInt8] = []
        if options.mode == .user64 {
            // SSE operands (over the first KiB of the x87 slots): floating-point edges in the vector registers and in the data
            // page's first KiB (where SSE memory operands point), and a random MXCSR.
            for k in 0..<64 { data.replaceSubrange(k * 16..<k * 16 + 16, with: FloatEdges.vector(&g.rng)) }
            for _ in 0..<16 { vectors += FloatEdges.vector(&g.rng) }
            for _ in 0..<8 { vectors += FuzzSandbox.le(EdgeValues.register(&g.rng), 8) }
            vectors += FuzzSandbox.le(UInt64(FloatEdges.mxcsr(&g.rng)), 8)
        }
        return Program(instructions: instructions, registers: registers, flags: flags, data: data, vectors: vectors)
    }

    /// Adds a compared sequence's forms, mnemonics and flag records to the coverage counts.
    func countCoverage(_ program: Program, _ k: Result, into summary: inout Summary) {
        for insn in program.instructions {
            summary.forms.insert(insn.form)
            summary.mnemonics.insert(mnemonic(of: insn))
        }
        summary.flagComparisons += 1 + flagRecordsWritten(k)
    }

    /// How many instructions ran to their flag record (a record always has RFLAGS bit 1 set).
    func flagRecordsWritten(_ r: Result) -> Int {
        let start = Int(FuzzSandbox.records)
        guard r.memory.count >= start + FuzzSandbox.maxRecords * 8 else { return 0 }
        return (0..<FuzzSandbox.maxRecords).filter { r.memory[start + $0 * 8] & 2 != 0 }.count
    }

    /// Runs `program` on both backends from the same state.
    func execute(_ program: Program) -> (Result, Result) {
        let image = sandbox.image(sequence: program.code(sandbox), registers: program.registers, flags: program.flags, dataBytes: program.data, vectorState: program.vectors)
        let format: ImageFormat = options.mode == .real16 ? .boot : options.mode == .prot32 ? .multiboot : .elf64
        return (run(image, format: format, memory: kvmMemory, backend: kvm),
                run(image, format: format, memory: interpMemory, backend: interp))
    }

    func run(_ image: [UInt8], format: ImageFormat, memory: GuestMemoryMap, backend: any VCPUBackend) -> Result {
        let base = sandbox.base
        [UInt8](repeating: 0, count: FuzzSandbox.size + 0x1000).withUnsafeBytes { memory.write(base, from: $0) }
        guard let plan = try? Loader.load(image, name: "fuzz", as: format, into: memory) else {
            return Result(state: CPUState(), stop: "image rejected", memory: [])
        }
        if let i = backend as? InterpreterVCPU {
            i.memoryWritten(at: 0, length: Int(base) + FuzzSandbox.size + 0x1000)
            i.instructionLimit = i.retired + 200_000
        }
        try? backend.writeState(plan.initialState(cpu: 0, of: 1))
        let watchdog = DispatchWorkItem { backend.kick() }
        DispatchQueue.global().asyncAfter(deadline: .now() + 2, execute: watchdog)
        defer { watchdog.cancel() }
        let stop: String
        switch backend.runWithoutDevices(maxExits: 10_000) {
        case .halted: stop = "hlt"
        case .tripleFault: stop = "triple fault"
        case .unsupported(let s): stop = "unsupported: \(s)"
        case .stopped: stop = "did not finish"
        case .exhausted: stop = "running"
        case .backendError: stop = "backend error"
        }
        let state = (try? backend.readState()) ?? CPUState()
        return Result(state: state, stop: stop, memory: memory.bytes(at: base, count: FuzzSandbox.size))
    }

    /// Differences that are this host's KVM (its instruction emulator, or PVM) and not ours;
    /// each is documented in Documentation/HostLimitations.md.
    func knownHostDifference(_ program: Program) -> String? {
        guard !HostCheck.cpuHasVirtualization() else { return nil }
        let (k, i) = execute(program)
        let diffs = Self.differences(k, i)
        guard let culprit = culpritInstruction(program, k, i) else { return nil }
        let name = mnemonic(of: culprit)
        for limitation in HostLimitation.pvm where options.mode != .user64 && limitation.mnemonics.contains(name) {
            // RFLAGS, its records, and the copy of the last record on the stack (near
            // userStack: the sequence's own pushes and pops move it) may differ, in those
            // flags only.
            let onlyThoseFlags = diffs.allSatisfy { d in
                let stackCopy = d.0.hasPrefix("memory+") && Int(d.0.dropFirst(9), radix: 16).map { abs($0 - Int(FuzzSandbox.userStack)) <= 64 } == true
                guard d.0 == "rflags" || d.0.hasPrefix("rflags after #") || stackCopy,
                      let a = UInt64(d.1.hasPrefix("0x") ? String(d.1.dropFirst(2)) : d.1, radix: 16),
                      let b = UInt64(d.2.hasPrefix("0x") ? String(d.2.dropFirst(2)) : d.2, radix: 16) else { return false }
                return (a ^ b) & ~limitation.flags == 0
            }
            if onlyThoseFlags { return limitation.reason }
        }
        if options.mode == .user64 && misalignedSSEAsUD(culprit, k, i, diffs) {
            return "PVM reports the #GP of an SSE instruction (misaligned 16-byte operand, LDMXCSR of reserved bits) as #UD (its host emulator cannot run SSE)"
        }
        if options.mode != .user64 && name == "cmpxchg",
           diffs.allSatisfy({ d in GPR.allCases.contains { $0.name == d.0 } && UInt64(d.1.dropFirst(2), radix: 16).map { $0 & 0xFFFF_FFFF } == UInt64(d.2.dropFirst(2), radix: 16).map { $0 & 0xFFFF_FFFF } }) {
            return "the host kernel's emulator zero-extends the register destination of a failed 32-bit CMPXCHG"
        }
        return nil
    }

    /// KVM stopped in the #UD handler, the interpreter in the #GP handler (one more word on
    /// the kernel stack: the error code), after an SSE instruction whose 16-byte memory
    /// operand is misaligned; nothing else differs.
    func misalignedSSEAsUD(_ culprit: FuzzInstruction, _ k: Result, _ i: Result, _ diffs: [(String, String, String)]) -> Bool {
        let handlers = sandbox.base + FuzzSandbox.handlers
        guard k.state.rip == handlers + 6 * 16 + 1, i.state.rip == handlers + 13 * 16 + 1,
              let d = disassembler.disassemble(culprit.bytes, address: 0, bits: 64) else { return false }
        let digits = d.text.split(separator: "[").last.map { $0.prefix { $0 != "]" } } ?? ""
        guard let address = UInt64(digits.dropFirst(2), radix: 16) else { return false }
        if d.text.hasPrefix("ldmxcsr") {
            // LDMXCSR of a value with reserved bits (31-16) set: #GP(0) on the CPU.
            let offset = Int(address &- sandbox.base)
            guard offset >= 0, offset + 4 <= k.memory.count, k.memory[offset + 2] | k.memory[offset + 3] != 0 else { return false }
        } else {
            guard d.text.contains("xmmword ptr ["), address & 15 != 0 else { return false }
        }
        return diffs.allSatisfy { $0.0 == "rsp" || $0.0 == "rip" || ($0.0.hasPrefix("memory+") && Int($0.0.dropFirst(9), radix: 16).map { $0 >= 0x8F00 } == true) }
    }

    func hostLimitation(_ k: Result) -> String? {
        if k.stop.hasPrefix("unsupported") { return "KVM cannot emulate an instruction (\(k.stop))" }
        return nil
    }

    static func differences(_ k: Result, _ i: Result) -> [(String, String, String)] {
        var out = DifferentialRun.differences(k.state, i.state, undefinedFlags: 0)
        out += x87Differences(k.state.fpu, i.state.fpu)
        if k.stop != i.stop { out.append(("stop", k.stop, i.stop)) }
        if k.memory != i.memory {
            let records = Int(FuzzSandbox.records)..<Int(FuzzSandbox.records) + FuzzSandbox.maxRecords * 8
            var recordsReported = Set<Int>()
            for j in 0..<min(k.memory.count, i.memory.count) where k.memory[j] != i.memory[j] {
                if records.contains(j) {
                    // A flag record: RFLAGS after that instruction, its undefined bits cleared.
                    let n = (j - records.lowerBound) / 8
                    guard recordsReported.insert(n).inserted else { continue }
                    let at = records.lowerBound + n * 8
                    func value(_ m: [UInt8]) -> String { hex(m[at..<at + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) }
                    out.append(("rflags after #\(n)", value(k.memory), value(i.memory)))
                } else {
                    out.append(("memory+\(hex(j))", byteHex(k.memory[j]), byteHex(i.memory[j])))
                }
                if out.count > 40 { break }
            }
        }
        return out
    }

    /// Removes instructions one at a time while the two backends still disagree.
    func shrink(_ program: Program) -> Program {
        var current = program
        var changed = true
        while changed && current.instructions.count > 1 {
            changed = false
            for i in (0..<current.instructions.count).reversed() {
                var candidate = current
                candidate.instructions.remove(at: i)
                let (k, r) = execute(candidate)
                if hostLimitation(k) == nil && !Self.differences(k, r).isEmpty {
                    current = candidate
                    changed = true
                }
            }
        }
        return current
    }

    /// Capstone's mnemonic of the instruction itself (without LOCK or REP).
    func mnemonic(of insn: FuzzInstruction) -> String {
        guard let d = disassembler.disassemble(insn.bytes, address: 0, bits: options.mode.bits) else { return "?" }
        return d.text.split(separator: " ").first { !["lock", "rep", "repe", "repne"].contains($0) }.map(String.init) ?? "?"
    }

    /// The instruction a (shrunk) divergence is charged to: the first whose flag record
    /// differs, otherwise the last one.
    func culpritInstruction(_ program: Program, _ k: Result, _ i: Result) -> FuzzInstruction? {
        let first = Self.differences(k, i).compactMap { d in d.0.hasPrefix("rflags after #") ? Int(d.0.dropFirst(14)) : nil }.min()
        return first.map { program.instructions[$0] } ?? program.instructions.last
    }

    func listing(_ program: Program) -> [(String, String)] {
        var out: [(String, String)] = []
        for bytes in program.instructions.map({ $0.setup + $0.bytes }) {
            var offset = 0
            while offset < bytes.count, let d = disassembler.disassemble(Array(bytes[offset...]), address: 0, bits: options.mode.bits) {
                out.append((bytes[offset..<offset + d.length].map(byteHex).joined(), d.text))
                offset += d.length
            }
        }
        return out
    }

    func saveReproducer(_ program: Program, _ k: Result, _ i: Result, index: Int, directory: String) -> String {
        mkdir(directory, 0o755)
        let name = "\(options.mode.rawValue)-seed\(options.seed)-\(index)"
        let ext = options.mode == .real16 ? "bin" : options.mode == .prot32 ? "mb" : "elf"
        let image = sandbox.image(sequence: program.code(sandbox), registers: program.registers, flags: program.flags, dataBytes: program.data, vectorState: program.vectors)
        writeFile("\(directory)/\(name).\(ext)", image)
        func state(_ r: Result) -> String {
            var fields = GPR.allCases.map { "\"\($0.name)\":\"\(hex(r.state[$0]))\"" }
            fields += ["\"rip\":\"\(hex(r.state.rip))\"", "\"rflags\":\"\(hex(r.state.rflags))\"", "\"stop\":\"\(r.stop)\""]
            return "{" + fields.joined(separator: ",") + "}"
        }
        let sequence = listing(program).map { "{\"bytes\":\"\($0.0)\",\"asm\":\"\($0.1)\"}" }.joined(separator: ",")
        let diffs = Self.differences(k, i).map { "{\"field\":\"\($0.0)\",\"kvm\":\"\($0.1)\",\"interp\":\"\($0.2)\"}" }.joined(separator: ",")
        let json = "{\"mode\":\"\(options.mode.rawValue)\",\"seed\":\(options.seed),\"index\":\(index),\"image\":\"\(name).\(ext)\"," +
            "\"initial\":{\"registers\":[\(program.registers.map { "\"\(hex($0))\"" }.joined(separator: ","))],\"rflags\":\"\(hex(program.flags))\"}," +
            "\"sequence\":[\(sequence)],\"kvm\":\(state(k)),\"interp\":\(state(i)),\"differences\":[\(diffs)]}\n"
        writeFile("\(directory)/\(name).json", Array(json.utf8))
        return "\(directory)/\(name).json"
    }

    func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}
