#include "sse_internal.h"

uint32_t tandem_sse_execute(uint32_t encoding, tandem_sse_args *a) {
    a->raised = 0;
    uint32_t r;
    if ((r = tandem_sse_arithmetic(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse_integer(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse_convert(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    if ((r = tandem_sse4(encoding, a)) != TANDEM_SSE_UNKNOWN) return r;
    return tandem_sse_string_compare(encoding, a);
}
