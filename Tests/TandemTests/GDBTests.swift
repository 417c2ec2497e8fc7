#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Machine
import Testing

/// The gdb stub (`--gdb`), driven by the real gdb (`gdb -batch` scripts) on both engines,
/// and at the protocol level by a raw socket. Every wait has a deadline: tandem runs with
/// `--timeout`, gdb is killed after a minute, socket reads give up after seconds.
@Suite("gdb stub", .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct GDBTests {
    static let gdbPath = "/usr/bin/gdb"

    /// gdb-target.elf's symbols (`nm`), as gdb prints addresses: 0x and 16 hex digits.
    static func symbols() throws -> [String: String] {
        let r = try runProcess("/usr/bin/nm", [try guest("gdb-target.elf")])
        var table: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 3 { table[String(f[2])] = "0x" + f[0] }
        }
        return table
    }

    /// `address` + `offset` as gdb prints it in frames (16 digits) or elsewhere (short).
    static func at(_ address: String, _ offset: UInt64 = 0, long: Bool = true) -> String {
        let value = UInt64(address.dropFirst(2), radix: 16)! + offset
        let digits = String(value, radix: 16)
        return "0x" + (long ? String(repeating: "0", count: 16 - digits.count) : "") + digits
    }

    @Test("an ELF guest: break at a symbol, step, registers, a watchpoint, memory and register writes, monitor, to the end",
          arguments: backends())
    func elfGuest(backend: BackendKind) throws {
        let session = try GDBSession(backend: backend, image: try guest("gdb-target.elf"))
        let out = try session.gdb(symbols: try guest("gdb-target.elf"), """
            break add_step
            continue
            info registers rip
            stepi
            x/i $pc
            print/x $rax
            print $eflags
            watch *(int*)&counter
            delete 1
            continue
            delete
            break done
            continue
            monitor phys on
            print *(int*)0x201000
            monitor phys off
            set var *(int*)&counter = 40
            hbreak report
            continue
            print $rax
            set $rax = 77
            monitor stats
            monitor info devices
            monitor xp 0x201000 4
            monitor engine kvm
            monitor engine
            monitor engine interp
            monitor frobnicate
            continue
            """)
        let sym = try Self.symbols()
        let addStep = sym["add_step"]!, short = Self.at(addStep, long: false)
        #expect(out.contains("Breakpoint 1, \(Self.at(addStep)) in add_step ()"), "\(out)")
        #expect(out.contains("rip            \(short)            \(short) <add_step>"), "\(out)")
        #expect(out.contains("=> \(Self.at(addStep, 5, long: false)) <add_step+5>:\tlock xadd %eax,"), "\(out)")
        #expect(out.contains("$1 = 0x3"), "\(out)")
        // The watchpoint stops after the write, with the old and the new value.
        #expect(out.contains("Hardware watchpoint 2: *(int*)&counter\n\nOld value = 0\nNew value = 3\n\(Self.at(addStep, 13)) in add_step ()"), "\(out)")
        #expect(out.contains(", \(Self.at(sym["done"]!)) in done ()"), "\(out)")
        // Physical access (identity paging: the same bytes), then the write gdb made is what RAX loads.
        #expect(out.contains("$3 = 15"), "\(out)")
        #expect(out.contains(", \(Self.at(sym["report"]!)) in report ()"), "\(out)")
        #expect(out.contains("$4 = 40"), "\(out)")
        #expect(out.contains("backend \(backend.rawValue), 1 vCPU, running for "), "\(out)")
        #expect(out.contains("\nvcpu0: long64 at 8:\(Self.at(sym["report"]!, long: false)), engine \(backend.rawValue)"), "\(out)")
        #expect(out.contains("0xf4: ExitDevice"), "\(out)")
        #expect(out.contains("0x201000: 28 00 00 00"), "\(out)")   // `counter`, the first word of .data
        // The stopped vCPU moves to KVM and back (an interpreter machine has KVM beside it
        // with --gdb where /dev/kvm opens); the rest of the session runs on the interpreter.
        if canOpenKVM() {
            #expect(out.components(separatedBy: "vcpu0: kvm\n").count == 3, "\(out)")   // moved, then asked
            #expect(out.contains("vcpu0: interp\n"), "\(out)")
        } else {
            #expect(out.contains("engine: this machine has no KVM to switch to"), "\(out)")
        }
        #expect(out.contains("unknown monitor command 'frobnicate'; try 'monitor help'"), "\(out)")
        // The register write reached the guest: it exits with RAX's low byte.
        #expect(out.contains("[Inferior 1 (Remote target) exited with code 0115]"), "\(out)")
        let end = try session.finish()
        #expect(end.status == 77, "\(end.stderr)")
        #expect(end.console == "gdb-target done\n")
    }

    @Test("monitor trace on/off while stopped, info devices with the devices' state, stats", arguments: backends())
    func monitorTraceDevicesStats(backend: BackendKind) throws {
        let image = try guest("gdb-target.elf")
        let session = try GDBSession(backend: backend, image: image)
        let steps = scratchPath("gdb-steps.bin"), rest = scratchPath("gdb-rest.jsonl")
        defer { for f in [steps, rest] { try? FileManager.default.removeItem(atPath: f) } }
        let out = try session.gdb(symbols: image, """
            break add_step
            continue
            monitor trace off
            monitor trace on \(steps) bin
            monitor trace on \(rest)
            stepi
            stepi
            monitor stats
            monitor trace off
            stepi
            monitor trace on \(rest) yaml
            monitor trace on \(rest) jsonl
            monitor info devices
            delete
            continue
            """)
        let sym = try Self.symbols()
        let addStep = UInt64(sym["add_step"]!.dropFirst(2), radix: 16)!
        #expect(out.contains("trace: no trace is being written"), "\(out)")
        #expect(out.contains("tracing to \(steps) (bin) from the next instruction"), "\(out)")
        #expect(out.contains("trace: already tracing to \(steps); 'monitor trace off' first"), "\(out)")
        #expect(out.contains(", tracing to \(steps) (bin)\nvcpu0: long64 at 8:"), "\(out)")
        #expect(out.contains("trace off: 2 records written to \(steps)"), "\(out)")
        #expect(out.contains("trace: the format is text, jsonl or bin, not 'yaml'"), "\(out)")
        #expect(out.contains("tracing to \(rest) (jsonl) from the next instruction"), "\(out)")
        // The device model's state: the firmware-default PIC, a programmed PIT channel 0
        // or not, the RTC, the bootstrap processor's APIC in virtual-wire mode, COM1.
        for line in ["  PIC master: vectors 0x", "  PIT channel 0: mode ", "  RTC: time registers ", "  LAPIC 0 (ID 0): xAPIC at 0xfee00000, ",
                     "LINT0 0x700, LINT1 0x400", "  IOAPIC (ID 1) at 0xfec00000", "  UART 0x3f8: divisor "] {
            #expect(out.contains(line), "\(line) in \(out)")
        }
        #expect(out.contains("[Inferior 1 (Remote target) exited with code 017]"), "\(out)")
        let end = try session.finish()
        #expect(end.status == 15, "\(end.stderr)")
        // The two steps, and nothing else, in the binary trace.
        let shown = try runProcess(tandemBinary, ["trace", "show", steps, "--format", "jsonl"])
        #expect(shown.status == 0, "\(shown.stderr)")
        let records = shown.stdout.split(separator: "\n")
        #expect(records.count == 2, "\(shown.stdout)")
        #expect(records.first?.contains("\"rip\":\"0x\(String(addStep, radix: 16))\"") == true, "\(shown.stdout)")
        #expect(records.last?.contains("\"rip\":\"0x\(String(addStep + 5, radix: 16))\"") == true, "\(shown.stdout)")
        // The second trace runs from where add_step returned (the third step: its `ret`)
        // to the guest's exit (the `out` to 0xF4).
        let returned = UInt64(sym["_start.loop"]!.dropFirst(2), radix: 16)! + 5
        let lines = String(decoding: try readFileBytes(rest), as: UTF8.self).split(separator: "\n")
        #expect(lines.first?.contains("\"rip\":\"0x\(String(returned, radix: 16))\"") == true, "\(lines.first ?? "")")
        #expect(lines.last?.contains("\"port\":\"0xf4\"") == true, "\(lines.last ?? "")")
    }

    @Test("a boot sector in real mode: i8086 disassembly, a breakpoint, steps, x87/SSE and control registers",
          arguments: backends())
    func realMode(backend: BackendKind) throws {
        let session = try GDBSession(backend: backend, image: try guest("hello-boot.bin"))
        let out = try session.gdb(symbols: nil, """
            show architecture
            x/3i $pc
            break *0x7c05
            continue
            stepi
            stepi
            info registers eip cs
            print $cr0
            print $ftag
            print $mxcsr
            print $xmm1.uint128
            set $xmm1.v4_int32[2] = 5
            print/x $xmm1.uint128
            continue
            """)
        #expect(out.contains("The target architecture is set to \"auto\" (currently \"i8086\")."), "\(out)")
        #expect(out.contains("=> 0x7c00:\tcli\n   0x7c01:\txor    %ax,%ax\n   0x7c03:\tmov    %ax,%ds"), "\(out)")
        #expect(out.contains("Breakpoint 1, 0x00007c05 in ?? ()\n0x00007c07 in ?? ()\n0x00007c09 in ?? ()"), "\(out)")
        #expect(out.contains("eip            0x7c09              0x7c09\ncs             0x0                 0"), "\(out)")
        #expect(out.contains("$1 = 16"), "\(out)")          // CR0.ET
        #expect(out.contains("$2 = 65535"), "\(out)")       // every x87 register empty
        #expect(out.contains("$3 = 8064"), "\(out)")        // MXCSR 0x1F80
        #expect(out.contains("$4 = 0"), "\(out)")
        #expect(out.contains("$5 = 0x50000000000000000"), "\(out)")
        #expect(out.contains("[Inferior 1 (Remote target) exited normally]"), "\(out)")
        let end = try session.finish()
        #expect(end.status == 0, "\(end.stderr)")
        #expect(end.console == "Hello from real mode!\n")
    }

    @Test("two vCPUs as two threads; gdb's Ctrl-C stops both; more breakpoints than KVM's debug registers",
          arguments: backends())
    func threadsAndInterrupt(backend: BackendKind) throws {
        let image = try guest("gdb-target.elf")
        let session = try GDBSession(backend: backend, image: image, cpus: 2)
        let out = try session.gdb(symbols: image, """
            info threads
            set var *(int*)&hold = 1
            python
            import threading, time
            # gdb's Ctrl-C: `interrupt` (which sends the stub 0x03) a second into the run.
            def _interrupt_later():
                time.sleep(1)
                gdb.post_event(lambda: gdb.execute("interrupt"))
            threading.Thread(target=_interrupt_later, daemon=True).start()
            end
            continue
            info threads
            set var *(int*)&hold = 0
            print *(int*)&counter
            break add_step
            break *0x200000
            break *0x200001
            break *0x200002
            break *0x200003
            break report
            continue
            print $rax
            continue
            """)
        #expect(out.contains("* 1    Thread 1 (vcpu0 (\(backend.rawValue), long64)) 0x0000000000200000 in _start ()\n  2    Thread 2 (vcpu1 (\(backend.rawValue), long64)) 0x0000000000200000 in _start ()"), "\(out)")
        #expect(out.contains("Thread 1 received signal SIGINT, Interrupt."), "\(out)")
        // vCPU 1 finished its part and halted; vCPU 0 was spinning on `hold`.
        let sym = try Self.symbols()
        #expect(out.contains("Thread 2 (vcpu1 (\(backend.rawValue), long64)) \(Self.at(sym["_start.park"]!, 2)) in _start.park ()"), "\(out)")
        #expect(out.contains("$1 = 30"), "\(out)")
        #expect(out.contains("Thread 1 hit Breakpoint 6, \(Self.at(sym["report"]!)) in report ()"), "\(out)")
        #expect(out.contains("$2 = 30"), "\(out)")
        #expect(out.contains("[Inferior 1 (Remote target) exited with code 036]"), "\(out)")
        let end = try session.finish()
        #expect(end.status == 30, "\(end.stderr)")
    }

    @Test("the protocol: acknowledgements, bad checksums, unknown packets, unmapped memory, kill (status 213)",
          arguments: backends())
    func protocolLevel(backend: BackendKind) throws {
        let session = try GDBSession(backend: backend, image: try guest("gdb-target.elf"))
        let link = try RawGDBLink(port: session.port)
        #expect(try link.exchange("qSupported:swbreak+;hwbreak+").contains("qXfer:features:read+"))
        #expect(try link.exchange("?") == "T05thread:1;")
        #expect(try link.exchange("qfThreadInfo") == "m1")
        #expect(try link.exchange("qXfer:features:read:target.xml:0,15") == "m<?xml version=\"1.0\"?>")
        // RIP is register 16 of the x86-64 layout; `g` holds every register (hex, 2 chars a byte).
        #expect(try link.exchange("p10") == "0000200000000000")
        #expect(try link.exchange("g").count == 2 * (16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8 + 7 * 8))
        #expect(try link.exchange("m200000,4") == "4883fe10")
        #expect(try link.exchange("m7ffffffff000,4") == "E14")  // not mapped by the identity tables
        #expect(try link.exchange("vFrobnicate") == "")
        #expect(try link.exchange("Z9,200000,1") == "")
        try link.sendRaw("$g#00")                                  // a bad checksum is refused
        #expect(try link.readByte() == UInt8(ascii: "-"))
        #expect(try link.exchange("P10=0100200000000000") == "OK")
        #expect(try link.exchange("p10") == "0100200000000000")
        try link.sendRaw("$k#6b")
        let end = try session.finish()
        #expect(end.status == 213, "\(end.stderr)")
        #expect(end.stderr.contains("tandem: killed by the debugger (status 213): vcpu0 at 0008:0x200001"), "\(end.stderr)")
    }

    @Test("--gdb values: status 200 and one line")
    func badOptions() throws {
        let image = try guest("gdb-target.elf")
        for (arguments, message) in [
            (["--gdb", "1234"], "tandem: --gdb '1234' must be tcp:[HOST:]PORT, e.g. tcp:1234 or tcp:127.0.0.1:1234 (HOST a numeric IPv4 address) (see 'tandem help')\n"),
            (["--gdb", "tcp:example.com:1"], "tandem: --gdb 'tcp:example.com:1' must be tcp:[HOST:]PORT, e.g. tcp:1234 or tcp:127.0.0.1:1234 (HOST a numeric IPv4 address) (see 'tandem help')\n"),
            (["--gdb-wait"], "tandem: --gdb-wait needs --gdb tcp:[HOST:]PORT (see 'tandem help')\n"),
        ] {
            let r = try runProcess(tandemBinary, ["run", "--backend", "interp"] + arguments + [image])
            #expect(r.status == 200, "\(arguments)")
            #expect(r.stderr == message, "\(arguments)")
        }
        // A port that is taken.
        let session = try GDBSession(backend: .interp, image: image)
        let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--gdb", "tcp:\(session.port)", image])
        #expect(r.status == 200)
        #expect(r.stderr == "tandem: --gdb tcp:127.0.0.1:\(session.port): cannot listen: Address already in use\n", "\(r.stderr)")
        // A gdb that goes away without detaching leaves the machine stopped for the next one.
        do {
            let first = try RawGDBLink(port: session.port)
            let addStep = try Self.symbols()["add_step"]!.dropFirst(2).drop { $0 == "0" }
            #expect(try first.exchange("Z0,\(addStep),1") == "OK")
        }
        usleep(300_000)
        let link = try RawGDBLink(port: session.port)
        #expect(try link.exchange("p10") == "0000200000000000", "still stopped at the entry point")
        try link.sendRaw("$D#44")
        let end = try session.finish()
        #expect(end.status == 15, "detached: the guest runs to its end, without the first gdb's breakpoint; \(end.stderr)")
    }
}

/// A `tandem run --gdb tcp:0 --gdb-wait` in the background, and gdb sessions against it.
private final class GDBSession {
    let process = Process()
    let port: UInt16
    let errPath = scratchPath("gdb-tandem-stderr")
    let consolePath = scratchPath("gdb-tandem-console")
    private let hangGuard: DispatchWorkItem

    init(backend: BackendKind, image: String, cpus: Int = 1) throws {
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: tandemBinary)
        process.arguments = ["run", "--backend", backend.rawValue, "--cpus", "\(cpus)", "--timeout", "90",
                             "--serial", "file:\(consolePath)", "--gdb", "tcp:0", "--gdb-wait", image]
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let pid = process.processIdentifier
        hangGuard = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 120, execute: hangGuard)
        // "tandem: gdb stub listening on tcp:127.0.0.1:PORT; ..." names the port it took.
        var found: UInt16? = nil
        for _ in 0..<500 where found == nil {
            let text = String(decoding: (try? readFileBytes(errPath)) ?? [], as: UTF8.self)
            if let range = text.range(of: "listening on tcp:127.0.0.1:") {
                found = UInt16(text[range.upperBound...].prefix { $0.isNumber })
            } else if !process.isRunning {
                break
            } else {
                usleep(20_000)
            }
        }
        guard let found else {
            process.terminate()
            throw GDBTestFailure("tandem did not start its gdb stub: \(String(decoding: (try? readFileBytes(errPath)) ?? [], as: UTF8.self))")
        }
        port = found
    }

    /// Runs `gdb -batch` with `commands` after `target remote`; its stdout and stderr.
    func gdb(symbols: String?, _ commands: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: GDBTests.gdbPath) else {
            throw GDBTestFailure("\(GDBTests.gdbPath) is missing: Tools/install-deps installs gdb")
        }
        let script = scratchPath("gdb-script")
        try ("set pagination off\nset confirm off\ntarget remote 127.0.0.1:\(port)\n" + commands + "\n").write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        let r = try runProcess(GDBTests.gdbPath, ["-batch", "-nx", "-x", script] + (symbols.map { [$0] } ?? []), killAfter: 60)
        return r.stdout + r.stderr
    }

    /// Waits (at most 30 s) for tandem to end: its status, stderr and console output.
    func finish() throws -> (status: Int32, stderr: String, console: String) {
        for _ in 0..<1500 where process.isRunning { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        hangGuard.cancel()
        defer {
            try? FileManager.default.removeItem(atPath: errPath)
            try? FileManager.default.removeItem(atPath: consolePath)
        }
        return (process.terminationStatus, String(decoding: try readFileBytes(errPath), as: UTF8.self),
                String(decoding: (try? readFileBytes(consolePath)) ?? [], as: UTF8.self))
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        hangGuard.cancel()
    }
}

struct GDBTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The remote protocol by hand, over a socket whose reads time out after 10 s.
private final class RawGDBLink {
    let fd: Int32

    init(port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw GDBTestFailure("cannot connect to port \(port)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func sendRaw(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw GDBTestFailure("send failed")
        }
    }

    func readByte() throws -> UInt8 {
        var byte: UInt8 = 0
        guard recv(fd, &byte, 1, 0) == 1 else { throw GDBTestFailure("no answer within 10 s") }
        return byte
    }

    /// Sends one packet and returns the reply's contents (after the stub's '+').
    func exchange(_ packet: String) throws -> String {
        let sum = packet.utf8.reduce(UInt8(0)) { $0 &+ $1 }
        try sendRaw("$\(packet)#\(String(format: "%02x", sum))")
        guard try readByte() == UInt8(ascii: "+") else { throw GDBTestFailure("packet \(packet) not acknowledged") }
        guard try readByte() == UInt8(ascii: "$") else { throw GDBTestFailure("no reply to \(packet)") }
        var body: [UInt8] = []
        while true {
            let b = try readByte()
            if b == UInt8(ascii: "#") { break }
            body.append(b)
        }
        _ = try readByte()
        _ = try readByte()
        try sendRaw("+")
        return String(decoding: body, as: UTF8.self)
    }
}

/// `Tools/guest-profile`: samples of guest RIPs through the gdb stub, put to the guest's
/// symbols.
@Suite("Tools/guest-profile", .enabled(if: haveBinary, "no .build/release/tandem: run `swift build -c release` first (Tools/test does)"))
struct GuestProfileTests {
    @Test("loop32's samples land in its loop (_start.l), and the run's output and status pass through")
    func loopProfile() throws {
        let image = try guest("loop32.elf")
        let r = try runProcess("\(repoRoot)/Tools/guest-profile",
                               ["--interval", "0.005", "--symbols", image, "--top", "3", "--", "--backend", "interp", image])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.hasPrefix("loop32 done edx=2c653f59\n"), "stdout: \(r.stdout)")
        // "guest-profile: N samples of 1 vCPU", then "PCT COUNT NAME" lines, the largest first.
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.hasPrefix("guest-profile: ") }, "stdout: \(r.stdout)")
        let samples = try #require(Int(header.split(separator: " ")[1]))
        #expect(samples >= 10 && header.hasSuffix(" samples of 1 vCPU"), "\(header)")
        let first = try #require(lines.firstIndex(of: header)).advanced(by: 1)
        let top = lines[first].split(separator: " ", omittingEmptySubsequences: true)
        #expect(top.last == "_start.l", "\(lines[first...])")
        // The loop is all but the start and the report: 8 × 10^7 instructions of ~200.
        #expect(Int(top[1]).map { Double($0) >= 0.9 * Double(samples) } == true, "\(lines[first...])")
    }

    @Test("bad arguments: a one-line error and status 2, nothing run")
    func badArguments() throws {
        for arguments in [["--interval", "0", "--", "x"], ["--top", "-1", "--", "x"], ["--", "--gdb", "tcp:1", "x"], ["--symbols", "/nonexistent", "--", "x"], []] {
            let r = try runProcess("\(repoRoot)/Tools/guest-profile", arguments)
            #expect(r.status == 2, "\(arguments): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "\(arguments): \(r.stderr)")
        }
    }
}
