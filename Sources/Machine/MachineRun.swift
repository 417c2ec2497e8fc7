import Dispatch
import RunLoop
import VCPURuntime

// Running an assembled machine: the signals routed to it while it runs, its vCPUs run by
// their `VCPUManager` (VCPURuntime), and the report of how the run ended. Also the
// machine's public handles on its running vCPUs, which the manager carries out.

extension Machine {
    /// Runs the guest to its end: starts one thread per vCPU, waits for a stop (the exit
    /// device, all vCPUs halted, a fault, `--timeout`, a signal, an output error), and
    /// reports it. `--timeout` counts from `configuration.started` (when the command began).
    public func run() -> RunOutcome {
        StopSignals.routed(to: { [weak self] sig in self?.requestStop(.interrupted(signal: sig)) }) {
            // SIGUSR1: every vCPU to the other engine (VCPURuntime/EngineSwitch.swift).
            StopSignals.routingRequests(StopSignals.engineFlipSignal, to: { [weak self] in self?.vcpus.flipEngines(signalled: true) }) {
                // SIGUSR2: a snapshot while the guest runs (Snapshot.swift).
                guard configuration.snapshotPath != nil else { return runRouted() }
                return StopSignals.routingRequests(StopSignals.snapshotSignal, to: { [weak self] in self?.takeLiveSnapshot() }) { runRouted() }
            }
        }
    }

    private func runRouted() -> RunOutcome {
        let run = vcpus.run(timeout: configuration.timeout, countedFrom: configuration.started, gdb: gdbServer)
        let allStopped = run.allStopped
        if allStopped {
            devices.console.flush()
            trace.sink?.finish(status: vcpus.stopReason?.status ?? 0)
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - run.started.uptimeNanoseconds) / 1e9
        var reason = vcpus.stopReason ?? .hostError("stopped without a reason")
        if allStopped, let path = configuration.snapshotPath, let failure = writeSnapshot(to: path) { reason = .outputError(failure) }
        // Output lost at the final flush turns a guest's own ending into an output error.
        if let lost = vcpus.lateOutputError, reason.isGuestEnding { reason = .outputError(lost) }
        // Neither engine counts a vCPU's instructions on both (KVM counts none).
        let switched = vcpus.switched
        let instructions = vcpus.instructionsRetired
        var statistics = RunStatistics(
            backend: backendName, seconds: seconds,
            instructions: allStopped && !switched ? instructions : instructions.map { _ in nil },
            handoffs: allStopped ? vcpus.handoffs : 0,
            fallbackInstructions: allStopped ? vcpus.fallbackInstructions : 0)
        if allStopped && (vcpus.hybrid || switched) { statistics.engines = vcpus.engineStatistics() }
        if allStopped && (vcpus.fallback?.translate ?? false) { statistics.fallbackTranslated = vcpus.fallbackTranslated }
        if allStopped && !switched && backendName == "interp" {
            statistics.translated = vcpus.translatedInstructions.compactMap { $0 }.reduce(0, +)
        }
        gdbServer?.finish(status: reason.status)
        var message = message(for: reason)
        if !allStopped { message = (message ?? "tandem: stopped") + Self.notStoppedNote }
        return RunOutcome(status: reason.status, message: message, reason: reason, statistics: statistics)
    }

    /// Ends the report when the vCPU threads did not stop within `VCPUManager.stopGrace`
    /// of the stop: a blocked output write, or a backend bug.
    public static let notStoppedNote = " (a vCPU thread had not stopped 0.5 s later: reported without it)"

    // The machine's handles on its running vCPUs: the manager's (VCPURuntime).

    /// Stops the machine (the first reason wins) and kicks every vCPU out of its backend.
    public func requestStop(_ reason: StopReason) { vcpus.requestStop(reason) }

    /// Where vCPU `vcpu` is in its life (running, paused for gdb, switching engines, parked
    /// for a snapshot, stopped).
    public func state(ofVCPU vcpu: Int) -> VCPUState { vcpus.state(ofVCPU: vcpu) }

    /// Moves vCPU `vcpu` to `engine` at its next instruction boundary
    /// (`VCPUManager.switch(vcpu:to:)`); a machine that cannot: a usage error.
    public func `switch`(vcpu: Int, to engine: Engine) throws(MachineError) {
        do { try vcpus.switch(vcpu: vcpu, to: engine) } catch { throw MachineError(.usage, error.description) }
    }

    /// The engine vCPU `vcpu` runs on now (`VCPUManager.engine(of:)`).
    public func engine(of vcpu: Int) -> Engine { vcpus.engine(of: vcpu) }

    /// Whether the vCPUs can move between engines (`VCPUManager.canSwitchEngines`).
    public var canSwitchEngines: Bool { vcpus.canSwitchEngines }
}
