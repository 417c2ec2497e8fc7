#if canImport(Glibc)
import Glibc
#endif
import GuestMemory

/// Which physical pages hold decoded code, shared by every interpreter vCPU of a machine.
///
/// One 32-bit word per page of RAM: odd while some decode cache holds instructions
/// from the page, and bumped to the next (even) value by the first write after that, so
/// cached instructions tagged with the old value no longer match. Self-modifying and
/// cross-modifying code both work without any vCPU scanning another's cache.
public final class CodePages: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt32>
    let pageCount: Int

    public init(memory: GuestMemoryMap) {
        // ROM pages sit below 4 GiB, RAM ends at ramEnd: cover both.
        let end = max(memory.ramEnd, 1 << 32)
        pageCount = Int(end >> 12)
        let bytes = pageCount * 4
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "cannot reserve the code-page table")
        words = p!.bindMemory(to: UInt32.self, capacity: pageCount)
    }

    deinit { munmap(words, pageCount * 4) }

    /// The tag for instructions decoded from `page` now (marks the page as holding code).
    @inline(__always) func tagForDecode(_ page: Int) -> UInt32 {
        guard page < pageCount else { return 1 }
        var w = words[page]
        if w & 1 == 0 {
            w &+= 1
            words[page] = w
        }
        return w
    }

    @inline(__always) func current(_ page: Int) -> UInt32 {
        page < pageCount ? words[page] : 1
    }

    /// Called for every guest write to RAM.
    @inline(__always) func noteWrite(_ page: Int) {
        if page < pageCount {
            let w = words[page]
            if w & 1 != 0 { words[page] = w &+ 1 }
        }
    }
}
