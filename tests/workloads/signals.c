/*
 * signals: signal state of a 3-thread process, per process and per thread.
 *
 * Set up once, then verified on every check against the values recorded at setup:
 *  - dispositions of all 64 signals, read with rt_sigaction(sig, NULL, &old) (handler, flags,
 *    restorer, mask: exact kernel values), and through libc sigaction(NULL, &old) against what
 *    was asked: SIGUSR1 handler SA_SIGINFO|SA_RESTART|SA_ONSTACK mask {USR2,RTMIN+5};
 *    SIGUSR2 handler SA_NODEFER|SA_RESETHAND mask {TERM}; RTMIN+2 SA_SIGINFO|SA_RESTART mask
 *    {ALRM}; RTMIN+7 SA_SIGINFO (no SA_RESTART); SIGHUP and SIGPIPE SIG_IGN; SIGTERM SIG_DFL
 *    with SA_RESTART and mask {INT}; SIGWINCH SIG_DFL;
 *  - the blocked mask of each thread (main, t2, t3 all different), from inside the thread and
 *    from /proc/self/task/TID/status SigBlk; SigIgn/SigCgt;
 *  - pending signals: shared (kill SIGPWR, sigqueue RTMIN+3 x3 with values 301..303, blocked in
 *    all threads), main-thread private (tgkill SIGQUIT, pthread_sigqueue RTMIN+6 x2 = 601, 602),
 *    t2 private (tgkill SIGPROF, pthread_sigqueue RTMIN+4 x2 = 401, 402): masks from /proc
 *    (SigPnd per task, ShdPnd), then every queue entry is dequeued with sigtimedwait (signo,
 *    si_code, si_pid, si_uid, si_value, FIFO order, count) and queued again the same way, so
 *    every check sees the same state; /proc is re-read at the end;
 *  - sigaltstack per thread: main 64 KiB flags 0, t2 48 KiB SS_AUTODISARM, t3 SS_DISABLE;
 *  - the handlers really run after a restore: SIGUSR1 to main and t2 runs on their alternate
 *    stacks (stack address inside it, sigaltstack() inside the handler shows SS_ONSTACK, or
 *    SS_DISABLE for t2's SS_AUTODISARM stack; uc_stack is the recorded stack), with the exact
 *    blocked mask thread|sa_mask|sig; SIGUSR2 to t2 runs off the alternate stack, with the
 *    signal itself not blocked (SA_NODEFER), and leaves SIG_DFL behind (SA_RESETHAND; the
 *    disposition is put back afterwards); t3, blocked in read() on a pipe (where it is dumped),
 *    gets RTMIN+2 (SA_RESTART: read goes on and returns the byte written afterwards) and then
 *    RTMIN+7 (no SA_RESTART: read fails with EINTR); SIGHUP (SIG_IGN) is sent and discarded.
 */
#include "wl.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#ifndef SS_AUTODISARM
#define SS_AUTODISARM (1U << 31)
#endif
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

#define BIT(s) (1ull << ((s) - 1))
#define MAIN_ALT_SIZE (64 * 1024)
#define T2_ALT_SIZE (48 * 1024)

struct ksigaction { uint64_t handler, flags, restorer, mask; };

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static int rt_sigaction_get(int sig, struct ksigaction *old)
{
    return (int)syscall(SYS_rt_sigaction, sig, NULL, old, 8);
}

static uint64_t blocked_now(void)
{
    uint64_t m = 0;
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &m, 8);
    return m;
}

static sigset_t set_of(uint64_t bits)
{
    sigset_t s;
    sigemptyset(&s);
    for (int i = 1; i <= 64; i++)
        if (bits & BIT(i)) sigaddset(&s, i);
    return s;
}

static uint64_t bits_of(const sigset_t *s)
{
    uint64_t b = 0;
    for (int i = 1; i <= 64; i++)
        if (sigismember(s, i) == 1) b |= BIT(i);
    return b;
}

/* ---- recorded state ---- */
static pid_t pid, main_tid, t2_tid, t3_tid;
static pthread_t t2_thread;
static uint64_t shared_bits, main_mask, t2_mask, t3_mask;
static uint64_t usr1_samask, usr2_samask, rt2_samask;
static stack_t main_alt, t2_alt;
static struct ksigaction recorded[65];
static int t3_pipe[2];

/* Expected /proc values (recorded at setup, checked to be the expected ones). */
struct procsig { uint64_t pnd, shd, blk, ign, cgt; };
static struct procsig rec_main, rec_t2, rec_t3;

/* ---- handler record: one signal in flight at a time ---- */
struct hrec {
    volatile int count;
    int sig, tid, has_info, code, value, pid, uid;
    uintptr_t sp;
    uint64_t mask;
    stack_t alt_in;   /* sigaltstack(NULL) inside the handler */
    stack_t uc_stack; /* from the ucontext (SA_SIGINFO handlers) */
};
static struct hrec hrec;

static void record_common(int sig)
{
    volatile char local;
    hrec.sig = sig;
    hrec.tid = gettid_();
    hrec.sp = (uintptr_t)&local;
    hrec.mask = blocked_now();
    sigaltstack(NULL, &hrec.alt_in);
}

static void h_info(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = ucv;
    record_common(sig);
    hrec.has_info = 1;
    hrec.code = si->si_code;
    hrec.value = si->si_value.sival_int;
    hrec.pid = si->si_pid;
    hrec.uid = si->si_uid;
    hrec.uc_stack = uc->uc_stack;
    __atomic_add_fetch(&hrec.count, 1, __ATOMIC_RELEASE);
}

static void h_plain(int sig)
{
    record_common(sig);
    hrec.has_info = 0;
    __atomic_add_fetch(&hrec.count, 1, __ATOMIC_RELEASE);
}

/* Sends sig to tid and waits for the handler; 0 on timeout. */
static int send_and_wait(pid_t tid, int sig, char *why, size_t len)
{
    int c0 = __atomic_load_n(&hrec.count, __ATOMIC_ACQUIRE);
    memset((char *)&hrec + sizeof(int), 0, sizeof(hrec) - sizeof(int));
    if (syscall(SYS_tgkill, pid, tid, sig)) {
        snprintf(why, len, "tgkill(%d, %d, %d): %s", pid, tid, sig, strerror(errno));
        return 0;
    }
    double t0 = wl_now();
    while (__atomic_load_n(&hrec.count, __ATOMIC_ACQUIRE) == c0) {
        if (wl_now() - t0 > 3.0) {
            snprintf(why, len, "handler of signal %d sent to tid %d did not run in 3 s", sig, tid);
            return 0;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (hrec.count != c0 + 1) {
        snprintf(why, len, "signal %d: handler ran %d times, expected once", sig, hrec.count - c0);
        return 0;
    }
    if (hrec.sig != sig || hrec.tid != tid) {
        snprintf(why, len, "signal %d to tid %d: handler got signal %d in tid %d", sig, tid,
                 hrec.sig, hrec.tid);
        return 0;
    }
    return 1;
}

static int on_stack(uintptr_t sp, const stack_t *s)
{
    return sp >= (uintptr_t)s->ss_sp && sp < (uintptr_t)s->ss_sp + s->ss_size;
}

/* ---- /proc ---- */
static int read_procsig(pid_t tid, struct procsig *p)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    int n = 0;
    memset(p, 0, sizeof(*p));
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v;
        if (sscanf(line, "SigPnd: %llx", &v) == 1) p->pnd = v, n++;
        else if (sscanf(line, "ShdPnd: %llx", &v) == 1) p->shd = v, n++;
        else if (sscanf(line, "SigBlk: %llx", &v) == 1) p->blk = v, n++;
        else if (sscanf(line, "SigIgn: %llx", &v) == 1) p->ign = v, n++;
        else if (sscanf(line, "SigCgt: %llx", &v) == 1) p->cgt = v, n++;
    }
    fclose(f);
    return n == 5 ? 0 : -1;
}

static int cmp_procsig(const char *who, pid_t tid, const struct procsig *exp, char *why,
                       size_t len)
{
    struct procsig p;
    if (read_procsig(tid, &p)) {
        snprintf(why, len, "%s (tid %d): cannot read /proc/self/task/%d/status", who, tid, tid);
        return 0;
    }
#define CMPF(f, name)                                                                          \
    if (p.f != exp->f) {                                                                       \
        snprintf(why, len, "%s (tid %d): /proc " name " = %016llx, expected %016llx", who, tid,  \
                 (unsigned long long)p.f, (unsigned long long)exp->f);                        \
        return 0;                                                                              \
    }
    CMPF(pnd, "SigPnd") CMPF(shd, "ShdPnd") CMPF(blk, "SigBlk") CMPF(ign, "SigIgn")
    CMPF(cgt, "SigCgt")
#undef CMPF
    return 1;
}

/* ---- pending queues: dequeue, verify, queue again ---- */
struct qent { int code; int value; };

/* Dequeues every pending `sig` visible to the calling thread and compares with exp[0..n). */
static int drain(const char *who, int sig, const struct qent *exp, int n, char *why, size_t len)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    struct timespec zero = {0, 0};
    int ok = 1;
    for (int i = 0; i < n + 8; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        /* The raw syscall: glibc's sigtimedwait() turns SI_TKILL into SI_USER. */
        int r = (int)syscall(SYS_rt_sigtimedwait, &set, &si, &zero, 8);
        if (r < 0) {
            if (errno != EAGAIN) {
                if (ok) snprintf(why, len, "%s: sigtimedwait(%d): %s", who, sig, strerror(errno));
                return 0;
            }
            if (i < n && ok) {
                snprintf(why, len, "%s: signal %d queued %d times, expected %d", who, sig, i, n);
                ok = 0;
            }
            return ok;
        }
        if (!ok) continue;
        if (i >= n) {
            snprintf(why, len, "%s: signal %d queued more than %d times (extra: code %d value %d)",
                     who, sig, n, si.si_code, si.si_value.sival_int);
            ok = 0;
        } else if (r != sig || si.si_signo != sig) {
            snprintf(why, len, "%s: entry %d: sigtimedwait returned %d (si_signo %d), expected %d",
                     who, i, r, si.si_signo, sig);
            ok = 0;
        } else if (si.si_code != exp[i].code) {
            snprintf(why, len, "%s: signal %d entry %d: si_code %d, expected %d", who, sig, i,
                     si.si_code, exp[i].code);
            ok = 0;
        } else if (si.si_pid != pid || si.si_uid != getuid()) {
            snprintf(why, len, "%s: signal %d entry %d: si_pid %d si_uid %d, expected %d and %d",
                     who, sig, i, si.si_pid, si.si_uid, pid, getuid());
            ok = 0;
        } else if (exp[i].code == SI_QUEUE && si.si_value.sival_int != exp[i].value) {
            snprintf(why, len, "%s: signal %d entry %d: si_value %d, expected %d", who, sig, i,
                     si.si_value.sival_int, exp[i].value);
            ok = 0;
        }
    }
    return ok;
}

static const struct qent Q_PWR[] = {{SI_USER, 0}};
static const struct qent Q_RT3[] = {{SI_QUEUE, 301}, {SI_QUEUE, 302}, {SI_QUEUE, 303}};
static const struct qent Q_QUIT[] = {{SI_TKILL, 0}};
static const struct qent Q_RT6[] = {{SI_QUEUE, 601}, {SI_QUEUE, 602}};
static const struct qent Q_PROF[] = {{SI_TKILL, 0}};
static const struct qent Q_RT4[] = {{SI_QUEUE, 401}, {SI_QUEUE, 402}};

static void queue_shared(void)
{
    kill(pid, SIGPWR);
    for (int i = 0; i < 3; i++)
        sigqueue(pid, SIGRTMIN + 3, (union sigval){.sival_int = Q_RT3[i].value});
}

static void queue_main_private(void)
{
    syscall(SYS_tgkill, pid, gettid_(), SIGQUIT);
    for (int i = 0; i < 2; i++)
        pthread_sigqueue(pthread_self(), SIGRTMIN + 6, (union sigval){.sival_int = Q_RT6[i].value});
}

static void queue_t2_private(void) /* called by t2 itself, or by main for t2 at setup */
{
    syscall(SYS_tgkill, pid, t2_tid, SIGPROF);
    for (int i = 0; i < 2; i++)
        pthread_sigqueue(t2_thread, SIGRTMIN + 4, (union sigval){.sival_int = Q_RT4[i].value});
}

/* ---- t2: sleeps; checks itself on request ---- */
static volatile long t2_req, t2_done;
static char t2_verdict[512];
static volatile int t2_started, t3_started;

static void t2_self_check(void)
{
    char *v = t2_verdict;
    size_t n = sizeof(t2_verdict);
    v[0] = 0;
    stack_t s;
    uint64_t m = blocked_now();
    sigaltstack(NULL, &s);
    if (gettid_() != t2_tid)
        snprintf(v, n, "t2: gettid() = %d, recorded %d", gettid_(), t2_tid);
    else if (m != t2_mask)
        snprintf(v, n, "t2: blocked mask %016llx, expected %016llx", (unsigned long long)m,
                 (unsigned long long)t2_mask);
    else if (s.ss_sp != t2_alt.ss_sp || s.ss_size != t2_alt.ss_size ||
             s.ss_flags != t2_alt.ss_flags)
        snprintf(v, n, "t2: sigaltstack sp %p size %zu flags %#x, expected %p %zu %#x", s.ss_sp,
                 s.ss_size, s.ss_flags, t2_alt.ss_sp, t2_alt.ss_size, t2_alt.ss_flags);
    else if (!drain("t2 private", SIGPROF, Q_PROF, 1, v, n))
        ;
    else
        drain("t2 private", SIGRTMIN + 4, Q_RT4, 2, v, n);
    /* Whatever was found, put the expected queue back. */
    queue_t2_private();
}

static void *t2_main(void *arg)
{
    (void)arg;
    t2_tid = gettid_();
    sigset_t m = set_of(t2_mask);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    t2_alt.ss_sp = mmap(NULL, T2_ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    t2_alt.ss_size = T2_ALT_SIZE;
    t2_alt.ss_flags = SS_AUTODISARM;
    if (t2_alt.ss_sp == MAP_FAILED || sigaltstack(&t2_alt, NULL)) {
        perror("t2: sigaltstack");
        exit(2);
    }
    __atomic_store_n(&t2_started, 1, __ATOMIC_RELEASE);
    for (;;) {
        long r = __atomic_load_n(&t2_req, __ATOMIC_ACQUIRE);
        if (r != t2_done) {
            t2_self_check();
            __atomic_store_n(&t2_done, r, __ATOMIC_RELEASE);
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* ---- t3: blocked in read() on a pipe ---- */
static volatile long t3_seq;
static volatile int t3_r, t3_err;
static volatile char t3_c;
static char t3_verdict[512];

static void t3_self_check(void)
{
    char *v = t3_verdict;
    size_t n = sizeof(t3_verdict);
    v[0] = 0;
    stack_t s;
    uint64_t m = blocked_now();
    sigaltstack(NULL, &s);
    if (gettid_() != t3_tid)
        snprintf(v, n, "t3: gettid() = %d, recorded %d", gettid_(), t3_tid);
    else if (m != t3_mask)
        snprintf(v, n, "t3: blocked mask %016llx, expected %016llx", (unsigned long long)m,
                 (unsigned long long)t3_mask);
    else if (s.ss_flags != SS_DISABLE)
        snprintf(v, n, "t3: sigaltstack flags %#x (sp %p size %zu), expected SS_DISABLE",
                 s.ss_flags, s.ss_sp, s.ss_size);
}

static void *t3_main(void *arg)
{
    (void)arg;
    t3_tid = gettid_();
    sigset_t m = set_of(t3_mask);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    __atomic_store_n(&t3_started, 1, __ATOMIC_RELEASE);
    for (;;) {
        char c = 0;
        ssize_t r = read(t3_pipe[0], &c, 1);
        int e = errno;
        if (r == 1 && c == 'c') t3_self_check();
        t3_r = (int)r;
        t3_err = r < 0 ? e : 0;
        t3_c = c;
        __atomic_add_fetch(&t3_seq, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* 1 when t3 sits in read(2) (/proc/self/task/T3/syscall starts with "0 "). */
static int t3_in_read(void)
{
    char path[64], buf[64] = {0};
    snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", t3_tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    return n > 2 && buf[0] == '0' && buf[1] == ' ';
}

static int wait_t3_in_read(char *why, size_t len)
{
    double t0 = wl_now();
    while (!t3_in_read()) {
        if (wl_now() - t0 > 3.0) {
            snprintf(why, len, "t3 (tid %d) not blocked in read() within 3 s", t3_tid);
            return 0;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

static int wait_t3_seq(long seq, char *why, size_t len, const char *what)
{
    double t0 = wl_now();
    while (__atomic_load_n(&t3_seq, __ATOMIC_ACQUIRE) < seq) {
        if (wl_now() - t0 > 3.0) {
            snprintf(why, len, "t3: read() did not return within 3 s (%s)", what);
            return 0;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* ---- dispositions ---- */
struct want { int sig; void *handler; int flags; uint64_t mask; };
static struct want wants[16];
static int nwants;

static void install(int sig, void *handler, int flags, uint64_t mask)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    if (flags & SA_SIGINFO) sa.sa_sigaction = handler;
    else sa.sa_handler = handler;
    sa.sa_flags = flags;
    sa.sa_mask = set_of(mask);
    if (sigaction(sig, &sa, NULL)) {
        perror("sigaction");
        exit(2);
    }
    wants[nwants++] = (struct want){sig, handler, flags, mask};
}

static int check_dispositions(char *why, size_t len)
{
    for (int i = 0; i < nwants; i++) {
        struct sigaction old;
        const struct want *w = &wants[i];
        if (sigaction(w->sig, NULL, &old)) {
            snprintf(why, len, "sigaction(%d, NULL, &old): %s", w->sig, strerror(errno));
            return 0;
        }
        void *h = (w->flags & SA_SIGINFO) ? (void *)old.sa_sigaction : (void *)old.sa_handler;
        int fl = old.sa_flags & ~SA_RESTORER;
        uint64_t m = bits_of(&old.sa_mask);
        if (h != w->handler || fl != w->flags || m != w->mask) {
            snprintf(why, len,
                     "signal %d: sigaction() reports handler %p flags %#x mask %016llx, "
                     "set up %p %#x %016llx",
                     w->sig, h, fl, (unsigned long long)m, w->handler, w->flags,
                     (unsigned long long)w->mask);
            return 0;
        }
    }
    for (int sig = 1; sig <= 64; sig++) {
        struct ksigaction k;
        memset(&k, 0, sizeof(k));
        if (rt_sigaction_get(sig, &k)) {
            snprintf(why, len, "rt_sigaction(%d, NULL, &old): %s", sig, strerror(errno));
            return 0;
        }
        const struct ksigaction *r = &recorded[sig];
        if (memcmp(&k, r, sizeof(k))) {
            snprintf(why, len,
                     "signal %d: disposition handler %#llx flags %#llx restorer %#llx mask %016llx, "
                     "recorded %#llx %#llx %#llx %016llx",
                     sig, (unsigned long long)k.handler, (unsigned long long)k.flags,
                     (unsigned long long)k.restorer, (unsigned long long)k.mask,
                     (unsigned long long)r->handler, (unsigned long long)r->flags,
                     (unsigned long long)r->restorer, (unsigned long long)r->mask);
            return 0;
        }
    }
    return 1;
}

/* ---- the check ---- */
static int check(char *why, size_t len)
{
    if (gettid_() != main_tid || getpid() != pid) {
        snprintf(why, len, "main: gettid() = %d getpid() = %d, recorded %d", gettid_(), getpid(),
                 main_tid);
        return 0;
    }
    /* 1. Dispositions. */
    if (!check_dispositions(why, len)) return 0;
    /* 2. /proc view: blocked, pending, ignored, caught, per thread. */
    if (!cmp_procsig("main", main_tid, &rec_main, why, len)) return 0;
    if (!cmp_procsig("t2", t2_tid, &rec_t2, why, len)) return 0;
    if (!cmp_procsig("t3", t3_tid, &rec_t3, why, len)) return 0;
    /* 3. Main thread's own mask and alternate stack. */
    uint64_t m = blocked_now();
    if (m != main_mask) {
        snprintf(why, len, "main: blocked mask %016llx, expected %016llx", (unsigned long long)m,
                 (unsigned long long)main_mask);
        return 0;
    }
    stack_t s;
    sigaltstack(NULL, &s);
    if (s.ss_sp != main_alt.ss_sp || s.ss_size != main_alt.ss_size || s.ss_flags != main_alt.ss_flags) {
        snprintf(why, len, "main: sigaltstack sp %p size %zu flags %#x, expected %p %zu %#x",
                 s.ss_sp, s.ss_size, s.ss_flags, main_alt.ss_sp, main_alt.ss_size,
                 main_alt.ss_flags);
        return 0;
    }
    /* 4. Queues visible to main: shared ones and main's own; queued again whatever happens. */
    int ok = drain("shared", SIGPWR, Q_PWR, 1, why, len) &&
             drain("shared", SIGRTMIN + 3, Q_RT3, 3, why, len) &&
             drain("main private", SIGQUIT, Q_QUIT, 1, why, len) &&
             drain("main private", SIGRTMIN + 6, Q_RT6, 2, why, len);
    if (!ok) {
        /* Leave the queues as set up (drain what is left first). */
        char dummy[512];
        drain("", SIGPWR, Q_PWR, 1, dummy, sizeof(dummy));
        drain("", SIGRTMIN + 3, Q_RT3, 3, dummy, sizeof(dummy));
        drain("", SIGQUIT, Q_QUIT, 1, dummy, sizeof(dummy));
        drain("", SIGRTMIN + 6, Q_RT6, 2, dummy, sizeof(dummy));
    }
    queue_shared();
    queue_main_private();
    if (!ok) return 0;

    /* 5a. SIGUSR1 to main: on main's alternate stack, SA_SIGINFO, mask main|sa_mask|USR1. */
    if (!send_and_wait(main_tid, SIGUSR1, why, len)) return 0;
    uint64_t want = main_mask | usr1_samask | BIT(SIGUSR1);
    if (!hrec.has_info || hrec.code != SI_TKILL || hrec.pid != pid || hrec.uid != (int)getuid()) {
        snprintf(why, len, "SIGUSR1 in main: siginfo code %d pid %d uid %d, expected %d %d %d",
                 hrec.code, hrec.pid, hrec.uid, SI_TKILL, pid, getuid());
        return 0;
    }
    if (!on_stack(hrec.sp, &main_alt) || !(hrec.alt_in.ss_flags & SS_ONSTACK)) {
        snprintf(why, len,
                 "SIGUSR1 (SA_ONSTACK) in main ran with sp %#lx, sigaltstack flags %#x: not on "
                 "the alternate stack %p+%zu",
                 (unsigned long)hrec.sp, hrec.alt_in.ss_flags, main_alt.ss_sp, main_alt.ss_size);
        return 0;
    }
    if (hrec.uc_stack.ss_sp != main_alt.ss_sp || hrec.uc_stack.ss_size != main_alt.ss_size ||
        hrec.uc_stack.ss_flags != 0) {
        snprintf(why, len, "SIGUSR1 in main: uc_stack %p+%zu flags %#x, expected %p+%zu 0",
                 hrec.uc_stack.ss_sp, hrec.uc_stack.ss_size, hrec.uc_stack.ss_flags,
                 main_alt.ss_sp, main_alt.ss_size);
        return 0;
    }
    if (hrec.mask != want) {
        snprintf(why, len, "SIGUSR1 in main: blocked in handler %016llx, expected %016llx",
                 (unsigned long long)hrec.mask, (unsigned long long)want);
        return 0;
    }
    /* 5b. SIGUSR1 to t2: on t2's SS_AUTODISARM stack (disarmed inside the handler). */
    if (!send_and_wait(t2_tid, SIGUSR1, why, len)) return 0;
    want = t2_mask | usr1_samask | BIT(SIGUSR1);
    if (!on_stack(hrec.sp, &t2_alt) || hrec.alt_in.ss_flags != SS_DISABLE) {
        snprintf(why, len,
                 "SIGUSR1 (SA_ONSTACK) in t2 ran with sp %#lx, sigaltstack flags %#x: expected "
                 "on %p+%zu and SS_DISABLE (SS_AUTODISARM)",
                 (unsigned long)hrec.sp, hrec.alt_in.ss_flags, t2_alt.ss_sp, t2_alt.ss_size);
        return 0;
    }
    if (hrec.uc_stack.ss_sp != t2_alt.ss_sp || hrec.uc_stack.ss_size != t2_alt.ss_size ||
        hrec.uc_stack.ss_flags != (int)SS_AUTODISARM) {
        snprintf(why, len, "SIGUSR1 in t2: uc_stack %p+%zu flags %#x, expected %p+%zu %#x",
                 hrec.uc_stack.ss_sp, hrec.uc_stack.ss_size, hrec.uc_stack.ss_flags,
                 t2_alt.ss_sp, t2_alt.ss_size, (int)SS_AUTODISARM);
        return 0;
    }
    if (hrec.mask != want) {
        snprintf(why, len, "SIGUSR1 in t2: blocked in handler %016llx, expected %016llx",
                 (unsigned long long)hrec.mask, (unsigned long long)want);
        return 0;
    }
    /* 5c. SIGUSR2 to t2: plain handler, off the alternate stack (which SS_AUTODISARM disarms
     * during any handler), SA_NODEFER, SA_RESETHAND (disposition put back at once). */
    if (!send_and_wait(t2_tid, SIGUSR2, why, len)) {
        syscall(SYS_rt_sigaction, SIGUSR2, &recorded[SIGUSR2], NULL, 8);
        return 0;
    }
    struct ksigaction k;
    rt_sigaction_get(SIGUSR2, &k);
    if (syscall(SYS_rt_sigaction, SIGUSR2, &recorded[SIGUSR2], NULL, 8)) {
        snprintf(why, len, "re-installing SIGUSR2: %s", strerror(errno));
        return 0;
    }
    if (k.handler != (uint64_t)SIG_DFL) {
        snprintf(why, len, "SIGUSR2 (SA_RESETHAND): handler %#llx after delivery, expected SIG_DFL",
                 (unsigned long long)k.handler);
        return 0;
    }
    want = t2_mask | usr2_samask; /* SA_NODEFER: SIGUSR2 itself not blocked */
    if (on_stack(hrec.sp, &t2_alt) || hrec.alt_in.ss_flags != SS_DISABLE) {
        snprintf(why, len,
                 "SIGUSR2 (no SA_ONSTACK) in t2: sp %#lx, sigaltstack %p flags %#x; expected off "
                 "%p+%zu, disarmed (SS_DISABLE)",
                 (unsigned long)hrec.sp, hrec.alt_in.ss_sp, hrec.alt_in.ss_flags, t2_alt.ss_sp,
                 t2_alt.ss_size);
        return 0;
    }
    if (hrec.mask != want) {
        snprintf(why, len,
                 "SIGUSR2 (SA_NODEFER) in t2: blocked in handler %016llx, expected %016llx",
                 (unsigned long long)hrec.mask, (unsigned long long)want);
        return 0;
    }
    /* 5d. t3 in read(): RTMIN+2 (SA_RESTART) keeps it in read; RTMIN+7 makes it fail EINTR. */
    if (!wait_t3_in_read(why, len)) return 0;
    long seq0 = __atomic_load_n(&t3_seq, __ATOMIC_ACQUIRE);
    if (!send_and_wait(t3_tid, SIGRTMIN + 2, why, len)) return 0;
    want = t3_mask | rt2_samask | BIT(SIGRTMIN + 2);
    if (hrec.mask != want || hrec.alt_in.ss_flags != SS_DISABLE || hrec.code != SI_TKILL) {
        snprintf(why, len,
                 "RTMIN+2 in t3: blocked in handler %016llx (expected %016llx), sigaltstack flags "
                 "%#x (expected SS_DISABLE), si_code %d (expected %d)",
                 (unsigned long long)hrec.mask, (unsigned long long)want, hrec.alt_in.ss_flags,
                 hrec.code, SI_TKILL);
        return 0;
    }
    struct timespec ts = {0, 30000000};
    nanosleep(&ts, NULL);
    if (__atomic_load_n(&t3_seq, __ATOMIC_ACQUIRE) != seq0) {
        snprintf(why, len, "t3: read() returned %d errno %d after RTMIN+2 (SA_RESTART): not restarted",
                 t3_r, t3_err);
        return 0;
    }
    if (write(t3_pipe[1], "a", 1) != 1) {
        snprintf(why, len, "write to t3's pipe: %s", strerror(errno));
        return 0;
    }
    if (!wait_t3_seq(seq0 + 1, why, len, "after writing 'a'")) return 0;
    if (t3_r != 1 || t3_c != 'a') {
        snprintf(why, len, "t3: restarted read() returned %d (errno %d) byte %#x, expected 1 'a'",
                 t3_r, t3_err, t3_c);
        return 0;
    }
    if (!wait_t3_in_read(why, len)) return 0;
    if (!send_and_wait(t3_tid, SIGRTMIN + 7, why, len)) return 0;
    if (!wait_t3_seq(seq0 + 2, why, len, "after RTMIN+7 without SA_RESTART")) return 0;
    if (t3_r != -1 || t3_err != EINTR) {
        snprintf(why, len, "t3: read() interrupted by RTMIN+7 (no SA_RESTART) returned %d errno %d, "
                 "expected -1 EINTR", t3_r, t3_err);
        return 0;
    }
    if (write(t3_pipe[1], "c", 1) != 1) {
        snprintf(why, len, "write to t3's pipe: %s", strerror(errno));
        return 0;
    }
    if (!wait_t3_seq(seq0 + 3, why, len, "self-check")) return 0;
    if (t3_verdict[0]) {
        snprintf(why, len, "%s", t3_verdict);
        return 0;
    }
    /* 5e. SIGHUP is ignored: sent, discarded, nothing runs. */
    int c0 = hrec.count;
    kill(pid, SIGHUP);
    nanosleep(&ts, NULL);
    if (hrec.count != c0) {
        snprintf(why, len, "SIGHUP (SIG_IGN) ran a handler (signal %d)", hrec.sig);
        return 0;
    }
    /* 6. t2 checks its own mask, stack and private queue. */
    __atomic_store_n(&t2_req, wl_answered, __ATOMIC_RELEASE);
    double t0 = wl_now();
    while (__atomic_load_n(&t2_done, __ATOMIC_ACQUIRE) != wl_answered) {
        if (wl_now() - t0 > 5.0) {
            snprintf(why, len, "t2 (tid %d) did not answer its self-check in 5 s", t2_tid);
            return 0;
        }
        wl_nap();
    }
    if (t2_verdict[0]) {
        snprintf(why, len, "%s", t2_verdict);
        return 0;
    }
    /* 7. Everything queued again, dispositions back as recorded. */
    if (!check_dispositions(why, len)) return 0;
    if (!cmp_procsig("main (after the check)", main_tid, &rec_main, why, len)) return 0;
    if (!cmp_procsig("t2 (after the check)", t2_tid, &rec_t2, why, len)) return 0;
    if (!cmp_procsig("t3 (after the check)", t3_tid, &rec_t3, why, len)) return 0;
    return 1;
}

static void setup_expect(const char *who, pid_t tid, struct procsig *rec, uint64_t pnd,
                         uint64_t shd, uint64_t blk, uint64_t ign, uint64_t cgt)
{
    if (read_procsig(tid, rec)) {
        fprintf(stderr, "signals: setup: cannot read /proc status of %s\n", who);
        exit(2);
    }
    /* SigIgn/SigCgt may hold bits set by libc: ours must be there, the rest is recorded. */
    if (rec->pnd != pnd || rec->shd != shd || rec->blk != blk || (rec->ign & ign) != ign ||
        (rec->cgt & cgt) != cgt) {
        fprintf(stderr,
                "signals: setup: %s /proc SigPnd %016llx ShdPnd %016llx SigBlk %016llx SigIgn "
                "%016llx SigCgt %016llx; expected %016llx %016llx %016llx, ign>=%016llx "
                "cgt>=%016llx\n",
                who, (unsigned long long)rec->pnd, (unsigned long long)rec->shd,
                (unsigned long long)rec->blk, (unsigned long long)rec->ign,
                (unsigned long long)rec->cgt, (unsigned long long)pnd, (unsigned long long)shd,
                (unsigned long long)blk, (unsigned long long)ign, (unsigned long long)cgt);
        exit(2);
    }
}

int main(void)
{
    wl_init();
    pid = getpid();
    main_tid = gettid_();
    if (pipe2(t3_pipe, O_CLOEXEC)) { perror("pipe"); return 2; }

    /* Dispositions. */
    usr1_samask = BIT(SIGUSR2) | BIT(SIGRTMIN + 5);
    usr2_samask = BIT(SIGTERM);
    rt2_samask = BIT(SIGALRM);
    install(SIGUSR1, (void *)h_info, SA_SIGINFO | SA_RESTART | SA_ONSTACK, usr1_samask);
    install(SIGUSR2, (void *)h_plain, SA_NODEFER | SA_RESETHAND, usr2_samask);
    install(SIGRTMIN + 2, (void *)h_info, SA_SIGINFO | SA_RESTART, rt2_samask);
    install(SIGRTMIN + 7, (void *)h_info, SA_SIGINFO, 0);
    install(SIGHUP, (void *)SIG_IGN, 0, 0);
    install(SIGPIPE, (void *)SIG_IGN, 0, 0);
    install(SIGTERM, (void *)SIG_DFL, SA_RESTART, BIT(SIGINT));
    install(SIGWINCH, (void *)SIG_DFL, 0, 0);
    /* Blocked and pending below: SIG_DFL whatever the parent left (a shell ignores them). */
    install(SIGINT, (void *)SIG_DFL, 0, 0);
    install(SIGQUIT, (void *)SIG_DFL, 0, 0);

    /* Masks: the shared signals are blocked everywhere (threads inherit, then add their own). */
    shared_bits = BIT(SIGPWR) | BIT(SIGRTMIN + 3);
    main_mask = shared_bits | BIT(SIGINT) | BIT(SIGQUIT) | BIT(SIGRTMIN + 6);
    t2_mask = shared_bits | BIT(SIGPROF) | BIT(SIGTTOU) | BIT(SIGRTMIN + 4);
    t3_mask = shared_bits | BIT(SIGXFSZ);
    sigset_t m = set_of(shared_bits);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    pthread_t t3;
    if (pthread_create(&t2_thread, NULL, t2_main, NULL) || pthread_create(&t3, NULL, t3_main, NULL)) {
        perror("pthread_create");
        return 2;
    }
    while (!__atomic_load_n(&t2_started, __ATOMIC_ACQUIRE) ||
           !__atomic_load_n(&t3_started, __ATOMIC_ACQUIRE))
        wl_nap();
    m = set_of(main_mask);
    pthread_sigmask(SIG_SETMASK, &m, NULL);
    if (blocked_now() != main_mask) {
        fprintf(stderr, "signals: main mask %016llx, expected %016llx\n",
                (unsigned long long)blocked_now(), (unsigned long long)main_mask);
        return 2;
    }

    /* Main's alternate stack. */
    main_alt.ss_sp = mmap(NULL, MAIN_ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    main_alt.ss_size = MAIN_ALT_SIZE;
    main_alt.ss_flags = 0;
    if (main_alt.ss_sp == MAP_FAILED || sigaltstack(&main_alt, NULL)) {
        perror("sigaltstack");
        return 2;
    }

    /* Pending signals. */
    queue_shared();
    queue_main_private();
    queue_t2_private();

    for (int sig = 1; sig <= 64; sig++)
        if (rt_sigaction_get(sig, &recorded[sig])) {
            perror("rt_sigaction");
            return 2;
        }
    uint64_t ign = BIT(SIGHUP) | BIT(SIGPIPE);
    uint64_t cgt = BIT(SIGUSR1) | BIT(SIGUSR2) | BIT(SIGRTMIN + 2) | BIT(SIGRTMIN + 7);
    setup_expect("main", main_tid, &rec_main, BIT(SIGQUIT) | BIT(SIGRTMIN + 6), shared_bits,
                 main_mask, ign, cgt);
    setup_expect("t2", t2_tid, &rec_t2, BIT(SIGPROF) | BIT(SIGRTMIN + 4), shared_bits, t2_mask,
                 ign, cgt);
    setup_expect("t3", t3_tid, &rec_t3, 0, shared_bits, t3_mask, ign, cgt);
    fprintf(stderr,
            "signals: pid %d main %d t2 %d t3 %d; main alt %p+%d, t2 alt %p+%d; SigIgn %016llx "
            "SigCgt %016llx\n",
            pid, main_tid, t2_tid, t3_tid, main_alt.ss_sp, MAIN_ALT_SIZE, t2_alt.ss_sp,
            T2_ALT_SIZE, (unsigned long long)rec_main.ign, (unsigned long long)rec_main.cgt);
    wl_ready();
    for (;;) {
        wl_answer_check("signals", check);
        wl_nap();
    }
}
