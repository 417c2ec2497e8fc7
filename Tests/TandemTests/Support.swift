// Shared helpers for the test suite: the repository root, the guests (built once per
// test process with Tools/build-guests), synthetic images, and running a machine.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Devices
import GuestMemory
import KVM
import Loaders
import Machine
import Synchronization
import Testing
import X86

// MARK: Locations

/// The repository root: this file is <root>/Tests/TandemTests/Support.swift.
let repoRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A fresh directory under the system temporary directory, for one test process.
let scratchDirectory: String = {
    let template = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-tests.XXXXXX").path
    var bytes = Array(template.utf8CString)
    let made = bytes.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(made != nil, "mkdtemp \(template) failed: \(String(cString: strerror(errno)))")
    // Removed when the test process exits.
    atexit { try? FileManager.default.removeItem(atPath: scratchDirectory) }
    return String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}()

/// A unique path in the scratch directory ending in `name` (the name matters for `auto`).
func scratchPath(_ name: String) -> String {
    "\(scratchDirectory)/\(UUID().uuidString.prefix(8))-\(name)"
}

/// Writes `bytes` to a new scratch file named like `name` and returns its path.
func writeScratchFile(_ bytes: [UInt8], name: String) throws -> String {
    let path = scratchPath(name)
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

func readFileBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// The `tandem` binary `swift build -c release` (or `swift test -c release`) leaves behind.
let tandemBinary = "\(repoRoot)/.build/release/tandem"
let haveBinary = FileManager.default.isExecutableFile(atPath: tandemBinary)

// MARK: Guests

struct GuestBuildFailure: Error, CustomStringConvertible {
    var description: String
}

/// The guests of Guests/README.md, built once per test process into a scratch directory.
let builtGuests: Result<String, GuestBuildFailure> = {
    let out = "\(scratchDirectory)/guests"
    do {
        let result = try runProcess("\(repoRoot)/Tools/build-guests", [out])
        guard result.status == 0 else {
            return .failure(GuestBuildFailure(description: "Tools/build-guests exited \(result.status): \(result.stderr)"))
        }
        return .success(out)
    } catch {
        return .failure(GuestBuildFailure(description: "cannot run Tools/build-guests: \(error)"))
    }
}()

/// The path of a built guest, e.g. `guest("hello-boot.bin")`.
func guest(_ name: String) throws -> String {
    try "\(builtGuests.get())/\(name)"
}

// MARK: Host

/// True when /dev/kvm opens and speaks the expected API version.
func canOpenKVM() -> Bool {
    (try? KVMDevice()) != nil
}

/// True when the host CPU advertises VMX or SVM (KVM then runs CPL 0 code natively;
/// on PVM hosts it is the kernel's slow instruction emulator).
/// The backends to run a guest on: the interpreter, and KVM when it opens and `kvm`
/// says this host's KVM gets the behaviour right. Where /dev/kvm does not open, the KVM
/// case is left out here and the "on KVM" guest suite reports the skip with its reason.
func backends(kvm: Bool = true) -> [BackendKind] {
    kvm && canOpenKVM() ? [.interp, .kvm] : [.interp]
}

func hostHasHardwareVirtualization() -> Bool {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
    return text.split(separator: "\n").contains { line in
        line.hasPrefix("flags") && line.split(separator: " ").contains { $0 == "vmx" || $0 == "svm" }
    }
}

/// A process's resident set size in bytes (VmRSS in /proc/PID/status): this process's by
/// default; 0 for a process that is gone.
func residentMemory(of pid: Int32? = nil) -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/\(pid.map(String.init) ?? "self")/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kib = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) })
    else { return 0 }
    return kib << 10
}

/// How many of the 4 KiB pages of `size` bytes at `address` are resident (mincore(2)).
func residentPages(_ address: UnsafeMutableRawPointer, _ size: UInt64) -> Int {
    let pages = Int((size + 4095) / 4096)
    var vector = [UInt8](repeating: 0, count: pages)
    guard mincore(address, Int(size), &vector) == 0 else { return -1 }
    return vector.reduce(0) { $0 + Int($1 & 1) }
}

/// The names of this process's threads (/proc/self/task/*/comm).
func threadNames() -> [String] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { task in
        (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

// MARK: Running a machine

struct GuestRun {
    /// Everything the guest wrote to COM1 and port 0xE9.
    var output: String
    /// The same, byte for byte.
    var outputBytes: [UInt8] = []
    /// The exit status `tandem run` would give.
    var status: Int32
    /// The line `tandem run` would print on stderr (nil: none).
    var message: String?
}

/// Builds a `Machine` for `path` and runs it to its end, as `tandem run` would, with the
/// console captured. A machine that cannot be built gives the status and message of
/// its `MachineError`.
func runGuest(
    _ path: String, backend: BackendKind = .kvm, cpus: Int = 1, memory: UInt64 = 128 << 20,
    timeout: Double = 60, configure: (inout MachineConfiguration) -> Void = { _ in },
    prepare: (Machine) -> Void = { _ in }
) -> GuestRun {
    var c = MachineConfiguration(imagePath: path)
    c.backend = backend
    c.cpus = cpus
    c.memorySize = memory
    c.serial = .capture
    c.input = .none()
    c.timeout = timeout
    c.announceBackend = false
    configure(&c)
    let machine: Machine
    do { machine = try Machine(c) } catch {
        return GuestRun(output: "", status: error.status.rawValue, message: error.description)
    }
    prepare(machine)
    let outcome = machine.run()
    return GuestRun(output: machine.capturedOutput, outputBytes: machine.devices.console.captured,
                    status: outcome.status, message: outcome.message)
}

/// Writes `bytes` to a scratch file and runs it (see `runGuest`).
func runImage(
    _ bytes: [UInt8], backend: BackendKind = .kvm, name: String, cpus: Int = 1, memory: UInt64 = 128 << 20,
    timeout: Double = 60, configure: (inout MachineConfiguration) -> Void = { _ in }
) throws -> GuestRun {
    let path = try writeScratchFile(bytes, name: name)
    return runGuest(path, backend: backend, cpus: cpus, memory: memory, timeout: timeout, configure: configure)
}

/// Assembles a 64-bit guest into an elf64 image linked as the guests in Guests/ are.
func assembleELF64(_ source: String, name: String) throws -> String {
    let asm = try writeScratchFile(Array(source.utf8), name: "\(name).asm")
    let object = scratchPath("\(name).o"), image = scratchPath("\(name).elf")
    let nasm = try runProcess("/usr/bin/env", ["nasm", "-f", "elf64", "-o", object, asm])
    guard nasm.status == 0 else { throw GuestBuildFailure(description: "nasm: \(nasm.stderr)") }
    let ld = try runProcess("/usr/bin/env", ["ld", "-m", "elf_x86_64", "-T", "\(repoRoot)/Guests/ld/elf64.ld", "-nostdlib",
                                             "--build-id=none", "-z", "noexecstack", "-o", image, object])
    guard ld.status == 0 else { throw GuestBuildFailure(description: "ld: \(ld.stderr)") }
    return image
}

// MARK: Processes

struct ProcessResult {
    var status: Int32
    var stdout: String
    var stdoutBytes: [UInt8] = []
    var stderr: String
}

/// Runs `executable` with `arguments` and waits for it; stdout and stderr go through
/// scratch files (no pipe can fill up), stdin is /dev/null. `input` replaces stdin with a
/// file, `output` stdout (its text then reads empty). A process still running after
/// `killAfter` seconds (a hang) is killed with SIGKILL, which the caller sees as status 9.
func runProcess(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
    input: String? = nil, output: FileHandle? = nil, killAfter: Double = 120,
    whileRunning: (Process) -> Void = { _ in }
) throws -> ProcessResult {
    let outPath = scratchPath("stdout"), errPath = scratchPath("stderr")
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }
    let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = output ?? out
    process.standardError = err
    process.standardInput = try input.map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) } ?? FileHandle.nullDevice
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    try process.run()
    let pid = process.processIdentifier
    let guardHang = DispatchWorkItem { kill(pid, SIGKILL) }
    DispatchQueue.global().asyncAfter(deadline: .now() + killAfter, execute: guardHang)
    defer { guardHang.cancel() }
    whileRunning(process)
    process.waitUntilExit()
    try out.close()
    try err.close()
    let stdoutBytes = try readFileBytes(outPath)
    return ProcessResult(
        status: process.terminationStatus,
        stdout: String(decoding: stdoutBytes, as: UTF8.self),
        stdoutBytes: stdoutBytes,
        stderr: String(decoding: try readFileBytes(errPath), as: UTF8.self))
}

// MARK: Synthetic images

/// Little-endian byte-array building.
extension Array where Element == UInt8 {
    mutating func append16(_ v: UInt16) { for i in 0..<2 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt16(i)))) } }
    mutating func append32(_ v: UInt32) { for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    mutating func append64(_ v: UInt64) { for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }

    mutating func put32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }

    mutating func put64(_ v: UInt64, at offset: Int) {
        for i in 0..<8 { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    func padded(to count: Int, with byte: UInt8 = 0) -> [UInt8] {
        self + [UInt8](repeating: byte, count: Swift.max(0, count - self.count))
    }
}

/// A minimal ELF executable: the header, one program header per segment, an optional
/// blob right after the program headers (a Multiboot header), then each segment's bytes.
struct ELFFile {
    struct Segment {
        var physicalAddress: UInt64
        var virtualAddress: UInt64
        var data: [UInt8]
        var memorySize: UInt64

        init(at address: UInt64, _ data: [UInt8], memorySize: UInt64? = nil, virtualAddress: UInt64? = nil) {
            physicalAddress = address
            self.virtualAddress = virtualAddress ?? address
            self.data = data
            self.memorySize = memorySize ?? UInt64(data.count)
        }
    }

    var is64 = true
    var machine: UInt16 = 62
    var entry: UInt64
    var segments: [Segment]
    var blob: [UInt8] = []

    static let header64 = 64, programHeader64 = 56, header32 = 52, programHeader32 = 32

    var programHeaderOffset: Int { is64 ? Self.header64 : Self.header32 }
    var programHeaderSize: Int { is64 ? Self.programHeader64 : Self.programHeader32 }
    /// File offset of the blob.
    var blobOffset: Int { programHeaderOffset + segments.count * programHeaderSize }

    var bytes: [UInt8] {
        var dataOffsets: [Int] = []
        var offset = blobOffset + blob.count
        for s in segments {
            offset = (offset + 15) & ~15
            dataOffsets.append(offset)
            offset += s.data.count
        }
        var b: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, is64 ? 2 : 1, 1, 1, 0]
        b = b.padded(to: 16)
        b.append16(2)              // ET_EXEC
        b.append16(machine)
        b.append32(1)              // EV_CURRENT
        if is64 {
            b.append64(entry)
            b.append64(UInt64(programHeaderOffset))
            b.append64(0)          // no section headers
            b.append32(0)
            b.append16(UInt16(Self.header64))
            b.append16(UInt16(Self.programHeader64))
            b.append16(UInt16(segments.count))
            b.append16(64)         // shentsize
            b.append16(0)
            b.append16(0)
        } else {
            b.append32(UInt32(entry))
            b.append32(UInt32(programHeaderOffset))
            b.append32(0)
            b.append32(0)
            b.append16(UInt16(Self.header32))
            b.append16(UInt16(Self.programHeader32))
            b.append16(UInt16(segments.count))
            b.append16(40)
            b.append16(0)
            b.append16(0)
        }
        for (s, fileOffset) in zip(segments, dataOffsets) {
            if is64 {
                b.append32(1)      // PT_LOAD
                b.append32(7)      // RWX
                b.append64(UInt64(fileOffset))
                b.append64(s.virtualAddress)
                b.append64(s.physicalAddress)
                b.append64(UInt64(s.data.count))
                b.append64(s.memorySize)
                b.append64(0x1000)
            } else {
                b.append32(1)
                b.append32(UInt32(fileOffset))
                b.append32(UInt32(s.virtualAddress))
                b.append32(UInt32(s.physicalAddress))
                b.append32(UInt32(s.data.count))
                b.append32(UInt32(s.memorySize))
                b.append32(7)
                b.append32(0x1000)
            }
        }
        b += blob
        for (s, fileOffset) in zip(segments, dataOffsets) {
            b = b.padded(to: fileOffset) + s.data
        }
        return b
    }
}

/// A Multiboot v1 header: magic, flags, checksum, then (for the a.out kludge)
/// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
func multibootHeader(flags: UInt32, checksumError: UInt32 = 0, aout: (header: UInt32, load: UInt32, loadEnd: UInt32, bssEnd: UInt32, entry: UInt32)? = nil) -> [UInt8] {
    var b: [UInt8] = []
    b.append32(0x1BAD_B002)
    b.append32(flags)
    b.append32(0 &- (0x1BAD_B002 &+ flags) &+ checksumError)
    if let a = aout {
        for v in [a.header, a.load, a.loadEnd, a.bssEnd, a.entry] { b.append32(v) }
    }
    return b
}

/// A one-sector boot image file (see `bootSector`); returns its path.
func bootImage(_ code: [UInt8], name: String = "guest.img") throws -> String {
    try writeScratchFile(bootSector(code), name: name)
}

/// A raw boot image: `code` at 0x7C00, padded to a 512-byte sector with the signature.
func bootSector(_ code: [UInt8]) -> [UInt8] {
    precondition(code.count <= 510)
    return code.padded(to: 510) + [0x55, 0xAA]
}

/// A 64 KiB `bios` image: `code` at offset 0 (linear 0xF0000) and `jmp far F000:0000`
/// at the reset vector.
func biosROM(_ code: [UInt8] = [0xFA, 0xF4], size: Int = 64 << 10) -> [UInt8] {
    var rom = code.padded(to: size, with: 0xFF)
    let vector = size - 16
    for (i, b) in [0xEA, 0x00, 0x00, 0x00, 0xF0].enumerated() { rom[vector + i] = UInt8(b) }
    return rom
}

/// Thread-safe accumulation from @Sendable callbacks.
final class Recorder<T: Sendable>: Sendable {
    private let values = Mutex<[T]>([])
    func append(_ v: T) { values.withLock { $0.append(v) } }
    var all: [T] { values.withLock { $0 } }
}

func hex(_ v: some BinaryInteger, width: Int) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, width - s.count)) + s
}

/// Runs one nasm fragment twice, as the x87/SSE/BMI tests compare the interpreter with this
/// machine's CPU: natively, as a Linux process that writes its results to stdout, and as an
/// elf64 guest on the interpreter that writes them to port 0xE9. `body` is included as
/// body.inc and `data` as data.inc (in .data) on both sides; `bss` declares `results` (and
/// whatever else the body uses); the results are the bytes from `results` on, their count
/// put in a register by `length(register)` (RSI already holds `results`). `guestPrologue`
/// runs first in the guest (after its stack is set). Returns the native process's output
/// and the guest's run; the callers assert on both.
func runNativeAndOnInterpreter(
    name: String, body: String, data: String, bss: String, guestPrologue: String = "",
    length: (String) -> String, configure: (inout MachineConfiguration) -> Void = { _ in }
) throws -> (native: ProcessResult, guest: GuestRun) {
    let include = scratchPath(name)
    try FileManager.default.createDirectory(atPath: include, withIntermediateDirectories: true)
    try body.write(toFile: include + "/body.inc", atomically: true, encoding: .utf8)
    try data.write(toFile: include + "/data.inc", atomically: true, encoding: .utf8)
    // The host program: write(1, results, length), exit(0).
    let hostSource = try writeScratchFile(Array("""
    bits 64
    default rel
    section .text
    global _start
    _start:
    %include "body.inc"
            lea rsi, [results]
            \(length("rdx"))
            mov eax, 1
            mov edi, 1
            syscall
            mov eax, 60
            xor edi, edi
            syscall
    section .data
    %include "data.inc"
    section .bss
    \(bss)
    """.utf8), name: "\(name)-host.asm")
    let object = scratchPath("\(name)-host.o"), program = scratchPath("\(name)-host")
    #expect(try runProcess("/usr/bin/env", ["nasm", "-f", "elf64", "-I\(include)/", "-o", object, hostSource]).status == 0)
    #expect(try runProcess("/usr/bin/env", ["ld", "-o", program, object]).status == 0)
    let native = try runProcess(program, [])
    // The guest: the same body, the results out through port 0xE9.
    let guestImage = try assembleELF64("""
    bits 64
    default rel
    section .text
    global _start
    _start:
            lea rsp, [stack_top]
    \(guestPrologue)
    %include "\(include)/body.inc"
            lea rsi, [results]
            \(length("rcx"))
            mov dx, 0xe9
            rep outsb
            mov al, 0
            out 0xf4, al
    section .data
    %include "\(include)/data.inc"
    section .bss
    \(bss)
            resb 4096
    stack_top:
    """, name: "\(name)-guest")
    return (native, runGuest(guestImage, backend: .interp, configure: configure))
}

/// A machine configured as on a host where /dev/kvm does not open: its CPUID offers all
/// the interpreter implements instead of the part KVM can also run (XSAVE, which this
/// project's PVM hosts do not support, is offered only then).
func withoutKVM(_ c: inout MachineConfiguration) {
    c.kvmDevicePath = "/nonexistent/kvm"
}

/// Whether /proc/cpuinfo lists every one of `flags` (Linux's names) for this CPU.
func hostCPUHas(_ flags: [String]) -> Bool {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return false }
    let have = Set(line.split(separator: " ").map(String.init))
    return flags.allSatisfy(have.contains)
}

extension CPUState {
    /// Real mode with every segment at 0, at the boot sector's 0x7C00, SP = `stack`.
    static func bootSector(stack: UInt64) -> CPUState {
        var s = CPUState()
        s.cs = .realMode(0, code: true)
        s.ds = .realMode(0); s.es = .realMode(0); s.ss = .realMode(0); s.fs = .realMode(0); s.gs = .realMode(0)
        s.rip = 0x7C00
        s[.rsp] = stack
        s.cr0 = CR0.et
        return s
    }
}
