// The domain launcher: clone, jail, confine, exec. See pv_spawn in include/CProcvisor.h.
//
// Everything between clone and execve runs in a copy of a multi-threaded process, so the child
// only issues system calls on memory the parent prepared: no malloc, no stdio, no locks.
#define _GNU_SOURCE
#include "CProcvisor.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

struct report { int step; int err; int detail; };

static void child_fail_detail(int report_fd, int step, int detail) {
    struct report r = { step, errno, detail };
    ssize_t ignored = write(report_fd, &r, sizeof(r));
    (void)ignored;
    _exit(127);
}

static void child_fail(int report_fd, int step) { child_fail_detail(report_fd, step, -1); }

static int write_all(int fd, const char *s) {
    size_t len = strlen(s);
    return write(fd, s, len) == (ssize_t)len ? 0 : -1;
}

// Builds the jail's root: a small tmpfs on `mount_point` (in the child's private mount namespace),
// the listed directories, one empty file per listed file with the host file bind-mounted on it;
// then pivot_root into it, detach the host's tree and make the whole root read-only and nosuid.
static void build_root(const struct pv_jail *jail, int rfd) {
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) child_fail(rfd, PV_STEP_MOUNT);
    if (mount("procvisor-jail", jail->mount_point, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOATIME,
              "size=64k,nr_inodes=1024,mode=0755") < 0)
        child_fail(rfd, PV_STEP_MOUNT);
    if (chdir(jail->mount_point) < 0) child_fail(rfd, PV_STEP_MOUNT);
    // Paths below are the jail's absolute paths; skipping the '/' makes them relative to the new root.
    for (int i = 0; i < jail->ndirs; i++)
        if (mkdir(jail->dirs[i] + 1, 0755) < 0 && errno != EEXIST) child_fail_detail(rfd, PV_STEP_MOUNT, 1000000 + i);
    for (int i = 0; i < jail->nfiles; i++) {
        const char *target = jail->files[i].target + 1;
        int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
        if (fd < 0 && errno != EEXIST) child_fail_detail(rfd, PV_STEP_MOUNT, i);
        if (fd >= 0) close(fd);
        if (mount(jail->files[i].source, target, NULL, MS_BIND, NULL) < 0) child_fail_detail(rfd, PV_STEP_MOUNT, i);
    }
    // pivot_root(".", "."): the old root ends up stacked under the new one and is detached at once.
    if (syscall(SYS_pivot_root, ".", ".") < 0) child_fail(rfd, PV_STEP_PIVOT);
    if (umount2(".", MNT_DETACH) < 0) child_fail(rfd, PV_STEP_PIVOT);
    if (chdir("/") < 0) child_fail(rfd, PV_STEP_PIVOT);
    struct mount_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
    if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof(attr)) < 0) child_fail(rfd, PV_STEP_PIVOT);
}

// Gives up every privilege: the bounding set, securebits locked so a later uid 0 would grant
// nothing, no ambient capabilities, no supplementary groups, the jail's uid and gid, and empty
// effective, permitted and inheritable sets.
static void drop_privileges(const struct pv_jail *jail, int rfd) {
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
              SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED, 0, 0, 0) < 0)
        child_fail(rfd, PV_STEP_CAPS);
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL) break;  // past the last capability this kernel knows
            child_fail_detail(rfd, PV_STEP_CAPS, cap);
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) child_fail(rfd, PV_STEP_CAPS);
    // In a user namespace setgroups is denied (the parent wrote "deny" before the gid map).
    // Raw system calls, not glibc's wrappers: those apply the change to every thread glibc
    // knows of (__nptl_setxid signals each and waits for its answer), and in this copy of a
    // multi-threaded supervisor none of them exists: the child would wait forever, and the
    // supervisor with it, for the listener it never sends.
    if (!(jail->clone_flags & CLONE_NEWUSER) && syscall(SYS_setgroups, 0, NULL) < 0) child_fail(rfd, PV_STEP_CREDS);
    if (syscall(SYS_setresgid, jail->gid, jail->gid, jail->gid) < 0) child_fail(rfd, PV_STEP_CREDS);
    if (syscall(SYS_setresuid, jail->uid, jail->uid, jail->uid) < 0) child_fail(rfd, PV_STEP_CREDS);
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) < 0) child_fail(rfd, PV_STEP_CAPS);
}

// Writes `text` to /proc/PID/NAME: 0 or -errno.
static int write_proc(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = write_all(fd, text) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

// Writes the child's uid and gid maps (user-namespace mode): one id inside, the supervisor's outside.
static int write_id_maps(pid_t pid, const struct pv_jail *jail) {
    char line[64];
    int rc = write_proc(pid, "setgroups", "deny");
    if (rc < 0) return rc;
    snprintf(line, sizeof(line), "%u %u 1\n", (unsigned)jail->uid, (unsigned)jail->outer_uid);
    if ((rc = write_proc(pid, "uid_map", line)) < 0) return rc;
    snprintf(line, sizeof(line), "%u %u 1\n", (unsigned)jail->gid, (unsigned)jail->outer_gid);
    return write_proc(pid, "gid_map", line);
}

// How long the launcher waits for a child between clone and exec to report (its setup takes
// milliseconds).
#define PV_SPAWN_STALL_MS 10000

pid_t pv_spawn(const char *path, char *const argv[], char *const envp[],
               const struct pv_spawn_fd *fds, int nfds,
               const struct pv_spawn_rlimit *limits, int nlimits,
               const void *bpf, size_t bpf_len, uint32_t pid_placeholder,
               const struct pv_jail *jail, int want_listener, int *listener, int *failed_step, int *failed_detail) {
    *failed_step = PV_STEP_NONE;
    *failed_detail = -1;
    int report[2], sync[2] = { -1, -1 };
    *listener = -1;
    // A datagram socket, not a pipe: the child hands the bound's notification listener back on it.
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, report) < 0) { *failed_step = PV_STEP_FORK; return -errno; }
    int userns = jail && (jail->clone_flags & CLONE_NEWUSER);
    if (userns && pipe2(sync, O_CLOEXEC) < 0) {
        int e = errno;
        close(report[0]); close(report[1]);
        *failed_step = PV_STEP_FORK;
        return -e;
    }
    // The child checks this after PR_SET_PDEATHSIG: a parent that died before it is readable.
    int parent_fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    unsigned long flags = jail ? (jail->clone_flags & ~(unsigned long)CLONE_NEWCGROUP) : 0;
    // A raw clone (no glibc fork handlers): the child is a copy that only makes system calls.
    pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid < 0) {
        int e = errno;
        close(report[0]); close(report[1]);
        if (sync[0] >= 0) { close(sync[0]); close(sync[1]); }
        if (parent_fd >= 0) close(parent_fd);
        *failed_step = PV_STEP_FORK;
        return -e;
    }
    if (pid == 0) {
        close(report[0]);
        int rfd = report[1];
        if (userns) {
            close(sync[1]);
            char go;
            ssize_t n;
            do { n = read(sync[0], &go, 1); } while (n < 0 && errno == EINTR);
            if (n != 1) child_fail(rfd, PV_STEP_USERNS);
            close(sync[0]);
        }
        // The domain's cgroups first, so every later allocation and every thread is accounted.
        if (jail) {
            for (int i = 0; i < jail->ncgroup_fds; i++)
                if (write(jail->cgroup_fds[i], "0\n", 2) != 2) child_fail_detail(rfd, PV_STEP_CGROUP, i);
            // The cgroup namespace is rooted at the domain's own cgroup: joined above, unshared now.
            if ((jail->clone_flags & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0) child_fail(rfd, PV_STEP_CGROUP);
        }
        setsid();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) child_fail(rfd, PV_STEP_FDS);
        if (parent_fd >= 0) {
            struct pollfd p = { .fd = parent_fd, .events = POLLIN };
            if (poll(&p, 1, 0) > 0) _exit(127);  // the supervisor died between clone and prctl
        }
        if (jail && jail->mount_point) build_root(jail, rfd);
        if (jail && jail->hostname && sethostname(jail->hostname, strlen(jail->hostname)) < 0) child_fail(rfd, PV_STEP_HOSTNAME);
        // Move every source out of the way first so a target can never clobber a later source:
        // copies go above every descriptor involved (F_DUPFD never replaces an open descriptor,
        // whatever the number of descriptors the supervisor holds).
        int base = rfd;
        for (int i = 0; i < nfds; i++)
            if (fds[i].source > base) base = fds[i].source;
        base += 1;
        int staged[nfds > 0 ? nfds : 1];
        for (int i = 0; i < nfds; i++)
            if ((staged[i] = fcntl(fds[i].source, F_DUPFD_CLOEXEC, base)) < 0) child_fail(rfd, PV_STEP_FDS);
        // The report pipe must survive until exec; park it above the staging area.
        int parked = fcntl(rfd, F_DUPFD_CLOEXEC, base);
        if (parked < 0) child_fail(rfd, PV_STEP_FDS);
        rfd = parked;
        int maxtarget = -1;
        for (int i = 0; i < nfds; i++) {
            if (dup2(staged[i], fds[i].target) < 0) child_fail(rfd, PV_STEP_FDS);  // dup2 clears CLOEXEC
            if (fds[i].target > maxtarget) maxtarget = fds[i].target;
        }
        // Close everything else (cgroup files, the pidfd, the supervisor's own descriptors) except
        // the report pipe (CLOEXEC, it closes at exec).
        if (maxtarget + 1 < rfd) syscall(SYS_close_range, maxtarget + 1, rfd - 1, 0);
        syscall(SYS_close_range, rfd + 1, ~0U, 0);
        sigset_t empty;
        sigemptyset(&empty);
        sigprocmask(SIG_SETMASK, &empty, NULL);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        for (int i = 0; i < nlimits; i++) {
            struct rlimit rl = { .rlim_cur = limits[i].soft, .rlim_max = limits[i].hard };
            if (setrlimit(limits[i].resource, &rl) < 0) child_fail_detail(rfd, PV_STEP_RLIMIT, limits[i].resource);
        }
        if (jail && jail->drop_caps) {
            drop_privileges(jail, rfd);
            // A change of uid or gid cleared the parent-death signal (prctl(2)): set it again, then
            // make sure the supervisor did not die before that (its end of the report socket closed).
            if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) child_fail(rfd, PV_STEP_CAPS);
            struct pollfd p = { .fd = rfd, .events = POLLIN };
            if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR))) _exit(127);
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) child_fail(rfd, PV_STEP_NNP);
        if (bpf && bpf_len >= sizeof(struct sock_filter)) {
            struct sock_filter *insns = (struct sock_filter *)bpf;  // the child's private copy
            unsigned short count = (unsigned short)(bpf_len / sizeof(struct sock_filter));
            uint32_t self = (uint32_t)getpid();  // 1 in a new pid namespace
            for (unsigned short i = 0; i < count; i++)
                if (insns[i].k == pid_placeholder) insns[i].k = self;
            struct sock_fprog prog = { .len = count, .filter = insns };
            long lfd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, want_listener ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
            if (lfd < 0) child_fail(rfd, PV_STEP_SECCOMP);
            if (want_listener) {
                struct report r = { PV_STEP_NONE, 0, -2 };
                struct iovec iov = { &r, sizeof(r) };
                union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
                memset(&control, 0, sizeof(control));
                struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
                struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                int l = (int)lfd;
                memcpy(CMSG_DATA(c), &l, sizeof(int));
                if (sendmsg(rfd, &msg, MSG_NOSIGNAL) < 0) child_fail(rfd, PV_STEP_SECCOMP);
                close(l);
            }
        }
        execve(path, argv, envp);
        child_fail(rfd, PV_STEP_EXEC);
    }
    close(report[1]);
    if (parent_fd >= 0) close(parent_fd);
    if (userns) {
        close(sync[0]);
        int rc = write_id_maps(pid, jail);
        if (rc == 0 && write(sync[1], "g", 1) != 1) rc = -errno;
        close(sync[1]);  // on failure the child reads EOF and reports PV_STEP_USERNS
        if (rc < 0) {
            close(report[0]);
            kill(pid, SIGKILL);
            int status;
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
            *failed_step = PV_STEP_USERNS;
            return rc;
        }
    }
    // Messages until exec closes the child's end: the listener (if asked for), or a failure.
    // A child that says nothing for PV_SPAWN_STALL_MS is killed: the caller (the supervisor's
    // one thread) must never wait on it for ever.
    for (;;) {
        struct pollfd wait = { .fd = report[0], .events = POLLIN };
        int ready;
        do { ready = poll(&wait, 1, PV_SPAWN_STALL_MS); } while (ready < 0 && errno == EINTR);
        if (ready == 0) {
            close(report[0]);
            kill(pid, SIGKILL);
            int status;
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
            if (*listener >= 0) { close(*listener); *listener = -1; }
            *failed_step = PV_STEP_STALLED;
            return -ETIMEDOUT;
        }
        struct report r;
        struct iovec iov = { &r, sizeof(r) };
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
        ssize_t n;
        do { n = recvmsg(report[0], &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
        int got = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); n > 0 && c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&got, CMSG_DATA(c), sizeof(int));
        if (n == (ssize_t)sizeof(r) && r.step == PV_STEP_NONE && got >= 0) {
            *listener = got;
            continue;
        }
        if (got >= 0) close(got);
        close(report[0]);
        if (n == (ssize_t)sizeof(r)) {
            int status;
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
            if (*listener >= 0) { close(*listener); *listener = -1; }
            *failed_step = r.step;
            *failed_detail = r.detail;
            return -(r.err ? r.err : EIO);
        }
        return pid;
    }
}

int pv_probe_clone(unsigned long flags) {
    pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid < 0) return -errno;
    if (pid == 0) _exit(0);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return 0;
}

int pv_seccomp_notif_recv(int listener, uint64_t *id, int32_t *nr, uint32_t *arch, pid_t *pid, uint64_t args[6]) {
    struct seccomp_notif n;
    memset(&n, 0, sizeof(n));
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) return -errno;
    *id = n.id;
    *nr = n.data.nr;
    *arch = n.data.arch;
    *pid = (pid_t)n.pid;
    for (int i = 0; i < 6; i++) args[i] = n.data.args[i];
    return 0;
}

int pv_seccomp_notif_id_valid(int listener, uint64_t id) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? -errno : 0;
}

int pv_seccomp_notif_respond(int listener, uint64_t id, int error, int64_t val) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof(resp));
    resp.id = id;
    resp.error = error ? -error : 0;
    resp.val = error ? 0 : val;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 ? -errno : 0;
}

int pv_seccomp_notif_addfd_send(int listener, uint64_t id, int fd) {
    struct seccomp_notif_addfd a;
    memset(&a, 0, sizeof(a));
    a.id = id;
    a.flags = SECCOMP_ADDFD_FLAG_SEND;
    a.srcfd = (uint32_t)fd;
    a.newfd_flags = O_CLOEXEC;
    int rc = ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
    return rc < 0 ? -errno : rc;
}

// Inside the jail there is no /proc, where the Swift runtime on Linux looks for the command line
// when a program asks for CommandLine.arguments. glibc hands every ELF constructor argc and argv:
// give them to the runtime directly, before main runs. (Weak: C programs linking this have no
// Swift runtime.)
extern void _swift_stdlib_overrideUnsafeArgvArgc(char **argv, int argc) __attribute__((weak));

__attribute__((constructor)) static void pv_capture_arguments(int argc, char **argv, char **envp) {
    (void)envp;
    if (_swift_stdlib_overrideUnsafeArgvArgc && argv) _swift_stdlib_overrideUnsafeArgvArgc(argv, argc);
}

ssize_t pv_process_vm_rw(pid_t pid, void *local, size_t len, uint64_t remote, int write) {
    struct iovec l = { local, len };
    struct iovec r = { (void *)(uintptr_t)remote, len };
    ssize_t n = write ? process_vm_writev(pid, &l, 1, &r, 1, 0) : process_vm_readv(pid, &l, 1, &r, 1, 0);
    return n < 0 ? -errno : n;
}
