#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Devices
import Disassembler
import GuestMemory
import HostOS
import Interpreter
import KVM
import Loaders
import X86

/// RFLAGS bits an instruction leaves undefined (by mnemonic), which a differential
/// comparison must not hold against either side.
public enum UndefinedFlags {
    static let cf: UInt64 = 1, pf: UInt64 = 4, af: UInt64 = 0x10, zf: UInt64 = 0x40, sf: UInt64 = 0x80, of: UInt64 = 0x800

    public static func mask(for mnemonic: String) -> UInt64 {
        switch mnemonic {
        case "shl", "sal", "shr", "sar", "shld", "shrd": return af | of
        case "rol", "ror", "rcl", "rcr": return of
        case "mul", "imul": return sf | zf | af | pf
        case "div", "idiv": return cf | of | sf | zf | af | pf
        case "and", "or", "xor", "test": return af
        case "bsf", "bsr": return cf | of | sf | af | pf
        case "bt", "bts", "btr", "btc": return of | sf | af | pf
        case "daa", "das": return of
        case "aaa", "aas": return of | sf | zf | pf
        case "aam", "aad": return of | af | cf
        default: return 0
        }
    }

    /// The bits `mnemonic` leaves undefined for `operandBits`-bit operands shifted or rotated
    /// by `count` (before masking; nil: not a shift, or the count is unknown, then the
    /// union over all counts). Intel SDM: a masked count of 0 changes no flag; OF is
    /// defined only for a count of 1; AF is undefined after a non-zero shift; SHL/SHR leave
    /// CF undefined for counts of at least the operand width; SHLD/SHRD leave everything
    /// (and the result) undefined for counts above it.
    public static func mask(for mnemonic: String, operandBits: Int, count: Int?) -> UInt64 {
        guard let count else { return mask(for: mnemonic) }
        let masked = count & (operandBits == 64 ? 0x3F : 0x1F)
        let overflow = masked == 1 ? 0 : of
        switch mnemonic {
        case "shl", "sal", "shr": return masked == 0 ? 0 : af | overflow | (masked >= operandBits ? cf : 0)
        case "sar": return masked == 0 ? 0 : af | overflow
        case "rol", "ror", "rcl", "rcr": return masked == 0 ? 0 : overflow
        case "shld", "shrd": return masked == 0 ? 0 : masked > operandBits ? cf | of | sf | zf | af | pf : af | overflow
        default: return mask(for: mnemonic)
        }
    }
}

/// A known way this host's KVM differs from the architecture: such differences are
/// reported as host limitations, not as interpreter bugs (see Documentation/HostLimitations.md).
struct HostLimitation {
    var mnemonics: Set<String>
    /// The RFLAGS bits where the host is known to be wrong (0: any field).
    var flags: UInt64
    var reason: String

    static let pvm: [HostLimitation] = [
        HostLimitation(mnemonics: ["aam", "aad"], flags: UndefinedFlags.sf | UndefinedFlags.zf | UndefinedFlags.pf,
                       reason: "the host kernel's emulator computes AAM/AAD's SF, ZF and PF from AX instead of AL"),
    ]
}

/// `tandem diff`: the image on KVM (single-stepped) and on the interpreter in lockstep,
/// each on its own copy of guest memory, both answered by one device model.
public final class DifferentialRun {
    public struct Outcome: Sendable {
        /// 0: no divergence over the whole run; 1: a divergence; `stoppedEarly`: no
        /// divergence in what was compared, but the comparison ended before the run did;
        /// otherwise an `ExitStatus` (a host error).
        public var status: Int32
        public var report: String
        /// Instructions compared.
        public var compared: UInt64 = 0
        /// Instructions the guest ran: past `compared` when the comparison stopped early
        /// (the interpreter ran the rest alone, up to --steps).
        public var ran: UInt64 = 0
        /// Why the comparison ended (the guest exited, both halted, --steps, or why it stopped early).
        public var end: String = ""
    }

    /// `tandem diff`'s exit status when nothing diverged but the comparison stopped early
    /// (this host's KVM cannot follow the guest, or neither side can run an instruction).
    public static let stoppedEarly: Int32 = 2

    let configuration: MachineConfiguration
    let steps: UInt64
    let kvmMemory: GuestMemoryMap
    let interpMemory: GuestMemoryMap
    let devices: DeviceModel
    let kvmVM: KVMVirtualMachine
    let kvm: KVMVCPU
    let interp: InterpreterVCPU
    let disassembler = Disassembler()
    let hostIsEmulated: Bool
    private var exitStatus: UInt8? = nil
    /// Set by a signal or an output error: the status and the line the run ends with.
    private let pendingStop = PendingStop()
    /// The pages the last memory comparison looked at (KVM's dirty log is read once).
    private var comparedPages = Set<UInt64>()

    /// Builds both sides. `injectFault` ("mnemonic:flag", e.g. "add:cf") plants a bug in the
    /// interpreter (for testing the tester).
    public init(_ c: MachineConfiguration, steps: UInt64, injectFault: String? = nil) throws(MachineError) {
        configuration = c
        self.steps = steps
        guard c.cpus == 1 else { throw MachineError(.usage, "tandem diff runs one vCPU (--cpus 1)") }
        _ = try Machine.checkMemoryLimit(c.memorySize, backend: .kvm)
        let image = try Machine.readFile(c.imagePath, what: "image", ramSize: c.memorySize)
        let format: ImageFormat
        do { format = c.format == .auto ? try ImageFormat.detect(image, name: c.imagePath) : c.format } catch {
            throw MachineError(error.isFit ? .imageDoesNotFit : .badImage, error.description)
        }
        let options = try Machine.loadOptions(c, format: format)
        func makeMemory() throws(MachineError) -> (GuestMemoryMap, BootPlan) {
            let memory: GuestMemoryMap
            do { memory = try GuestMemoryMap(ramSize: c.memorySize, romSize: Loader.romSize(for: format, image: image)) } catch {
                throw MachineError(.hostError, error.description)
            }
            do { return (memory, try Loader.load(image, name: c.imagePath, as: format, into: memory, options: options)) } catch {
                throw MachineError(error.isFit ? .imageDoesNotFit : .badImage, error.description)
            }
        }
        // One CPUID for both sides; each keeps its own model MSRs (they run apart).
        let cpuid = try MachineCPU.cpuid(for: c)
        let (km, plan) = try makeMemory()
        let (im, _) = try makeMemory()
        kvmMemory = km
        interpMemory = im
        let console: Console
        let box = WeakBox<DifferentialRun>()
        do {
            console = try Console(c.serial) { [pendingStop] line in pendingStop.request(.outputError, "\(line) (status 211)") }
        } catch { throw MachineError(.usage, error.description) }
        devices = DeviceModel(console: console, input: c.input, memory: km) { value in box.value?.exitStatus = value }
        do {
            let (vm, vcpus) = try KVMDevice(path: c.kvmDevicePath).makeMachine(memory: km, cpus: 1, logDirtyPages: true, cpu: GuestCPU(cpuid: cpuid))
            kvmVM = vm
            kvm = vcpus[0]
            try kvm.writeState(plan.initialState(cpu: 0, of: 1))
            try kvm.setSingleStep(true)
        } catch {
            throw MachineError(.backendUnavailable, "tandem diff needs KVM: \(error)")
        }
        interp = InterpreterMachine(memory: im, cpuCount: 1, cpu: GuestCPU(cpuid: cpuid)).makeVCPU(index: 0)
        do { try interp.writeState(plan.initialState(cpu: 0, of: 1)) } catch { throw MachineError(.hostError, "\(error)") }
        interp.tracing = true
        if let injectFault {
            guard let (mnemonic, bit) = Self.parseFault(injectFault), interp.injectFault(mnemonic: mnemonic, flipFlags: bit) else {
                throw MachineError(.usage, "fault injection '\(injectFault)' must be MNEMONIC:FLAG, e.g. add:cf")
            }
        }
        hostIsEmulated = HostCheck.cpuHasVirtualization() == false
        box.value = self
    }

    /// A planted fault as the command line gives it, "MNEMONIC:FLAG" (e.g. "add:cf"):
    /// the mnemonic and the RFLAGS bit to flip after it.
    public static func parseFault(_ text: String) -> (String, UInt64)? {
        let parts = text.split(separator: ":")
        let flags: [String: UInt64] = ["cf": 1, "pf": 4, "af": 0x10, "zf": 0x40, "sf": 0x80, "of": 0x800]
        guard parts.count == 2, let bit = flags[String(parts[1])] else { return nil }
        return (String(parts[0]), bit)
    }

    struct Step {
        var number: UInt64
        var state: CPUState
        var bytes: [UInt8]
        var text: String
    }

    /// Runs to the end (exit device, both halted, `steps`), the first divergence, a signal
    /// (status 209) or an output error (211).
    public func run() -> Outcome {
        let outcome = pendingStop.routingSignals { compare() }
        devices.console.flush()
        // A signal or an output error after the last instruction still decides the status.
        if outcome.status == 0, let (status, line) = pendingStop.current { return Outcome(status: status, report: "tandem: \(line)") }
        return outcome
    }

    private func compare() -> Outcome {
        let start = DispatchTime.now()
        var history: [Step] = []
        var hostLimited: [String: Int] = [:]
        var compared: UInt64 = 0
        for number in 0..<steps {
            if let (status, line) = pendingStop.current {
                return Outcome(status: status, report: "tandem: \(line) after \(compared) instructions compared")
            }
            guard let before = try? interp.readState() else { return failure("cannot read the interpreter's state") }
            let (bytes, text) = instruction(at: before)
            let mnemonic = String(text.prefix { $0 != " " })
            history.append(Step(number: number, state: before, bytes: bytes, text: text))
            if history.count > 21 { history.removeFirst() }

            // KVM first: it talks to the devices; port and MMIO reads are recorded.
            var reads: [UInt64] = []
            var writes: [(UInt16, Int, UInt32)] = []
            var kvmEnd: String? = nil
            var kvmCannot = false
            kvmLoop: while true {
                let exit: VCPUExit
                do { exit = try kvm.run() } catch { return failure("KVM: \(error)") }
                switch exit {
                case .portIn, .mmioRead, .mmioWrite:
                    answerFromDevices(exit, reads: &reads, writes: &writes)
                case .portOut:
                    answerFromDevices(exit, reads: &reads, writes: &writes)
                    // The guest has exited: KVM must not run on (PVM would run the next
                    // instruction before trapping).
                    if exitStatus != nil { break kvmLoop }
                case .debugStep: break kvmLoop
                case .halt: kvmEnd = "hlt"; break kvmLoop
                case .shutdown: kvmEnd = "triple fault"; break kvmLoop
                case .unsupportedInstruction: kvmCannot = true; break kvmLoop
                case .interrupted: continue
                case .failedEntry(let r): return failure("KVM refused to enter the guest (reason \(hex(r)))")
                case .internalError(let s): return failure("KVM: \(s)")
                case .instructionLimit: break kvmLoop
                }
            }

            // The interpreter replays the same device answers. PVM's KVM completes a port
            // I/O instruction on re-entry and runs the next one before its single-step trap:
            // the interpreter then takes a second step to catch up.
            var replay = reads[...]
            var outIndex = 0
            var interpEnd: String? = nil
            let kvmAfter = try? kvm.readState()
            // Likewise it runs a whole REP string instruction in one step, where the
            // interpreter (like hardware) takes one iteration per step.
            let isString = mnemonic.hasPrefix("rep") && text.split(separator: " ").count > 1
            // And after delivering an exception it runs the handler's first instruction
            // before trapping: so does the interpreter then.
            var catchUp = 0
            var accesses: [MemoryAccess] = []
            var events: [InterruptEvent] = []
            while true {
                if catchUp > 0 {
                    let drained = interp.drainTrace()
                    accesses += drained.accesses
                    events += drained.events
                    guard !kvmCannot, interpEnd == nil, let kvmAfter, let now = try? interp.readState(),
                          now.rip != kvmAfter.rip || (isString && now[.rcx] != kvmAfter[.rcx]) else { break }
                    let tookIO = !reads.isEmpty || !writes.isEmpty
                    let delivered = !drained.events.isEmpty || mnemonic.hasPrefix("iret")
                    let midString = isString && now.rip == before.rip
                    guard ((tookIO || delivered) && catchUp == 1) || (midString && catchUp < 1 << 20) else { break }
                }
                catchUp += 1
                interpLoop: while true {
                    let exit: VCPUExit
                    do { exit = try interp.run() } catch { return failure("interpreter: \(error)") }
                    switch exit {
                    case let .portIn(_, size, count, data):
                        for k in 0..<count {
                            let v = replay.popFirst() ?? 0xFFFF_FFFF
                            withUnsafeBytes(of: v) { (data + k * size).copyMemory(from: $0.baseAddress!, byteCount: size) }
                        }
                    case let .portOut(port, size, count, data):
                        for k in 0..<count {
                            var v: UInt32 = 0
                            withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: data + k * size, byteCount: size) }
                            if kvmCannot { devices.ports.write(port, size: size, value: v) }
                            else if outIndex >= writes.count || writes[outIndex] != (port, size, v) {
                                return divergence(number, history, "port output differs: interpreter wrote \(hex(v)) to port \(hex(port)) (\(size) bytes)\(outIndex < writes.count ? ", KVM wrote \(hex(writes[outIndex].2)) to port \(hex(writes[outIndex].0))" : ", KVM wrote nothing")", compared: compared, start: start)
                            }
                            outIndex += 1
                        }
                    case let .mmioRead(_, size, data):
                        let v = replay.popFirst() ?? .max
                        withUnsafeBytes(of: v) { data.copyMemory(from: $0.baseAddress!, byteCount: min(size, 8)) }
                    case .mmioWrite: continue
                    case .debugStep: break interpLoop
                    case .halt: interpEnd = "hlt"; break interpLoop
                    case .shutdown: interpEnd = "triple fault"; break interpLoop
                    case .unsupportedInstruction(let s):
                        if kvmCannot {
                            return stopEarly(compared: compared, start: start, hostLimited,
                                             "at step \(number), \(text): neither KVM nor the interpreter can execute it (\(s))", interpreterCanGoOn: false)
                        }
                        return divergence(number, history, "the interpreter cannot execute this instruction (\(s))", compared: compared, start: start)
                    case .interrupted, .instructionLimit: continue
                    case .failedEntry, .internalError: return failure("interpreter stopped unexpectedly")
                    }
                }
            }
            // ...and, having finished the iterations, needs one more (empty) step to move RIP on.
            if isString, !kvmCannot, let k = try? kvm.readState(), let i = try? interp.readState(),
               k.rip == before.rip, i.rip != before.rip, k[.rcx] == i[.rcx] {
                stepKVMOnce()
            }
            if exitStatus != nil { compared += 1; break }
            let last = interp.drainTrace()
            accesses += last.accesses
            events += last.events
            compared += 1

            if kvmCannot {
                // This host's KVM cannot run it: the interpreter's result goes to both sides.
                hostLimited["KVM cannot emulate \(mnemonic)", default: 0] += 1
                if let s = try? interp.readState() { try? kvm.writeState(s) }
                copyWrites(accesses)
                _ = try? dirtyKVMPages()
            } else {
                // Compare.
                guard let k = try? kvm.readState(), let i = try? interp.readState() else { return failure("cannot read state") }
                var fields = Self.differences(k, i, undefinedFlags: UndefinedFlags.mask(for: mnemonic))
                if !events.isEmpty { fixSingleStepTrapFlag(before: before, accesses) }
                let memory = compareMemory(accesses)
                if hostIsEmulated, i.rflags & 1 << 17 != 0, k.rflags & 1 << 17 == 0 {
                    return stopEarly(compared: compared - 1, start: start, hostLimited,
                                     "at step \(number), \(text): host limitation: this host's KVM does not run virtual-8086 mode")
                }
                if hostIsEmulated, i.cr0 & CR0.pg != 0, k.cr0 & CR0.pg == 0, i.cr4 & CR4.pae == 0, i.efer & EFER.lme == 0 {
                    // PVM's KVM cannot enable legacy (non-PAE) paging at CPL 0: nothing after this compares.
                    return stopEarly(compared: compared - 1, start: start, hostLimited,
                                     "at step \(number), \(text): host limitation: this host's KVM cannot enable legacy 32-bit paging at CPL 0")
                }
                if kvmEnd != interpEnd {
                    fields.append(("stop", kvmEnd ?? "running", interpEnd ?? "running"))
                }
                if !fields.isEmpty || !memory.isEmpty {
                    if fields.isEmpty && memory.isEmpty {
                        // nothing
                    } else if let limitation = classify(mnemonic, fields, memory, before: before) {
                        // The interpreter's result is the architectural one: KVM takes it over.
                        hostLimited[limitation, default: 0] += 1
                        try? kvm.writeState(i)
                        copyDifferingPages(accesses)
                    } else {
                        return divergence(number, history, nil, kvm: k, interp: i, fields: fields, memory: memory, compared: compared, start: start)
                    }
                }
                // Undefined flags may legitimately differ: carry KVM's forward so they do
                // not show up as a divergence of the next instruction.
                let undefined = UndefinedFlags.mask(for: mnemonic) | 1 << 16
                if (k.rflags ^ i.rflags) & undefined != 0 {
                    var synced = i
                    synced.rflags = i.rflags & ~undefined | k.rflags & undefined
                    try? interp.writeState(synced)
                }
            }
            if exitStatus != nil || (kvmEnd != nil && interpEnd != nil) { break }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let end = exitStatus.map { "the guest exited with status \($0)" } ?? (compared >= steps ? "--steps \(steps) reached" : "both sides halted")
        var lines = ["tandem diff: no divergence: all \(compared) instructions compared in \(String(format3: seconds)) s; \(end)"]
        for (reason, count) in hostLimited.sorted(by: { $0.key < $1.key }) {
            lines.append("  host limitation (\(count)x): \(reason)")
        }
        return Outcome(status: 0, report: lines.joined(separator: "\n"), compared: compared, ran: compared, end: end)
    }

    /// The comparison cannot go on (`reason`) after `compared` matching instructions. The
    /// interpreter runs the rest alone (up to --steps), so the report can say how much of
    /// the run was not compared.
    func stopEarly(compared: UInt64, start: DispatchTime, _ hostLimited: [String: Int], _ reason: String, interpreterCanGoOn: Bool = true) -> Outcome {
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        // The interpreter has run the instruction the comparison stopped at.
        let (ran, end) = interpreterCanGoOn ? runInterpreterAlone(from: compared + 1) : (compared + 1, "it stopped there")
        var lines = ["tandem diff: stopped early: \(compared) of \(ran) instructions compared in \(String(format3: seconds)) s, no divergence among them",
                     "  the comparison stopped \(reason)",
                     "  the interpreter alone: \(end)"]
        for (reason, count) in hostLimited.sorted(by: { $0.key < $1.key }) {
            lines.append("  host limitation (\(count)x): \(reason)")
        }
        return Outcome(status: Self.stoppedEarly, report: lines.joined(separator: "\n"), compared: compared, ran: ran, end: reason)
    }

    /// Runs the interpreter on its own from step `from` to the end of the run (the exit
    /// device, a halt, a triple fault, an instruction it cannot execute, or --steps):
    /// how many instructions the whole run has, and how it ended.
    func runInterpreterAlone(from: UInt64) -> (UInt64, String) {
        interp.tracing = false
        interp.singleStep = true
        var number = from
        while number < steps {
            if exitStatus != nil { return (number, "the guest exited with status \(exitStatus!) after \(number) instructions") }
            let exit: VCPUExit
            do { exit = try interp.run() } catch { return (number, "interpreter error \(error) after \(number) instructions") }
            switch exit {
            case .portIn, .portOut, .mmioRead, .mmioWrite:
                // Nothing to replay to: what was read and written is not kept.
                var reads: [UInt64] = [], writes: [(UInt16, Int, UInt32)] = []
                answerFromDevices(exit, reads: &reads, writes: &writes)
            case .debugStep: number += 1
            case .halt: return (number + 1, "halted after \(number + 1) instructions")
            case .shutdown: return (number + 1, "triple fault after \(number + 1) instructions")
            case .unsupportedInstruction(let s): return (number, "cannot execute instruction \(number) (\(s))")
            case .interrupted, .instructionLimit: continue
            case .failedEntry, .internalError: return (number, "stopped unexpectedly after \(number) instructions")
            }
        }
        return (number, "--steps \(steps) reached")
    }

    /// Answers a port or MMIO exit from the device model, appending the values read (for
    /// replay to the interpreter) and the port writes (to compare with the interpreter's).
    func answerFromDevices(_ exit: VCPUExit, reads: inout [UInt64], writes: inout [(UInt16, Int, UInt32)]) {
        switch exit {
        case let .portIn(port, size, count, data):
            for k in 0..<count {
                let v = devices.ports.read(port, size: size)
                reads.append(UInt64(v))
                withUnsafeBytes(of: v) { (data + k * size).copyMemory(from: $0.baseAddress!, byteCount: size) }
            }
        case let .portOut(port, size, count, data):
            for k in 0..<count {
                var v: UInt32 = 0
                withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: data + k * size, byteCount: size) }
                devices.ports.write(port, size: size, value: v)
                writes.append((port, size, v))
            }
        case let .mmioRead(address, size, data):
            let v = devices.mmio.read(address, size: size)
            // The interpreter reads unmapped memory without an exit: only device reads are
            // replayed to it.
            if PhysicalLayout.deviceWindow.contains(address) { reads.append(v) }
            withUnsafeBytes(of: v) { data.copyMemory(from: $0.baseAddress!, byteCount: min(size, 8)) }
        case let .mmioWrite(address, size, data):
            var v: UInt64 = 0
            withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: data, byteCount: min(size, 8)) }
            devices.mmio.write(address, size: size, value: v)
        default: break
        }
    }

    /// KVM single-steps by setting RFLAGS.TF in the guest, and on this host the FLAGS image
    /// an exception pushes keeps it. The interpreter's image (TF clear) is the architectural
    /// one: KVM's memory gets it too, so the guest's IRET does not start tracing itself.
    func fixSingleStepTrapFlag(before: CPUState, _ accesses: [MemoryAccess]) {
        for a in accesses where a.write && a.size >= 2 && a.value == before.rflags & (a.size == 8 ? .max : (1 << UInt64(8 * a.size)) - 1) {
            let k: UInt8 = kvmMemory.read(a.physical + 1), i: UInt8 = interpMemory.read(a.physical + 1)
            if k ^ i == 0x01 { kvmMemory.write(a.physical + 1, i) }
        }
    }

    /// One more single step on KVM, for an instruction that does no I/O.
    func stepKVMOnce() {
        for _ in 0..<4 {
            guard let exit = try? kvm.run() else { return }
            if case .debugStep = exit { return }
            if case .interrupted = exit { continue }
            return
        }
    }

    func classify(_ mnemonic: String, _ fields: [(String, String, String)], _ memory: [String], before: CPUState) -> String? {
        guard hostIsEmulated else { return nil }
        if mnemonic == "int" && before.cs.selector & 3 == 3 && !before.cs.long {
            return "INT n at CPL 3 raises #UD under this host's KVM"
        }
        guard memory.isEmpty else { return nil }
        for limitation in HostLimitation.pvm where limitation.mnemonics.contains(mnemonic) {
            if fields.allSatisfy({ $0.0 == "rflags" }) { return limitation.reason }
        }
        return nil
    }

    /// Copies what the interpreter wrote into KVM's memory (when KVM could not run the instruction).
    func copyWrites(_ accesses: [MemoryAccess]) {
        for a in accesses where a.write {
            let bytes = interpMemory.bytes(at: a.physical, count: a.size)
            bytes.withUnsafeBytes { kvmMemory.write(a.physical, from: $0) }
        }
    }

    /// Makes KVM's memory equal the interpreter's on every page either side wrote.
    func copyDifferingPages(_ accesses: [MemoryAccess]) {
        let pages = comparedPages.union(accesses.filter(\.write).map { $0.physical & ~0xFFF })
        for page in pages where kvmMemory.region(containing: page)?.kind == .ram {
            let bytes = interpMemory.bytes(at: page, count: 4096)
            bytes.withUnsafeBytes { kvmMemory.write(page, from: $0) }
        }
    }

    /// The physical pages KVM wrote since the last call.
    func dirtyKVMPages() throws -> [UInt64] {
        var pages: [UInt64] = []
        for (slot, region) in kvmMemory.regions.enumerated() where region.kind == .ram {
            for p in try kvmVM.dirtyPages(slot: UInt32(slot), pages: Int(region.size >> 12)) {
                pages.append(region.start + UInt64(p) << 12)
            }
        }
        return pages
    }

    /// Bytes that differ on the pages either side wrote in this step.
    func compareMemory(_ accesses: [MemoryAccess]) -> [String] {
        var pages = Set(accesses.filter(\.write).flatMap { [$0.physical & ~0xFFF, ($0.physical + UInt64($0.size) - 1) & ~0xFFF] })
        if let dirty = try? dirtyKVMPages() { pages.formUnion(dirty) }
        comparedPages = pages
        var out: [String] = []
        // ROM is writable under KVM (a PVM workaround, see Documentation/KVM.md) and not in
        // the interpreter; writes to it (descriptor accessed bits) are not divergences.
        for page in pages.sorted() where kvmMemory.region(containing: page)?.kind != .rom {
            let a = kvmMemory.bytes(at: page, count: 4096)
            let b = interpMemory.bytes(at: page, count: 4096)
            guard a != b else { continue }
            for i in 0..<4096 where a[i] != b[i] {
                out.append("\(hex(page + UInt64(i))): kvm \(byteHex(a[i])) interp \(byteHex(b[i]))")
                if out.count >= 32 { return out }
            }
        }
        return out
    }

    static func differences(_ k: CPUState, _ i: CPUState, undefinedFlags: UInt64) -> [(String, String, String)] {
        // RF is a debug-exception artefact of single-stepping on KVM; the accessed bit of a
        // segment's type is KVM's to report loosely, and so are the hidden parts of unusable
        // segments (and of a null LDTR).
        let flagMask = ~(undefinedFlags | 1 << 16)
        var loose = Set<String>()
        for (name, path) in CPUState.segmentRegisters {
            let a = k[keyPath: path], b = i[keyPath: path]
            if (a.unusable && b.unusable) || (name == "ldtr" && a.selector == 0) { loose.formUnion([name + ".limit", name + ".attributes"]) }
        }
        var out: [(String, String, String)] = []
        for (a, b) in zip(k.namedFields, i.namedFields) where !loose.contains(a.name) {
            var (x, y) = (a.value, b.value)
            if a.name == "rflags" { x &= flagMask; y &= flagMask }
            if a.name.hasSuffix(".attributes") { x &= ~1; y &= ~1 }
            if x != y { out.append((a.name, hex(x), hex(y))) }
        }
        return out
    }

    func instruction(at s: CPUState) -> ([UInt8], String) {
        var linear = s.cs.base &+ s.rip
        if s.mode.bits < 64 { linear &= 0xFFFF_FFFF }
        let physical = s.cr0 & CR0.pg != 0 ? interp.translate(linear: linear) : linear
        let raw = physical.map { interpMemory.bytes(at: $0, count: 15) } ?? []
        let d = disassembler.disassemble(raw, address: s.rip, bits: s.mode.bits)
        return (Array(raw.prefix(d?.length ?? 0)), d?.text ?? "(undecodable)")
    }

    func failure(_ message: String) -> Outcome {
        Outcome(status: ExitStatus.hostError.rawValue, report: "tandem diff: \(message)")
    }

    func describe(_ s: Step) -> String {
        let cs = String(s.state.cs.selector, radix: 16)
        return "#\(s.number) \(String(repeating: "0", count: max(0, 4 - cs.count)) + cs):\(hex(s.state.rip)) (\(s.state.mode.rawValue))  \(padRight(s.bytes.map(byteHex).joined(separator: " "), 24))\(s.text)"
    }

    func divergence(_ number: UInt64, _ history: [Step], _ problem: String?, kvm k: CPUState? = nil, interp i: CPUState? = nil,
                    fields: [(String, String, String)] = [], memory: [String] = [], compared: UInt64, start: DispatchTime) -> Outcome {
        var lines = ["tandem diff: divergence at step \(number) (vcpu0), after \(compared - 1) matching instructions"]
        if let current = history.last { lines.append("  " + describe(current)) }
        if let problem { lines.append("  " + problem) }
        if let k, let i {
            lines.append("  " + padRight("field", 18) + padRight("kvm", 22) + padRight("interp", 22))
            let marked = Set(fields.map(\.0))
            for (name, a, b) in Self.allFields(k, i) {
                lines.append("  " + padRight(name, 18) + padRight(a, 22) + padRight(b, 22) + (marked.contains(name) ? "<<<" : ""))
            }
            for (name, a, b) in fields where name == "stop" { lines.append("  " + padRight(name, 18) + padRight(a, 22) + padRight(b, 22) + "<<<") }
        }
        if !memory.isEmpty {
            lines.append("  memory that differs:")
            lines += memory.map { "    " + $0 }
        }
        lines.append("  previous instructions:")
        lines += history.dropLast().map { "    " + describe($0) }
        return Outcome(status: 1, report: lines.joined(separator: "\n"), compared: compared - 1, ran: compared, end: "divergence at step \(number)")
    }

    static func allFields(_ k: CPUState, _ i: CPUState) -> [(String, String, String)] {
        zip(k.namedFields, i.namedFields).map { ($0.name, hex($0.value), hex($1.value)) }
    }
}

extension ImageError {
    var isFit: Bool { if case .doesNotFit = self { true } else { false } }
}

extension HostCheck {
    /// Whether /proc/cpuinfo advertises VMX or SVM.
    static func cpuHasVirtualization() -> Bool {
        guard let text = try? readText("/proc/cpuinfo") else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("flags") && ($0.contains(" vmx") || $0.contains(" svm")) }
    }
}
