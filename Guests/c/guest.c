/* guest.c: the freestanding side of c-compute.elf: output on the debug console (port
 * 0xE9), then the exit device (port 0xF4). Entered from guest-start.asm on CPU 0. */
#include "compute.h"

void put_char(char c) { __asm__ volatile("outb %0, $0xe9" : : "a"(c)); }

void guest_main(void) {
    compute();
    __asm__ volatile("outb %0, $0xf4" : : "a"((char)0));
    for (;;) __asm__ volatile("cli; hlt");
}
