/*
 * posix_timers: nine POSIX timers of a two-thread process (one id left unused: a gap),
 * checked after every restore:
 *  - /proc/self/timers reads exactly as at setup (ids, signals, values, targets, clocks);
 *  - A: CLOCK_MONOTONIC, SIGRTMIN+1 to the process, value 0x5151, every 50 ms: its handler
 *    runs about 6 times in 300 ms, each time with si_value 0x5151, si_timerid A and SI_TIMER;
 *    timer_gettime shows the 50 ms interval;
 *  - C: CLOCK_MONOTONIC, SIGRTMIN+2 to thread t2 only (SIGEV_THREAD_ID), pointer value
 *    0xc0ffee, every 30 ms: its handler runs in t2 with that value;
 *  - B: CLOCK_REALTIME, SIGEV_NONE, one-shot in 1000 s: time left never grows and stays
 *    above 900 s;
 *  - E: CLOCK_BOOTTIME, disarmed: reads 0/0;
 *  - D: CLOCK_REALTIME, SIGRTMIN+4 to the process (blocked in every thread), every 1000 s,
 *    armed at an absolute time 7.5 periods ago and its signal taken by sigtimedwait at setup:
 *    timer_getoverrun says 7, and the next expiry is about 500 s away;
 *  - F: the same aimed at t2 by t2 itself (SIGEV_THREAD_ID, SIGRTMIN+5 blocked in t2), armed
 *    3.5 periods ago: timer_getoverrun says 3;
 *    after every restore both overrun counts are still there and their time left never grows;
 *  - G: CLOCK_MONOTONIC, SIGRTMIN+6 to the process (blocked everywhere), every 1 ms, armed
 *    5.5 periods ago: timer_getoverrun says 5. Its signal stays pending, so it is never
 *    rearmed and is dumped with less than a period left (at times less than a restore round
 *    trip);
 *  - H: CLOCK_REALTIME, the same signal as G, every 1000 s, armed 2.5 periods ago:
 *    timer_getoverrun says 2 (taking the signal of one of G and H sets the other's overrun);
 *  - the timer_t handles of the program still name the same timers (timer_gettime on each).
 */
#include "wl.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>

static timer_t ta, tb, tc, te, td, tf, tg, th;
static pid_t t2_tid;
static char rec[4096];
static double b_left = 1e9, d_left = 1e9, f_left = 1e9;
static volatile int f_ready;
static char f_err[256];

static volatile int a_count, a_bad, c_count, c_bad;
static volatile int a_last_value, a_last_id, a_last_code, c_last_tid;
static volatile uintptr_t c_last_ptr;

static void on_a(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    a_last_value = si->si_value.sival_int;
    a_last_id = si->si_timerid;
    a_last_code = si->si_code;
    if (si->si_value.sival_int != 0x5151 || si->si_code != SI_TIMER || si->si_timerid != (int)(intptr_t)ta) a_bad++;
    a_count++;
}

static void on_c(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    c_last_ptr = (uintptr_t)si->si_value.sival_ptr;
    c_last_tid = (pid_t)syscall(SYS_gettid);
    if (c_last_ptr != 0xc0ffee || c_last_tid != t2_tid) c_bad++;
    c_count++;
}

/* Arms `t` (its signal blocked in the calling thread, which the signal targets) so that the
 * last delivered expiration had `overrun` overruns: an absolute start `overrun + 1/2` periods
 * ago fires at once; taking that signal rearms the timer past now, counting the periods
 * missed. Returns the overrun that the signal carried, or -1. */
static int arm_with_overrun(timer_t t, clockid_t clock, long period_ns, int signo, int overrun)
{
    struct timespec now;
    clock_gettime(clock, &now);
    long long start = now.tv_sec * 1000000000LL + now.tv_nsec - overrun * (long long)period_ns - period_ns / 2;
    struct itimerspec its = {{period_ns / 1000000000, period_ns % 1000000000}, {start / 1000000000, start % 1000000000}};
    if (timer_settime(t, TIMER_ABSTIME, &its, NULL)) return -1;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, signo);
    siginfo_t si;
    struct timespec wait = {5, 0};
    if (sigtimedwait(&s, &si, &wait) != signo || si.si_code != SI_TIMER) return -1;
    return si.si_overrun;
}

static void *t2_main(void *arg)
{
    (void)arg;
    t2_tid = (pid_t)syscall(SYS_gettid);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + 1);
    pthread_sigmask(SIG_BLOCK, &m, NULL); /* A's signal goes to the main thread */
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN + 5;
    sev._sigev_un._tid = t2_tid;
    int got;
    if (timer_create(CLOCK_REALTIME, &sev, &tf))
        snprintf(f_err, sizeof(f_err), "timer F: %s", strerror(errno));
    else if ((got = arm_with_overrun(tf, CLOCK_REALTIME, 1000000000000L, SIGRTMIN + 5, 3)) != 3)
        snprintf(f_err, sizeof(f_err), "timer F: signal with overrun %d, expected 3", got);
    f_ready = 1;
    for (;;) pause();
    return NULL;
}

static void read_timers(char *out, size_t n)
{
    FILE *f = fopen("/proc/self/timers", "r");
    out[0] = 0;
    if (!f) return;
    size_t len = fread(out, 1, n - 1, f);
    fclose(f);
    out[len] = 0;
}

static double secs(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }

static int check(char *why, size_t len)
{
    char now[4096];
    read_timers(now, sizeof(now));
    if (strcmp(now, rec)) { snprintf(why, len, "/proc/self/timers:\n%s\nrecorded:\n%s", now, rec); return 0; }
    struct itimerspec its;
    if (timer_gettime(ta, &its) || secs(its.it_interval) != 0.05 || secs(its.it_value) > 0.05) {
        snprintf(why, len, "A: timer_gettime value %.6f interval %.6f, expected <= 0.05 and 0.05", secs(its.it_value), secs(its.it_interval));
        return 0;
    }
    int a0 = a_count, c0 = c_count;
    double t0 = wl_now();
    while (wl_now() - t0 < 0.3) wl_nap();
    int da = a_count - a0, dc = c_count - c0;
    if (da < 3 || da > 9 || a_bad) {
        snprintf(why, len, "A: %d signals in 0.3 s (expected about 6), %d with a wrong siginfo (last value %#x timerid %d code %d, timer %d)",
                 da, a_bad, a_last_value, a_last_id, a_last_code, (int)(intptr_t)ta);
        return 0;
    }
    if (dc < 5 || dc > 15 || c_bad) {
        snprintf(why, len, "C: %d signals in 0.3 s (expected about 10), %d wrong (last value %#lx in tid %d, t2 is %d)",
                 dc, c_bad, (unsigned long)c_last_ptr, c_last_tid, t2_tid);
        return 0;
    }
    if (timer_gettime(tb, &its) || secs(its.it_value) > b_left || secs(its.it_value) < 900 || its.it_interval.tv_sec) {
        snprintf(why, len, "B: time left %.3f (last check %.3f), expected <= it and > 900, one-shot", secs(its.it_value), b_left);
        return 0;
    }
    b_left = secs(its.it_value);
    if (timer_gettime(te, &its) || its.it_value.tv_sec || its.it_value.tv_nsec || its.it_interval.tv_nsec) {
        snprintf(why, len, "E: not disarmed (%.3f)", secs(its.it_value));
        return 0;
    }
    if (timer_getoverrun(ta) < 0 || timer_getoverrun(tc) < 0) { snprintf(why, len, "timer_getoverrun: %s", strerror(errno)); return 0; }
    int od = timer_getoverrun(td), of = timer_getoverrun(tf), og = timer_getoverrun(tg), oh = timer_getoverrun(th);
    if (od != 7 || of != 3 || og != 5 || oh != 2) {
        snprintf(why, len, "overrun of D %d (expected 7), of F %d (expected 3), of G %d (expected 5), of H %d (expected 2)",
                 od, of, og, oh);
        return 0;
    }
    if (timer_gettime(td, &its) || secs(its.it_interval) != 1000 || secs(its.it_value) > d_left || secs(its.it_value) < 400) {
        snprintf(why, len, "D: time left %.3f (last check %.3f), interval %.3f, expected <= it, > 400 and 1000", secs(its.it_value), d_left, secs(its.it_interval));
        return 0;
    }
    d_left = secs(its.it_value);
    if (timer_gettime(tf, &its) || secs(its.it_interval) != 1000 || secs(its.it_value) > f_left || secs(its.it_value) < 400) {
        snprintf(why, len, "F: time left %.3f (last check %.3f), interval %.3f, expected <= it, > 400 and 1000", secs(its.it_value), f_left, secs(its.it_interval));
        return 0;
    }
    f_left = secs(its.it_value);
    return 1;
}

int main(void)
{
    wl_init();
    struct sigaction sa = {0};
    sa.sa_sigaction = on_a;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    sa.sa_sigaction = on_c;
    sigaction(SIGRTMIN + 2, &sa, NULL);
    /* The main thread never takes C's signal (it is aimed at t2 anyway). */
    sigset_t m;
    sigemptyset(&m);
    /* D's and F's signals stay blocked in every thread (t2 inherits this mask). */
    sigaddset(&m, SIGRTMIN + 4);
    sigaddset(&m, SIGRTMIN + 5);
    sigaddset(&m, SIGRTMIN + 6);
    pthread_sigmask(SIG_BLOCK, &m, NULL);
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + 2);
    pthread_t t2;
    if (pthread_create(&t2, NULL, t2_main, NULL)) return 2;
    while (!f_ready) wl_nap();
    if (f_err[0]) { fprintf(stderr, "%s\n", f_err); return 2; }
    pthread_sigmask(SIG_BLOCK, &m, NULL);

    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN + 1;
    sev.sigev_value.sival_int = 0x5151;
    if (timer_create(CLOCK_MONOTONIC, &sev, &ta)) { perror("timer A"); return 2; }
    sev.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_REALTIME, &sev, &tb)) { perror("timer B"); return 2; }
    timer_t gap;
    if (timer_create(CLOCK_MONOTONIC, &sev, &gap) || timer_delete(gap)) { perror("gap"); return 2; }
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN + 2;
    sev.sigev_value.sival_ptr = (void *)0xc0ffee;
    sev._sigev_un._tid = t2_tid;
    if (timer_create(CLOCK_MONOTONIC, &sev, &tc)) { perror("timer C"); return 2; }
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN + 3;
    if (timer_create(CLOCK_BOOTTIME, &sev, &te)) { perror("timer E"); return 2; }
    sev.sigev_signo = SIGRTMIN + 4;
    if (timer_create(CLOCK_REALTIME, &sev, &td)) { perror("timer D"); return 2; }
    int got = arm_with_overrun(td, CLOCK_REALTIME, 1000000000000L, SIGRTMIN + 4, 7);
    if (got != 7) { fprintf(stderr, "timer D: signal with overrun %d, expected 7\n", got); return 2; }
    sev.sigev_signo = SIGRTMIN + 6;
    if (timer_create(CLOCK_MONOTONIC, &sev, &tg)) { perror("timer G"); return 2; }
    got = arm_with_overrun(tg, CLOCK_MONOTONIC, 1000000, SIGRTMIN + 6, 5);
    if (got != 5) { fprintf(stderr, "timer G: signal with overrun %d, expected 5\n", got); return 2; }
    if (timer_create(CLOCK_REALTIME, &sev, &th)) { perror("timer H"); return 2; }
    got = arm_with_overrun(th, CLOCK_REALTIME, 1000000000000L, SIGRTMIN + 6, 2);
    if (got != 2) { fprintf(stderr, "timer H: signal with overrun %d, expected 2\n", got); return 2; }
    struct itimerspec a = {{0, 50000000}, {0, 50000000}};
    struct itimerspec b = {{0, 0}, {1000, 0}};
    struct itimerspec c = {{0, 30000000}, {0, 30000000}};
    if (timer_settime(ta, 0, &a, NULL) || timer_settime(tb, 0, &b, NULL) || timer_settime(tc, 0, &c, NULL)) { perror("timer_settime"); return 2; }
    read_timers(rec, sizeof(rec));
    fprintf(stderr, "posix_timers: A %d B %d C %d E %d D %d F %d G %d H %d t2 %d\n%s", (int)(intptr_t)ta,
            (int)(intptr_t)tb, (int)(intptr_t)tc, (int)(intptr_t)te, (int)(intptr_t)td, (int)(intptr_t)tf,
            (int)(intptr_t)tg, (int)(intptr_t)th, t2_tid, rec);
    wl_ready();
    for (;;) {
        wl_answer_check("posix_timers", check);
        wl_nap();
    }
}
