#include "sse_internal.h"

static uint32_t run_families(uint32_t encoding, tandem_sse_args *a) {
    a->raised = 0;
    uint32_t r;
    if ((r = tandem_sse_arithmetic(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse_integer(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse_convert(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse4(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    return tandem_sse_string_compare(encoding, a);
}

uint32_t tandem_sse_execute(uint32_t encoding, tandem_sse_args *a) {
    // Underflow unmasked (MXCSR.UM = 0): hardware signals it for every tiny result, exact
    // or not, whereas with UM masked (how the host runs the operation) only for tiny and
    // inexact ones. The host can tell tininess without trapping: under FTZ every tiny
    // result is flushed and raises UE. So a second run with FTZ finds the exact tiny ones.
    if ((a->mxcsr & (1u << 11)) == 0) {
        tandem_sse_args copy = *a;
        uint32_t r = run_families(encoding, a);
        if (!(a->raised & 0x10) && r != TANDEM_SSE_UNKNOWN) {
            copy.mxcsr |= 1u << 15;
            run_families(encoding, &copy);
            if (copy.raised & 0x10) a->raised |= 0x10;
        }
        return r;
    }
    return run_families(encoding, a);
}
