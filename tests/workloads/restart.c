/*
 * restart: threads and a process blocked in system calls when dumped, which must go on as if
 * nothing happened after restore (the interrupted syscall is restarted, never turned into an
 * EINTR, an early return, or lost/duplicated data).
 *
 *  - sleeper thread: nanosleep(2 s) in a loop; each call must return 0 and last >= 2 s
 *    (CLOCK_MONOTONIC); completed sleeps are counted.
 *  - abs-sleeper thread: clock_nanosleep(TIMER_ABSTIME) to now + 1.5 s, alternately on
 *    CLOCK_MONOTONIC and CLOCK_REALTIME; each must return 0 and not before its deadline.
 *  - reader thread: blocked in read() on a pipe nobody writes to between checks. At each check
 *    the main thread writes a fresh token; the reader must return exactly that token in one
 *    read (no EINTR, no lost, stale or duplicated bytes).
 *  - waiter thread: blocked in waitpid() on a child process, itself blocked in read() on a
 *    command pipe. At each check the main thread sends an exit code; the child exits with it
 *    and waitpid must return that child's PID with exactly that status. The waiter then forks
 *    the next child for the next check.
 * A check fails on any error/EINTR/early return seen by any of them, on a thread or child that
 * stops making progress, and on any mismatch, naming what was expected and what was got.
 */
#include "wl.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define SLEEP_S 2
#define ABS_NS 1500000000L

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char bad[2048]; /* first anomaly seen by a worker thread, "" if none */

static void report_bad(const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&mu);
    if (!bad[0]) {
        va_start(ap, fmt);
        vsnprintf(bad, sizeof(bad), fmt, ap);
        va_end(ap);
        fprintf(stderr, "restart: anomaly: %s\n", bad);
    }
    pthread_mutex_unlock(&mu);
}

static double ts_sec(const struct timespec *t) { return t->tv_sec + t->tv_nsec / 1e9; }

static double clock_sec(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return ts_sec(&t);
}

/* (a) relative nanosleep */
static volatile long sleeps_done;
static volatile double last_sleep_len;

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec req = {SLEEP_S, 0}, rem = {0, 0};
        double t0 = wl_now();
        int r = nanosleep(&req, &rem);
        int e = errno;
        double dt = wl_now() - t0;
        if (r != 0)
            report_bad("nanosleep(%d s) returned %d errno %d (%s) after %.3f s, rem %ld.%09ld",
                       SLEEP_S, r, e, strerror(e), dt, (long)rem.tv_sec, rem.tv_nsec);
        else if (dt < SLEEP_S)
            report_bad("nanosleep(%d s) returned 0 after only %.6f s (early return)", SLEEP_S, dt);
        last_sleep_len = dt;
        __atomic_add_fetch(&sleeps_done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* (a') absolute clock_nanosleep on two clocks */
static volatile long abs_done[2];

static void *abs_sleeper(void *arg)
{
    (void)arg;
    static const clockid_t clocks[2] = {CLOCK_MONOTONIC, CLOCK_REALTIME};
    static const char *names[2] = {"CLOCK_MONOTONIC", "CLOCK_REALTIME"};
    for (unsigned long i = 0;; i++) {
        int k = i & 1;
        struct timespec dl;
        clock_gettime(clocks[k], &dl);
        dl.tv_nsec += ABS_NS % 1000000000L;
        dl.tv_sec += ABS_NS / 1000000000L + dl.tv_nsec / 1000000000L;
        dl.tv_nsec %= 1000000000L;
        int r = clock_nanosleep(clocks[k], TIMER_ABSTIME, &dl, NULL);
        double now = clock_sec(clocks[k]);
        if (r != 0)
            report_bad("clock_nanosleep(%s, TIMER_ABSTIME) returned %d (%s), %.3f s before its "
                       "deadline", names[k], r, strerror(r), ts_sec(&dl) - now);
        else if (now < ts_sec(&dl))
            report_bad("clock_nanosleep(%s, TIMER_ABSTIME) returned 0 %.6f s before its deadline",
                       names[k], ts_sec(&dl) - now);
        __atomic_add_fetch(&abs_done[k], 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* (b) read() on a pipe */
static int data_pipe[2];
static volatile long reads_done;
static char last_read[256];
static volatile ssize_t last_read_len;

static void *reader(void *arg)
{
    (void)arg;
    for (;;) {
        char buf[256];
        ssize_t n = read(data_pipe[0], buf, sizeof(buf) - 1);
        int e = errno;
        if (n < 0) {
            report_bad("read() on the pipe returned -1 errno %d (%s)", e, strerror(e));
            continue;
        }
        if (n == 0) {
            report_bad("read() on the pipe returned 0 (EOF: write end lost?)");
            wl_nap();
            continue;
        }
        buf[n] = 0;
        pthread_mutex_lock(&mu);
        memcpy(last_read, buf, n + 1);
        last_read_len = n;
        pthread_mutex_unlock(&mu);
        __atomic_add_fetch(&reads_done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* (c) waitpid() on a child */
static int cmd_pipe[2];
static volatile pid_t cur_child;      /* child the waiter is waiting for (0: none yet) */
static volatile long waits_done;
static volatile pid_t last_wait_pid;
static volatile int last_wait_status;

static pid_t spawn_child(void)
{
    pid_t p = fork();
    if (p < 0) {
        report_bad("fork: %s", strerror(errno));
        return -1;
    }
    if (p == 0) {
        /* The child: blocked in read() on the command pipe until asked to exit with a code
         * (or EOF when the parent is gone: only the parent keeps the write end). */
        close(cmd_pipe[1]);
        unsigned char code;
        ssize_t n = read(cmd_pipe[0], &code, 1);
        if (n == 1) _exit(code);
        _exit(n == 0 ? 250 : errno == EINTR ? 251 : 252);
    }
    return p;
}

static void *waiter(void *arg)
{
    (void)arg;
    for (;;) {
        pid_t c = spawn_child();
        if (c < 0) { sleep(1); continue; }
        __atomic_store_n(&cur_child, c, __ATOMIC_RELEASE);
        int st = 0;
        pid_t r = waitpid(c, &st, 0);
        int e = errno;
        if (r < 0) {
            report_bad("waitpid(%d) returned -1 errno %d (%s)", c, e, strerror(e));
            /* do not leave it: the next check would hang on it otherwise */
            while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR) {}
            if (r < 0) { sleep(1); continue; }
        }
        last_wait_pid = r;
        last_wait_status = st;
        __atomic_add_fetch(&waits_done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Waits up to `secs` for *ctr to exceed `old`. */
static int wait_advance(volatile long *ctr, long old, double secs)
{
    double t0 = wl_now();
    while (__atomic_load_n(ctr, __ATOMIC_ACQUIRE) <= old) {
        if (wl_now() - t0 > secs) return 0;
        wl_nap();
    }
    return 1;
}

static long chk_sleeps, chk_abs[2], chk_reads, chk_waits;

static int check(char *why, size_t len)
{
    pthread_mutex_lock(&mu);
    int has_bad = bad[0] != 0;
    if (has_bad) snprintf(why, len, "%s", bad);
    pthread_mutex_unlock(&mu);
    if (has_bad) return 0;

    /* (b) nothing may have been read since the last check (nobody wrote) */
    if (reads_done != chk_reads) {
        snprintf(why, len, "reader returned %ld times since the last check, expected 0 (got \"%s\")",
                 reads_done - chk_reads, last_read);
        return 0;
    }
    /* (c) the child must still be there, blocked */
    pid_t c = __atomic_load_n(&cur_child, __ATOMIC_ACQUIRE);
    if (waits_done != chk_waits) {
        snprintf(why, len, "waitpid returned %ld times since the last check, expected 0 (pid %d "
                 "status %#x)", waits_done - chk_waits, last_wait_pid, last_wait_status);
        return 0;
    }
    if (c <= 0 || kill(c, 0) != 0) {
        snprintf(why, len, "child %d waited for is gone before being asked to exit", c);
        return 0;
    }

    /* (b) token through the pipe */
    char tok[64];
    snprintf(tok, sizeof(tok), "token-%ld-%08lx\n", wl_answered,
             (unsigned long)(wl_answered * 2654435761u) & 0xffffffffUL);
    ssize_t tl = strlen(tok);
    if (write(data_pipe[1], tok, tl) != tl) {
        snprintf(why, len, "write of the token to the pipe: %s", strerror(errno));
        return 0;
    }
    if (!wait_advance(&reads_done, chk_reads, 5.0)) {
        snprintf(why, len, "reader blocked in read() did not return the token within 5 s");
        return 0;
    }
    wl_nap(); /* a second, spurious return would show up here */
    pthread_mutex_lock(&mu);
    int ok = reads_done == chk_reads + 1 && last_read_len == tl && !memcmp(last_read, tok, tl);
    if (!ok)
        snprintf(why, len, "reader: %ld read(s) returning %zd bytes \"%s\", expected 1 read of %zd "
                 "bytes \"%s\"", reads_done - chk_reads, last_read_len, last_read, tl, tok);
    pthread_mutex_unlock(&mu);
    chk_reads = reads_done;
    if (!ok) return 0;

    /* (c) child exits with a known code, waitpid returns it */
    unsigned char code = 10 + wl_answered % 100;
    if (write(cmd_pipe[1], &code, 1) != 1) {
        snprintf(why, len, "write of the exit code to the child: %s", strerror(errno));
        return 0;
    }
    if (!wait_advance(&waits_done, chk_waits, 5.0)) {
        snprintf(why, len, "waiter blocked in waitpid(%d) did not return within 5 s after the child "
                 "was asked to exit", c);
        return 0;
    }
    chk_waits = waits_done;
    if (last_wait_pid != c || !WIFEXITED(last_wait_status) ||
        WEXITSTATUS(last_wait_status) != code) {
        snprintf(why, len, "waitpid returned pid %d status %#x (exited %d code %d), expected pid %d "
                 "exited with code %d (250: EOF, 251: EINTR, 252: error in the child's read)",
                 last_wait_pid, last_wait_status, WIFEXITED(last_wait_status),
                 WEXITSTATUS(last_wait_status), c, code);
        return 0;
    }
    /* the waiter forks the next child at once */
    double t0 = wl_now();
    while (__atomic_load_n(&cur_child, __ATOMIC_ACQUIRE) == c) {
        if (wl_now() - t0 > 5) {
            snprintf(why, len, "waiter did not fork a new child within 5 s");
            return 0;
        }
        wl_nap();
    }

    /* (a) sleepers made progress */
    if (!wait_advance(&sleeps_done, chk_sleeps, 3.0 * SLEEP_S)) {
        snprintf(why, len, "sleeper: no nanosleep(%d s) completed within %d s (done %ld)", SLEEP_S,
                 3 * SLEEP_S, sleeps_done);
        return 0;
    }
    chk_sleeps = sleeps_done;
    for (int k = 0; k < 2; k++) {
        if (!wait_advance(&abs_done[k], chk_abs[k], 5.0)) {
            snprintf(why, len, "abs-sleeper: no clock_nanosleep(%s, TIMER_ABSTIME) completed within "
                     "5 s (done %ld)", k ? "CLOCK_REALTIME" : "CLOCK_MONOTONIC", abs_done[k]);
            return 0;
        }
        chk_abs[k] = abs_done[k];
    }
    /* anomalies seen while waiting */
    pthread_mutex_lock(&mu);
    has_bad = bad[0] != 0;
    if (has_bad) snprintf(why, len, "%s", bad);
    pthread_mutex_unlock(&mu);
    return !has_bad;
}

int main(void)
{
    wl_init();
    if (pipe2(data_pipe, O_CLOEXEC) || pipe2(cmd_pipe, O_CLOEXEC)) {
        perror("pipe2");
        return 2;
    }
    pthread_t t;
    void *(*fns[4])(void *) = {sleeper, abs_sleeper, reader, waiter};
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t, NULL, fns[i], NULL)) {
            perror("pthread_create");
            return 2;
        }
    while (!__atomic_load_n(&cur_child, __ATOMIC_ACQUIRE)) wl_nap();
    /* Let every thread enter its blocking call before declaring ready. */
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    fprintf(stderr, "restart: pid %d first child %d\n", getpid(), cur_child);
    wl_ready();
    for (;;) {
        if (wl_poll()) {
            char why[2048];
            double t0 = wl_now();
            if (check(why, sizeof(why))) {
                fprintf(stderr, "restart: check %ld PASS in %.2f s (sleeps %ld, last %.3f s, abs %ld/%ld)\n",
                        wl_answered, wl_now() - t0, sleeps_done, last_sleep_len, abs_done[0],
                        abs_done[1]);
                wl_pass();
            } else {
                fprintf(stderr, "restart: check %ld FAIL: %s\n", wl_answered, why);
                wl_fail("%s", why);
            }
        }
        wl_nap();
    }
}
