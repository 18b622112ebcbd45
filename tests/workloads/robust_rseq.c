/*
 * robust_rseq: the robust futex list and the rseq registration of every thread.
 *
 * Threads (each records at start what the kernel has for it, checked on every check):
 *  - main:   glibc's robust list head and glibc's rseq area (__rseq_offset from the thread
 *            pointer; the registered length is probed: the one that gives EBUSY);
 *  - holder: glibc's head; holds the robust mutex M (so M is on its list: head->list.next ==
 *            &M.__data.__list.__next, M's lock word and __owner are its TID);
 *  - custom: set_robust_list() with its own head (one entry whose futex word holds its TID);
 *  - manual: unregisters glibc's rseq and registers its own area with its own signature
 *            (RSEQ_SIG_MANUAL); its robust list is set to NULL.
 * A check verifies, in each thread:
 *  - get_robust_list(0) returns the recorded head and length; main also asks
 *    get_robust_list(tid) for every thread;
 *  - the rseq registration is in force: the kernel rewrites cpu_id after it was overwritten
 *    with a sentinel (>= 0 and equal to getcpu()), and a new rseq() of the same area, length
 *    and signature fails with EBUSY (same area, length and signature; EINVAL/EPERM/success
 *    tell what differs); for manual also: the same area with another signature gives EPERM,
 *    glibc's area gives EINVAL, and glibc's area still holds cpu_id = RSEQ_CPU_ID_UNINITIALIZED.
 * Then the robust list is exercised: holder and custom exit without releasing anything; the
 * kernel must walk their (restored) lists: custom's futex word (its TID) becomes FUTEX_OWNER_DIED
 * and pthread_mutex_timedlock(M) in main returns EOWNERDEAD. M is made consistent, unlocked,
 * and new holder/custom threads are started for the next round (so every check after a
 * restore exercises lists that went through the dump).
 */
#include "wl.h"
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

#define RSEQ_SIG_MANUAL 0x5AFE5EEDu
#define SENTINEL 0xfffffff0u /* never a CPU number, not one of the kernel's special values */

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static long rseq_sys(void *area, uint32_t len, int flags, uint32_t sig)
{
    return syscall(SYS_rseq, area, len, flags, sig);
}

static int getcpu_raw(void)
{
    unsigned cpu = 0;
    if (syscall(SYS_getcpu, &cpu, NULL, NULL)) return -1;
    return (int)cpu;
}

static struct rseq *glibc_rseq_area(void)
{
    return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* What one thread recorded at start. */
struct th {
    const char *name;
    pid_t tid;
    void *robust_head;
    size_t robust_len;
    struct rseq *rseq_area;
    uint32_t rseq_len, rseq_sig;
    struct rseq *glibc_area;     /* manual: glibc's (unregistered) area */
    uint32_t glibc_area_cpu_id;  /* manual: its cpu_id at setup */
    volatile int started, stop;
    volatile long req, done;
    char verdict[512];
};

static struct th t_main = {.name = "main"}, t_holder = {.name = "holder"},
                 t_custom = {.name = "custom"}, t_manual = {.name = "manual"};
static pthread_t p_holder, p_custom, p_manual;
static pthread_mutex_t M;

/* custom's robust list: head -> entry -> head; the futex word follows the list pointer. */
struct my_entry {
    struct robust_list list;
    uint32_t futex;
};
static struct robust_list_head custom_head;
static struct my_entry custom_entry;

static struct rseq manual_area __attribute__((aligned(32)));

/* The registered length of glibc's area: the one for which a new registration says EBUSY. */
static uint32_t probe_glibc_len(struct rseq *area)
{
    uint32_t lens[2] = {32, __rseq_size};
    for (int i = 0; i < 2; i++) {
        if (lens[i] < 20) continue;
        long r = rseq_sys(area, lens[i], 0, RSEQ_SIG);
        if (r == 0) { /* was not registered: undo ours */
            rseq_sys(area, lens[i], RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
            return 0;
        }
        if (errno == EBUSY) return lens[i];
    }
    return 0;
}

/* Records robust list and rseq registration of the calling thread. */
static void record(struct th *t)
{
    t->tid = gettid_();
    if (syscall(SYS_get_robust_list, 0, &t->robust_head, &t->robust_len)) {
        perror("get_robust_list");
        exit(2);
    }
}

static void record_glibc_rseq(struct th *t)
{
    t->rseq_area = glibc_rseq_area();
    t->rseq_sig = RSEQ_SIG;
    t->rseq_len = probe_glibc_len(t->rseq_area);
    if (t->rseq_len == 0) {
        /* glibc did not register (glibc.pthread.rseq=0?): register its area ourselves. */
        if (rseq_sys(t->rseq_area, 32, 0, RSEQ_SIG)) {
            fprintf(stderr, "robust_rseq: %s: rseq register: %s\n", t->name, strerror(errno));
            exit(2);
        }
        t->rseq_len = 32;
    }
}

/* Verifies the calling thread against its record; fills t->verdict ("" = ok). */
static void self_check(struct th *t)
{
    char *v = t->verdict;
    size_t n = sizeof(t->verdict);
    v[0] = 0;
    pid_t tid = gettid_();
    if (tid != t->tid) {
        snprintf(v, n, "%s: gettid() = %d, recorded %d", t->name, tid, t->tid);
        return;
    }
    void *head = NULL;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &head, &len)) {
        snprintf(v, n, "%s (tid %d): get_robust_list(0): %s", t->name, tid, strerror(errno));
        return;
    }
    if (head != t->robust_head || len != t->robust_len) {
        snprintf(v, n, "%s (tid %d): get_robust_list(0) = head %p len %zu, recorded %p %zu",
                 t->name, tid, head, len, t->robust_head, t->robust_len);
        return;
    }
    /* rseq: the kernel must rewrite cpu_id (a registration in force), before any probe. */
    volatile uint32_t *cpu_id = &t->rseq_area->cpu_id;
    *cpu_id = SENTINEL;
    int ok = 0;
    uint32_t c1 = SENTINEL, c2 = SENTINEL;
    int cpu = -1;
    for (int i = 0; i < 50 && !ok; i++) {
        struct timespec ts = {0, 1000000}; /* a context switch: the kernel updates the area */
        nanosleep(&ts, NULL);
        c1 = *cpu_id;
        cpu = getcpu_raw();
        c2 = *cpu_id;
        ok = c1 == c2 && (int32_t)c1 >= 0 && (int)c1 == cpu;
    }
    if (!ok) {
        if (c1 == SENTINEL)
            snprintf(v, n,
                     "%s (tid %d): rseq area %p: cpu_id still %#x (written by us) after 50 "
                     "sleeps: the kernel does not update it, registration lost",
                     t->name, tid, (void *)t->rseq_area, c1);
        else
            snprintf(v, n, "%s (tid %d): rseq area %p: cpu_id %d/%d, getcpu() %d", t->name, tid,
                     (void *)t->rseq_area, (int)c1, (int)c2, cpu);
        return;
    }
    long r = rseq_sys(t->rseq_area, t->rseq_len, 0, t->rseq_sig);
    int e = errno;
    if (r == 0) {
        rseq_sys(t->rseq_area, t->rseq_len, RSEQ_FLAG_UNREGISTER, t->rseq_sig);
        snprintf(v, n, "%s (tid %d): rseq(%p, %u, 0, %#x) succeeded: nothing was registered",
                 t->name, tid, (void *)t->rseq_area, t->rseq_len, t->rseq_sig);
        return;
    }
    if (e != EBUSY) {
        snprintf(v, n,
                 "%s (tid %d): rseq(%p, %u, 0, %#x) = %s, expected EBUSY (EINVAL: another area "
                 "or length registered, EPERM: another signature)",
                 t->name, tid, (void *)t->rseq_area, t->rseq_len, t->rseq_sig, strerror(e));
        return;
    }
    if (t->glibc_area) {
        r = rseq_sys(t->rseq_area, t->rseq_len, 0, t->rseq_sig ^ 0x1010);
        if (r != -1 || errno != EPERM) {
            snprintf(v, n, "%s (tid %d): rseq with another signature = %ld (%s), expected EPERM",
                     t->name, tid, r, strerror(errno));
            return;
        }
        r = rseq_sys(t->glibc_area, 32, 0, RSEQ_SIG);
        if (r != -1 || errno != EINVAL) {
            snprintf(v, n, "%s (tid %d): rseq of glibc's area %p = %ld (%s), expected EINVAL",
                     t->name, tid, (void *)t->glibc_area, r, strerror(errno));
            return;
        }
        uint32_t g = *(volatile uint32_t *)&t->glibc_area->cpu_id;
        if (g != t->glibc_area_cpu_id) {
            snprintf(v, n,
                     "%s (tid %d): glibc's unregistered rseq area has cpu_id %#x, recorded %#x "
                     "(registered again?)",
                     t->name, tid, g, t->glibc_area_cpu_id);
            return;
        }
    }
}

/* Thread loop: answer check requests until told to stop. */
static void serve(struct th *t)
{
    __atomic_store_n(&t->started, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
        long r = __atomic_load_n(&t->req, __ATOMIC_ACQUIRE);
        if (r != t->done) {
            self_check(t);
            __atomic_store_n(&t->done, r, __ATOMIC_RELEASE);
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

static void *holder_main(void *arg)
{
    struct th *t = arg;
    record(t);
    record_glibc_rseq(t);
    int r = pthread_mutex_lock(&M);
    if (r) {
        fprintf(stderr, "robust_rseq: holder: lock M: %s\n", strerror(r));
        exit(2);
    }
    serve(t);
    return NULL; /* exits holding M */
}

static void *custom_main(void *arg)
{
    struct th *t = arg;
    custom_entry.futex = (uint32_t)gettid_();
    custom_entry.list.next = &custom_head.list;
    custom_head.list.next = &custom_entry.list;
    custom_head.futex_offset = offsetof(struct my_entry, futex) - offsetof(struct my_entry, list);
    custom_head.list_op_pending = NULL;
    if (syscall(SYS_set_robust_list, &custom_head, sizeof(custom_head))) {
        perror("set_robust_list");
        exit(2);
    }
    record(t);
    record_glibc_rseq(t);
    serve(t);
    return NULL; /* exits "holding" its futex word */
}

static void *manual_main(void *arg)
{
    struct th *t = arg;
    if (syscall(SYS_set_robust_list, NULL, sizeof(struct robust_list_head))) {
        perror("set_robust_list(NULL)");
        exit(2);
    }
    record(t);
    struct rseq *g = glibc_rseq_area();
    uint32_t glen = probe_glibc_len(g);
    if (glen && rseq_sys(g, glen, RSEQ_FLAG_UNREGISTER, RSEQ_SIG)) {
        perror("rseq unregister");
        exit(2);
    }
    t->glibc_area = g;
    t->glibc_area_cpu_id = *(volatile uint32_t *)&g->cpu_id;
    memset(&manual_area, 0, sizeof(manual_area));
    manual_area.cpu_id = RSEQ_CPU_ID_UNINITIALIZED;
    if (rseq_sys(&manual_area, sizeof(manual_area), 0, RSEQ_SIG_MANUAL)) {
        perror("rseq register");
        exit(2);
    }
    t->rseq_area = &manual_area;
    t->rseq_len = sizeof(manual_area);
    t->rseq_sig = RSEQ_SIG_MANUAL;
    serve(t);
    return NULL;
}

static void start(struct th *t, pthread_t *p, void *(*fn)(void *))
{
    const char *name = t->name;
    memset(t, 0, sizeof(*t));
    t->name = name;
    if (pthread_create(p, NULL, fn, t)) {
        perror("pthread_create");
        exit(2);
    }
    while (!__atomic_load_n(&t->started, __ATOMIC_ACQUIRE)) wl_nap();
    fprintf(stderr, "robust_rseq: %s tid %d robust head %p len %zu rseq %p len %u sig %#x\n",
            t->name, t->tid, t->robust_head, t->robust_len, (void *)t->rseq_area, t->rseq_len,
            t->rseq_sig);
}

static int ask(struct th *t, char *why, size_t len)
{
    __atomic_store_n(&t->req, wl_answered, __ATOMIC_RELEASE);
    double t0 = wl_now();
    while (__atomic_load_n(&t->done, __ATOMIC_ACQUIRE) != wl_answered) {
        if (wl_now() - t0 > 10.0) {
            snprintf(why, len, "%s (tid %d) did not answer its self-check in 10 s", t->name, t->tid);
            return 0;
        }
        wl_nap();
    }
    if (t->verdict[0]) {
        snprintf(why, len, "%s", t->verdict);
        return 0;
    }
    return 1;
}

static int check(char *why, size_t len)
{
    struct th *all[4] = {&t_main, &t_holder, &t_custom, &t_manual};
    /* 1. Every thread's list head, seen from main (get_robust_list(tid)). */
    for (int i = 0; i < 4; i++) {
        void *head = NULL;
        size_t l = 0;
        if (syscall(SYS_get_robust_list, all[i]->tid, &head, &l)) {
            snprintf(why, len, "get_robust_list(%d) (%s): %s", all[i]->tid, all[i]->name,
                     strerror(errno));
            return 0;
        }
        if (head != all[i]->robust_head || l != all[i]->robust_len) {
            snprintf(why, len, "get_robust_list(%d) (%s) = head %p len %zu, recorded %p %zu",
                     all[i]->tid, all[i]->name, head, l, all[i]->robust_head, all[i]->robust_len);
            return 0;
        }
    }
    /* 2. What the lists hold (memory): M on holder's list, custom's entry. */
    struct robust_list_head *hh = t_holder.robust_head;
    void *m_entry = &M.__data.__list.__next;
    if ((void *)hh->list.next != m_entry) {
        snprintf(why, len, "holder's robust list head %p: first entry %p, expected M's %p",
                 (void *)hh, (void *)hh->list.next, m_entry);
        return 0;
    }
    if ((M.__data.__lock & FUTEX_TID_MASK) != (unsigned)t_holder.tid || M.__data.__owner != t_holder.tid) {
        snprintf(why, len, "M: lock word %#x owner %d, expected holder's TID %d", M.__data.__lock,
                 M.__data.__owner, t_holder.tid);
        return 0;
    }
    if (custom_entry.futex != (uint32_t)t_custom.tid || custom_head.list.next != &custom_entry.list) {
        snprintf(why, len, "custom's futex word %#x (expected its TID %d), head.next %p (expected %p)",
                 custom_entry.futex, t_custom.tid, (void *)custom_head.list.next,
                 (void *)&custom_entry.list);
        return 0;
    }
    /* 3. Each thread checks itself (get_robust_list(0), rseq). */
    self_check(&t_main);
    if (t_main.verdict[0]) {
        snprintf(why, len, "%s", t_main.verdict);
        return 0;
    }
    for (int i = 1; i < 4; i++)
        if (!ask(all[i], why, len)) return 0;
    /* 4. holder and custom die without releasing: the kernel walks their lists. */
    t_holder.stop = t_custom.stop = 1;
    pthread_join(p_holder, NULL);
    pthread_join(p_custom, NULL);
    uint32_t want = FUTEX_OWNER_DIED; /* the kernel keeps only WAITERS (none) and OWNER_DIED */
    int ok = 1;
    if (custom_entry.futex != want) {
        snprintf(why, len,
                 "custom (tid %d) exited: its futex word is %#x, expected %#x (OWNER_DIED): its "
                 "robust list %p was not walked",
                 t_custom.tid, custom_entry.futex, want, (void *)&custom_head);
        ok = 0;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 2;
    int r = pthread_mutex_timedlock(&M, &dl);
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&M);
        pthread_mutex_unlock(&M);
    } else {
        if (r == 0) pthread_mutex_unlock(&M);
        if (ok)
            snprintf(why, len,
                     "holder (tid %d) exited holding robust M: pthread_mutex_timedlock = %s, "
                     "expected EOWNERDEAD (lock word now %#x)",
                     t_holder.tid, strerror(r), M.__data.__lock);
        ok = 0;
        if (r == ETIMEDOUT) {
            /* M is lost for good (owned by a dead TID): start over with a fresh one. */
            pthread_mutexattr_t a;
            pthread_mutexattr_init(&a);
            pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
            pthread_mutex_init(&M, &a);
        }
    }
    /* 5. New holder and custom for the next round. */
    start(&t_holder, &p_holder, holder_main);
    start(&t_custom, &p_custom, custom_main);
    return ok;
}

int main(void)
{
    wl_init();
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&M, &a);
    record(&t_main);
    record_glibc_rseq(&t_main);
    fprintf(stderr, "robust_rseq: __rseq_offset %td __rseq_size %u; main tid %d robust head %p "
            "len %zu rseq %p len %u\n", __rseq_offset, __rseq_size, t_main.tid,
            t_main.robust_head, t_main.robust_len, (void *)t_main.rseq_area, t_main.rseq_len);
    start(&t_holder, &p_holder, holder_main);
    start(&t_custom, &p_custom, custom_main);
    start(&t_manual, &p_manual, manual_main);
    wl_ready();
    for (;;) {
        wl_answer_check("robust_rseq", check);
        wl_nap();
    }
}
