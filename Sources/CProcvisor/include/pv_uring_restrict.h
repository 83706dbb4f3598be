// io_uring rings made by the supervisor for driver domains: created disabled, restricted to the
// operations the block and network backends use, handed over and mapped by the domain.
// Declarations only; uring_restrict.c has the code. Every function returns -errno on failure.
#ifndef PV_URING_RESTRICT_H
#define PV_URING_RESTRICT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// sizeof(struct io_uring_params): the bytes the supervisor hands over with a ring.
size_t pv_uring_params_size(void);

/// io_uring_setup(2) with `flags` (IORING_SETUP_*) and, with IORING_SETUP_CQSIZE, `cq_entries`.
/// Returns the ring descriptor (close-on-exec, as the kernel makes it) or -errno; `params_out`
/// (pv_uring_params_size() bytes) receives the io_uring_params the kernel filled in.
int pv_uring_setup_fd(unsigned int entries, unsigned int flags, unsigned int cq_entries, void *params_out);

/// IORING_REGISTER_PROBE on a ring descriptor: supported[op] = 1 for every opcode below `len` the
/// kernel implements, 0 otherwise. Returns the number of opcodes the kernel knows, or -errno.
int pv_uring_probe_fd(int ring_fd, uint8_t *supported, unsigned int len);

/// IORING_REGISTER_RESTRICTIONS on a ring created with IORING_SETUP_R_DISABLED: only `sqe_ops`
/// may be submitted and only `register_ops` registered once the ring is enabled; every SQE must
/// carry all of `sqe_flags_required` and nothing outside `sqe_flags_allowed | sqe_flags_required`.
/// 0 or -errno (-EBUSY: restrictions were registered already; -EBADFD: the ring is enabled).
int pv_uring_register_restrictions(int ring_fd, const uint8_t *sqe_ops, unsigned int n_sqe_ops,
                                   const uint8_t *register_ops, unsigned int n_register_ops,
                                   uint8_t sqe_flags_allowed, uint8_t sqe_flags_required);

/// io_uring_register(2) with an opcode and no argument (IORING_REGISTER_ENABLE_RINGS, ...): 0 or -errno.
int pv_uring_register_noarg(int ring_fd, unsigned int opcode);

/// Maps a ring created elsewhere (io_uring_queue_mmap) from its descriptor and the params the
/// kernel returned at setup: a ring usable with every pv_uring_* function, which owns `ring_fd`
/// from then on (pv_uring_destroy closes it). NULL with *err = -errno on failure (`ring_fd` is
/// then left open).
void *pv_uring_adopt(int ring_fd, const void *params, size_t params_len, int *err);

/// The descriptor of a ring from pv_uring_create* / pv_uring_adopt.
int pv_uring_ring_fd(void *ring);

/// Queues an SQE in io_uring_prep_rw's layout (fd, addr, len, off) plus the operation's flags
/// word (rw_flags / poll32_events / open_flags) and addr3, with IOSQE_* `sqe_flags`: reads and
/// writes, polls and futex waits on a registered file or none, and in tests any operation that
/// must be shown refused. -EBUSY when the queue is full.
int pv_uring_prep_raw(void *ring, int opcode, int fd, uint64_t addr, unsigned int len, uint64_t off,
                      uint32_t op_flags, uint64_t addr3, unsigned int sqe_flags, uint64_t user_data);

/// IORING_REGISTER_FILES_UPDATE of registered file slot `index` to `fd` (-1 empties it): 0 or -errno.
int pv_uring_update_file(void *ring, unsigned int index, int fd);

/// SIOCOUTQ of a Unix socket: bytes sent on it that its peer has not read yet, or -errno.
int pv_socket_unread_bytes(int sock);

#define PV_IORING_OP_NOP 0
#define PV_IORING_OP_READV 1
#define PV_IORING_OP_WRITEV 2
#define PV_IORING_OP_FSYNC 3
#define PV_IORING_OP_POLL_ADD 6
#define PV_IORING_OP_TIMEOUT 11
#define PV_IORING_OP_FALLOCATE 17
#define PV_IORING_OP_OPENAT 18
#define PV_IORING_OP_READ 22
#define PV_IORING_OP_WRITE 23
#define PV_IORING_OP_SOCKET 45
#define PV_IORING_OP_FTRUNCATE 55
#define PV_IORING_REGISTER_FILES 2
#define PV_IORING_REGISTER_EVENTFD 4
#define PV_IORING_REGISTER_FILES_UPDATE 6
#define PV_IORING_REGISTER_PROBE 8
#define PV_IORING_REGISTER_RESTRICTIONS 11
#define PV_IORING_REGISTER_ENABLE_RINGS 12
#define PV_IORING_REGISTER_BUFFERS2 15
#define PV_IORING_REGISTER_BUFFERS_UPDATE 16
#define PV_IORING_SETUP_CQSIZE (1u << 3)
#define PV_IORING_FEAT_EXT_ARG (1u << 8)
#define PV_AT_FDCWD (-100)

#ifdef __cplusplus
}
#endif

#endif
