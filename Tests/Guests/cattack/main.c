// cattack: a domain kernel written in plain C, with no DomainRuntime, for the isolation tests.
// It is what a hostile guest kernel can be: it never engages anything, or fakes it. Its mode
// comes from its command line (`extra = "mode=NAME ..."`); it prints what it tries and what it
// got on its console (fd 1), so the tests read the outcome from the console log.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *arg(int argc, char **argv, const char *key) {
    size_t n = strlen(key);
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], key, n) && argv[i][n] == '=') return argv[i] + n + 1;
    return NULL;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0) { ssize_t ignored = write(1, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1); (void)ignored; }
}

static void report(const char *what, long rc) {
    say("%s: %s\n", what, rc < 0 ? strerror(errno) : "ok");
}

// Procvisor's hypercall header (ProcvisorABI.HypercallRequest): op, payload length, seq, six args.
struct hcall { uint32_t op; uint32_t len; uint64_t seq; uint64_t args[6]; };

static long hypercall(uint32_t op, uint64_t seq) {
    struct hcall h;
    memset(&h, 0, sizeof(h));
    h.op = op;
    h.seq = seq;
    if (send(3, &h, sizeof(h), MSG_NOSIGNAL) < 0) return -errno;
    char buf[65536];
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct iovec iov = { buf, sizeof(buf) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
    ssize_t n = recvmsg(3, &msg, 0);
    if (n < 24) return -EIO;
    int64_t rc;
    memcpy(&rc, buf + 8, sizeof(rc));  // reply: seq, rc, payload length, payload
    return (long)rc;
}

// Code before main: a constructor attacks first when the command line says `ctor=PATH`.
__attribute__((constructor)) static void constructor_attack(int argc, char **argv, char **envp) {
    (void)envp;
    const char *path = arg(argc, argv, "ctor");
    if (!path) return;
    say("constructor: opening %s for writing\n", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    say("constructor survived: %s\n", fd < 0 ? strerror(errno) : "ok");
}

int main(int argc, char **argv) {
    const char *mode = arg(argc, argv, "mode");
    const char *target = arg(argc, argv, "target");   // a path or a pid, depending on the mode
    if (!mode) mode = "probe";
    say("cattack %s uid=%d euid=%d pid=%d\n", mode, (int)getuid(), (int)geteuid(), (int)getpid());
    if (!strcmp(mode, "probe")) {
        // Reads a jail allows: only the jail's own files exist.
        const char *paths[] = { "/etc/shadow", "/etc/passwd", "/proc/self/status", "/proc/1/mem", "/tmp", "/usr/bin/env",
                                "/sys/fs/cgroup", "/dev/null", target ? target : "/run" };
        for (unsigned i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
            struct stat st;
            int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
            say("open %s: %s\n", paths[i], fd < 0 ? strerror(errno) : "ok");
            if (fd >= 0) close(fd);
            say("stat %s: %s\n", paths[i], stat(paths[i], &st) < 0 ? strerror(errno) : "ok");
        }
        say("probe done\n");
        return 0;
    }
    long rc = 0;
    say("attempting %s\n", mode);
    if (!strcmp(mode, "write-host")) {
        rc = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    } else if (!strcmp(mode, "open-rdwr")) {
        rc = open(target, O_RDWR | O_CLOEXEC);
    } else if (!strcmp(mode, "socket-inet")) {
        rc = socket(AF_INET, SOCK_STREAM, 0);
    } else if (!strcmp(mode, "socket-unix")) {
        rc = socket(AF_UNIX, SOCK_STREAM, 0);
    } else if (!strcmp(mode, "socketpair")) {
        int sv[2];
        rc = socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    } else if (!strcmp(mode, "fork")) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }  // a child that would outlive the domain
        rc = p;
    } else if (!strcmp(mode, "kill")) {
        rc = kill((pid_t)atoi(target), SIGKILL);
    } else if (!strcmp(mode, "sigio")) {
        // SIGIO redirect: owner = the victim, signal = SIGKILL, async on the hypercall socket.
        rc = fcntl(3, F_SETOWN, atoi(target));
        report("F_SETOWN", rc);
        rc = fcntl(3, F_SETSIG, SIGKILL);
        report("F_SETSIG", rc);
        rc = fcntl(3, F_SETFL, fcntl(3, F_GETFL) | O_ASYNC);
    } else if (!strcmp(mode, "int80")) {
        // A 32-bit system call from a 64-bit process: getpid through int 0x80.
        long r;
        __asm__ volatile ("int $0x80" : "=a"(r) : "a"(20) : "memory");
        rc = r;
    } else if (!strcmp(mode, "x32")) {
        rc = syscall(0x40000000 | 39);  // getpid through the x32 ABI
    } else if (!strcmp(mode, "uring")) {
        char params[120];
        memset(params, 0, sizeof(params));
        rc = syscall(425, 8, params);    // io_uring_setup
    } else if (!strcmp(mode, "ptrace")) {
        rc = syscall(SYS_ptrace, 0x4206 /* PTRACE_SEIZE */, atoi(target), 0, 0);
    } else if (!strcmp(mode, "setuid0")) {
        rc = setuid(0);
    } else if (!strcmp(mode, "deaf")) {
        // Engages as the runtime would, then never looks at its sockets again: nothing but the
        // parent-death signal ends it when the supervisor dies.
        say("bootstrap: %ld\n", hypercall(0x1000, 1));
        say("engaged: %ld\n", hypercall(0x1001, 2));
        for (;;) sleep(1000);  // pause(2) is not in the bound
    } else if (!strcmp(mode, "forge")) {
        // A forged engagement: its own allow-everything filter, then the runtime's two hypercalls.
        struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
        struct sock_fprog prog = { 1, allow };
        report("own allow-all filter", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
        say("bootstrap: %ld\n", hypercall(0x1000, 1));
        say("engaged: %ld\n", hypercall(0x1001, 2));
        sleep(1);  // long enough for the toolstack to list it as running
        say("now opening %s for writing\n", target);
        rc = open(target, O_RDWR | O_CLOEXEC);
    } else {
        say("unknown mode %s\n", mode);
        return 2;
    }
    report(mode, rc);
    say("survived %s\n", mode);
    for (;;) pause();
}
