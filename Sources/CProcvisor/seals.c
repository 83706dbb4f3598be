// memfd seals and raw resizes: thin wrappers, -errno on failure (see pv_seals.h).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "pv_seals.h"

int pv_memfd_add_seals(int fd, int seals) {
    return fcntl(fd, F_ADD_SEALS, seals) < 0 ? -errno : 0;
}

int pv_memfd_get_seals(int fd) {
    int s = fcntl(fd, F_GET_SEALS);
    return s < 0 ? -errno : s;
}

int pv_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length) < 0 ? -errno : 0;
}

int pv_ftruncate(int fd, int64_t length) {
    int rc;
    do { rc = ftruncate(fd, (off_t)length); } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : 0;
}
