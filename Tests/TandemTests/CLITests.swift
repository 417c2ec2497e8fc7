#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Machine
import Testing

private func tandem(_ arguments: String..., environment: [String: String]? = nil) throws -> ProcessResult {
    try runProcess(tandemBinary, arguments, environment: environment)
}


@Suite("tandem run, end to end",
       .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct CLITests {
    @Test("bad flags and values: status 200 and one line on stderr")
    func usageErrors() throws {
        let image = try bootImage([0xF4])
        let cases: [([String], String)] = [
            (["run", "--bogus", image], "tandem: Unknown option '--bogus'. Did you mean '--cpus'? (see 'tandem help')\n"),
            (["run", "--cpus", "x", image], "tandem: The value 'x' is invalid for '--cpus <cpus>' (see 'tandem help')\n"),
            (["run", "--mem", "12Q", image], "tandem: --mem '12Q' is not a size like 128M or 64G (see 'tandem help')\n"),
            (["run", "--mem", "1048577", image], "tandem: --mem 1048577 bytes is not a whole number of 4 KiB pages (see 'tandem help')\n"),
            (["run", "--serial", "tty", image], "tandem: --serial 'tty' must be stdio, file:PATH or none (see 'tandem help')\n"),
            (["run", "--timeout", "0", image], "tandem: --timeout must be a positive number of seconds, at most 1000000000 (see 'tandem help')\n"),
            (["run"], "tandem: Missing expected argument '<image>' (see 'tandem help')\n"),
            (["frob"], "tandem: Unexpected argument 'frob' (see 'tandem help')\n"),
            (["run", "--cpus", "0", image], "tandem: --cpus must be between 1 and 256, not 0\n"),
            (["run", "--cpus", "257", image], "tandem: --cpus must be between 1 and 256, not 257\n"),
            (["run", "--mem", "512K", image], "tandem: --mem 524288 bytes is too small: a guest needs at least 1 MiB\n"),
            (["run", "--serial", "file:/nonexistent-dir/out", image], "tandem: cannot open serial file /nonexistent-dir/out: No such file or directory\n"),
            (["run", "--cmdline", "a", "--append", "b", image], "tandem: --cmdline and --append are the same option (the kernel command line); give one (see 'tandem help')\n"),
            (["run", "--initrd", image, image], "tandem: --initrd is for Linux kernels, and \(image) is a boot image\n"),
        ]
        for (arguments, message) in cases {
            let r = try runProcess(tandemBinary, arguments)
            #expect(r.status == 200, "\(arguments)")
            #expect(r.stderr == message, "\(arguments)")
            #expect(r.stdout == "", "\(arguments)")
        }
    }

    @Test("help: status 0, every flag listed")
    func help() throws {
        let r = try tandem("help", "run")
        #expect(r.status == 0)
        for flag in ["--backend", "--cpus", "--mem", "--format", "--serial", "--timeout", "--max-instructions", "--stats", "--trace", "--trace-format", "--trace-exits", "--trace-range", "--trace-from", "--trace-count", "--trace-last", "--cmdline", "--append", "--initrd", "--module", "--kvm-device", "--quiet"] {
            #expect(r.stdout.contains(flag), "\(flag)")
        }
        #expect(r.stdout.contains("USAGE: tandem run ") && r.stdout.contains("<image>"))
        let words = r.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for status in ExitStatus.allCases {
            #expect(words.contains("\(status.rawValue) \(status.meaning)"), "exit status \(status.rawValue) documented")
        }
    }

    @Test("unreadable or malformed images: status 201")
    func badImages() throws {
        let empty = try writeScratchFile([], name: "empty.img")
        let truncated = try writeScratchFile([0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 32), name: "t.elf")
        let sector = try bootImage([0xF4], name: "x.rom")
        let cases: [([String], String)] = [
            (["run", "/nonexistent.img"], "tandem: cannot read image /nonexistent.img: No such file or directory\n"),
            (["run", scratchDirectory], "tandem: image \(scratchDirectory) is not a regular file\n"),
            (["run", empty], "tandem: \(empty) is empty\n"),
            (["run", truncated], "tandem: \(truncated) is not an executable (ELF type 0)\n"),
            (["run", "--format", "bios", sector], "tandem: \(sector) is 512 bytes: a BIOS ROM is 64, 128 or 256 KiB\n"),
        ]
        for (arguments, message) in cases {
            let r = try runProcess(tandemBinary, arguments)
            #expect(r.status == 201, "\(arguments)")
            #expect(r.stderr == message, "\(arguments)")
        }
        let module = try tandem("run", "--module", "/nonexistent-module arg", try guest("hello-multiboot.elf"))
        #expect(module.status == 201)
        #expect(module.stderr == "tandem: cannot read module /nonexistent-module: No such file or directory\n")
    }

    @Test("images that do not fit: status 202")
    func tooBig() throws {
        let big = try writeScratchFile([UInt8](repeating: 0x90, count: 70000), name: "big.img")
        let r = try tandem("run", big)
        #expect(r.status == 202)
        #expect(r.stderr == "tandem: \(big) is 70000 bytes: a raw boot image is at most 64 KiB (a BIOS ROM is 64, 128 or 256 KiB named *.rom or *.bin with a far jump at its reset vector)\n")
        let elf = try guest("hello-elf64.elf")
        let small = try tandem("run", "--mem", "1M", elf)
        #expect(small.status == 202)
        #expect(small.stderr.hasPrefix("tandem: \(elf): segment 0 at 0x200000-"))
        #expect(small.stderr.hasSuffix(" lies outside guest RAM (1 MiB)\n"))
    }

    @Test("a device that is not KVM: status 203")
    func notKVM() throws {
        let image = try bootImage([0xF4])
        let message = "tandem: KVM is unavailable: /dev/null is not a KVM device (KVM_GET_API_VERSION): Inappropriate ioctl for device\n"
        let r = try tandem("run", "--backend", "kvm", "--kvm-device", "/dev/null", image)
        #expect(r.status == 203)
        #expect(r.stderr == message)
        let env = try runProcess(tandemBinary, ["run", "--backend", "kvm", image], environment: ["TANDEM_KVM_DEVICE": "/dev/null"])
        #expect(env.status == 203)
        #expect(env.stderr == message)
    }

    @Test("--backend auto falls back to the interpreter and says why")
    func autoFallback() throws {
        let image = try bootImage([0xB0, 42, 0xE6, 0xF4])   // mov al, 42; out 0xF4, al
        let r = try tandem("run", "--kvm-device", "/dev/null", image)
        #expect(r.status == 42)
        #expect(r.stderr == "tandem: --backend auto chose interp (KVM is unavailable: /dev/null is not a KVM device (KVM_GET_API_VERSION): Inappropriate ioctl for device)\n")
    }

    @Test("--max-instructions: status 207 on the interpreter")
    func instructionLimit() throws {
        let spin = try bootImage([0xEB, 0xFE])
        let r = try tandem("run", "--backend", "interp", "--max-instructions", "5", spin)
        #expect(r.status == 207)
        #expect(r.stderr == "tandem: instruction limit reached (status 207): vcpu0 at 0000:0x7c00 (real): jmp 0x7c00\n")
    }

    @Test("--max-instructions is refused on KVM", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func instructionLimitOnKVM() throws {
        let r = try tandem("run", "--backend", "kvm", "--max-instructions", "5", try bootImage([0xEB, 0xFE]))
        #expect(r.status == 200)
        #expect(r.stderr == "tandem: --max-instructions needs a backend that counts instructions: use --backend interp\n")
    }

    @Test("--serial: stdio, file:PATH, none", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func serialSinks() throws {
        let image = try guest("hello-boot.bin")
        let stdio = try tandem("run", "--quiet", image)
        #expect(stdio.status == 0)
        #expect(stdio.stdout == "Hello from real mode!\n")
        #expect(stdio.stderr == "")

        let path = scratchPath("serial.txt")
        let file = try tandem("run", "--quiet", "--serial", "file:\(path)", image)
        #expect(file.status == 0)
        #expect(file.stdout == "")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "Hello from real mode!\n")

        let none = try tandem("run", "--quiet", "--serial", "none", image)
        #expect(none.status == 0)
        #expect(none.stdout == "")
    }

    @Test("the guest's exit status is tandem's", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func statusPassthrough() throws {
        let image = try bootImage([0xB0, 42, 0xE6, 0xF4])   // mov al, 42; out 0xF4, al
        let quiet = try tandem("run", "--quiet", image)
        #expect(quiet.status == 42)
        #expect(quiet.stderr == "")
        let chatty = try tandem("run", image)
        #expect(chatty.status == 42)
        // Hardware KVM: kvm; PVM-style KVM (no VMX/SVM): the interpreter.
        #expect(chatty.stderr == (hostHasHardwareVirtualization() ? "tandem: --backend auto chose kvm\n"
            : "tandem: --backend auto chose interp (KVM here runs only 64-bit user mode natively (no VMX/SVM), and the interpreter is faster than the hybrid engine: --backend hybrid puts user mode on KVM)\n"))
        let kvm = try tandem("run", "--backend", "kvm", image)
        #expect(kvm.status == 42)
        #expect(kvm.stderr == "")
    }

    @Test("--cmdline and --module reach a Multiboot kernel", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func multiboot() throws {
        let module = "\(try guest("hello-boot.bin")) x=1"
        let r = try tandem("run", "--quiet", "--mem", "64M", "--cmdline", "a b  c", "--module", module, try guest("hello-multiboot.elf"))
        #expect(r.status == 0)
        #expect(r.stdout == """
            multiboot: magic ok
            flags=0x0000024d
            mem_lower=640 KiB
            mem_upper=64512 KiB
            cmdline=a b  c
            mods_count=1
            module 0: size=512 cmdline=\(module)
            mmap: base=0x0000000000000000 length=0x00000000000e0000 type=1
            mmap: base=0x00000000000e0000 length=0x0000000000020000 type=2
            mmap: base=0x0000000000100000 length=0x0000000003f00000 type=1

            """)
    }

    @Test("timeout, triple fault, SIGINT: their statuses and one-line reports",
          .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"))
    func stops() throws {
        let spin = try bootImage([0xEB, 0xFE])
        let timeout = try tandem("run", "--quiet", "--timeout", "0.5", spin)
        #expect(timeout.status == 206)
        #expect(timeout.stderr == "tandem: timeout after 0.5 s (status 206): vcpu0 at 0000:0x7c00 (real): jmp 0x7c00\n")

        let interrupted = try runProcess(tandemBinary, ["run", "--quiet", "--timeout", "30", spin]) { process in
            usleep(500_000)
            process.interrupt()
        }
        #expect(interrupted.status == 209)
        #expect(interrupted.stderr == "tandem: interrupted by SIGINT (status 209): vcpu0 at 0000:0x7c00 (real): jmp 0x7c00\n")

        let halted = try tandem("run", "--quiet", try bootImage([0xFA, 0xF4]))
        #expect(halted.status == 0)
        #expect(halted.stderr == "tandem: all vCPUs halted with interrupts disabled; stopping with status 0\n")
    }
}
