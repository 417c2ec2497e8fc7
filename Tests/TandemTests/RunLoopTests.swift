#if canImport(Glibc)
import Glibc
#endif
import Devices
import Dispatch
import GDBStub
import Machine
import RunLoop
import Testing
import X86

/// The one exit handler (what it answers, what it returns) and the vCPU command channel
/// (Documentation/Architecture.md); the machine's vCPU states as a run goes through them.
@Suite("run loop: exit handler, vCPU commands and states")
struct RunLoopTests {
    /// Answers from a script and records what was written.
    struct ScriptedBuses: ExitAnswering {
        var portValues: [UInt32] = []
        var mmioValue: UInt64 = 0
        var portWrites: [(UInt16, Int, UInt32)] = []
        var mmioWrites: [(UInt64, Int, UInt64)] = []
        var portReads: [(UInt16, Int)] = []
        var mmioReads: [(UInt64, Int)] = []

        mutating func portIn(_ port: UInt16, size: Int) -> UInt32 {
            portReads.append((port, size))
            return portValues.isEmpty ? 0 : portValues.removeFirst()
        }
        mutating func portOut(_ port: UInt16, size: Int, value: UInt32) { portWrites.append((port, size, value)) }
        mutating func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
            mmioReads.append((address, size))
            return mmioValue
        }
        mutating func mmioWrite(_ address: UInt64, size: Int, value: UInt64) { mmioWrites.append((address, size, value)) }
    }

    @Test("port I/O: each of `count` values of `size` bytes goes through the answerer, little-endian, packed")
    func portIO() {
        var handler = ExitHandler(ScriptedBuses(portValues: [0x1122, 0x3344, 0x5566]))
        var buffer = [UInt8](repeating: 0xAA, count: 8)
        let outcome = buffer.withUnsafeMutableBytes { handler.handle(.portIn(port: 0x1F0, size: 2, count: 3, data: $0.baseAddress!)) }
        #expect(outcome == .answered)
        #expect(buffer == [0x22, 0x11, 0x44, 0x33, 0x66, 0x55, 0xAA, 0xAA], "only count × size bytes are written")
        #expect(handler.answers.portReads.map(\.0) == [0x1F0, 0x1F0, 0x1F0] && handler.answers.portReads.allSatisfy { $0.1 == 2 })

        let out: [UInt8] = [0x78, 0x56, 0x34, 0x12, 0xEF, 0xBE, 0xAD, 0xDE]
        let written = out.withUnsafeBytes { handler.handle(.portOut(port: 0xE9, size: 4, count: 2, data: $0.baseAddress!)) }
        #expect(written == .answered)
        #expect(handler.answers.portWrites.map(\.2) == [0x1234_5678, 0xDEAD_BEEF])
        #expect(handler.answers.portWrites.allSatisfy { $0.0 == 0xE9 && $0.1 == 4 })
    }

    @Test("MMIO: reads fill at most 8 bytes, writes are taken from the engine's buffer")
    func mmio() {
        var handler = ExitHandler(ScriptedBuses(mmioValue: 0x0102_0304_0506_0708))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(buffer.withUnsafeMutableBytes { handler.handle(.mmioRead(address: 0xFEE0_0030, size: 4, data: $0.baseAddress!)) } == .answered)
        #expect(buffer[0..<5] == [0x08, 0x07, 0x06, 0x05, 0], "a 4-byte read fills 4 bytes")
        #expect(buffer.withUnsafeMutableBytes { handler.handle(.mmioRead(address: 0xFEC0_0000, size: 16, data: $0.baseAddress!)) } == .answered)
        #expect(buffer[0..<8] == [8, 7, 6, 5, 4, 3, 2, 1] && buffer[8...].allSatisfy { $0 == 0 })
        #expect(handler.answers.mmioReads.map(\.0) == [0xFEE0_0030, 0xFEC0_0000])
        let value: [UInt8] = [0xEF, 0xBE, 0, 0]
        #expect(value.withUnsafeBytes { handler.handle(.mmioWrite(address: 0xFEE0_00B0, size: 2, data: $0.baseAddress!)) } == .answered)
        #expect(handler.answers.mmioWrites.count == 1 && handler.answers.mmioWrites[0] == (0xFEE0_00B0, 2, 0xBEEF))
    }

    @Test("every other exit comes back to the caller, nothing answered")
    func otherExits() {
        var handler = ExitHandler(ScriptedBuses())
        let cases: [(VCPUExit, ExitOutcome)] = [
            (.halt, .halted), (.shutdown, .shutdown), (.debugStep, .stepped), (.interrupted, .interrupted),
            (.instructionLimit, .instructionLimit), (.unsupportedInstruction("daa"), .unsupported("daa")),
            (.failedEntry(reason: 0x21), .entryFailed(0x21)), (.internalError("x"), .internalError("x")),
        ]
        for (exit, expected) in cases { #expect(handler.handle(exit) == expected) }
        #expect(handler.answers.portReads.isEmpty && handler.answers.portWrites.isEmpty && handler.answers.mmioReads.isEmpty && handler.answers.mmioWrites.isEmpty)
        #expect(VCPUExit.halt.isAtInstructionBoundary && VCPUExit.interrupted.isAtInstructionBoundary)
        var data: UInt32 = 0
        #expect(!withUnsafeMutableBytes(of: &data) { VCPUExit.portIn(port: 0x60, size: 1, count: 1, data: $0.baseAddress!).isAtInstructionBoundary })
    }

    @Test("no devices: reads are all ones for their size, writes vanish")
    func noDevices() {
        var handler = ExitHandler(NoDevices())
        for size in [1, 2, 4] {
            var buffer = [UInt8](repeating: 0, count: 8)
            _ = buffer.withUnsafeMutableBytes { handler.handle(.portIn(port: 0x80, size: size, count: 2, data: $0.baseAddress!)) }
            #expect(buffer == [UInt8](repeating: 0xFF, count: 2 * size) + [UInt8](repeating: 0, count: 8 - 2 * size))
        }
        var buffer = [UInt8](repeating: 0, count: 8)
        _ = buffer.withUnsafeMutableBytes { handler.handle(.mmioRead(address: 0xFED0_0000, size: 8, data: $0.baseAddress!)) }
        #expect(buffer == [UInt8](repeating: 0xFF, count: 8))
    }

    @Test("the command channel: pause and resume, snapshot and done, stop; a newer engine move replaces an older one")
    func channel() {
        let c = VCPUCommandChannel()
        #expect(!c.hasCommands && c.state == .created && c.switchRequest == .none)
        c.send(.pause)
        #expect(c.hasCommands && c.pauseRequested && !c.stopRequested && !c.snapshotRequested)
        c.send(.snapshot)
        c.send(.resume)
        #expect(!c.pauseRequested && c.snapshotRequested)
        c.send(.snapshotDone)
        #expect(!c.hasCommands)

        c.send(.switchEngine(.toKVM))
        #expect(c.hasCommands && c.switchRequest == .toKVM)
        c.send(.switchEngine(.flip))
        #expect(c.switchRequest == .flip, "the latest request wins")
        c.switchDone(.toKVM)
        #expect(c.switchRequest == .flip, "a move done for an older request leaves the newer one")
        c.switchDone(.flip)
        #expect(c.switchRequest == .none && !c.hasCommands)

        c.send(.pause)
        c.send(.switchEngine(.toInterpreter))
        c.send(.stop)
        #expect(c.stopRequested && c.pauseRequested && c.switchRequest == .toInterpreter, "the commands are independent bits")
        c.switchDone(.toInterpreter)
        #expect(c.stopRequested && c.pauseRequested)
        for s in [VCPUState.running, .paused, .switching, .snapshotting, .stopped] {
            c.enter(s)
            #expect(c.state == s)
        }
    }

    @Test("concurrent senders: every pause and resume pair and every engine move leaves the word consistent")
    func concurrentSenders() {
        let c = VCPUCommandChannel()
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for i in 0..<10_000 {
                if worker % 2 == 0 {
                    c.send(.switchEngine(i % 2 == 0 ? .toKVM : .toInterpreter))
                } else {
                    c.send(.snapshot)
                    c.send(.snapshotDone)
                }
            }
        }
        #expect(!c.snapshotRequested && !c.pauseRequested && !c.stopRequested)
        #expect(c.switchRequest == .toInterpreter, "each switch worker's last request was toInterpreter")
    }

    @Test("a machine's vCPUs: created, paused by --gdb-wait before their first instruction (the AP in wait-for-SIPI too), stopped by the stop")
    func machineStates() throws {
        var c = MachineConfiguration(imagePath: try guest("smp-boot.elf"))
        c.backend = .interp
        c.cpus = 2
        c.serial = .capture
        c.timeout = 60
        c.announceBackend = false
        var gdb = GDBOptions(host: "127.0.0.1", port: 0)
        gdb.waitForDebugger = true
        c.gdb = gdb
        let machine = try Machine(c)
        #expect(machine.state(ofVCPU: 0) == .created && machine.state(ofVCPU: 1) == .created)
        let done = DispatchSemaphore(value: 0)
        let outcome = OutcomeBox()
        DispatchQueue.global().async {
            outcome.value = machine.run()
            done.signal()
        }
        let deadline = DispatchTime.now() + 20
        while !(0..<2).allSatisfy({ machine.state(ofVCPU: $0) == .paused }) && DispatchTime.now() < deadline { usleep(5_000) }
        #expect(machine.state(ofVCPU: 0) == .paused && machine.state(ofVCPU: 1) == .paused)
        machine.requestStop(.debuggerKilled)
        #expect(done.wait(timeout: .now() + 20) == .success)
        #expect(outcome.value?.status == ExitStatus.debuggerKilled.rawValue)
        #expect(machine.state(ofVCPU: 0) == .stopped && machine.state(ofVCPU: 1) == .stopped)
        #expect(machine.capturedOutput.isEmpty, "no instruction ran")
    }

    /// Machines are built and torn down many times (tests, `--reboot restart`): once run
    /// and let go, nothing may keep the machine or its devices alive — no cycle through the
    /// devices' callbacks to the machine, the PIC's to the APIC bus, the console input's to
    /// the UART (which hold none of them strongly, nor weakly on the exit path).
    @Test("a machine that ran is freed with its devices once let go, on every backend", arguments: backends())
    func tornDownMachineIsFreed(backend: BackendKind) throws {
        weak var machine: Machine?
        weak var devices: DeviceModel?
        weak var serial: Serial16550?
        weak var apic: APICBus?
        do {
            var c = MachineConfiguration(imagePath: try guest("uart-echo.elf"))
            c.backend = backend
            c.cpus = 2
            c.serial = .capture
            c.input = .bytes(Array("freed.".utf8))
            c.timeout = 60
            c.announceBackend = false
            let built = try Machine(c)
            machine = built
            devices = built.devices
            serial = built.devices.serial
            apic = built.devices.apic
            let outcome = built.run()
            #expect(outcome.status == 0, "\(outcome.message ?? "")")
        }
        #expect(machine == nil, "the machine outlived its run")
        #expect(devices == nil && serial == nil && apic == nil, "a device outlived its machine")
    }

    final class OutcomeBox: @unchecked Sendable {
        var value: RunOutcome?
    }
}
