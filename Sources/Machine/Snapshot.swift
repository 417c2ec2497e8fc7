#if canImport(Glibc)
import Glibc
#endif
import Devices
import GuestMemory
import Synchronization
import VCPURuntime
import X86

// Snapshots of a whole machine (`--snapshot-on-exit`, SIGUSR2, `--restore`): taking one
// from a machine whose vCPUs are all stopped, and rebuilding a machine from one. The file
// format is SnapshotFormat.swift's; Documentation/Snapshots.md describes both. The vCPUs'
// side — parking for a live snapshot, loading restored states — is VCPURuntime's
// (SnapshotParking.swift).

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
        for (i, state) in vcpus.finalStates().enumerated() {
            guard let state else { return "cannot write the snapshot \(path): the state of vcpu\(i) could not be read" }
            states.append(state)
        }
        do { try takeSnapshot(states: states).write(to: path) } catch { return error.description }
        return nil
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
        do { try vcpus.load(snapshotStates: snapshot.states) } catch { throw bad(error.description) }
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

extension Machine {
    /// SIGUSR2 (on the signal thread): with every vCPU parked, writes the snapshot to the
    /// `--snapshot-on-exit` file (replacing it: the last one taken is kept, and at the end
    /// the one of the stop), says so on stderr, and lets the guest go on.
    func takeLiveSnapshot() {
        guard let path = configuration.snapshotPath else { return }
        vcpus.whileParkedForSnapshot { states in
            let line: String
            do throws(SnapshotError) {
                try takeSnapshot(states: states).write(to: path)
                line = "tandem: snapshot written to \(path) (SIGUSR2); the guest continues"
            } catch {
                line = "tandem: \(error.description) (SIGUSR2); the guest continues"
            }
            var bytes = Array((line + "\n").utf8)
            _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
}
