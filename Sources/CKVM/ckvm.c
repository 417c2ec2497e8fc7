#include "ckvm.h"
#include <sys/ioctl.h>

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
