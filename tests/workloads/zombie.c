/*
 * zombie: a process with two unreaped children (zombies) and a live child.
 *
 * Checks that zombies are dumped and restored as zombies: the same PID, parent, process group,
 * session, name and wait status, still waitable by their parent; and that a live process whose
 * group is led by a zombie keeps that group, and a zombie that had joined another process's
 * group comes back in that group.
 *
 * Setup (the root is the process the harness started; it stays in the harness's session):
 *  - Z1 "wl-zombie42": forked after Z2, joins Z2's group, then exits with status 42;
 *  - Z2 "wl-zombieTERM": makes its own process group, then is killed by SIGTERM;
 *  - L "wl-live": joins Z2's group (a live member of a group whose leader is a zombie) and
 *    runs the check loop, answering in $VZCPT_CTL/child-1.
 *  The root waits (WNOWAIT) until both zombies have exited, then records from /proc/<pid>/stat
 *  the state, ppid, pgrp, session, comm and exit_code of each child.
 *
 * A check, in the root:
 *  - getpid(), getpgid(0), getsid(0) equal the recorded values (not getppid: the harness's);
 *  - /proc/self/task/<pid>/children lists exactly Z1, Z2 and L;
 *  - for each zombie: /proc/<z>/stat shows state Z, ppid = the root, and the recorded pgrp,
 *    session, comm and exit_code; waitid(P_PID, z, WEXITED|WNOHANG|WNOWAIT) reports it with
 *    si_code CLD_EXITED / si_status 42 (Z1) and CLD_KILLED / SIGTERM (Z2), si_uid = getuid()
 *    (WNOWAIT: it stays a zombie for the next check);
 *  - for L: /proc/<L>/stat shows a running or sleeping state (R, S or D; not stopped),
 *    ppid = the root, the recorded pgrp (= Z2), session and comm;
 *    waitid(WEXITED|WSTOPPED|WNOHANG|WNOWAIT) reports nothing; and L itself answers the
 *    same check: its getpid/getppid/getpgid(0)/getsid(0) equal the values it recorded.
 */
#include "wl.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

struct pstat {
    char state;
    int ppid, pgrp, session, exit_code;
    char comm[64];
};

/* Reads /proc/<pid>/stat; 0 on success. */
static int read_pstat(pid_t pid, struct pstat *st)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *l = strchr(buf, '('), *r = strrchr(buf, ')');
    if (!l || !r) return -1;
    snprintf(st->comm, sizeof(st->comm), "%.*s", (int)(r - l - 1), l + 1);
    /* Fields after the comm: 3 state, 4 ppid, 5 pgrp, 6 session, ..., 52 exit_code. */
    char *save, *tok = strtok_r(r + 1, " \n", &save);
    for (int f = 3; tok; f++, tok = strtok_r(NULL, " \n", &save)) {
        if (f == 3) st->state = tok[0];
        else if (f == 4) st->ppid = atoi(tok);
        else if (f == 5) st->pgrp = atoi(tok);
        else if (f == 6) st->session = atoi(tok);
        else if (f == 52) { st->exit_code = atoi(tok); return 0; }
    }
    return -1;
}

static pid_t root_pid, root_pgid, root_sid;
static pid_t z1, z2, live;
static struct pstat z1_st, z2_st, live_st; /* recorded at setup */

static void __attribute__((noreturn)) live_loop(void)
{
    pid_t me = getpid(), ppid = getppid(), pgid = getpgid(0), sid = getsid(0);
    for (;;) {
        if (wl_poll()) {
            char out[512];
            pid_t p = getpid(), pp = getppid(), pg = getpgid(0), s = getsid(0);
            if (p != me || pp != ppid || pg != pgid || s != sid)
                snprintf(out, sizeof(out),
                         "%ld FAIL: live child: pid %d ppid %d pgid %d sid %d, recorded %d %d %d %d\n",
                         wl_answered, p, pp, pg, s, me, ppid, pgid, sid);
            else
                snprintf(out, sizeof(out), "%ld PASS\n", wl_answered);
            wl_write_file("child-1", out);
        }
        wl_nap();
    }
}

static int check_zombie(const char *name, pid_t z, const struct pstat *rec, int code, int status,
                        char *why, size_t len)
{
    struct pstat st;
    if (read_pstat(z, &st)) {
        snprintf(why, len, "%s %d: cannot read /proc/%d/stat: %s", name, z, z, strerror(errno));
        return 0;
    }
    if (st.state != 'Z' || st.ppid != root_pid || st.pgrp != rec->pgrp ||
        st.session != rec->session || strcmp(st.comm, rec->comm) || st.exit_code != rec->exit_code) {
        snprintf(why, len,
                 "%s %d: /proc stat state %c ppid %d pgrp %d session %d comm '%s' exit_code %#x, "
                 "expected Z %d %d %d '%s' %#x",
                 name, z, st.state, st.ppid, st.pgrp, st.session, st.comm, st.exit_code, root_pid,
                 rec->pgrp, rec->session, rec->comm, rec->exit_code);
        return 0;
    }
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, z, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
        snprintf(why, len, "%s %d: waitid: %s", name, z, strerror(errno));
        return 0;
    }
    if (si.si_pid != z || si.si_signo != SIGCHLD || si.si_code != code || si.si_status != status ||
        si.si_uid != getuid()) {
        snprintf(why, len,
                 "%s %d: waitid WNOWAIT gives si_pid %d si_signo %d si_code %d si_status %d si_uid %d, "
                 "expected %d %d %d %d %d",
                 name, z, si.si_pid, si.si_signo, si.si_code, si.si_status, (int)si.si_uid, z, SIGCHLD,
                 code, status, (int)getuid());
        return 0;
    }
    return 1;
}

static int check(char *why, size_t len)
{
    pid_t p = getpid(), pg = getpgid(0), s = getsid(0);
    if (p != root_pid || pg != root_pgid || s != root_sid) {
        snprintf(why, len, "root: pid %d pgid %d sid %d, recorded %d %d %d", p, pg, s, root_pid,
                 root_pgid, root_sid);
        return 0;
    }
    /* Exactly the three children, zombies included. */
    char path[64], buf[512] = {0};
    snprintf(path, sizeof(path), "/proc/self/task/%d/children", p);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "open %s: %s", path, strerror(errno));
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    int seen = 0, count = 0;
    char *save, *tok = n > 0 ? strtok_r(buf, " \n", &save) : NULL;
    for (; tok; tok = strtok_r(NULL, " \n", &save)) {
        pid_t c = atoi(tok);
        count++;
        seen |= (c == z1) | (c == z2) << 1 | (c == live) << 2;
    }
    if (count != 3 || seen != 7) {
        snprintf(why, len, "%s lists %d children (seen mask %d), expected exactly %d %d %d", path,
                 count, seen, z1, z2, live);
        return 0;
    }
    if (!check_zombie("zombie Z1", z1, &z1_st, CLD_EXITED, 42, why, len)) return 0;
    if (!check_zombie("zombie Z2", z2, &z2_st, CLD_KILLED, SIGTERM, why, len)) return 0;
    struct pstat st;
    if (read_pstat(live, &st)) {
        snprintf(why, len, "live child %d: cannot read /proc/%d/stat: %s", live, live, strerror(errno));
        return 0;
    }
    if (!strchr("RSD", st.state) || st.ppid != root_pid || st.pgrp != live_st.pgrp ||
        st.session != live_st.session || strcmp(st.comm, live_st.comm)) {
        snprintf(why, len,
                 "live child %d: /proc stat state %c ppid %d pgrp %d session %d comm '%s', "
                 "expected R/S/D %d %d %d '%s'",
                 live, st.state, st.ppid, st.pgrp, st.session, st.comm, root_pid, live_st.pgrp,
                 live_st.session, live_st.comm);
        return 0;
    }
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, live, &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT) < 0) {
        snprintf(why, len, "live child %d: waitid: %s (not my child any more?)", live, strerror(errno));
        return 0;
    }
    if (si.si_pid != 0) {
        snprintf(why, len, "live child %d changed state: si_code %d si_status %d", live, si.si_code,
                 si.si_status);
        return 0;
    }
    /* The live child's own answer. */
    double start = wl_now();
    for (;;) {
        char p2[4200], ans[1024] = {0};
        snprintf(p2, sizeof(p2), "%s/child-1", wl_ctl);
        int f = open(p2, O_RDONLY | O_CLOEXEC);
        ssize_t r = f >= 0 ? read(f, ans, sizeof(ans) - 1) : -1;
        if (f >= 0) close(f);
        char *rest;
        if (r > 0 && strtol(ans, &rest, 10) == wl_answered) {
            ans[strcspn(ans, "\n")] = 0;
            if (strcmp(rest, " PASS")) {
                snprintf(why, len, "%s", strncmp(rest, " FAIL: ", 7) ? rest : rest + 7);
                return 0;
            }
            return 1;
        }
        if (wl_now() - start > 20.0) {
            snprintf(why, len, "live child %d did not answer check %ld in 20 s", live, wl_answered);
            return 0;
        }
        wl_nap();
    }
}

int main(void)
{
    wl_init();
    root_pid = getpid();
    root_pgid = getpgid(0);
    root_sid = getsid(0);

    int sync[2];
    if (pipe(sync)) { perror("pipe"); return 2; }
    z2 = fork();
    if (z2 < 0) { perror("fork"); return 2; }
    if (z2 == 0) {
        prctl(PR_SET_NAME, "wl-zombieTERM");
        if (setpgid(0, 0)) { perror("zombie Z2: setpgid"); _exit(2); }
        close(sync[0]);
        if (write(sync[1], "k", 1) != 1) _exit(2);
        for (;;) pause();
    }
    close(sync[1]);
    char b;
    if (read(sync[0], &b, 1) != 1) { fprintf(stderr, "zombie: Z2 failed its setup\n"); return 2; }
    close(sync[0]);
    if (pipe(sync)) { perror("pipe"); return 2; }
    live = fork();
    if (live < 0) { perror("fork"); return 2; }
    if (live == 0) {
        close(sync[0]);
        prctl(PR_SET_NAME, "wl-live");
        if (setpgid(0, z2)) { perror("live child: setpgid(Z2)"); _exit(2); }
        if (write(sync[1], "k", 1) != 1) _exit(2);
        close(sync[1]);
        live_loop();
    }
    close(sync[1]);
    if (read(sync[0], &b, 1) != 1) { fprintf(stderr, "zombie: the live child failed its setup\n"); return 2; }
    close(sync[0]);
    z1 = fork();
    if (z1 < 0) { perror("fork"); return 2; }
    if (z1 == 0) {
        prctl(PR_SET_NAME, "wl-zombie42");
        if (setpgid(0, z2)) _exit(3);
        _exit(42);
    }
    if (kill(z2, SIGTERM)) { perror("kill Z2"); return 2; }
    siginfo_t si;
    for (int i = 0; i < 2; i++) {
        pid_t z = i ? z2 : z1;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, z, &si, WEXITED | WNOWAIT) < 0) { perror("waitid"); return 2; }
        int want_code = i ? CLD_KILLED : CLD_EXITED, want_status = i ? SIGTERM : 42;
        if (si.si_code != want_code || si.si_status != want_status) {
            fprintf(stderr, "zombie: child %d ended with si_code %d si_status %d, expected %d %d\n", z,
                    si.si_code, si.si_status, want_code, want_status);
            return 2;
        }
    }
    if (read_pstat(z1, &z1_st) || read_pstat(z2, &z2_st) || read_pstat(live, &live_st)) {
        perror("zombie: read /proc/<child>/stat");
        return 2;
    }
    if (z1_st.state != 'Z' || z1_st.pgrp != z2 || z2_st.state != 'Z' || live_st.pgrp != z2 || z2_st.pgrp != z2 ||
        strcmp(live_st.comm, "wl-live") || strcmp(z1_st.comm, "wl-zombie42") ||
        strcmp(z2_st.comm, "wl-zombieTERM")) {
        fprintf(stderr, "zombie: setup not as intended: Z1 %c '%s', Z2 %c pgrp %d '%s', L pgrp %d '%s'\n",
                z1_st.state, z1_st.comm, z2_st.state, z2_st.pgrp, z2_st.comm, live_st.pgrp,
                live_st.comm);
        return 2;
    }
    fprintf(stderr,
            "zombie: root %d pgid %d sid %d; Z1 %d (pgrp %d exit_code %#x), Z2 %d (pgrp %d "
            "exit_code %#x), live %d (pgrp %d)\n",
            root_pid, root_pgid, root_sid, z1, z1_st.pgrp, z1_st.exit_code, z2, z2_st.pgrp,
            z2_st.exit_code, live, live_st.pgrp);
    wl_ready();
    for (;;) {
        wl_answer_check("zombie", check);
        wl_nap();
    }
}
