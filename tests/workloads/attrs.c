/*
 * attrs: per-process and per-thread attributes, recorded at setup and verified at every check.
 *
 * Root process (uid 0), two threads:
 *  - itimers: ITIMER_REAL 2 ms (short, so that it often expires while the tree is frozen: its
 *    SIGALRM is then pending and the kernel re-arms it only when that signal is dequeued),
 *    ITIMER_VIRTUAL 30 ms, ITIMER_PROF 70 ms: intervals exact, values in (0, interval] (+ 20 ms
 *    for the CPU-time ones); their signals keep coming (SIGALRM counter advances; with some CPU
 *    burnt, SIGVTALRM and SIGPROF counters advance too);
 *  - rlimits: non-default soft and hard limits for NOFILE, CORE, STACK, MSGQUEUE, CPU,
 *    SIGPENDING, FSIZE, MEMLOCK, LOCKS, RTTIME (hard limits only lowered: the test may run
 *    without CAP_SYS_RESOURCE); all 16 limits compared with the setup values;
 *  - personality ADDR_NO_RANDOMIZE|ADDR_COMPAT_LAYOUT|UNAME26 (and uname() shows 2.6.x);
 *  - umask 027, comm "attrs-main" and "attrs-thr2" (per thread), dumpable 1, child subreaper 1,
 *    no_new_privs 0, pdeath signal 0;
 *  - capabilities: bounding set without CAP_SYS_BOOT, inheritable {SYS_NICE, NET_RAW}, ambient
 *    {SYS_NICE} (per thread: the second thread reports its own capget/prctl values);
 *  - cwd: a directory made in the ctl dir; root: /proc/self/root is "/".
 * Child process (forked, answers through child-1), two threads:
 *  - chroot into the ctl dir, cwd /cwd-child (checked by getcwd and by dev/ino of "." and "/");
 *  - uids r/e/s/fs 3001/3002/3003/3004, gids 2001/2002/2003/2004, groups 1001 1002 1003;
 *  - securebits SECBIT_KEEP_CAPS (PR_SET_KEEPCAPS), capabilities effective {CHOWN,
 *    DAC_OVERRIDE (to write in the ctl dir), KILL, NET_BIND_SERVICE}, permitted those plus
 *    {FOWNER, SYS_NICE}, inheritable {NET_BIND_SERVICE, SYS_NICE}, ambient {NET_BIND_SERVICE},
 *    bounding set further without SYS_MODULE, SYS_RAWIO, MKNOD, AUDIT_WRITE;
 *  - no_new_privs 1 (both threads), dumpable 0, pdeath signal SIGUSR2 (main thread; the signal
 *    must never arrive, the parent stays alive), umask 077, personality ADDR_NO_RANDOMIZE only,
 *    RLIMIT_NOFILE soft 555, RLIMIT_CORE soft 0, no itimers, getppid() is the root;
 *  - comm "attrs-child" and "attrs-cthr".
 * Each thread takes its own snapshot (creds are per thread in Linux) at setup and at each check.
 */
#include "wl.h"
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/fsuid.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#define BIT(c) (1ull << (c))
#define ROOT_PERS (ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT | UNAME26)
#define CHILD_PERS (ADDR_NO_RANDOMIZE)

static int last_cap = 40;

/* ---- per-thread snapshot, taken by the thread itself ---- */
struct tsnap {
    char comm[17];
    uid_t uid[4];   /* r e s fs */
    gid_t gid[4];
    int ngroups;
    gid_t groups[32];
    uint64_t eff, prm, inh, bnd, amb;
    int nnp, securebits, keepcaps, pdeath;
    unsigned long pers;
};

static int capget2(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof(d));
    if (syscall(SYS_capget, &h, d)) return -1;
    *eff = d[0].effective | (uint64_t)d[1].effective << 32;
    *prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    *inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
    return 0;
}

static int capset2(uint64_t eff, uint64_t prm, uint64_t inh)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {
        {(uint32_t)eff, (uint32_t)prm, (uint32_t)inh},
        {(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)},
    };
    return syscall(SYS_capset, &h, d);
}

static void take_tsnap(struct tsnap *s)
{
    memset(s, 0, sizeof(*s));
    prctl(PR_GET_NAME, s->comm, 0, 0, 0);
    /* raw syscalls: per thread, without glibc's process-wide emulation */
    syscall(SYS_getresuid, &s->uid[0], &s->uid[1], &s->uid[2]);
    syscall(SYS_getresgid, &s->gid[0], &s->gid[1], &s->gid[2]);
    s->uid[3] = syscall(SYS_setfsuid, -1); /* an invalid id: only returns the current one */
    s->gid[3] = syscall(SYS_setfsgid, -1);
    s->ngroups = syscall(SYS_getgroups, 32, s->groups);
    capget2(&s->eff, &s->prm, &s->inh);
    for (int c = 0; c <= last_cap; c++) {
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) s->bnd |= BIT(c);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1) s->amb |= BIT(c);
    }
    s->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    s->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
    s->keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
    int sig = -1;
    prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
    s->pdeath = sig;
    s->pers = personality(0xffffffff);
}

/* 0 if equal, else 1 with `why` naming the first difference. */
static int diff_tsnap(const char *who, const struct tsnap *want, const struct tsnap *got, char *why,
                      size_t len)
{
#define D(cond, fmt, ...) \
    if (cond) { snprintf(why, len, "%s: " fmt, who, __VA_ARGS__); return 1; }
    D(strcmp(want->comm, got->comm), "comm \"%s\", expected \"%s\"", got->comm, want->comm);
    for (int i = 0; i < 4; i++) {
        static const char *n[4] = {"real", "effective", "saved", "fs"};
        D(want->uid[i] != got->uid[i], "%s uid %u, expected %u", n[i], got->uid[i], want->uid[i]);
        D(want->gid[i] != got->gid[i], "%s gid %u, expected %u", n[i], got->gid[i], want->gid[i]);
    }
    D(want->ngroups != got->ngroups, "%d supplementary groups, expected %d", got->ngroups,
      want->ngroups);
    for (int i = 0; i < want->ngroups && i < 32; i++)
        D(want->groups[i] != got->groups[i], "supplementary group #%d is %u, expected %u", i,
          got->groups[i], want->groups[i]);
    D(want->eff != got->eff, "effective caps %#llx, expected %#llx", (unsigned long long)got->eff,
      (unsigned long long)want->eff);
    D(want->prm != got->prm, "permitted caps %#llx, expected %#llx", (unsigned long long)got->prm,
      (unsigned long long)want->prm);
    D(want->inh != got->inh, "inheritable caps %#llx, expected %#llx",
      (unsigned long long)got->inh, (unsigned long long)want->inh);
    D(want->bnd != got->bnd, "bounding set %#llx, expected %#llx", (unsigned long long)got->bnd,
      (unsigned long long)want->bnd);
    D(want->amb != got->amb, "ambient caps %#llx, expected %#llx", (unsigned long long)got->amb,
      (unsigned long long)want->amb);
    D(want->nnp != got->nnp, "no_new_privs %d, expected %d", got->nnp, want->nnp);
    D(want->securebits != got->securebits, "securebits %#x, expected %#x", got->securebits,
      want->securebits);
    D(want->keepcaps != got->keepcaps, "PR_GET_KEEPCAPS %d, expected %d", got->keepcaps,
      want->keepcaps);
    D(want->pdeath != got->pdeath, "pdeath signal %d, expected %d", got->pdeath, want->pdeath);
    D(want->pers != got->pers, "personality %#lx, expected %#lx", got->pers, want->pers);
#undef D
    return 0;
}

/* ---- a second thread answering snapshot requests ---- */
struct helper {
    const char *name;
    volatile long req, done;
    struct tsnap snap;
};

static void *helper_main(void *arg)
{
    struct helper *h = arg;
    prctl(PR_SET_NAME, h->name, 0, 0, 0);
    for (;;) {
        long r = __atomic_load_n(&h->req, __ATOMIC_ACQUIRE);
        if (r != h->done) {
            take_tsnap(&h->snap);
            __atomic_store_n(&h->done, r, __ATOMIC_RELEASE);
        }
        wl_nap();
    }
    return NULL;
}

static int helper_snap(struct helper *h, long seq)
{
    __atomic_store_n(&h->req, seq, __ATOMIC_RELEASE);
    double t0 = wl_now();
    while (__atomic_load_n(&h->done, __ATOMIC_ACQUIRE) != seq) {
        if (wl_now() - t0 > 5) return 0;
        wl_nap();
    }
    return 1;
}

/* ---- per-process attributes ---- */
struct psnap {
    struct rlimit rl[RLIM_NLIMITS];
    mode_t umask;
    int dumpable, subreaper;
    char cwd[4096];
    struct stat cwd_st, root_st;
    struct itimerval it[3];
};

static void take_psnap(struct psnap *p)
{
    memset(p, 0, sizeof(*p));
    for (int r = 0; r < RLIM_NLIMITS; r++) getrlimit(r, &p->rl[r]);
    p->umask = umask(0);
    umask(p->umask);
    p->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    int sr = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &sr, 0, 0, 0);
    p->subreaper = sr;
    if (!getcwd(p->cwd, sizeof(p->cwd))) snprintf(p->cwd, sizeof(p->cwd), "(getcwd: %s)", strerror(errno));
    stat(".", &p->cwd_st);
    stat("/", &p->root_st);
    for (int w = 0; w < 3; w++) {
        getitimer(w, &p->it[w]);
        /* An expired ITIMER_REAL reads 0 until its SIGALRM is dequeued (then it is re-armed):
         * transient when another thread is about to take the signal, so look again. */
        for (int i = 0; i < 20 && p->it[w].it_value.tv_sec == 0 && p->it[w].it_value.tv_usec == 0 &&
                        (p->it[w].it_interval.tv_sec || p->it[w].it_interval.tv_usec); i++) {
            struct timespec ts = {0, 500 * 1000};
            nanosleep(&ts, NULL);
            getitimer(w, &p->it[w]);
        }
    }
}

static const char *rl_names[RLIM_NLIMITS] = {
    "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE",
    "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"};
static const char *it_names[3] = {"ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"};

static long tv_us(const struct timeval *t) { return t->tv_sec * 1000000L + t->tv_usec; }

/* Timer values are not recorded (they run): only their intervals, and value in (0, interval]
 * when armed (value 0 when the timer is off). */
static int diff_psnap(const char *who, const struct psnap *want, const struct psnap *got,
                      char *why, size_t len)
{
#define D(cond, fmt, ...) \
    if (cond) { snprintf(why, len, "%s: " fmt, who, __VA_ARGS__); return 1; }
    for (int r = 0; r < RLIM_NLIMITS; r++)
        D(want->rl[r].rlim_cur != got->rl[r].rlim_cur || want->rl[r].rlim_max != got->rl[r].rlim_max,
          "RLIMIT_%s soft/hard %llu/%llu, expected %llu/%llu", rl_names[r],
          (unsigned long long)got->rl[r].rlim_cur, (unsigned long long)got->rl[r].rlim_max,
          (unsigned long long)want->rl[r].rlim_cur, (unsigned long long)want->rl[r].rlim_max);
    D(want->umask != got->umask, "umask %03o, expected %03o", got->umask, want->umask);
    D(want->dumpable != got->dumpable, "dumpable %d, expected %d", got->dumpable, want->dumpable);
    D(want->subreaper != got->subreaper, "child subreaper %d, expected %d", got->subreaper,
      want->subreaper);
    D(strcmp(want->cwd, got->cwd), "cwd \"%s\", expected \"%s\"", got->cwd, want->cwd);
    D(want->cwd_st.st_dev != got->cwd_st.st_dev || want->cwd_st.st_ino != got->cwd_st.st_ino,
      "cwd is dev %#lx ino %lu, expected dev %#lx ino %lu", (unsigned long)got->cwd_st.st_dev,
      (unsigned long)got->cwd_st.st_ino, (unsigned long)want->cwd_st.st_dev,
      (unsigned long)want->cwd_st.st_ino);
    D(want->root_st.st_dev != got->root_st.st_dev || want->root_st.st_ino != got->root_st.st_ino,
      "root \"/\" is dev %#lx ino %lu, expected dev %#lx ino %lu",
      (unsigned long)got->root_st.st_dev, (unsigned long)got->root_st.st_ino,
      (unsigned long)want->root_st.st_dev, (unsigned long)want->root_st.st_ino);
    for (int w = 0; w < 3; w++) {
        long wi = tv_us(&want->it[w].it_interval), gi = tv_us(&got->it[w].it_interval);
        long gv = tv_us(&got->it[w].it_value);
        D(wi != gi, "%s interval %ld us, expected %ld us", it_names[w], gi, wi);
        if (wi == 0) {
            D(gv != 0, "%s value %ld us, expected 0 (no timer)", it_names[w], gv);
        } else {
            /* CPU-time timers are rounded up to the next tick: allow 20 ms over */
            long slack = w == ITIMER_REAL ? 0 : 20000;
            D(gv <= 0 || gv > wi + slack, "%s value %ld us, expected in (0, %ld] us", it_names[w],
              gv, wi + slack);
        }
    }
#undef D
    return 0;
}

/* ======================= child ======================= */
static int child_report_fd = -1;
static volatile sig_atomic_t pdeath_hits;
static void on_usr2(int s) { (void)s; pdeath_hits++; }

static void child_setup_fail(const char *what)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "child setup: %s: %s", what, strerror(errno));
    if (write(child_report_fd, buf, strlen(buf))) {}
    _exit(3);
}

/* Atomic write without exiting on error (wl_write_file exits). */
static void child_answer(const char *text)
{
    char tmp[64], buf[4200];
    snprintf(buf, sizeof(buf), "%ld %s\n", wl_answered, text);
    snprintf(tmp, sizeof(tmp), "/.child-1.%d", getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, strlen(buf)) != (ssize_t)strlen(buf) || rename(tmp, "/child-1")) {
        fprintf(stderr, "attrs child: cannot answer check %ld in the ctl dir: %s\n", wl_answered,
                strerror(errno));
    }
    if (fd >= 0) close(fd);
}

static void child_main(const char *ctl, pid_t parent, struct stat *ctl_st)
{
    static const uint64_t EFF = BIT(CAP_CHOWN) | BIT(CAP_DAC_OVERRIDE) | BIT(CAP_KILL) |
                                BIT(CAP_NET_BIND_SERVICE);
    static const uint64_t PRM = EFF | BIT(CAP_FOWNER) | BIT(CAP_SYS_NICE);
    static const uint64_t INH = BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_SYS_NICE);
    static const gid_t groups[3] = {1001, 1002, 1003};

    prctl(PR_SET_NAME, "attrs-child", 0, 0, 0);
    if (chroot(ctl)) child_setup_fail("chroot into the ctl dir");
    if (chdir("/cwd-child")) child_setup_fail("chdir /cwd-child");
    wl_ctl[0] = 0; /* the ctl dir is "/" now */
    int drop[] = {CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_MKNOD, CAP_AUDIT_WRITE};
    for (unsigned i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (prctl(PR_CAPBSET_DROP, drop[i], 0, 0, 0)) child_setup_fail("PR_CAPBSET_DROP");
    if (setgroups(3, groups)) child_setup_fail("setgroups");
    if (setresgid(2001, 2002, 2003)) child_setup_fail("setresgid");
    setfsgid(2004);
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) child_setup_fail("PR_SET_KEEPCAPS");
    if (setresuid(3001, 3002, 3003)) child_setup_fail("setresuid");
    /* effective caps were cleared by the uid change: raise CAP_SETUID for setfsuid */
    uint64_t ceff, cprm, cinh;
    if (capget2(&ceff, &cprm, &cinh)) child_setup_fail("capget");
    if (capset2(BIT(CAP_SETUID), cprm, cinh)) child_setup_fail("capset (setuid)");
    setfsuid(3004);
    if (capset2(EFF, PRM, INH)) child_setup_fail("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
        child_setup_fail("PR_CAP_AMBIENT_RAISE");
    /* what a credential change resets comes after it */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGUSR2, 0, 0, 0)) child_setup_fail("PR_SET_PDEATHSIG");
    if (getppid() != parent) { errno = ESRCH; child_setup_fail("parent died during setup"); }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) child_setup_fail("PR_SET_DUMPABLE");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) child_setup_fail("PR_SET_NO_NEW_PRIVS");
    umask(077);
    personality(CHILD_PERS);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = 555;
    if (setrlimit(RLIMIT_NOFILE, &rl)) child_setup_fail("setrlimit NOFILE");
    getrlimit(RLIMIT_CORE, &rl);
    rl.rlim_cur = 0;
    if (setrlimit(RLIMIT_CORE, &rl)) child_setup_fail("setrlimit CORE");

    static struct helper th = {"attrs-cthr", 0, 0, {{0}}};
    pthread_t t;
    if (pthread_create(&t, NULL, helper_main, &th)) child_setup_fail("pthread_create");

    /* record and sanity-check the setup */
    struct tsnap s0, t0;
    struct psnap p0;
    take_tsnap(&s0);
    take_psnap(&p0);
    if (!helper_snap(&th, 1)) { errno = ETIMEDOUT; child_setup_fail("thread snapshot"); }
    t0 = th.snap;
    char why[1024];
    struct tsnap exp = s0;
    strcpy(exp.comm, "attrs-child");
    uid_t u[4] = {3001, 3002, 3003, 3004};
    gid_t g[4] = {2001, 2002, 2003, 2004};
    memcpy(exp.uid, u, sizeof(u));
    memcpy(exp.gid, g, sizeof(g));
    exp.ngroups = 3;
    memcpy(exp.groups, groups, sizeof(groups));
    exp.eff = EFF, exp.prm = PRM, exp.inh = INH, exp.amb = BIT(CAP_NET_BIND_SERVICE);
    exp.nnp = 1, exp.keepcaps = 1, exp.securebits = 1 << 4 /* SECBIT_KEEP_CAPS */;
    exp.pdeath = SIGUSR2, exp.pers = CHILD_PERS;
    if (diff_tsnap("child setup", &exp, &s0, why, sizeof(why))) {
        errno = EINVAL;
        child_setup_fail(why);
    }
    for (unsigned i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (s0.bnd & BIT(drop[i])) {
            errno = EINVAL;
            child_setup_fail("a dropped capability is still in the bounding set");
        }
    if (p0.root_st.st_ino != ctl_st->st_ino || p0.dumpable != 0 || p0.umask != 077 ||
        strcmp(p0.cwd, "/cwd-child")) {
        errno = EINVAL;
        child_setup_fail("root/dumpable/umask/cwd not as set");
    }
    if (write(child_report_fd, "OK", 2) != 2) _exit(3);
    close(child_report_fd);
    fprintf(stderr, "attrs child %d: thread %d set up\n", getpid(), (int)syscall(SYS_gettid));

    for (;;) {
        if (wl_poll()) {
            struct tsnap s;
            struct psnap p;
            take_tsnap(&s);
            take_psnap(&p);
            int bad = diff_tsnap("child main thread", &s0, &s, why, sizeof(why)) ||
                      diff_psnap("child", &p0, &p, why, sizeof(why));
            if (!bad && strcmp(p.cwd, "/cwd-child")) {
                snprintf(why, sizeof(why), "child: cwd \"%.900s\", expected \"/cwd-child\"", p.cwd);
                bad = 1;
            }
            if (!bad && (p.root_st.st_dev != ctl_st->st_dev || p.root_st.st_ino != ctl_st->st_ino)) {
                snprintf(why, sizeof(why), "child: \"/\" is not the ctl dir (chroot lost)");
                bad = 1;
            }
            if (!bad && getppid() != parent) {
                snprintf(why, sizeof(why), "child: getppid() %d, expected %d", getppid(), parent);
                bad = 1;
            }
            if (!bad && pdeath_hits) {
                snprintf(why, sizeof(why), "child: got its pdeath signal SIGUSR2 %d time(s) while "
                         "its parent %d lives", (int)pdeath_hits, parent);
                bad = 1;
            }
            if (!bad) {
                if (!helper_snap(&th, wl_answered + 1)) {
                    snprintf(why, sizeof(why), "child: thread attrs-cthr did not answer in 5 s");
                    bad = 1;
                } else {
                    bad = diff_tsnap("child second thread", &t0, &th.snap, why, sizeof(why));
                }
            }
            if (bad) {
                fprintf(stderr, "attrs child: check %ld FAIL: %s\n", wl_answered, why);
                char out[1100];
                snprintf(out, sizeof(out), "FAIL: %s", why);
                child_answer(out);
            } else {
                child_answer("PASS");
            }
        }
        wl_nap();
    }
}

/* ======================= root ======================= */
static volatile long n_alrm, n_vtalrm, n_prof;
static void on_timer(int s)
{
    if (s == SIGALRM) n_alrm++;
    else if (s == SIGVTALRM) n_vtalrm++;
    else if (s == SIGPROF) n_prof++;
}

static void die(const char *what)
{
    fprintf(stderr, "attrs: setup: %s: %s\n", what, strerror(errno));
    exit(2);
}

static struct helper thr2 = {"attrs-thr2", 0, 0, {{0}}};
static struct tsnap root_s0, thr2_s0;
static struct psnap root_p0;
static char root_link0[4096];
static pid_t child;
static char why[2048];

/* The child's answer to check `seq`, waited for up to 10 s. */
static int child_verdict(long seq)
{
    char p[4200], buf[1200];
    wl_path("child-1", p, sizeof(p));
    double t0 = wl_now();
    for (;;) {
        int st;
        pid_t r = waitpid(child, &st, WNOHANG);
        if (r == child) {
            snprintf(why, sizeof(why), "child %d is gone: status %#x", child, st);
            child = -1;
            return 0;
        }
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            buf[n > 0 ? n : 0] = 0;
            char *rest;
            if (strtol(buf, &rest, 10) == seq) {
                buf[strcspn(buf, "\n")] = 0;
                if (!strcmp(rest, " PASS")) return 1;
                snprintf(why, sizeof(why), "child %d: %s", child, rest + (strncmp(rest, " FAIL: ", 7) ? 1 : 7));
                return 0;
            }
        }
        if (wl_now() - t0 > 10) {
            snprintf(why, sizeof(why), "child %d did not answer check %ld in 10 s", child, seq);
            return 0;
        }
        wl_nap();
    }
}

static int check(void)
{
    struct tsnap s;
    struct psnap p;
    take_tsnap(&s);
    take_psnap(&p);
    if (diff_tsnap("root main thread", &root_s0, &s, why, sizeof(why))) return 0;
    if (diff_psnap("root", &root_p0, &p, why, sizeof(why))) return 0;
    char link[4096];
    ssize_t n = readlink("/proc/self/root", link, sizeof(link) - 1);
    link[n > 0 ? n : 0] = 0;
    if (strcmp(link, root_link0)) {
        snprintf(why, sizeof(why), "root: /proc/self/root -> \"%.900s\", expected \"%.900s\"", link, root_link0);
        return 0;
    }
    struct utsname u;
    uname(&u);
    if (strncmp(u.release, "2.6.", 4)) {
        snprintf(why, sizeof(why), "root: uname release \"%s\", expected 2.6.x (UNAME26)", u.release);
        return 0;
    }
    if (!helper_snap(&thr2, wl_answered + 1)) {
        snprintf(why, sizeof(why), "root: thread attrs-thr2 did not answer in 5 s");
        return 0;
    }
    if (diff_tsnap("root second thread", &thr2_s0, &thr2.snap, why, sizeof(why))) return 0;
    /* timers tick: SIGALRM on wall time, SIGVTALRM/SIGPROF on CPU time burnt here */
    long a0 = n_alrm, v0 = n_vtalrm, p0 = n_prof;
    double t0 = wl_now();
    volatile uint64_t x = 1;
    while (n_alrm < a0 + 2 || n_vtalrm < v0 + 2 || n_prof < p0 + 2) {
        if (wl_now() - t0 > 5) {
            snprintf(why, sizeof(why), "root: in 5 s (CPU busy) timer signals SIGALRM +%ld, "
                     "SIGVTALRM +%ld, SIGPROF +%ld, expected at least +2 each",
                     n_alrm - a0, n_vtalrm - v0, n_prof - p0);
            return 0;
        }
        for (int i = 0; i < 100000; i++) x = x * 6364136223846793005ull + 1;
    }
    return child_verdict(wl_answered);
}

int main(void)
{
    wl_init();
    FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");
    if (f) {
        if (fscanf(f, "%d", &last_cap) != 1) last_cap = 40;
        fclose(f);
    }
    char d[4200];
    struct stat ctl_st;
    if (stat(wl_ctl, &ctl_st)) die("stat ctl dir");
    snprintf(d, sizeof(d), "%s/cwd-root", wl_ctl);
    if (mkdir(d, 0755) && errno != EEXIST) die("mkdir cwd-root");
    if (chdir(d)) die("chdir cwd-root");
    snprintf(d, sizeof(d), "%s/cwd-child", wl_ctl);
    if (mkdir(d, 0755) && errno != EEXIST) die("mkdir cwd-child");

    /* rlimits: soft and hard, non-default */
    static const struct { int res; rlim_t soft, hard; } lims[] = {
        {RLIMIT_NOFILE, 777, 4000},
        {RLIMIT_CORE, 1 << 20, 64 << 20},
        {RLIMIT_STACK, 6 << 20, 96 << 20},
        {RLIMIT_MSGQUEUE, 400000, 800000},
        {RLIMIT_CPU, 36000, 72000},
        {RLIMIT_SIGPENDING, 1234, 5678},
        {RLIMIT_FSIZE, 1ull << 30, 2ull << 30},
        {RLIMIT_MEMLOCK, 4 << 20, 6 << 20},
        {RLIMIT_LOCKS, 1000, 2000},
        {RLIMIT_RTTIME, 5000000, 10000000},
    };
    for (unsigned i = 0; i < sizeof(lims) / sizeof(lims[0]); i++) {
        struct rlimit rl = {lims[i].soft, lims[i].hard};
        if (setrlimit(lims[i].res, &rl)) die(rl_names[lims[i].res]);
    }
    if (personality(ROOT_PERS) == -1) die("personality");
    umask(027);
    prctl(PR_SET_NAME, "attrs-main", 0, 0, 0);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) die("PR_SET_CHILD_SUBREAPER");
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0)) die("PR_CAPBSET_DROP");
    uint64_t eff, prm, inh;
    if (capget2(&eff, &prm, &inh)) die("capget");
    if (capset2(eff, prm, BIT(CAP_SYS_NICE) | BIT(CAP_NET_RAW))) die("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_NICE, 0, 0)) die("ambient raise");

    /* the child, forked while single-threaded and before the timers */
    int rp[2];
    if (pipe2(rp, O_CLOEXEC)) die("pipe2");
    pid_t me = getpid();
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(rp[0]);
        child_report_fd = rp[1];
        child_main(wl_ctl, me, &ctl_st);
        _exit(1);
    }
    close(rp[1]);
    char rep[600] = {0};
    ssize_t n = read(rp[0], rep, sizeof(rep) - 1);
    close(rp[0]);
    if (n != 2 || strcmp(rep, "OK")) {
        fprintf(stderr, "attrs: %s\n", n > 0 ? rep : "child died during setup");
        kill(child, SIGKILL);
        return 2;
    }

    pthread_t t;
    if (pthread_create(&t, NULL, helper_main, &thr2)) die("pthread_create");

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_timer;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGVTALRM, &sa, NULL);
    sigaction(SIGPROF, &sa, NULL);
    struct itimerval it[3] = {
        {{0, 2000}, {0, 2000}}, {{0, 30000}, {0, 30000}}, {{0, 70000}, {0, 70000}}};
    for (int w = 0; w < 3; w++)
        if (setitimer(w, &it[w], NULL)) die("setitimer");

    take_tsnap(&root_s0);
    take_psnap(&root_p0);
    ssize_t ln = readlink("/proc/self/root", root_link0, sizeof(root_link0) - 1);
    root_link0[ln > 0 ? ln : 0] = 0;
    if (!helper_snap(&thr2, 1)) die("second thread snapshot");
    thr2_s0 = thr2.snap;
    /* sanity of the setup: what was set reads back */
    if (strcmp(root_s0.comm, "attrs-main") || strcmp(thr2_s0.comm, "attrs-thr2") ||
        root_s0.pers != ROOT_PERS || root_p0.umask != 027 || root_p0.subreaper != 1 ||
        root_p0.dumpable != 1 || root_s0.amb != BIT(CAP_SYS_NICE) ||
        root_s0.inh != (BIT(CAP_SYS_NICE) | BIT(CAP_NET_RAW)) || (root_s0.bnd & BIT(CAP_SYS_BOOT)) ||
        root_p0.rl[RLIMIT_NOFILE].rlim_cur != 777 || tv_us(&root_p0.it[0].it_interval) != 2000 ||
        tv_us(&root_p0.it[1].it_interval) != 30000 || tv_us(&root_p0.it[2].it_interval) != 70000 ||
        strcmp(root_link0, "/")) {
        fprintf(stderr, "attrs: setup did not read back as set\n");
        kill(child, SIGKILL);
        return 2;
    }
    fprintf(stderr, "attrs: root %d child %d ready\n", me, child);
    wl_ready();
    for (;;) {
        if (wl_poll()) {
            double t0 = wl_now();
            if (check()) {
                fprintf(stderr, "attrs: check %ld PASS in %.2f s (alrm %ld vtalrm %ld prof %ld)\n",
                        wl_answered, wl_now() - t0, n_alrm, n_vtalrm, n_prof);
                wl_pass();
            } else {
                fprintf(stderr, "attrs: check %ld FAIL: %s\n", wl_answered, why);
                wl_fail("%s", why);
            }
        }
        wl_nap();
    }
}
