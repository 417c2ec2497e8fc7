import Synchronization

// The vCPU state machine (Documentation/Architecture.md, "The vCPU state machine"), after
// Firecracker's `vstate/vcpu`: each vCPU thread runs its engine and is told what else to
// do through one channel of its own. Any thread sends a command (the machine's stop, the
// debugger, SIGUSR1/SIGUSR2, `--switch-every`, gdb's `monitor engine`); the vCPU's thread
// looks at its channel at every turn of its loop — one atomic load while nothing is asked —
// and again wherever it sleeps or parks, and carries the command out itself, at an
// instruction boundary. The sender kicks the vCPU's engine and wakes it, so it looks soon.

/// Where a vCPU is in its life. Set only by its own thread; read by anyone (gdb's
/// `monitor engine`, tests).
public enum VCPUState: UInt8, Sendable, CustomStringConvertible {
    /// Its thread has not started yet.
    case created
    /// Executing on its engine, or asleep in HLT or wait-for-SIPI (the architectural
    /// `RunState` a snapshot records tells those apart).
    case running
    /// Parked for the debugger until gdb resumes it.
    case paused
    /// Moving its whole state to the other engine.
    case switching
    /// Parked with its state while a live snapshot (SIGUSR2) is written.
    case snapshotting
    /// Its thread has left the loop: the machine stopped.
    case stopped

    public var description: String {
        switch self {
        case .created: "created"
        case .running: "running"
        case .paused: "paused"
        case .switching: "switching"
        case .snapshotting: "snapshotting"
        case .stopped: "stopped"
        }
    }
}

/// Which engine a vCPU is asked to move to.
public enum SwitchRequest: UInt8, Sendable {
    case none = 0
    case toKVM = 1
    case toInterpreter = 2
    /// To whichever engine it is not on.
    case flip = 3
}

/// What a vCPU can be told to do.
public enum VCPUCommand: Sendable, Equatable {
    /// Park for the debugger at the next instruction boundary (or where it sleeps).
    case pause
    /// Withdraw `pause` (gdb's continue/step; the debugger resumes each parked vCPU itself).
    case resume
    /// Move to another engine at the next instruction boundary.
    case switchEngine(SwitchRequest)
    /// Park with its state for a live snapshot.
    case snapshot
    /// Withdraw `snapshot` (the snapshot is written).
    case snapshotDone
    /// Leave the loop: the machine stops. Not withdrawn.
    case stop
}

/// One vCPU's commands and state: a word of pending commands (stop, snapshot and pause
/// bits, and the requested engine move) and the state its thread is in.
public final class VCPUCommandChannel: Sendable {
    private static let stopBit: UInt32 = 1
    private static let snapshotBit: UInt32 = 2
    private static let pauseBit: UInt32 = 4
    private static let switchShift: UInt32 = 8
    private static let switchMask: UInt32 = 3 << 8

    private let word = Atomic<UInt32>(0)
    private let current = Atomic<UInt8>(VCPUState.created.rawValue)

    public init() {}

    /// Records `command` (the sender then kicks and wakes the vCPU: see the machine's `send`).
    public func send(_ command: VCPUCommand) {
        switch command {
        case .pause: word.bitwiseOr(Self.pauseBit, ordering: .sequentiallyConsistent)
        case .resume: word.bitwiseAnd(~Self.pauseBit, ordering: .sequentiallyConsistent)
        case .snapshot: word.bitwiseOr(Self.snapshotBit, ordering: .sequentiallyConsistent)
        case .snapshotDone: word.bitwiseAnd(~Self.snapshotBit, ordering: .sequentiallyConsistent)
        case .stop: word.bitwiseOr(Self.stopBit, ordering: .sequentiallyConsistent)
        case .switchEngine(let request):
            // The latest request replaces an earlier one not yet carried out.
            var old = word.load(ordering: .relaxed)
            while true {
                let new = old & ~Self.switchMask | UInt32(request.rawValue) << Self.switchShift
                let (done, seen) = word.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
                if done { return }
                old = seen
            }
        }
    }

    /// Whether anything is asked (the loop's one look per turn).
    @inlinable public var hasCommands: Bool { pendingWord != 0 }
    @usableFromInline var pendingWord: UInt32 { word.load(ordering: .relaxed) }

    public var stopRequested: Bool { word.load(ordering: .relaxed) & Self.stopBit != 0 }
    public var pauseRequested: Bool { word.load(ordering: .sequentiallyConsistent) & Self.pauseBit != 0 }
    public var snapshotRequested: Bool { word.load(ordering: .relaxed) & Self.snapshotBit != 0 }
    /// The engine move asked for and not yet carried out.
    public var switchRequest: SwitchRequest {
        SwitchRequest(rawValue: UInt8(truncatingIfNeeded: (word.load(ordering: .sequentiallyConsistent) & Self.switchMask) >> Self.switchShift)) ?? .none
    }

    /// The move `request` is done (or given up): withdrawn unless another came meanwhile.
    public func switchDone(_ request: SwitchRequest) {
        var old = word.load(ordering: .relaxed)
        while (old & Self.switchMask) >> Self.switchShift == UInt32(request.rawValue) {
            let (done, seen) = word.compareExchange(expected: old, desired: old & ~Self.switchMask, ordering: .sequentiallyConsistent)
            if done { return }
            old = seen
        }
    }

    /// The state the vCPU's thread is in.
    public var state: VCPUState { VCPUState(rawValue: current.load(ordering: .acquiring)) ?? .created }

    /// The vCPU's thread enters `state` (only it calls this).
    public func enter(_ state: VCPUState) { current.store(state.rawValue, ordering: .releasing) }
}
