/*
 * wc-init: the part of a sandbox that must run between fork and exec.
 *
 *   wc-init create [options]          build a sandbox and stay as its shim
 *   wc-init exec --target PID [...] -- ARGV...
 *                                     run ARGV inside an existing sandbox
 *
 * `create` forks the sandbox's PID 1 into new pid, mount, uts, ipc (and net)
 * namespaces; PID 1 joins the sandbox cgroup, builds an overlay root (read-only
 * lower, size-capped tmpfs upper), binds what it was given read-only, mounts its
 * own /proc and a minimal /dev, pivots into the root and then only reaps zombies.
 * The shim that forked it reports "ready <pid>" (or "error <stage>: <reason>")
 * on --ready-fd and waits for PID 1, so the service can watch one child.
 *
 * `exec` joins the namespaces of an existing PID 1 (like `runc exec`); its
 * child joins the execution's own cgroup and the sandbox's cgroup namespace,
 * drops to the sandbox's uid with every capability gone, no_new_privs and a
 * seccomp filter, takes its environment from --env-fd and executes ARGV. The
 * shim reports "pid N", then "exit CODE ..." or "signal SIG ..." with rusage
 * on --status-fd.
 *
 * Nothing the caller of the service chose reaches this program as environment:
 * the service starts it with a fixed minimal one, and the caller's variables
 * arrive as data (a memfd of NUL-separated NAME=VALUE) that only the exec
 * child reads, after the privilege drop. Nothing printed here names a host
 * pid or a host path; the sandbox's PID 1 blanks its own command line.
 *
 * Everything here runs in a freshly exec'd process, so it is free to use any
 * libc call; nothing here runs inside the Python service.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 64

/* `wc-init --trace-fd N ...`: each step's duration on fd N, for the benchmark's
 * breakdown. Only the service passes it (never the sandbox's caller), and the
 * lines name steps, not pids. */
static int trace_fd = -1;
static struct timespec trace_mark;

static void trace(const char *step)
{
    if (trace_fd < 0)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long us = (now.tv_sec - trace_mark.tv_sec) * 1000000L + (now.tv_nsec - trace_mark.tv_nsec) / 1000;
    dprintf(trace_fd, "wc-init trace %s %ld us\n", step, us);
    trace_mark = now;
}

/* The command line's bytes, so PID 1 can blank them: /proc/1/cmdline is readable
 * inside the sandbox and would show the host's state dir and cgroup paths. */
static char *args_start;
static size_t args_len;

static void blank_command_line(void)
{
    if (!args_start || args_len < 8)
        return;
    memset(args_start, 0, args_len);
    memcpy(args_start, "wc-init", 7);
}

/* Sandbox processes are the global OOM killer's first choice, never the service;
 * written while still privileged, so they cannot lower it again. */
static void prefer_for_oom_kill(void)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "500", 3) < 0) {
            /* best effort: an older kernel without the file changes nothing else */
        }
        close(fd);
    }
}

static void die(int fd, const char *stage, int err)
{
    if (fd >= 0)
        dprintf(fd, "error %s: %s\n", stage, strerror(err));
    else
        fprintf(stderr, "wc-init: %s: %s\n", stage, strerror(err));
    _exit(125);
}

static void write_all(int fd, const char *text)
{
    size_t left = strlen(text);
    while (left > 0) {
        ssize_t n = write(fd, text, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        left -= (size_t)n;
    }
}

/* Parent death: if the service dies, its shims die, and PID 1 dies with its shim,
 * which takes every process of the pid namespace with it. A child in a new pid
 * namespace sees its parent (outside it) as pid 0. */
static void die_with_parent(pid_t expected_parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != expected_parent)
        _exit(125);
}

static void join_cgroups(int *fds, int count, int report_fd)
{
    for (int i = 0; i < count; i++) {
        /* "0" means the writing process, interpreted in the writer's pid namespace. */
        if (write(fds[i], "0", 1) != 1)
            die(report_fd, "join cgroup", errno);
        close(fds[i]);
    }
}

/* clone3(CLONE_INTO_CGROUP): the child is born in a cgroup2 directory instead of being
 * moved there. A move takes the kernel's cgroup_threadgroup_rwsem for writing, which
 * waits out an RCU grace period whenever no move happened lately: the tail of every
 * sandbox start and execution. Kernels before 5.7 answer ENOSYS or E2BIG: fork, then
 * join through cgroup.procs. */
#define WC_CLONE_INTO_CGROUP 0x200000000ULL
struct wc_clone_args {
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

struct into_cgroup {
    int dir_fd;   /* the cgroup2 directory, or -1 */
    int procs_fd; /* its cgroup.procs, for the fallback */
    int joined;   /* the child was born there */
};

static void open_into(const char *dir, struct into_cgroup *into, int report_fd)
{
    char path[PATH_MAX];
    into->dir_fd = into->procs_fd = -1;
    into->joined = 0;
    if (!dir)
        return;
    into->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    into->procs_fd = open(path, O_WRONLY | O_CLOEXEC);
    if (into->dir_fd < 0 || into->procs_fd < 0)
        die(report_fd, "open cgroup", errno);
}

static pid_t fork_into(struct into_cgroup *into)
{
    if (into->dir_fd >= 0) {
        struct wc_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = WC_CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = (unsigned long long)into->dir_fd;
        long pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid >= 0) {
            into->joined = 1;
            return (pid_t)pid;
        }
        if (errno != ENOSYS && errno != E2BIG && errno != EINVAL)
            return -1;
    }
    return fork();
}

/* In the child: join through cgroup.procs unless it was born in the cgroup. */
static void finish_into(struct into_cgroup *into, int report_fd)
{
    if (into->procs_fd >= 0 && !into->joined && write(into->procs_fd, "0", 1) != 1)
        die(report_fd, "join cgroup", errno);
    if (into->procs_fd >= 0)
        close(into->procs_fd);
    if (into->dir_fd >= 0)
        close(into->dir_fd);
}

static void close_into(struct into_cgroup *into)
{
    if (into->procs_fd >= 0)
        close(into->procs_fd);
    if (into->dir_fd >= 0)
        close(into->dir_fd);
}

static int open_cgroups(char **paths, int count, int *fds)
{
    for (int i = 0; i < count; i++) {
        fds[i] = open(paths[i], O_WRONLY | O_CLOEXEC);
        if (fds[i] < 0)
            return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- create --- */

struct create_opts {
    const char *stage;   /* empty host directory; each sandbox mounts its tmpfs here, privately */
    const char *lower;   /* overlay lowerdir */
    const char *hostname;
    unsigned long long storage_bytes;
    unsigned long long shm_bytes;
    char *binds[MAX_ITEMS]; /* "SRC:DST" read-only */
    int nbinds;
    char *devs[MAX_ITEMS];  /* HOST[:SANDBOX] character device nodes, SANDBOX in /dev */
    int ndevs;
    char *cgroups[MAX_ITEMS];
    int ncgroups;
    const char *cgroup_into; /* cgroup2 directory PID 1 is born in */
    char *writable[MAX_ITEMS]; /* directories inside the root owned by uid:gid */
    int nwritable;
    uid_t uid;
    gid_t gid;
    int isolate_net;
    int ready_fd;
};

static void mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, mode);
            *p = '/';
        }
    }
    mkdir(buf, mode);
}

/* Bind SRC onto ROOT/DST, then remount it with REMOUNT_FLAGS (MS_RDONLY, MS_NODEV...);
 * the target is made to match SRC's type. */
static void bind_into(const char *root, const char *src, const char *dst, int report_fd, unsigned long remount_flags)
{
    char target[PATH_MAX];
    struct stat st;
    snprintf(target, sizeof target, "%s%s", root, dst);
    /* Errors name the step, never the path: they travel to the sandbox's caller. */
    if (stat(src, &st) < 0)
        die(report_fd, "bind source", errno);
    if (S_ISDIR(st.st_mode)) {
        mkdir_p(target, 0755);
    } else {
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", target);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            mkdir_p(parent, 0755);
        }
        int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0)
            close(fd);
    }
    if (mount(src, target, NULL, MS_BIND | MS_REC, NULL) < 0)
        die(report_fd, "bind mount", errno);
    if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | remount_flags, NULL) < 0)
        die(report_fd, "remount bind", errno);
}

/* --dev HOST[:SANDBOX]: a character device bound at SANDBOX (default: the same path), which
 * must be a plain name directly in /dev. Anything else (a directory, a regular file, a block
 * device, a path out of /dev) is refused: only device nodes the runtime chose go in. */
static void bind_device(const char *root, char *spec, int report_fd)
{
    struct stat st;
    char *sep = strchr(spec, ':');
    const char *dst = spec;
    if (sep) {
        *sep = '\0';
        dst = sep + 1;
    }
    if (strncmp(dst, "/dev/", 5) != 0 || !dst[5] || strchr(dst + 5, '/') || !strcmp(dst + 5, "..") ||
        !strcmp(dst + 5, "."))
        die(report_fd, "device target", EINVAL);
    if (stat(spec, &st) < 0)
        die(report_fd, "device node", errno);
    if (!S_ISCHR(st.st_mode))
        die(report_fd, "device node is not a character device", EINVAL);
    bind_into(root, spec, dst, report_fd, MS_NOSUID | MS_NOEXEC);
}

static void loopback_up(int report_fd)
{
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    if (sock < 0)
        die(report_fd, "loopback socket", errno);
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
        die(report_fd, "loopback flags", errno);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)
        die(report_fd, "loopback up", errno);
    close(sock);
}

/* Past the kernel's last capability PR_CAPBSET_DROP answers EINVAL: stop there. */
static void drop_bounding_set(void)
{
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno == EINVAL)
            break;
}

static void drop_all_capabilities(void)
{
    drop_bounding_set();
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    syscall(SYS_capset, &header, data);
}

/* PID 1 of the sandbox: reap whatever is reparented to us until we are killed. */
static void reap_forever(void)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        /* SIGCHLD stays pending while blocked, so no exit between the two calls is missed. */
        sigwaitinfo(&chld, NULL);
    }
}

static void become_sandbox_init(struct create_opts *o, int *cgroup_fds, struct into_cgroup *into, int report_fd)
{
    char path[PATH_MAX], root[PATH_MAX], options[PATH_MAX * 2 + 64];

    trace("create: fork");
    finish_into(into, report_fd);
    join_cgroups(cgroup_fds, o->ncgroups, report_fd);
    /* Its own cgroup namespace, rooted where it now is: /proc/self/cgroup inside
     * shows no host cgroup path. Execs join it after joining their own cgroup. */
    if (unshare(CLONE_NEWCGROUP) < 0)
        die(report_fd, "cgroup namespace", errno);
    prefer_for_oom_kill();
    trace("create: join cgroups");
    if (o->isolate_net)
        loopback_up(report_fd);
    trace("create: loopback");

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        die(report_fd, "make mounts private", errno);
    snprintf(options, sizeof options, "size=%llu,mode=0755", o->storage_bytes);
    if (mount("wc-storage", o->stage, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0)
        die(report_fd, "storage tmpfs", errno);
    snprintf(path, sizeof path, "%s/upper", o->stage);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/work", o->stage);
    mkdir(path, 0755);
    snprintf(root, sizeof root, "%s/root", o->stage);
    mkdir(root, 0755);
    snprintf(options, sizeof options, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", o->lower, o->stage,
             o->stage);
    if (mount("wc-root", root, "overlay", MS_NOSUID, options) < 0)
        die(report_fd, "overlay root", errno);
    trace("create: tmpfs + overlay");

    for (int i = 0; i < o->nbinds; i++) {
        char *sep = strchr(o->binds[i], ':');
        if (!sep)
            die(report_fd, "bind spec", EINVAL);
        *sep = '\0';
        bind_into(root, o->binds[i], sep + 1, report_fd, MS_RDONLY | MS_NOSUID | MS_NODEV);
    }

    trace("create: binds");
    /* /dev: a small tmpfs holding only the nodes we were given, bound from the host. */
    snprintf(path, sizeof path, "%s/dev", root);
    mkdir(path, 0755);
    if (mount("wc-dev", path, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755") < 0)
        die(report_fd, "dev tmpfs", errno);
    for (int i = 0; i < o->ndevs; i++)
        bind_device(root, o->devs[i], report_fd);
    static const char *links[][2] = {{"/proc/self/fd", "fd"},
                                     {"/proc/self/fd/0", "stdin"},
                                     {"/proc/self/fd/1", "stdout"},
                                     {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/dev/%s", root, links[i][1]);
        symlink(links[i][0], path);
    }
    snprintf(path, sizeof path, "%s/dev/shm", root);
    mkdir(path, 01777);
    snprintf(options, sizeof options, "size=%llu,mode=1777", o->shm_bytes);
    /* noexec: nothing needs to execute a file from shared memory; JITs map
     * anonymous memory executable, which this does not touch. */
    if (mount("wc-shm", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) < 0)
        die(report_fd, "dev/shm tmpfs", errno);
    snprintf(path, sizeof path, "%s/dev", root);
    if (mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755") < 0)
        die(report_fd, "dev read-only", errno);

    trace("create: dev");
    /* Our own /proc: the new pid namespace shows only the sandbox's processes. */
    snprintf(path, sizeof path, "%s/proc", root);
    mkdir(path, 0555);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die(report_fd, "proc", errno);
    static const char *proc_readonly[] = {"sys", "sysrq-trigger", "irq", "bus", "fs"};
    for (size_t i = 0; i < sizeof proc_readonly / sizeof *proc_readonly; i++) {
        snprintf(path, sizeof path, "%s/proc/%s", root, proc_readonly[i]);
        if (access(path, F_OK) == 0 && mount(path, path, NULL, MS_BIND | MS_REC, NULL) == 0)
            mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }

    for (int i = 0; i < o->nwritable; i++) {
        snprintf(path, sizeof path, "%s%s", root, o->writable[i]);
        mkdir_p(path, 0755);
        if (chown(path, o->uid, o->gid) < 0)
            die(report_fd, "chown writable dir", errno);
    }

    trace("create: proc + writable dirs");
    if (o->hostname && sethostname(o->hostname, strlen(o->hostname)) < 0)
        die(report_fd, "sethostname", errno);

    /* pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
     * nothing of the host's tree reachable. */
    if (chdir(root) < 0)
        die(report_fd, "chdir root", errno);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        die(report_fd, "pivot_root", errno);
    if (umount2(".", MNT_DETACH) < 0)
        die(report_fd, "detach old root", errno);
    if (chdir("/") < 0)
        die(report_fd, "chdir /", errno);

    trace("create: pivot_root");
    if (trace_fd >= 0) {
        close(trace_fd);
        trace_fd = -1;
    }
    blank_command_line();
    write_all(report_fd, "ok\n");
    close(report_fd);

    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd >= 0) {
        dup2(null_fd, 0);
        dup2(null_fd, 1);
        dup2(null_fd, 2);
    }
    drop_all_capabilities();
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    reap_forever();
}

static int cmd_create(int argc, char **argv)
{
    struct create_opts o;
    memset(&o, 0, sizeof o);
    o.ready_fd = -1;
    o.storage_bytes = 512ULL << 20;
    o.shm_bytes = 64ULL << 20;
    o.uid = 65534;
    o.gid = 65534;
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(flag, "--isolate-net")) {
            o.isolate_net = 1;
            continue;
        }
        if (!value) {
            fprintf(stderr, "wc-init create: %s needs a value\n", flag);
            return 2;
        }
        i++;
        if (!strcmp(flag, "--stage"))
            o.stage = value;
        else if (!strcmp(flag, "--lower"))
            o.lower = value;
        else if (!strcmp(flag, "--hostname"))
            o.hostname = value;
        else if (!strcmp(flag, "--storage-bytes"))
            o.storage_bytes = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--shm-bytes"))
            o.shm_bytes = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--uid"))
            o.uid = (uid_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--gid"))
            o.gid = (gid_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--ready-fd"))
            o.ready_fd = atoi(value);
        else if (!strcmp(flag, "--bind") && o.nbinds < MAX_ITEMS)
            o.binds[o.nbinds++] = (char *)value;
        else if (!strcmp(flag, "--dev") && o.ndevs < MAX_ITEMS)
            o.devs[o.ndevs++] = (char *)value;
        else if (!strcmp(flag, "--cgroup-procs") && o.ncgroups < MAX_ITEMS)
            o.cgroups[o.ncgroups++] = (char *)value;
        else if (!strcmp(flag, "--cgroup-into"))
            o.cgroup_into = value;
        else if (!strcmp(flag, "--writable") && o.nwritable < MAX_ITEMS)
            o.writable[o.nwritable++] = (char *)value;
        else {
            fprintf(stderr, "wc-init create: unknown or repeated too often: %s\n", flag);
            return 2;
        }
    }
    if (!o.stage || !o.lower || o.ready_fd < 0) {
        fprintf(stderr, "wc-init create: --stage, --lower and --ready-fd are required\n");
        return 2;
    }
    die_with_parent(getppid());
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    int cgroup_fds[MAX_ITEMS];
    if (open_cgroups(o.cgroups, o.ncgroups, cgroup_fds) < 0)
        die(o.ready_fd, "open cgroup.procs", errno);
    struct into_cgroup into;
    open_into(o.cgroup_into, &into, o.ready_fd);
    int flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID;
    if (o.isolate_net)
        flags |= CLONE_NEWNET;
    trace("create: open cgroups");
    if (unshare(flags) < 0)
        die(o.ready_fd, "unshare", errno);
    trace("create: unshare");

    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0)
        die(o.ready_fd, "pipe", errno);
    pid_t child = fork_into(&into);
    if (child < 0)
        die(o.ready_fd, "fork", errno);
    if (child == 0) {
        close(report[0]);
        close(o.ready_fd);
        die_with_parent(0);
        become_sandbox_init(&o, cgroup_fds, &into, report[1]);
        _exit(0);
    }
    close(report[1]);
    close_into(&into);
    for (int i = 0; i < o.ncgroups; i++)
        close(cgroup_fds[i]);

    char line[512];
    ssize_t n;
    do {
        n = read(report[0], line, sizeof line - 1);
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    line[n > 0 ? n : 0] = '\0';
    if (n > 0 && !strcmp(line, "ok\n")) {
        char ready[64];
        snprintf(ready, sizeof ready, "ready %d\n", (int)child);
        write_all(o.ready_fd, ready);
    } else {
        write_all(o.ready_fd, n > 0 ? line : "error init: exited during set-up\n");
    }
    close(o.ready_fd);

    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* ------------------------------------------------------------------ exec --- */

#if defined(__x86_64__)
#define WC_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define WC_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp filter: unsupported architecture"
#endif

#define DENY(name) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_##name, 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM)

/* Syscalls that change what the sandbox can see or reach, talk to the kernel's
 * privileged interfaces, or escape via new namespaces: they fail with EPERM. */
static int install_seccomp(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, WC_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
        /* x32 syscall numbers alias the 64-bit ones with bit 30 set. */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
#endif
        /* clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc
         * fall back to clone, whose flags are checked below. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
                 CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                     CLONE_NEWCGROUP,
                 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* socket(): only the families the network namespace covers. AF_NETLINK only
         * for NETLINK_ROUTE (the netns's own links and routes); uevents, audit,
         * vsock, AF_ALG, packet sockets and the rest fail with EAFNOSUPPORT. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 9),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 6, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 5, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NETLINK_ROUTE, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socketpair, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        DENY(mount),
        DENY(umount2),
        DENY(pivot_root),
        DENY(unshare),
        DENY(setns),
        DENY(ptrace),
        DENY(process_vm_readv),
        DENY(process_vm_writev),
        DENY(kexec_load),
        DENY(kexec_file_load),
        DENY(init_module),
        DENY(finit_module),
        DENY(delete_module),
        DENY(bpf),
        DENY(perf_event_open),
        DENY(keyctl),
        DENY(add_key),
        DENY(request_key),
        DENY(open_by_handle_at),
        DENY(name_to_handle_at),
        DENY(swapon),
        DENY(swapoff),
        DENY(reboot),
        DENY(acct),
        DENY(quotactl),
        DENY(syslog),
        DENY(userfaultfd),
        DENY(io_uring_setup),
        DENY(io_uring_enter),
        DENY(io_uring_register),
        DENY(open_tree),
        DENY(move_mount),
        DENY(fsopen),
        DENY(fsconfig),
        DENY(fsmount),
        DENY(fspick),
        DENY(mount_setattr),
        DENY(vhangup),
#if defined(__x86_64__)
        DENY(iopl),
        DENY(ioperm),
        DENY(uselib),
#endif
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof *filter), filter};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static const char *NAMESPACES[] = {"ipc", "uts", "net", "pid", "mnt"};
#define NNAMESPACES 5

/* The caller's environment: NUL-separated NAME=VALUE entries in ENV_FD (a memfd the
 * service filled), read by the exec child only, after it dropped every privilege. */
static char **read_environment(int env_fd, int report_fd)
{
    struct stat st;
    if (fstat(env_fd, &st) < 0)
        die(report_fd, "environment", errno);
    size_t size = (size_t)st.st_size;
    char *block = malloc(size + 1);
    if (!block)
        die(report_fd, "environment", ENOMEM);
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread(env_fd, block + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(report_fd, "environment", n < 0 ? errno : EIO);
        done += (size_t)n;
    }
    block[size] = '\0';
    close(env_fd);
    size_t count = 0;
    for (size_t i = 0; i < size; i++)
        count += block[i] == '\0';
    char **env = calloc(count + 2, sizeof *env);
    if (!env)
        die(report_fd, "environment", ENOMEM);
    size_t k = 0;
    for (char *p = block; p < block + size; p += strlen(p) + 1)
        if (*p && strchr(p, '='))
            env[k++] = p;
    env[k] = NULL;
    return env;
}

static int cmd_exec(int argc, char **argv)
{
    pid_t target = 0;
    uid_t uid = 65534;
    gid_t gid = 65534;
    rlim_t nofile = 1024;
    const char *workdir = "/";
    int status_fd = -1, env_fd = -1, i;
    const char *cgroup_into = NULL;
    char *cgroups[MAX_ITEMS];
    int ncgroups = 0;
    for (i = 0; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--")) {
            i++;
            break;
        }
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) {
            fprintf(stderr, "wc-init exec: %s needs a value\n", flag);
            return 2;
        }
        i++;
        if (!strcmp(flag, "--target"))
            target = (pid_t)atoi(value);
        else if (!strcmp(flag, "--uid"))
            uid = (uid_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--gid"))
            gid = (gid_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--nofile"))
            nofile = (rlim_t)strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--workdir"))
            workdir = value;
        else if (!strcmp(flag, "--status-fd"))
            status_fd = atoi(value);
        else if (!strcmp(flag, "--env-fd"))
            env_fd = atoi(value);
        else if (!strcmp(flag, "--cgroup-into"))
            cgroup_into = value;
        else if (!strcmp(flag, "--cgroup-procs") && ncgroups < MAX_ITEMS)
            cgroups[ncgroups++] = (char *)value;
        else {
            fprintf(stderr, "wc-init exec: unknown option %s\n", flag);
            return 2;
        }
    }
    char **command = argv + i;
    if (target <= 0 || status_fd < 0 || env_fd < 0 || i >= argc) {
        fprintf(stderr, "wc-init exec: --target, --status-fd, --env-fd and a command after -- are required\n");
        return 2;
    }
    die_with_parent(getppid());
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    int cgroup_fds[MAX_ITEMS];
    if (open_cgroups(cgroups, ncgroups, cgroup_fds) < 0)
        die(status_fd, "open cgroup.procs", errno);
    struct into_cgroup into;
    open_into(cgroup_into, &into, status_fd);
    int ns_fds[NNAMESPACES];
    char path[64];
    for (int k = 0; k < NNAMESPACES; k++) {
        snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)target, NAMESPACES[k]);
        ns_fds[k] = open(path, O_RDONLY | O_CLOEXEC);
        if (ns_fds[k] < 0)
            die(status_fd, "open sandbox namespace", errno);
    }
    snprintf(path, sizeof path, "/proc/%d/ns/cgroup", (int)target);
    int cgroupns_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (cgroupns_fd < 0)
        die(status_fd, "open sandbox namespace", errno);
    trace("exec: open fds");
    for (int k = 0; k < NNAMESPACES; k++) {
        if (setns(ns_fds[k], 0) < 0)
            die(status_fd, "join sandbox namespace", errno);
        close(ns_fds[k]);
        trace(NAMESPACES[k]);
    }

    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0)
        die(status_fd, "pipe", errno);
    pid_t child = fork_into(&into);
    if (child < 0)
        die(status_fd, "fork", errno);
    if (child == 0) {
        close(errpipe[0]);
        close(status_fd);
        die_with_parent(0);
        trace("exec: fork");
        finish_into(&into, errpipe[1]);
        join_cgroups(cgroup_fds, ncgroups, errpipe[1]);
        /* After the cgroup move: from inside the namespace, a move from the service's
         * cgroup (outside its root) would be refused. */
        if (setns(cgroupns_fd, CLONE_NEWCGROUP) < 0)
            die(errpipe[1], "join sandbox namespace", errno);
        close(cgroupns_fd);
        prefer_for_oom_kill();
        trace("exec: join cgroups");
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        /* Its own process group, so a timeout can kill everything it started. */
        setsid();
        struct rlimit no_core = {0, 0}, files = {nofile, nofile};
        setrlimit(RLIMIT_CORE, &no_core);
        if (setrlimit(RLIMIT_NOFILE, &files) < 0)
            die(errpipe[1], "limit open files", errno);
        if (chdir(workdir) < 0)
            die(errpipe[1], "chdir workdir", errno);
        trace("exec: setsid, rlimits, chdir");
        drop_bounding_set();
        trace("exec: bounding set");
        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
            die(errpipe[1], "drop to unprivileged user", errno);
        trace("exec: uid/gid");
        drop_all_capabilities();
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            die(errpipe[1], "no_new_privs", errno);
        trace("exec: caps + no_new_privs");
        if (install_seccomp() < 0)
            die(errpipe[1], "seccomp", errno);
        /* The caller's variables, only now: nothing privileged ever read them. PATH
         * among them is what execvp searches. */
        environ = read_environment(env_fd, errpipe[1]);
        trace("exec: seccomp filter");
        if (trace_fd >= 0)
            close(trace_fd);
        execvp(command[0], command);
        dprintf(errpipe[1], "error exec %s: %s\n", command[0], strerror(errno));
        _exit(127);
    }
    close(errpipe[1]);
    close(env_fd);
    close(cgroupns_fd);
    close_into(&into);
    for (int k = 0; k < ncgroups; k++)
        close(cgroup_fds[k]);

    char line[PATH_MAX + 128];
    snprintf(line, sizeof line, "pid %d\n", (int)child);
    write_all(status_fd, line);
    ssize_t n;
    do {
        n = read(errpipe[0], line, sizeof line - 1);
    } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n > 0) {
        line[n] = '\0';
        write_all(status_fd, line);
    }

    int status = 0;
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    while (wait4(child, &status, 0, &usage) < 0 && errno == EINTR)
        ;
    double user_s = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6;
    double sys_s = usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
    if (WIFSIGNALED(status))
        snprintf(line, sizeof line, "signal %d %.6f %.6f %ld\n", WTERMSIG(status), user_s, sys_s, usage.ru_maxrss);
    else
        snprintf(line, sizeof line, "exit %d %.6f %.6f %ld\n", WEXITSTATUS(status), user_s, sys_s, usage.ru_maxrss);
    write_all(status_fd, line);
    return 0;
}

int main(int argc, char **argv)
{
    clock_gettime(CLOCK_MONOTONIC, &trace_mark);
    if (argc > 0) {
        args_start = argv[0];
        args_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) + 1 - argv[0]);
    }
    if (argc >= 3 && !strcmp(argv[1], "--trace-fd")) {
        trace_fd = atoi(argv[2]);
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if (argc >= 2 && !strcmp(argv[1], "create"))
        return cmd_create(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "exec"))
        return cmd_exec(argc - 2, argv + 2);
    fprintf(stderr, "usage: wc-init [--trace-fd N] create --stage DIR --lower DIR --ready-fd N [options]\n"
                    "       wc-init [--trace-fd N] exec --target PID --status-fd N --env-fd N [options] -- ARGV...\n");
    return 2;
}
