// CProcvisor: the one place that includes C headers. Thin wrappers only: no policy, no state.
// Every function returns -errno (or NULL with errno set) on failure so Swift wraps it in a thrown Errno.
#ifndef CPROCVISOR_H
#define CPROCVISOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <signal.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <malloc.h>
#include <linux/sched.h>
#include <sys/mman.h>

/// AT_EMPTY_PATH needs _GNU_SOURCE in glibc's headers, which a module header must not define.
#define PV_AT_EMPTY_PATH 0x1000
/// MFD_CLOEXEC (sys/mman.h declares memfd flags only under _GNU_SOURCE).
#define PV_MFD_CLOEXEC 0x0001U
/// O_DIRECT (fcntl.h declares it only under _GNU_SOURCE); x86-64 and arm64 differ.
#if defined(__aarch64__)
#define PV_O_DIRECT 0200000
#else
#define PV_O_DIRECT 040000
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---- errno ----
int pv_errno(void);

/// pipe2 with O_CLOEXEC (glibc declares pipe2 only under _GNU_SOURCE).
int pv_pipe_cloexec(int fds[2]);

// ---- memfd / fallocate ----
int pv_memfd_create(const char *name, unsigned int flags);
int pv_punch_hole(int fd, int64_t offset, int64_t length);
/* fallocate(FALLOC_FL_KEEP_SIZE): allocates without changing the size; -1 and errno on failure. */
int pv_fallocate_keep_size(int fd, int64_t offset, int64_t length);

// ---- futex ----
/// FUTEX_WAIT on a shared (not private) word: -ETIMEDOUT, -EAGAIN (value changed), -EINTR or 0.
int pv_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
/// FUTEX_WAKE: number woken or -errno.
int pv_futex_wake(uint32_t *addr, int count);
struct pv_futex_waiter { uint32_t *addr; uint32_t expected; };
/// futex_waitv(2) over up to 128 words: index woken, or -errno (-ENOSYS on kernels before 5.16).
int pv_futex_waitv(const struct pv_futex_waiter *waiters, unsigned int count, int64_t timeout_ns);

// ---- SCM_RIGHTS ----
/// sendmsg with up to 16 descriptors attached; MSG_NOSIGNAL always. Bytes sent or -errno.
ssize_t pv_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags);
/// recvmsg collecting up to maxfds descriptors (received CLOEXEC). *truncated is set when the
/// datagram or its control data was cut (MSG_TRUNC/MSG_CTRUNC). Bytes received or -errno.
ssize_t pv_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated, int flags);
/// accept4 with SOCK_CLOEXEC|SOCK_NONBLOCK (a GNU function): fd or -errno.
int pv_accept_nonblocking(int listener);
/// SO_PEERCRED of a Unix socket.
int pv_peer_cred(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

// ---- prctl ----
int pv_set_no_new_privs(void);
int pv_set_pdeathsig(int sig);
int pv_set_name(const char *name);

// ---- signals ----
int pv_signalfd(const int *signals, int count);
int pv_block_signals(const int *signals, int count);
int pv_unblock_all_signals(void);
int pv_kill(pid_t pid, int sig);
int pv_pidfd_open(pid_t pid);

// ---- seccomp (libseccomp) ----
/// Argument comparison for a rule: op is one of the PV_CMP_* values below.
struct pv_seccomp_arg { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
enum { PV_CMP_EQ = 1, PV_CMP_NE, PV_CMP_LT, PV_CMP_LE, PV_CMP_GT, PV_CMP_GE, PV_CMP_MASKED_EQ };
uint32_t pv_seccomp_act_allow(void);
uint32_t pv_seccomp_act_trap(void);
uint32_t pv_seccomp_act_kill_process(void);
uint32_t pv_seccomp_act_errno(int err);
uint32_t pv_seccomp_act_notify(void);
void *pv_seccomp_new(uint32_t default_action);
void pv_seccomp_release(void *ctx);
/// Number of `name` on the native architecture, or -1 when the kernel/libseccomp does not know it.
int pv_seccomp_syscall_number(const char *name);
/// Name of syscall `nr` on the native architecture written into buf; 0 or -ENOENT.
int pv_seccomp_syscall_name(int nr, char *buf, size_t len);
int pv_seccomp_add_rule(void *ctx, uint32_t action, int syscall_nr, const struct pv_seccomp_arg *args, unsigned int nargs);
int pv_seccomp_set_tsync(void *ctx, int on);
/// The action for a call made through another ABI than x86-64's (int 0x80, x32): libseccomp
/// checks the audit architecture and the x32 bit before any rule.
int pv_seccomp_set_badarch(void *ctx, uint32_t action);
/// Loads the filter into the calling process (all threads when tsync is set).
int pv_seccomp_load(void *ctx);
/// Writes the compiled BPF program into a fresh malloc'd buffer (*out, *out_len bytes).
int pv_seccomp_export_bpf(void *ctx, void **out, size_t *out_len);
/// Reads "Seccomp:" and "Seccomp_filters:" from /proc/PID/status.
int pv_proc_seccomp_status(pid_t pid, int *mode, int *filters);

// ---- domain launch (spawn.c) ----
struct pv_spawn_fd { int source; int target; };
struct pv_spawn_rlimit { int resource; uint64_t soft; uint64_t hard; };
/// A host file bind-mounted read-only at `target` (an absolute path inside the jail).
struct pv_jail_file { const char *source; const char *target; };
/// The jail a domain is started in. Every pointer must stay valid for the call.
struct pv_jail {
    /// CLONE_NEW* namespaces for the child (CLONE_NEWUSER when the supervisor is not root).
    /// CLONE_NEWCGROUP is unshared after the child joined its cgroups.
    unsigned long clone_flags;
    /// A host directory the jail's tmpfs root is mounted on (in the child's mount namespace only);
    /// NULL: no new root.
    const char *mount_point;
    /// Directories to create in the root, parents first (absolute jail paths).
    const char *const *dirs;
    int ndirs;
    const struct pv_jail_file *files;
    int nfiles;
    /// The UTS namespace's host name, or NULL.
    const char *hostname;
    /// The domain's uid and gid (inside its user namespace in user-namespace mode).
    uint32_t uid, gid;
    /// User-namespace mode: the ids the domain's uid and gid map to outside (the supervisor's).
    uint32_t outer_uid, outer_gid;
    /// Open `cgroup.procs` files the child writes "0" to before anything else.
    const int *cgroup_fds;
    int ncgroup_fds;
    /// Drop every capability (bounding, ambient, inheritable, permitted, effective) and change to uid/gid.
    int drop_caps;
};
/// clone + exec a domain kernel. The child, in order: waits for its id maps (user-namespace mode),
/// joins its cgroups, unshares its cgroup namespace, starts a new session with parent-death signal
/// SIGKILL, builds and pivots into its read-only root, sets its host name, keeps exactly the listed
/// descriptors (source -> target, everything else closed), resets signal dispositions and mask,
/// applies the resource limits, drops its privileges, sets NO_NEW_PRIVS, installs the bounding BPF
/// filter (every 32-bit constant equal to `pid_placeholder` is replaced by the child's own pid,
/// 1 in a new pid namespace) and execs. `jail` NULL: a plain fork+exec with only the descriptors,
/// limits and filter. `want_listener`: the filter is installed with SECCOMP_FILTER_FLAG_NEW_LISTENER
/// and the listener comes back in *listener (else -1). On success returns the pid. A failure before exec is reported as -errno with
/// *failed_step set to one of PV_STEP_* and *failed_detail to the index of the file, directory,
/// cgroup, capability or resource involved (-1 when none; directories are 1000000 + index); the
/// child is reaped.
enum { PV_STEP_NONE = 0, PV_STEP_FORK, PV_STEP_FDS, PV_STEP_RLIMIT, PV_STEP_NNP, PV_STEP_SECCOMP, PV_STEP_EXEC,
       PV_STEP_USERNS, PV_STEP_CGROUP, PV_STEP_MOUNT, PV_STEP_PIVOT, PV_STEP_HOSTNAME, PV_STEP_CREDS, PV_STEP_CAPS,
       PV_STEP_STALLED };
pid_t pv_spawn(const char *path, char *const argv[], char *const envp[],
               const struct pv_spawn_fd *fds, int nfds,
               const struct pv_spawn_rlimit *limits, int nlimits,
               const void *bpf, size_t bpf_len, uint32_t pid_placeholder,
               const struct pv_jail *jail, int want_listener, int *listener, int *failed_step, int *failed_detail);
/// Receives one pending notification from a bound's listener (a call the bound's default action
/// hands to the supervisor): its id, the call, the calling thread's pid as the supervisor sees it.
int pv_seccomp_notif_recv(int listener, uint64_t *id, int32_t *nr, uint32_t *arch, pid_t *pid, uint64_t args[6]);
/// process_vm_readv/process_vm_writev of one range: bytes moved or -errno.
ssize_t pv_process_vm_rw(pid_t pid, void *local, size_t len, uint64_t remote, int write);
/// 0 while notification `id` is still pending (its caller alive and waiting), else -ENOENT.
int pv_seccomp_notif_id_valid(int listener, uint64_t id);
/// Answers notification `id`: the call returns -error, or val when error is 0.
int pv_seccomp_notif_respond(int listener, uint64_t id, int error, int64_t val);
/// Installs `fd` (close-on-exec) in the caller's table and makes it the call's return value
/// (SECCOMP_ADDFD_FLAG_SEND). The number in the domain, or -errno.
int pv_seccomp_notif_addfd_send(int listener, uint64_t id, int fd);

/// Whether this process may create a child in new namespaces `flags`: 0 or clone's -errno.
int pv_probe_clone(unsigned long flags);

/// Installs a SIGSYS handler (on an alternate stack) that reports the trapped system call as a
/// Procvisor "seccomp violation" hypercall on `hypercall_fd`, then dies of SIGSYS.
/// `op` is the hypercall number the supervisor expects for that report.
int pv_install_sigsys_reporter(int hypercall_fd, uint32_t op);

// ---- io_uring (liburing) ----
/// Creates a ring with `entries` submission slots; NULL with *err = -errno when the kernel refuses
/// (EPERM under io_uring_disabled or a seccomp policy, ENOSYS on old kernels).
void *pv_uring_create(unsigned int entries, int *err);
void pv_uring_destroy(void *ring);
/// Queues a read/write at `offset`; -EBUSY when the submission queue is full.
int pv_uring_prep_read(void *ring, int fd, void *buf, unsigned int len, uint64_t offset, uint64_t user_data);
int pv_uring_prep_write(void *ring, int fd, const void *buf, unsigned int len, uint64_t offset, uint64_t user_data);
/// Submits queued entries: number submitted or -errno.
int pv_uring_submit(void *ring);
/// Waits for one completion (wait=1) or takes one if ready (wait=0: -EAGAIN when none).
int pv_uring_complete(void *ring, int wait, uint64_t *user_data, int32_t *result);
/// Vectored read/write at `offset` into/from `nr` iovecs (IORING_OP_READV/WRITEV); -EBUSY when the
/// submission queue is full. `sqe_flags` is IOSQE_* (IOSQE_FIXED_FILE: `fd` indexes the registered files).
int pv_uring_prep_readv(void *ring, int fd, const struct iovec *iov, unsigned int nr, uint64_t offset,
                        uint64_t user_data, unsigned int sqe_flags);
int pv_uring_prep_writev(void *ring, int fd, const struct iovec *iov, unsigned int nr, uint64_t offset,
                         uint64_t user_data, unsigned int sqe_flags);
/// IORING_OP_FSYNC; `fsync_flags` = PV_IORING_FSYNC_DATASYNC for fdatasync.
int pv_uring_prep_fsync(void *ring, int fd, unsigned int fsync_flags, uint64_t user_data, unsigned int sqe_flags);
/// IORING_OP_FALLOCATE with `mode` (e.g. PV_FALLOC_PUNCH_HOLE | PV_FALLOC_KEEP_SIZE).
int pv_uring_prep_fallocate(void *ring, int fd, int mode, int64_t offset, int64_t length,
                            uint64_t user_data, unsigned int sqe_flags);
/// Free submission slots / slots prepared but not yet submitted.
unsigned int pv_uring_sq_space_left(void *ring);
unsigned int pv_uring_sq_ready(void *ring);
/// Submits what is queued and waits for `wait_nr` completions to be available (not consumed).
int pv_uring_submit_and_wait(void *ring, unsigned int wait_nr);
/// Consumes up to `max` ready completions without blocking; returns how many.
int pv_uring_harvest(void *ring, uint64_t *user_data, int32_t *results, unsigned int max);
/// io_uring_register_files / io_uring_register_eventfd: 0 or -errno.
int pv_uring_register_files(void *ring, const int *fds, unsigned int nr);
int pv_uring_register_eventfd(void *ring, int fd);
/// IORING_FEAT_* the kernel reported at setup.
unsigned int pv_uring_features(void *ring);
/// As pv_uring_create with IORING_SETUP_* `flags`; *err = -EINVAL when the kernel does not know one.
void *pv_uring_create_flags(unsigned int entries, unsigned int flags, int *err);
/// The IORING_SETUP_* flags the ring was created with.
unsigned int pv_uring_setup_flags(void *ring);
/// IORING_REGISTER_ENABLE_RINGS (a ring created with IORING_SETUP_R_DISABLED): the calling
/// thread becomes the ring's submitter (IORING_SETUP_SINGLE_ISSUER). 0 or -errno.
int pv_uring_enable(void *ring);
/// 1 when the kernel implements `opcode` (IORING_REGISTER_PROBE), else 0.
int pv_uring_supports(void *ring, int opcode);
/// IORING_OP_FUTEX_WAIT (Linux 6.7) on a 32-bit shared (not process-private) futex word: completes
/// with 0 when woken, -EAGAIN at once when *word != expected. -EBUSY when the queue is full.
int pv_uring_prep_futex_wait(void *ring, uint32_t *word, uint32_t expected, uint64_t user_data);
/// Runs completion work the kernel deferred to this task (IORING_SETUP_DEFER_TASKRUN / COOP_TASKRUN)
/// when it flagged some (IORING_SQ_TASKRUN), so `pv_uring_harvest` sees those completions.
void pv_uring_flush_deferred(void *ring);
/// 1 when completions are ready or deferred completion work is flagged (no system call).
int pv_uring_has_completions(void *ring);
/// IORING_OP_POLL_ADD (one shot) for `events` (POLLIN...): completes with the revents.
int pv_uring_prep_poll(void *ring, int fd, unsigned int events, uint64_t user_data);
/// Submits what is queued and waits until `wait_nr` completions are available or `timeout_ns`
/// passed (0 on a timeout too); -errno on failure.
int pv_uring_submit_and_wait_timeout(void *ring, unsigned int wait_nr, int64_t timeout_ns);
/// IORING_REGISTER_BUFFERS2 with IORING_RSRC_REGISTER_SPARSE: a table of `nr` empty buffer slots.
/// 0 or -errno.
int pv_uring_register_buffer_table(void *ring, unsigned int nr);
/// IORING_REGISTER_BUFFERS_UPDATE of slot `index` to [base, base+len) (pinned by the kernel now;
/// len 0 empties the slot). 0 or -errno.
int pv_uring_update_buffer(void *ring, unsigned int index, void *base, size_t len);
/// A read or write on registered buffer `buf_index`: IORING_OP_READ_FIXED / WRITE_FIXED (`addr` a
/// buffer of `len` bytes) or READV_FIXED / WRITEV_FIXED (Linux 6.15; `addr` an iovec array of
/// `len` entries, all inside the buffer). -EBUSY when the queue is full.
int pv_uring_prep_rw_fixed(void *ring, int opcode, int fd, const void *addr, unsigned int len, uint64_t offset,
                           unsigned int buf_index, uint64_t user_data, unsigned int sqe_flags);
#define PV_IORING_OP_FUTEX_WAIT 51
#define PV_IORING_OP_READ_FIXED 4
#define PV_IORING_OP_WRITE_FIXED 5
#define PV_IORING_OP_READV_FIXED 60
#define PV_IORING_OP_WRITEV_FIXED 61
#define PV_IORING_SETUP_COOP_TASKRUN (1u << 8)
#define PV_IORING_SETUP_TASKRUN_FLAG (1u << 9)
#define PV_IORING_SETUP_SINGLE_ISSUER (1u << 12)
#define PV_IORING_SETUP_DEFER_TASKRUN (1u << 13)
#define PV_IORING_SETUP_R_DISABLED (1u << 6)
#define PV_IOSQE_FIXED_FILE 1u
#define PV_IORING_FSYNC_DATASYNC 1u
#define PV_IORING_FEAT_NODROP 2u
#define PV_IORING_FEAT_SUBMIT_STABLE 4u
#define PV_FALLOC_KEEP_SIZE 1
#define PV_FALLOC_PUNCH_HOLE 2

// ---- misc ----
/// eventfd(2) with EFD_CLOEXEC: fd or -errno.
int pv_eventfd(unsigned int initval);
/// fork(2) for daemonising a freshly started, single-threaded process: pid, 0 in the child, or -errno.
pid_t pv_fork(void);
/// flock(LOCK_EX|LOCK_NB): 0, -EWOULDBLOCK when another process holds it, or -errno.
int pv_try_lock(int fd);
/// syscall(2) with six arguments: result or -errno. For tests that must issue a forbidden call.
long pv_raw_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
int pv_close_range_from(unsigned int first);
uint64_t pv_monotonic_ns(void);
// A CLOCK_MONOTONIC timerfd, close-on-exec and non-blocking; -errno on failure.
int pv_timerfd_create(void);
// Arms it to expire once at the absolute monotonic time `deadline_ns` (0 disarms); -errno.
int pv_timerfd_arm(int fd, uint64_t deadline_ns);
int pv_gettid(void);

// ---- atomics on shared memory (event pages, grant entries) ----
static inline uint64_t pv_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pv_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
/// A full fence: no load or store moves across it, in the compiler or the CPU.
static inline void pv_atomic_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline uint64_t pv_atomic_fetch_or_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t pv_atomic_fetch_and_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t pv_atomic_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void pv_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
/// A release store: every load and store before it is done first, in the compiler and the CPU (a
/// plain move on x86). For the word that makes a record written just before it valid.
static inline void pv_atomic_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t pv_atomic_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
/// Compare-and-swap of a 32-bit word (grant entry flags+domid together, as Xen does); returns the value found.
static inline uint32_t pv_atomic_cmpxchg_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
static inline uint16_t pv_atomic_load_u16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/// Compare-and-swap of a 16-bit word (grant entry flags); returns the value found.
static inline uint16_t pv_atomic_cmpxchg_u16(uint16_t *p, uint16_t expected, uint16_t desired) {
    __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
/// A spin-wait hint: PAUSE on x86, YIELD on arm64, a compiler barrier elsewhere.
static inline void pv_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}
// ---- tap devices and interface settings ----
/// Opens /dev/net/tun (O_RDWR, close-on-exec, blocking) and attaches it with TUNSETIFF to a tap
/// named `name` (IFF_TAP | IFF_NO_PI; plus IFF_TUN_EXCL when `exclusive`, so an interface that
/// already exists is EBUSY instead of being attached to). Not made persistent: the tap goes away
/// with its last descriptor. Returns the descriptor or -errno (-EINVAL for a name of IFNAMSIZ
/// bytes or more; -EPERM without CAP_NET_ADMIN).
int pv_tap_open(const char *name, int exclusive);
/// Sets (up != 0) or clears IFF_UP on interface `name` (SIOCGIFFLAGS/SIOCSIFFLAGS through an
/// AF_INET datagram socket): 0 or -errno.
int pv_netif_set_up(const char *name, int up);
/// Sets the MTU of interface `name` (SIOCSIFMTU through an AF_INET datagram socket): 0 or -errno.
int pv_netif_set_mtu(const char *name, int mtu);

/* CRC-32C of len bytes, continuing from crc (0 to start): crc32c(a+b) == pv_crc32c(crc32c(a), b). */
uint32_t pv_crc32c(uint32_t crc, const void *buf, size_t len);

/// mremap(old, 0, length, MREMAP_MAYMOVE|MREMAP_FIXED, to): maps the shared pages at `old` a
/// second time, at `to` (mremap is variadic, which Swift cannot call). Returns `to` or MAP_FAILED.
void *pv_mremap_alias(void *old, size_t length, void *to);

#ifdef __cplusplus
}
#endif
/// One malloc arena for every thread (mallopt M_ARENA_MAX = 1); nonzero on success.
static inline int pv_malloc_single_arena(void) { return mallopt(M_ARENA_MAX, 1); }

#include "pv_seals.h"
#include "pv_dirtylog.h"
#endif
#include "pv_uring_restrict.h"
