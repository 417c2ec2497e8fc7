// Snapshots end to end: `tandem run --snapshot-on-exit` on one engine, `--restore` on
// either, and the guest's output is exactly the uninterrupted run's; bad files refused.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

private func tandem(_ arguments: [String]) throws -> ProcessResult {
    try runProcess(tandemBinary, arguments)
}

@Suite("Snapshots", .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct SnapshotTests {
    /// The engines a snapshot is taken on or restored on here.
    var engines: [String] { canOpenKVM() ? ["interp", "kvm"] : ["interp"] }

    /// A guest that stops itself halfway (status 7 through the exit device), with values in
    /// a general register and an XMM register that it prints after the stop; a second vCPU
    /// halts with interrupts off. Resumed, it prints "AB", then "two", and exits with 0.
    func stopAndGoGuest() throws -> String {
        try assembleELF64("""
        bits 64
        default rel
        section .text
        global _start
        _start:
                test rdi, rdi
                jnz .ap
                lea rsp, [stack_top]
                mov rax, cr4
                or rax, 0x600           ; OSFXSR, OSXMMEXCPT: SSE on
                mov cr4, rax
                mov r12, 'A'
                mov rax, 'B'
                movq xmm3, rax
                lea rsi, [one]
                call puts
                mov al, 7
                out 0xf4, al            ; the stop point: the snapshot is taken here
                mov al, r12b
                out 0xe9, al
                movq rax, xmm3
                out 0xe9, al
                mov al, 10
                out 0xe9, al
                lea rsi, [two]
                call puts
                xor eax, eax
                out 0xf4, al
        .ap:    cli
                hlt
                jmp .ap
        puts:   lodsb
                test al, al
                jz .done
                out 0xe9, al
                jmp puts
        .done:  ret
        section .data
        one:    db "one", 10, 0
        two:    db "two", 10, 0
        section .bss
                resb 4096
        stack_top:
        """, name: "stop-and-go")
    }

    @Test("a guest stopped at its own stop point on one engine continues on the other (and the same), 2 vCPUs")
    func guestStopPoint() throws {
        let image = try stopAndGoGuest()
        for from in engines {
            let snapshot = scratchPath("stop-\(from).snap")
            let first = try tandem(["run", "--backend", from, "--cpus", "2", "--timeout", "60", "--snapshot-on-exit", snapshot, image])
            #expect(first.status == 7, "\(from): \(first.stderr)")
            #expect(first.stdout == "one\n")
            for to in engines {
                let second = try tandem(["run", "--backend", to, "--timeout", "60", "--restore", snapshot])
                #expect(second.status == 0, "\(from) → \(to): \(second.stderr)")
                #expect(second.stdout == "AB\ntwo\n", "\(from) → \(to)")
            }
        }
    }

    /// Runs `image` whole on the interpreter, then stopped after each of `limits`
    /// instructions with a snapshot, resumed on every engine: the two parts' output must be
    /// the whole run's.
    func expectResumesExactly(_ image: String, cpus: Int, limits: [String]) throws {
        let machine = ["--cpus", "\(cpus)"]
        let whole = try tandem(["run", "--backend", "interp", "--timeout", "120"] + machine + [image])
        #expect(whole.status == 0)
        for limit in limits {
            let snapshot = scratchPath("mid-run-\(limit).snap")
            let first = try tandem(["run", "--backend", "interp", "--max-instructions", limit, "--snapshot-on-exit", snapshot] + machine + [image])
            #expect(first.status == 207, "\(limit): \(first.stderr)")
            for to in engines {
                let second = try tandem(["run", "--backend", to, "--timeout", "120", "--restore", snapshot])
                #expect(second.status == 0, "\(limit) → \(to): \(second.stderr)")
                #expect(first.stdout + second.stdout == whole.stdout, "\(limit) → \(to)")
            }
        }
    }

    @Test("a compiled C guest stopped mid-run by --max-instructions resumes on either engine with the uninterrupted run's output")
    func compiledGuestMidRun() throws {
        try expectResumesExactly(try guest("c-compute.elf"), cpus: 1, limits: ["20000", "60000", "100000"])
    }

    @Test("application processors waiting for INIT-SIPI-SIPI and the local APICs' IPIs and timers survive a snapshot (3 vCPUs)")
    func smpMidRun() throws {
        try expectResumesExactly(try guest("apic-ipi.elf"), cpus: 3, limits: ["500", "5000"])
    }

    @Test("a 3-vCPU guest stopped by --timeout on KVM while its processors boot resumes on either engine with the rest of its output",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func kvmTimeoutMidBoot() throws {
        let image = try guest("apic-ipi.elf")
        let whole = try tandem(["run", "--backend", "interp", "--cpus", "3", "--timeout", "60", image])
        #expect(whole.status == 0)
        for timeout in ["0.05", "0.2"] {
            let snapshot = scratchPath("kvm-\(timeout).snap")
            let first = try tandem(["run", "--backend", "kvm", "--cpus", "3", "--timeout", timeout, "--snapshot-on-exit", snapshot, image])
            #expect(first.status == 206 || first.status == 0, "\(first.stderr)")
            for to in engines {
                let second = try tandem(["run", "--backend", to, "--timeout", "60", "--restore", snapshot])
                #expect(second.status == 0, "\(timeout) → \(to): \(second.stderr)")
                #expect(first.stdout + second.stdout == whole.stdout, "\(timeout) → \(to)")
            }
        }
    }

    @Test("SIGUSR2 writes a snapshot while the guest runs on: the run's output is unchanged and the snapshot resumes with exactly the rest")
    func signal() throws {
        // 24 lines "line A\n" ... "line X\n", each after a busy loop (20 M instructions: about
        // 0.05 s translated, 0.15 s interpreted).
        let image = try assembleELF64("""
        bits 64
        section .text
        global _start
        _start:
                test rdi, rdi
                jnz .ap
                mov bl, 'A'
        .line:  mov ecx, 10000000
        .busy:  dec ecx
                jnz .busy
                mov al, 'l'
                out 0xe9, al
                mov al, 'i'
                out 0xe9, al
                mov al, 'n'
                out 0xe9, al
                mov al, 'e'
                out 0xe9, al
                mov al, ' '
                out 0xe9, al
                mov al, bl
                out 0xe9, al
                mov al, 10
                out 0xe9, al
                inc bl
                cmp bl, 'Y'
                jne .line
                xor eax, eax
                out 0xf4, al
        .ap:    cli
                hlt
                jmp .ap
        """, name: "lines")
        let expected = (UInt8(ascii: "A")...UInt8(ascii: "X")).map { "line \(Character(UnicodeScalar($0)))\n" }.joined()
        let snapshot = scratchPath("signal.snap"), copy = scratchPath("signal-copy.snap")
        // The signal goes once the guest has printed its first line (not after a fixed
        // delay: under load the start-up alone took longer, and the signal found no run).
        let outPath = scratchPath("signal-stdout")
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: outPath) }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let run = try runProcess(tandemBinary, ["run", "--backend", "interp", "--timeout", "120", "--snapshot-on-exit", snapshot, image],
                                 output: out) { process in
            for _ in 0..<6000 where process.isRunning && ((try? readFileBytes(outPath)) ?? []).isEmpty { usleep(5_000) }
            kill(process.processIdentifier, SIGUSR2)
            // The file is replaced when the run ends: keep the signal's.
            for _ in 0..<100 where !FileManager.default.fileExists(atPath: snapshot) { usleep(20_000) }
            _ = try? FileManager.default.copyItem(atPath: snapshot, toPath: copy)
        }
        try out.close()
        #expect(run.status == 0)
        #expect(String(decoding: try readFileBytes(outPath), as: UTF8.self) == expected)
        #expect(run.stderr.contains("tandem: snapshot written to \(snapshot) (SIGUSR2); the guest continues"), "\(run.stderr)")
        let resumed = try tandem(["run", "--backend", "interp", "--timeout", "120", "--restore", copy])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(!resumed.stdout.isEmpty && resumed.stdout.count < expected.count && expected.hasSuffix(resumed.stdout),
                "resumed: \(resumed.stdout.debugDescription)")
    }

    @Test("guest RAM is stored sparsely: an 8 GiB guest that touched little makes a small file")
    func sparseMemory() throws {
        let snapshot = scratchPath("big.snap")
        let run = try tandem(["run", "--backend", "interp", "--mem", "8G", "--snapshot-on-exit", snapshot, try guest("hello-elf64.elf")])
        #expect(run.status == 0)
        let size = try FileManager.default.attributesOfItem(atPath: snapshot)[.size] as? Int ?? 0
        #expect(size > 0 && size < 1 << 20, "\(size) bytes")
        let resumed = try tandem(["run", "--backend", "interp", "--restore", snapshot])
        #expect(resumed.status == 0 || resumed.status == 1, "\(resumed.stderr)")
    }

    @Test("bad snapshot files: status 214 and one line; options that describe another machine: status 200")
    func badFiles() throws {
        let image = try stopAndGoGuest()
        let good = scratchPath("good.snap")
        _ = try tandem(["run", "--backend", "interp", "--snapshot-on-exit", good, image])
        let bytes = try readFileBytes(good)
        #expect(bytes.count > 100)
        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x40
        var version = bytes
        version[8] = 99
        var magic = bytes
        magic[0] = UInt8(ascii: "X")
        let cases: [(String, [UInt8]?)] = [
            ("empty", []), ("header only", Array(bytes.prefix(16))), ("truncated", Array(bytes.prefix(bytes.count - 1))),
            ("one byte more", bytes + [0]), ("flipped bit", flipped), ("version 99", version), ("no magic", magic),
            ("missing", nil),
        ]
        for (what, content) in cases {
            let path = try content.map { try writeScratchFile($0, name: "bad.snap") } ?? scratchPath("missing.snap")
            let r = try tandem(["run", "--backend", "interp", "--restore", path])
            #expect(r.status == 214, "\(what): \(r.stderr)")
            #expect(r.stderr.hasPrefix("tandem: ") && r.stderr.split(separator: "\n").count == 1, "\(what): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(what)")
        }
        for extra in [["--cpus", "2"], ["--mem", "64M"], [image]] {
            let r = try tandem(["run", "--restore", good] + extra)
            #expect(r.status == 200, "\(extra): \(r.stderr)")
        }
        let unwritable = try tandem(["run", "--backend", "interp", "--snapshot-on-exit", "/nonexistent/dir/s.snap", image])
        #expect(unwritable.status == 211, "\(unwritable.stderr)")
        #expect(unwritable.stderr.contains("cannot write the snapshot"))
    }
}
