#if canImport(Glibc)
import Glibc
#endif
import CHostAtomics
import GuestMemory

/// Which physical pages hold decoded code, shared by every interpreter vCPU of a machine.
///
/// One 64-bit word per page of RAM. The low 32 bits are the page's version: odd while
/// some decode cache holds instructions from the page, bumped to the next (even) value by
/// the first write after that to a part of the page holding such instructions, so cached
/// instructions tagged with the old version no longer match. The high 32 bits say which
/// 128-byte lines of the page those instructions cover (bit 32 + line): a write to the
/// other lines — a boot sector's variables next to its code, a stack or a data structure
/// sharing a page with a function — leaves the decodes alone (Bochs splits its pages
/// the same way). Self-modifying and cross-modifying code both work without any vCPU
/// scanning another's cache.
public final class CodePages: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt64>
    let pageCount: Int

    static let lineShift = 7
    static let versionMask: UInt64 = 0xFFFF_FFFF

    public init(memory: GuestMemoryMap) {
        // ROM pages sit below 4 GiB, RAM ends at ramEnd: cover both.
        let end = max(memory.ramEnd, 1 << 32)
        pageCount = Int(end >> 12)
        // One word more, never written: what a page outside the table reads (`word`).
        let bytes = (pageCount + 1) * 8
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "cannot reserve the code-page table")
        words = p!.bindMemory(to: UInt64.self, capacity: pageCount + 1)
        words[pageCount] = 1
    }

    deinit { munmap(words, (pageCount + 1) * 8) }

    /// Set when guest RAM is written by more than one thread (SMP): tagging a line then
    /// needs the process-wide barrier described at `tagForDecode`.
    var concurrentWriters = false

    /// The tag for instructions decoded now from the bytes `offset ..< offset + length`
    /// of `page`; marks the page and those lines as holding code. Called *before* the code
    /// bytes are read, so that a write after the mark bumps the version and the decode is
    /// not used.
    ///
    /// A writer on another thread stores its bytes and then reads the word (`noteWrite`);
    /// with store buffers (x86-TSO) that read can see "no code here" while its store is not
    /// yet visible to our read of the bytes, and the stale decode would stay valid. Marking
    /// a line that was not marked is therefore followed by a process-wide memory barrier
    /// (the slow side of an asymmetric Dekker handshake): afterwards either the writer saw
    /// the mark and bumps the version, or its bytes are what we read. Lines already marked
    /// need none (a writer that reads the mark bumps the version). The version only grows
    /// (compare-and-swap), so no old tag can come back.
    @inline(never) func tagForDecode(_ page: Int, offset: Int, length: Int) -> UInt32 {
        guard page < pageCount else { return 1 }
        let lines = Self.lines(offset, length)
        var w = tandem_load_relaxed64(words + page)
        while true {
            // An unmarked page has no lines (a bump clears them): odd version, these lines.
            let marked = (w & 1 != 0 ? w : (w & Self.versionMask) | 1) | lines
            if marked == w { return UInt32(truncatingIfNeeded: w) }
            if tandem_cas8(words + page, &w, marked) {
                if concurrentWriters { _ = tandem_process_memory_barrier() }
                return UInt32(truncatingIfNeeded: marked)
            }
        }
    }

    /// The version instructions decoded from `page` are checked against.
    @inline(__always) func current(_ page: Int) -> UInt32 { Self.version(word(page)) }

    /// `page`'s word, for a reader that checks one page again and again (the trace loop,
    /// after each instruction); a page outside the table has version 1.
    @inline(__always) func word(_ page: Int) -> UnsafePointer<UInt64> {
        UnsafePointer(words + (page < pageCount ? page : pageCount))
    }

    /// Called for every guest write of `size` bytes (1 ... 4096) to RAM at `physical`,
    /// after the store; covers the next page too when the write runs into it.
    @inline(__always) func noteWrite(_ physical: UInt64, _ size: Int) {
        let page = Int(truncatingIfNeeded: physical >> 12)
        let offset = Int(truncatingIfNeeded: physical & 0xFFF)
        noteWrite(page: page, lines: Self.lines(offset, size))
        if _slowPath(offset &+ size > 0x1000) { noteWrite(page: page &+ 1, lines: Self.lines(0, offset &+ size &- 0x1000)) }
    }

    /// Something other than an interpreter vCPU wrote `page`: every decode from it goes.
    func noteWrite(page: Int) { noteWrite(page: page, lines: ~Self.versionMask) }
}

// (In an extension: `@_transparent` is not allowed in a class body.)
extension CodePages {
    /// The version in a page's word.
    @_transparent static func version(_ word: UnsafePointer<UInt64>) -> UInt32 {
        UInt32(truncatingIfNeeded: tandem_load_relaxed64(word))
    }

    /// The line bits (in the word's high half) of the bytes `offset ..< offset + length`
    /// of a page, the part beyond the page left out; `length` ≥ 1.
    @_transparent static func lines(_ offset: Int, _ length: Int) -> UInt64 {
        let first = offset >> lineShift
        let end = offset &+ length &- 1
        let last = (end < 0xFFF ? end : 0xFFF) >> lineShift   // (Swift's min stayed a call)
        let count = UInt64(last &- first &+ 1)
        return ((1 << count) &- 1) << UInt64(32 &+ first)
    }

    /// A write to `lines` of `page`. A failed swap means another thread bumped the version
    /// (or bumped it and marked it again after a barrier) meanwhile — or only marked more
    /// lines (`tagForDecode` on a page that already holds code keeps its version): then
    /// the decodes of our lines are still valid, so the swap is tried again on the new word.
    @_transparent func noteWrite(page: Int, lines: UInt64) {
        if page < pageCount {
            tandem_compiler_barrier()   // the guest's store stays before this read
            var w = tandem_load_relaxed64(words + page)
            if _slowPath(w & 1 != 0 && w & lines != 0) {
                while !tandem_cas8(words + page, &w, (w &+ 1) & Self.versionMask) && w & 1 != 0 && w & lines != 0 {}
            }
        }
    }
}
