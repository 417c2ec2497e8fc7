// The inline operations are in include/host_atomics.h; this file has the process-wide barrier.
#include "host_atomics.h"
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int use_membarrier;
static void *shootdown_page;
static pthread_mutex_t shootdown_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_up(void) {
    use_membarrier = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    if (!use_membarrier) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        shootdown_page = p == MAP_FAILED ? NULL : p;
    }
}

bool tandem_process_memory_barrier(void) {
    pthread_once(&once, set_up);
    if (use_membarrier) {
        return syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
    }
    if (!shootdown_page) return false;
    pthread_mutex_lock(&shootdown_lock);
    // Touch the page so that it is mapped, then revoke access: the kernel must flush it
    // from every CPU's TLB, interrupting each CPU that runs one of our threads.
    *(volatile char *)shootdown_page = 1;
    int ok = mprotect(shootdown_page, 4096, PROT_NONE) == 0 &&
             mprotect(shootdown_page, 4096, PROT_READ | PROT_WRITE) == 0;
    pthread_mutex_unlock(&shootdown_lock);
    return ok;
}
