#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GuestMemory
import HostOS
import Synchronization
import X86

/// `--gdb tcp:[HOST:]PORT`: where the stub listens, and whether the guest waits for gdb.
/// `--gdb tcp:[HOST:]PORT` (and `--gdb-wait`).
public struct GDBOptions: Sendable, Equatable {
    public var host: String
    /// 0: any free port (the stub says which on stderr).
    public var port: UInt16
    /// `--gdb-wait`: every vCPU stops before its first instruction until gdb resumes it.
    public var waitForDebugger = false

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `tcp:[HOST:]PORT` (HOST defaults to 127.0.0.1, a numeric IPv4 address or
    /// `localhost`); nil when malformed.
    public static func parse(_ text: String) -> GDBOptions? {
        guard text.hasPrefix("tcp:") else { return nil }
        let rest = text.dropFirst(4)
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let port = UInt16(parts.last!) else { return nil }
        var host = parts.count == 2 ? String(parts[0]) : "127.0.0.1"
        if host == "localhost" { host = "127.0.0.1" }
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1 else { return nil }
        return GDBOptions(host: host, port: port)
    }
}

/// The GDB remote serial protocol over TCP, for one gdb at a time (a second connection
/// waits until the first ends). Threads are vCPUs (thread n is vCPU n-1); the machine is
/// all-stop: when one vCPU stops, all do. Documentation/Debugging.md lists the packets.
package final class GDBServer: @unchecked Sendable {
    private let listener: Int32
    package let boundPort: UInt16
    private weak var machine: (any DebugTarget)?
    private let finished = DispatchSemaphore(value: 0)
    /// The run's exit status once the machine has stopped (-1 before).
    let exitStatus = Atomic<Int32>(-1)

    /// Why the stub cannot listen: the address (`isUsage`: a usage error) or the host.
    package struct ListenError: Error, CustomStringConvertible {
        package var isUsage: Bool
        package var description: String
    }

    package init(_ options: GDBOptions) throws(ListenError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenError(isUsage: false, description: "--gdb: cannot create a socket: \(Errno.current)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = options.port.bigEndian
        inet_pton(AF_INET, options.host, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 1) == 0 else {
            let error = Errno.current
            close(fd)
            throw ListenError(isUsage: true, description: "--gdb tcp:\(options.host):\(options.port): cannot listen: \(error)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            _ = $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        boundPort = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(listener) }

    /// Serves gdb on a thread named "gdb" until the machine stops.
    package func start(_ machine: any DebugTarget) {
        self.machine = machine
        HostThread.spawn(name: "gdb") { [self] in
            serve()
            finished.signal()
        }
    }

    /// The machine has stopped with `status`: a connected gdb is told the guest exited
    /// (`W`), and the server ends (waiting at most a second for it).
    package func finish(status: Int32) {
        exitStatus.store(status, ordering: .sequentiallyConsistent)
        _ = finished.wait(timeout: .now() + .seconds(1))
    }

    private var machineStopped: Bool { machine?.stopRequested ?? true }

    private func serve() {
        while !machineStopped {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            guard let machine else { close(fd); return }
            let session = GDBSession(fd: fd, machine: machine, server: self)
            session.run()
            close(fd)
        }
    }
}

/// One gdb connection.
final class GDBSession {
    private let fd: Int32
    private let machine: any DebugTarget
    private let debug: DebugControl
    private let server: GDBServer
    private var input: [UInt8] = []
    private var acknowledging = true
    private var architecture: GDBArchitecture = .x86_64
    /// `Hg`: the thread (vCPU) registers and memory are read from; `Hc`: the one `s`/`c` act on.
    private var registerThread = 0
    private var resumeThread = -1
    /// `monitor phys on`: `m`/`M`/`X` take physical addresses.
    private var physical = false
    private var lastStopReply = "T05thread:1;"
    /// The mode each vCPU was last reported in (for the note when the layout no longer fits).
    private var warnedModes: Set<Int> = []
    private var alive = true
    private var detached = false

    init(fd: Int32, machine: any DebugTarget, server: GDBServer) {
        self.fd = fd
        self.machine = machine
        self.debug = machine.debugControl
        self.server = server
    }

    func run() {
        // As QEMU does: a connecting gdb stops the machine.
        machine.pauseForDebugger()
        guard waitForStop(interruptible: false) else { return }
        let mode = debug.state.withLock { $0.states[0]?.mode } ?? .long64
        architecture = GDBArchitecture.at(mode)
        while alive {
            guard let packet = readPacket() else { break }
            handle(packet)
        }
        guard !machineStopped, !detached else { return }
        // The connection ended without `D` or `k` (gdb's `disconnect`, or a gdb that died):
        // the machine stays stopped for the next gdb (the way to reconnect for another
        // register layout), without the breakpoints this one set.
        removeBreakpoints()
    }

    private var machineStopped: Bool { machine.stopRequested }

    // MARK: Packets

    private func handle(_ packet: [UInt8]) {
        let text = String(decoding: packet, as: UTF8.self)
        guard let first = text.first else { return send("") }
        let body = String(text.dropFirst())
        switch first {
        case "?": send(lastStopReply)
        case "q": query(body)
        case "Q":
            if body == "StartNoAckMode" {
                send("OK")
                acknowledging = false
            } else {
                send("")
            }
        case "H":
            guard let kind = body.first, let thread = threadID(String(body.dropFirst())) else { return send("E01") }
            if kind == "g" { registerThread = thread < 0 ? stoppedThread : thread } else { resumeThread = thread }
            send("OK")
        case "T":
            guard let thread = threadID(body), thread >= 0, thread < machine.vcpuCount else { return send("E01") }
            send("OK")
        case "g": readRegisters()
        case "G": writeRegisters(body)
        case "p": readRegister(body)
        case "P": writeRegister(body)
        case "m": readMemory(body)
        case "M": writeMemory(body)
        case "X": writeBinaryMemory(packet)
        case "Z", "z": breakpoint(insert: first == "Z", body)
        case "c", "s":
            var actions = Array(repeating: DebugAction.stay, count: machine.vcpuCount)
            if first == "c" {
                actions = actions.map { _ in .run }
                if resumeThread >= 0 { actions[resumeThread] = .run }
            } else {
                actions[resumeThread >= 0 ? resumeThread : stoppedThread] = .step
            }
            resume(actions)
        case "v": verbose(body)
        case "D":
            send("OK")
            detach()
            detached = true
            alive = false
        case "k":
            alive = false
            machine.killedByDebugger()
        default: send("")
        }
    }

    private func query(_ body: String) {
        if body.hasPrefix("Supported") {
            send("PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+")
        } else if body.hasPrefix("Xfer:features:read:target.xml:") {
            let range = body.dropFirst("Xfer:features:read:target.xml:".count).split(separator: ",")
            guard range.count == 2, let offset = Int(range[0], radix: 16), let length = Int(range[1], radix: 16) else { return send("E01") }
            let xml = Array(architecture.targetXML.utf8)
            let start = min(offset, xml.count), end = min(offset + length, xml.count)
            sendBinary([end == xml.count ? UInt8(ascii: "l") : UInt8(ascii: "m")] + xml[start..<end])
        } else if body.hasPrefix("Xfer:") {
            send("E00")
        } else if body == "fThreadInfo" {
            send("m" + (1...machine.vcpuCount).map { String($0, radix: 16) }.joined(separator: ","))
        } else if body == "sThreadInfo" {
            send("l")
        } else if body == "C" {
            send("QC" + String(stoppedThread + 1, radix: 16))
        } else if body == "Attached" {
            send("1")
        } else if body.hasPrefix("ThreadExtraInfo,") {
            guard let thread = threadID(String(body.dropFirst("ThreadExtraInfo,".count))), thread >= 0 else { return send("E01") }
            let mode = debug.state.withLock { $0.states[thread]?.mode.rawValue } ?? "running"
            send(hex(Array("vcpu\(thread) (\(machine.backendName), \(mode))".utf8)))
        } else if body.hasPrefix("Rcmd,") {
            let command = String(decoding: unhex(String(body.dropFirst(5))) ?? [], as: UTF8.self)
            let output = monitor(command)
            if !output.isEmpty { send("O" + hex(Array((output + "\n").utf8))) }
            send("OK")
        } else if body.hasPrefix("Symbol::") {
            send("OK")
        } else {
            send("")
        }
    }

    private func verbose(_ body: String) {
        if body == "Cont?" { return send("vCont;c;C;s;S") }
        if body == "MustReplyEmpty" { return send("") }
        guard body.hasPrefix("Cont;") else { return send("") }
        // Each action applies to the threads it names, or to every thread not yet given one.
        var actions = Array(repeating: DebugAction.stay, count: machine.vcpuCount)
        var given = Array(repeating: false, count: machine.vcpuCount)
        for item in body.dropFirst(5).split(separator: ";") {
            let parts = item.split(separator: ":", maxSplits: 1)
            let action: DebugAction
            switch parts[0].first {
            case "c", "C": action = .run
            case "s", "S": action = .step
            default: return send("E01")
            }
            if parts.count == 2 {
                guard let thread = threadID(String(parts[1])) else { return send("E01") }
                for i in actions.indices where !given[i] && (thread < 0 || thread == i) {
                    actions[i] = action
                    given[i] = true
                }
            } else {
                for i in actions.indices where !given[i] {
                    actions[i] = action
                    given[i] = true
                }
            }
        }
        resume(actions)
    }

    /// gdb's thread id (hex, 1-based; 0 any, -1 all) as a vCPU index (-1: any or all).
    private func threadID(_ text: String) -> Int? {
        var t = text
        if t.hasPrefix("p") { t = String(t.drop { $0 != "." }.dropFirst()) }
        if t == "-1" || t == "0" { return -1 }
        guard let n = Int(t, radix: 16), n >= 1, n <= machine.vcpuCount else { return nil }
        return n - 1
    }

    private var stoppedThread: Int { debug.state.withLock { $0.stop?.vcpu } ?? 0 }

    // MARK: Running

    private func resume(_ actions: [DebugAction]) {
        guard actions.contains(where: { $0 != .stay }) else { return send("E01") }
        debug.resume(actions)
        if waitForStop(interruptible: true) { reportStop() }
    }

    /// Waits until every vCPU is parked (reading gdb's Ctrl-C meanwhile). False when the
    /// machine stopped instead: gdb is then told how the guest exited.
    private func waitForStop(interruptible: Bool) -> Bool {
        while true {
            if machineStopped {
                var status = server.exitStatus.load(ordering: .sequentiallyConsistent)
                for _ in 0..<40 where status < 0 {
                    usleep(25_000)
                    status = server.exitStatus.load(ordering: .sequentiallyConsistent)
                }
                send("W" + hex([UInt8(truncatingIfNeeded: max(status, 0))]))
                alive = false
                return false
            }
            if debug.pauseRequested && debug.allParked {
                return true
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 20) > 0 {
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, 0)
                if n <= 0 {
                    // gdb went away while the guest ran: it runs on, as after a detach.
                    detach()
                    detached = true
                    alive = false
                    return false
                }
                if byte == 0x03 && interruptible { machine.pauseForDebugger() } else if byte != 0x03 { input.append(byte) }
            }
        }
    }

    private func reportStop() {
        let (stop, states) = debug.state.withLock { ($0.stop, $0.states) }
        let thread = stop?.vcpu ?? (resumeThread >= 0 ? resumeThread : registerThread)
        registerThread = thread
        var reply: String
        switch stop?.cause {
        case .watchpoint(let kind, let address)?:
            let name = kind == .write ? "watch" : kind == .read ? "rwatch" : "awatch"
            reply = "T05\(name):\(String(address, radix: 16));"
        case .breakpoint?:
            let pc = states[thread].map(linearInstructionPointer) ?? 0
            reply = debug.state.withLock { $0.hardware.contains(pc) } ? "T05hwbreak:;" : "T05swbreak:;"
        case .step?: reply = "T05"
        case .interrupted?, nil: reply = "T02"
        }
        reply += "thread:\(String(thread + 1, radix: 16));"
        lastStopReply = reply
        if let mode = states[thread]?.mode, !architecture.fits(mode), !warnedModes.contains(thread) {
            warnedModes.insert(thread)
            let note = "tandem: vcpu\(thread) is now in \(mode.rawValue) mode, which the \(architecture.rawValue) register layout chosen at connection cannot show whole; reconnect (target remote) for the x86-64 one\n"
            send("O" + hex(Array(note.utf8)))
        }
        send(reply)
    }

    /// `D`: the breakpoints go and the guest runs on.
    private func detach() {
        removeBreakpoints()
        debug.resume(Array(repeating: .run, count: machine.vcpuCount))
    }

    private func removeBreakpoints() {
        debug.state.withLock { s in
            s.breakpoints = []
            s.hardware = []
            s.watchpoints = []
        }
    }

    // MARK: Registers

    private func withState<T>(_ thread: Int, _ body: (inout CPUState) -> T) -> T? {
        debug.state.withLock { s in
            guard thread >= 0, thread < s.states.count, s.states[thread] != nil else { return nil }
            return body(&s.states[thread]!)
        }
    }

    private func readRegisters() {
        guard let bytes = withState(registerThread, { s in architecture.registers.flatMap { $0.read(s) } }) else { return send("E01") }
        send(hex(bytes))
    }

    private func writeRegisters(_ body: String) {
        guard let bytes = unhex(body) else { return send("E01") }
        let done = withState(registerThread) { s -> Bool in
            var offset = 0
            for r in architecture.registers where offset + r.bytes <= bytes.count {
                r.write(Array(bytes[offset..<offset + r.bytes]), to: &s)
                offset += r.bytes
            }
            return true
        }
        guard done != nil else { return send("E01") }
        debug.state.withLock { $0.dirty[registerThread] = true }
        send("OK")
    }

    private func readRegister(_ body: String) {
        guard let n = Int(body, radix: 16), n < architecture.registers.count,
              let bytes = withState(registerThread, { architecture.registers[n].read($0) }) else { return send("E01") }
        send(hex(bytes))
    }

    private func writeRegister(_ body: String) {
        let parts = body.split(separator: "=")
        guard parts.count == 2, let n = Int(parts[0], radix: 16), n < architecture.registers.count,
              let value = unhex(String(parts[1])), value.count == architecture.registers[n].bytes,
              withState(registerThread, { architecture.registers[n].write(value, to: &$0) }) != nil else { return send("E01") }
        debug.state.withLock { $0.dirty[registerThread] = true }
        send("OK")
    }

    // MARK: Memory

    /// Splits [address, address+length) into physical pieces (none crossing a page),
    /// through vCPU `registerThread`'s paging unless `monitor phys on`; nil if any page is
    /// not mapped.
    private func physicalPieces(_ address: UInt64, _ length: Int) -> [(physical: UInt64, offset: Int, count: Int)]? {
        if physical { return [(address, 0, length)] }
        guard let state = debug.state.withLock({ $0.states[registerThread] ?? $0.states.compactMap { $0 }.first }) else { return nil }
        var pieces: [(UInt64, Int, Int)] = []
        var offset = 0
        while offset < length {
            let linear = address &+ UInt64(offset)
            let count = min(length - offset, Int(0x1000 - (linear & 0xFFF)))
            guard let p = machine.debugTranslate(registerThread, linear: linear, state: state) else { return nil }
            pieces.append((p, offset, count))
            offset += count
        }
        return pieces
    }

    private func addressAndLength(_ text: Substring) -> (UInt64, Int)? {
        let parts = text.split(separator: ",")
        guard parts.count == 2, let a = UInt64(parts[0], radix: 16), let n = Int(parts[1], radix: 16), n >= 0, n <= 0x10000 else { return nil }
        return (a, n)
    }

    private func readMemory(_ body: String) {
        guard let (address, length) = addressAndLength(Substring(body)) else { return send("E01") }
        guard let pieces = physicalPieces(address, length) else { return send("E14") }
        var bytes: [UInt8] = []
        for piece in pieces { bytes += machine.memory.bytes(at: piece.physical, count: piece.count) }
        send(hex(bytes))
    }

    private func writeMemory(_ body: String) {
        let parts = body.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let (address, length) = addressAndLength(parts[0]), let data = unhex(String(parts[1])),
              data.count == length else { return send("E01") }
        store(data, at: address)
    }

    private func writeBinaryMemory(_ packet: [UInt8]) {
        guard let colon = packet.firstIndex(of: UInt8(ascii: ":")),
              let (address, length) = addressAndLength(Substring(decoding: packet[1..<colon], as: UTF8.self)) else { return send("E01") }
        let data = Array(packet[(colon + 1)...])
        guard data.count == length else { return send("E01") }
        store(data, at: address)
    }

    private func store(_ data: [UInt8], at address: UInt64) {
        guard let pieces = physicalPieces(address, data.count) else { return send("E14") }
        for piece in pieces {
            guard machine.memory.isRAM(piece.physical, length: UInt64(piece.count)) else { return send("E0e") }
        }
        for piece in pieces {
            data[piece.offset..<piece.offset + piece.count].withUnsafeBytes { machine.memory.write(piece.physical, from: $0) }
            machine.debugMemoryWritten(at: piece.physical, length: piece.count)
        }
        send("OK")
    }

    // MARK: Breakpoints

    private func breakpoint(insert: Bool, _ body: String) {
        let parts = body.split(separator: ",")
        guard parts.count >= 3, let type = Int(parts[0]), let address = UInt64(parts[1], radix: 16),
              let length = UInt64(parts[2].prefix { $0 != ";" }, radix: 16) else { return send("E01") }
        let kinds: [Int: Watchpoint.Kind] = [2: .write, 3: .read, 4: .access]
        debug.state.withLock { s in
            switch type {
            case 0, 1:
                if insert {
                    s.breakpoints.insert(address)
                    if type == 1 { s.hardware.insert(address) }
                } else {
                    s.breakpoints.remove(address)
                    s.hardware.remove(address)
                }
            default:
                let w = Watchpoint(kind: kinds[type] ?? .access, address: address, length: max(length, 1))
                if insert { s.watchpoints.append(w) } else if let i = s.watchpoints.firstIndex(of: w) { s.watchpoints.remove(at: i) }
            }
        }
        send((0...4).contains(type) ? "OK" : "")
    }

    // MARK: Monitor

    private func monitor(_ command: String) -> String {
        let words = command.split(separator: " ").map(String.init)
        switch words.first ?? "" {
        case "help", "":
            return """
                monitor commands:
                  info devices          the I/O ports and MMIO ranges and who claims them; the state of the PIC, PIT, RTC, APICs, IOAPIC and UART
                  stats                 the backend and run time, and per vCPU its mode, CS:RIP, engine, instructions and handoffs
                  phys on|off           m/M/X (gdb's x, print, set) take physical addresses (default off: linear, through the selected vCPU's paging)
                  xp ADDRESS [LENGTH]   dump LENGTH (default 64) bytes of physical memory
                  trace on FILE [text|jsonl|bin]   trace every vCPU from here on (text by default)
                  trace off             stop the trace and close its file
                  engine [kvm|interp [VCPU]]   move every vCPU (or one) to that engine, or say where each runs
                """
        case "info" where words.count == 2 && words[1] == "devices": return machine.debugDeviceList()
        case "stats": return machine.debugStatistics()
        case "phys" where words.count == 2 && (words[1] == "on" || words[1] == "off"):
            physical = words[1] == "on"
            return "memory addresses are now \(physical ? "physical" : "linear (through the selected vCPU's paging)")"
        case "xp" where (2...3).contains(words.count):
            let a = words[1].hasPrefix("0x") ? String(words[1].dropFirst(2)) : words[1]
            guard let address = UInt64(a, radix: 16) else { return "xp: '\(words[1])' is not a hex address" }
            let count = words.count == 3 ? Int(words[2]) ?? -1 : 64
            guard (1...4096).contains(count) else { return "xp: LENGTH must be 1-4096" }
            let bytes = machine.memory.bytes(at: address, count: count)
            return stride(from: 0, to: count, by: 16).map { row in
                "0x" + String(address &+ UInt64(row), radix: 16) + ": "
                    + bytes[row..<min(row + 16, count)].map { String(format2: $0) }.joined(separator: " ")
            }.joined(separator: "\n")
        case "trace": return machine.debugTrace(Array(words.dropFirst()))
        case "engine" where words.count <= 3:
            return machine.debugEngine(Array(words.dropFirst()))
        default:
            return "unknown monitor command '\(command)'; try 'monitor help'"
        }
    }

    // MARK: Framing

    /// The next packet's contents (acknowledged), or nil when the connection ended.
    private func readPacket() -> [UInt8]? {
        while true {
            while let start = input.firstIndex(where: { $0 == UInt8(ascii: "$") || $0 == 0x03 }) {
                if input[start] == 0x03 {
                    // Ctrl-C while already stopped: nothing to interrupt.
                    input.removeSubrange(...start)
                    send(lastStopReply)
                    continue
                }
                guard let hash = input[start...].firstIndex(of: UInt8(ascii: "#")), hash + 2 < input.count else { break }
                let raw = Array(input[(start + 1)..<hash])
                let checksum = UInt8(String(decoding: input[(hash + 1)...(hash + 2)], as: UTF8.self), radix: 16)
                input.removeSubrange(...(hash + 2))
                let sum = raw.reduce(UInt8(0)) { $0 &+ $1 }
                if acknowledging {
                    guard checksum == sum else {
                        write(Array("-".utf8))
                        continue
                    }
                    write(Array("+".utf8))
                }
                return unescape(raw)
            }
            if !fill() { return nil }
        }
    }

    /// Reads more bytes from gdb (waiting at most 100 ms at a time, for the machine's end).
    private func fill() -> Bool {
        while true {
            if machineStopped { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            input += buffer[0..<n]
            return true
        }
    }

    private func unescape(_ raw: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var escaped = false
        for b in raw {
            if escaped { out.append(b ^ 0x20); escaped = false } else if b == 0x7D { escaped = true } else { out.append(b) }
        }
        return out
    }

    private func send(_ text: String) { sendBinary(Array(text.utf8)) }

    private func sendBinary(_ data: [UInt8]) {
        var body: [UInt8] = []
        for b in data {
            if b == UInt8(ascii: "$") || b == UInt8(ascii: "#") || b == 0x7D || b == UInt8(ascii: "*") {
                body += [0x7D, b ^ 0x20]
            } else {
                body.append(b)
            }
        }
        let sum = body.reduce(UInt8(0)) { $0 &+ $1 }
        write([UInt8(ascii: "$")] + body + [UInt8(ascii: "#")] + Array(String(format2: sum).utf8))
        // With acknowledgements on, gdb's '+' comes back; it is skipped by readPacket.
    }

    private func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { alive = false; return }
            offset += n
        }
    }

    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format2: $0) }.joined() }

    private func unhex(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        for i in stride(from: 0, to: chars.count, by: 2) {
            guard let b = UInt8(String(decoding: chars[i...i + 1], as: UTF8.self), radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }
}

extension String {
    /// Two lowercase hex digits (gdb's packets; the machine's one-line reports too).
    package init(format2 byte: UInt8) {
        let s = String(byte, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}
