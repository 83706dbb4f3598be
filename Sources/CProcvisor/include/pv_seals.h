// memfd sealing and raw resize calls (for the supervisor's hand-out rules and for tests that
// play a hostile domain). Included from CProcvisor.h.
#ifndef PV_SEALS_H
#define PV_SEALS_H

#include <stdint.h>

/// MFD_ALLOW_SEALING and the F_SEAL_* bits (fcntl.h declares them only under _GNU_SOURCE,
/// which a module header must not define). Values from linux/memfd.h and linux/fcntl.h.
#define PV_MFD_ALLOW_SEALING 0x0002U
#define PV_F_SEAL_SEAL 0x0001
#define PV_F_SEAL_SHRINK 0x0002
#define PV_F_SEAL_GROW 0x0004
#define PV_F_SEAL_WRITE 0x0008
#define PV_F_SEAL_FUTURE_WRITE 0x0010

/// fcntl(fd, F_ADD_SEALS, seals) (fcntl is variadic, which Swift cannot call). 0 or -errno.
int pv_memfd_add_seals(int fd, int seals);
/// fcntl(fd, F_GET_SEALS): the seal bits, or -errno.
int pv_memfd_get_seals(int fd);
/// fallocate(fd, mode, offset, length) with any mode (fcntl.h declares fallocate only under
/// _GNU_SOURCE): 0 or -errno. Tests use it to try to grow what must not grow.
int pv_fallocate(int fd, int mode, int64_t offset, int64_t length);
/// ftruncate(fd, length): 0 or -errno.
int pv_ftruncate(int fd, int64_t length);

#endif
