import CCapstone
import HostOS
import X86

/// Serialises every Capstone call in the process. Capstone 4 is documented as thread-safe
/// with one handle per thread, but decoding on several threads at once was measured to
/// return other threads' instructions now and then (interpreter tests running in
/// parallel executed wrong code). Decoding happens once per instruction address, so the
/// lock costs nothing measurable.
public let capstoneLock = HostLock()

/// Capstone, for human-readable disassembly (stop reports, traces, diffs).
/// One instance per thread: a Capstone handle is not thread-safe.
public final class Disassembler {
    private var handles: [Int: csh] = [:]

    public init() {}

    deinit {
        capstoneLock.lock()
        defer { capstoneLock.unlock() }
        for (_, h) in handles { var h = h; cs_close(&h) }
    }

    private func handle(bits: Int) -> csh? {
        if let h = handles[bits] { return h }
        var h = csh()
        let mode: cs_mode = bits == 64 ? CS_MODE_64 : bits == 32 ? CS_MODE_32 : CS_MODE_16
        guard cs_open(CS_ARCH_X86, mode, &h) == CS_ERR_OK else { return nil }
        handles[bits] = h
        return h
    }

    /// Disassembles the first instruction of `bytes` at `address` in `bits`-bit code:
    /// its text ("mov eax, 1") and length, or nil when the bytes are not an instruction.
    public func disassemble(_ bytes: [UInt8], address: UInt64, bits: Int) -> (text: String, length: Int)? {
        guard !bytes.isEmpty else { return nil }
        capstoneLock.lock()
        defer { capstoneLock.unlock() }
        guard let h = handle(bits: bits) else { return nil }
        var insn: UnsafeMutablePointer<cs_insn>?
        let count = bytes.withUnsafeBufferPointer { cs_disasm(h, $0.baseAddress, $0.count, address, 1, &insn) }
        guard count > 0, let insn else { return nil }
        defer { cs_free(insn, count) }
        let mnemonic = withUnsafeBytes(of: insn.pointee.mnemonic) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let operands = withUnsafeBytes(of: insn.pointee.op_str) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        return (operands.isEmpty ? mnemonic : "\(mnemonic) \(operands)", Int(insn.pointee.size))
    }

    /// Capstone's version, "major.minor".
    public static var capstoneVersion: String {
        var major: Int32 = 0, minor: Int32 = 0
        cs_version(&major, &minor)
        return "\(major).\(minor)"
    }
}
