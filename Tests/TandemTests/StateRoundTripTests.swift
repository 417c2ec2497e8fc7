// The whole vCPU state (CPUState, with its events and MTRRs) through each engine's
// writeState/readState, and the events a state carries, delivered by each engine.
import GuestMemory
import RunLoop
import Interpreter
import KVM
import Testing
import X86

@Suite("vCPU state round trip")
struct StateRoundTripTests {
    /// A 64-bit kernel-mode state with every part set to something other than its reset
    /// value, within what KVM's KVM_SET_* ioctls accept.
    static func busyState() -> CPUState {
        var s = CPUState()
        for i in 0..<16 { s.gpr[i] = 0x1111_2222_0000_0000 &* UInt64(i + 1) &+ UInt64(i) }
        s.rip = 0x40_1234
        s.rflags = 0x202 | 0x1 | 0x40 | 0x800
        let code = SegmentRegister(selector: 0x08, base: 0, limit: 0xFFFF_FFFF,
                                   attributes: SegmentRegister.attributes(type: 0xB, s: true, long: true, granularity: true))
        let data = SegmentRegister(selector: 0x10, base: 0, limit: 0xFFFF_FFFF,
                                   attributes: SegmentRegister.attributes(type: 0x3, s: true, big: true, granularity: true))
        s.cs = code
        s.ss = data; s.ds = data; s.es = data
        s.fs = SegmentRegister(selector: 0x10, base: 0x7F00_1000, limit: 0xFFFF_FFFF, attributes: data.attributes)
        s.gs = SegmentRegister(selector: 0x10, base: 0xFFFF_8000_0000_2000, limit: 0xFFFF_FFFF, attributes: data.attributes)
        s.tr = SegmentRegister(selector: 0x28, base: 0x9000, limit: 0x67, attributes: SegmentRegister.attributes(type: 11, s: false))
        s.ldtr = SegmentRegister(selector: 0x30, base: 0xA000, limit: 0xFF, attributes: SegmentRegister.attributes(type: 2, s: false))
        s.gdtr = DescriptorTable(base: 0x8000, limit: 0x37)
        s.idtr = DescriptorTable(base: 0xB000, limit: 0xFFF)
        s.cr0 = CR0.pe | CR0.mp | CR0.et | CR0.ne | CR0.wp | CR0.pg
        s.cr2 = 0xDEAD_B000
        s.cr3 = 0x10_0000
        s.cr4 = CR4.pae | 1 << 9 | 1 << 10   // PAE, OSFXSR, OSXMMEXCPT
        s.efer = EFER.sce | EFER.lme | EFER.lma | EFER.nxe
        s.dr0 = 0x1000; s.dr1 = 0x2000; s.dr2 = 0x3000; s.dr3 = 0x4000
        s.dr6 = 0xFFFF_0FF0 | 0x1
        s.dr7 = 0x400 | 0x1 | 0x4
        s.msrs.star = 0x0023_0010_0000_0000
        s.msrs.lstar = 0xFFFF_8000_0010_0000
        s.msrs.cstar = 0xFFFF_8000_0020_0000
        s.msrs.fmask = 0x4700
        s.msrs.kernelGSBase = 0xFFFF_8000_0030_0000
        s.msrs.sysenterCS = 0x08
        s.msrs.sysenterESP = 0x9_F000
        s.msrs.sysenterEIP = 0x40_2000
        s.msrs.pat = 0x0007_0106_0007_0406
        s.msrs.mtrrs[0x2FF] = 0xC06
        s.msrs.mtrrs[0x250] = 0x0606_0606_0606_0606
        s.msrs.mtrrs[0x268] = 0x0505_0505_0505_0505
        s.msrs.mtrrs[0x200] = 0x8000_0000 | 0x0
        s.msrs.mtrrs[0x201] = 0xF_8000_0000 | 0x800
        s.fpu.fcw = 0x027F
        s.fpu.mxcsr = 0x1F80 | 0x3
        for i in 0..<16 { s.fpu.xmm[i] = XMMRegister(low: 0x0101_0101_0101_0101 &* UInt64(i + 1), high: ~UInt64(i)) }
        s.events.interruptShadow = InterruptShadow.sti
        s.events.nmiBlocked = true
        return s
    }

    /// `read` with the values the engine owns rather than stores: the TSC, which keeps
    /// counting.
    static func expected(_ written: CPUState, read: CPUState) -> CPUState {
        var e = written
        e.msrs.tsc = read.msrs.tsc
        return e
    }

    static func describeDifferences(_ a: CPUState, _ b: CPUState) -> String {
        var out: [String] = []
        for (x, y) in zip(a.namedFields, b.namedFields) where x.value != y.value { out.append("\(x.name) \(x.value) != \(y.value)") }
        if a.msrs != b.msrs { out.append("msrs \(a.msrs) != \(b.msrs)") }
        if a.fpu != b.fpu { out.append("fpu differs") }
        if a.events != b.events { out.append("events \(a.events) != \(b.events)") }
        if (a.dr0, a.dr1, a.dr2, a.dr3, a.dr6, a.dr7) != (b.dr0, b.dr1, b.dr2, b.dr3, b.dr6, b.dr7) { out.append("debug registers differ") }
        if a.cr8 != b.cr8 { out.append("cr8") }
        return out.joined(separator: "; ")
    }

    @Test("the interpreter reads back exactly the state it was given, events and MTRRs included")
    func interpreter() throws {
        let memory = try GuestMemoryMap(ramSize: 4 << 20)
        let vcpu = InterpreterMachine(memory: memory, cpuCount: 1).makeVCPU(index: 0)
        var written = Self.busyState()
        written.events.nmiPending = true
        written.events.interruptShadow = InterruptShadow.movSS
        try vcpu.writeState(written)
        let read = try vcpu.readState()
        let want = Self.expected(written, read: read)
        #expect(read == want, "\(Self.describeDifferences(want, read))")
    }

    @Test("KVM reads back exactly the state it was given: registers, MSRs, MTRRs, debug registers, FPU, events",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func kvm() throws {
        let memory = try GuestMemoryMap(ramSize: 4 << 20)
        let (vm, vcpus) = try KVMDevice().makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
        _ = vm
        for variant in 0..<3 {
            var written = Self.busyState()
            switch variant {
            case 1:   // an external interrupt KVM had begun to inject, under MOV SS's shadow
                written.events = VCPUEvents()
                written.events.interrupt = InjectedInterrupt(vector: 0x31, soft: false)
                written.events.interruptShadow = InterruptShadow.movSS
            case 2:   // a page fault being delivered, and a queued NMI
                written.events = VCPUEvents()
                written.events.exception = InjectedException(vector: 14, errorCode: 0x6)
                written.events.nmiPending = true
            default: break
            }
            try vcpus[0].writeState(written)
            let read = try vcpus[0].readState()
            let want = Self.expected(written, read: read)
            #expect(read == want, "variant \(variant): \(Self.describeDifferences(want, read))")
        }
    }

    /// Real mode, IF clear, RIP at a HLT; IVT[0x40] → a handler that stores 'I' at 0x500
    /// and halts. Only an injected interrupt (one whose delivery has begun) gets there.
    func injectedInterruptProgram(_ memory: GuestMemoryMap) throws -> CPUState {
        try memory.load(try assemble("""
        bits 16
        org 0x7c00
                hlt
        handler: mov byte [0x500], 'I'
                hlt
        """), at: 0x7C00)
        try memory.load([0x01, 0x7C, 0x00, 0x00], at: 0x40 * 4)   // IVT[0x40] = 0000:7C01
        var s = CPUState.bootSector(stack: 0x7000)
        s.events.interrupt = InjectedInterrupt(vector: 0x40, soft: false)
        return s
    }

    @Test("an interrupt the state says is being injected is delivered before the next instruction, on both engines")
    func injectedInterrupt() throws {
        for useKVM in canOpenKVM() ? [false, true] : [false] {
            let memory = try GuestMemoryMap(ramSize: 1 << 20)
            let state = try injectedInterruptProgram(memory)
            let vcpu: any VCPUBackend
            var keep: AnyObject? = nil
            if useKVM {
                let (vm, vcpus) = try KVMDevice().makeMachine(memory: memory, cpus: 1, cpu: defaultGuestCPU())
                keep = vm
                vcpu = vcpus[0]
            } else {
                vcpu = InterpreterMachine(memory: memory, cpuCount: 1).makeVCPU(index: 0)
            }
            try vcpu.writeState(state)
            #expect(vcpu.runWithoutDevices(maxExits: 100) == .halted)
            let after = try vcpu.readState()
            #expect(memory.bytes(at: 0x500, count: 1) == [UInt8(ascii: "I")], "\(useKVM ? "kvm" : "interp")")
            // The handler's HLT, with the interrupted HLT's address (0x7C00) on the stack.
            #expect(after.rip == 0x7C07, "\(useKVM ? "kvm" : "interp")")
            #expect(memory.bytes(at: 0x7000 - 6, count: 2) == [0x00, 0x7C], "\(useKVM ? "kvm" : "interp")")
            #expect(after.events.interrupt == nil)
            _ = keep
        }
    }
}
