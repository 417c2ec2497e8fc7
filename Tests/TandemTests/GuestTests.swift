#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HostOS
import Machine
import Testing

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// hello-multiboot's output for a machine with `memory` bytes of RAM, computed from the
/// contract: RAM from 0 to min(memory, 3 GiB) less the firmware tables' reserved range
/// 0xE0000-0xFFFFF, the rest from 4 GiB; flags 0x24d (memory,
/// cmdline, modules, memory map, boot loader name).
private func expectedMultibootOutput(memory: UInt64, cmdline: String, modules: [(string: String, size: Int)]) -> String {
    let low = min(memory, 3 * GiB), high = memory - low
    var lines = [
        "multiboot: magic ok",
        "flags=0x0000024d",
        "mem_lower=640 KiB",
        "mem_upper=\((low - MiB) / 1024) KiB",
        "cmdline=\(cmdline)",
        "mods_count=\(modules.count)",
    ]
    for (i, m) in modules.enumerated() { lines.append("module \(i): size=\(m.size) cmdline=\(m.string)") }
    // The firmware tables' range, 0xE0000-0xFFFFF, is reserved (type 2).
    lines.append("mmap: base=0x0000000000000000 length=0x00000000000e0000 type=1")
    lines.append("mmap: base=0x00000000000e0000 length=0x0000000000020000 type=2")
    lines.append("mmap: base=0x0000000000100000 length=0x\(hex(low - MiB, width: 16)) type=1")
    if high > 0 { lines.append("mmap: base=0x0000000100000000 length=0x\(hex(high, width: 16)) type=1") }
    return lines.map { $0 + "\n" }.joined()
}

/// loop32's loop, run on the host: EDX after `iterations` rounds.
private func loop32EDX(iterations: Int) -> UInt32 {
    var eax: UInt32 = 0, ebx: UInt32 = 1, edx: UInt32 = 0
    let ecx: UInt32 = 7
    for _ in 0..<iterations {
        eax &+= ebx
        edx ^= eax
        ebx = (ebx &+ ecx) & 0x7FFF_FFFF
        edx = edx << 3 | edx >> 29
    }
    return edx
}

/// A boot sector that enters 32-bit protected mode with an empty IDT (limit 0) and runs
/// `ud2` at 0x7C21: #UD cannot be delivered, nor #GP, nor #DF: a triple fault.
private let tripleFaultSector = bootSector([
    0xFA,                                     // 7C00 cli
    0x0F, 0x01, 0x16, 0x40, 0x7C,             // 7C01 lgdt [0x7C40]
    0x0F, 0x01, 0x1E, 0x46, 0x7C,             // 7C06 lidt [0x7C46]
    0x0F, 0x20, 0xC0,                         // 7C0B mov eax, cr0
    0x0C, 0x01,                               // 7C0E or al, 1
    0x0F, 0x22, 0xC0,                         // 7C10 mov cr0, eax
    0x66, 0xEA, 0x1B, 0x7C, 0x00, 0x00, 0x08, 0x00, // 7C13 jmp dword 0x08:0x7C1B
    0x66, 0xB8, 0x10, 0x00,                   // 7C1B mov ax, 0x10      (32-bit code from here)
    0x8E, 0xD8,                               // 7C1F mov ds, eax
    0x0F, 0x0B,                               // 7C21 ud2
    0x90, 0x90, 0x90, 0x90, 0x90,             // 7C23 padding to 0x7C28
    0, 0, 0, 0, 0, 0, 0, 0,                   // 7C28 GDT: null
    0xFF, 0xFF, 0, 0, 0, 0x9A, 0xCF, 0,       // 7C30 0x08: flat 32-bit code
    0xFF, 0xFF, 0, 0, 0, 0x92, 0xCF, 0,       // 7C38 0x10: flat data
    0x17, 0x00, 0x28, 0x7C, 0x00, 0x00,       // 7C40 GDTR: limit 23, base 0x7C28
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,       // 7C46 IDTR: limit 0, base 0
])

/// The guests whose exact output Guests/README.md gives in a section of its own
/// ("## NAME output", the indented block after it), with that output.
let readmeGuests: [String: String] = {
    guard let text = try? String(contentsOfFile: "\(repoRoot)/Guests/README.md", encoding: .utf8) else { return [:] }
    var result: [String: String] = [:]
    let lines = text.components(separatedBy: "\n")
    for (i, line) in lines.enumerated() where line.hasPrefix("## ") && line.hasSuffix(" output") {
        let name = String(line.dropFirst(3).dropLast(7))
        guard name != "hello-multiboot" else { continue }   // a template: checked against computed values
        var j = i + 1
        while j < lines.count, !lines[j].hasPrefix("    "), !lines[j].hasPrefix("## ") { j += 1 }
        var block: [String] = []
        while j < lines.count, lines[j].hasPrefix("    ") { block.append(String(lines[j].dropFirst(4))); j += 1 }
        if !block.isEmpty { result[name] = block.map { $0 + "\n" }.joined() }
    }
    return result
}()

/// The image file of a README guest ("smc" -> "smc.elf").
func readmeImage(_ name: String) -> String {
    // Boot images are .bin, the rest .elf (Tools/build-guests names them so).
    let bin = "\(name).bin"
    return (try? FileManager.default.fileExists(atPath: guest(bin))) == true ? bin : "\(name).elf"
}

/// Guests that KVM without VMX/SVM is known to run differently (Guests/README.md, Notes):
/// AAM/AAD flags, `int 0x80` at CPL 3, non-PAE paging, virtual-8086 mode.
let pvmDivergentGuests: Set<String> = ["bcd16", "exceptions32", "paging32", "v86"]

/// An elf64 image whose every CPU spins on `jmp $` at 2 MiB.
private let spinningELF64 = ELFFile(entry: 0x200000, segments: [.init(at: 0x200000, [0xEB, 0xFE])]).bytes

/// What every guest must do, on either backend: the contract says a guest sees the same
/// machine under both.
struct GuestChecks {
    let backend: BackendKind


    // MARK: The guests of Guests/README.md

    func helloBoot() throws {
        let r = runGuest(try guest("hello-boot.bin"), backend: backend)
        #expect(r.output == "Hello from real mode!\n")
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    func helloBIOS() throws {
        let r = runGuest(try guest("hello-bios.rom"), backend: backend)
        #expect(r.output == "Hello from the BIOS ROM in protected mode!\n")
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    func helloMultiboot(image: String, memory: UInt64) throws {
        let bootModule = "\(try guest("hello-boot.bin")) arg1 arg2"
        let romModule = try guest("hello-bios.rom")
        let r = runGuest(try guest(image), backend: backend, memory: memory) { c in
            c.commandLine = "console=ttyS0 some args"
            c.modules = [bootModule, romModule]
        }
        #expect(r.output == expectedMultibootOutput(
            memory: memory, cmdline: "console=ttyS0 some args", modules: [(bootModule, 512), (romModule, 65536)]))
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    func helloMultibootBare() throws {
        let r = runGuest(try guest("hello-multiboot.elf"), backend: backend)
        #expect(r.output == expectedMultibootOutput(memory: 128 * MiB, cmdline: "", modules: []))
        #expect(r.status == 0)
    }

    func helloELF64(cpus: Int) throws {
        let r = runGuest(try guest("hello-elf64.elf"), backend: backend, cpus: cpus)
        #expect(r.output == (0..<cpus).map { "Hello from CPU \($0) of \(cpus), RAM 128 MiB\n" }.joined())
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    func smpCounter(cpus: Int) throws {
        let r = runGuest(try guest("smp-counter.elf"), backend: backend, cpus: cpus)
        #expect(r.output == "total=\(cpus * 100_000)\n")
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    /// smp-locks: every LOCK-able form hammered by `cpus` vCPUs at once; each counter's
    /// exact final value is computed here from the guest's documented rounds (10,000 per
    /// CPU; the split-lock forms one round in eight), not taken from the guest.
    func smpLocks(cpus: Int, knownHostRaces: Set<String> = []) throws {
        let t = UInt64(cpus * 10_000), split = t / 8
        let expected: [(String, UInt64)] = [
            ("q_add", 3 * t), ("d_add_line", split), ("w_adc", t & 0xFFFF), ("b_sub", (0 &- t) & 0xFF),
            ("d_sbb", (0 &- t) & 0xFFFF_FFFF), ("b_inc", t & 0xFF), ("w_inc", t & 0xFFFF), ("d_inc", t),
            ("q_inc", t), ("b_dec", (0 &- t) & 0xFF), ("w_dec", (0 &- t) & 0xFFFF), ("d_dec", (0 &- t) & 0xFFFF_FFFF),
            ("q_dec_line", 0 &- split), ("d_cross", split), ("q_neg", 5), ("b_neg", 5), ("d_not", 7), ("w_not", 7),
            ("d_xadd", t), ("w_xadd", t & 0xFFFF), ("q_bits", 0), ("d_xor", 0), ("plain", t), ("q_cas", t),
            ("w_cas", t & 0xFFFF), ("q_cas8", t << 32 | t), ("o_cas16_lo", t), ("o_cas16_hi", t), ("errors", 0),
        ]
        let r = runGuest(try guest("smp-locks.elf"), backend: backend, cpus: cpus, timeout: 120)
        let lines = r.output.split(separator: "\n").map(String.init)
        #expect(lines.count == expected.count + 1, "one line per counter and the verdict")
        for (name, value) in expected where !knownHostRaces.contains(name) {
            #expect(lines.contains("\(name)=\(value)"), "\(name) should be \(value) with \(cpus) vCPUs")
        }
        if knownHostRaces.isEmpty {
            #expect(lines.last == "locks: ok")
            #expect(r.status == 0)
        }
        #expect(r.message == nil)
    }

    /// smp-xmc: one vCPU patches code another runs in a loop (an instruction inside a page
    /// and one across a page boundary); every patch must be seen.
    func smpCrossModifyingCode(cpus: Int) throws {
        let r = runGuest(try guest("smp-xmc.elf"), backend: backend, cpus: cpus, timeout: 120)
        #expect(r.output == "xmc: ok, 2000 rounds\n")
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    /// A REP string instruction that would run for minutes still stops at --timeout.
    func timeoutInsideRepString() throws {
        let code = try assemble("""
        bits 64
                mov rsi, 0x200000
                mov rdi, 0x300000
        again:  mov rcx, 0x100000           ; 1 MiB back and forth, for ever
                rep movsb
                std
                mov rcx, 0x100000
                rep movsb
                cld
                jmp again
        """)
        let image = ELFFile(entry: 0x10_0000, segments: [.init(at: 0x10_0000, code)]).bytes
        let start = Date()
        let r = try runImage(image, backend: backend, name: "rep-forever-\(backend).elf", timeout: 1)
        let elapsed = Date().timeIntervalSince(start)
        #expect(r.status == 206)
        #expect(elapsed < 2.5, "stopped \(elapsed) s after starting with --timeout 1")
    }

    /// An elf64 entry point that is not canonical: the first fetch raises #GP, which the
    /// empty IDT turns into a triple fault, on both backends.
    func nonCanonicalEntry() throws {
        let image = ELFFile(entry: 0x0000_8000_0000_0000, segments: [.init(at: 0x10_0000, [0xF4])]).bytes
        let r = try runImage(image, backend: backend, name: "noncanonical-\(backend).elf")
        #expect(r.status == 204, "\(r.message ?? "")")
    }

    func loop32() throws {
        #expect(loop32EDX(iterations: 10_000_000) == 0x2C65_3F59, "the host model of the loop matches Guests/README.md")
        let full = backend == .interp || hostHasHardwareVirtualization()
        let iterations = full ? 10_000_000 : 100_000
        // The count is set twice, so that either kind of loop32.elf runs it: the
        // command-line word "iterations=N", and a patch of `mov edi, 10000000`
        // (BF 80 96 98 00) where the image still has that instruction.
        var image = try readFileBytes(try guest("loop32.elf"))
        let pattern: [UInt8] = [0xBF, 0x80, 0x96, 0x98, 0x00]
        let hits = (0...(image.count - pattern.count)).filter { Array(image[$0..<$0 + 5]) == pattern }
        try #require(hits.count <= 1)
        for hit in hits { image.put32(UInt32(iterations), at: hit + 1) }
        let r = try runImage(image, backend: backend, name: "loop32-short.elf") { c in c.commandLine = "iterations=\(iterations)" }
        #expect(r.output == "loop32 done edx=\(hex(loop32EDX(iterations: iterations), width: 8))\n")
        #expect(r.status == 0)
    }

    func bigMemory() throws {
        var c = MachineConfiguration(imagePath: try guest("hello-elf64.elf"))
        c.backend = backend
        c.memorySize = 64 * GiB
        c.serial = .capture
        c.timeout = 60
        c.announceBackend = false
        let before = residentMemory()
        let machine = try Machine(c)
        let outcome = machine.run()
        let after = residentMemory()
        #expect(machine.capturedOutput == "Hello from CPU 0 of 1, RAM 65536 MiB\n")
        #expect(outcome.status == 0)
        let grown = after > before ? after - before : 0
        #expect(grown < 200 * MiB, "resident memory grew by \(grown >> 20) MiB")
        // The same, counted exactly (and untouched by other tests running in parallel):
        // the guest RAM pages that are resident.
        let resident = machine.memory.regions.filter { $0.kind == .ram }.reduce(0) { $0 + residentPages($1.host, $1.size) }
        #expect(resident * 4096 < 8 * MiB, "\(resident) guest pages resident")
    }

    // MARK: How a run ends

    func guestStatus() throws {
        // mov al, 42; out 0xF4, al
        var r = try runImage(bootSector([0xB0, 42, 0xE6, 0xF4]), backend: backend, name: "exit42.img")
        #expect(r.status == 42)
        #expect(r.message == nil)
        // mov ax, 0x12C; out 0xF4, ax  ->  0x2C
        r = try runImage(bootSector([0xB8, 0x2C, 0x01, 0xE7, 0xF4]), backend: backend, name: "exit16.img")
        #expect(r.status == 44)
    }

    func timeout() throws {
        let clock = ContinuousClock()
        let start = clock.now
        let r = try runImage([0xEB, 0xFE], backend: backend, name: "spin.img", timeout: 1)
        let elapsed = clock.now - start
        #expect(r.status == 206)
        #expect(r.message == "tandem: timeout after 1 s (status 206): vcpu0 at 0000:0x7c00 (real): jmp 0x7c00")
        #expect(elapsed >= .seconds(1) && elapsed < .seconds(10), "took \(elapsed)")
    }

    func allHalted(cpus: Int) throws {
        let r = try runImage([0xFA, 0xF4], backend: backend, name: "clihlt.img", cpus: cpus)
        #expect(r.status == 0)
        #expect(r.output == "")
        #expect(r.message == "tandem: all vCPUs halted with interrupts disabled; stopping with status 0")
    }

    func haltedWithInterruptsEnabled() throws {
        let r = try runImage([0xFB, 0xF4], backend: backend, name: "stihlt.img")
        #expect(r.status == 0)
        #expect(r.message == "tandem: all vCPUs halted and no interrupt source can wake them; stopping with status 0")
    }

    func tripleFault() throws {
        #expect(tripleFaultSector[0x40..<0x4C] == [0x17, 0, 0x28, 0x7C, 0, 0, 0, 0, 0, 0, 0, 0], "GDTR and IDTR at 0x7C40")
        let r = try runImage(tripleFaultSector, backend: backend, name: "triple.img")
        #expect(r.status == 204)
        #expect(r.message == "tandem: triple fault (status 204): vcpu0 at 0008:0x7c21 (prot32): ud2")
    }

    func readmeGuest(_ name: String) throws {
        let expected = try #require(readmeGuests[name])
        let r = runGuest(try guest(readmeImage(name)), backend: backend)
        #expect(r.output == expected)
        #expect(r.status == 0)
        #expect(r.message == nil)
    }

    func instructionsKVMCannotEmulate() throws {
        // mov al, 9; add al, 1; daa; out 0xF4, al  ->  0x10. On a PVM host KVM's emulator
        // stops on daa and the machine hands that one instruction to the interpreter.
        var r = try runImage([0xB0, 0x09, 0x04, 0x01, 0x27, 0xE6, 0xF4], backend: backend, name: "daa.img")
        #expect(r.status == 0x10)
        #expect(r.message == nil)
        // mov ax, 0x0F; aaa; out 0xF4, al  ->  AL = 5 (AH = 1, AF = CF = 1)
        r = try runImage([0xB8, 0x0F, 0x00, 0x37, 0xE6, 0xF4], backend: backend, name: "aaa.img")
        #expect(r.status == 0x05)
    }

    // MARK: Devices seen from a guest

    func serialEcho() throws {
        // 3 times: wait for LSR.DR, read RBR, add 1, write THR; then exit with 7.
        let code: [UInt8] = [
            0xB9, 0x03, 0x00, 0xBA, 0xFD, 0x03, 0xEC, 0xA8, 0x01, 0x74, 0xFB, 0xBA,
            0xF8, 0x03, 0xEC, 0xFE, 0xC0, 0xEE, 0xE2, 0xEF, 0xB0, 0x07, 0xE6, 0xF4,
        ]
        let r = try runImage(bootSector(code), backend: backend, name: "echo.img") { c in c.input = .bytes(Array("ABC".utf8)) }
        #expect(r.output == "BCD")
        #expect(r.status == 7)
    }

    func stringIO() throws {
        let code: [UInt8] = [
            0xFC, 0x31, 0xC0, 0x8E, 0xC0, 0xBF, 0x00, 0x06,   // cld; xor ax, ax; mov es, ax; mov di, 0x600
            0xBA, 0xF8, 0x03, 0xB9, 0x04, 0x00, 0xF3, 0x6C,   // mov dx, 0x3F8; mov cx, 4; rep insb
            0xBE, 0x00, 0x06, 0xBA, 0xE9, 0x00, 0xB9, 0x04,   // mov si, 0x600; mov dx, 0xE9; mov cx, 4
            0x00, 0xF3, 0x6E,                                 // rep outsb
            0xBA, 0xF4, 0x00, 0x66, 0xB8, 0xFE, 0x01, 0x00, 0x00, 0x66, 0xEF, // mov dx, 0xF4; mov eax, 0x1FE; out dx, eax
        ]
        let r = try runImage(bootSector(code), backend: backend, name: "strio.img") { c in c.input = .bytes(Array("WXYZ".utf8)) }
        #expect(r.output == "WXYZ")
        #expect(r.status == 0xFE)
    }

    func allOnes() throws {
        // in al, 0x81 (a DMA page register on PCs; nothing here); out 0xF4, al
        let port = try runImage(bootSector([0xE4, 0x81, 0xE6, 0xF4]), backend: backend, name: "in81.img")
        #expect(port.status == 0xFF)
        // elf64, 128 MiB of RAM: read the dword at 3 GiB (identity-mapped, no RAM there).
        let code: [UInt8] = [
            0xBB, 0x00, 0x00, 0x00, 0xC0,   // mov ebx, 0xC0000000
            0x8B, 0x03,                     // mov eax, [rbx]        -> 0xFFFFFFFF
            0xC1, 0xE8, 0x18,               // shr eax, 24           -> 0xFF
            0x2C, 0x01,                     // sub al, 1             -> 0xFE
            0xE6, 0xF4,                     // out 0xF4, al
        ]
        let memory = try runImage(ELFFile(entry: 0x200000, segments: [.init(at: 0x200000, code)]).bytes, backend: backend, name: "hole.elf")
        #expect(memory.status == 0xFE)
    }

    func bootstrapOnly() throws {
        let r = runGuest(try guest("hello-boot.bin"), backend: backend, cpus: 4)
        #expect(r.output == "Hello from real mode!\n")
        #expect(r.status == 0)
    }

    // MARK: Threads

    func threadNamesWhileRunning() throws {
        var c = MachineConfiguration(imagePath: try writeScratchFile(spinningELF64, name: "spin.elf"))
        c.backend = backend
        c.cpus = 4
        c.serial = .capture
        c.timeout = 30
        c.announceBackend = false
        let machine = try Machine(c)
        let outcome = Recorder<RunOutcome>()
        let runner = HostThread.spawn(name: "test-runner") { outcome.append(machine.run()) }
        var seen = Set<String>()
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            seen.formUnion(threadNames().filter { $0.hasPrefix("vcpu") })
            if (0..<4).allSatisfy({ seen.contains("vcpu\($0)") }) { break }
            usleep(5000)
        }
        machine.requestStop(.interrupted(signal: SIGINT))
        runner.join()
        #expect(seen.isSuperset(of: ["vcpu0", "vcpu1", "vcpu2", "vcpu3"]), "saw \(seen.sorted())")
        let o = try #require(outcome.all.first)
        #expect(o.status == 209)
        #expect(o.message == "tandem: interrupted by SIGINT (status 209): vcpu0 at 0008:0x200000 (long64): jmp 0x200000")
    }
}

/// The guest runs, one at a time: several vCPU threads spinning at once on a 2-core host
/// would slow each other down, and the resident-memory and thread-name checks look at
/// the whole process.
@Suite("Guests", .serialized)
struct GuestSuites {
    @Test("Guests/README.md: every \"## NAME output\" section gives an output, for a guest that is built")
    func readmeSections() throws {
        #expect(Set(readmeGuests.keys).isSuperset(of: ["smc", "bcd16", "exceptions32", "paging32", "paging64"]))
        for name in readmeGuests.keys {
            #expect(FileManager.default.fileExists(atPath: try guest(readmeImage(name))), "\(name)")
        }
    }
}

extension GuestSuites {
    @Suite("on KVM", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here: the guests are not run on KVM"))
    struct KVMGuestTests {
        let checks = GuestChecks(backend: .kvm)

        @Test("hello-boot.bin: real mode, COM1")
        func helloBoot() throws { try checks.helloBoot() }

        @Test("hello-bios.rom: reset vector, protected mode, port 0xE9")
        func helloBIOS() throws { try checks.helloBIOS() }

        @Test("hello-multiboot: the info structure with a command line and two modules",
              arguments: [("hello-multiboot.elf", 128 * MiB), ("hello-multiboot-aout.bin", 128 * MiB), ("hello-multiboot.elf", 5 * GiB)])
        func helloMultiboot(image: String, memory: UInt64) throws { try checks.helloMultiboot(image: image, memory: memory) }

        @Test("hello-multiboot without command line or modules")
        func helloMultibootBare() throws { try checks.helloMultibootBare() }

        @Test("hello-elf64: every CPU starts in long mode; output in index order", arguments: [1, 4])
        func helloELF64(cpus: Int) throws { try checks.helloELF64(cpus: cpus) }

        @Test("smp-counter: lock xadd is atomic across vCPUs, more vCPUs than host cores", arguments: [1, 8])
        func smpCounter(cpus: Int) throws { try checks.smpCounter(cpus: cpus) }

        // This host's CPL 0 emulator performs a LOCKed access that crosses a page as an
        // ordinary write, and retries a contended lock adc/sbb with a clobbered CF
        // (Documentation/HostLimitations.md): those counters may be off by a few.
        @Test("smp-locks: every LOCK-able form and width is atomic on 4 vCPUs (but the host emulator's known races)")
        func smpLocks() throws {
            try checks.smpLocks(cpus: 4, knownHostRaces: hostHasHardwareVirtualization() ? [] : ["d_cross", "w_adc", "d_sbb"])
        }

        @Test("smp-xmc: code patched by one vCPU while another runs it, across a page boundary too")
        func smpCrossModifyingCode() throws { try checks.smpCrossModifyingCode(cpus: 2) }

        @Test("loop32: EDX as computed on the host (the loop cut to 100,000 rounds where KVM emulates CPL 0 code)")
        func loop32() throws { try checks.loop32() }

        @Test("the other guests of Guests/README.md: exactly their documented output",
              arguments: readmeGuests.keys.sorted().filter { hostHasHardwareVirtualization() || !pvmDivergentGuests.contains($0) })
        func readmeGuest(name: String) throws { try checks.readmeGuest(name) }

        @Test("64 GiB of guest RAM: the guest sees it, the host does not pay for it")
        func bigMemory() throws { try checks.bigMemory() }

        @Test("the guest's status passes through the exit device, at any width")
        func guestStatus() throws { try checks.guestStatus() }

        @Test("a spinning guest stops at --timeout with status 206 and says where it was")
        func timeout() throws { try checks.timeout() }

        @Test("cli; hlt: every vCPU halted, status 0 and a line saying so", arguments: [1, 3])
        func allHalted(cpus: Int) throws { try checks.allHalted(cpus: cpus) }

        @Test("sti; hlt: halted with interrupts enabled but nothing to deliver one: status 0 too")
        func haltedWithInterruptsEnabled() throws { try checks.haltedWithInterruptsEnabled() }

        @Test("a triple fault stops with status 204, naming the vCPU and the instruction")
        func tripleFault() throws { try checks.tripleFault() }

        @Test("an instruction KVM's CPL 0 emulator lacks (daa, aaa) still runs")
        func instructionsKVMCannotEmulate() throws { try checks.instructionsKVMCannotEmulate() }

        @Test("COM1 input: a guest polls LSR.DR and reads RBR")
        func serialEcho() throws { try checks.serialEcho() }

        @Test("string I/O: rep insb from COM1, rep outsb to 0xE9, a 32-bit exit write")
        func stringIO() throws { try checks.stringIO() }

        @Test("unclaimed ports and unmapped memory read all ones inside a guest")
        func allOnes() throws { try checks.allOnes() }

        @Test("application processors of a non-elf64 guest wait; the bootstrap CPU runs alone")
        func bootstrapOnly() throws { try checks.bootstrapOnly() }

        @Test("every vCPU is a host thread named vcpuN")
        func threadNamesWhileRunning() throws { try checks.threadNamesWhileRunning() }

        @Test("a REP string instruction that would run for minutes stops at --timeout")
        func timeoutInsideRepString() throws { try checks.timeoutInsideRepString() }

        @Test("a non-canonical elf64 entry point: #GP on the first fetch, a triple fault (204)")
        func nonCanonicalEntry() throws { try checks.nonCanonicalEntry() }
    }

    @Suite("on the interpreter")
    struct InterpreterGuestTests {
        let checks = GuestChecks(backend: .interp)

        @Test("hello-boot.bin: real mode, COM1")
        func helloBoot() throws { try checks.helloBoot() }

        @Test("hello-bios.rom: reset vector, protected mode, port 0xE9")
        func helloBIOS() throws { try checks.helloBIOS() }

        @Test("hello-multiboot: the info structure with a command line and two modules",
              arguments: [("hello-multiboot.elf", 128 * MiB), ("hello-multiboot-aout.bin", 128 * MiB), ("hello-multiboot.elf", 5 * GiB)])
        func helloMultiboot(image: String, memory: UInt64) throws { try checks.helloMultiboot(image: image, memory: memory) }

        @Test("hello-multiboot without command line or modules")
        func helloMultibootBare() throws { try checks.helloMultibootBare() }

        @Test("hello-elf64: every CPU starts in long mode; output in index order", arguments: [1, 4])
        func helloELF64(cpus: Int) throws { try checks.helloELF64(cpus: cpus) }

        @Test("smp-counter: lock xadd is atomic across vCPUs, more vCPUs than host cores", arguments: [1, 8])
        func smpCounter(cpus: Int) throws { try checks.smpCounter(cpus: cpus) }

        @Test("smp-locks: every LOCK-able form and width is atomic on 4 and 8 vCPUs, three runs each",
              arguments: [4, 4, 4, 8, 8, 8])
        func smpLocks(cpus: Int) throws { try checks.smpLocks(cpus: cpus) }

        @Test("smp-xmc: code patched by one vCPU while another runs it, across a page boundary too, three runs each",
              arguments: [2, 2, 2, 4])
        func smpCrossModifyingCode(cpus: Int) throws { try checks.smpCrossModifyingCode(cpus: cpus) }

        @Test("loop32: EDX as computed on the host (the loop cut to 100,000 rounds where KVM emulates CPL 0 code)")
        func loop32() throws { try checks.loop32() }

        @Test("the other guests of Guests/README.md: exactly their documented output", arguments: readmeGuests.keys.sorted())
        func readmeGuest(name: String) throws { try checks.readmeGuest(name) }

        @Test("64 GiB of guest RAM: the guest sees it, the host does not pay for it")
        func bigMemory() throws { try checks.bigMemory() }

        @Test("the guest's status passes through the exit device, at any width")
        func guestStatus() throws { try checks.guestStatus() }

        @Test("a spinning guest stops at --timeout with status 206 and says where it was")
        func timeout() throws { try checks.timeout() }

        @Test("cli; hlt: every vCPU halted, status 0 and a line saying so", arguments: [1, 3])
        func allHalted(cpus: Int) throws { try checks.allHalted(cpus: cpus) }

        @Test("sti; hlt: halted with interrupts enabled but nothing to deliver one: status 0 too")
        func haltedWithInterruptsEnabled() throws { try checks.haltedWithInterruptsEnabled() }

        @Test("a triple fault stops with status 204, naming the vCPU and the instruction")
        func tripleFault() throws { try checks.tripleFault() }

        @Test("an instruction KVM's CPL 0 emulator lacks (daa, aaa) still runs")
        func instructionsKVMCannotEmulate() throws { try checks.instructionsKVMCannotEmulate() }

        @Test("COM1 input: a guest polls LSR.DR and reads RBR")
        func serialEcho() throws { try checks.serialEcho() }

        @Test("string I/O: rep insb from COM1, rep outsb to 0xE9, a 32-bit exit write")
        func stringIO() throws { try checks.stringIO() }

        @Test("unclaimed ports and unmapped memory read all ones inside a guest")
        func allOnes() throws { try checks.allOnes() }

        @Test("application processors of a non-elf64 guest wait; the bootstrap CPU runs alone")
        func bootstrapOnly() throws { try checks.bootstrapOnly() }

        @Test("every vCPU is a host thread named vcpuN")
        func threadNamesWhileRunning() throws { try checks.threadNamesWhileRunning() }

        @Test("a REP string instruction that would run for minutes stops at --timeout")
        func timeoutInsideRepString() throws { try checks.timeoutInsideRepString() }

        @Test("a non-canonical elf64 entry point: #GP on the first fetch, a triple fault (204)")
        func nonCanonicalEntry() throws { try checks.nonCanonicalEntry() }
    }
}
