#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import GuestMemory
import RunLoop
import X86

/// Runs SingleStepTests 80286 real-mode tests (the layout of `../shared/conformance/sst286`)
/// on a backend, with the legitimate 286-versus-modern differences skipped or masked as
/// the suite's README lists them.
public final class SST286Runner {
    public struct Failure: Sendable {
        public var form: String
        public var name: String
        public var details: [String]
    }

    public struct Summary: Sendable {
        public var passed = 0
        public var failed = 0
        public var skipped = 0
        /// Skip counts by reason.
        public var skipReasons: [String: Int] = [:]
        public var failures: [Failure] = []
        /// Failure counts by instruction form (file name without .jsonl.gz).
        public var failuresByForm: [String: Int] = [:]

        public var line: String { "\(passed) passed, \(failed) failed, \(skipped) skipped" }
    }

    let directory: String
    let memory: GuestMemoryMap
    let vcpu: any VCPUBackend
    let noteWrite: (UInt64, Int) -> Void
    /// Called before each test (the interpreter sets its instruction budget here).
    public var beforeEach: () -> Void = {}
    /// Whether the last exception came from an access wrapping past offset 0xFFFF (the
    /// interpreter knows; without it, every #SS/#GP at a wrap-prone test is assumed to be one).
    public var lastFaultWasWraparound: (() -> Bool)? = nil
    let metadata: [String: Any]
    /// Where exception vectors no test defines land: a `hlt` per vector at 0xE0000 + vector.
    static let sentinelSegment: UInt16 = 0xE000

    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    /// `memory` must hold at least 17 MiB of RAM; `noteWrite` tells the backend about
    /// memory written behind its back (the interpreter's decode caches).
    public init(directory: String, memory: GuestMemoryMap, vcpu: any VCPUBackend, noteWrite: @escaping (UInt64, Int) -> Void) throws {
        self.directory = directory
        self.memory = memory
        self.vcpu = vcpu
        self.noteWrite = noteWrite
        let path = directory + "/metadata.json"
        guard let data = FileManager.default.contents(atPath: path),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let opcodes = json["opcodes"] as? [String: Any] else {
            throw SetupError(description: "\(path) is missing or not SingleStepTests metadata")
        }
        metadata = opcodes
    }

    /// The test files in the directory, sorted, optionally only those whose form starts with `filter`.
    public func forms(matching filter: String? = nil) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".jsonl.gz") }
            .map { String($0.dropLast(".jsonl.gz".count)) }
            .filter { filter == nil || $0.uppercased().hasPrefix(filter!.uppercased()) }
            .sorted()
    }

    /// Runs every test of every form; `progress` is called after each form.
    public func run(forms: [String], maxFailuresKept: Int = 200, progress: (String, Summary) -> Void = { _, _ in }) -> Summary {
        var summary = Summary()
        for form in forms {
            guard var lines = GzipLines(path: "\(directory)/\(form).jsonl.gz") else {
                summary.failed += 1
                summary.failures.append(Failure(form: form, name: "(file)", details: ["cannot read \(form).jsonl.gz"]))
                continue
            }
            defer { lines.close() }
            let info = formInfo(form)
            while let line = lines.next() {
                guard !line.isEmpty else { continue }
                guard let test = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                    summary.failed += 1
                    continue
                }
                let outcome = runOne(test, form: form, info: info)
                switch outcome {
                case .pass: summary.passed += 1
                case .skip(let reason):
                    summary.skipped += 1
                    summary.skipReasons[reason, default: 0] += 1
                case .fail(let details):
                    summary.failed += 1
                    summary.failuresByForm[form, default: 0] += 1
                    if summary.failures.count < maxFailuresKept {
                        summary.failures.append(Failure(form: form, name: test["name"] as? String ?? "?", details: details))
                    }
                }
            }
            progress(form, summary)
        }
        return summary
    }

    struct FormInfo {
        var status: String
        var flagsMask: UInt64
    }

    func formInfo(_ form: String) -> FormInfo {
        let parts = form.split(separator: ".")
        var entry = metadata[String(parts[0])] as? [String: Any] ?? [:]
        if parts.count > 1, let regs = entry["reg"] as? [String: Any], let sub = regs[String(parts[1])] as? [String: Any] {
            entry = sub
        }
        let mask = (entry["flags-mask"] as? NSNumber)?.uint64Value ?? 0xFFFF
        return FormInfo(status: entry["status"] as? String ?? "normal", flagsMask: mask)
    }

    enum Outcome {
        case pass
        case skip(String)
        case fail([String])
    }

    static let registerNames = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]

    func runOne(_ test: [String: Any], form: String, info: FormInfo) -> Outcome {
        guard let bytes = (test["bytes"] as? [NSNumber])?.map({ UInt8(truncating: $0) }),
              let initial = test["initial"] as? [String: Any], let final = test["final"] as? [String: Any],
              let initialRegs = initial["regs"] as? [String: NSNumber] else { return .fail(["malformed test"]) }
        let opcodeByte = UInt8(form.prefix(2), radix: 16) ?? 0
        // Forms a modern CPU cannot match at all.
        if info.status == "fpu" || opcodeByte == 0x9B { return .skip("x87 and wait: the 286 tested had no FPU") }
        let prefixes: Set<UInt8> = [0x26, 0x2E, 0x36, 0x3E, 0xF0, 0xF2, 0xF3]
        let opIndex = bytes.firstIndex { !prefixes.contains($0) } ?? 0
        if (opcodeByte == 0x8C || opcodeByte == 0x8E), opIndex + 1 < bytes.count {
            let reg = (bytes[opIndex + 1] >> 3) & 7
            if reg >= 4 || (opcodeByte == 0x8E && reg == 1) { return .skip("8C/8E with FS, GS, 6, 7 or CS: different registers or #UD on a modern CPU") }
        }
        // Set up.
        let ram = (initial["ram"] as? [[NSNumber]]) ?? []
        var state = CPUState()
        for (i, name) in Self.registerNames.enumerated() { state.gpr[i] = initialRegs[name]?.uint64Value ?? 0 }
        state.rip = initialRegs["ip"]?.uint64Value ?? 0
        state.rflags = (initialRegs["flags"]?.uint64Value ?? 2) & 0x0FFF | 2
        state.cs = .realMode(UInt16(initialRegs["cs"]?.uint64Value ?? 0), code: true)
        state.ss = .realMode(UInt16(initialRegs["ss"]?.uint64Value ?? 0))
        state.ds = .realMode(UInt16(initialRegs["ds"]?.uint64Value ?? 0))
        state.es = .realMode(UInt16(initialRegs["es"]?.uint64Value ?? 0))
        state.fs = .realMode(0)
        state.gs = .realMode(0)
        state.cr0 = CR0.et
        state.idtr = DescriptorTable(base: 0, limit: 0x3FF)
        var written: [(UInt64, UInt8)] = []
        var definedIVT = Set<Int>()
        for pair in ram where pair.count == 2 {
            let a = pair[0].uint64Value
            written.append((a, UInt8(truncating: pair[1])))
            if a < 0x400 { definedIVT.insert(Int(a / 4)) }
        }
        // Sentinel handlers for the vectors the test does not define.
        let sentinelBase = UInt64(Self.sentinelSegment) << 4
        let collides = written.contains { $0.0 >= sentinelBase && $0.0 < sentinelBase + 0x100 }
        var sentinelWrites: [(UInt64, UInt8)] = []
        if !collides {
            for v in 0..<256 where !definedIVT.contains(v) {
                let entry = UInt32(Self.sentinelSegment) << 16 | UInt32(v)
                for k in 0..<4 { sentinelWrites.append((UInt64(v * 4 + k), UInt8(truncatingIfNeeded: entry >> (8 * UInt32(k))))) }
                sentinelWrites.append((sentinelBase + UInt64(v), 0xF4))
            }
        }
        for (a, b) in sentinelWrites + written {
            memory.write(a, UInt8(b))
            noteWrite(a, 1)
        }
        defer {
            // Leave memory as found: every byte this test set, and every byte it changed.
            let finalRAM = (final["ram"] as? [[NSNumber]]) ?? []
            for (a, _) in sentinelWrites + written { memory.write(a, UInt8(0)); noteWrite(a, 1) }
            for pair in finalRAM where pair.count == 2 { memory.write(pair[0].uint64Value, UInt8(0)); noteWrite(pair[0].uint64Value, 1) }
        }
        do { try vcpu.writeState(state) } catch { return .fail(["cannot set state: \(error)"]) }
        beforeEach()

        // Run to the hlt.
        // A watchdog for backends that cannot count instructions (KVM): a kick that lands
        // after this test ended only costs the next test one spurious `.interrupted`.
        let deadline = DispatchTime.now() + 2
        let watchdog = DispatchWorkItem { [vcpu] in vcpu.kick() }
        DispatchQueue.global().asyncAfter(deadline: deadline, execute: watchdog)
        defer { watchdog.cancel() }
        var halted = false
        switch vcpu.runWithoutDevices(maxExits: 100_000, retryInterrupted: { DispatchTime.now() < deadline }) {
        case .halted: halted = true
        case .stopped, .exhausted: break
        case .tripleFault: return .fail(["triple fault"])
        case .unsupported(let s): return .fail(["unsupported: \(s)"])
        case .backendError(let s): return .fail([s])
        }
        guard let result = try? vcpu.readState() else { return .fail(["cannot read state"]) }
        let exception = test["exception"] as? [String: Any]
        let tookSentinel = result.cs.selector == Self.sentinelSegment
        let sentinelVector = tookSentinel ? Int(result.rip) - 1 : nil

        // Compare.
        var details: [String] = []
        if !halted { details.append("did not reach the hlt (stopped at \(hex(result.cs.selector)):\(hex(result.rip)))") }
        let finalRegs = final["regs"] as? [String: NSNumber] ?? [:]
        func expected(_ name: String) -> UInt64 { (finalRegs[name] ?? initialRegs[name])?.uint64Value ?? 0 }
        for (i, name) in Self.registerNames.enumerated() where result.gpr[i] & 0xFFFF != expected(name) {
            details.append("\(name): expected \(hex(expected(name))), got \(hex(result.gpr[i] & 0xFFFF))")
        }
        for (name, value) in [("cs", result.cs.selector), ("ss", result.ss.selector), ("ds", result.ds.selector), ("es", result.es.selector)] where UInt64(value) != expected(name) {
            details.append("\(name): expected \(hex(expected(name))), got \(hex(value))")
        }
        if result.rip & 0xFFFF != expected("ip") { details.append("ip: expected \(hex(expected("ip"))), got \(hex(result.rip & 0xFFFF))") }
        var flagsMask = info.flagsMask & 0x0FFF
        if opcodeByte == 0xD4 || opcodeByte == 0xD5 { flagsMask &= ~UInt64(0xC4) }   // SF, ZF, PF from AL on modern CPUs
        if (result.rflags ^ expected("flags")) & flagsMask != 0 {
            details.append("flags: expected \(hex(expected("flags") & flagsMask)), got \(hex(result.rflags & flagsMask)) (mask \(hex(flagsMask)))")
        }
        // The FLAGS an exception pushes sit at SS:(SP - 2). The suite's flag_address rounds
        // that down to an even address, which is off by one when SP is odd.
        let flagAddress: UInt64? = exception == nil ? nil
            : (UInt64(initialRegs["ss"]?.uint64Value ?? 0) << 4) + (((initialRegs["sp"]?.uint64Value ?? 0) &- 2) & 0xFFFF)
        for pair in (final["ram"] as? [[NSNumber]]) ?? [] where pair.count == 2 {
            let a = pair[0].uint64Value
            var mask: UInt8 = 0xFF
            if let f = flagAddress {
                if a == f { mask = UInt8(truncatingIfNeeded: info.flagsMask) }
                if a == f + 1 { mask = UInt8(truncatingIfNeeded: info.flagsMask >> 8) & 0x0F }
            }
            let got: UInt8 = memory.read(a)
            let want = UInt8(truncating: pair[1])
            if (got ^ want) & mask != 0 { details.append("ram[\(hex(a))]: expected \(hex(want)), got \(hex(got))") }
        }
        if details.isEmpty { return .pass }

        // Mismatches that are the 286 and not us.
        let expectedVector = (exception?["number"] as? NSNumber)?.intValue
        if (expectedVector == 12 || expectedVector == 13), lastFaultWasWraparound?() ?? details.allSatisfy({ $0.hasPrefix("si:") || $0.hasPrefix("di:") }) {
            // The 286 updated SI/DI before faulting on the wrapped word; a modern CPU faults first.
            return .skip("segment wraparound at offset 0xFFFF: #SS/#GP on a modern CPU")
        }
        if let v = sentinelVector {
            if v == 6 && bytes.prefix(opIndex).contains(0xF0) { return .skip("LOCK on an instruction that cannot be locked: #UD on a modern CPU") }
            let wrapPossible = expectedVector == nil || expectedVector == 12 || expectedVector == 13
            if (v == 12 || v == 13) && wrapPossible && (lastFaultWasWraparound?() ?? true) {
                return .skip("segment wraparound at offset 0xFFFF: #SS/#GP on a modern CPU")
            }
        }
        // The test's bytes end with the hlt that follows the instruction.
        if (expectedVector == 6 || expectedVector == 13) && bytes.count - 1 > 10 {
            return .skip("instruction longer than 10 bytes: an exception on the 286 only")
        }
        if let v = sentinelVector { details.append("took exception \(v) (sentinel handler)") }
        return .fail(details)
    }

    func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
}
