/* cbench32.c -> cbench32.elf: a benchmark, never a test. Compiled C (gcc -O2 -m32,
 * integer only) for the same-run comparison of Tandem's interpreter with QEMU's TCG:
 * a sieve of Eratosthenes, CRC-32 (bitwise), an integer matrix product and an
 * insertion sort, each repeated; prints one checksum line per kernel to port 0xE9 and
 * returns 0 (start32.asm passes it to the exit port). Freestanding: no libc.
 * The same source is built a second time with -m64 as cbench64.elf (an elf64 guest,
 * start64.asm: long mode, paging on, every vCPU running it at once on its own copy of
 * the data) for Tools/bench speeds. */
#include <stdint.h>

#ifdef __x86_64__
/* cbench64: every vCPU reports; start64.asm lets them print one at a time, in index order. */
void output_lock(void);
void output_unlock(void);
#else
static inline void output_lock(void) {}
static inline void output_unlock(void) {}
#endif

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static void puts_e9(const char *s) { while (*s) outb(0xE9, (uint8_t)*s++); }
static void put_hex(uint32_t v) {
    for (int i = 28; i >= 0; i -= 4) outb(0xE9, (uint8_t)"0123456789abcdef"[(v >> i) & 15]);
}
static void report(const char *name, uint32_t v) { puts_e9(name); puts_e9(" "); put_hex(v); puts_e9("\n"); }

#define SIEVE_N 200000
static uint8_t composite[SIEVE_N];
static uint32_t sieve(void) {
    for (uint32_t i = 0; i < SIEVE_N; i++) composite[i] = 0;
    uint32_t count = 0;
    for (uint32_t i = 2; i < SIEVE_N; i++) {
        if (composite[i]) continue;
        count++;
        for (uint32_t j = i * 2; j < SIEVE_N; j += i) composite[j] = 1;
    }
    return count;
}

#define CRC_BYTES 65536
static uint8_t data[CRC_BYTES];
static uint32_t crc32(const uint8_t *p, uint32_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

#define M 64
static int32_t ma[M][M], mb[M][M], mc[M][M];
static uint32_t matmul(void) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) {
            int32_t sum = 0;
            for (int k = 0; k < M; k++) sum += ma[i][k] * mb[k][j];
            mc[i][j] = sum;
        }
    uint32_t h = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) h = h * 31 + (uint32_t)mc[i][j];
    return h;
}

#define SORT_N 2000
static int32_t keys[SORT_N];
static uint32_t rng = 12345;
static uint32_t next_random(void) { rng = rng * 1103515245u + 12345u; return rng >> 8; }
static uint32_t insertion_sort(void) {
    for (int i = 0; i < SORT_N; i++) keys[i] = (int32_t)next_random();
    for (int i = 1; i < SORT_N; i++) {
        int32_t v = keys[i];
        int j = i - 1;
        while (j >= 0 && keys[j] > v) { keys[j + 1] = keys[j]; j--; }
        keys[j + 1] = v;
    }
    uint32_t h = 0;
    for (int i = 0; i < SORT_N; i++) h = h * 33 + (uint32_t)keys[i];
    return h;
}

int bench_main(void) {
    uint32_t s = 0, c = 0, m = 0, o = 0;
    for (int r = 0; r < 40; r++) s += sieve();
    for (uint32_t i = 0; i < CRC_BYTES; i++) data[i] = (uint8_t)next_random();
    for (int r = 0; r < 40; r++) { c = c * 31 + crc32(data, CRC_BYTES); data[r] += 1; }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) { ma[i][j] = (int32_t)(next_random() & 0xFFFF) - 0x8000; mb[i][j] = (int32_t)(next_random() & 0xFF); }
    for (int r = 0; r < 40; r++) { m ^= matmul(); ma[r][r] += 1; }
    for (int r = 0; r < 16; r++) o ^= insertion_sort();
    output_lock();
    report("sieve", s);
    report("crc32", c);
    report("matmul", m);
    report("sort", o);
    output_unlock();
    return 0;
}
