import GuestMemory
import Synchronization

/// A device on the port-I/O bus. Devices lock their own state: vCPU threads call in concurrently.
public protocol PortDevice: AnyObject, Sendable {
    /// Reads `size` (1, 2 or 4) bytes at `port`.
    func portRead(_ port: UInt16, size: Int) -> UInt32
    /// Writes the low `size` bytes of `value` to `port`.
    func portWrite(_ port: UInt16, size: Int, value: UInt32)
}

/// A device on the MMIO bus.
public protocol MMIODevice: AnyObject, Sendable {
    func mmioRead(_ address: UInt64, size: Int) -> UInt64
    func mmioWrite(_ address: UInt64, size: Int, value: UInt64)
}

/// Mask of the low `size` bytes.
@inline(__always) func sizeMask(_ size: Int) -> UInt32 { size >= 4 ? .max : (1 << (UInt32(size) * 8)) - 1 }

/// The port-I/O bus: 65,536 ports, each claimed by at most one device.
/// Unclaimed ports read as all ones and ignore writes.
public final class PortIOBus: @unchecked Sendable {
    // Port → index+1 into `devices` (0: unclaimed). Filled before vCPUs start, then
    // read-only: read on every port exit, without a dynamic exclusivity check.
    @exclusivity(unchecked) private var owner = [UInt8](repeating: 0, count: 65536)
    @exclusivity(unchecked) private var devices: [any PortDevice] = []

    /// Every claim, in the order made: the device's type and its ports (`monitor info devices`).
    public private(set) var claims: [(device: String, ports: ClosedRange<UInt16>)] = []

    public init() {}

    /// Claims `ports` for `device`. Overlapping an earlier claim is a programming error.
    public func attach(_ device: any PortDevice, ports: ClosedRange<UInt16>) {
        claims.append((String(describing: type(of: device)), ports))
        devices.append(device)
        for p in ports {
            precondition(owner[Int(p)] == 0, "port 0x\(String(p, radix: 16)) claimed twice")
            owner[Int(p)] = UInt8(devices.count)
        }
    }

    public func read(_ port: UInt16, size: Int) -> UInt32 {
        let i = Int(owner[Int(port)])
        guard i != 0 else { return sizeMask(size) }
        return devices[i - 1].portRead(port, size: size) & sizeMask(size)
    }

    public func write(_ port: UInt16, size: Int, value: UInt32) {
        let i = Int(owner[Int(port)])
        guard i != 0 else { return }
        devices[i - 1].portWrite(port, size: size, value: value & sizeMask(size))
    }

    /// True when a device claims `port`.
    public func isClaimed(_ port: UInt16) -> Bool { owner[Int(port)] != 0 }
}

/// The MMIO bus: physical ranges inside `PhysicalLayout.deviceWindow` that devices
/// claim (the interpreter treats everything outside the window as unmapped without
/// asking the bus). Unclaimed addresses read as all ones and ignore writes.
public final class MMIOBus: @unchecked Sendable {
    private var ranges: [(ClosedRange<UInt64>, any MMIODevice)] = []

    public init() {}

    public func attach(_ device: any MMIODevice, range: ClosedRange<UInt64>) {
        precondition(!ranges.contains { $0.0.overlaps(range) }, "MMIO range claimed twice")
        precondition(PhysicalLayout.deviceWindow.contains(range.lowerBound) && PhysicalLayout.deviceWindow.contains(range.upperBound),
                     "MMIO devices live in PhysicalLayout.deviceWindow")
        ranges.append((range, device))
    }

    /// Every claim: the device's type and its range (`monitor info devices`).
    public var claims: [(device: String, range: ClosedRange<UInt64>)] {
        ranges.map { (String(describing: type(of: $0.1)), $0.0) }
    }

    public func read(_ address: UInt64, size: Int) -> UInt64 {
        for (r, d) in ranges where r.contains(address) { return d.mmioRead(address, size: size) }
        return size >= 8 ? .max : (1 << (UInt64(size) * 8)) - 1
    }

    public func write(_ address: UInt64, size: Int, value: UInt64) {
        for (r, d) in ranges where r.contains(address) { d.mmioWrite(address, size: size, value: value); return }
    }
}
