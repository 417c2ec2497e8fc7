import CHostX87
import X86

/// x87 status word bits.
enum X87Status {
    static let ie: UInt16 = 1 << 0
    static let de: UInt16 = 1 << 1
    static let ze: UInt16 = 1 << 2
    static let oe: UInt16 = 1 << 3
    static let ue: UInt16 = 1 << 4
    static let pe: UInt16 = 1 << 5
    static let sf: UInt16 = 1 << 6
    static let es: UInt16 = 1 << 7
    static let busy: UInt16 = 1 << 15
    /// The six exception flags.
    static let exceptions: UInt16 = 0x3F
    /// Everything FNCLEX clears: the flags, SF, ES and B.
    static let sticky: UInt16 = 0x80FF
}

/// How an x87 memory form (opcode, ModRM.reg) uses its operand.
enum X87MemoryUse: UInt8 {
    case invalid, load, store, fldenv, fldcw, fnstenv, fnstcw, frstor, fnsave, fnstsw
}

/// The x87 FPU. Arithmetic, comparisons, conversions, loads and stores of every format and
/// the transcendental instructions run on the host's FPU (`Sources/CHostX87`) with the
/// guest's control word, status word, tags and registers loaded, one instruction at a
/// time: the results, flags and masked responses are the hardware's. The control
/// instructions that only move state (FNINIT, FNCLEX, FNSTSW, FNSTCW, FLDCW, FNSTENV,
/// FLDENV, FNSAVE, FRSTOR) are done here, in the guest's formats. The state lives in
/// `CPUState.fpu` only (physical registers, abridged tags).
extension InterpreterVCPU {
    @inline(never)
    func x87(_ d: UnsafeMutablePointer<DecodedInstruction>, next: UInt64) throws(Fault) {
        let opcode = d.pointee.opcode
        let modrm = d.pointee.modrm
        if modrm < 0xC0 {
            // The reserved /digits are invalid opcodes before anything else is looked at.
            let use = Self.x87MemoryUse(opcode, (modrm >> 3) & 7)
            if use == .invalid { throw .ud() }
            // #NM: CR0.EM or CR0.TS, for every escape opcode (SDM Vol. 3, Table 2-2).
            if s.pointee.cr0 & (CR0.em | CR0.ts) != 0 { throw .nm() }
            try x87Memory(d, use: use, next: next)
        } else {
            guard Self.x87RegisterFormIsValid(opcode, modrm) else { throw .ud() }
            if s.pointee.cr0 & (CR0.em | CR0.ts) != 0 { throw .nm() }
            switch UInt16(opcode) << 8 | UInt16(modrm) {
            case 0xDBE2:   // FNCLEX
                s.pointee.fpu.fsw &= ~X87Status.sticky
            case 0xDBE3:   // FNINIT
                x87Initialize()
            case 0xDFE0:   // FNSTSW AX
                writeReg(0, 2, UInt64(s.pointee.fpu.fsw))
            case 0xDBE0, 0xDBE1, 0xDBE4:
                // FNENI, FNDISI, FNSETPM: 8087/287 controls, no-ops (and non-waiting) since the 387.
                break
            default:
                try x87CheckPending()
                let stub = UInt32(opcode - 0xD8) * 64 + UInt32(modrm - 0xC0)
                var unused: (UInt64, UInt64) = (0, 0)
                let compareSetsFlags = (opcode == 0xDB || opcode == 0xDF) && modrm >= 0xE8 && modrm <= 0xF7
                _ = x87OnHost(stub: stub, memory: &unused, setsFlags: compareSetsFlags, opcode: opcode, modrm: modrm)
            }
        }
        s.pointee.rip = next
    }

    /// FWAIT: #NM only with CR0.TS and CR0.MP both set; otherwise a pending unmasked exception.
    @inline(never)
    func x87Wait() throws(Fault) {
        if s.pointee.cr0 & (CR0.mp | CR0.ts) == (CR0.mp | CR0.ts) { throw .nm() }
        try x87CheckPending()
    }

    /// A waiting instruction finds an unmasked exception pending (ES): #MF with CR0.NE.
    /// Without CR0.NE a PC signals FERR# to the interrupt controller (IRQ 13) and the
    /// handler asserts IGNNE#; the interpreter behaves as if IGNNE# were asserted: the
    /// instruction runs and ES stays set (Documentation/Interpreter.md).
    @inline(__always)
    func x87CheckPending() throws(Fault) {
        if _slowPath(s.pointee.fpu.fsw & X87Status.es != 0) && s.pointee.cr0 & CR0.ne != 0 { throw Fault(vector: 16) }
    }

    func x87Initialize() {
        s.pointee.fpu.fcw = 0x037F
        s.pointee.fpu.fsw = 0
        s.pointee.fpu.ftw = 0
        s.pointee.fpu.fop = 0
        s.pointee.fpu.fip = 0
        s.pointee.fpu.fcs = 0
        s.pointee.fpu.fdp = 0
        s.pointee.fpu.fds = 0
    }

    static func x87MemoryUse(_ opcode: UInt8, _ digit: UInt8) -> X87MemoryUse {
        switch opcode {
        case 0xD8, 0xDA, 0xDC, 0xDE: return .load
        case 0xD9:
            switch digit {
            case 0: return .load
            case 2, 3: return .store
            case 4: return .fldenv
            case 5: return .fldcw
            case 6: return .fnstenv
            case 7: return .fnstcw
            default: return .invalid
            }
        case 0xDB:
            switch digit {
            case 0, 5: return .load
            case 1, 2, 3, 7: return .store
            default: return .invalid
            }
        case 0xDD:
            switch digit {
            case 0: return .load
            case 1, 2, 3: return .store
            case 4: return .frstor
            case 6: return .fnsave
            case 7: return .fnstsw
            default: return .invalid
            }
        default:   // DF: fild m16, fisttp/fist/fistp m16, fbld, fild m64, fbstp, fistp m64
            return digit == 0 || digit == 4 || digit == 5 ? .load : .store
        }
    }

    /// The memory operand's size in bytes for loads and stores.
    static func x87OperandSize(_ opcode: UInt8, _ digit: UInt8) -> Int {
        switch opcode {
        case 0xD8, 0xDA, 0xD9: return 4
        case 0xDC: return 8
        case 0xDE: return 2
        case 0xDB: return digit >= 5 ? 10 : 4
        case 0xDD: return 8
        default: return digit == 4 || digit == 6 ? 10 : digit == 5 || digit == 7 ? 8 : 2   // DF
        }
    }

    /// The register forms (ModRM C0-FF) a CPU executes; the others are #UD. (This host's
    /// CPU and Capstone agree on the map; it is checked here too so that no encoding the
    /// host would refuse ever reaches the host FPU.)
    static func x87RegisterFormIsValid(_ opcode: UInt8, _ modrm: UInt8) -> Bool {
        switch opcode {
        case 0xD8, 0xDC: return true
        case 0xD9:
            switch modrm {
            case 0xC0...0xD0, 0xD8...0xE1, 0xE4, 0xE5, 0xE8...0xEE, 0xF0...0xFF: return true
            default: return false
            }
        case 0xDA: return modrm <= 0xDF || modrm == 0xE9
        case 0xDB: return modrm <= 0xE4 || (0xE8...0xF7).contains(modrm)
        case 0xDD: return modrm <= 0xEF
        case 0xDE: return modrm <= 0xD7 || modrm == 0xD9 || modrm >= 0xE0
        default: return modrm <= 0xE0 || (0xE8...0xF7).contains(modrm)   // DF
        }
    }

    // MARK: Memory forms

    func x87Memory(_ d: UnsafeMutablePointer<DecodedInstruction>, use: X87MemoryUse, next: UInt64) throws(Fault) {
        let opcode = d.pointee.opcode
        let digit = (d.pointee.modrm >> 3) & 7
        let o = d.pointee.o0.kind == .memory ? d.pointee.o0 : d.pointee.o1
        guard o.kind == .memory else { throw .ud() }
        let segment = o.segment
        let offset = effectiveAddress(o, d.pointee.addressSize, next: next)
        let wide = d.pointee.operandSize != 2
        switch use {
        case .fnstcw:
            try write(segment, offset, 2, UInt64(s.pointee.fpu.fcw))
        case .fnstsw:
            try write(segment, offset, 2, UInt64(s.pointee.fpu.fsw))
        case .fnstenv:
            try x87StoreEnvironment(segment, offset, wide: wide, registers: false)
            // FNSTENV masks every exception after storing the environment; with nothing
            // left unmasked, ES and B clear.
            s.pointee.fpu.fcw |= 0x3F
            x87RecomputeSummary()
        case .fnsave:
            try x87StoreEnvironment(segment, offset, wide: wide, registers: true)
            x87Initialize()
        case .fldcw:
            try x87CheckPending()
            let v = UInt16(truncatingIfNeeded: try read(segment, offset, 2))
            s.pointee.fpu.fcw = x87ControlWord(v)
            x87RecomputeSummary()
        case .fldenv, .frstor:
            try x87CheckPending()
            try x87LoadEnvironment(segment, offset, wide: wide, registers: use == .frstor)
        case .load:
            try x87CheckPending()
            let size = Self.x87OperandSize(opcode, digit)
            var buffer: (UInt64, UInt64) = (0, 0)
            _ = try linearAddress(segment, offset, size, .read)
            buffer.0 = try read(segment, offset, min(size, 8))
            if size == 10 { buffer.1 = try read(segment, offset &+ 8, 2) }
            let stub = UInt32(TANDEM_X87_MEMORY_STUBS) + UInt32(opcode - 0xD8) * 8 + UInt32(digit)
            let raised = x87OnHost(stub: stub, memory: &buffer, setsFlags: false, opcode: opcode, modrm: d.pointee.modrm)
            x87DataPointer(segment, offset, raised: raised)
        case .store:
            try x87CheckPending()
            let size = Self.x87OperandSize(opcode, digit)
            _ = try probeWrite(segment, offset, size)
            _ = try probeWrite(segment, offset &+ UInt64(size - 1), 1)
            var buffer: (UInt64, UInt64) = (0, 0)
            let stub = UInt32(TANDEM_X87_MEMORY_STUBS) + UInt32(opcode - 0xD8) * 8 + UInt32(digit)
            // A store to a device register leaves the loop (an MMIO exit) and the
            // instruction runs again from the start: the x87 state must be as before then.
            let before = s.pointee.fpu
            let raised = x87OnHost(stub: stub, memory: &buffer, setsFlags: false, opcode: opcode, modrm: d.pointee.modrm)
            // An unmasked invalid-operation, denormal, zero-divide, overflow or underflow
            // exception leaves memory alone; an unmasked precision exception stores.
            if raised & ~s.pointee.fpu.fcw & 0x1F == 0 {
                do throws(Fault) {
                    if size == 10 {
                        try write(segment, offset, 8, buffer.0)
                        try write(segment, offset &+ 8, 2, buffer.1)
                    } else {
                        try write(segment, offset, size, buffer.0)
                    }
                } catch {
                    s.pointee.fpu = before
                    throw error
                }
            }
            x87DataPointer(segment, offset, raised: raised)
        case .invalid:
            throw .ud()
        }
    }

    /// FLDCW and the environment loads keep the defined bits; bit 6 reads as one.
    func x87ControlWord(_ v: UInt16) -> UInt16 { v & 0x1F3F | 0x40 }

    /// ES and B follow the flags the control word leaves unmasked (FLDCW, FLDENV, FRSTOR).
    func x87RecomputeSummary() {
        let fpu = s.pointee.fpu.fsw
        let pending = fpu & X87Status.exceptions & ~s.pointee.fpu.fcw != 0
        s.pointee.fpu.fsw = pending ? fpu | X87Status.es | X87Status.busy : fpu & ~(X87Status.es | X87Status.busy)
    }

    // MARK: The host FPU

    /// Runs one instruction on the host FPU with the guest's state, and takes the state
    /// after it. Returns the exception flags the instruction raised.
    ///
    /// The status word goes to the host without its exception flags, SF, ES and B, so that
    /// the host never has an exception pending (a waiting instruction would then trap in the
    /// host process); the guest's sticky flags are merged back afterwards.
    func x87OnHost(stub: UInt32, memory: UnsafeMutableRawPointer, setsFlags: Bool, opcode: UInt8, modrm: UInt8) -> UInt16 {
        let old = s.pointee.fpu.fsw
        var frame = tandem_x87_frame()
        frame.fcw = s.pointee.fpu.fcw
        frame.fsw = old & ~X87Status.sticky
        frame.ftw = x87FullTagWord()
        let top = Int(old >> 11) & 7
        for i in 0..<8 {
            let r = s.pointee.fpu.st[(top + i) & 7]
            tandem_x87_frame_set(&frame, Int32(i), r.significand, r.signExponent)
        }
        let flagsOut = tandem_x87_execute(&frame, stub, memory, s.pointee.rflags)
        let newTop = Int(frame.fsw >> 11) & 7
        var abridged: UInt8 = 0
        for i in 0..<8 {
            if (frame.ftw >> UInt16(2 * i)) & 3 != 3 { abridged |= 1 << UInt8(i) }
            s.pointee.fpu.st[(newTop + i) & 7] = X87Register(
                significand: tandem_x87_frame_significand(&frame, Int32(i)),
                signExponent: tandem_x87_frame_sign_exponent(&frame, Int32(i)))
        }
        s.pointee.fpu.ftw = abridged
        let raised = frame.fsw & X87Status.exceptions
        var status = frame.fsw | (old & (X87Status.exceptions | X87Status.sf))
        if (frame.fsw | old) & X87Status.es != 0 { status |= X87Status.es | X87Status.busy }
        s.pointee.fpu.fsw = status
        if setsFlags { setFlags(Flag.arithmetic, flagsOut & Flag.arithmetic) }
        // The instruction pointer follows every non-control instruction. This models the
        // host's CPU (CPUID.7.EBX: FDP_EXCPTN_ONLY, FCS/FDS deprecated): FCS and FDS read
        // as zero, and the opcode and data pointer change only with an unmasked exception.
        s.pointee.fpu.fip = x87CodePointer()
        s.pointee.fpu.fcs = 0
        if raised & ~s.pointee.fpu.fcw & X87Status.exceptions != 0 {
            s.pointee.fpu.fop = UInt16(opcode & 7) << 8 | UInt16(modrm)
        }
        return raised
    }

    func x87DataPointer(_ segment: UInt8, _ offset: UInt64, raised: UInt16) {
        guard raised & ~s.pointee.fpu.fcw & X87Status.exceptions != 0 else { return }
        s.pointee.fpu.fdp = realOrVirtual8086 ? (seg[Int(segment)].pointee.base &+ offset) & 0xFFFFF : offset
        s.pointee.fpu.fds = 0
    }

    /// FIP: the offset in CS, or in real and virtual-8086 mode the linear address (what
    /// the real-mode environment formats store).
    func x87CodePointer() -> UInt64 {
        realOrVirtual8086 ? (s.pointee.cs.base &+ s.pointee.rip) & 0xFFFFF : s.pointee.rip
    }

    var realOrVirtual8086: Bool { !protectedMode || virtual8086 }

    /// The full tag word (FSTENV, FSAVE) from the abridged tags and the registers' contents:
    /// 00 valid, 01 zero, 10 special (NaN, infinity, denormal, unnormal), 11 empty.
    func x87FullTagWord() -> UInt16 { s.pointee.fpu.fullTagWord }

    // MARK: Environment and state images

    /// FNSTENV / FNSAVE: the 14- or 28-byte environment in the real-mode or protected-mode
    /// layout (SDM Vol. 1, 8.1.10), then for FNSAVE the registers in stack order. 64-bit
    /// code uses the 32-bit protected layout. Nothing is written unless all of it can be.
    func x87StoreEnvironment(_ segment: UInt8, _ offset: UInt64, wide: Bool, registers: Bool) throws(Fault) {
        let envSize = wide ? 28 : 14
        let total = envSize + (registers ? 80 : 0)
        _ = try probeWrite(segment, offset, total)
        _ = try probeWrite(segment, offset &+ UInt64(total - 1), 1)
        let fpu = s.pointee.fpu
        let tw = UInt64(x87FullTagWord())
        let fop = UInt64(fpu.fop & 0x7FF)
        let real = realOrVirtual8086
        if wide {
            let reserved: UInt64 = 0xFFFF_0000
            try write(segment, offset, 4, reserved | UInt64(fpu.fcw))
            try write(segment, offset &+ 4, 4, reserved | UInt64(fpu.fsw))
            try write(segment, offset &+ 8, 4, reserved | tw)
            if real {
                try write(segment, offset &+ 12, 4, reserved | fpu.fip & 0xFFFF)
                try write(segment, offset &+ 16, 4, (fpu.fip >> 16 & 0xFFFF) << 12 | fop)
                try write(segment, offset &+ 20, 4, reserved | fpu.fdp & 0xFFFF)
                try write(segment, offset &+ 24, 4, (fpu.fdp >> 16 & 0xFFFF) << 12)
            } else {
                try write(segment, offset &+ 12, 4, fpu.fip & 0xFFFF_FFFF)
                try write(segment, offset &+ 16, 4, UInt64(fpu.fcs) | fop << 16)
                try write(segment, offset &+ 20, 4, fpu.fdp & 0xFFFF_FFFF)
                try write(segment, offset &+ 24, 4, reserved | UInt64(fpu.fds))
            }
        } else {
            try write(segment, offset, 2, UInt64(fpu.fcw))
            try write(segment, offset &+ 2, 2, UInt64(fpu.fsw))
            try write(segment, offset &+ 4, 2, tw)
            if real {
                try write(segment, offset &+ 6, 2, fpu.fip & 0xFFFF)
                try write(segment, offset &+ 8, 2, (fpu.fip >> 16 & 0xF) << 12 | fop)
                try write(segment, offset &+ 10, 2, fpu.fdp & 0xFFFF)
                try write(segment, offset &+ 12, 2, (fpu.fdp >> 16 & 0xF) << 12)
            } else {
                try write(segment, offset &+ 6, 2, fpu.fip & 0xFFFF)
                try write(segment, offset &+ 8, 2, UInt64(fpu.fcs))
                try write(segment, offset &+ 10, 2, fpu.fdp & 0xFFFF)
                try write(segment, offset &+ 12, 2, UInt64(fpu.fds))
            }
        }
        guard registers else { return }
        let top = fpu.top
        for i in 0..<8 {
            let r = fpu.st[(top + i) & 7]
            let at = offset &+ UInt64(envSize + 10 * i)
            try write(segment, at, 8, r.significand)
            try write(segment, at &+ 8, 2, UInt64(r.signExponent))
        }
    }

    /// FLDENV / FRSTOR: everything is read before anything changes. Tags other than
    /// "empty" are recomputed from the registers, as hardware does; ES and B follow the
    /// flags the new control word leaves unmasked.
    func x87LoadEnvironment(_ segment: UInt8, _ offset: UInt64, wide: Bool, registers: Bool) throws(Fault) {
        let envSize = wide ? 28 : 14
        _ = try linearAddress(segment, offset, envSize + (registers ? 80 : 0), .read)
        let real = realOrVirtual8086
        let fcw, fsw, tw: UInt16
        var fip: UInt64, fdp: UInt64, fop: UInt16, fcs: UInt16 = 0, fds: UInt16 = 0
        if wide {
            fcw = UInt16(truncatingIfNeeded: try read(segment, offset, 2))
            fsw = UInt16(truncatingIfNeeded: try read(segment, offset &+ 4, 2))
            tw = UInt16(truncatingIfNeeded: try read(segment, offset &+ 8, 2))
            let w12 = try read(segment, offset &+ 12, 4), w16 = try read(segment, offset &+ 16, 4)
            let w20 = try read(segment, offset &+ 20, 4), w24 = try read(segment, offset &+ 24, 4)
            if real {
                fip = w12 & 0xFFFF | (w16 >> 12 & 0xFFFF) << 16
                fop = UInt16(w16 & 0x7FF)
                fdp = w20 & 0xFFFF | (w24 >> 12 & 0xFFFF) << 16
            } else {
                fip = w12
                fcs = UInt16(truncatingIfNeeded: w16)
                fop = UInt16(w16 >> 16 & 0x7FF)
                fdp = w20
                fds = UInt16(truncatingIfNeeded: w24)
            }
        } else {
            fcw = UInt16(truncatingIfNeeded: try read(segment, offset, 2))
            fsw = UInt16(truncatingIfNeeded: try read(segment, offset &+ 2, 2))
            tw = UInt16(truncatingIfNeeded: try read(segment, offset &+ 4, 2))
            let w6 = try read(segment, offset &+ 6, 2), w8 = try read(segment, offset &+ 8, 2)
            let w10 = try read(segment, offset &+ 10, 2), w12 = try read(segment, offset &+ 12, 2)
            if real {
                fip = w6 | (w8 >> 12) << 16
                fop = UInt16(w8 & 0x7FF)
                fdp = w10 | (w12 >> 12) << 16
            } else {
                fip = w6
                fcs = UInt16(truncatingIfNeeded: w8)
                fop = 0
                fdp = w10
                fds = UInt16(truncatingIfNeeded: w12)
            }
        }
        var loaded = InlineArray<8, X87Register>(repeating: X87Register())
        if registers {
            for i in 0..<8 {
                let at = offset &+ UInt64(envSize + 10 * i)
                loaded[i] = X87Register(significand: try read(segment, at, 8),
                                        signExponent: UInt16(truncatingIfNeeded: try read(segment, at &+ 8, 2)))
            }
        }
        s.pointee.fpu.fcw = x87ControlWord(fcw)
        s.pointee.fpu.fsw = fsw
        s.pointee.fpu.ftw = FPUState.abridgedTags(tw)
        s.pointee.fpu.fip = fip
        s.pointee.fpu.fdp = fdp
        s.pointee.fpu.fop = fop
        // This CPU model deprecates FCS and FDS (CPUID.7.EBX bit 13): they load as zero.
        _ = (fcs, fds)
        s.pointee.fpu.fcs = 0
        s.pointee.fpu.fds = 0
        if registers {
            let top = Int(fsw >> 11) & 7
            for i in 0..<8 { s.pointee.fpu.st[(top + i) & 7] = loaded[i] }
        }
        x87RecomputeSummary()
    }
}
