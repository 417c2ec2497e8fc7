// Bad input, hostile guests and hostile surroundings: every case ends with a documented
// status and one line, never a crash, a hang or unbounded memory (README, "Limits").
#if canImport(Glibc)
import Glibc
#endif
import Conformance
import Devices
import Foundation
import GuestMemory
import Loaders
import Machine
import Testing

private let GiB: UInt64 = 1 << 30

/// out 0xE9, al; jmp back: prints 'A' forever.
private let printForever: [UInt8] = [0xB0, 0x41, 0xE6, 0xE9, 0xEB, 0xFC]
/// Reads LSR forever (which starts the stdin reader) and never takes a byte.
private let pollLSRForever: [UInt8] = [0xBA, 0xFD, 0x03, 0xEC, 0xEB, 0xFD]
/// jmp $
private let spin: [UInt8] = [0xEB, 0xFE]

/// A sparse file of `size` bytes (costs no disk), removed by the caller.
private func sparseFile(_ size: UInt64, name: String) -> String {
    let path = scratchPath(name)
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    #expect(ftruncate(fd, off_t(size)) == 0)
    close(fd)
    return path
}

private func fifo(_ name: String) throws -> String {
    let path = scratchPath(name)
    #expect(mkfifo(path, 0o600) == 0)
    return path
}

@Suite("Reliability: options, signals, files and output, end to end",
       .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct ReliabilityCLITests {
    @Test("every numeric option is range-checked: status 200 and one line, never a trap")
    func numericOptions() throws {
        let boot = try bootImage([0xF4])
        let cases: [([String], String)] = [
            (["run", "--mem", "8388609T", boot], "tandem: --mem 9223373136366403584 bytes is more than Tandem takes (4 TiB on the interpreter, 256 GiB on KVM)\n"),
            (["run", "--mem", "18446744073709547520", boot], "tandem: --mem 18446744073709547520 bytes is more than Tandem takes (4 TiB on the interpreter, 256 GiB on KVM)\n"),
            (["diff", "--mem", "8388609T", boot], "tandem: --mem 9223373136366403584 bytes is more than the kvm backend takes (256 GiB; the interpreter takes up to 4 TiB)\n"),
            (["run", "--backend", "kvm", "--mem", "8T", boot], "tandem: --mem 8796093022208 bytes is more than the kvm backend takes (256 GiB; the interpreter takes up to 4 TiB)\n"),
            (["run", "--timeout", "inf", boot], "tandem: --timeout must be a positive number of seconds, at most 1000000000 (see 'tandem help')\n"),
            (["run", "--timeout", "nan", boot], "tandem: --timeout must be a positive number of seconds, at most 1000000000 (see 'tandem help')\n"),
            (["run", "--max-instructions", "0", boot], "tandem: --max-instructions must be at least 1 (see 'tandem help')\n"),
            (["run", "--trace", scratchPath("t"), "--trace-count", "0", boot], "tandem: --trace-count must be at least 1 (see 'tandem help')\n"),
            (["run", "--trace", scratchPath("t"), "--trace-last", "9223372036854775807", boot], "tandem: --trace-last must be between 1 and 1000000 (see 'tandem help')\n"),
            (["diff", "--steps", "0", boot], "tandem: --steps must be at least 1 (see 'tandem help')\n"),
            (["fuzz", "--count=-1"], "tandem: --count must be between 1 and 1000000000, not -1 (see 'tandem help')\n"),
            (["conformance", "sst286", "--show=-1", scratchDirectory], "tandem: --show must be 0 or more, not -1 (see 'tandem help')\n"),
        ]
        for (arguments, message) in cases {
            let r = try runProcess(tandemBinary, arguments)
            #expect(r.status == 200, "\(arguments)")
            #expect(r.stderr == message, "\(arguments)")
        }
    }

    @Test("--backend auto gives a guest too large for KVM to the interpreter, and says why")
    func autoPassesOverKVMForLargeMemory() throws {
        let r = try runProcess(tandemBinary, ["run", "--mem", "300G", try bootImage([0xB0, 42, 0xE6, 0xF4])])
        #expect(r.status == 42)
        #expect(r.stderr == "tandem: --backend auto chose interp (--mem is more than the kvm backend takes (256 GiB))\n")
    }

    @Test("a guest printing to a closed pipe: status 211 and one line, not death by SIGPIPE")
    func closedPipe() throws {
        let pipe = Pipe()
        try pipe.fileHandleForReading.close()
        let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", try bootImage(printForever)], output: pipe.fileHandleForWriting)
        #expect(r.status == 211)
        #expect(r.stderr == "tandem: cannot write the guest's console to standard output: Broken pipe (status 211)\n")
    }

    @Test("a guest blocked writing to a pipe nobody reads still stops at --timeout")
    func unreadPipe() throws {
        let pipe = Pipe()   // its read end stays open and unread: the 64 KiB buffer fills
        let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--timeout", "1", try bootImage(printForever)],
                               output: pipe.fileHandleForWriting, killAfter: 20)
        #expect(r.status == 206)
        #expect(r.stderr == "tandem: timeout after 1 s (status 206): vcpu0 state unavailable\(Machine.notStoppedNote)\n")
        _ = pipe.fileHandleForReading
    }

    @Test("a full disk under --serial file: or --trace: status 211 and one line")
    func fullDisk() throws {
        let hello = try bootImage([0xB0, 0x41, 0xE6, 0xE9, 0xB0, 0x0A, 0xE6, 0xE9, 0xFA, 0xF4])   // "A\n", then cli; hlt
        let serial = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--serial", "file:/dev/full", hello])
        #expect(serial.status == 211)
        #expect(serial.stderr == "tandem: cannot write the guest's console to serial file /dev/full: No space left on device (status 211)\n")
        let trace = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--trace", "/dev/full", try bootImage(spin)])
        #expect(trace.status == 211)
        #expect(trace.stderr == "tandem: cannot write trace file /dev/full: No space left on device (status 211)\n")
    }

    @Test("with standard output closed, the guest's console does not land in the trace file")
    func closedStandardOutput() throws {
        let trace = scratchPath("trace.txt")
        let r = try runProcess("/bin/sh", ["-c", "exec \"$0\" run --quiet --backend interp --trace \"$1\" \"$2\" >&-", tandemBinary, trace, try guest("hello-boot.bin")])
        #expect(r.status == 211)
        #expect(r.stderr == "tandem: cannot write the guest's console to standard output: Bad file descriptor (status 211)\n")
        let traced = String(decoding: try readFileBytes(trace), as: UTF8.self)
        #expect(!traced.contains("Hello from real mode!"))
        #expect(traced.hasPrefix("vcpu0 #0 real"))
    }

    @Test("FIFOs are refused at once, never waited on: image, module, --serial file:, --trace")
    func fifos() throws {
        let hello = try guest("hello-boot.bin")
        let image = try fifo("image.img"), module = try fifo("module"), serial = try fifo("serial"), trace = try fifo("trace")
        let cases: [([String], Int32, String)] = [
            (["run", image], 201, "tandem: image \(image) is not a regular file\n"),
            (["run", "--module", "\(module) arg", try guest("hello-multiboot.elf")], 201, "tandem: module \(module) is not a regular file\n"),
            (["run", "--serial", "file:\(serial)", hello], 200, "tandem: cannot open serial file \(serial): No such device or address (a FIFO with no reader)\n"),
            (["run", "--trace", trace, hello], 200, "tandem: cannot open trace file \(trace): No such device or address (a FIFO with no reader)\n"),
        ]
        for (arguments, status, message) in cases {
            let r = try runProcess(tandemBinary, arguments, killAfter: 20)
            #expect(r.status == status, "\(arguments)")
            #expect(r.stderr == message, "\(arguments)")
        }
        // A conformance test file that is a FIFO is a failure to read, not a wait.
        let directory = scratchPath("sst286-fifo")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try #"{"opcodes": {"90": {"status": "normal", "arch": "86"}}}"#.write(toFile: directory + "/metadata.json", atomically: true, encoding: .utf8)
        #expect(mkfifo(directory + "/90.jsonl.gz", 0o600) == 0)
        let r = try runProcess(tandemBinary, ["conformance", "sst286", directory], killAfter: 20)
        #expect(r.status == 1)
        #expect(r.stdout.contains("0 passed, 1 failed"))
    }

    @Test("an image larger than RAM or than Tandem reads is refused before it is read")
    func hugeImages() throws {
        for (size, mem, message) in [(UInt64(2) << 30, "4G", "more than Tandem reads (1 GiB)"), (200 << 20, "128M", "more than the guest's 134217728 bytes of RAM")] {
            let path = sparseFile(size, name: "huge.elf")
            defer { unlink(path) }
            let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--mem", mem, path])
            #expect(r.status == 202)
            #expect(r.stderr == "tandem: image \(path) is \(size) bytes, \(message)\n")
        }
    }

    @Test("--timeout counts from the start: reading a 1 GiB image already takes longer than 10 ms")
    func timeoutBeforeTheGuestStarts() throws {
        let path = sparseFile(UInt64(MachineConfiguration.maxFileSize), name: "gigabyte.img")   // read whole
        defer { unlink(path) }
        let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--mem", "2G", "--timeout", "0.01", path])
        #expect(r.status == 206)
        #expect(r.stderr == "tandem: timeout after 0.01 s before the guest started (status 206)\n")
    }

    @Test("SIGTERM, SIGHUP, SIGQUIT stop `run` like SIGINT: status 209 and one line",
          arguments: [(SIGTERM, "SIGTERM"), (SIGHUP, "SIGHUP"), (SIGQUIT, "SIGQUIT")])
    func runSignals(_ signal: Int32, _ name: String) throws {
        let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--timeout", "60", try bootImage(spin)]) { process in
            usleep(500_000)
            kill(process.processIdentifier, signal)
        }
        #expect(r.status == 209)
        #expect(r.stderr == "tandem: interrupted by \(name) (status 209): vcpu0 at 0000:0x7c00 (real): jmp 0x7c00\n")
    }

    @Test("signals stop `diff` and `fuzz` with status 209 and one line", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"),
          arguments: [(SIGINT, "SIGINT"), (SIGQUIT, "SIGQUIT")])
    func diffAndFuzzSignals(_ signal: Int32, _ name: String) throws {
        let stop: (Process) -> Void = { process in
            usleep(700_000)
            kill(process.processIdentifier, signal)
        }
        let diff = try runProcess(tandemBinary, ["diff", "--steps", "100000000", try bootImage(spin)], whileRunning: stop)
        #expect(diff.status == 209)
        #expect(diff.stderr.hasPrefix("tandem: interrupted by \(name) (status 209) after "))
        #expect(diff.stderr.hasSuffix(" instructions compared\n"))
        let fuzz = try runProcess(tandemBinary, ["fuzz", "--count", "100000000"], whileRunning: stop)
        #expect(fuzz.status == 209)
        #expect(fuzz.stderr.split(separator: "\n").last?.hasPrefix("tandem: interrupted by \(name) (status 209) after ") == true)
        #expect(fuzz.stdout.hasPrefix("fuzz: mode user64, seed 1: "))
    }

    @Test("standard input from /dev/zero costs a 16-byte FIFO, not gigabytes (back-pressure)")
    func stdinBackPressure() throws {
        var peak: UInt64 = 0
        let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--timeout", "2", try bootImage(pollLSRForever)],
                               input: "/dev/zero") { process in
            while process.isRunning {
                peak = max(peak, residentMemory(of: process.processIdentifier))
                usleep(100_000)
            }
        }
        #expect(r.status == 206)
        #expect(peak > 0 && peak < 100 << 20, "peak resident memory \(peak >> 20) MiB")
    }
}

@Suite("Reliability: devices, memory, loaders, readers")
struct ReliabilityUnitTests {
    @Test("UART loopback: the receive FIFO holds 16 bytes; the 17th is lost and sets LSR.OE until LSR is read")
    func loopbackOverrun() throws {
        let uart = Serial16550(console: try Console(.capture), input: .none())
        let base = Serial16550.com1Base
        uart.portWrite(base + 4, size: 1, value: 0x10)   // MCR: loopback
        for i in 0..<17 { uart.portWrite(base, size: 1, value: UInt32(i)) }
        #expect(uart.portRead(base + 5, size: 1) == 0x63)   // THRE | TEMT | OE | DR
        #expect(uart.portRead(base + 5, size: 1) == 0x61)   // OE cleared by the read
        let received = (0..<16).map { _ in UInt8(uart.portRead(base, size: 1)) }
        #expect(received == Array(0..<16))
        #expect(uart.portRead(base + 5, size: 1) == 0x60)
    }

    @Test("fixed input enters the 16-byte FIFO as the guest makes room, in order")
    func inputThroughFIFO() {
        let input = ConsoleInput.bytes(Array(0..<100))
        #expect(!input.push(0xFF))   // full: 16 bytes are in the FIFO already
        var received: [UInt8] = []
        while let b = input.take() { received.append(b) }
        #expect(received == Array(0..<100))
    }

    @Test("a console write error is reported once and the console goes quiet")
    func consoleWriteError() throws {
        let reports = Recorder<String>()
        let console = try Console(.file("/dev/full")) { reports.append($0) }
        for b in Array("one\ntwo\n".utf8) { console.write(b) }
        console.flush()
        #expect(reports.all == ["cannot write the guest's console to serial file /dev/full: No space left on device"])
    }

    @Test("a guest whose console fails stops with status 211, also when only the final flush fails")
    func machineOutputError() throws {
        let forever = try runImage(bootSector(printForever), backend: .interp, name: "p.img") { $0.serial = .file("/dev/full") }
        #expect(forever.status == 211)
        #expect(forever.message == "tandem: cannot write the guest's console to serial file /dev/full: No space left on device (status 211)")
        // 'A' without a newline stays buffered until the machine stops: cli; hlt.
        let late = try runImage(bootSector([0xB0, 0x41, 0xE6, 0xE9, 0xFA, 0xF4]), backend: .interp, name: "a.img") { $0.serial = .file("/dev/full") }
        #expect(late.status == 211)
        #expect(late.message == "tandem: cannot write the guest's console to serial file /dev/full: No space left on device (status 211)")
    }

    @Test("guest RAM of 2^63 bytes or more is refused, not trapped on")
    func hugeMemoryMap() {
        // The part above 4 GiB (all but the low 3 GiB) is what cannot be mapped.
        for size: UInt64 in [1 << 63, UInt64.max - 4095] {
            #expect(throws: MemoryError.reserveFailed(size: size - PhysicalLayout.lowRAMLimit, errno: ENOMEM)) { try GuestMemoryMap(ramSize: size) }
        }
    }

    @Test("zero: only the partial pages at the ends are written; whole pages go back to the host")
    func zeroRange() throws {
        let m = try GuestMemoryMap(ramSize: 16 << 20)
        [UInt8](repeating: 0xAA, count: 5 * 4096).withUnsafeBytes { m.write(0x10000, from: $0) }
        #expect(m.zero(0x10000 + 100, count: 3 * 4096))
        // Before anything reads them (a read maps the host's shared zero page).
        #expect(residentPages(m.regions[0].host + 0x11000, 2 * 4096) == 0)
        #expect(m.bytes(at: 0x10000, count: 100) == [UInt8](repeating: 0xAA, count: 100))
        #expect(m.bytes(at: 0x10000 + 100, count: 3 * 4096).allSatisfy { $0 == 0 })
        #expect(m.bytes(at: 0x10000 + 100 + 3 * 4096, count: 4096) == [UInt8](repeating: 0xAA, count: 4096))
        #expect(!m.zero(m.ramSize - 10, count: 20))
    }

    @Test("an elf64 image with a 2 GiB .bss costs no host memory for it")
    func lazyBSS() throws {
        let m = try GuestMemoryMap(ramSize: 4 * GiB)
        let elf = ELFFile(entry: 0x200000, segments: [.init(at: 0x200000, [0xF4], memorySize: 2 * GiB)])
        _ = try Loader.load(elf.bytes, name: "bss.elf", as: .elf64, into: m)
        let resident = m.regions.filter { $0.kind == .ram }.reduce(0) { $0 + residentPages($1.host, $1.size) }
        #expect(resident < 4096, "\(resident) pages resident")
        #expect(m.read(0x200000, as: UInt8.self) == 0xF4)
        #expect(m.read(0x200001, as: UInt8.self) == 0)
        #expect(m.read(0x200000 + 2 * GiB - 1, as: UInt8.self) == 0)
    }

    @Test("gzip lines: a long line is searched once, not once per read")
    func longLines() throws {
        let long = [UInt8](repeating: 0x61, count: 4 << 20)
        let path = try writeScratchFile(long + Array("\nshort\n".utf8), name: "long.jsonl")
        #expect(try runProcess("/usr/bin/gzip", ["-f", path]).status == 0)
        var lines = try #require(GzipLines(path: path + ".gz"))
        defer { lines.close() }
        #expect(lines.next() == long)
        #expect(lines.next() == Array("short".utf8))
        #expect(lines.next() == nil)
        #expect(lines.bytesSearched <= long.count + 8)
    }
}
