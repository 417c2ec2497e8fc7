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
        public init() {}
    }

    public struct Summary: Sendable {
        public var sequences = 0
        public var instructions = 0
        public var divergences: [String: Int] = [:]
        public var hostLimited: [String: Int] = [:]
        public var reproducers: [String] = []
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

    public init(_ options: Options) throws(MachineError) {
        self.options = options
        sandbox = FuzzSandbox(mode: options.mode)
        do {
            kvmMemory = try GuestMemoryMap(ramSize: 8 << 20)
            interpMemory = try GuestMemoryMap(ramSize: 8 << 20)
        } catch { throw MachineError(.hostError, error.description) }
        do {
            let (vm, vcpus) = try KVMDevice(path: options.kvmDevicePath).makeMachine(memory: kvmMemory, cpus: 1)
            self.vm = vm
            kvm = vcpus[0]
        } catch {
            throw MachineError(.backendUnavailable, "tandem fuzz compares against KVM: \(error)")
        }
        interp = InterpreterMachine(memory: interpMemory, cpuCount: 1).makeVCPU(index: 0)
    }

    /// One generated program: instructions (each with its flag normaliser), start state.
    struct Program {
        var instructions: [[UInt8]]
        var registers: [UInt64]
        var flags: UInt64
        var data: [UInt8]
        var bytes: [UInt8] { instructions.flatMap { $0 } }
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
            var generator = InstructionGenerator(mode: options.mode, rng: SplitMix64(seed: rng.next()))
            let program = makeProgram(&generator)
            summary.sequences += 1
            summary.instructions += program.instructions.count
            let (k, i) = execute(program)
            if let limitation = hostLimitation(k) {
                summary.hostLimited[limitation, default: 0] += 1
            } else if !Self.differences(k, i).isEmpty {
                let shrunk = shrink(program)
                if let known = knownHostDifference(shrunk) {
                    summary.hostLimited[known, default: 0] += 1
                    continue
                }
                let (sk, si) = execute(shrunk)
                let mnemonic = mnemonicOf(shrunk)
                summary.divergences[mnemonic, default: 0] += 1
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
        var instructions: [[UInt8]] = []
        for _ in 0..<length {
            // Keep only what Capstone decodes and the interpreter claims to implement.
            var insn = g.next()
            while disassembler.disassemble(insn.bytes, address: 0, bits: options.mode.bits) == nil { insn = g.next() }
            // A defined-flags normaliser after an instruction that leaves flags undefined,
            // so no later instruction (or the final state) depends on them.
            instructions.append(insn.bytes + (insn.leavesFlagsUndefined ? [0x38, 0xC0] : []))
        }
        let base = sandbox.base + FuzzSandbox.data
        var registers = (0..<16).map { _ in g.rng.next() }
        for r in InstructionGenerator.baseRegisters { registers[Int(r)] = base + 0x400 + (g.rng.next() % 0x800) }
        if options.mode.bits < 64 { for r in 8..<16 { registers[r] = 0 } }
        registers[4] = 0
        let flags: UInt64 = 2 | (g.rng.next() & 0x8D5)
        let data = (0..<4096).map { _ in g.byte() }
        return Program(instructions: instructions, registers: registers, flags: flags, data: data)
    }

    /// Runs `program` on both backends from the same state.
    func execute(_ program: Program) -> (Result, Result) {
        let image = sandbox.image(sequence: program.bytes, registers: program.registers, flags: program.flags, dataBytes: program.data)
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

    /// Differences that are this host's KVM (its instruction emulator) and not ours;
    /// each is documented in Documentation/HostLimitations.md.
    func knownHostDifference(_ program: Program) -> String? {
        guard options.mode != .user64, !HostCheck.cpuHasVirtualization() else { return nil }
        let (k, i) = execute(program)
        let diffs = Self.differences(k, i)
        if mnemonicOf(program) == "cmpxchg",
           diffs.allSatisfy({ d in GPR.allCases.contains { $0.name == d.0 } && UInt64(d.1.dropFirst(2), radix: 16).map { $0 & 0xFFFF_FFFF } == UInt64(d.2.dropFirst(2), radix: 16).map { $0 & 0xFFFF_FFFF } }) {
            return "the host kernel's emulator zero-extends the register destination of a failed 32-bit CMPXCHG"
        }
        return nil
    }

    func hostLimitation(_ k: Result) -> String? {
        if k.stop.hasPrefix("unsupported") { return "KVM cannot emulate an instruction (\(k.stop))" }
        return nil
    }

    static func differences(_ k: Result, _ i: Result) -> [(String, String, String)] {
        var out = DifferentialRun.differences(k.state, i.state, undefinedFlags: 0)
        if k.stop != i.stop { out.append(("stop", k.stop, i.stop)) }
        if k.memory != i.memory {
            for j in 0..<min(k.memory.count, i.memory.count) where k.memory[j] != i.memory[j] {
                out.append(("memory+\(hex(j))", byteHex(k.memory[j]), byteHex(i.memory[j])))
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

    func mnemonicOf(_ program: Program) -> String {
        guard let last = program.instructions.last,
              let d = disassembler.disassemble(last, address: 0, bits: options.mode.bits) else { return "?" }
        return String(d.text.prefix { $0 != " " })
    }

    func listing(_ program: Program) -> [(String, String)] {
        var out: [(String, String)] = []
        for insn in program.instructions {
            var offset = 0
            while offset < insn.count, let d = disassembler.disassemble(Array(insn[offset...]), address: 0, bits: options.mode.bits) {
                out.append((insn[offset..<offset + d.length].map(byteHex).joined(), d.text))
                offset += d.length
            }
        }
        return out
    }

    func saveReproducer(_ program: Program, _ k: Result, _ i: Result, index: Int, directory: String) -> String {
        mkdir(directory, 0o755)
        let name = "\(options.mode.rawValue)-seed\(options.seed)-\(index)"
        let ext = options.mode == .real16 ? "bin" : options.mode == .prot32 ? "mb" : "elf"
        let image = sandbox.image(sequence: program.bytes, registers: program.registers, flags: program.flags, dataBytes: program.data)
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
