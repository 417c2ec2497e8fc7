#define _GNU_SOURCE
#include "ckvm.h"
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int ckvm_ioctl_ptr(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int ckvm_ioctl_int(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

int ckvm_set_msr_filter(int vm_fd, int count, const uint32_t *bases, const uint32_t *nmsrs, uint8_t *const *bitmaps) {
    struct kvm_msr_filter filter = { .flags = KVM_MSR_FILTER_DEFAULT_ALLOW };
    if (count < 0 || count > KVM_MSR_FILTER_MAX_RANGES) return -1;
    for (int i = 0; i < count; i++) {
        filter.ranges[i].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
        filter.ranges[i].base = bases[i];
        filter.ranges[i].nmsrs = nmsrs[i];
        filter.ranges[i].bitmap = bitmaps[i];
    }
    return ioctl(vm_fd, KVM_X86_SET_MSR_FILTER, &filter);
}

int ckvm_rwlock_init_writer_preferring(pthread_rwlock_t *lock) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int result = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return result;
}

int ckvm_kick_signal(void) {
    return SIGRTMIN + 2;
}

static __thread struct kvm_run *volatile entering_run;

void ckvm_kick_handler(int signal) {
    (void)signal;
    struct kvm_run *run = entering_run;
    if (run) run->immediate_exit = 1;
}

void ckvm_entering(struct kvm_run *run) {
    entering_run = run;
    // The handler runs on this thread: only the compiler must not move the store.
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

int ckvm_thread_timer_create(int signal, int *timer) {
    struct sigevent event;
    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t created;
    if (timer_create(CLOCK_MONOTONIC, &event, &created) != 0) return -1;
    *timer = (int)(intptr_t)created;
    return 0;
}

int ckvm_thread_timer_set(int timer, uint64_t nanoseconds) {
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    spec.it_value.tv_sec = (time_t)(nanoseconds / 1000000000u);
    spec.it_value.tv_nsec = (long)(nanoseconds % 1000000000u);
    return timer_settime((timer_t)(intptr_t)timer, TIMER_ABSTIME, &spec, NULL);
}

int ckvm_thread_timer_delete(int timer) {
    return timer_delete((timer_t)(intptr_t)timer);
}
