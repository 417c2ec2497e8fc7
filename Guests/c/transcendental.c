/* transcendental.c: x87 transcendental instructions as a compiler emits them. Built with
 * -ffast-math (Tools/build-guests), gcc expands these long double builtins inline into
 * FSINCOS, FPTAN, FPATAN, FYL2X, F2XM1/FSCALE, FRNDINT, FPREM and FSQRT instead of calling
 * libm, so the guest (freestanding, no libm) runs them and the host build runs the same
 * instructions on this machine's FPU. */
#include "compute.h"

void transcendental(const double *inputs, int count) {
    long double s = 0, c = 0, t = 0, a = 0, l = 0, e = 0, r = 0, f = 0, q = 0;
    for (int i = 0; i < count; i++) {
        long double x = inputs[i];
        s += __builtin_sinl(x);
        c += __builtin_cosl(x);
        t += __builtin_tanl(x * 0.25L);
        a += __builtin_atan2l(x, 1.5L + i);
        l += __builtin_logl(__builtin_fabsl(x) + 1.0L);
        e += __builtin_expl(x / (1.0L + __builtin_fabsl(x)) * 20.0L);
        r += __builtin_rintl(x * 3.3L);
        f += __builtin_fmodl(x * 7.0L, 2.5L);
        q += __builtin_sqrtl(__builtin_fabsl(x));
    }
    put_long_double("x87.sin", s); put_long_double("x87.cos", c); put_long_double("x87.tan", t);
    put_long_double("x87.atan2", a); put_long_double("x87.log", l); put_long_double("x87.exp", e);
    put_long_double("x87.rint", r); put_long_double("x87.fmod", f); put_long_double("x87.sqrt", q);
}
