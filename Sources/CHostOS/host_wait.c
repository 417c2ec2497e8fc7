#define _GNU_SOURCE
#include "host_wait.h"
#include <time.h>

int tandem_sem_wait_monotonic(sem_t *semaphore, uint64_t nanoseconds) {
    struct timespec until = { .tv_sec = (time_t)(nanoseconds / 1000000000u), .tv_nsec = (long)(nanoseconds % 1000000000u) };
    return sem_clockwait(semaphore, CLOCK_MONOTONIC, &until);
}
