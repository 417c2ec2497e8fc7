#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GuestMemory
import RunLoop
import Synchronization
import X86

// The machine's side of the gdb stub: what gdb asked of each vCPU, the all-stop control
// the vCPU threads park in, and what the stub needs of the machine it debugs
// (`DebugTarget`; the vCPUs' side of parking and resuming is VCPURuntime/Debugger.swift).

/// What the gdb stub needs of the machine it debugs (`VCPUManager` conforms).
package protocol DebugTarget: AnyObject, Sendable {
    /// The vCPUs' stop and resume control.
    var debugControl: DebugControl { get }
    var vcpuCount: Int { get }
    /// "kvm", "interp", "hybrid".
    var backendName: String { get }
    var memory: GuestMemoryMap { get }
    /// Whether the machine is stopping (the stub then ends).
    var stopRequested: Bool { get }
    /// Stops every vCPU at its next instruction boundary (or where it sleeps).
    func pauseForDebugger()
    /// gdb's `k`: the machine stops with status 213.
    func killedByDebugger()
    /// The physical address of `linear` as vCPU `vcpu` (in `state`) sees it.
    func debugTranslate(_ vcpu: Int, linear: UInt64, state: CPUState) -> UInt64?
    /// gdb wrote guest memory (the interpreter's decoded code there is stale).
    func debugMemoryWritten(at physical: UInt64, length: Int)
    /// `monitor info devices`, `monitor stats`, `monitor trace ...`, `monitor engine ...`.
    func debugDeviceList() -> String
    func debugStatistics() -> String
    func debugTrace(_ words: [String]) -> String
    func debugEngine(_ words: [String]) -> String
}

/// What the debugger asked a vCPU to do when the machine resumes.
package enum DebugAction: Sendable, Equatable {
    /// Stay stopped (a `vCont` that does not name it).
    case stay
    case run
    /// Execute one instruction, then stop (and stop the others).
    case step
}

/// A data watchpoint (gdb's `Z2`-`Z4`): exact on the interpreter, which sees every access.
package struct Watchpoint: Sendable, Equatable {
    package enum Kind: Sendable { case write, read, access }
    package var kind: Kind
    package var address: UInt64
    package var length: UInt64

    package init(kind: Kind, address: UInt64, length: UInt64) {
        self.kind = kind
        self.address = address
        self.length = length
    }

    package func isHit(by access: MemoryAccess) -> Bool {
        switch kind {
        case .write: guard access.write else { return false }
        case .read: guard !access.write else { return false }
        case .access: break
        }
        return access.linear < address &+ length && address < access.linear &+ UInt64(access.size)
    }
}

/// Why a vCPU stopped for the debugger.
package enum DebugStopCause: Sendable, Equatable {
    /// gdb's Ctrl-C, its connection, or `--gdb-wait`.
    case interrupted
    case step
    case breakpoint
    case watchpoint(Watchpoint.Kind, UInt64)
}

/// The machine's side of a debugger (`--gdb`): all-stop control of the vCPUs.
///
/// A stop (a breakpoint, a watchpoint, a finished step, gdb's Ctrl-C) sends every vCPU the
/// `pause` command (its channel: RunLoop's `VCPUCommandChannel`); each parks at its next instruction boundary, or where it sleeps
/// (HLT, wait-for-SIPI), on its own thread: it leaves its state here and waits. The gdb
/// thread reads and changes those states while every vCPU is parked, then gives each an
/// action and resumes it; the vCPU writes back a changed state and sets up its backend
/// (breakpoints, single-step, watchpoints) before it runs again.
package final class DebugControl: @unchecked Sendable {
    package struct State {
        package var parked: [Bool]
        /// The state of each parked vCPU, as gdb sees and changes it.
        package var states: [CPUState?]
        package var dirty: [Bool]
        package var actions: [DebugAction]
        /// The first vCPU that stopped since the last resume, and why.
        package var stop: (vcpu: Int, cause: DebugStopCause)?
        /// Linear addresses of instruction breakpoints; `hardware` holds the `Z1` ones.
        package var breakpoints: Set<UInt64> = []
        package var hardware: Set<UInt64> = []
        package var watchpoints: [Watchpoint] = []
    }

    package let state: Mutex<State>
    /// The vCPUs' command channels (the machine's).
    package let channels: [VCPUCommandChannel]
    /// Per vCPU: signalled when it may run again.
    package let resumed: [DispatchSemaphore]

    package init(channels: [VCPUCommandChannel], startPaused: Bool) {
        let cpus = channels.count
        state = Mutex(State(parked: Array(repeating: false, count: cpus), states: Array(repeating: nil, count: cpus),
                            dirty: Array(repeating: false, count: cpus), actions: Array(repeating: .stay, count: cpus)))
        self.channels = channels
        // `--gdb-wait`: every vCPU parks before its first instruction.
        if startPaused { for c in channels { c.send(.pause) } }
        resumed = (0..<cpus).map { _ in DispatchSemaphore(value: 0) }
    }

    /// Whether a stop is under way (gdb is told once every vCPU has parked).
    package var pauseRequested: Bool { channels.contains { $0.pauseRequested } }

    package var allParked: Bool { state.withLock { $0.parked.allSatisfy { $0 } } }

    /// Resumes the parked vCPUs with the given actions (the others stay parked).
    package func resume(_ actions: [DebugAction]) {
        let go = state.withLock { s -> [Int] in
            s.stop = nil
            s.actions = actions
            let go = actions.indices.filter { actions[$0] != .stay && s.parked[$0] }
            // Not parked from now on: a stop is not complete until they park again.
            for i in go { s.parked[i] = false }
            return go
        }
        for c in channels { c.send(.resume) }
        for i in go { resumed[i].signal() }
    }
}

/// The linear address of the instruction at CS:RIP (what breakpoints are compared with).
package func linearInstructionPointer(_ s: CPUState) -> UInt64 {
    s.mode == .long64 ? s.rip : (s.cs.base &+ s.rip) & 0xFFFF_FFFF
}
