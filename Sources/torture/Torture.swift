// Tools/torture: a reliability campaign against the `tandem` binary. It throws malformed
// images of every format, random CPL 0 instruction streams in every mode, hostile device
// use, random option values and signals at `tandem` on both backends, and fails on any
// crash (death by a signal, or a status outside the README's table), any run that lasts
// past its --timeout plus a second, and any peak RSS beyond the stated bound.
//
// It depends on nothing in Tandem: it only runs the binary, as a user would.
#if canImport(Glibc)
import Glibc
#endif

// MARK: Options

struct Options {
    var seconds = 60.0
    var seed: UInt64 = 1
    var tandem = ".build/release/tandem"
    var guests = ".build/guests"
    var keep = ".build/torture"
    var verbose = false

    static let usage = """
        usage: torture [--quick | --long | --seconds N] [--seed S] [--tandem PATH] [--guests DIR] [--keep DIR] [--verbose]
          --quick      a bounded campaign of about one minute (the default)
          --long       about 30 minutes
          --seconds N  about N seconds
          --seed S     the campaign's seed (the same seed gives the same cases)
          --tandem     the binary (default .build/release/tandem)
          --guests     the built guests, mutated into malformed images (default .build/guests)
          --keep       where failing cases are saved (default .build/torture)
        Exit status: 0 nothing failed, 1 a case failed (each is listed and saved), 2 usage.
        """

    init(_ arguments: [String]) {
        var i = 0
        func value() -> String {
            i += 1
            guard i < arguments.count else { fail(usage: "\(arguments[i - 1]) needs a value") }
            return arguments[i]
        }
        while i < arguments.count {
            switch arguments[i] {
            case "--quick": seconds = 60
            case "--long": seconds = 1800
            case "--seconds": guard let s = Double(value()), s > 0, s <= 1e6 else { fail(usage: "--seconds must be between 0 and 1000000") }; seconds = s
            case "--seed": guard let s = UInt64(value()) else { fail(usage: "--seed must be an unsigned integer") }; seed = s
            case "--tandem": tandem = value()
            case "--guests": guests = value()
            case "--keep": keep = value()
            case "--verbose": verbose = true
            case "-h", "--help": print(Self.usage); exit(0)
            default: fail(usage: "unknown argument \(arguments[i])")
            }
            i += 1
        }
    }
}

func fail(usage message: String) -> Never {
    let text = Array("torture: \(message)\n\(Options.usage)\n".utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

// MARK: Randomness

struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func pick<T>(_ choices: [T]) -> T { choices[below(choices.count)] }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

// MARK: Images

extension Array where Element == UInt8 {
    mutating func put16(_ v: UInt64, at o: Int) { for i in 0..<2 { self[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
    mutating func put32(_ v: UInt64, at o: Int) { for i in 0..<4 { self[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
    mutating func put64(_ v: UInt64, at o: Int) { put32(v, at: o); put32(v >> 32, at: o + 4) }
}

enum Image {
    /// Real mode at 0x7C00.
    static func boot(_ code: [UInt8]) -> [UInt8] {
        var b = code + [UInt8](repeating: 0xF4, count: Swift.max(0, 510 - code.count))
        if b.count == 510 { b += [0x55, 0xAA] }
        return b
    }

    /// A 64 KiB ROM: code at F000:0000, the reset vector jumping there.
    static func bios(_ code: [UInt8]) -> [UInt8] {
        var b = [UInt8](repeating: 0xF4, count: 64 << 10)
        b.replaceSubrange(0..<Swift.min(code.count, 0xFFF0), with: code.prefix(0xFFF0))
        b.replaceSubrange(0xFFF0..<0xFFF5, with: [0xEA, 0x00, 0x00, 0x00, 0xF0])
        return b
    }

    /// A Multiboot a.out-kludge kernel at 1 MiB: 32-bit protected mode, CPL 0.
    static func multiboot(_ code: [UInt8]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 32) + code
        let flags: UInt64 = 1 << 16
        b.put32(0x1BAD_B002, at: 0)
        b.put32(flags, at: 4)
        b.put32(0 &- (0x1BAD_B002 &+ flags), at: 8)
        b.put32(0x10_0000, at: 12)    // header_addr
        b.put32(0x10_0000, at: 16)    // load_addr
        b.put32(0, at: 20)            // load_end_addr: the whole file
        b.put32(0, at: 24)            // bss_end_addr
        b.put32(0x10_0020, at: 28)    // entry_addr
        return b
    }

    /// An ELF64 executable with one segment at 2 MiB: long mode, CPL 0.
    static func elf64(_ code: [UInt8], memorySize: UInt64? = nil) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 0x80) + code
        b.replaceSubrange(0..<8, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0])
        b.put16(2, at: 16); b.put16(62, at: 18); b.put32(1, at: 20)
        b.put64(0x20_0000, at: 24)                  // entry
        b.put64(64, at: 32)                         // phoff
        b.put16(64, at: 52); b.put16(56, at: 54); b.put16(1, at: 56); b.put16(64, at: 58)
        b.put32(1, at: 64); b.put32(7, at: 68)      // PT_LOAD, RWX
        b.put64(0x80, at: 72)                       // offset
        b.put64(0x20_0000, at: 80); b.put64(0x20_0000, at: 88)
        b.put64(UInt64(code.count), at: 96)
        b.put64(memorySize ?? UInt64(code.count), at: 104)
        b.put64(0x1000, at: 112)
        return b
    }

    /// Random damage: flipped bytes, rewritten header words, truncation or extension.
    static func mutate(_ image: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var b = image
        switch rng.below(5) {
        case 0:
            for _ in 0..<(1 + rng.below(8)) where !b.isEmpty { b[rng.below(b.count)] ^= UInt8(truncatingIfNeeded: 1 << rng.below(8)) }
        case 1:
            // A header word (the first 256 bytes hold every format's header) set to an edge value.
            let edges: [UInt64] = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0x1000, 0xFFFF_F000]
            for _ in 0..<(1 + rng.below(3)) where b.count >= 8 {
                let o = rng.below(Swift.min(b.count, 256) - 7)
                if rng.chance(50) { b.put32(rng.pick(edges), at: o) } else { b.put64(rng.pick(edges), at: o) }
            }
        case 2: b = Array(b.prefix(rng.below(b.count + 1)))
        case 3: b += rng.bytes(rng.pick([1, 100, 4096, 70_000]))
        default: b = rng.bytes(rng.pick([0, 1, 16, 512, 64 << 10, 70_000]))
        }
        return b
    }
}

/// CPL 0 code fragments for hostile device and memory use.
enum Hostile {
    /// Real mode: the UART and the debug console, flooded or polled forever.
    static let realMode: [(String, [UInt8], stdin: String)] = [
        ("THR flood", [0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xEB, 0xFD], "/dev/null"),
        ("0xE9 flood", [0xB0, 0x41, 0xE6, 0xE9, 0xEB, 0xFC], "/dev/null"),
        ("loopback flood", [0xBA, 0xFC, 0x03, 0xB0, 0x10, 0xEE, 0xBA, 0xF8, 0x03, 0xEE, 0xEB, 0xFD], "/dev/null"),
        ("LSR poll, stdin /dev/zero", [0xBA, 0xFD, 0x03, 0xEC, 0xEB, 0xFD], "/dev/zero"),
        ("RBR drain, stdin /dev/zero", [0xBA, 0xF8, 0x03, 0xEC, 0xE6, 0xE9, 0xEB, 0xFB], "/dev/zero"),
        ("rep insb from RBR", [0xFC, 0x31, 0xFF, 0x8E, 0xC7, 0xBF, 0x00, 0x10, 0xB9, 0xFF, 0xFF, 0xBA, 0xF8, 0x03, 0xF3, 0x6C, 0xEB, 0xF1], "/dev/zero"),
        ("rep outsb to THR", [0xFC, 0x31, 0xF6, 0x8E, 0xDE, 0xB9, 0xFF, 0xFF, 0xBA, 0xF8, 0x03, 0xF3, 0x6E, 0xEB, 0xF4], "/dev/null"),
        ("IIR/MSR/FCR churn", [0xBA, 0xFA, 0x03, 0xEC, 0xB0, 0x07, 0xEE, 0x42, 0x42, 0x42, 0x42, 0xEC, 0xEB, 0xF2], "/dev/zero"),
    ]

    /// Long mode: loads, stores and string copies at the edges of RAM, the 3 GiB hole,
    /// the APIC range, 4 GiB and the top of the address space.
    static func memoryEdges(_ rng: inout SplitMix64) -> [UInt8] {
        let edges: [UInt64] = [0x7FF_FFF8, 0x800_0000, 0xBFFF_FFF8, 0xC000_0000, 0xFEC0_0000, 0xFEE0_0000, 0xFFFF_FFF8,
                               0x1_0000_0000, 0xFFFF_FFFF_FFFF_FFF8, 0x7FFF_FFFF_FFF8, 0x8000_0000_0000]
        var code: [UInt8] = [0x48, 0xC7, 0xC4, 0x00, 0x00, 0x30, 0x00]   // mov rsp, 0x300000
        for _ in 0..<(1 + rng.below(4)) {
            let address = rng.pick(edges) &+ UInt64(rng.below(16)) &- 8
            code += [0x48, 0xBE] + le64(address)                            // mov rsi, address
            code += [0x48, 0xBF] + le64(address &+ UInt64(rng.below(64)))   // mov rdi, address'
            code += [0x48, 0xB9] + le64(UInt64(rng.pick([1, 2, 3, 17, 4096, 1 << 20, 1 << 40, UInt64.max])))   // mov rcx, n
            code += rng.pick([
                [0x48, 0x8B, 0x06],          // mov rax, [rsi]
                [0x48, 0x89, 0x07],          // mov [rdi], rax
                [0xF3, 0xA4],                // rep movsb
                [0xF3, 0x48, 0xA5],          // rep movsq
                [0xF3, 0xAA],                // rep stosb
                [0xF3, 0x48, 0xA7],          // repe cmpsq
                [0xF0, 0x48, 0x0F, 0xC1, 0x06],  // lock xadd [rsi], rax
            ])
        }
        return code + [0xB0, 0x00, 0xE6, 0xF4]   // mov al, 0; out 0xF4, al
    }

    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}

// MARK: Running one case

struct Case {
    var kind: String
    var arguments: [String]
    var image: [UInt8]? = nil
    var imageName = "image.img"
    var stdin = "/dev/null"
    /// --timeout given to tandem (the hang check allows one more second); nil: none given.
    var timeout: Double? = nil
    /// Sent after `signalAfter` seconds, if set.
    var signal: Int32? = nil
    var signalAfter = 0.0
    /// Statuses a guest may choose (random code can write anything to port 0xF4).
    var guestMayExit = false
    /// Guest RAM the case may touch, added to the RSS bound.
    var guestMemory: UInt64 = 128 << 20
}

struct Outcome {
    var exited: Int32?
    var signalled: Int32?
    var seconds: Double
    var maxRSS: UInt64
    var stderr: String
}

/// Documented statuses (README "Exit status"): 0-2 for diff/fuzz/check/conformance
/// verdicts and halting, 200-211 Tandem's own.
let documented: Set<Int32> = Set([0, 1, 2]).union(200...211)
/// Peak RSS allowed beyond the guest RAM a case may touch.
let rssBound: UInt64 = 256 << 20
/// A case without --timeout must end within this long.
let defaultLimit = 20.0

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { fail(usage: "cannot write \(path): \(String(cString: strerror(errno)))") }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { return out }
        out += buffer[0..<n]
    }
}

/// Spawns tandem (stdout, stderr to files), sends the case's signal, kills it at the hang
/// limit, and reaps it with wait4 for the exact status and peak RSS.
func runCase(_ c: Case, tandem: String, work: String) -> Outcome {
    var arguments = c.arguments
    if let image = c.image {
        let path = "\(work)/\(c.imageName)"
        writeFile(path, image)
        arguments.append(path)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 0, c.stdin, O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "\(work)/stdout", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, "\(work)/stderr", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    defer { posix_spawn_file_actions_destroy(&actions) }
    let argv = ([tandem] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let started = now()
    let result = posix_spawn(&pid, tandem, &actions, nil, argv, environ)
    guard result == 0 else { fail(usage: "cannot run \(tandem): \(String(cString: strerror(result)))") }
    let limit = (c.timeout ?? defaultLimit) + 1
    var signalSent = c.signal == nil
    var status: Int32 = 0
    var usage = rusage()
    while true {
        let r = wait4(pid, &status, WNOHANG, &usage)
        if r == pid { break }
        let elapsed = now() - started
        if !signalSent && elapsed >= c.signalAfter { kill(pid, c.signal!); signalSent = true }
        if elapsed > limit + 4 { kill(pid, SIGKILL) }   // a hang: reap it, the check below reports it
        usleep(2000)
    }
    let seconds = now() - started
    let stderr = String(decoding: readFile("\(work)/stderr") ?? [], as: UTF8.self)
    let exited = status & 0x7F == 0 ? (status >> 8) & 0xFF : nil
    let signalled = status & 0x7F != 0 ? status & 0x7F : nil
    return Outcome(exited: exited, signalled: signalled, seconds: seconds, maxRSS: UInt64(usage.ru_maxrss) << 10, stderr: stderr)
}

/// What is wrong with an outcome, if anything.
func problems(_ c: Case, _ o: Outcome) -> [String] {
    var found: [String] = []
    if let s = o.signalled { found.append("killed by signal \(s)\(s == SIGKILL ? " (a hang: still running past the limit)" : "")") }
    if let s = o.exited, !documented.contains(s) {
        // A guest's own status (port 0xF4) ends the run with nothing on stderr.
        if !(c.guestMayExit && o.stderr.isEmpty) { found.append("status \(s) is not in the documented table") }
    }
    let limit = (c.timeout ?? defaultLimit) + 1
    if o.seconds > limit { found.append(String(format2: o.seconds) + " s, past the limit of " + String(format2: limit) + " s") }
    if o.maxRSS > rssBound + c.guestMemory {
        found.append("peak RSS \(o.maxRSS >> 20) MiB, over the bound of \((rssBound + c.guestMemory) >> 20) MiB")
    }
    // Tandem's note when a vCPU thread ignored the stop (stdout here is a file: never blocked).
    if o.stderr.contains("(a vCPU thread had not stopped") { found.append("a vCPU thread did not stop when the run was stopped") }
    let lines = o.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
    if c.arguments.first == "run", lines.count > 1 || lines.contains(where: { !$0.hasPrefix("tandem: ") }) {
        found.append("stderr is not one line starting with 'tandem: '")
    }
    return found
}

extension String {
    init(format2 v: Double) { self = String((v * 100).rounded() / 100) }
}

// MARK: The campaign

struct Campaign {
    let options: Options
    var rng: SplitMix64
    let backends: [String]
    let guests: [(String, [UInt8])]
    var cases = 0
    var failures = 0
    var byKind: [String: Int] = [:]

    init(_ options: Options) {
        self.options = options
        rng = SplitMix64(state: options.seed)
        let kvmOpens = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if kvmOpens >= 0 { close(kvmOpens) }
        backends = kvmOpens >= 0 ? ["interp", "kvm"] : ["interp"]
        let names = ["hello-boot.bin", "hello-bios.rom", "hello-multiboot.elf", "hello-multiboot-aout.bin", "hello-elf64.elf", "smp-counter.elf", "paging64.elf", "tasks.bin"]
        guests = names.compactMap { name in readFile("\(options.guests)/\(name)").map { (name, $0) } }
    }

    static let formats = ["boot", "bios", "multiboot", "elf64"]

    /// The next case, round-robin over the kinds.
    mutating func makeCase(_ n: Int) -> Case {
        let backend = rng.pick(backends)
        let base = ["run", "--quiet", "--backend", backend]
        switch n % 6 {
        case 0:   // a malformed image of every format
            let format = rng.pick(Self.formats)
            let seed: [UInt8]
            var name = "image.img"
            if !guests.isEmpty && rng.chance(50) {
                let (guestName, bytes) = rng.pick(guests)
                seed = bytes
                name = guestName
            } else {
                let code = rng.bytes(rng.below(64))
                switch format {
                case "boot": seed = Image.boot(code)
                case "bios": seed = Image.bios(code); name = "image.rom"
                case "multiboot": seed = Image.multiboot(code); name = "image.elf"
                default: seed = Image.elf64(code, memorySize: rng.chance(20) ? rng.pick([0, 1 << 31, 1 << 40, UInt64.max]) : nil); name = "image.elf"
                }
            }
            let formatArguments = rng.chance(50) ? ["--format", format] : []
            return Case(kind: "malformed \(format) (\(backend))",
                        arguments: base + formatArguments + ["--serial", "none", "--timeout", "2", "--mem", rng.pick(["1M", "2M", "16M", "128M"])],
                        image: Image.mutate(seed, &rng), imageName: name, timeout: 2, guestMayExit: true)
        case 1:   // random instruction streams at CPL 0, in every mode
            let mode = rng.pick(["real16", "prot32", "long64"])
            let code = rng.bytes(16 + rng.below(512))
            let image: [UInt8], name: String
            switch mode {
            case "real16": image = Image.boot(Array(code.prefix(510))); name = "random.img"
            case "prot32": image = Image.multiboot(code); name = "random.elf"
            default:
                image = Image.elf64((rng.chance(50) ? [0x48, 0xC7, 0xC4, 0x00, 0x00, 0x30, 0x00] : []) + code); name = "random.elf"
            }
            return Case(kind: "random code \(mode) (\(backend))", arguments: base + ["--timeout", "1", "--mem", "64M"],
                        image: image, imageName: name, timeout: 1, guestMayExit: true, guestMemory: 64 << 20)
        case 2:   // hostile device use
            if rng.chance(60) {
                let (what, code, stdin) = rng.pick(Hostile.realMode)
                return Case(kind: "\(what) (\(backend))", arguments: base + ["--timeout", "1"] + (rng.chance(30) ? ["--serial", "none"] : []),
                            image: Image.boot(code), stdin: stdin, timeout: 1, guestMayExit: true)
            }
            let mem = rng.pick(["64M", "3G", "5G"])
            return Case(kind: "memory edges, --mem \(mem) (\(backend))", arguments: base + ["--timeout", "1", "--mem", mem],
                        image: Image.elf64(Hostile.memoryEdges(&rng)), imageName: "edges.elf", timeout: 1, guestMayExit: true,
                        guestMemory: 64 << 20)
        case 3:   // option fuzzing: run
            var arguments = ["run", "--quiet", "--timeout", "2"]
            for _ in 0..<(1 + rng.below(3)) { arguments += randomOption() }
            return Case(kind: "options: run", arguments: arguments, image: Image.boot([0xFA, 0xF4]), timeout: 2,
                        guestMemory: 256 << 20)
        case 4:   // option fuzzing: the other subcommands (kept short: no --timeout there)
            let sub = rng.pick([
                ["fuzz", "--count", rng.pick(["-1", "0", "1", "20", "99999999999", "x", "1e3"]), "--mode", rng.pick(["user64", "long64", "prot32", "real16", "bogus"])],
                ["fuzz", "--seed", rng.pick(["0", "-1", "18446744073709551615", "18446744073709551616"]), "--count", "5"],
                ["diff", "--steps", rng.pick(["0", "1", "1000", "-5", "99999999999999999999"]), "--mem", rng.pick(["1M", "8T", "0", "4095", "128M"])],
                ["conformance", "sst286", "--show", rng.pick(["-1", "0", "3", "9999999999999999999"]), "/nonexistent"],
                ["check", "--kvm-device", rng.pick(["/dev/null", "/nonexistent", "/dev/kvm"])],
            ])
            return Case(kind: "options: \(sub[0])", arguments: sub, image: sub[0] == "diff" ? Image.boot([0xFA, 0xF4]) : nil)
        default:   // signals, before and after the guest starts, on run, diff and fuzz
            let signal = rng.pick([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
            // From 30 ms on: before its main runs (a few ms: the dynamic linker loading the
            // Swift runtime), no program can handle a signal.
            let after = 0.03 + Double(rng.below(400)) / 1000
            let command = backends.count > 1 ? rng.pick(["run", "run", "diff", "fuzz"]) : "run"
            switch command {
            case "diff":
                return Case(kind: "signal: diff", arguments: ["diff", "--steps", "100000000"], image: Image.boot([0xEB, 0xFE]),
                            signal: signal, signalAfter: after)
            case "fuzz":
                return Case(kind: "signal: fuzz", arguments: ["fuzz", "--count", "100000000"], signal: signal, signalAfter: after)
            default:
                return Case(kind: "signal: run (\(backend))", arguments: base + ["--timeout", "10", "--cpus", rng.pick(["1", "4"])],
                            image: Image.elf64([0xEB, 0xFE]), imageName: "spin.elf", timeout: 10, signal: signal, signalAfter: after)
            }
        }
    }

    mutating func randomOption() -> [String] {
        let numbers = ["-1", "0", "1", "2", "255", "256", "257", "4096", "65536", "2147483648", "9223372036854775807",
                       "9223372036854775808", "18446744073709551615", "18446744073709551616", "1e3", "inf", "nan", "0x10", "", "x"]
        let sizes = ["0", "1", "4095", "1M", "1048577", "2M", "128M", "3G", "5G", "300G", "4T", "5T", "8T", "8388609T",
                     "18446744073709547520", "18446744073709551616", "16E", "1Q", "-1M", "1.5G"]
        switch rng.below(13) {
        case 0: return ["--cpus", rng.pick(numbers)]
        case 1: return ["--mem", rng.pick(sizes)]
        case 2: return ["--timeout", rng.pick(numbers + ["0.001", "1e9", "1e10", "-0"])]
        case 3: return ["--max-instructions", rng.pick(numbers)]
        case 4: return ["--trace", "/dev/null", "--trace-count", rng.pick(numbers)]
        case 5: return ["--trace", "/dev/null", "--trace-last", rng.pick(numbers)]
        case 6: return ["--trace", "/dev/null", "--trace-from", rng.pick(numbers)]
        case 7: return ["--trace", "/dev/null", "--trace-range", rng.pick(["0-ffffffffffffffff", "7c00-7dff", "x-y", "1-0", "-", "0x7c00-0x7c01", "10000000000000000-1"])]
        case 8: return ["--backend", rng.pick(["interp", "kvm", "auto", "bogus"])]
        case 9: return ["--serial", rng.pick(["none", "stdio", "file:/dev/full", "file:/dev/null", "file:", "file:/nonexistent/x", "tty"])]
        case 10: return ["--format", rng.pick(["auto", "boot", "bios", "multiboot", "elf64", "pe"])]
        case 11: return ["--timer-slack", rng.pick(["0", "1us", "0.5ms", "10ms", "100ms", "100.1ms", "1e3ms", "-1ms", "nanms", "infs", "5", "ms", "", "0.0000001us"])]
        default: return ["--kvm-device", rng.pick(["/dev/null", "/nonexistent", "/dev/zero", "/dev/kvm"])]
        }
    }

    mutating func run() -> Int32 {
        let work = "\(options.keep)/work"
        mkdir(options.keep, 0o755)
        mkdir(work, 0o755)
        let started = now()
        print("torture: seed \(options.seed), about \(Int(options.seconds)) s, backends \(backends.joined(separator: " ")), \(guests.count) guests to mutate")
        var n = 0
        while now() - started < options.seconds {
            let c = makeCase(n)
            n += 1
            let o = runCase(c, tandem: options.tandem, work: work)
            cases += 1
            byKind[String(c.kind.prefix { $0 != "(" && $0 != "," }).trimmingCharacters(), default: 0] += 1
            let found = problems(c, o)
            if options.verbose || !found.isEmpty {
                print("\(found.isEmpty ? "ok  " : "FAIL") #\(n) \(c.kind): \(c.arguments.joined(separator: " ")) -> \(o.exited.map { "status \($0)" } ?? "signal \(o.signalled ?? 0)"), \(String(format2: o.seconds)) s, \(o.maxRSS >> 20) MiB")
            }
            if !found.isEmpty {
                failures += 1
                let dir = "\(options.keep)/failure-\(options.seed)-\(n)"
                mkdir(dir, 0o755)
                if let image = c.image { writeFile("\(dir)/\(c.imageName)", image) }
                writeFile("\(dir)/stderr", Array(o.stderr.utf8))
                let command = ([options.tandem] + c.arguments + (c.image != nil ? ["\(dir)/\(c.imageName)"] : [])).map { "'\($0)'" }.joined(separator: " ")
                writeFile("\(dir)/command", Array("\(command) < \(c.stdin)\(c.signal.map { "  # then signal \($0) after \(c.signalAfter) s" } ?? "")\n".utf8))
                for p in found { print("     \(p)") }
                print("     saved in \(dir)")
            }
            fflush(nil)   // a long campaign's log is read while it runs
        }
        print("torture: \(cases) cases in \(String(format2: now() - started)) s, \(failures) failed; " +
              byKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        return failures == 0 ? 0 : 1
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

@main
enum Torture {
    static func main() {
        let options = Options(Array(CommandLine.arguments.dropFirst()))
        guard access(options.tandem, X_OK) == 0 else { fail(usage: "\(options.tandem) is not executable: build it first (swift build -c release)") }
        var campaign = Campaign(options)
        exit(campaign.run())
    }
}
