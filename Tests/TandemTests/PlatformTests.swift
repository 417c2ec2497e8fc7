import Foundation
import GuestMemory
import Interpreter
import Loaders
import Machine
import Testing
import X86

/// Guests of the PC platform devices, and how those devices end a run: a reset (status
/// 212), ACPI S5 (status 0), and POST codes in the trace.
@Suite("Platform")
struct PlatformTests {
    @Test("pit-rtc: PIT ticks in HLT through the PIC, channel 2 through port 0x61, the RTC's date (the host's UTC) and periodic interrupts", arguments: backends())
    func pitRTC(backend: BackendKind) throws {
        let before = Date()
        let r = runGuest(try guest("pit-rtc.bin"), backend: backend, timeout: 60)
        let after = Date()
        let lines = r.output.split(separator: "\n").map(String.init)
        try #require(lines.count == 5, "output: \(r.output)")
        #expect(lines[0] == "pit: 50 ticks")
        #expect(lines[1] == "pit: channel 2 out=1 status=b0")   // OUT high, lo/hi access, mode 0, binary
        #expect(lines[3] == "rtc: binary agrees")
        #expect(lines[4] == "rtc: 32 periodic interrupts")
        #expect(r.status == 0)
        // The RTC's time is the host's UTC time, read while the guest ran.
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        let shown = try #require(formatter.date(from: String(lines[2].dropFirst("rtc: ".count))))
        #expect(shown >= before.addingTimeInterval(-1) && shown <= after.addingTimeInterval(1))
    }

    /// c-compute: float/double on SSE; c-compute-387: the same program at -mfpmath=387
    /// (float/double on the x87). Both end with x87 transcendentals (FSINCOS, FPTAN,
    /// FPATAN, FYL2X, F2XM1, FSCALE, FRNDINT, FPREM, FSQRT) that gcc emits inline.
    @Test("c-compute: C compiled at -O3 -march=x86-64-v2 (vectorised SSE4.1 integer loops, SSE or x87 float/double, POPCNT, x87 long double and transcendentals) prints what the same program prints natively",
          arguments: ["c-compute", "c-compute-387"], backends())
    func compiledC(name: String, backend: BackendKind) throws {
        let expected = try String(contentsOfFile: try guest("\(name).expected"), encoding: .utf8)
        #expect(expected.split(separator: "\n").count == 27)
        let r = runGuest(try guest("\(name).elf"), backend: backend, timeout: 120)
        #expect(r.output == expected)
        #expect(r.status == 0)
    }

    @Test("i8042 0xFE and port 0xCF9 reset the machine: status 212 and a one-line report", arguments: backends())
    func reset(backend: BackendKind) throws {
        // mov al, 0xFE; out 0x64, al; hlt
        var r = try runImage([0xB0, 0xFE, 0xE6, 0x64, 0xF4], backend: backend, name: "reset-8042.img")
        #expect(r.status == 212)
        #expect(r.message?.hasPrefix("tandem: the guest reset the machine (status 212)") == true)
        // mov dx, 0xCF9; mov al, 6; out dx, al; hlt
        r = try runImage([0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, 0xF4], backend: backend, name: "reset-cf9.img")
        #expect(r.status == 212)
    }

    @Test("SLP_TYP 5 with SLP_EN at PM1a_CNT (0x604) powers off: status 0 and a message", arguments: backends())
    func powerOff(backend: BackendKind) throws {
        // mov dx, 0x604; mov ax, 0x3400; out dx, ax; hlt
        let r = try runImage([0xBA, 0x04, 0x06, 0xB8, 0x00, 0x34, 0xEF, 0xF4], backend: backend, name: "s5.img")
        #expect(r.status == 0)
        #expect(r.message == "tandem: the guest powered the machine off (ACPI S5); stopping with status 0")
    }

    @Test("POST codes written to port 0x80 appear in the trace", arguments: backends())
    func postCodes(backend: BackendKind) throws {
        let image = try bootImage([0xB0, 0x42, 0xE6, 0x80, 0xB0, 0x00, 0xE6, 0xF4], name: "post.img")
        let trace = scratchPath("post-trace")
        defer { try? FileManager.default.removeItem(atPath: trace) }
        let r = try runProcess(tandemBinary, ["run", "--backend", backend.rawValue, "--format", "boot", "--trace", trace, image])
        #expect(r.status == 0)
        #expect(try String(contentsOfFile: trace, encoding: .utf8).contains("post code 0x42"))
    }

    /// `--trace-from` applies to POST codes too: Linux writes port 0x80 for every I/O delay,
    /// and those records used to fill a `--trace-count` before the first traced instruction.
    @Test("POST codes before --trace-from are not recorded, and do not use up --trace-count", arguments: backends())
    func postCodesFrom(backend: BackendKind) throws {
        // mov al, 0x11; out 0x80, al (instructions 0, 1); mov al, 0x42; out 0x80, al (2, 3);
        // nop (4); mov al, 0; out 0xF4, al
        let image = try bootImage([0xB0, 0x11, 0xE6, 0x80, 0xB0, 0x42, 0xE6, 0x80, 0x90, 0xB0, 0x00, 0xE6, 0xF4], name: "post-from.img")
        let trace = scratchPath("post-from-trace")
        defer { try? FileManager.default.removeItem(atPath: trace) }
        let r = try runProcess(tandemBinary, ["run", "--backend", backend.rawValue, "--format", "boot", "--trace", trace,
                                              "--trace-from", "2", "--trace-count", "4", image])
        #expect(r.status == 0)
        let text = try String(contentsOfFile: trace, encoding: .utf8)
        #expect(!text.contains("post code 0x11"), "trace: \(text)")
        #expect(text.contains("post code 0x42"), "trace: \(text)")
        #expect(text.contains("nop"), "the count reached the instructions after the codes; trace: \(text)")
    }
}

/// Interrupts reach a vCPU that spins on PAUSE. On a machine of several vCPUs the
/// interpreter gives the host CPU away at each PAUSE (`sched_yield`, for the vCPU that holds
/// the lock); on a loaded host each yield can last another process's time slice, so the
/// interpreter looks at its interrupts after every PAUSE rather than after a block of 4,096
/// instructions. (Linux's timer_irq_works spins on `pause; rdtsc`: with three boots at once
/// it saw 1-3 of its ~40 PIT ticks and panicked, "IO-APIC + timer doesn't work!".)
@Suite("Platform: PAUSE loops")
struct PauseLoopTests {
    /// vCPU 0 of `cpus`, in 64-bit mode (Capstone reads F3 90 as NOP in 16-bit code, so
    /// there PAUSE is a plain NOP), at `spin: pause; jmp spin`.
    func spinner(cpus: Int) throws -> InterpreterVCPU {
        let image = try assembleELF64("""
        bits 64
        section .text
        global _start
        _start:
        spin:   pause
                jmp spin
        """, name: "pause-spin")
        let memory = try GuestMemoryMap(ramSize: 16 << 20)
        let plan = try Loader.load(Array(try Data(contentsOf: URL(fileURLWithPath: image))), name: "pause-spin", as: .elf64, into: memory)
        let vcpu = InterpreterMachine(memory: memory, cpuCount: cpus).makeVCPU(index: 0)
        try vcpu.writeState(plan.initialState(cpu: 0, of: cpus))
        vcpu.interruptController = OneShotInterrupt()
        vcpu.instructionLimit = 100_000
        return vcpu
    }

    @Test("several vCPUs: the engine returns to the vCPU loop (which looks at interrupts) after each PAUSE")
    func severalVCPUs() throws {
        let vcpu = try spinner(cpus: 2)
        for _ in 0..<3 {
            let before = vcpu.retired
            let exit = try vcpu.run()
            guard case .interrupted = exit else { Issue.record("the PAUSE loop did not end the run: \(exit), \(vcpu.retired) instructions"); return }
            #expect(vcpu.retired - before <= 2)   // the PAUSE and the jump back
        }
    }

    @Test("one vCPU: PAUSE neither yields nor ends the block (there is no other vCPU to wait for)")
    func oneVCPU() throws {
        let vcpu = try spinner(cpus: 1)
        guard case .instructionLimit = try vcpu.run() else { Issue.record("the run ended before its instruction limit"); return }
        #expect(vcpu.retired == 100_000)
    }
}
