import Foundation
import Machine
import Testing

/// How the platform devices end a run: a reset (status 212), ACPI S5 (status 0), and POST
/// codes in the trace.
@Suite("Platform stops")
struct PlatformStopTests {
    @Test("i8042 0xFE and port 0xCF9 reset the machine: status 212 and a one-line report", arguments: backends())
    func reset(backend: BackendKind) throws {
        // mov al, 0xFE; out 0x64, al; hlt
        var r = try runImage([0xB0, 0xFE, 0xE6, 0x64, 0xF4], backend: backend, name: "reset-8042.img")
        #expect(r.status == 212)
        #expect(r.message?.hasPrefix("tandem: the guest reset the machine (status 212)") == true)
        // mov dx, 0xCF9; mov al, 6; out dx, al; hlt
        r = try runImage([0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, 0xF4], backend: backend, name: "reset-cf9.img")
        #expect(r.status == 212)
    }

    @Test("SLP_TYP 5 with SLP_EN at PM1a_CNT (0x604) powers off: status 0 and a message", arguments: backends())
    func powerOff(backend: BackendKind) throws {
        // mov dx, 0x604; mov ax, 0x3400; out dx, ax; hlt
        let r = try runImage([0xBA, 0x04, 0x06, 0xB8, 0x00, 0x34, 0xEF, 0xF4], backend: backend, name: "s5.img")
        #expect(r.status == 0)
        #expect(r.message == "tandem: the guest powered the machine off (ACPI S5); stopping with status 0")
    }

    @Test("POST codes written to port 0x80 appear in the trace", arguments: backends())
    func postCodes(backend: BackendKind) throws {
        let image = try bootImage([0xB0, 0x42, 0xE6, 0x80, 0xB0, 0x00, 0xE6, 0xF4], name: "post.img")
        let trace = scratchPath("post-trace")
        defer { try? FileManager.default.removeItem(atPath: trace) }
        let r = try runProcess(tandemBinary, ["run", "--backend", backend.rawValue, "--format", "boot", "--trace", trace, image])
        #expect(r.status == 0)
        #expect(try String(contentsOfFile: trace, encoding: .utf8).contains("post code 0x42"))
    }
}
