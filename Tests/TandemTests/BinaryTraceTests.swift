// Binary traces (--trace-format bin) and `tandem trace show|grep|convert`: the binary
// trace carries what the JSONL trace does, filters select what they say, damaged files
// end in one line and status 201.
import Foundation
import Machine
import Testing
import Tracing

@Suite("Binary traces")
struct BinaryTraceTests {
    /// Runs `name` with a trace in `format` and returns the file's path.
    func traced(_ name: String, _ format: TraceFormat, cpus: Int = 1, tag: String = "",
                configure: (inout MachineConfiguration) -> Void = { _ in }) throws -> String {
        var options = TraceOptions(path: scratchPath("\(name)\(tag).\(format.rawValue)"))
        options.format = format
        let run = runGuest(try guest(name), backend: .interp, cpus: cpus) {
            $0.trace = options
            configure(&$0)
        }
        #expect(run.status == 0, "\(name): \(run.message ?? "")")
        return options.path
    }

    /// The lines a binary trace converts to.
    func converted(_ path: String, _ format: TraceFormat, filter: TraceFilter = TraceFilter()) throws -> [String] {
        let file = try TraceFile(path: path)
        let formatter = TraceFormatter(format, fieldNames: file.fieldNames)
        var lines: [String] = []
        try file.forEachRecord { record in
            if filter.matches(record, formatter) { lines.append(formatter.line(record)) }
            return true
        }
        return lines
    }

    func lines(_ path: String) throws -> [String] {
        String(decoding: try readFileBytes(path), as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @Test("bin → JSONL and text equal the direct JSONL and text traces of the same run",
          arguments: ["hello-boot.bin", "exceptions32.elf", "hello-bios.rom", "paging64.elf", "c-compute.elf", "v86.bin", "tasks.bin"])
    func roundTrip(name: String) throws {
        let bin = try traced(name, .bin)
        let jsonl = try lines(try traced(name, .jsonl))
        #expect(jsonl.count > 40)
        #expect(try converted(bin, .jsonl) == jsonl)
        #expect(try converted(bin, .text) == (try lines(try traced(name, .text))))
    }

    @Test("the flight recorder (--trace-last N) writes exactly the last N records of the full trace of the same failing run",
          arguments: [("exceptions32.elf", 3000), ("paging32.elf", 3000), ("longmode-switch.bin", 3000), ("pit-rtc.bin", 3000),
                      ("c-compute.elf", 3000), ("smc.elf", 3000), ("v86.bin", 40), ("tasks.bin", 40), ("hello-boot.bin", 30)])
    func flightRecorderTail(name: String, limit: Int) throws {
        // --max-instructions makes the run fail (status 207) before the guest ends (past
        // the long guests' mode switches and exceptions); --clock instructions makes the
        // timer interrupts land on the same instructions in both runs.
        func run(_ format: TraceFormat, last: Int?) throws -> [String] {
            var options = TraceOptions(path: scratchPath("\(name)-flight-\(last ?? 0).\(format.rawValue)"))
            options.format = format
            options.last = last
            let run = runGuest(try guest(name), backend: .interp) {
                $0.trace = options
                $0.clock = .instructions
                $0.maxInstructions = UInt64(limit)
            }
            #expect(run.status == 207, "\(name): \(run.message ?? "")")
            return format == .bin ? try converted(options.path, .jsonl) : try lines(options.path)
        }
        let full = try run(.jsonl, last: nil)
        for last in [1, 7, 777, 5000] {
            #expect(try run(.jsonl, last: last) == Array(full.suffix(last)), "\(name), limit \(limit), last \(last)")
            #expect(try run(.bin, last: last) == Array(full.suffix(last)), "\(name), limit \(limit), last \(last), bin")
        }
    }

    @Test("timer interrupts (--clock instructions) land in the same place in both traces")
    func roundTripWithInterrupts() throws {
        let instructions: (inout MachineConfiguration) -> Void = { $0.clock = .instructions }
        let bin = try converted(try traced("apic-ipi.elf", .bin, configure: instructions), .jsonl)
        let jsonl = try lines(try traced("apic-ipi.elf", .jsonl, configure: instructions))
        #expect(jsonl.contains { $0.contains("\"type\":\"interrupt\",\"kind\":\"external\"") })
        #expect(bin == jsonl)
    }

    @Test("several vCPUs: each vCPU's records are all there, in its own order")
    func multipleVCPUs() throws {
        let path = try traced("smp-counter.elf", .bin, cpus: 4)
        var last: [Int: UInt64] = [:]
        var count: [Int: Int] = [:]
        try TraceFile(path: path).forEachRecord { record in
            if case .instruction(let i) = record {
                if let previous = last[i.vcpu] { #expect(i.seq > previous) } else { #expect(i.seq == 0) }
                last[i.vcpu] = i.seq
                count[i.vcpu, default: 0] += 1
            }
            return true
        }
        #expect(Set(count.keys) == [0, 1, 2, 3])
        // One record per retired instruction: the run's own count (--stats) says how many.
        if haveBinary {
            let bin = scratchPath("smp-stats.bin")
            let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--cpus", "4", "--stats", "--trace", bin, "--trace-format", "bin", try guest("smp-counter.elf")])
            #expect(r.status == 0)
            let retired = r.stderr.split(separator: " ").firstIndex(of: "instructions").map { r.stderr.split(separator: " ")[$0 - 1] }
            var records = 0
            try TraceFile(path: bin).forEachRecord { if case .instruction = $0 { records += 1 }; return true }
            #expect(retired.map { String($0) } == String(records), "\(r.stderr)")
        }
    }

    @Test("--trace-count caps the records of all vCPUs together; --trace-range and --trace-from apply")
    func recordingFilters() throws {
        let counted = try traced("smp-counter.elf", .bin, cpus: 4, tag: "-count") { $0.trace?.count = 1000 }
        #expect(try converted(counted, .jsonl).count == 1000)
        let ranged = try converted(try traced("hello-boot.bin", .bin, tag: "-range") { $0.trace?.range = 0x7C00...0x7C10 }, .text)
        #expect(!ranged.isEmpty)
        #expect(ranged.allSatisfy { $0.contains("0000:0x7c0") || $0.contains("0000:0x7c10") })
        let from = try converted(try traced("hello-boot.bin", .bin, tag: "-from") { $0.trace?.from = 5; $0.trace?.count = 10 }, .text)
        #expect(from.count == 10)
        #expect(from.first?.hasPrefix("vcpu0 #5 ") == true)
    }

    @Test("filters: RIP range, mnemonic, vCPU and record kind select exactly the matching records")
    func filters() throws {
        let path = try traced("exceptions32.elf", .bin)
        let all = try converted(path, .jsonl)
        func objects(_ lines: [String]) throws -> [[String: Any]] {
            try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        }
        var f = TraceFilter()
        f.kinds = ["exception"]
        let exceptions = try objects(try converted(path, .jsonl, filter: f))
        #expect(!exceptions.isEmpty)
        #expect(exceptions.count == all.filter { $0.hasPrefix("{\"type\":\"exception\"") }.count)
        f = TraceFilter()
        f.mnemonics = ["div"]
        let divs = try objects(try converted(path, .jsonl, filter: f))
        #expect(!divs.isEmpty)
        #expect(divs.allSatisfy { ($0["asm"] as? String)?.hasPrefix("div ") == true })
        #expect(divs.count == all.filter { $0.contains("\"asm\":\"div ") }.count)
        f = TraceFilter()
        f.rip = 0x100000...0x100020
        let ranged = try objects(try converted(path, .jsonl, filter: f))
        #expect(!ranged.isEmpty)
        #expect(ranged.allSatisfy { UInt64(($0["rip"] as! String).dropFirst(2), radix: 16).map { (0x100000...0x100020).contains($0) } == true })
        f = TraceFilter()
        f.vcpus = [1]
        #expect(try converted(path, .jsonl, filter: f).isEmpty)
        f.vcpus = [0]
        f.kinds = ["insn"]
        #expect(try converted(path, .jsonl, filter: f).count == all.filter { $0.hasPrefix("{\"type\":\"insn\"") }.count)
    }

    @Test("the flight recorder in bin: the last N records, only when the run ends badly")
    func flightRecorder() throws {
        for format in [TraceFormat.bin, .jsonl] {
            var options = TraceOptions(path: scratchPath("last.\(format.rawValue)"))
            options.last = 7
            options.format = format
            let run = try runImage([0x0F, 0x0B] + [UInt8](repeating: 0, count: 16), backend: .interp, name: "ud.bin") {
                $0.trace = options
                $0.maxInstructions = 5000
            }
            #expect(run.status == 207)
            let records = format == .bin ? try converted(options.path, .jsonl) : try lines(options.path)
            #expect(records.count == 7)
            // The last of the 5000 instructions: sequence number 5000, as the faulting ud2
            // took number 0 (it has an exception record, not an instruction record).
            #expect(records.last?.contains("\"seq\":5000,") == true, "\(records.last ?? "")")
        }
    }

    @Test("tandem trace: show, grep (status 1 when nothing matches), convert; bad options are status 200",
          .enabled(if: haveBinary, "needs .build/release/tandem"))
    func command() throws {
        let path = try traced("hello-boot.bin", .bin, tag: "-cli")
        let text = try lines(try traced("hello-boot.bin", .text, tag: "-cli"))
        let show = try runProcess(tandemBinary, ["trace", "show", path])
        #expect(show.status == 0)
        #expect(show.stdout.split(separator: "\n").map(String.init) == text)
        let out = scratchPath("cli.jsonl")
        #expect(try runProcess(tandemBinary, ["trace", "convert", path, "--to", "jsonl", "-o", out]).status == 0)
        #expect(try lines(out) == (try converted(path, .jsonl)))
        let grep = try runProcess(tandemBinary, ["trace", "grep", path, "--mnemonic", "lodsb", "--format", "jsonl"])
        #expect(grep.status == 0)
        let found = grep.stdout.split(separator: "\n")
        #expect(!found.isEmpty && found.allSatisfy { $0.contains("\"asm\":\"lodsb") })
        let none = try runProcess(tandemBinary, ["trace", "grep", path, "--mnemonic", "fsqrt"])
        #expect(none.status == 1 && none.stdout.isEmpty)
        for bad in [["trace", "grep", path], ["trace", "show", path, "--kind", "nonsense"], ["trace", "show", path, "--rip", "zz"],
                    ["trace", "convert", path, "--to", "bin"]] {
            let r = try runProcess(tandemBinary, bad)
            #expect(r.status == 200, "\(bad)")
            #expect(r.stderr.hasPrefix("tandem: ") && r.stderr.split(separator: "\n").count == 1, "\(bad): \(r.stderr)")
        }
    }

    @Test("truncated, damaged or foreign files: the records before the damage, then one line and status 201; never a crash",
          .enabled(if: haveBinary, "needs .build/release/tandem"))
    func damage() throws {
        let path = try traced("exceptions32.elf", .bin, tag: "-damage")
        let bytes = try readFileBytes(path)
        let full = try runProcess(tandemBinary, ["trace", "show", path]).stdout
        var cuts = [0, 1, 7, 8, 12, 15, 16, 40, bytes.count - 1, bytes.count - 2]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<12 { cuts.append(Int.random(in: 1..<bytes.count, using: &generator)) }
        for cut in cuts {
            let damaged = try writeScratchFile(Array(bytes[0..<cut]), name: "cut.bin")
            let r = try runProcess(tandemBinary, ["trace", "show", damaged])
            #expect(r.status == 201, "cut at \(cut)")
            #expect(r.stderr.hasPrefix("tandem: ") && r.stderr.split(separator: "\n").count == 1, "cut at \(cut): \(r.stderr)")
            #expect(full.hasPrefix(r.stdout), "cut at \(cut): the output before the damage is the start of the whole")
        }
        // Random bytes changed in the records: status 0 or 201, one line, no signal.
        for _ in 0..<20 {
            var corrupt = bytes
            for _ in 0..<4 { corrupt[Int.random(in: 200..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
            let r = try runProcess(tandemBinary, ["trace", "show", try writeScratchFile(corrupt, name: "corrupt.bin")])
            #expect(r.status == 0 || r.status == 201, "status \(r.status)")
            if r.status == 201 { #expect(r.stderr.hasPrefix("tandem: ") && r.stderr.split(separator: "\n").count == 1) }
        }
        var future = bytes
        future[8] = 9
        let jsonl = try traced("hello-boot.bin", .jsonl, tag: "-foreign")
        for (file, expected) in [(try writeScratchFile(future, name: "future.bin"), "is a version 9 trace; this Tandem reads version 1"),
                                 (jsonl, "is not a Tandem binary trace"), (scratchPath("missing.bin"), "cannot read trace file")] {
            let r = try runProcess(tandemBinary, ["trace", "show", file])
            #expect(r.status == 201)
            #expect(r.stderr.contains(expected) && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        }
    }
}
