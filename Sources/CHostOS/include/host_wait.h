// Host waiting primitives HostOS needs from C: glibc declares sem_clockwait(3) only
// under _GNU_SOURCE, which Swift's Glibc module is not built with.
#ifndef TANDEM_HOST_WAIT_H
#define TANDEM_HOST_WAIT_H

#include <semaphore.h>
#include <stdint.h>

/// sem_clockwait(3) on CLOCK_MONOTONIC until `nanoseconds` (absolute). 0 when it took
/// a post; -1 with errno ETIMEDOUT, or EINTR when a signal handler interrupted it.
int tandem_sem_wait_monotonic(sem_t *semaphore, uint64_t nanoseconds);

#endif
