import ArgumentParser
import Conformance
import GuestMemory
import Interpreter
import KVM
import Machine
import X86

struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Run hardware-captured instruction test suites.",
        subcommands: [SST286.self]
    )
}

struct SST286: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sst286",
        abstract: "Run SingleStepTests 80286 real-mode tests (a folder laid out like shared/conformance/sst286).",
        discussion: "Prints failures grouped by instruction form and ends with 'N passed, M failed, K skipped'. Exit status 0 when nothing failed, 1 otherwise."
    )

    @Option(help: "Backend: interp or kvm (hybrid and auto: interp).")
    var backend: BackendKind = .interp

    @Option(help: "Only forms whose name starts with this (e.g. 80, D4, F6.7).")
    var filter: String?

    @Option(help: "Failing tests shown per form.")
    var show: Int = 3

    @Option(help: "KVM device path.")
    var kvmDevice: String = KVMDevice.defaultPath

    @Argument(help: "The test folder.")
    var directory: String

    func validate() throws {
        if show < 0 { throw ValidationError("--show must be 0 or more, not \(show)") }
    }

    func run() throws {
        let memory: GuestMemoryMap
        do { memory = try GuestMemoryMap(ramSize: 32 << 20) } catch {
            throw Failure(status: ExitStatus.hostError.rawValue, message: "\(error)")
        }
        let vcpu: any VCPUBackend
        var noteWrite: (UInt64, Int) -> Void = { _, _ in }
        var beforeEach: () -> Void = {}
        var wraparound: (() -> Bool)? = nil
        var keepAlive: AnyObject? = nil
        switch backend {
        case .interp, .auto, .hybrid:   // (real-mode tests never reach 64-bit user mode: hybrid is the interpreter)
            let machine = InterpreterMachine(memory: memory, cpuCount: 1)
            let v = machine.makeVCPU(index: 0)
            noteWrite = { v.memoryWritten(at: $0, length: $1) }
            beforeEach = { v.instructionLimit = v.retired + 1_000 }
            wraparound = {
                guard let l = v.lastLimitViolation else { return false }
                return l.offset <= 0xFFFF && l.offset + UInt64(l.size) - 1 > 0xFFFF
            }
            vcpu = v
        case .kvm:
            do {
                let (vm, vcpus) = try KVMDevice(path: kvmDevice).makeMachine(memory: memory, cpus: 1,
                    cpu: GuestCPU(cpuid: GuestCPUID(model: .default, available: MachineCPU.availableFeatures(kvmDevicePath: kvmDevice, x2APIC: true), cpuCount: 1)))
                keepAlive = vm
                vcpu = vcpus[0]
            } catch {
                throw Failure(status: ExitStatus.backendUnavailable.rawValue, message: "KVM is unavailable: \(error)")
            }
        }
        let runner: SST286Runner
        do { runner = try SST286Runner(directory: directory, memory: memory, vcpu: vcpu, noteWrite: noteWrite) } catch {
            throw Failure(status: ExitStatus.usage.rawValue, message: "\(error)")
        }
        runner.beforeEach = beforeEach
        runner.lastFaultWasWraparound = wraparound
        let forms = runner.forms(matching: filter)
        guard !forms.isEmpty else {
            throw Failure(status: ExitStatus.usage.rawValue, message: "no *.jsonl.gz test files\(filter.map { " matching \($0)" } ?? "") in \(directory)")
        }
        let summary = runner.run(forms: forms, maxFailuresKept: 100_000)
        _ = keepAlive
        for form in summary.failuresByForm.keys.sorted() {
            let failures = summary.failures.filter { $0.form == form }
            print("\(form): \(summary.failuresByForm[form]!) failed")
            for f in failures.prefix(show) {
                print("  \(f.name): \(f.details.joined(separator: "; "))")
            }
        }
        for (reason, count) in summary.skipReasons.sorted(by: { $0.key < $1.key }) {
            print("skipped \(count): \(reason)")
        }
        print(summary.line)
        if summary.failed > 0 { throw ExitCode(1) }
    }
}
