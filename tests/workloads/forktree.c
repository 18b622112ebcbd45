/*
 * forktree: a fork tree of 20 processes (the root included) in 3 sessions and 10 process groups,
 * 4 levels deep below the root, where several groups hold processes of different parents.
 *
 * Checks that the tree comes back with the same shape: every PID, every parent link, every
 * process group and session (a restorer must create group leaders before the processes of other
 * branches that join them, and join groups across branches), and each process's own memory.
 *
 * The tree (node: parent, what it does after fork; pre-order, so a group's leader always
 * exists before a process joins it):
 *    0: -   setsid        session S0, group G0 (the root, the process the harness started)
 *    1: 0   new group G1
 *    2: 1   (G1)
 *    3: 2   joins G0      (G0 = {0, 3}: parents -, 2)
 *    4: 1   new group G4
 *    5: 0   new group G5
 *    6: 5   joins G1      (G1 = {1, 2, 6}: parents 0, 1, 5)
 *    7: 5   joins G4      (G4 = {4, 7}: parents 1, 5)
 *    8: 0   setsid        session S8, group G8
 *    9: 8   (G8)
 *   10: 9   new group G10
 *   11: 10  (G10)
 *   12: 10  joins G8      (G8 = {8, 9, 12}: parents 0, 8, 10)
 *   13: 8   joins G10     (G10 = {10, 11, 13}: parents 9, 10, 8; leader in another branch)
 *   14: 0   setsid        session S14, group G14
 *   15: 14  new group G15
 *   16: 15  (G15)
 *   17: 16  joins G14     (G14 = {14, 17}: parents 0, 16)
 *   18: 14  joins G15     (G15 = {15, 16, 18}: parents 14, 15, 14)
 *   19: 18  new group G19
 *
 * Setup: each process records its pid, ppid, pgid and sid and sends them to the root on a pipe
 * (closed once set up); the root checks them against the table above. Memory: the root fills an
 * "inherited" area before forking (children keep it untouched: pages shared copy-on-write at
 * fork), and every process fills its own .bss array and a private mmap with a pattern derived
 * from its node number and pid.
 *
 * A check, in every process: getpid/getppid/getpgid(0)/getsid(0) equal the recorded values,
 * the inherited area, the .bss array and the mmap hold their patterns, and every child is still
 * a child that has not exited (waitid WEXITED|WNOHANG|WNOWAIT reports nothing, not ECHILD).
 * Non-root processes answer "<seq> PASS <pid> <ppid> <pgid> <sid>" or "<seq> FAIL: reason" in
 * $VZCPT_CTL/child-<node>; the root waits for all 19 answers to the same check sequence, also
 * compares the ids they report with its table, and answers for the whole tree. The root's own
 * ppid is not checked (it is the harness's business).
 */
#include "wl.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define NPROC 20
#define NONE (-1)
#define NEWPG (-2)
#define SETSID (-3)
/* action >= 0: join the group led by that node. */
static const struct { int parent, action; } spec[NPROC] = {
    {-1, SETSID}, {0, NEWPG}, {1, NONE}, {2, 0},   {1, NEWPG}, {0, NEWPG}, {5, 1},
    {5, 4},       {0, SETSID}, {8, NONE}, {9, NEWPG}, {10, NONE}, {10, 8},  {8, 10},
    {0, SETSID},  {14, NEWPG}, {15, NONE}, {16, 14}, {14, 15},  {18, NEWPG},
};
static int pg_node[NPROC], sess_node[NPROC]; /* expected leader nodes, from spec */

struct rec { int node, pid, ppid, pgid, sid; };
/* Root: every node's ids as recorded at setup. Others: only .pid, of the nodes they know. */
static struct rec table[NPROC];
static struct rec me;          /* this process's ids as recorded at setup */
static int my_node;
static pid_t kids[NPROC];
static int nkids;

#define INH_WORDS (64 * 1024 / 8)
#define BSS_WORDS (64 * 1024 / 8)
#define MAP_WORDS (256 * 1024 / 8)
static uint64_t inherited[INH_WORDS]; /* filled by the root before any fork */
static uint64_t own_bss[BSS_WORDS];   /* filled by each process after fork */
static uint64_t *own_map;             /* private anonymous mmap, filled after fork */
static pid_t root_pid;
static int rec_r = -1; /* read end of the record pipe, in the root */

static uint64_t pat(uint64_t seed, uint64_t i)
{
    uint64_t x = seed ^ (i * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    return x ^ (x >> 29);
}
static uint64_t inh_seed(void) { return 0x1000000000ull ^ (uint64_t)root_pid; }
static uint64_t bss_seed(void) { return ((uint64_t)(my_node + 1) << 40) ^ (uint64_t)me.pid; }
static uint64_t map_seed(void) { return ((uint64_t)(my_node + 1) << 48) ^ ((uint64_t)me.pid << 8) ^ 0x77; }

static void die(const char *what)
{
    fprintf(stderr, "forktree: node %d (pid %d): %s: %s\n", my_node, getpid(), what, strerror(errno));
    _exit(2);
}

static void fill_own(void)
{
    for (size_t i = 0; i < BSS_WORDS; i++) own_bss[i] = pat(bss_seed(), i);
    own_map = mmap(NULL, MAP_WORDS * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (own_map == MAP_FAILED) die("mmap");
    for (size_t i = 0; i < MAP_WORDS; i++) own_map[i] = pat(map_seed(), i);
}

/* Verifies this process; "" when all is well, else the reason in why. */
static void self_check(char *why, size_t len)
{
    why[0] = 0;
    pid_t pid = getpid(), ppid = getppid(), pgid = getpgid(0), sid = getsid(0);
    if (pid != me.pid) {
        snprintf(why, len, "node %d: getpid() = %d, recorded %d", my_node, pid, me.pid);
        return;
    }
    if (my_node != 0 && ppid != me.ppid) {
        snprintf(why, len, "node %d (pid %d): getppid() = %d, recorded %d", my_node, pid, ppid, me.ppid);
        return;
    }
    if (pgid != me.pgid) {
        snprintf(why, len, "node %d (pid %d): getpgid(0) = %d, recorded %d", my_node, pid, pgid, me.pgid);
        return;
    }
    if (sid != me.sid) {
        snprintf(why, len, "node %d (pid %d): getsid(0) = %d, recorded %d", my_node, pid, sid, me.sid);
        return;
    }
    for (size_t i = 0; i < INH_WORDS; i++)
        if (inherited[i] != pat(inh_seed(), i)) {
            snprintf(why, len, "node %d (pid %d): inherited word %zu of %d = %#llx, expected %#llx",
                     my_node, pid, i, INH_WORDS, (unsigned long long)inherited[i],
                     (unsigned long long)pat(inh_seed(), i));
            return;
        }
    for (size_t i = 0; i < BSS_WORDS; i++)
        if (own_bss[i] != pat(bss_seed(), i)) {
            snprintf(why, len, "node %d (pid %d): .bss word %zu of %d = %#llx, expected %#llx",
                     my_node, pid, i, BSS_WORDS, (unsigned long long)own_bss[i],
                     (unsigned long long)pat(bss_seed(), i));
            return;
        }
    for (size_t i = 0; i < MAP_WORDS; i++)
        if (own_map[i] != pat(map_seed(), i)) {
            snprintf(why, len, "node %d (pid %d): mmap word %zu of %d at %p = %#llx, expected %#llx",
                     my_node, pid, i, MAP_WORDS, (void *)&own_map[i], (unsigned long long)own_map[i],
                     (unsigned long long)pat(map_seed(), i));
            return;
        }
    for (int k = 0; k < nkids; k++) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, kids[k], &si, WEXITED | WSTOPPED | WNOHANG | WNOWAIT) < 0) {
            snprintf(why, len, "node %d (pid %d): waitid(child %d): %s (not my child any more?)",
                     my_node, pid, kids[k], strerror(errno));
            return;
        }
        if (si.si_pid != 0) {
            snprintf(why, len, "node %d (pid %d): child %d changed state: si_code %d si_status %d",
                     my_node, pid, kids[k], si.si_code, si.si_status);
            return;
        }
    }
}

/* Reads exactly n bytes; 0 on EOF before that. */
static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        got += r;
    }
    return 1;
}

static void __attribute__((noreturn)) child_loop(void)
{
    char name[32], why[1024], out[1200];
    snprintf(name, sizeof(name), "child-%d", my_node);
    for (;;) {
        if (wl_poll()) {
            self_check(why, sizeof(why));
            if (why[0])
                snprintf(out, sizeof(out), "%ld FAIL: %s\n", wl_answered, why);
            else
                snprintf(out, sizeof(out), "%ld PASS %d %d %d %d\n", wl_answered, getpid(), getppid(),
                         getpgid(0), getsid(0));
            wl_write_file(name, out);
        }
        wl_nap();
    }
}

/* Runs in node `node` right after fork (or in the root at start): joins its group or session,
 * fills its memory, creates its children one whole subtree at a time, sends its record on rec_w
 * and (not the root) the pids it knows to its parent on up_w, then goes to the check loop.
 * Only the root returns. */
static void setup_node(int node, int rec_w, int up_w)
{
    my_node = node;
    int a = spec[node].action;
    if (a == SETSID) {
        if (setsid() < 0) die("setsid");
    } else if (a == NEWPG) {
        if (setpgid(0, 0) < 0) die("setpgid(0, 0)");
    } else if (a >= 0) {
        /* The leader comes earlier in pre-order: its pid reached this process's table
         * through the sync pipes of the subtrees set up before it (see below). */
        if (setpgid(0, table[a].pid) < 0) die("setpgid(0, leader)");
    }
    table[node].pid = getpid();
    me = (struct rec){node, getpid(), getppid(), getpgid(0), getsid(0)};
    fill_own();
    for (int c = node + 1; c < NPROC; c++) {
        if (spec[c].parent != node) continue;
        int sync[2];
        if (pipe(sync)) die("pipe");
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            close(sync[0]);
            if (up_w >= 0) close(up_w);
            if (rec_r >= 0) close(rec_r); /* only the root reads records */
            rec_r = -1;
            nkids = 0;
            setup_node(c, rec_w, sync[1]); /* does not return */
        }
        close(sync[1]);
        int pids[NPROC];
        if (!read_full(sync[0], pids, sizeof(pids))) {
            fprintf(stderr, "forktree: node %d: node %d (pid %d) failed its setup\n", node, c, p);
            _exit(2);
        }
        close(sync[0]);
        kids[nkids++] = p;
        /* Later children need the pids of the leaders in this subtree. */
        for (int d = 0; d < NPROC; d++)
            if (pids[d]) table[d].pid = pids[d];
    }
    if (write(rec_w, &me, sizeof(me)) != sizeof(me)) die("write record");
    if (node == 0) return;
    close(rec_w);
    /* The whole subtree is set up: tell the parent, with every pid this process knows. */
    int pids[NPROC];
    for (int d = 0; d < NPROC; d++) pids[d] = table[d].pid;
    if (write(up_w, pids, sizeof(pids)) != sizeof(pids)) die("write sync");
    close(up_w);
    child_loop();
}

/* Root: waits for the 19 answers to the current check and checks them against the table. */
static void gather(char *why, size_t len)
{
    int have[NPROC] = {0};
    double start = wl_now();
    for (;;) {
        int missing = -1;
        for (int n = 1; n < NPROC; n++) {
            if (have[n]) continue;
            char p[4200], buf[2048] = {0};
            snprintf(p, sizeof(p), "%s/child-%d", wl_ctl, n);
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            if (fd < 0) { missing = n; continue; }
            ssize_t r = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            char *rest;
            long seq = r > 0 ? strtol(buf, &rest, 10) : -1;
            if (seq != wl_answered) { missing = n; continue; }
            have[n] = 1;
            buf[strcspn(buf, "\n")] = 0;
            int pid, ppid, pgid, sid;
            if (strncmp(rest, " PASS", 5) != 0) {
                if (!why[0])
                    snprintf(why, len, "%s", strncmp(rest, " FAIL: ", 7) ? rest : rest + 7);
            } else if (sscanf(rest + 5, "%d %d %d %d", &pid, &ppid, &pgid, &sid) != 4) {
                if (!why[0]) snprintf(why, len, "node %d: unreadable answer '%.200s'", n, buf);
            } else if (pid != table[n].pid || ppid != table[n].ppid || pgid != table[n].pgid ||
                       sid != table[n].sid) {
                if (!why[0])
                    snprintf(why, len,
                             "node %d reports pid %d ppid %d pgid %d sid %d, root recorded %d %d %d %d",
                             n, pid, ppid, pgid, sid, table[n].pid, table[n].ppid, table[n].pgid,
                             table[n].sid);
            }
        }
        if (missing < 0) return;
        if (wl_now() - start > 30.0) {
            if (!why[0])
                snprintf(why, len, "node %d (pid %d) did not answer check %ld in 30 s", missing,
                         table[missing].pid, wl_answered);
            return;
        }
        wl_nap();
    }
}

int main(void)
{
    wl_init();
    /* Expected leaders, from the spec. */
    int nsess = 0;
    for (int n = 0; n < NPROC; n++) {
        int a = spec[n].action, par = spec[n].parent;
        sess_node[n] = a == SETSID ? n : sess_node[par];
        pg_node[n] = (a == SETSID || a == NEWPG) ? n : a == NONE ? pg_node[par] : a;
        if (a >= 0 && sess_node[a] != sess_node[n]) {
            fprintf(stderr, "forktree: bad spec: node %d joins a group of another session\n", n);
            return 2;
        }
        nsess += a == SETSID;
    }
    root_pid = getpid();
    for (size_t i = 0; i < INH_WORDS; i++) inherited[i] = pat(inh_seed(), i);
    int recp[2];
    if (pipe(recp)) { perror("pipe"); return 2; }
    rec_r = recp[0];
    setup_node(0, recp[1], -1);
    close(recp[1]);
    /* Root: all 20 records are in the pipe (the root's own last). */
    for (int i = 0; i < NPROC; i++) {
        struct rec r;
        if (!read_full(recp[0], &r, sizeof(r)) || r.node < 0 || r.node >= NPROC) {
            fprintf(stderr, "forktree: record %d missing or bad\n", i);
            return 2;
        }
        table[r.node] = r;
    }
    close(recp[0]);
    for (int n = 0; n < NPROC; n++) {
        struct rec *r = &table[n];
        int ppid_ok = n == 0 || r->ppid == table[spec[n].parent].pid;
        if (r->node != n || !ppid_ok || r->pgid != table[pg_node[n]].pid ||
            r->sid != table[sess_node[n]].pid) {
            fprintf(stderr, "forktree: node %d set up wrong: pid %d ppid %d pgid %d sid %d, "
                            "expected ppid %d pgid %d sid %d\n",
                    n, r->pid, r->ppid, r->pgid, r->sid, n ? table[spec[n].parent].pid : -1,
                    table[pg_node[n]].pid, table[sess_node[n]].pid);
            return 2;
        }
        fprintf(stderr, "forktree: node %2d pid %d ppid %d pgid %d sid %d\n", n, r->pid, r->ppid,
                r->pgid, r->sid);
    }
    fprintf(stderr, "forktree: %d processes, %d sessions\n", NPROC, nsess);
    wl_ready();
    for (;;) {
        if (wl_poll()) {
            char why[2048];
            self_check(why, sizeof(why));
            gather(why, sizeof(why));
            if (why[0]) {
                fprintf(stderr, "forktree: check %ld FAIL: %s\n", wl_answered, why);
                wl_fail("%s", why);
            } else {
                fprintf(stderr, "forktree: check %ld PASS\n", wl_answered);
                wl_pass();
            }
        }
        wl_nap();
    }
}
