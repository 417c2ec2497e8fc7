/* host.c: the same computation on the host, whose output is the guest's expected one. */
#include <stdio.h>
#include "compute.h"

void put_char(char c) { putchar(c); }

int main(void) {
    compute();
    return 0;
}
