// The tiny C shim for the KVM API: <linux/kvm.h> defines its ioctl request numbers
// with function-like macros (_IOW, _IOR, ...) that Swift cannot import, and ioctl(2)
// itself is variadic. This header turns each request into a constant and exposes
// non-variadic ioctl entry points; and the kick signal's handler with the per-thread
// timer that sends it, which need thread-local state and async-signal safety Swift
// cannot express. Nothing else lives here.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

// System ioctls (on the /dev/kvm fd).
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;

// VM ioctls.
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;

// vCPU ioctls.
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_TRANSLATE = KVM_TRANSLATE;
static const unsigned long CKVM_INTERRUPT = KVM_INTERRUPT;
static const unsigned long CKVM_NMI = KVM_NMI;
static const unsigned long CKVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;

// kvm_run.kvm_valid_regs / kvm_dirty_regs bit for struct kvm_vcpu_events (KVM_CAP_SYNC_REGS).
static const unsigned long CKVM_SYNC_X86_EVENTS = KVM_SYNC_X86_EVENTS;
static const unsigned long CKVM_SYNC_X86_REGS = KVM_SYNC_X86_REGS;
static const unsigned long CKVM_SYNC_X86_SREGS = KVM_SYNC_X86_SREGS;
static const unsigned int CKVM_VCPUEVENT_VALID_NMI_PENDING = KVM_VCPUEVENT_VALID_NMI_PENDING;

/// ioctl(2) with a pointer argument. Returns -1 and sets errno on failure.
int ckvm_ioctl_ptr(int fd, unsigned long request, void *argument);

/// ioctl(2) with an integer argument (or none).
int ckvm_ioctl_int(int fd, unsigned long request, unsigned long argument);

/// KVM_X86_SET_MSR_FILTER on a VM fd with `count` (at most 16) ranges, each applying to
/// reads and writes: MSR bases[i] + j is left to KVM when bit j of bitmaps[i] is set and
/// sent to user space otherwise; MSRs outside every range are left to KVM. (A C helper:
/// struct kvm_msr_filter holds a fixed array Swift imports as a 16-tuple.)
int ckvm_set_msr_filter(int vm_fd, int count, const uint32_t *bases, const uint32_t *nmsrs, uint8_t *const *bitmaps);

/// pthread_rwlock_init with writers preferred (a GNU extension): a writer waiting for the
/// readers to leave is not starved by readers coming back.
int ckvm_rwlock_init_writer_preferring(pthread_rwlock_t *lock);

/// The signal that kicks a vCPU thread out of KVM_RUN: a real-time signal (SIGRTMIN + 2,
/// clear of the two glibc keeps for itself and of SIGUSR1/SIGUSR2, which `tandem run`
/// gives the user: engine flip and snapshot).
int ckvm_kick_signal(void);

/// The handler of the signal that kicks a vCPU thread out of KVM_RUN. If the thread is
/// between `ckvm_entering(run)` and `ckvm_entering(NULL)`, it sets run->immediate_exit,
/// so that a signal that lands just before the ioctl still makes it return EINTR.
void ckvm_kick_handler(int signal);

/// Marks the calling thread as about to enter (and inside) KVM_RUN on `run`; NULL
/// after it returns.
void ckvm_entering(struct kvm_run *run);

/// A CLOCK_MONOTONIC POSIX timer that sends `signal` to the calling thread
/// (SIGEV_THREAD_ID), as its kernel timer ID (timer_t is that ID cast to a pointer, and
/// the first is 0, which Swift would see as nil). Returns 0, or -1 with errno.
int ckvm_thread_timer_create(int signal, int *timer);

/// Arms `timer` for CLOCK_MONOTONIC time `nanoseconds` (absolute; 0 disarms).
int ckvm_thread_timer_set(int timer, uint64_t nanoseconds);

/// timer_delete(2).
int ckvm_thread_timer_delete(int timer);

/// The MMIO data bytes inside the mmapped kvm_run (KVM_EXIT_MMIO).
static inline unsigned char *ckvm_mmio_data(struct kvm_run *run) { return run->mmio.data; }

/// The port I/O data inside the mmapped kvm_run (KVM_EXIT_IO).
static inline unsigned char *ckvm_io_data(struct kvm_run *run) { return (unsigned char *)run + run->io.data_offset; }

#endif
