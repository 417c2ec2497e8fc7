// The guests added for the interpreter (self-modifying code, BCD, exceptions, paging)
// against the reference outputs in Guests/README.md, which were checked on QEMU TCG and
// against the manuals.
import Foundation
import Machine
import Testing

/// The indented lines of Guests/README.md's "## NAME output" section: the exact output.
func documentedOutput(_ name: String) throws -> String {
    let text = String(decoding: try readFileBytes("\(repoRoot)/Guests/README.md"), as: UTF8.self)
    guard let start = text.range(of: "## \(name) output\n") else { throw GuestBuildFailure(description: "no '\(name) output' section") }
    var lines: [String] = []
    for line in text[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("## ") { break }
        if line.hasPrefix("    ") { lines.append(String(line.dropFirst(4))) }
    }
    return lines.map { $0 + "\n" }.joined()
}

@Suite("Guests against their documented reference output")
struct GuestReferenceTests {
    @Test("on the interpreter", arguments: [
        ("smc", "smc.elf"), ("bcd16", "bcd16.bin"), ("exceptions32", "exceptions32.elf"),
        ("paging32", "paging32.elf"), ("paging64", "paging64.elf"),
    ])
    func interpreter(_ section: String, _ image: String) throws {
        let run = runGuest(try guest(image), backend: .interp)
        #expect(run.output == (try documentedOutput(section)))
        #expect(run.status == 0)
    }

    @Test("paging64 gives the same output on 4 interpreter vCPUs")
    func paging64SMP() throws {
        let run = runGuest(try guest("paging64.elf"), backend: .interp, cpus: 4)
        #expect(run.output == (try documentedOutput("paging64")))
    }

    @Test("on KVM, where this host's KVM can run them", .enabled(if: canOpenKVM(), "/dev/kvm cannot be opened here"),
          arguments: [("smc", "smc.elf"), ("paging64", "paging64.elf")])
    func kvm(_ section: String, _ image: String) throws {
        let run = runGuest(try guest(image), backend: .kvm)
        #expect(run.output == (try documentedOutput(section)))
        #expect(run.status == 0)
    }
}
