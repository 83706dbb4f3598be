// Thin C shims for Procvisor. See include/CProcvisor.h for the contract of each function.
#define _GNU_SOURCE
#include "CProcvisor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <liburing.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#include <net/if.h>
#include <linux/if_tun.h>

int pv_errno(void) { return errno; }

static int neg_errno(void) { return -errno; }

int pv_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) < 0 ? neg_errno() : 0; }

// ---- memfd / fallocate ----

int pv_memfd_create(const char *name, unsigned int flags) {
    int fd = memfd_create(name, flags);
    return fd < 0 ? neg_errno() : fd;
}

int pv_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) < 0 ? neg_errno() : 0;
}

int pv_fallocate_keep_size(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length);
}

// ---- futex ----

int pv_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0);
    return rc < 0 ? neg_errno() : 0;
}

int pv_futex_wake(uint32_t *addr, int count) {
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc < 0 ? neg_errno() : (int)rc;
}

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

int pv_futex_waitv(const struct pv_futex_waiter *waiters, unsigned int count, int64_t timeout_ns) {
    if (count == 0 || count > FUTEX_WAITV_MAX) return -EINVAL;
    struct futex_waitv v[FUTEX_WAITV_MAX];
    for (unsigned int i = 0; i < count; i++) {
        v[i].val = waiters[i].expected;
        v[i].uaddr = (uint64_t)(uintptr_t)waiters[i].addr;
        v[i].flags = FUTEX_32;
        v[i].__reserved = 0;
    }
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t deadline = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + timeout_ns;
        ts.tv_sec = deadline / 1000000000LL;
        ts.tv_nsec = deadline % 1000000000LL;
        tsp = &ts;
    }
    long rc = syscall(SYS_futex_waitv, v, count, 0, tsp, CLOCK_MONOTONIC);
    return rc < 0 ? neg_errno() : (int)rc;
}

// ---- SCM_RIGHTS ----

#define PV_MAX_FDS 16

ssize_t pv_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags) {
    if (nfds < 0 || nfds > PV_MAX_FDS) return -EINVAL;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * PV_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    return n < 0 ? neg_errno() : n;
}

ssize_t pv_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated, int flags) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * PV_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    *nfds = 0;
    *truncated = 0;
    ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0) return neg_errno();
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *data = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < maxfds) fds[(*nfds)++] = data[i];
            else { close(data[i]); *truncated = 1; }  // never leak a descriptor we cannot hand up
        }
    }
    return n;
}

int pv_accept_nonblocking(int listener) {
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return fd < 0 ? neg_errno() : fd;
}

int pv_peer_cred(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return neg_errno();
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

// ---- prctl ----

int pv_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ? neg_errno() : 0; }
int pv_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) < 0 ? neg_errno() : 0; }
int pv_set_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0) < 0 ? neg_errno() : 0; }

// ---- signals ----

static void fill_set(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}

int pv_signalfd(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? neg_errno() : fd;
}

int pv_block_signals(const int *signals, int count) {
    sigset_t set;
    fill_set(&set, signals, count);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    return rc ? -rc : 0;
}

int pv_unblock_all_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    int rc = pthread_sigmask(SIG_SETMASK, &set, NULL);
    return rc ? -rc : 0;
}

int pv_kill(pid_t pid, int sig) { return kill(pid, sig) < 0 ? neg_errno() : 0; }

int pv_pidfd_open(pid_t pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? neg_errno() : (int)fd;
}

// ---- seccomp ----

uint32_t pv_seccomp_act_allow(void) { return SCMP_ACT_ALLOW; }
uint32_t pv_seccomp_act_trap(void) { return SCMP_ACT_TRAP; }
uint32_t pv_seccomp_act_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }
uint32_t pv_seccomp_act_errno(int err) { return SCMP_ACT_ERRNO(err); }
uint32_t pv_seccomp_act_notify(void) { return SCMP_ACT_NOTIFY; }

void *pv_seccomp_new(uint32_t default_action) { return seccomp_init(default_action); }
void pv_seccomp_release(void *ctx) { if (ctx) seccomp_release(ctx); }

int pv_seccomp_syscall_number(const char *name) {
    int nr = seccomp_syscall_resolve_name(name);
    return nr == __NR_SCMP_ERROR ? -1 : nr;
}

int pv_seccomp_syscall_name(int nr, char *buf, size_t len) {
    char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (!name) return -ENOENT;
    snprintf(buf, len, "%s", name);
    free(name);
    return 0;
}

int pv_seccomp_add_rule(void *ctx, uint32_t action, int syscall_nr, const struct pv_seccomp_arg *args, unsigned int nargs) {
    if (nargs > 6) return -EINVAL;
    struct scmp_arg_cmp cmp[6];
    for (unsigned int i = 0; i < nargs; i++) {
        cmp[i].arg = args[i].arg;
        switch (args[i].op) {
        case PV_CMP_EQ: cmp[i].op = SCMP_CMP_EQ; break;
        case PV_CMP_NE: cmp[i].op = SCMP_CMP_NE; break;
        case PV_CMP_LT: cmp[i].op = SCMP_CMP_LT; break;
        case PV_CMP_LE: cmp[i].op = SCMP_CMP_LE; break;
        case PV_CMP_GT: cmp[i].op = SCMP_CMP_GT; break;
        case PV_CMP_GE: cmp[i].op = SCMP_CMP_GE; break;
        case PV_CMP_MASKED_EQ: cmp[i].op = SCMP_CMP_MASKED_EQ; break;
        default: return -EINVAL;
        }
        cmp[i].datum_a = args[i].datum_a;
        cmp[i].datum_b = args[i].datum_b;
    }
    return seccomp_rule_add_array(ctx, action, syscall_nr, nargs, cmp);
}

int pv_seccomp_set_badarch(void *ctx, uint32_t action) { return seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, action); }

int pv_seccomp_set_tsync(void *ctx, int on) { return seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, on ? 1 : 0); }

int pv_seccomp_load(void *ctx) { return seccomp_load(ctx); }

int pv_seccomp_export_bpf(void *ctx, void **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int fd = memfd_create("pv-bpf", MFD_CLOEXEC);
    if (fd < 0) return neg_errno();
    int rc = seccomp_export_bpf(ctx, fd);
    if (rc < 0) { close(fd); return rc; }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0) { close(fd); return -EINVAL; }
    void *buf = malloc((size_t)size);
    if (!buf) { close(fd); return -ENOMEM; }
    if (pread(fd, buf, (size_t)size, 0) != size) { int e = errno; free(buf); close(fd); return -e; }
    close(fd);
    *out = buf;
    *out_len = (size_t)size;
    return 0;
}

int pv_proc_seccomp_status(pid_t pid, int *mode, int *filters) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return neg_errno();
    *mode = -1;
    *filters = -1;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "Seccomp:", 8)) *mode = atoi(line + 8);
        else if (!strncmp(line, "Seccomp_filters:", 16)) *filters = atoi(line + 16);
    }
    fclose(f);
    return 0;
}

// ---- io_uring ----

void *pv_uring_create(unsigned int entries, int *err) {
    struct io_uring *ring = calloc(1, sizeof(*ring));
    if (!ring) { *err = -ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, ring, 0);
    if (rc < 0) { free(ring); *err = rc; return NULL; }
    *err = 0;
    return ring;
}

void pv_uring_destroy(void *ring) {
    if (!ring) return;
    io_uring_queue_exit(ring);
    free(ring);
}

int pv_uring_prep_read(void *ring, int fd, void *buf, unsigned int len, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int pv_uring_prep_write(void *ring, int fd, const void *buf, unsigned int len, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int pv_uring_submit(void *ring) { return io_uring_submit(ring); }

int pv_uring_complete(void *ring, int wait, uint64_t *user_data, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    int rc = wait ? io_uring_wait_cqe(ring, &cqe) : io_uring_peek_cqe(ring, &cqe);
    if (rc < 0) return rc;
    *user_data = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return 0;
}

// Block I/O additions: vectored read/write, fsync, fallocate, registered files, an eventfd for
// completions, batch harvesting. `sqe_flags` is passed through (IOSQE_FIXED_FILE makes `fd` an index
// into the registered files).

int pv_uring_prep_readv(void *ring, int fd, const struct iovec *iov, unsigned int nr, uint64_t offset,
                        uint64_t user_data, unsigned int sqe_flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_readv(sqe, fd, iov, nr, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    io_uring_sqe_set_flags(sqe, sqe_flags);
    return 0;
}

int pv_uring_prep_writev(void *ring, int fd, const struct iovec *iov, unsigned int nr, uint64_t offset,
                         uint64_t user_data, unsigned int sqe_flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_writev(sqe, fd, iov, nr, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    io_uring_sqe_set_flags(sqe, sqe_flags);
    return 0;
}

int pv_uring_prep_fsync(void *ring, int fd, unsigned int fsync_flags, uint64_t user_data, unsigned int sqe_flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, fsync_flags);
    io_uring_sqe_set_data64(sqe, user_data);
    io_uring_sqe_set_flags(sqe, sqe_flags);
    return 0;
}

int pv_uring_prep_fallocate(void *ring, int fd, int mode, int64_t offset, int64_t length,
                            uint64_t user_data, unsigned int sqe_flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fallocate(sqe, fd, mode, offset, length);
    io_uring_sqe_set_data64(sqe, user_data);
    io_uring_sqe_set_flags(sqe, sqe_flags);
    return 0;
}

unsigned int pv_uring_sq_space_left(void *ring) { return io_uring_sq_space_left(ring); }
unsigned int pv_uring_sq_ready(void *ring) { return io_uring_sq_ready(ring); }

int pv_uring_submit_and_wait(void *ring, unsigned int wait_nr) { return io_uring_submit_and_wait(ring, wait_nr); }

int pv_uring_harvest(void *ring, uint64_t *user_data, int32_t *results, unsigned int max) {
    struct io_uring_cqe *cqe;
    unsigned int head, n = 0;
    io_uring_for_each_cqe((struct io_uring *)ring, head, cqe) {
        if (n == max) break;
        user_data[n] = io_uring_cqe_get_data64(cqe);
        results[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(ring, n);
    return (int)n;
}

int pv_uring_register_files(void *ring, const int *fds, unsigned int nr) { return io_uring_register_files(ring, fds, nr); }
int pv_uring_register_eventfd(void *ring, int fd) { return io_uring_register_eventfd(ring, fd); }
unsigned int pv_uring_features(void *ring) { return ((struct io_uring *)ring)->features; }
void *pv_uring_create_flags(unsigned int entries, unsigned int flags, int *err) {
    struct io_uring *ring = calloc(1, sizeof(*ring));
    if (!ring) { *err = -ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, ring, flags);
    if (rc < 0) { free(ring); *err = rc; return NULL; }
    *err = 0;
    return ring;
}

unsigned int pv_uring_setup_flags(void *ring) { return ((struct io_uring *)ring)->flags; }

int pv_uring_enable(void *ring) {
    // liburing 2.3 has no io_uring_enable_rings in its library: the register call itself.
    long rc = syscall(__NR_io_uring_register, ((struct io_uring *)ring)->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    return rc < 0 ? -errno : 0;
}

int pv_uring_supports(void *ring, int opcode) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    if (!probe) return 0;
    int ok = io_uring_opcode_supported(probe, opcode);
    io_uring_free_probe(probe);
    return ok ? 1 : 0;
}

// liburing 2.3 predates IORING_OP_FUTEX_WAIT: the SQE is laid out as the kernel's io_futex_prep
// reads it (addr = word, addr2 = expected value, addr3 = bitset mask, fd = FUTEX2_* flags).
int pv_uring_prep_futex_wait(void *ring, uint32_t *word, uint32_t expected, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_rw(PV_IORING_OP_FUTEX_WAIT, sqe, 0x02 /* FUTEX2_SIZE_U32, shared */, word, 0, expected);
    sqe->addr3 = 0xffffffffu;  // FUTEX_BITSET_MATCH_ANY
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int pv_uring_register_buffer_table(void *ring, unsigned int nr) {
    int rc = io_uring_register_buffers_sparse(ring, nr);
    return rc < 0 ? rc : 0;
}

int pv_uring_update_buffer(void *ring, unsigned int index, void *base, size_t len) {
    struct iovec iov = { .iov_base = base, .iov_len = len };
    __u64 tag = 0;
    int rc = io_uring_register_buffers_update_tag(ring, index, &iov, &tag, 1);
    return rc < 0 ? rc : 0;
}

// liburing 2.3 predates IORING_OP_READV_FIXED: the SQE is a plain read/write one with buf_index.
int pv_uring_prep_rw_fixed(void *ring, int opcode, int fd, const void *addr, unsigned int len, uint64_t offset,
                           unsigned int buf_index, uint64_t user_data, unsigned int sqe_flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_rw(opcode, sqe, fd, addr, len, offset);
    sqe->buf_index = (__u16)buf_index;
    io_uring_sqe_set_data64(sqe, user_data);
    io_uring_sqe_set_flags(sqe, sqe_flags);
    return 0;
}

int pv_uring_prep_poll(void *ring, int fd, unsigned int events, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, events);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int pv_uring_submit_and_wait_timeout(void *ring, unsigned int wait_nr, int64_t timeout_ns) {
    struct __kernel_timespec ts = { .tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000 };
    struct io_uring_cqe *cqe = NULL;
    int rc = io_uring_submit_and_wait_timeout(ring, &cqe, wait_nr, &ts, NULL);
    return rc == -ETIME ? 0 : (rc < 0 ? rc : 0);
}

void pv_uring_flush_deferred(void *ring) {
    struct io_uring *r = ring;
    if (IO_URING_READ_ONCE(*r->sq.kflags) & IORING_SQ_TASKRUN) io_uring_get_events(r);
}

int pv_uring_has_completions(void *ring) {
    struct io_uring *r = ring;
    return io_uring_cq_ready(r) > 0 || (IO_URING_READ_ONCE(*r->sq.kflags) & IORING_SQ_TASKRUN) != 0;
}

_Static_assert(PV_IOSQE_FIXED_FILE == IOSQE_FIXED_FILE, "IOSQE_FIXED_FILE");
_Static_assert(PV_IORING_SETUP_COOP_TASKRUN == IORING_SETUP_COOP_TASKRUN, "IORING_SETUP_COOP_TASKRUN");
_Static_assert(PV_IORING_SETUP_TASKRUN_FLAG == IORING_SETUP_TASKRUN_FLAG, "IORING_SETUP_TASKRUN_FLAG");
_Static_assert(PV_IORING_SETUP_SINGLE_ISSUER == IORING_SETUP_SINGLE_ISSUER, "IORING_SETUP_SINGLE_ISSUER");
_Static_assert(PV_IORING_SETUP_DEFER_TASKRUN == IORING_SETUP_DEFER_TASKRUN, "IORING_SETUP_DEFER_TASKRUN");
_Static_assert(PV_IORING_SETUP_R_DISABLED == IORING_SETUP_R_DISABLED, "IORING_SETUP_R_DISABLED");
_Static_assert(PV_IORING_FSYNC_DATASYNC == IORING_FSYNC_DATASYNC, "IORING_FSYNC_DATASYNC");
_Static_assert(PV_IORING_FEAT_NODROP == IORING_FEAT_NODROP, "IORING_FEAT_NODROP");
_Static_assert(PV_IORING_FEAT_SUBMIT_STABLE == IORING_FEAT_SUBMIT_STABLE, "IORING_FEAT_SUBMIT_STABLE");
_Static_assert(PV_FALLOC_KEEP_SIZE == FALLOC_FL_KEEP_SIZE, "FALLOC_FL_KEEP_SIZE");
_Static_assert(PV_FALLOC_PUNCH_HOLE == FALLOC_FL_PUNCH_HOLE, "FALLOC_FL_PUNCH_HOLE");

// ---- domain launch: see spawn.c ----

// ---- SIGSYS reporter ----

static int sigsys_fd = -1;
static uint32_t sigsys_op;

// Layout of ProcvisorABI.HypercallRequest's 64-byte header (little endian).
struct pv_hcall_header { uint32_t op; uint32_t payload_len; uint64_t seq; uint64_t args[6]; };

static void sigsys_handler(int sig, siginfo_t *info, void *uctx) {
    (void)uctx;
    struct pv_hcall_header h;
    memset(&h, 0, sizeof(h));
    h.op = sigsys_op;
    h.seq = ~0ULL;
    h.args[0] = (uint64_t)(int64_t)info->si_syscall;
    h.args[1] = info->si_arch;
    h.args[2] = (uint64_t)(uintptr_t)info->si_call_addr;
    h.args[3] = (uint64_t)syscall(SYS_gettid);
    if (sigsys_fd >= 0) {
        ssize_t ignored = send(sigsys_fd, &h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)ignored;
    }
    // Die of the signal itself so the supervisor sees WTERMSIG == SIGSYS even without the report.
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig);
    _exit(128 + sig);
}

int pv_install_sigsys_reporter(int hypercall_fd, uint32_t op) {
    sigsys_fd = hypercall_fd;
    sigsys_op = op;
    static char altstack[16384];
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) < 0) return neg_errno();
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = sigsys_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL) < 0 ? neg_errno() : 0;
}

// ---- misc ----

int pv_eventfd(unsigned int initval) { int fd = eventfd(initval, EFD_CLOEXEC); return fd < 0 ? neg_errno() : fd; }

pid_t pv_fork(void) { pid_t p = fork(); return p < 0 ? neg_errno() : p; }

int pv_try_lock(int fd) { return flock(fd, LOCK_EX | LOCK_NB) < 0 ? neg_errno() : 0; }

long pv_raw_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
    long rc = syscall(nr, a1, a2, a3, a4, a5, a6);
    return rc < 0 ? -errno : rc;
}

int pv_close_range_from(unsigned int first) {
    return syscall(SYS_close_range, first, ~0U, 0) < 0 ? neg_errno() : 0;
}

uint64_t pv_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int pv_gettid(void) { return (int)syscall(SYS_gettid); }

void *pv_mremap_alias(void *old, size_t length, void *to) {
    return mremap(old, 0, length, MREMAP_MAYMOVE | MREMAP_FIXED, to);
}

// ---- tap devices and interface settings ----

int pv_tap_open(const char *name, int exclusive) {
    if (strlen(name) >= IFNAMSIZ) return -EINVAL;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return neg_errno();
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (exclusive ? IFF_TUN_EXCL : 0);
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/// An AF_INET datagram socket for interface ioctls, with `name` in `ifr`.
static int netif_socket(const char *name, struct ifreq *ifr) {
    if (strlen(name) >= IFNAMSIZ) return -EINVAL;
    memset(ifr, 0, sizeof *ifr);
    memcpy(ifr->ifr_name, name, strlen(name));
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return s < 0 ? neg_errno() : s;
}

int pv_netif_set_up(const char *name, int up) {
    struct ifreq ifr;
    int s = netif_socket(name, &ifr);
    if (s < 0) return s;
    int rc = 0;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        rc = neg_errno();
    } else {
        if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) rc = neg_errno();
    }
    close(s);
    return rc;
}

int pv_netif_set_mtu(const char *name, int mtu) {
    struct ifreq ifr;
    int s = netif_socket(name, &ifr);
    if (s < 0) return s;
    ifr.ifr_mtu = mtu;
    int rc = ioctl(s, SIOCSIFMTU, &ifr) < 0 ? neg_errno() : 0;
    close(s);
    return rc;
}

int pv_timerfd_create(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int pv_timerfd_arm(int fd, uint64_t deadline_ns) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
    its.it_value.tv_nsec = (long)(deadline_ns % 1000000000ULL);
    // A deadline of 0 would disarm: an already-passed time of 1 ns fires at once instead.
    if (deadline_ns != 0 && its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) < 0 ? -errno : 0;
}
