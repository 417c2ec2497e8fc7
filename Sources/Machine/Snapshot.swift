#if canImport(Glibc)
import Glibc
#endif
import Devices
import GuestMemory
import Interpreter
import KVM
import RunLoop
import Synchronization
import X86

// Snapshots of a whole machine (`--snapshot-on-exit`, SIGUSR2, `--restore`): taking one
// from a machine whose vCPUs are all stopped, and rebuilding a machine from one. The file
// format is SnapshotFormat.swift's; Documentation/Snapshots.md describes both.

extension MachineConfiguration {
    /// This configuration with the machine `snapshot` describes: its RAM size, vCPUs, CPU
    /// model, x2APIC, image format and clock (the host's options — backend, console,
    /// timeout, trace — stay this configuration's).
    public func restoring(_ snapshot: SnapshotFile) -> MachineConfiguration {
        var c = self
        let s = snapshot.configuration
        c.restore = snapshot
        c.memorySize = s.memorySize
        c.cpus = s.cpus
        c.cpuModel = s.cpuModel
        c.x2APIC = s.x2APIC
        c.format = s.format
        c.clock = s.clock
        return c
    }
}

extension Machine {
    /// A snapshot of this machine, whose vCPUs are all stopped at instruction boundaries
    /// with these states (their run states included). Timers are recorded as the time left
    /// after the machine time now.
    func takeSnapshot(states: [CPUState]) -> SnapshotFile {
        let now = devices.clock.now()
        let configuration = SnapshotConfiguration(
            memorySize: memory.ramSize, romSize: Int(memory.regions.first { $0.kind == .rom }?.size ?? 0), cpus: states.count,
            cpuModel: self.configuration.cpuModel, x2APIC: self.configuration.x2APIC, format: plan.format,
            clock: self.configuration.clock, machineTime: now, a20: memory.a20Enabled.load(ordering: .relaxed),
            backend: backendName, features: SnapshotConfiguration.features(of: cpu))
        var sections: [String: [UInt8]] = [:]
        func section(_ tag: String, _ body: (inout StateWriter) -> Void) {
            var w = StateWriter()
            body(&w)
            sections[tag] = w.bytes
        }
        section("CMSR") { w in for i in 0..<states.count { cpu.saveMSRs(vcpu: i, &w) } }
        section("PIC ") { devices.pic.saveState(&$0) }
        section("PIT ") { devices.pit.saveState(&$0, now: now) }
        section("RTC ") { devices.rtc.saveState(&$0, now: now) }
        section("UART") { devices.serial.saveState(&$0) }
        section("KBC ") { devices.keyboardController.saveState(&$0) }
        section("ACPI") { devices.acpiPM.saveState(&$0, now: now) }
        section("FWCF") { devices.fwCfg.saveState(&$0) }
        section("APIC") { devices.apic.saveState(&$0, now: now) }
        section("RAM ") { Self.saveMemory(memory, &$0) }
        return SnapshotFile(configuration: configuration, states: states, sections: sections)
    }

    /// `--snapshot-on-exit`: the snapshot of the stopped machine, written to `path`; the
    /// error's text when it cannot be.
    func writeSnapshot(to path: String) -> String? {
        var states: [CPUState] = []
        for (i, state) in control.withLock({ $0.finalStates }).enumerated() {
            guard var state else { return "cannot write the snapshot \(path): the state of vcpu\(i) could not be read" }
            state.runState = slots[i].runState
            states.append(state)
        }
        do { try takeSnapshot(states: states).write(to: path) } catch { return error.description }
        return nil
    }

    /// Finishes the instruction the vCPU's last exit left unfinished, so that its state is
    /// at an instruction boundary (on its own thread, after the loop).
    func completePendingExit(_ slot: VCPUSlot) {
        if let kvm = slot.active as? KVMVCPU {
            do { try kvm.completePendingExit() } catch { requestStop(.hostError("\(error)")) }
        } else if let interpreter = slot.active as? InterpreterVCPU {
            interpreter.completePendingExit()
        }
    }

    /// Puts the snapshot's memory, vCPU states, model MSRs and devices into this machine,
    /// which was built from `snapshot.configuration` and has not run.
    func applySnapshot(_ snapshot: SnapshotFile) throws(MachineError) {
        func bad(_ text: String) -> MachineError { MachineError(.badSnapshot, text) }
        let features = SnapshotConfiguration.features(of: cpu)
        guard features == snapshot.configuration.features else {
            throw bad("the snapshot's guest saw other CPU features (CPUID) than this host offers with --cpu-model \(configuration.cpuModel): it cannot continue here")
        }
        let now = snapshot.configuration.machineTime
        do throws(SnapshotError) {
            var ram = snapshot.reader("RAM ")
            try Self.restoreMemory(memory, &ram)
            try ram.finish()
            memory.a20Enabled.store(snapshot.configuration.a20, ordering: .relaxed)
            var msrs = snapshot.reader("CMSR")
            for i in 0..<snapshot.states.count { try cpu.restoreMSRs(vcpu: i, &msrs) }
            try msrs.finish()
            func device(_ tag: String, _ body: (inout StateReader) throws(SnapshotError) -> Void) throws(SnapshotError) {
                var r = snapshot.reader(tag)
                try body(&r)
                try r.finish()
            }
            try device("PIC ") { (r) throws(SnapshotError) in try devices.pic.restoreState(&r) }
            try device("PIT ") { (r) throws(SnapshotError) in try devices.pit.restoreState(&r, now: now) }
            try device("RTC ") { (r) throws(SnapshotError) in try devices.rtc.restoreState(&r, now: now) }
            try device("UART") { (r) throws(SnapshotError) in try devices.serial.restoreState(&r) }
            try device("KBC ") { (r) throws(SnapshotError) in try devices.keyboardController.restoreState(&r) }
            try device("ACPI") { (r) throws(SnapshotError) in try devices.acpiPM.restoreState(&r, now: now) }
            try device("FWCF") { (r) throws(SnapshotError) in try devices.fwCfg.restoreState(&r) }
            try device("APIC") { (r) throws(SnapshotError) in try devices.apic.restoreState(&r, now: now) }
        } catch {
            throw bad("the snapshot is corrupted: \(error.description)")
        }
        for (i, state) in snapshot.states.enumerated() {
            let slot = slots[i]
            do {
                try slot.active.writeState(state)
                // KVM keeps its own TSC (writeState leaves it): set it to the snapshot's.
                // (Hybrid: the vCPU starts on the interpreter; its KVM vCPU holds the clock.)
                if let kvm = (slot.kvm ?? slot.active) as? KVMVCPU { try kvm.setTSC(state.msrs.tsc) }
            } catch {
                throw bad("the snapshot's state of vcpu\(i) cannot be loaded into the \(backendName) engine: \(error)")
            }
            slot.runState = state.runState
        }
    }

    // MARK: Guest memory

    /// The RAM section: the page size (4096), the number of pages, then each page that is
    /// not all zeros as its guest-physical address and its bytes. Pages the host never
    /// backed (mincore(2): not resident) are zero and not even read, so a large guest
    /// that touched little costs little; ROM is stored once, at its address below 1 MiB.
    static func saveMemory(_ memory: GuestMemoryMap, _ w: inout StateWriter) {
        var pages: [(UInt64, UnsafeRawPointer)] = []
        var seen = Set<UnsafeMutableRawPointer>()
        let chunk = 1 << 30
        for region in memory.regions where seen.insert(region.host).inserted {
            var offset = 0
            while UInt64(offset) < region.size {
                let length = min(chunk, Int(region.size) - offset)
                let count = (length + 4095) / 4096
                var resident = [UInt8](repeating: 1, count: count)
                let base = region.host + offset
                // Without mincore's answer every page is looked at.
                if mincore(base, length, &resident) != 0 { resident = [UInt8](repeating: 1, count: count) }
                for p in 0..<count where resident[p] & 1 != 0 {
                    let page = UnsafeRawPointer(base + p * 4096)
                    let words = page.assumingMemoryBound(to: UInt64.self)
                    var zero = true
                    for k in 0..<512 where words[k] != 0 { zero = false; break }
                    if !zero { pages.append((region.start + UInt64(offset + p * 4096), page)) }
                }
                offset += length
            }
        }
        w.u32(4096)
        w.u64(UInt64(pages.count))
        for (address, page) in pages {
            w.u64(address)
            w.raw(UnsafeRawBufferPointer(start: page, count: 4096))
        }
    }

    static func restoreMemory(_ memory: GuestMemoryMap, _ r: inout StateReader) throws(SnapshotError) {
        let pageSize = try r.u32()
        guard pageSize == 4096 else { throw SnapshotError("\(r.what): page size \(pageSize)") }
        let count = try r.u64()
        guard count <= UInt64(r.remaining / 4104) else { throw SnapshotError("\(r.what): \(count) pages in \(r.remaining) bytes") }
        for _ in 0..<count {
            let address = try r.u64()
            guard address & 0xFFF == 0, let host = memory.hostPointer(address, length: 4096) else {
                throw SnapshotError("\(r.what): a page at 0x\(String(address, radix: 16)), outside this machine's memory")
            }
            let bytes = try r.raw(4096)
            bytes.withUnsafeBytes { host.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
        }
    }
}

/// A snapshot of a running machine (SIGUSR2): the thread that takes it sends every vCPU the
/// `snapshot` command, and each parks here at its next instruction boundary (or where it sleeps, in HLT or wait-for-SIPI),
/// holds the timer thread, writes the file and lets everything go on.
final class LiveSnapshot: @unchecked Sendable {
    private let flag = Atomic<Bool>(false)
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `lock`.
    private var states: [CPUState?] = []

    init() {
        pthread_mutex_init(lock, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(lock)
        lock.deallocate()
        changed.deallocate()
    }

    /// Starts a request for `cpus` vCPUs; false when one is under way.
    func begin(cpus: Int) -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !flag.load(ordering: .relaxed) else { return false }
        states = Array(repeating: nil, count: cpus)
        flag.store(true, ordering: .sequentiallyConsistent)
        return true
    }

    /// The states once every vCPU has parked, or nil when `stopped()` says so first.
    func waitForAll(stopped: () -> Bool) -> [CPUState]? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        while states.contains(where: { $0 == nil }) {
            if stopped() { return nil }
            var t = timespec()
            clock_gettime(CLOCK_REALTIME, &t)
            t.tv_nsec += 10_000_000
            if t.tv_nsec >= 1_000_000_000 { t.tv_sec += 1; t.tv_nsec -= 1_000_000_000 }
            pthread_cond_timedwait(changed, lock, &t)
        }
        return states.map { $0! }
    }

    /// A vCPU parks with its state until `end()` (or the stop).
    func park(_ index: Int, state: CPUState, stopped: () -> Bool) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        states[index] = state
        pthread_cond_broadcast(changed)
        while flag.load(ordering: .relaxed) && !stopped() {
            var t = timespec()
            clock_gettime(CLOCK_REALTIME, &t)
            t.tv_nsec += 10_000_000
            if t.tv_nsec >= 1_000_000_000 { t.tv_sec += 1; t.tv_nsec -= 1_000_000_000 }
            pthread_cond_timedwait(changed, lock, &t)
        }
    }

    func end() {
        pthread_mutex_lock(lock)
        flag.store(false, ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(lock)
    }
}

extension Machine {
    /// SIGUSR2 (on the signal thread): parks every vCPU, writes the snapshot to the
    /// `--snapshot-on-exit` file (replacing it: the last one taken is kept, and at the end
    /// the one of the stop), says so on stderr, and lets the guest go on.
    func takeLiveSnapshot() {
        guard let path = configuration.snapshotPath, !stopRequested, liveSnapshot.begin(cpus: slots.count) else { return }
        devices.timers.pause()
        defer {
            // Withdrawn before the parked vCPUs are let go, so none parks again.
            for slot in slots { slot.commands.send(.snapshotDone) }
            liveSnapshot.end()
            devices.timers.resume()
        }
        for i in slots.indices { send(.snapshot, to: i) }
        guard let states = liveSnapshot.waitForAll(stopped: { stopRequested }) else { return }
        let line: String
        do {
            try takeSnapshot(states: states).write(to: path)
            line = "tandem: snapshot written to \(path) (SIGUSR2); the guest continues"
        } catch {
            line = "tandem: \(error.description) (SIGUSR2); the guest continues"
        }
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// On vCPU `index`'s thread: completes its last exit, hands its state to the snapshot
    /// and waits until the snapshot is written.
    func parkForSnapshot(_ index: Int) {
        let slot = slots[index]
        slot.commands.enter(.snapshotting)
        defer { slot.commands.enter(.running) }
        completePendingExit(slot)
        guard var state = try? slot.guestState() else {
            requestStop(.hostError("vcpu\(index): its state cannot be read for the snapshot"))
            return
        }
        state.runState = slot.runState
        liveSnapshot.park(index, state: state, stopped: { stopRequested })
    }
}
