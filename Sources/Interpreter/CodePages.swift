#if canImport(Glibc)
import Glibc
#endif
import CHostAtomics
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

    /// Set when guest RAM is written by more than one thread (SMP): tagging a page then
    /// needs the process-wide barrier described at `tagForDecode`.
    var concurrentWriters = false

    /// The tag for instructions decoded from `page` now; marks the page as holding code.
    /// Called *before* the code bytes are read, so that a write after the mark bumps the
    /// word and the decode is not used.
    ///
    /// A writer on another thread stores its bytes and then reads the word (`noteWrite`);
    /// with store buffers (x86-TSO) that read can see "no code" while its store is not yet
    /// visible to our read of the bytes, and the stale decode would stay valid. Marking a
    /// page that was not marked is therefore followed by a process-wide memory barrier
    /// (the slow side of an asymmetric Dekker handshake): afterwards either the writer saw
    /// the mark and bumps the word, or its bytes are what we read. Pages already marked
    /// need none (a writer that reads an odd word bumps it). The word only grows (compare-
    /// and-swap), so no old tag can come back.
    @inline(never) func tagForDecode(_ page: Int) -> UInt32 {
        guard page < pageCount else { return 1 }
        var w = tandem_load_relaxed32(words + page)
        while w & 1 == 0 {
            if tandem_cas4(words + page, &w, w &+ 1) {
                w &+= 1
                if concurrentWriters { _ = tandem_process_memory_barrier() }
                break
            }
        }
        return w
    }

    @inline(__always) func current(_ page: Int) -> UInt32 {
        page < pageCount ? tandem_load_relaxed32(words + page) : 1
    }

    /// Called for every guest write to RAM, after the store. A failed swap means another
    /// thread bumped the word (or bumped and re-marked it after a barrier) meanwhile.
    @inline(__always) func noteWrite(_ page: Int) {
        if page < pageCount {
            tandem_compiler_barrier()   // the guest's store stays before this read
            var w = tandem_load_relaxed32(words + page)
            if _slowPath(w & 1 != 0) { _ = tandem_cas4(words + page, &w, w &+ 1) }
        }
    }
}
