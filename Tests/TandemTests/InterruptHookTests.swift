// The interrupt-controller hook, used the same way by both backends.
import GuestMemory
import Interpreter
import KVM
import Synchronization
import Testing
import X86

/// A stand-in interrupt controller: one pending vector until acknowledged.
final class OneShotInterrupt: InterruptController, @unchecked Sendable {
    let pending = Mutex<UInt8?>(nil)
    func raise(_ vector: UInt8) { pending.withLock { $0 = vector } }
    func hasPendingInterrupt(vcpu: Int) -> Bool { pending.withLock { $0 != nil } }
    func acknowledgeInterrupt(vcpu: Int) -> UInt8? { pending.withLock { v in defer { v = nil }; return v } }
    let nmi = Mutex(false)
    func takeNMI(vcpu: Int) -> Bool { nmi.withLock { n in defer { n = false }; return n } }
}

@Suite("Interrupt hook")
struct InterruptHookTests {
    /// Real mode: IVT[0x40] → a handler that writes 'I' to 0xE9 and irets; the main line
    /// enables interrupts, writes 'A', halts, then writes 'B' and exits.
    func program() throws -> [UInt8] {
        try assemble("""
        bits 16
        org 0x7c00
                xor ax, ax
                mov ds, ax
                mov word [0x40*4], handler
                mov word [0x40*4+2], 0
                mov al, 'A'
                out 0xe9, al
                sti
                hlt
                mov al, 'B'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        handler: mov al, 'I'
                out 0xe9, al
                iret
        """)
    }

    /// Runs the guest, collecting port 0xE9 output ('|' marks each HLT), until it writes
    /// port 0xF4. `afterOutput` and `atHalt` play the interrupt controller's part; `atHalt`
    /// returns false to end the run.
    func drive(_ vcpu: any VCPUBackend, afterOutput: (String) -> Void = { _ in }, atHalt: (String) -> Bool) throws -> String {
        var output = ""
        for _ in 0..<10_000 {
            switch try vcpu.run() {
            case let .portOut(port, _, _, data):
                if port == 0xE9 { output.append(Character(UnicodeScalar(data.load(as: UInt8.self)))) }
                if port == 0xF4 { return output }
                afterOutput(output)
            case .halt:
                output.append("|")
                if !atHalt(output) { return output }
            case .interrupted, .debugStep, .portIn, .mmioRead, .mmioWrite: continue
            default: return output + "?"
            }
        }
        return output
    }

    /// The maskable-interrupt run: the interrupt arrives once the guest has said 'A'.
    func drive(_ vcpu: any VCPUBackend, _ controller: OneShotInterrupt) throws -> String {
        try drive(vcpu, afterOutput: { if $0 == "A" { controller.raise(0x40) } },
                  atHalt: { _ in controller.hasPendingInterrupt(vcpu: 0) })
    }

    func start(_ memory: GuestMemoryMap) throws -> CPUState {
        try memory.load(try program(), at: 0x7C00)
        return CPUState.bootSector(stack: 0x7C00)
    }

    @Test("the interpreter delivers a pending interrupt at a boundary with IF set, after the STI shadow, and HLT resumes")
    func interpreter() throws {
        let memory = try GuestMemoryMap(ramSize: 1 << 20)
        let vcpu = InterpreterMachine(memory: memory, cpuCount: 1).makeVCPU(index: 0)
        try vcpu.writeState(try start(memory))
        let controller = OneShotInterrupt()
        vcpu.interruptController = controller
        #expect(try drive(vcpu, controller) == "A|IB")
    }

    @Test("KVM gets the same interrupt through KVM_INTERRUPT", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func kvm() throws {
        let memory = try GuestMemoryMap(ramSize: 1 << 20)
        let (vm, vcpus) = try KVMDevice().makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
        _ = vm
        try vcpus[0].writeState(try start(memory))
        let controller = OneShotInterrupt()
        vcpus[0].interruptController = controller
        #expect(try drive(vcpus[0], controller) == "A|IB")
    }

    /// With interrupts disabled (cli; hlt), only an NMI gets through: vector 2.
    func nmiProgram() throws -> [UInt8] {
        try assemble("""
        bits 16
        org 0x7c00
                xor ax, ax
                mov ds, ax
                mov word [2*4], handler
                mov word [2*4+2], 0
                mov al, 'A'
                out 0xe9, al
                cli
                hlt
                mov al, 'B'
                out 0xe9, al
                mov al, 0
                out 0xf4, al
        handler: mov al, 'N'
                out 0xe9, al
                iret
        """)
    }

    @Test("an NMI is delivered with IF clear, on both backends")
    func nmi() throws {
        for useKVM in canOpenKVM() ? [false, true] : [false] {
            let memory = try GuestMemoryMap(ramSize: 1 << 20)
            var state = try start(memory)
            try memory.load(try nmiProgram(), at: 0x7C00)
            state.rip = 0x7C00
            let controller = OneShotInterrupt()
            let vcpu: any VCPUBackend
            var keep: AnyObject? = nil
            if useKVM {
                let (vm, vcpus) = try KVMDevice().makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
                keep = vm
                vcpus[0].interruptController = controller
                vcpu = vcpus[0]
            } else {
                let v = InterpreterMachine(memory: memory, cpuCount: 1).makeVCPU(index: 0)
                v.interruptController = controller
                vcpu = v
            }
            try vcpu.writeState(state)
            let output = try drive(vcpu) { output in
                guard output == "A|" else { return false }
                controller.nmi.withLock { $0 = true }
                return true
            }
            _ = keep
            #expect(output == "A|NB", "\(useKVM ? "kvm" : "interp")")
        }
    }
}
