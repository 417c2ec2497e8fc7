/// The exit statuses of `tandem run`: part of the interface, documented in the README.
///
/// A guest's own status (written to port 0xF4) is passed through as v & 0xFF; a guest
/// that wants it to be unambiguous keeps it below 200. 129-159 stay free for the shell.
public enum ExitStatus: Int32, CaseIterable, Sendable {
    /// A bad flag or option value.
    case usage = 200
    /// The image could not be read or is not a valid image of its format.
    case badImage = 201
    /// The image is valid but does not fit the machine (segment outside RAM, too large).
    case imageDoesNotFit = 202
    /// The requested backend cannot run here (no /dev/kvm, not implemented, ...).
    case backendUnavailable = 203
    /// A vCPU shut down: triple fault.
    case tripleFault = 204
    /// An instruction neither backend can execute.
    case unsupportedInstruction = 205
    /// `--timeout` expired.
    case timeout = 206
    /// `--max-instructions` reached.
    case instructionLimit = 207
    /// A host-side failure (an ioctl, memory reservation, internal error).
    case hostError = 208
    /// SIGINT (Ctrl-C), SIGTERM, SIGHUP or SIGQUIT stopped the guest.
    case interrupted = 209
    /// The hardware refused to enter the guest (KVM_EXIT_FAIL_ENTRY).
    case entryFailed = 210
    /// The console (stdout or `--serial file:`), the trace or the snapshot could not be
    /// written (a closed pipe, a full disk).
    case outputError = 211
    /// The guest reset the machine (i8042 command 0xFE or output-port bit 0, port 0xCF9):
    /// Tandem has no firmware to restart, so the run ends.
    case guestReset = 212
    /// gdb killed the guest (`kill`, the `k` packet) through `--gdb`.
    case debuggerKilled = 213
    /// `--restore`: the snapshot cannot be read, is not one, is truncated or corrupted, has
    /// another format version, or was taken where the CPU offered other features.
    case badSnapshot = 214

    public var meaning: String {
        switch self {
        case .debuggerKilled: "killed by the debugger (gdb's kill)"
        case .badSnapshot: "--restore: snapshot unreadable, corrupted, of another version or from another CPU"
        case .guestReset: "the guest reset the machine (i8042 0xFE, port 0xCF9)"
        case .usage: "bad command-line flag or value"
        case .badImage: "image unreadable or malformed"
        case .imageDoesNotFit: "image does not fit in guest memory"
        case .backendUnavailable: "the requested backend cannot run on this host"
        case .tripleFault: "triple fault (vCPU shutdown)"
        case .unsupportedInstruction: "an instruction neither backend can execute"
        case .timeout: "--timeout expired"
        case .instructionLimit: "--max-instructions reached"
        case .hostError: "host error"
        case .interrupted: "interrupted by SIGINT, SIGTERM, SIGHUP or SIGQUIT"
        case .entryFailed: "KVM refused to enter the guest"
        case .outputError: "the console, the trace or the snapshot could not be written"
        }
    }
}
