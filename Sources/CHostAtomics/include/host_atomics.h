// Atomic operations on guest memory through its host mapping, for the interpreter's
// LOCK-prefixed instructions.
//
// Written with the x86 instructions themselves rather than C11/__atomic builtins:
// the guest may lock an unaligned operand (even one that crosses a cache line), and the
// host's LOCK CMPXCHG is atomic at any alignment (a "split lock" is slow, not wrong),
// whereas the builtins assume natural alignment. The same memory is written by KVM vCPUs
// natively when engines mix, and these operations order against them as hardware does.
#ifndef TANDEM_HOST_ATOMICS_H
#define TANDEM_HOST_ATOMICS_H

#include <stdbool.h>
#include <stdint.h>

#if !defined(__x86_64__)
#error "Tandem's interpreter needs an x86-64 host for guest LOCK semantics"
#endif

/// Compare-and-swap of 1, 2, 4 or 8 bytes at any alignment. On failure *expected
/// receives the current value.
static inline bool tandem_cas1(void *p, uint8_t *expected, uint8_t desired) {
    bool ok;
    __asm__ volatile("lock cmpxchgb %3, %1"
                     : "=@ccz"(ok), "+m"(*(volatile uint8_t *)p), "+a"(*expected)
                     : "q"(desired) : "memory");
    return ok;
}

static inline bool tandem_cas2(void *p, uint16_t *expected, uint16_t desired) {
    bool ok;
    __asm__ volatile("lock cmpxchgw %3, %1"
                     : "=@ccz"(ok), "+m"(*(volatile uint16_t *)p), "+a"(*expected)
                     : "r"(desired) : "memory");
    return ok;
}

static inline bool tandem_cas4(void *p, uint32_t *expected, uint32_t desired) {
    bool ok;
    __asm__ volatile("lock cmpxchgl %3, %1"
                     : "=@ccz"(ok), "+m"(*(volatile uint32_t *)p), "+a"(*expected)
                     : "r"(desired) : "memory");
    return ok;
}

static inline bool tandem_cas8(void *p, uint64_t *expected, uint64_t desired) {
    bool ok;
    __asm__ volatile("lock cmpxchgq %3, %1"
                     : "=@ccz"(ok), "+m"(*(volatile uint64_t *)p), "+a"(*expected)
                     : "r"(desired) : "memory");
    return ok;
}

/// Compare-and-swap of 16 bytes; `p` must be 16-byte aligned (the guest's CMPXCHG16B
/// requires that of its operand, and guest RAM is page-aligned on the host).
static inline bool tandem_cas16(void *p, uint64_t *expected_lo, uint64_t *expected_hi,
                                uint64_t desired_lo, uint64_t desired_hi) {
    bool ok;
    __asm__ volatile("lock cmpxchg16b %1"
                     : "=@ccz"(ok), "+m"(*(volatile __int128 *)p),
                       "+a"(*expected_lo), "+d"(*expected_hi)
                     : "b"(desired_lo), "c"(desired_hi) : "memory");
    return ok;
}

/// A single load of 1, 2, 4 or 8 bytes (a first guess for a compare-and-swap loop; the
/// swap itself validates it, so a torn unaligned read only costs a retry).
static inline uint64_t tandem_load(const void *p, int size) {
    switch (size) {
    case 1: return *(const volatile uint8_t *)p;
    case 2: { uint16_t v; __builtin_memcpy(&v, (const void *)p, 2); return v; }
    case 4: { uint32_t v; __builtin_memcpy(&v, (const void *)p, 4); return v; }
    default: { uint64_t v; __builtin_memcpy(&v, (const void *)p, 8); return v; }
    }
}

/// Relaxed atomic loads of a 32- and a 64-bit word (a plain `mov` on x86; it tells the compiler,
/// and the thread sanitizer, that other threads write the word).
static inline uint32_t tandem_load_relaxed32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint64_t tandem_load_relaxed64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/// Keeps the compiler from moving memory accesses across this point (no instruction).
static inline void tandem_compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }

/// Makes every other thread of this process execute a full memory barrier before it
/// returns (the slow side of an asymmetric Dekker handshake, whose fast side needs only
/// program order: see CodePages). Linux membarrier(PRIVATE_EXPEDITED), or, where that is
/// unavailable, a protection change of a private page, whose TLB shootdown interrupts
/// every CPU running one of our threads. Returns false when neither works.
bool tandem_process_memory_barrier(void);
#endif
