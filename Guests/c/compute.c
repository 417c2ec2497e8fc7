/* compute.c: the computation of the compiled C guest (c-compute.elf), built twice by
 * Tools/build-guests: for the guest (freestanding, output on port 0xE9) and for the host
 * (output on stdout). The host run's output is the guest's expected output, so the
 * guest checks the interpreter's and KVM's x87, SSE and integer results against this
 * machine's CPU on whatever the compiler emits at -O3 -march=x86-64-v2, once with SSE
 * floating point (c-compute.elf) and once with -mfpmath=387 (c-compute-387.elf: float and
 * double arithmetic on the x87 as well).
 *
 * Values are printed exactly: integers in decimal, floating-point numbers as the hex of
 * their bits (no rounding in a printf to hide a difference). */

#include "compute.h"

static void put_string(const char *s) { while (*s) put_char(*s++); }

static void put_hex(unsigned long long v, int digits) {
    for (int i = digits - 1; i >= 0; i--) put_char("0123456789abcdef"[(v >> (4 * i)) & 15]);
}

static void put_dec(long long v) {
    char buffer[24];
    int n = 0;
    unsigned long long u = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
    do { buffer[n++] = '0' + u % 10; u /= 10; } while (u);
    if (v < 0) put_char('-');
    while (n) put_char(buffer[--n]);
}

static void put_double(const char *name, double d) {
    union { double d; unsigned long long u; } b = { d };
    put_string(name); put_string("=0x"); put_hex(b.u, 16); put_char('\n');
}

static void put_float(const char *name, float f) {
    union { float f; unsigned u; } b = { f };
    put_string(name); put_string("=0x"); put_hex(b.u, 8); put_char('\n');
}

void put_long_double(const char *name, long double x) {
    union { long double x; struct { unsigned long long m; unsigned short se; } p; } b;
    b.p.m = 0; b.p.se = 0;
    b.x = x;
    put_string(name); put_string("=0x"); put_hex(b.p.se, 4); put_hex(b.p.m, 16); put_char('\n');
}

static void put_int(const char *name, long long v) {
    put_string(name); put_char('='); put_dec(v); put_char('\n');
}

/* Inputs the compiler cannot fold: computed at run time from a seed. */
static unsigned long long state = 0x9E3779B97F4A7C15ull;
static unsigned long long next(void) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return state;
}

#define N 1024
static int ia[N], ib[N];
static unsigned char bytes[N];
static float fa[N], fb[N];
static double da[N];

void compute(void) {
    for (int i = 0; i < N; i++) {
        unsigned long long r = next();
        ia[i] = (int)r; ib[i] = (int)(r >> 32);
        bytes[i] = (unsigned char)(r >> 17);
        fa[i] = (float)(int)(r >> 40) / 4096.0f;
        fb[i] = (float)(int)(r >> 20) / 65536.0f;
        da[i] = (double)(long long)r / 1e9;
    }

    /* Vectorised integer loops (PADDD, PMULLD, PCMPGT, PMAX/PMIN, PSADBW, ...). */
    long long sum = 0, dot = 0;
    int mx = ia[0], mn = ia[0];
    for (int i = 0; i < N; i++) { sum += ia[i]; dot += (long long)ia[i] * ib[i]; }
    for (int i = 0; i < N; i++) { mx = ia[i] > mx ? ia[i] : mx; mn = ia[i] < mn ? ia[i] : mn; }
    unsigned bsum = 0;
    for (int i = 0; i < N; i++) bsum += bytes[i] > 128 ? bytes[i] - 128 : 128 - bytes[i];
    int prod[16];
    for (int i = 0; i < 16; i++) prod[i] = ia[i] * ib[i];
    long long prodsum = 0;
    for (int i = 0; i < 16; i++) prodsum += prod[i];
    put_int("int.sum", sum); put_int("int.dot", dot); put_int("int.max", mx); put_int("int.min", mn);
    put_int("bytes.absdiff", bsum); put_int("int.mullo", prodsum);

    /* POPCNT, LZCNT-free bit counting, CRC-like mixing. */
    long long pop = 0;
    for (int i = 0; i < N; i++) pop += __builtin_popcount((unsigned)ia[i]) + __builtin_popcountll(next());
    put_int("popcount", pop);

    /* SSE float and double: packed and scalar, sqrt, division, conversions. */
    float fsum = 0, fdot = 0;
    for (int i = 0; i < N; i++) { fsum += fa[i]; fdot += fa[i] * fb[i]; }
    float fmax = fa[0];
    for (int i = 0; i < N; i++) fmax = fa[i] > fmax ? fa[i] : fmax;
    put_float("float.sum", fsum); put_float("float.dot", fdot); put_float("float.max", fmax);
    double dsum = 0, droot = 0;
    for (int i = 0; i < N; i++) { dsum += da[i] / (1.0 + (double)(i & 7)); droot += __builtin_sqrt(da[i] < 0 ? -da[i] : da[i]); }
    put_double("double.sum", dsum); put_double("double.sqrt", droot);
    long long trunc = 0;
    for (int i = 0; i < N; i++) trunc += (long long)(da[i] * 1000.0) + (int)fa[i];
    put_int("convert.trunc", trunc);
    float fs[N];
    for (int i = 0; i < N; i++) fs[i] = __builtin_sqrtf(fa[i] < 0 ? -fa[i] : fa[i]) * 0.5f + fb[i];
    float fss = 0;
    for (int i = 0; i < N; i++) fss += fs[i];
    put_float("float.sqrtvec", fss);

    /* x87 long double: the series and a Newton square root in 64-bit precision. */
    long double e = 1, term = 1;
    for (int k = 1; k < 25; k++) { term /= k; e += term; }
    put_long_double("ldouble.e", e);
    long double x = 2, y = 1;
    for (int k = 0; k < 8; k++) y = (y + x / y) / 2;
    put_long_double("ldouble.sqrt2", y);
    long double acc = 0;
    for (int i = 0; i < 64; i++) acc += (long double)da[i] * (long double)ia[i];
    put_long_double("ldouble.acc", acc);
    put_int("ldouble.toint", (long long)(acc / 1e6L));

    /* x87 transcendentals (transcendental.c) over the same run-time inputs. */
    transcendental(da, 64);
}
