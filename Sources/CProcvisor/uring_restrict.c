// Rings for driver domains: made by the supervisor (io_uring_setup), restricted before anyone can
// submit on them, mapped by the domain that receives the descriptor. See pv_uring_restrict.h.
#include "include/pv_uring_restrict.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/sockios.h>

size_t pv_uring_params_size(void) { return sizeof(struct io_uring_params); }

int pv_uring_setup_fd(unsigned int entries, unsigned int flags, unsigned int cq_entries, void *params_out) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    p.cq_entries = cq_entries;
    // The raw system call, not io_uring_queue_init: the supervisor does not map the ring.
    long fd = syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0) return -errno;
    memcpy(params_out, &p, sizeof(p));
    return (int)fd;
}

int pv_uring_probe_fd(int ring_fd, uint8_t *supported, unsigned int len) {
    // io_uring_probe ends in a flexible array of 256 entries at most (the opcode is a u8).
    size_t size = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, size);
    if (!probe) return -ENOMEM;
    long rc = syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_PROBE, probe, 256);
    if (rc < 0) { int e = errno; free(probe); return -e; }
    memset(supported, 0, len);
    for (unsigned int i = 0; i < probe->ops_len && i < len; i++)
        supported[i] = (probe->ops[i].flags & IO_URING_OP_SUPPORTED) ? 1 : 0;
    int known = probe->last_op + 1;
    free(probe);
    return known;
}

int pv_uring_register_restrictions(int ring_fd, const uint8_t *sqe_ops, unsigned int n_sqe_ops,
                                   const uint8_t *register_ops, unsigned int n_register_ops,
                                   uint8_t sqe_flags_allowed, uint8_t sqe_flags_required) {
    unsigned int n = n_sqe_ops + n_register_ops + 2;
    struct io_uring_restriction *res = calloc(n, sizeof(*res));
    if (!res) return -ENOMEM;
    unsigned int k = 0;
    for (unsigned int i = 0; i < n_sqe_ops; i++) {
        res[k].opcode = IORING_RESTRICTION_SQE_OP;
        res[k++].sqe_op = sqe_ops[i];
    }
    for (unsigned int i = 0; i < n_register_ops; i++) {
        res[k].opcode = IORING_RESTRICTION_REGISTER_OP;
        res[k++].register_op = register_ops[i];
    }
    res[k].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    res[k++].sqe_flags = sqe_flags_allowed;
    res[k].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
    res[k++].sqe_flags = sqe_flags_required;
    long rc = syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_RESTRICTIONS, res, k);
    int e = errno;
    free(res);
    return rc < 0 ? -e : 0;
}

int pv_uring_register_noarg(int ring_fd, unsigned int opcode) {
    long rc = syscall(__NR_io_uring_register, ring_fd, opcode, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

void *pv_uring_adopt(int ring_fd, const void *params, size_t params_len, int *err) {
    if (params_len != sizeof(struct io_uring_params)) { *err = -EINVAL; return NULL; }
    struct io_uring_params p;
    memcpy(&p, params, sizeof(p));
    struct io_uring *ring = calloc(1, sizeof(*ring));
    if (!ring) { *err = -ENOMEM; return NULL; }
    int rc = io_uring_queue_mmap(ring_fd, &p, ring);
    if (rc < 0) { free(ring); *err = rc; return NULL; }
    // liburing 2.3's io_uring_queue_mmap does only the mapping; io_uring_queue_init_params does
    // the rest, which is done here as it does: each SQ slot names the SQE of the same index, and
    // the features are kept (liburing waits with IORING_ENTER_EXT_ARG only when it sees
    // IORING_FEAT_EXT_ARG; otherwise it would queue an IORING_OP_TIMEOUT of its own).
    for (unsigned int i = 0; i < ring->sq.ring_entries; i++) ring->sq.array[i] = i;
    ring->features = p.features;
    *err = 0;
    return ring;
}

int pv_uring_ring_fd(void *ring) { return ((struct io_uring *)ring)->ring_fd; }

int pv_uring_prep_raw(void *ring, int opcode, int fd, uint64_t addr, unsigned int len, uint64_t off,
                      uint32_t op_flags, uint64_t addr3, unsigned int sqe_flags, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_rw(opcode, sqe, fd, (const void *)(uintptr_t)addr, len, off);
    sqe->rw_flags = (__kernel_rwf_t)op_flags;
    sqe->addr3 = addr3;
    io_uring_sqe_set_flags(sqe, sqe_flags);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int pv_uring_update_file(void *ring, unsigned int index, int fd) {
    int rc = io_uring_register_files_update(ring, index, &fd, 1);
    return rc < 0 ? rc : 0;
}

int pv_socket_unread_bytes(int sock) {
    int n = 0;
    if (ioctl(sock, SIOCOUTQ, &n) < 0) return -errno;
    return n;
}

_Static_assert(PV_IORING_OP_NOP == IORING_OP_NOP, "IORING_OP_NOP");
_Static_assert(PV_IORING_OP_READV == IORING_OP_READV, "IORING_OP_READV");
_Static_assert(PV_IORING_OP_WRITEV == IORING_OP_WRITEV, "IORING_OP_WRITEV");
_Static_assert(PV_IORING_OP_FSYNC == IORING_OP_FSYNC, "IORING_OP_FSYNC");
_Static_assert(PV_IORING_OP_POLL_ADD == IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD");
_Static_assert(PV_IORING_OP_TIMEOUT == IORING_OP_TIMEOUT, "IORING_OP_TIMEOUT");
_Static_assert(PV_IORING_OP_FALLOCATE == IORING_OP_FALLOCATE, "IORING_OP_FALLOCATE");
_Static_assert(PV_IORING_OP_OPENAT == IORING_OP_OPENAT, "IORING_OP_OPENAT");
_Static_assert(PV_IORING_OP_READ == IORING_OP_READ, "IORING_OP_READ");
_Static_assert(PV_IORING_OP_WRITE == IORING_OP_WRITE, "IORING_OP_WRITE");
_Static_assert(PV_IORING_OP_SOCKET == IORING_OP_SOCKET, "IORING_OP_SOCKET");
// liburing 2.3 predates IORING_OP_FTRUNCATE (Linux 6.9): 55 is from the kernel's io_uring.h.
_Static_assert(PV_IORING_REGISTER_FILES == IORING_REGISTER_FILES, "IORING_REGISTER_FILES");
_Static_assert(PV_IORING_REGISTER_EVENTFD == IORING_REGISTER_EVENTFD, "IORING_REGISTER_EVENTFD");
_Static_assert(PV_IORING_REGISTER_FILES_UPDATE == IORING_REGISTER_FILES_UPDATE, "IORING_REGISTER_FILES_UPDATE");
_Static_assert(PV_IORING_REGISTER_PROBE == IORING_REGISTER_PROBE, "IORING_REGISTER_PROBE");
_Static_assert(PV_IORING_REGISTER_RESTRICTIONS == IORING_REGISTER_RESTRICTIONS, "IORING_REGISTER_RESTRICTIONS");
_Static_assert(PV_IORING_REGISTER_ENABLE_RINGS == IORING_REGISTER_ENABLE_RINGS, "IORING_REGISTER_ENABLE_RINGS");
_Static_assert(PV_IORING_REGISTER_BUFFERS2 == IORING_REGISTER_BUFFERS2, "IORING_REGISTER_BUFFERS2");
_Static_assert(PV_IORING_REGISTER_BUFFERS_UPDATE == IORING_REGISTER_BUFFERS_UPDATE, "IORING_REGISTER_BUFFERS_UPDATE");
_Static_assert(PV_IORING_SETUP_CQSIZE == IORING_SETUP_CQSIZE, "IORING_SETUP_CQSIZE");
_Static_assert(PV_IORING_FEAT_EXT_ARG == IORING_FEAT_EXT_ARG, "IORING_FEAT_EXT_ARG");
