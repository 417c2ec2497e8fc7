#if canImport(Glibc)
import Glibc
#endif
import Devices
import Foundation
import HostOS
import Machine
import Synchronization
import Testing
import X86

/// The local APICs and the IOAPIC at register level, through the device model both
/// engines use, and guests that program them on both engines.
@Suite("APIC")
struct APICTests {
    let requests = Recorder<Int>()
    let model: DeviceModel

    init() throws {
        let requests = self.requests
        model = DeviceModel(console: try Console(.capture), input: .none(), cpus: 4,
                            onInterruptRequest: { requests.append($0) }) { _ in }
    }

    var apic: APICBus { model.apic }
    func write(_ cpu: Int, _ offset: UInt64, _ value: UInt32) {
        apic.mmioWrite(vcpu: cpu, LocalAPIC.defaultBase + offset, size: 4, value: UInt64(value))
    }
    func read(_ cpu: Int, _ offset: UInt64) -> UInt32 {
        UInt32(apic.mmioRead(vcpu: cpu, LocalAPIC.defaultBase + offset, size: 4))
    }
    func enable(_ cpu: Int) { write(cpu, 0xF0, 0x1FF) }

    @Test("after reset: ID, version, SVR, masked LVT (but the BSP's virtual-wire LINT0/LINT1), IA32_APIC_BASE")
    func resetState() {
        #expect(read(2, 0x20) == 2 << 24)
        #expect(read(0, 0x30) == 0x0005_0014)
        #expect(read(0, 0xF0) == 0xFF)
        #expect(read(0, 0x350) == 0x700)
        #expect(read(0, 0x360) == 0x400)
        #expect(read(1, 0x350) == 0x10000)
        #expect(read(1, 0x320) == 0x10000)
        #expect(apic.readMSR(vcpu: 0, MSR.apicBase) == 0xFEE0_0900)   // enabled, BSP
        #expect(apic.readMSR(vcpu: 3, MSR.apicBase) == 0xFEE0_0800)
        #expect(apic.isLocalAPIC(0xFEE0_0300, vcpu: 1))
        #expect(!apic.isLocalAPIC(0xFEC0_0000, vcpu: 1))
    }

    @Test("a fixed self-IPI: IRR, acknowledge to ISR, PPR, TPR blocking, EOI")
    func acceptanceAndPriority() {
        enable(1)
        write(1, 0x300, 0x4_4051)   // self, vector 0x51
        #expect(requests.all.contains(1))
        #expect(read(1, 0x200 + 0x20) == 1 << 17)   // IRR bit 0x51
        #expect(apic.hasPendingInterrupt(vcpu: 1))
        write(1, 0x80, 0x50)   // TPR class 5 blocks class 5
        #expect(!apic.hasPendingInterrupt(vcpu: 1))
        write(1, 0x80, 0x30)
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == 0x51)
        #expect(read(1, 0x100 + 0x20) == 1 << 17)   // ISR bit
        #expect(read(1, 0xA0) == 0x50)             // PPR: the in-service class
        // A lower class waits; a higher one is taken in the middle.
        write(1, 0x300, 0x4_4045)
        write(1, 0x300, 0x4_4091)
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == 0x91)
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == nil)
        write(1, 0xB0, 0)   // EOI 0x91
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == nil)   // 0x45 is below 0x51's class
        write(1, 0xB0, 0)   // EOI 0x51
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == 0x45)
        write(1, 0xB0, 0)
        #expect(read(1, 0xA0) == 0x30)
        #expect(!apic.hasPendingInterrupt(vcpu: 1))
    }

    @Test("a software-disabled APIC drops fixed IPIs; illegal vectors set the ESR")
    func disabledAndIllegal() {
        write(0, 0x300, 0x4_4060)
        #expect(!apic.hasPendingInterrupt(vcpu: 0) || apic.acknowledgeInterrupt(vcpu: 0) != 0x60)
        enable(2)
        write(2, 0x300, 0x4_4007)   // vector 7 is illegal
        write(2, 0x280, 0)
        #expect(read(2, 0x280) & (1 << 6) != 0)
        #expect(!apic.hasPendingInterrupt(vcpu: 2))
    }

    @Test("destinations: physical, broadcast, flat and cluster logical, shorthands, lowest priority")
    func destinations() {
        for cpu in 0..<4 { enable(cpu) }
        func pending() -> [Int] { (0..<4).filter { apic.hasPendingInterrupt(vcpu: $0) } }
        func drain() { for cpu in 0..<4 { while let _ = apic.acknowledgeInterrupt(vcpu: cpu) { write(cpu, 0xB0, 0) } } }
        write(0, 0x310, 2 << 24); write(0, 0x300, 0x4040)          // physical 2
        #expect(pending() == [2]); drain()
        write(0, 0x310, 0xFF << 24); write(0, 0x300, 0x4040)       // physical broadcast
        #expect(pending() == [0, 1, 2, 3]); drain()
        // Flat model: LDR bits; destination 0b0110 reaches CPUs 1 and 2.
        for cpu in 0..<4 { write(cpu, 0xD0, UInt32(1 << cpu) << 24) }
        write(0, 0x310, 0x06 << 24); write(0, 0x300, 0x4840)
        #expect(pending() == [1, 2]); drain()
        // Cluster model: cluster 1 members 1 and 2 are CPUs 2 and 3.
        for cpu in 0..<4 { write(cpu, 0xE0, 0x0FFF_FFFF) }
        for cpu in 0..<4 { write(cpu, 0xD0, UInt32((cpu / 2) << 4 | 1 << (cpu % 2)) << 24) }
        write(0, 0x310, 0x13 << 24); write(0, 0x300, 0x4840)
        #expect(pending() == [2, 3]); drain()
        write(1, 0x300, 0xC_4040)   // all excluding self
        #expect(pending() == [0, 2, 3]); drain()
        write(1, 0x300, 0x8_4040)   // all including self
        #expect(pending() == [0, 1, 2, 3]); drain()
        // Lowest priority: the lowest TPR wins.
        for cpu in 0..<4 { write(cpu, 0x80, cpu == 3 ? 0x10 : 0x20) }
        write(0, 0x310, 0xFF << 24); write(0, 0x300, 0x4140)
        #expect(pending() == [3]); drain()
    }

    @Test("NMI, INIT and SIPI IPIs become events for the target vCPU")
    func startupEvents() {
        enable(0)
        write(0, 0x310, 3 << 24); write(0, 0x300, 0x4400)   // NMI to 3
        #expect(apic.hasNMI(vcpu: 3))
        #expect(apic.takeNMI(vcpu: 3))
        #expect(!apic.takeNMI(vcpu: 3))
        write(0, 0x300, 0xC_4500)                        // INIT to the others
        #expect(apic.hasStartupEvent(vcpu: 1) && !apic.hasStartupEvent(vcpu: 0))
        #expect(apic.takeINIT(vcpu: 1))
        write(0, 0x300, 0xC_4608)                        // SIPI vector 8
        #expect(apic.takeSIPI(vcpu: 2) == 8)
        #expect(apic.takeSIPI(vcpu: 2) == nil)
        // INIT level de-assert is ignored.
        write(0, 0x310, 1 << 24); write(0, 0x300, 0x8500)
        #expect(!apic.takeINIT(vcpu: 1))
        let state = CPUState.startup(vector: 8)
        #expect(state.cs.selector == 0x0800 && state.cs.base == 0x8000 && state.rip == 0 && state.mode == .real)
    }

    @Test("INIT then SIPI before the AP looks (its thread started late): the INIT's reset keeps the later SIPI; a SIPI before an INIT is void")
    func startupBeforeTheAPLooks() {
        enable(0)
        write(0, 0x310, 1 << 24)
        write(0, 0x300, 0x4500)                          // INIT to 1
        write(0, 0x300, 0x4608)                          // SIPI vector 8
        write(0, 0x300, 0x4608)                          // and again, as the MP spec says
        #expect(apic.takeINIT(vcpu: 1))                  // the AP's thread gets to it only now
        #expect(apic.takeSIPI(vcpu: 1) == 8)
        #expect(apic.takeSIPI(vcpu: 1) == nil)
        write(0, 0x300, 0x4609)                          // SIPI, then INIT: the INIT voids it
        write(0, 0x300, 0x4500)
        #expect(apic.takeINIT(vcpu: 1))
        #expect(apic.takeSIPI(vcpu: 1) == nil)
    }

    @Test("the timer: one-shot counts down and fires once, periodic reloads, masked fires nothing")
    func timer() {
        enable(1)
        write(1, 0x3E0, 0x3)            // divide by 16
        write(1, 0x320, 0x00041)        // one-shot, vector 0x41
        write(1, 0x380, 1_000_000)      // 16 ms
        let first = read(1, 0x390)
        #expect(first > 0 && first <= 1_000_000)
        var waited = 0
        while !apic.hasPendingInterrupt(vcpu: 1) && waited < 5000 { usleepMilliseconds(1); waited += 1 }
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == 0x41)
        #expect(read(1, 0x390) == 0)
        write(1, 0xB0, 0)
        usleepMilliseconds(40)
        #expect(!apic.hasPendingInterrupt(vcpu: 1))   // one-shot: once
        // Periodic: it keeps coming.
        write(1, 0x3E0, 0xB)
        write(1, 0x320, 0x20042)
        write(1, 0x380, 2_000_000)      // 2 ms
        var seen = 0
        waited = 0
        while seen < 3 && waited < 5000 {
            if apic.acknowledgeInterrupt(vcpu: 1) == 0x42 { seen += 1; write(1, 0xB0, 0) }
            usleepMilliseconds(1); waited += 1
        }
        #expect(seen == 3)
        #expect(read(1, 0x390) <= 2_000_000)
        write(1, 0x320, 0x50042)        // masked, and a mode change (to TSC-deadline) stops it
        #expect(read(1, 0x390) == 0)
    }

    @Test("x2APIC: enabling through IA32_APIC_BASE, MSR registers, ICR as one MSR, invalid transitions #GP")
    func x2APIC() {
        #expect(apic.readMSR(vcpu: 1, 0x802) == nil)   // xAPIC mode: the MSRs fault
        #expect(apic.writeMSR(vcpu: 1, MSR.apicBase, 0xFEE0_0400, tscNow: 0) == false)   // x2APIC without enable
        #expect(apic.writeMSR(vcpu: 1, MSR.apicBase, 0xFEE0_0C00, tscNow: 0) == true)
        #expect(!apic.isLocalAPIC(0xFEE0_0000, vcpu: 1))   // no MMIO in x2APIC mode
        #expect(apic.readMSR(vcpu: 1, 0x802) == 1)         // the full 32-bit ID
        #expect(apic.readMSR(vcpu: 1, 0x80D) == 1 << 1)   // logical ID: cluster 0, bit 1
        #expect(apic.writeMSR(vcpu: 1, 0x80F, 0x1FF, tscNow: 0) == true)
        #expect(apic.writeMSR(vcpu: 1, 0x80B, 1, tscNow: 0) == false)   // EOI takes only 0
        #expect(apic.writeMSR(vcpu: 1, 0x83F, 0x77, tscNow: 0) == true)  // SELF IPI
        #expect(apic.acknowledgeInterrupt(vcpu: 1) == 0x77)
        #expect(apic.writeMSR(vcpu: 1, 0x80B, 0, tscNow: 0) == true)
        enable(3)
        #expect(apic.writeMSR(vcpu: 1, 0x830, 3 << 32 | 0x4066, tscNow: 0) == true)   // to APIC ID 3
        #expect(apic.acknowledgeInterrupt(vcpu: 3) == 0x66)
        #expect(apic.writeMSR(vcpu: 1, MSR.apicBase, 0xFEE0_0800, tscNow: 0) == false)  // x2APIC → xAPIC directly
        #expect(apic.writeMSR(vcpu: 1, MSR.apicBase, 0xFEE0_0000, tscNow: 0) == true)   // → disabled
        #expect(apic.writeMSR(vcpu: 1, MSR.apicBase, 0xFEE0_0800, tscNow: 0) == true)   // → xAPIC
        #expect(apic.readMSR(vcpu: 1, 0x802) == nil)
    }

    @Test("IOAPIC: ID/version, redirection entries, edge delivery through the router, masks")
    func ioapicEdge() {
        let io = apic.ioapic!
        func select(_ r: UInt32) { io.mmioWrite(IOAPIC.base, size: 4, value: UInt64(r)) }
        func window() -> UInt32 { UInt32(io.mmioRead(IOAPIC.base + 0x10, size: 4)) }
        func setWindow(_ v: UInt32) { io.mmioWrite(IOAPIC.base + 0x10, size: 4, value: UInt64(v)) }
        select(0); #expect(window() == 4 << 24)   // ID = CPU count
        select(1); #expect(window() == 0x0017_0020)
        select(0x10 + 2 * 4); #expect(window() == 0x10000)   // masked after reset
        enable(2)
        select(0x10 + 2 * 4); setWindow(0x0000_0034)        // pin 4: vector 0x34, edge, unmasked
        select(0x11 + 2 * 4); setWindow(2 << 24)            // to APIC 2
        model.router.line(4).pulse()
        #expect(apic.acknowledgeInterrupt(vcpu: 2) == 0x34)
        apic.mmioWrite(vcpu: 2, LocalAPIC.defaultBase + 0xB0, size: 4, value: 0)
        // ISA IRQ 0 arrives on pin 2.
        select(0x10 + 2 * 2); setWindow(0x0000_0030)
        select(0x11 + 2 * 2); setWindow(2 << 24)
        model.router.line(0).pulse()
        #expect(apic.acknowledgeInterrupt(vcpu: 2) == 0x30)
        apic.mmioWrite(vcpu: 2, LocalAPIC.defaultBase + 0xB0, size: 4, value: 0)
        select(0x10 + 2 * 4); setWindow(0x0001_0034)        // masked
        model.router.line(4).pulse()
        #expect(!apic.hasPendingInterrupt(vcpu: 2))
    }

    @Test("IOAPIC level-triggered: remote IRR until the EOI, re-delivery while the line stays high")
    func ioapicLevel() {
        let io = apic.ioapic!
        enable(0)
        // The 8259A pair sees ISA IRQ 9 too and reaches vCPU 0 through LINT0: mask it, as an
        // OS that uses the IOAPIC does.
        model.ports.write(0x21, size: 1, value: 0xFF)
        model.ports.write(0xA1, size: 1, value: 0xFF)
        io.mmioWrite(IOAPIC.base, size: 4, value: 0x10 + 2 * 9)
        io.mmioWrite(IOAPIC.base + 0x10, size: 4, value: 0x0000_8039)   // level, vector 0x39, to APIC 0
        model.router.set(9, high: true)
        #expect(io.entry(9) & (1 << 14) != 0)   // remote IRR
        #expect(apic.acknowledgeInterrupt(vcpu: 0) == 0x39)
        #expect(read(0, 0x180 + 0x10) & (1 << 25) != 0)   // TMR bit 0x39
        write(0, 0xB0, 0)   // EOI, broadcast: the line is still high, so it comes again
        #expect(apic.acknowledgeInterrupt(vcpu: 0) == 0x39)
        model.router.set(9, high: false)
        write(0, 0xB0, 0)
        #expect(io.entry(9) & (1 << 14) == 0)
        #expect(apic.acknowledgeInterrupt(vcpu: 0) == nil)
    }

    // MARK: Guests, both engines

    @Test("apic-ipi: LAPIC timer ticks in HLT, 100 IPIs per vCPU, both broadcasts", arguments: backends(), [1, 4, 8])
    func apicIPI(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("apic-ipi.elf"), backend: backend, cpus: cpus, timeout: 60)
        let expected = (0..<cpus).map { i in
            "cpu\(i) ticks=ok ipi=\(i == 0 ? 0 : 100) all-but-self=\(i == 0 ? 0 : 1) all=1\n"
        }.joined()
        #expect(r.output == expected)
        #expect(r.status == 0)
    }

    @Test("timer-poll: periodic, one-shot and TSC-deadline interrupts reach vCPUs that spin with IF set and never exit", arguments: backends(), [1, 4])
    func timerPoll(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("timer-poll.elf"), backend: backend, cpus: cpus, timeout: 60)
        #expect(r.output == (0..<cpus).map { "cpu\($0) periodic=10 one-shot=1 deadline=1\n" }.joined())
        #expect(r.status == 0)
    }

    @Test("a local APIC timer is fired by its vCPU's thread once attached: arming wakes no timer thread, another thread's arm wakes the owner, detach hands it back")
    func ownedTimer() throws {
        let woken = Recorder<Int>()
        let clock = MachineClock()
        let timers = TimerService(clock: clock, wakeOwner: { woken.append($0) })
        let fired = Recorder<String>()
        let own = timers.makeTimer("own", owner: 2) { fired.append("own") }
        #expect(timers.attach(owner: 1) == nil)   // vCPU 1 owns none
        // vCPU 2's thread attaches and arms: its own arm wakes nobody.
        var attached: DeviceTimer?
        HostThread.spawn(name: "vcpu2") {
            attached = timers.attach(owner: 2)
            own.arm(after: 60_000_000_000)
        }.join()
        #expect(attached === own)
        #expect(woken.all.isEmpty)
        own.arm(after: 1_000_000)
        #expect(woken.all == [2])                 // armed from another thread: the owner looks again
        #expect(timers.anyArmed)
        #expect(!own.fireIfDue())                 // not yet due
        usleepMilliseconds(20)
        #expect(fired.all.isEmpty)                // no timer thread fires an attached timer
        #expect(own.fireIfDue())
        #expect(fired.all == ["own"])
        #expect(own.armedDeadline == nil && !timers.anyArmed)
        // Detached, the timer thread fires it again.
        own.arm(after: 1_000_000)
        own.detach()
        var waited = 0
        while fired.all.count < 2 && waited < 5000 { usleepMilliseconds(1); waited += 1 }
        #expect(fired.all == ["own", "own"])
        timers.stop()
    }

    /// The ticks of vCPU 0's periodic timer (1 ms, vector 0x40) a guest would take after
    /// machine time jumps to `late` ns, on a machine with `slack`: each acknowledged and
    /// EOId, as a handler does, until none is pending.
    /// With `duringBurst`, machine time moves there (and the timer fires, if due) after the
    /// first interrupt is taken: a tick that comes due while owed ones are being taken.
    static func ticksTaken(afterJumpTo late: UInt64, slack: UInt64, duringBurst: UInt64? = nil) throws -> (first: Int, later: Int) {
        let time = Atomic<UInt64>(0)
        let model = DeviceModel(console: try Console(.capture), input: .none(), cpus: 1,
                                clock: MachineClock { time.load(ordering: .relaxed) }, timerSlack: slack) { _ in }
        let apic = model.apic
        func write(_ offset: UInt64, _ value: UInt32) {
            apic.mmioWrite(vcpu: 0, LocalAPIC.defaultBase + offset, size: 4, value: UInt64(value))
        }
        func takeAll(duringBurst: UInt64? = nil) -> Int {
            var n = 0
            while n < 10_000, let v = apic.acknowledgeInterrupt(vcpu: 0) {
                #expect(v == 0x40)
                n += 1
                write(0xB0, 0)
                if n == 1, let t = duringBurst {
                    time.store(t, ordering: .relaxed)
                    model.timers.fireDue()
                }
            }
            return n
        }
        write(0xF0, 0x1FF)
        write(0x3E0, 0xB)               // divide by 1
        write(0x320, 0x20040)           // periodic, vector 0x40
        write(0x380, 1_000_000)         // 1 ms
        time.store(late, ordering: .relaxed)
        #expect(model.timers.fireDue() == 1)   // one fire, however late: the next deadline is ahead
        let first = takeAll(duringBurst: duringBurst)
        // The next period's tick comes on its own, and none is owed any more.
        time.store((max(late, duringBurst ?? 0) / 1_000_000 + 1) * 1_000_000, ordering: .relaxed)
        #expect(model.timers.fireDue() == 1)
        return (first, takeAll())
    }

    @Test("--timer-slack: a periodic timer that fires late raises the ticks it passed over, one per EOI, up to the slack's worth; without a slack they merge into one interrupt, as on QEMU and KVM")
    func lateTicks() throws {
        // Fired at 3.5 ms: ticks 1, 2 and 3 were due.
        #expect(try Self.ticksTaken(afterJumpTo: 3_500_000, slack: 10_000_000) == (3, 1))
        #expect(try Self.ticksTaken(afterJumpTo: 3_500_000, slack: 0) == (1, 1))
        // On time: one tick, slack or not.
        #expect(try Self.ticksTaken(afterJumpTo: 1_000_000, slack: 10_000_000) == (1, 1))
        // Tick 4 comes due while tick 2 waits in the IRR: owed too, not merged (without a
        // slack the late ones merged already, and tick 4 is a tick of its own).
        #expect(try Self.ticksTaken(afterJumpTo: 3_500_000, slack: 10_000_000, duringBurst: 4_000_000) == (4, 1))
        #expect(try Self.ticksTaken(afterJumpTo: 3_500_000, slack: 0, duringBurst: 4_000_000) == (2, 1))
        // A second late (a stalled host, not a slack): at most slack / period + 1 made up.
        #expect(try Self.ticksTaken(afterJumpTo: 1_000_500_000, slack: 10_000_000) == (12, 1))
        #expect(try Self.ticksTaken(afterJumpTo: 1_000_500_000, slack: 2_000_000) == (4, 1))
    }

    @Test("--timer-slack: a halted vCPU wakes for a catching-up deadline at the slack's next multiple (the same for every vCPU), for any other deadline on time")
    func slackWakeup() throws {
        let slack: UInt64 = 4_000_000
        let timers = TimerService(clock: MachineClock(), slack: slack)
        let timer = timers.makeTimer("lapic0", owner: 0) {}
        HostThread.spawn(name: "vcpu0") { _ = timers.attach(owner: 0) }.join()
        for offset: UInt64 in [1, 1_000_000, 3_999_999, 4_000_000, 4_000_001] {
            let deadline = 3_600_000_000_000 + offset   // an hour ahead: it never fires here
            timer.arm(at: deadline, catchesUp: true)
            let due = try #require(timer.due.hostNanoseconds)
            let wake = try #require(timer.hostWakeup)
            #expect(wake >= due && wake - due < slack && wake % slack == 0)
            timer.arm(at: deadline)
            #expect(timer.hostWakeup == due)
        }
        timer.disarm()
        #expect(timer.hostWakeup == nil)
        let precise = TimerService(clock: MachineClock())
        let other = precise.makeTimer("lapic0", owner: 0) {}
        other.arm(at: 3_600_000_000_123, catchesUp: true)
        #expect(other.hostWakeup == other.due.hostNanoseconds)
        other.disarm()
        timers.stop()
        precise.stop()
    }

    @Test("idle: all 2,000 ticks of a 1 kHz periodic LAPIC timer reach vCPUs waiting in HLT, on time or with --timer-slack late but none lost", arguments: backends(), [1, 4])
    func idleTicks(backend: BackendKind, cpus: Int) throws {
        for slack: UInt64 in [0, 10_000_000] {
            let r = runGuest(try guest("idle.elf"), backend: backend, cpus: cpus, timeout: 60) { $0.timerSlack = slack }
            #expect(r.status == 0, "\(r.message ?? "")")
            let lines = r.output.split(separator: "\n")
            #expect(lines.count == cpus, "\(r.output)")
            for (i, line) in lines.enumerated() {
                // "cpuN ticks=T ms=M": the burst after the last wake-up may run past 2,000.
                let fields = line.split(separator: " ")
                let ticks = fields.count == 3 ? Int(fields[1].dropFirst(6)) : nil
                let ms = fields.count == 3 ? Int(fields[2].dropFirst(3)) : nil
                #expect(fields.first == "cpu\(i)" && (ticks ?? 0) >= 2000, "slack \(slack): \(line)")
                // At least the 2,000 ms the ticks take; 20 s if a 10 ms slack lost them.
                #expect((2000..<10_000).contains(ms ?? 0), "slack \(slack): \(line)")
            }
        }
    }

    @Test("--timer-slack on the command line: a time with a unit up to 100ms, or 0; anything else, or with --clock instructions, a one-line usage error", .enabled(if: haveBinary, "no .build/release/tandem"))
    func timerSlackOption() throws {
        let path = try guest("idle.elf")
        for args in [["--timer-slack", "5"], ["--timer-slack", "200ms"], ["--timer-slack", "-1ms"], ["--timer-slack", "nanms"],
                     ["--timer-slack", "1ms", "--clock", "instructions", "--backend", "interp"]] {
            let r = try runProcess(tandemBinary, ["run", "--quiet"] + args + [path])
            #expect(r.status == 200, "\(args): \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("--timer-slack"), "\(args): \(r.stderr)")
        }
        let r = try runProcess(tandemBinary, ["run", "--quiet", "--backend", "interp", "--cpus", "2", "--timer-slack", "2.5ms", path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("cpu0 ticks=20") && r.stdout.contains("\ncpu1 ticks=20"), "\(r.stdout)")
    }

    @Test("nmi-pingpong: 200 NMIs to a vCPU halted with IF clear, each sent by one that halts at once; all halted with an NMI still pending is not the end (it stopped the machine, as it stopped memtest86+)", arguments: backends(), [2, 4])
    func nmiPingPong(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("nmi-pingpong.elf"), backend: backend, cpus: cpus, timeout: 60)
        #expect(r.output == "nmi: 200 rounds\n", "status \(r.status): \(r.message ?? "")")
        #expect(r.status == 0)
    }

    @Test("x2apic: x2APIC mode, TSC-deadline timer, SELF IPI and ICR-MSR IPIs round a ring, through MSRs only", arguments: backends(), [1, 4])
    func x2APICGuest(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("x2apic.elf"), backend: backend, cpus: cpus, timeout: 60)
        #expect(r.output == (0..<cpus).map { "cpu\($0) id=\($0) deadline=5 self=1 ring=1\n" }.joined())
        #expect(r.status == 0)
    }

    @Test("--clock instructions: timer interrupts land on the same instruction every run (identical traces); HLT skips to the next deadline; the TSC moves on in a polling loop; KVM refused")
    func deterministicClock() throws {
        var traces: [String] = []
        for run in 0..<2 {
            let path = scratchPath("clock-trace-\(run)")
            defer { try? FileManager.default.removeItem(atPath: path) }
            let r = try runProcess(tandemBinary, ["run", "--backend", "interp", "--clock", "instructions", "--trace", path, try guest("apic-ipi.elf")])
            #expect(r.status == 0)
            #expect(r.stdout == "cpu0 ticks=ok ipi=0 all-but-self=0 all=1\n")
            traces.append(try String(contentsOfFile: path, encoding: .utf8))
        }
        #expect(traces[0].contains("interrupt (external) vector 64"))
        #expect(traces[0] == traces[1])
        // 2,000 ticks of a 1 kHz timer: 2 s of machine time (the PM timer reads it), no
        // waiting for the host's.
        let idle = try runProcess(tandemBinary, ["run", "--backend", "interp", "--clock", "instructions", "--timeout", "1", try guest("idle.elf")])
        #expect(idle.stdout == "cpu0 ticks=2000 ms=2000\n")
        #expect(idle.status == 0)
        // A loop polling RDTSC with interrupts off and no timer armed: the TSC moves on
        // with the instructions (it stood still inside a run, and this never ended).
        let poll = try runProcess(tandemBinary, ["run", "--backend", "interp", "--clock", "instructions", "--timeout", "20", try guest("tsc-wait.bin")])
        #expect(poll.stdout == "tsc-wait: ok\n", "\(poll.stderr)")
        #expect(poll.status == 0)
        if canOpenKVM() {
            let kvm = try runProcess(tandemBinary, ["run", "--backend", "kvm", "--clock", "instructions", try guest("idle.elf")])
            #expect(kvm.status == 200)
            #expect(kvm.stderr.contains("--clock instructions needs a backend that counts instructions"))
        }
    }

    @Test("uart-echo: received-data interrupts through IOAPIC pin 4, echoed by the handler", arguments: backends())
    func uartEcho(backend: BackendKind) throws {
        let r = runGuest(try guest("uart-echo.elf"), backend: backend, configure: { $0.input = .bytes(Array("hello, world. after".utf8)) })
        #expect(r.output == "hello, world.\necho: 13 bytes\n")
        #expect(r.status == 0)
    }

    @Test("uart-echo from stdin: bytes that arrive while the guest waits in HLT raise the interrupt; the end of input halts the machine", arguments: backends())
    func uartEchoStdin(backend: BackendKind) throws {
        let input = try writeScratchFile(Array("abc.".utf8), name: "echo-input")
        let r = try runProcess(tandemBinary, ["run", "--backend", backend.rawValue, "--timeout", "30", try guest("uart-echo.elf")], input: input)
        #expect(r.stdout == "abc.\necho: 4 bytes\n")
        #expect(r.status == 0)
        let short = try writeScratchFile(Array("no dot".utf8), name: "echo-short")
        let s = try runProcess(tandemBinary, ["run", "--backend", backend.rawValue, "--timeout", "30", try guest("uart-echo.elf")], input: short)
        #expect(s.stdout == "no dot")
        #expect(s.status == 0)
        #expect(s.stderr.contains("all vCPUs halted and no interrupt source can wake them"))
    }

    @Test("smp-boot: a Multiboot kernel starts its APs with INIT-SIPI-SIPI, each exactly once", arguments: backends(), [1, 4])
    func smpBoot(backend: BackendKind, cpus: Int) throws {
        let r = runGuest(try guest("smp-boot.elf"), backend: backend, cpus: cpus, timeout: 60)
        let mask = cpus == 1 ? 0 : (UInt64(1) << cpus) - 2
        let hex = String(mask, radix: 16)
        #expect(r.output == "aps=\(cpus - 1) mask=\(String(repeating: "0", count: 16 - hex.count) + hex)\n")
        #expect(r.status == 0)
    }
}

func usleepMilliseconds(_ ms: Int) {
    usleep(useconds_t(ms * 1000))
}
