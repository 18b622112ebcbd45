/*
 * threads8: eight threads busy computing in user space when dumped.
 *
 * Checks that a multi-threaded process comes back whole: every thread exists again with its
 * own TID (clone3 set_tid per thread), its own registers (the computation keeps its state in
 * registers: a xorshift64 generator and two accumulators whose relation b == a * K (mod 2^64)
 * must always hold), its own TLS (a __thread value reached through fs_base, at the address the
 * thread saw at start), its own gs base (set with arch_prctl, unused by glibc, so only the
 * register restore can keep it), and that all threads run again (their progress counters advance).
 *
 * On a check, the main thread asks each worker to re-check itself (gettid(), TLS value and
 * address, invariant of its live registers) and waits for all eight answers; it also checks
 * that /proc/self/task lists exactly the nine TIDs recorded at start.
 */
#include "wl.h"
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <asm/prctl.h>

#define NTHREADS 8
#define KMUL 0x9E3779B97F4A7C15ull /* odd: b = a * KMUL (mod 2^64) */

struct worker {
    int index;
    pid_t tid;                     /* gettid() at start */
    uint64_t *tls_addr;            /* &tls_value seen at start */
    uint64_t tls_expected;
    volatile uint64_t progress;    /* rounds of 65536 steps */
    volatile uint64_t a_pub, b_pub; /* published accumulators, for diagnostics */
    volatile long check_req;       /* set by main: a check sequence number */
    volatile long check_done;      /* set by the worker when it answered check_req */
    char verdict[512];             /* "" = ok, else the reason */
    volatile int started;
};

static struct worker workers[NTHREADS];
static __thread uint64_t tls_value;
static __thread int tls_index = -1;
static pid_t main_tid;

static pid_t my_gettid(void) { return (pid_t)syscall(SYS_gettid); }

static uint64_t gs_expected(int index) { return 0x00005a5a00000000ull + ((uint64_t)index << 20); /* canonical, never dereferenced */ }

static uint64_t gs_base(void)
{
    uint64_t v = 0;
    syscall(SYS_arch_prctl, ARCH_GET_GS, &v);
    return v;
}

static void self_check(struct worker *w, uint64_t a, uint64_t b, uint64_t x)
{
    char *v = w->verdict;
    v[0] = 0;
    pid_t t = my_gettid();
    if (t != w->tid)
        snprintf(v, 512, "thread %d: gettid() = %d, recorded %d", w->index, t, w->tid);
    else if (&tls_value != w->tls_addr)
        snprintf(v, 512, "thread %d: &tls_value = %p, recorded %p (fs_base lost?)", w->index,
                 (void *)&tls_value, (void *)w->tls_addr);
    else if (tls_value != w->tls_expected || tls_index != w->index)
        snprintf(v, 512, "thread %d: tls_value = %#llx tls_index = %d, expected %#llx and %d",
                 w->index, (unsigned long long)tls_value, tls_index,
                 (unsigned long long)w->tls_expected, w->index);
    else if (b != a * KMUL)
        snprintf(v, 512, "thread %d: invariant broken: a = %#llx b = %#llx, a*K = %#llx",
                 w->index, (unsigned long long)a, (unsigned long long)b,
                 (unsigned long long)(a * KMUL));
    else if (gs_base() != gs_expected(w->index))
        snprintf(v, 512, "thread %d: gs base %#llx, expected %#llx", w->index,
                 (unsigned long long)gs_base(), (unsigned long long)gs_expected(w->index));
    else if (x == 0)
        snprintf(v, 512, "thread %d: xorshift state is 0 (registers zeroed?)", w->index);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    w->tid = my_gettid();
    tls_value = w->tls_expected;
    if (syscall(SYS_arch_prctl, ARCH_SET_GS, gs_expected(w->index))) {
        perror("threads8: arch_prctl(ARCH_SET_GS)");
        exit(2);
    }
    tls_index = w->index;
    w->tls_addr = &tls_value;
    __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);

    /* State lives in registers (locals at -O1); b tracks a * KMUL step by step. */
    uint64_t x = 0x2545F4914F6CDD1Dull ^ ((uint64_t)(w->index + 1) * 0x100000001B3ull);
    uint64_t a = 0, b = 0;
    for (;;) {
        for (int i = 0; i < 65536; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            a += x;
            b += x * KMUL;
        }
        if (b != a * KMUL || x == 0) {
            /* Broken between two rounds: report at once, the values are lost otherwise. */
            self_check(w, a, b, x);
            fprintf(stderr, "threads8: %s\n", w->verdict);
        }
        w->a_pub = a;
        w->b_pub = b;
        __atomic_add_fetch(&w->progress, 1, __ATOMIC_RELEASE);
        long req = __atomic_load_n(&w->check_req, __ATOMIC_ACQUIRE);
        if (req != w->check_done) {
            self_check(w, a, b, x);
            __atomic_store_n(&w->check_done, req, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

/* The TIDs listed in /proc/self/task, into out (at most max); returns the count. */
static int list_tasks(pid_t *out, int max)
{
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n < max) out[n] = atoi(e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static int check(char *why, size_t len)
{
    /* 1. The process has exactly the nine threads recorded. */
    pid_t tids[64];
    int n = list_tasks(tids, 64);
    if (my_gettid() != main_tid || getpid() != main_tid) {
        snprintf(why, len, "main: gettid() = %d getpid() = %d, recorded %d", my_gettid(), getpid(),
                 main_tid);
        return 0;
    }
    if (n != NTHREADS + 1) {
        snprintf(why, len, "/proc/self/task has %d entries, expected %d", n, NTHREADS + 1);
        return 0;
    }
    for (int i = 0; i < NTHREADS; i++) {
        int found = 0;
        for (int j = 0; j < n; j++) found |= tids[j] == workers[i].tid;
        if (!found) {
            snprintf(why, len, "thread %d (tid %d) is not in /proc/self/task", i, workers[i].tid);
            return 0;
        }
    }
    /* 2. Every worker makes progress within 2 s. */
    uint64_t p0[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) p0[i] = __atomic_load_n(&workers[i].progress, __ATOMIC_ACQUIRE);
    double start = wl_now();
    for (;;) {
        int stuck = -1;
        for (int i = 0; i < NTHREADS; i++)
            if (__atomic_load_n(&workers[i].progress, __ATOMIC_ACQUIRE) == p0[i]) stuck = i;
        if (stuck < 0) break;
        if (wl_now() - start > 2.0) {
            snprintf(why, len, "thread %d (tid %d) made no progress in 2 s (progress %llu)", stuck,
                     workers[stuck].tid, (unsigned long long)p0[stuck]);
            return 0;
        }
        wl_nap();
    }
    /* 3. Every worker re-checks itself. */
    for (int i = 0; i < NTHREADS; i++) __atomic_store_n(&workers[i].check_req, wl_answered, __ATOMIC_RELEASE);
    start = wl_now();
    for (;;) {
        int missing = -1;
        for (int i = 0; i < NTHREADS; i++)
            if (__atomic_load_n(&workers[i].check_done, __ATOMIC_ACQUIRE) != wl_answered) missing = i;
        if (missing < 0) break;
        if (wl_now() - start > 10.0) {
            snprintf(why, len, "thread %d (tid %d) did not answer its self-check in 10 s", missing,
                     workers[missing].tid);
            return 0;
        }
        wl_nap();
    }
    for (int i = 0; i < NTHREADS; i++)
        if (workers[i].verdict[0]) {
            snprintf(why, len, "%s", workers[i].verdict);
            return 0;
        }
    /* 4. The main thread's own TLS. */
    if (tls_index != -1 || tls_value != 0) {
        snprintf(why, len, "main: tls_index = %d tls_value = %#llx, expected -1 and 0", tls_index,
                 (unsigned long long)tls_value);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    wl_init();
    main_tid = my_gettid();
    for (int i = 0; i < NTHREADS; i++) {
        workers[i].index = i;
        workers[i].tls_expected = 0xA5A5000000000000ull | ((uint64_t)i << 32) | (0x1000u + i);
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, &workers[i])) {
            perror("pthread_create");
            return 2;
        }
    }
    for (int i = 0; i < NTHREADS; i++)
        while (!__atomic_load_n(&workers[i].started, __ATOMIC_ACQUIRE)) wl_nap();
    for (int i = 0; i < NTHREADS; i++)
        fprintf(stderr, "threads8: thread %d tid %d tls %p = %#llx\n", i, workers[i].tid,
                (void *)workers[i].tls_addr, (unsigned long long)workers[i].tls_expected);
    wl_ready();
    for (;;) {
        wl_answer_check("threads8", check);
        wl_nap();
    }
}
