// swift-tools-version: 6.0
import PackageDescription

// One module per layer; each depends only on the layers below it.
//   X86 (CPU state, exits) · GuestMemory · Devices · Disassembler
//   Loaders (images into memory + initial CPU state) · Tracing (trace records, writer, readers;
//     the tracer for engines that cannot record themselves)
//   KVM (backend over /dev/kvm) · Interpreter (Capstone-decoding backend)
//   RunLoop (the one exit handler, the vCPU state machine's commands and states)
//   GDBStub (the gdb remote protocol; the all-stop control it asks of a machine)
//   VCPURuntime (the run loop: a machine's vCPU threads and the state machine each runs;
//     engine switching, the hybrid engine, parking vCPUs for the debugger and snapshots)
//   Machine (assembly: builds the VM — memory, devices, engines, the image — hands its
//     vCPUs to VCPURuntime and reports the run; snapshots, `tandem check`)
//   Conformance (hardware-captured test suites) · Differential (diff, fuzz, the fuzz sandbox)
//   tandem (command line)
// Documentation/Architecture.md draws the same picture.
let package = Package(
    name: "Tandem",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tandem", targets: ["tandem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CCapstone",
            pkgConfig: "capstone",
            providers: [.apt(["libcapstone-dev"])]
        ),
        .target(name: "CKVM"),
        .target(name: "CHostAtomics"),
        .target(name: "CHostX87"),
        // Guest SSE arithmetic on the host's SSE unit under the guest's MXCSR (see its header).
        .target(name: "CSSEHost", cSettings: [.unsafeFlags(["-msse4.2", "-mpopcnt"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "X86"),
        .target(name: "CHostOS"),
        .target(name: "HostOS", dependencies: ["CHostOS"]),
        .target(name: "GuestMemory"),
        .target(name: "Devices", dependencies: ["X86", "HostOS", "GuestMemory"]),
        .target(name: "Disassembler", dependencies: ["CCapstone", "X86", "HostOS"]),
        .target(name: "Loaders", dependencies: ["X86", "GuestMemory"]),
        // Traces: the binary record format, its writer thread, its readers and formatters.
        .target(
            name: "Tracing", dependencies: ["X86", "HostOS", "GuestMemory", "Disassembler"],
            // The recorder runs after every traced instruction, on its vCPU's thread only
            // (as the Interpreter's state does).
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        .target(
            name: "Interpreter",
            dependencies: ["CCapstone", "CHostAtomics", "CHostX87", "CSSEHost", "X86", "GuestMemory", "HostOS", "Disassembler", "Tracing"],
            // The vCPU's mode flags are class properties read on every instruction; each
            // vCPU is only ever used by its own thread, so dynamic exclusivity checks on
            // them buy nothing (measured: see Documentation/Interpreter.md).
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        .target(name: "KVM", dependencies: ["CKVM", "X86", "GuestMemory", "HostOS"]),
        // Exits answered once for everyone (run, diff, fuzz, conformance), and the vCPU commands.
        .target(name: "RunLoop", dependencies: ["X86", "Devices", "Tracing"]),
        .target(name: "Conformance", dependencies: ["CZlib", "X86", "GuestMemory", "RunLoop"]),
        // The gdb remote protocol over TCP, and the all-stop control it asks of a machine.
        .target(name: "GDBStub", dependencies: ["X86", "GuestMemory", "HostOS", "RunLoop"]),
        // The run loop: each vCPU's thread and state machine over the engines, written
        // against their concrete types (no protocol between the loop and what it reads).
        .target(
            name: "VCPURuntime",
            dependencies: ["X86", "GuestMemory", "Devices", "Disassembler", "KVM", "Interpreter", "HostOS", "Tracing", "RunLoop", "GDBStub"]
        ),
        .target(
            name: "Machine",
            dependencies: ["X86", "GuestMemory", "Devices", "Loaders", "KVM", "Interpreter", "HostOS", "Tracing", "RunLoop", "GDBStub", "VCPURuntime"]
        ),
        // Differential testing: KVM against the interpreter, instruction by instruction.
        .target(
            name: "Differential",
            dependencies: ["Machine", "VCPURuntime", "RunLoop", "X86", "GuestMemory", "Devices", "Disassembler", "Loaders", "KVM", "Interpreter", "HostOS"]
        ),
        .executableTarget(
            name: "tandem",
            dependencies: [
                "Machine",
                "Differential",
                "GDBStub",
                "RunLoop",
                "Tracing",
                "Conformance",
                "Interpreter",
                "KVM",
                "X86",
                "GuestMemory",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Tools/torture: the reliability campaign; it only runs the tandem binary.
        .executableTarget(name: "torture"),
        .testTarget(
            name: "TandemTests",
            dependencies: ["Machine", "VCPURuntime", "Differential", "GDBStub", "RunLoop", "X86", "GuestMemory", "Devices", "Loaders", "KVM", "Interpreter", "Disassembler", "HostOS", "Conformance", "Tracing"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
