#if canImport(Glibc)
import Glibc
#endif
import Interpreter
import KVM
import Synchronization
import X86

// The vCPUs' side of snapshots (Documentation/Snapshots.md): parking every vCPU with its
// state at an instruction boundary while a live snapshot is written (SIGUSR2), completing
// a pending exit before a state is taken, and loading a restored snapshot's vCPU states.
// The snapshot itself — the devices, memory and file format — is the Machine module's.

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

extension VCPUManager {
    /// SIGUSR2 (on the signal thread): parks every vCPU, hands their states to `write` (the
    /// machine writes the snapshot), and lets the guest go on. Nothing happens while the
    /// machine stops, or while another live snapshot is under way.
    package func whileParkedForSnapshot(_ write: ([CPUState]) -> Void) {
        guard !stopRequested, liveSnapshot.begin(cpus: slots.count) else { return }
        devices.timers.pause()
        defer {
            // Withdrawn before the parked vCPUs are let go, so none parks again.
            for slot in slots { slot.commands.send(.snapshotDone) }
            liveSnapshot.end()
            devices.timers.resume()
        }
        for i in slots.indices { send(.snapshot, to: i) }
        guard let states = liveSnapshot.waitForAll(stopped: { stopRequested }) else { return }
        write(states)
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

    /// Finishes the instruction the vCPU's last exit left unfinished, so that its state is
    /// at an instruction boundary (on its own thread, after the loop).
    func completePendingExit(_ slot: VCPUSlot) {
        if let kvm = slot.active as? KVMVCPU {
            do { try kvm.completePendingExit() } catch { requestStop(.hostError("\(error)")) }
        } else if let interpreter = slot.active as? InterpreterVCPU {
            interpreter.completePendingExit()
        }
    }


    /// A restored snapshot's vCPU states (run states included) into the vCPUs' engines,
    /// before they run.
    package func load(snapshotStates states: [CPUState]) throws(VCPUManagerError) {
        for (i, state) in states.enumerated() {
            let slot = slots[i]
            do {
                try slot.active.writeState(state)
                // KVM keeps its own TSC (writeState leaves it): set it to the snapshot's.
                // (Hybrid: the vCPU starts on the interpreter; its KVM vCPU holds the clock.)
                if let kvm = (slot.kvm ?? slot.active) as? KVMVCPU { try kvm.setTSC(state.msrs.tsc) }
            } catch {
                throw VCPUManagerError("the snapshot's state of vcpu\(i) cannot be loaded into the \(backendName) engine: \(error)")
            }
            slot.runState = state.runState
        }
    }
}
