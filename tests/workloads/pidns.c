/*
 * pidns: a tree rooted at the init of its own PID namespace.
 *
 * The process the harness starts ("outer") calls unshare(CLONE_NEWPID) and forks the init
 * (pid 1 inside). The init writes its PID as the harness sees it to $VZCPT_CTL/root, so the
 * harness dumps the tree from the init: the outer process is NOT part of the dump, it only
 * waits for the init and, when the init ends (the dump kills it), writes how it ended to
 * $VZCPT_CTL/outer-done and exits.
 *
 * Inside: the init calls setsid() (session and group 1), forks child 2 (group 1) and child 3,
 * which calls setpgid(0, 0) (group 3) and forks grandchild 4 (group 3, parent 3).
 *
 * /proc is the one of the harness's PID namespace (the level just above ours): no mount
 * namespace is made (not in the engine's scope). Through it each process sees its NSpid,
 * NSpgid, NSsid lines with two levels: the outer one, and the nested one.
 *
 * A check verifies, in every process: getpid(), getppid(), getpgid(0), getsid(0) against the
 * nested values recorded at setup (and the fixed ones a fresh namespace gives: 1, 2, 3, 4);
 * /proc/self/status NSpid/NSpgid/NSsid have exactly two levels, the nested one equal to those
 * values and the outer one equal to what readlink("/proc/self") gives; the parent seen from
 * the outer level (PPid:) has the parent's nested PID as last NSpid field (so parent links
 * are right at both levels); a per-process counter keeps increasing. The init also checks
 * getppid() == 0 (its parent is outside the namespace), that every child is alive (waitpid
 * WNOHANG), that /proc lists exactly four processes in its PID namespace (/proc/<pid>/ns/pid
 * equal to its own), with nested PIDs 1, 2, 3, 4, and the outer process: while the init still has its original parent (never
 * restored, or a --leave-running dump), the outer process must still be its parent, sleeping
 * in wait4, with outer-done absent; after a restore with the same /proc (kill modes), the outer
 * process must have seen the original init killed by SIGKILL (outer-done), which shows it was
 * neither frozen nor dumped nor killed along with the tree. (In a copy restored in a fresh
 * PID namespace, a new /proc, the outer process was killed by the harness: not checked.)
 * Children answer in child-<n>; the init aggregates and writes result.
 */
#include "wl.h"
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

#define NCHILD 3 /* nested pids 2, 3, 4 */

static unsigned long long counter, at_last_check;

/* Reads "Name:\tv1\tv2..." of /proc/<who>/status into vals; returns the count or -1. */
static int status_field(const char *who, const char *name, long *vals, int max)
{
    char path[128], line[512];
    snprintf(path, sizeof(path), "/proc/%s/status", who);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t nl = strlen(name);
    int n = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, name, nl) || line[nl] != ':')
            continue;
        char *p = line + nl + 1, *end;
        n = 0;
        for (;;) {
            long v = strtol(p, &end, 10);
            if (end == p || n == max)
                break;
            vals[n++] = v;
            p = end;
        }
        break;
    }
    fclose(f);
    return n;
}

/* The PID of this process in the PID namespace of /proc (the outer level). */
static long proc_self_pid(void)
{
    char buf[64];
    ssize_t n = readlink("/proc/self", buf, sizeof(buf) - 1);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

/* Checks a two-level NSxxx line: nested value == want, outer value == outer (if >= 0). */
static int check_ns_line(char *why, size_t n, const char *name, long want, long outer)
{
    long v[8];
    int c = status_field("self", name, v, 8);
    if (c != 2) {
        snprintf(why, n, "/proc/self/status %s has %d levels, expected 2", name, c);
        return 1;
    }
    if (v[1] != want) {
        snprintf(why, n, "/proc/self/status %s nested value %ld, expected %ld", name, v[1], want);
        return 1;
    }
    if (outer >= 0 && v[0] != outer) {
        snprintf(why, n, "/proc/self/status %s outer value %ld, but readlink(/proc/self) says %ld",
                 name, v[0], outer);
        return 1;
    }
    return 0;
}

/* Checks common to every process of the namespace; "" when all is well. */
static void check_self(char *why, size_t n, int pid, int ppid, int pgid, int sid)
{
    why[0] = 0;
    long outer = proc_self_pid();
    long v[8];
    if (getpid() != pid)
        snprintf(why, n, "getpid() = %d, expected %d", getpid(), pid);
    else if (getppid() != ppid)
        snprintf(why, n, "getppid() = %d, expected %d", getppid(), ppid);
    else if (getpgid(0) != pgid)
        snprintf(why, n, "getpgid(0) = %d, expected %d", getpgid(0), pgid);
    else if (getsid(0) != sid)
        snprintf(why, n, "getsid(0) = %d, expected %d", getsid(0), sid);
    else if (outer <= 0)
        snprintf(why, n, "readlink(/proc/self) failed: %s", strerror(errno));
    else if (check_ns_line(why, n, "NSpid", pid, outer) ||
             check_ns_line(why, n, "NSpgid", pgid, -1) ||
             check_ns_line(why, n, "NSsid", sid, -1))
        ;
    else if (status_field("self", "PPid", v, 1) != 1)
        snprintf(why, n, "no PPid line in /proc/self/status");
    else if (ppid != 0) {
        /* The parent, seen from the outer level, must be our nested parent. */
        char who[32];
        long pv[8];
        snprintf(who, sizeof(who), "%ld", v[0]);
        int c = status_field(who, "NSpid", pv, 8);
        if (c != 2 || pv[1] != ppid)
            snprintf(why, n, "parent at outer PID %ld has %d NSpid levels, nested %ld; expected 2 "
                     "levels, nested %d", v[0], c, c > 1 ? pv[1] : -1L, ppid);
    }
    if (!why[0] && counter <= at_last_check)
        snprintf(why, n, "counter %llu did not advance past %llu", counter, at_last_check);
    at_last_check = counter;
}

static void answer_as(const char *name, const char *text)
{
    char buf[4200];
    snprintf(buf, sizeof(buf), "%ld %s\n", wl_answered, text);
    wl_write_file(name, buf);
}

/* A child or grandchild: answers checks in child-<pid>. Never returns. */
static void child_loop(int pid, int ppid, int pgid, int sid)
{
    char name[32], why[1024];
    snprintf(name, sizeof(name), "child-%d", pid);
    for (;;) {
        for (int i = 0; i < 1000; i++)
            counter++;
        if (wl_poll()) {
            check_self(why, sizeof(why), pid, ppid, pgid, sid);
            if (why[0]) {
                char msg[1100];
                snprintf(msg, sizeof(msg), "FAIL: pid %d: %s", pid, why);
                answer_as(name, msg);
            } else {
                answer_as(name, "PASS");
            }
        }
        wl_nap();
    }
}

/* Setup state of the init. */
static long setup_outer_pid;  /* the init's PID seen by the harness, at setup */
static long outer_parent;     /* the outer process's PID */
static dev_t setup_proc_dev;  /* st_dev of /proc at setup: a new /proc = a copy elsewhere */
static const int child_pid[NCHILD] = {2, 3, 4};

/* The init's checks of the outer process. */
static void check_outer(char *why, size_t n)
{
    char path[4200], text[256] = "";
    long v[8];
    struct stat st;
    if (stat("/proc", &st)) {
        snprintf(why, n, "stat /proc: %s", strerror(errno));
        return;
    }
    if (status_field("self", "PPid", v, 1) != 1) {
        snprintf(why, n, "no PPid line in /proc/self/status");
        return;
    }
    long ppid_outer = v[0];
    char done[4200];
    snprintf(done, sizeof(done), "%s/outer-done", wl_ctl);
    if (ppid_outer == outer_parent && st.st_dev == setup_proc_dev) {
        /* Never restored (or dumped with --leave-running): the outer process still waits. */
        char who[32], state[64] = "";
        snprintf(who, sizeof(who), "%ld", outer_parent);
        snprintf(path, sizeof(path), "/proc/%ld/stat", outer_parent);
        FILE *f = fopen(path, "re");
        if (f) {
            if (!fgets(text, sizeof(text), f))
                text[0] = 0;
            fclose(f);
        }
        char *rp = strrchr(text, ')');
        if (rp)
            snprintf(state, sizeof(state), "%.1s", rp + 2);
        if (strcmp(state, "S"))
            snprintf(why, n, "outer process %ld (our parent) is in state '%s', expected S "
                     "(waiting for us)", outer_parent, state);
        else if (access(done, F_OK) == 0)
            snprintf(why, n, "outer-done exists but the outer process %ld is still our parent",
                     outer_parent);
        else if (status_field(who, "NSpid", v, 8) != 1)
            snprintf(why, n, "outer process %ld: NSpid has not 1 level", outer_parent);
        return;
    }
    if (ppid_outer == outer_parent) {
        snprintf(why, n, "/proc changed (restored elsewhere) but our parent is still %ld",
                 outer_parent);
        return;
    }
    if (st.st_dev != setup_proc_dev)
        return; /* a copy in a fresh PID namespace: the outer process was killed by the harness */
    /* Restored in the same PID namespace: the outer process saw the original init killed. */
    char expect[128];
    snprintf(expect, sizeof(expect), "init %ld killed by signal %d\n", setup_outer_pid, SIGKILL);
    for (int i = 0; i < 200; i++) {
        int fd = open(done, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = read(fd, text, sizeof(text) - 1);
            close(fd);
            text[r > 0 ? r : 0] = 0;
            if (strcmp(text, expect))
                snprintf(why, n, "outer-done says '%s', expected '%s'", text, expect);
            return;
        }
        wl_nap();
    }
    snprintf(why, n, "restored (parent now %ld, was %ld) but the outer process wrote no "
             "outer-done: was it dumped or killed with the tree?", ppid_outer, outer_parent);
}

/* Every process of /proc in our PID namespace: their nested PIDs must be exactly 1..4. */
static void check_members(char *why, size_t n)
{
    char mine[64], link[64], path[300];
    ssize_t l = readlink("/proc/self/ns/pid", mine, sizeof(mine) - 1);
    if (l <= 0) {
        snprintf(why, n, "readlink /proc/self/ns/pid: %s", strerror(errno));
        return;
    }
    mine[l] = 0;
    DIR *d = opendir("/proc");
    if (!d) {
        snprintf(why, n, "opendir /proc: %s", strerror(errno));
        return;
    }
    int seen = 0, count = 0; /* bit p set for nested pid p */
    struct dirent *e;
    while ((e = readdir(d)) && !why[0]) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/ns/pid", pid);
        l = readlink(path, link, sizeof(link) - 1);
        if (l <= 0)
            continue; /* gone meanwhile */
        link[l] = 0;
        if (strcmp(link, mine))
            continue;
        long v[8];
        int c = status_field(e->d_name, "NSpid", v, 8);
        if (c != 2 || v[1] < 1 || v[1] > 1 + NCHILD)
            snprintf(why, n, "an unexpected process in our PID namespace: outer PID %ld, "
                     "%d NSpid levels, nested PID %ld", pid, c, c > 1 ? v[1] : -1L);
        else
            seen |= 1 << v[1];
        count++;
    }
    closedir(d);
    if (!why[0] && (count != 1 + NCHILD || seen != ((1 << (2 + NCHILD)) - 2)))
        snprintf(why, n, "our PID namespace holds %d processes (nested PID mask %#x), expected "
                 "%d (mask %#x)", count, seen, 1 + NCHILD, (1 << (2 + NCHILD)) - 2);
}

static void init_main(void)
{
    char why[2048], msg[4096];
    if (getpid() != 1) {
        fprintf(stderr, "pidns: init has pid %d\n", getpid());
        exit(2);
    }
    setup_outer_pid = proc_self_pid();
    long v[8];
    if (setup_outer_pid <= 0 || status_field("self", "PPid", v, 1) != 1) {
        fprintf(stderr, "pidns: cannot read /proc/self\n");
        exit(2);
    }
    outer_parent = v[0];
    struct stat st;
    if (stat("/proc", &st)) {
        perror("stat /proc");
        exit(2);
    }
    setup_proc_dev = st.st_dev;
    if (setsid() != 1) {
        perror("setsid");
        exit(2);
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC)) {
        perror("pipe2");
        exit(2);
    }
    /* Child 2: group 1. */
    pid_t c = fork();
    if (c < 0) { perror("fork"); exit(2); }
    if (c == 0) {
        close(pfd[0]);
        int me = getpid();
        if (write(pfd[1], &me, sizeof(me)) != sizeof(me)) exit(2);
        close(pfd[1]);
        child_loop(2, 1, 1, 1);
    }
    /* Child 3: group 3, forks grandchild 4 in its group. */
    c = fork();
    if (c < 0) { perror("fork"); exit(2); }
    if (c == 0) {
        close(pfd[0]);
        if (setpgid(0, 0)) { perror("setpgid"); exit(2); }
        int me = getpid();
        if (write(pfd[1], &me, sizeof(me)) != sizeof(me)) exit(2);
        pid_t g = fork();
        if (g < 0) { perror("fork"); exit(2); }
        if (g == 0) {
            me = getpid();
            if (write(pfd[1], &me, sizeof(me)) != sizeof(me)) exit(2);
            close(pfd[1]);
            child_loop(4, 3, 3, 1);
        }
        close(pfd[1]);
        child_loop(3, 1, 3, 1);
    }
    close(pfd[1]);
    int seen[NCHILD], k = 0, got;
    while (k < NCHILD && read(pfd[0], &got, sizeof(got)) == sizeof(got))
        seen[k++] = got;
    close(pfd[0]);
    for (int i = 0; i < NCHILD; i++) {
        int ok = 0;
        for (int j = 0; j < k; j++)
            ok |= seen[j] == child_pid[i];
        if (!ok) {
            fprintf(stderr, "pidns: nested pid %d not created (got %d reports)\n", child_pid[i], k);
            exit(2);
        }
    }
    /* The tree starts here: the harness must dump this process, not the outer one. */
    snprintf(msg, sizeof(msg), "%ld\n", setup_outer_pid);
    wl_write_file("root", msg);
    wl_ready();

    for (;;) {
        for (int i = 0; i < 1000; i++)
            counter++;
        if (!wl_poll()) {
            wl_nap();
            continue;
        }
        long seq = wl_answered;
        why[0] = 0;
        int st2;
        pid_t dead = waitpid(-1, &st2, WNOHANG);
        if (dead > 0)
            snprintf(why, sizeof(why), "child %d ended (status %#x)", dead, st2);
        if (!why[0])
            check_self(why, sizeof(why), 1, 0, 1, 1);
        if (!why[0])
            check_outer(why, sizeof(why));
        if (!why[0])
            check_members(why, sizeof(why));
        /* Collect the children's answers to this check. */
        for (int i = 0; i < NCHILD && !why[0]; i++) {
            char path[4200], text[1024] = "";
            snprintf(path, sizeof(path), "%s/child-%d", wl_ctl, child_pid[i]);
            double t0 = wl_now();
            for (;;) {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                    ssize_t r = read(fd, text, sizeof(text) - 1);
                    close(fd);
                    text[r > 0 ? r : 0] = 0;
                    if (strtol(text, NULL, 10) == seq)
                        break;
                }
                if (wl_now() - t0 > 20) {
                    snprintf(why, sizeof(why), "child %d did not answer check %ld (last: %s)",
                             child_pid[i], seq, text);
                    break;
                }
                wl_nap();
            }
            if (why[0])
                break;
            char *sp = strchr(text, ' ');
            char *nl = strchr(text, '\n');
            if (nl)
                *nl = 0;
            if (!sp || strcmp(sp + 1, "PASS"))
                snprintf(why, sizeof(why), "child %d: %s", child_pid[i], sp ? sp + 1 : text);
        }
        if (why[0])
            wl_fail("%s", why);
        else
            wl_pass();
    }
}

int main(void)
{
    wl_init();
    if (unshare(CLONE_NEWPID)) {
        perror("unshare(CLONE_NEWPID)");
        return 2;
    }
    pid_t init = fork();
    if (init < 0) {
        perror("fork");
        return 2;
    }
    if (init == 0) {
        init_main();
        return 2;
    }
    /* The outer process: only waits for the init, then says how it ended. */
    int st;
    pid_t r;
    do
        r = waitpid(init, &st, 0);
    while (r < 0 && errno == EINTR);
    char text[128];
    if (r < 0)
        snprintf(text, sizeof(text), "waitpid(%d): %s\n", init, strerror(errno));
    else if (WIFSIGNALED(st))
        snprintf(text, sizeof(text), "init %d killed by signal %d\n", init, WTERMSIG(st));
    else
        snprintf(text, sizeof(text), "init %d exited with status %d\n", init, WEXITSTATUS(st));
    wl_write_file("outer-done", text);
    return 0;
}
