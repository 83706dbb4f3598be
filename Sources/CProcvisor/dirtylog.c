// Dirty-page tracking: thin wrappers, -errno on failure (see pv_dirtylog.h).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include "pv_dirtylog.h"

// Where the installed headers already know a value, it must be the one we use.
#ifdef UFFD_USER_MODE_ONLY
_Static_assert(UFFD_USER_MODE_ONLY == PV_UFFD_USER_MODE_ONLY, "UFFD_USER_MODE_ONLY");
#endif
#ifdef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
_Static_assert(UFFD_FEATURE_WP_HUGETLBFS_SHMEM == PV_UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM");
#endif
#ifdef UFFD_FEATURE_WP_UNPOPULATED
_Static_assert(UFFD_FEATURE_WP_UNPOPULATED == PV_UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED");
#endif
#ifdef UFFD_FEATURE_WP_ASYNC
_Static_assert(UFFD_FEATURE_WP_ASYNC == PV_UFFD_FEATURE_WP_ASYNC, "WP_ASYNC");
#endif
_Static_assert(UFFDIO_REGISTER_MODE_WP == PV_UFFDIO_REGISTER_MODE_WP, "UFFDIO_REGISTER_MODE_WP");
#ifdef PAGE_IS_WRITTEN
_Static_assert(PAGE_IS_WRITTEN == PV_PAGE_IS_WRITTEN, "PAGE_IS_WRITTEN");
_Static_assert(PM_SCAN_WP_MATCHING == PV_PM_SCAN_WP_MATCHING, "PM_SCAN_WP_MATCHING");
_Static_assert(PM_SCAN_CHECK_WPASYNC == PV_PM_SCAN_CHECK_WPASYNC, "PM_SCAN_CHECK_WPASYNC");
#endif

// The kernel's struct pm_scan_arg (include/uapi/linux/fs.h, Linux 6.7): twelve 64-bit fields.
// `size` tells the kernel which version of the structure it is handed.
struct pv_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};
_Static_assert(sizeof(struct pv_pm_scan_arg) == 96, "struct pm_scan_arg is 96 bytes");
_Static_assert(sizeof(struct pv_page_region) == 24, "struct page_region is 24 bytes");

// PAGEMAP_SCAN is _IOWR('f', 16, struct pm_scan_arg) in the kernel's fs.h.
#define PV_PAGEMAP_SCAN _IOWR('f', 16, struct pv_pm_scan_arg)
_Static_assert(PV_PAGEMAP_SCAN == 0xC0606610UL, "PAGEMAP_SCAN request number");

int pv_uffd_domain_flags(void) { return PV_UFFD_USER_MODE_ONLY | O_CLOEXEC | O_NONBLOCK; }

int pv_userfaultfd(int flags) {
    long fd = syscall(SYS_userfaultfd, flags);
    return fd < 0 ? -errno : (int)fd;
}

int pv_uffd_api(int uffd, uint64_t features, uint64_t *answered, uint64_t *ioctls) {
    struct uffdio_api api;
    memset(&api, 0, sizeof(api));
    api.api = UFFD_API;
    api.features = features;
    int rc = ioctl(uffd, UFFDIO_API, &api);
    int e = errno;
    *answered = api.features;
    *ioctls = api.ioctls;
    return rc < 0 ? -e : 0;
}

int pv_uffd_register(int uffd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register r;
    memset(&r, 0, sizeof(r));
    r.range.start = start;
    r.range.len = length;
    r.mode = mode;
    int rc = ioctl(uffd, UFFDIO_REGISTER, &r);
    int e = errno;
    *ioctls = r.ioctls;
    return rc < 0 ? -e : 0;
}

unsigned long pv_uffdio_api_request(void) { return UFFDIO_API; }
unsigned long pv_uffdio_register_request(void) { return UFFDIO_REGISTER; }

int pv_pagemap_scan_written(int pagemap, uint64_t start, uint64_t end, int clear,
                            struct pv_page_region *out, uint64_t capacity, uint64_t *walk_end) {
    struct pv_pm_scan_arg a;
    memset(&a, 0, sizeof(a));
    a.size = sizeof(a);
    a.flags = PV_PM_SCAN_CHECK_WPASYNC | (clear ? PV_PM_SCAN_WP_MATCHING : 0);
    a.start = start;
    a.end = end;
    a.vec = (uint64_t)(uintptr_t)out;
    a.vec_len = out ? capacity : 0;
    a.category_mask = PV_PAGE_IS_WRITTEN;
    a.return_mask = PV_PAGE_IS_WRITTEN;
    // Not retried on EINTR: the kernel returns it only with a fatal signal pending.
    int rc = ioctl(pagemap, PV_PAGEMAP_SCAN, &a);
    int e = errno;
    *walk_end = a.walk_end;
    return rc < 0 ? -e : rc;
}
