/*
 * timerfd: five timerfds, checked after every restore (fdinfo clockid, settime flags, ticks;
 * timerfd_gettime; reads):
 *  - t1 CLOCK_MONOTONIC, relative, every 100 ms, never read between checks: the expirations
 *    pile up (read: >= 1); then the next one comes within about 100 ms and the one after
 *    about 100 ms later, reading 1 each time; its interval reads 100 ms;
 *  - t2 CLOCK_REALTIME, absolute (TFD_TIMER_ABSTIME), one-shot at setup + 1 hour: fdinfo
 *    settime flags 01; time left = the recorded deadline - now (within 1 s), interval 0;
 *  - t3 CLOCK_BOOTTIME, relative, one-shot in 1000 s: time left never grows between checks
 *    and stays above 900 s; settime flags 00;
 *  - t4 CLOCK_MONOTONIC nonblocking one-shot that expired and was not read: fdinfo ticks 1,
 *    reads 1, then EAGAIN; re-armed to expire again (unread) for the next dump;
 *  - t5 CLOCK_REALTIME disarmed, with 7 unread expirations set by TFD_IOC_SET_TICKS: fdinfo
 *    ticks 7, reads 7, gettime 0/0; set to 7 again.
 */
#include "wl.h"
#include <poll.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

static int t1, t2, t3, t4, t5;
static struct timespec t2_deadline;
static double t3_left = 1e9;

static long long fdinfo_num(int fd, const char *key, int base)
{
    char p[64], buf[4096];
    snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    char *l = strstr(buf, key);
    if (!l) return -1;
    return strtoll(l + strlen(key), NULL, base);
}

static double secs(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }

static int expect_info(const char *name, int fd, int clockid, int flags, char *why, size_t len)
{
    long long c = fdinfo_num(fd, "clockid:", 10), f = fdinfo_num(fd, "settime flags:", 8);
    if (c != clockid || f != flags) {
        snprintf(why, len, "%s: fdinfo clockid %lld settime flags %llo, expected %d %o", name, c, f, clockid, flags);
        return 0;
    }
    return 1;
}

static int wait_readable(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
}

static int check(char *why, size_t len)
{
    if (!expect_info("t1", t1, CLOCK_MONOTONIC, 0, why, len) ||
        !expect_info("t2", t2, CLOCK_REALTIME, TFD_TIMER_ABSTIME, why, len) ||
        !expect_info("t3", t3, CLOCK_BOOTTIME, 0, why, len) ||
        !expect_info("t4", t4, CLOCK_MONOTONIC, 0, why, len) ||
        !expect_info("t5", t5, CLOCK_REALTIME, 0, why, len))
        return 0;
    struct itimerspec its;
    /* t1 */
    timerfd_gettime(t1, &its);
    if (secs(its.it_interval) != 0.1 || secs(its.it_value) > 0.1 || secs(its.it_value) <= 0) {
        snprintf(why, len, "t1: gettime value %.6f interval %.6f, expected (0, 0.1] and 0.1", secs(its.it_value), secs(its.it_interval));
        return 0;
    }
    uint64_t n = 0;
    if (read(t1, &n, 8) != 8 || n < 1) { snprintf(why, len, "t1: read %llu (%s), expected >= 1", (unsigned long long)n, strerror(errno)); return 0; }
    double a = wl_now();
    if (read(t1, &n, 8) != 8 || n != 1) { snprintf(why, len, "t1: second read %llu, expected 1", (unsigned long long)n); return 0; }
    double b = wl_now();
    if (read(t1, &n, 8) != 8 || n != 1) { snprintf(why, len, "t1: third read %llu, expected 1", (unsigned long long)n); return 0; }
    double c = wl_now();
    if (b - a > 0.15 || c - b < 0.07 || c - b > 0.15) {
        snprintf(why, len, "t1: expirations %.3f s then %.3f s apart, expected <= 0.1 and about 0.1", b - a, c - b);
        return 0;
    }
    /* t2 */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    timerfd_gettime(t2, &its);
    double want = secs(t2_deadline) - secs(now);
    if (its.it_interval.tv_sec || its.it_interval.tv_nsec || secs(its.it_value) > want + 0.01 || secs(its.it_value) < want - 1) {
        snprintf(why, len, "t2: time left %.3f s interval %.3f, expected %.3f s (absolute deadline) and 0", secs(its.it_value), secs(its.it_interval), want);
        return 0;
    }
    /* t3 */
    timerfd_gettime(t3, &its);
    double left = secs(its.it_value);
    if (left > t3_left || left < 900 || its.it_interval.tv_sec || its.it_interval.tv_nsec) {
        snprintf(why, len, "t3: time left %.3f s (last check %.3f s), expected <= it and > 900 s, one-shot", left, t3_left);
        return 0;
    }
    t3_left = left;
    /* t4 */
    long long ticks = fdinfo_num(t4, "ticks:", 10);
    if (ticks != 1) { snprintf(why, len, "t4: fdinfo ticks %lld, expected 1", ticks); return 0; }
    if (read(t4, &n, 8) != 8 || n != 1) { snprintf(why, len, "t4: read %llu, expected 1", (unsigned long long)n); return 0; }
    if (read(t4, &n, 8) != -1 || errno != EAGAIN) { snprintf(why, len, "t4: second read did not fail with EAGAIN"); return 0; }
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    timerfd_settime(t4, 0, &once, NULL);
    if (!wait_readable(t4, 1000)) { snprintf(why, len, "t4: re-armed for 1 ms, did not expire in 1 s"); return 0; }
    /* t5 */
    ticks = fdinfo_num(t5, "ticks:", 10);
    timerfd_gettime(t5, &its);
    if (ticks != 7 || its.it_value.tv_sec || its.it_value.tv_nsec || its.it_interval.tv_sec) {
        snprintf(why, len, "t5: fdinfo ticks %lld value %.3f, expected 7, disarmed", ticks, secs(its.it_value));
        return 0;
    }
    if (read(t5, &n, 8) != 8 || n != 7) { snprintf(why, len, "t5: read %llu, expected 7", (unsigned long long)n); return 0; }
    uint64_t seven = 7;
    if (ioctl(t5, TFD_IOC_SET_TICKS, &seven)) { snprintf(why, len, "t5: TFD_IOC_SET_TICKS: %s", strerror(errno)); return 0; }
    return 1;
}

int main(void)
{
    wl_init();
    t1 = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    t2 = timerfd_create(CLOCK_REALTIME, 0);
    t3 = timerfd_create(CLOCK_BOOTTIME, 0);
    t4 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    t5 = timerfd_create(CLOCK_REALTIME, 0);
    if (t1 < 0 || t2 < 0 || t3 < 0 || t4 < 0 || t5 < 0) { perror("timerfd_create"); return 2; }
    struct itimerspec every = {{0, 100000000}, {0, 100000000}};
    struct itimerspec thousand = {{0, 0}, {1000, 0}};
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    clock_gettime(CLOCK_REALTIME, &t2_deadline);
    t2_deadline.tv_sec += 3600;
    struct itimerspec abs = {{0, 0}, t2_deadline};
    uint64_t seven = 7;
    if (timerfd_settime(t1, 0, &every, NULL) || timerfd_settime(t2, TFD_TIMER_ABSTIME, &abs, NULL) ||
        timerfd_settime(t3, 0, &thousand, NULL) || timerfd_settime(t4, 0, &once, NULL) ||
        ioctl(t5, TFD_IOC_SET_TICKS, &seven)) {
        perror("timerfd setup");
        return 2;
    }
    if (!wait_readable(t4, 1000)) { fprintf(stderr, "t4 did not expire\n"); return 2; }
    fprintf(stderr, "timerfd: t1 %d t2 %d t3 %d t4 %d t5 %d\n", t1, t2, t3, t4, t5);
    wl_ready();
    for (;;) {
        wl_answer_check("timerfd", check);
        wl_nap();
    }
}
