import Foundation
import Testing

/// `tandem run --reboot restart`: a reset (0xCF9, the i8042, a triple fault) starts the
/// guest again from its image in a fresh machine, with clean RAM, the CMOS RAM of the one
/// before and the same console. Guests/reboot.asm resets three times, a different way
/// each time, counting its boots in a CMOS byte, and checks each time that RAM is clean.
@Suite("tandem run --reboot", .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct RebootTests {
    static let allBoots = "reboot: boot 1\nreboot: boot 2\nreboot: boot 3\nreboot: boot 4, RAM clean after each reset\n"

    /// The engines to restart on: the interpreter, and where /dev/kvm opens KVM and the hybrid engine.
    static var engines: [String] { canOpenKVM() ? ["interp", "kvm", "hybrid"] : ["interp"] }

    @Test("--reboot restart: three resets (0xCF9, i8042, triple fault), four boots, RAM clean each time, the CMOS counter kept",
          arguments: engines, [1, 2])
    func restartsFourTimes(engine: String, cpus: Int) throws {
        let r = try runProcess(tandemBinary, ["run", "--backend", engine, "--cpus", "\(cpus)", "--timeout", "60",
                                              "--reboot", "restart", try guest("reboot.bin")])
        let notes = r.stderr.split(separator: "\n")
        #expect(notes.first?.hasPrefix("tandem: the guest reset the machine; restarting it (boot 2, --reboot restart)") == true, "\(r.stderr)")
        if engine == "kvm" {
            // PVM's kernel emulator delivers a real-mode interrupt without checking the IVT
            // limit (HostLimitations.md), so the third boot cannot triple-fault this way.
            #expect(r.status == 3, "\(r.stderr)")
            #expect(r.stdout == "reboot: boot 1\nreboot: boot 2\nreboot: boot 3\nreboot: int3 ignored the IVT limit\n")
            #expect(notes.count == 2, "one line per restart: \(r.stderr)")
            return
        }
        #expect(r.status == 42, "\(r.stderr)")
        #expect(r.stdout == Self.allBoots)
        #expect(notes.count == 3, "one line per restart: \(r.stderr)")
        #expect(notes.last?.hasPrefix("tandem: triple fault: vcpu0 at 0000:0x7c") == true, "\(r.stderr)")
        #expect(notes.last?.hasSuffix("int3; the machine resets; restarting it (boot 4, --reboot restart)") == true, "\(r.stderr)")
    }

    @Test("without --reboot restart, or with --reboot exit, a reset ends the run: status 212")
    func resetEndsTheRunByDefault() throws {
        let r = try runProcess(tandemBinary, ["run", "--backend", "interp", try guest("reboot.bin")])
        #expect(r.status == 212)
        #expect(r.stdout == "reboot: boot 1\n")
        let exit = try runProcess(tandemBinary, ["run", "--backend", "interp", "--reboot", "exit", try guest("reboot.bin")])
        #expect(exit.status == 212)
    }

    @Test("--quiet keeps the restarts silent; --serial file: keeps every boot's output in one file")
    func consoleFileContinues() throws {
        let path = scratchPath("reboot-console")
        try Data("old content\n".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--quiet", "--reboot", "restart",
                                              "--serial", "file:\(path)", try guest("reboot.bin")])
        #expect(r.status == 42, "\(r.stderr)")
        #expect(r.stderr == "")
        #expect(String(decoding: try readFileBytes(path), as: UTF8.self) == Self.allBoots, "truncated once, at the start of the run")
    }

    @Test("a guest that resets for ever restarts until --timeout (status 206), without growing")
    func resetLoopEndsAtTheTimeout() throws {
        // mov dx, 0xCF9; mov al, 6; out dx, al; hlt
        let image = try bootImage([0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, 0xF4], name: "reset-loop.img")
        var samples: [UInt64] = []
        let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--quiet", "--reboot", "restart", "--timeout", "4",
                                              "--mem", "64M", image]) { process in
            for _ in 0..<2 {
                sleep(1)
                samples.append(residentMemory(of: process.processIdentifier))
            }
            sleep(1)
            samples.append(residentMemory(of: process.processIdentifier))
        }
        #expect(r.status == 206, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("tandem: timeout after 4 s (status 206)"), "\(r.stderr)")
        // Each boot is a new machine: the old one (its RAM, threads, descriptors) must go.
        #expect(samples.count == 3 && samples[2] < samples[0] + (16 << 20), "resident memory \(samples)")
    }

    @Test("--reboot: bad values and the options it cannot go with are usage errors (200)")
    func usageErrors() throws {
        let image = try guest("reboot.bin")
        for arguments in [["--reboot", "again", image],
                          ["--reboot", "restart", "--gdb", "tcp:0", image],
                          ["--reboot", "restart", "--trace", scratchPath("reboot-trace"), image]] {
            let r = try runProcess(tandemBinary, ["run"] + arguments)
            #expect(r.status == 200, "\(arguments): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(arguments): \(r.stderr)")
        }
    }
}
