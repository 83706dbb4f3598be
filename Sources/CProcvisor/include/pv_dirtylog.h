// Dirty-page tracking for live migration: userfaultfd write-protection in asynchronous mode (the
// domain registers its RAM) and PAGEMAP_SCAN (the supervisor reads and re-arms it from outside).
// Included from CProcvisor.h.
//
// The installed <linux/*.h> headers may be older than the kernel we run on: they lack
// UFFD_FEATURE_WP_UNPOPULATED / WP_ASYNC (Linux 6.4 / 6.7), PAGEMAP_SCAN, struct pm_scan_arg and
// the PAGE_IS_* / PM_SCAN_* bits (Linux 6.7). The values below are the kernel's UAPI (checked
// against include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h); they are fixed ABI. A
// newer header that defines them is checked against these in dirtylog.c.
#ifndef PV_DIRTYLOG_H
#define PV_DIRTYLOG_H

#include <stdint.h>

/// userfaultfd(2) flag: the descriptor handles faults raised in user mode only (Linux 5.11).
#define PV_UFFD_USER_MODE_ONLY 1
/// UFFDIO_API features (struct uffdio_api.features).
#define PV_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#define PV_UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define PV_UFFD_FEATURE_WP_ASYNC (1ULL << 15)
/// UFFDIO_REGISTER mode (struct uffdio_register.mode).
#define PV_UFFDIO_REGISTER_MODE_WP (1ULL << 1)
/// PAGEMAP_SCAN categories (page_region.categories, pm_scan_arg masks).
#define PV_PAGE_IS_WPALLOWED (1ULL << 0)
#define PV_PAGE_IS_WRITTEN (1ULL << 1)
/// PAGEMAP_SCAN flags (pm_scan_arg.flags): write-protect what matched; fail with EPERM on a VMA
/// that is not registered for asynchronous write-protection.
#define PV_PM_SCAN_WP_MATCHING (1ULL << 0)
#define PV_PM_SCAN_CHECK_WPASYNC (1ULL << 1)

/// One run of pages the scan reports: [start, end) and its PAGE_IS_* categories. The layout of
/// the kernel's struct page_region.
struct pv_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

/// The exact flags a domain creates its userfaultfd with: UFFD_USER_MODE_ONLY | O_CLOEXEC |
/// O_NONBLOCK (the seccomp rules admit this value and no other).
int pv_uffd_domain_flags(void);
/// userfaultfd(2) with `flags`: the descriptor or -errno.
int pv_userfaultfd(int flags);
/// UFFDIO_API asking for `features`: 0 or -errno. On success *answered holds every feature the
/// kernel supports (the kernel answers with all of them) and *ioctls the ioctls it allows on the
/// descriptor; on failure both are 0 (the kernel clears the structure).
int pv_uffd_api(int uffd, uint64_t features, uint64_t *answered, uint64_t *ioctls);
/// UFFDIO_REGISTER of [start, start + length) in `mode`: 0 or -errno; *ioctls the range ioctls.
int pv_uffd_register(int uffd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls);
/// The ioctl request numbers of UFFDIO_API and UFFDIO_REGISTER (for seccomp rules).
unsigned long pv_uffdio_api_request(void);
unsigned long pv_uffdio_register_request(void);

/// PAGEMAP_SCAN on an open /proc/PID/pagemap over [start, end) for pages in category
/// PAGE_IS_WRITTEN, with PM_SCAN_CHECK_WPASYNC always and PM_SCAN_WP_MATCHING when `clear` (the
/// pages reported are write-protected again in the same walk). Up to `capacity` regions go to
/// `out` (NULL with capacity 0: nothing is reported, which with `clear` write-protects the whole
/// range). Returns the number of regions written or -errno (EPERM: a VMA in the range is not
/// registered for asynchronous write-protection; ENOTTY: no PAGEMAP_SCAN before Linux 6.7).
/// *walk_end is where the walk stopped: `end` when it covered the range, less when `out` filled.
int pv_pagemap_scan_written(int pagemap, uint64_t start, uint64_t end, int clear,
                            struct pv_page_region *out, uint64_t capacity, uint64_t *walk_end);

#endif
