/*
 * signalfd: two signalfds of one process, checked after every restore:
 *  - s1 nonblocking, mask {SIGUSR1, SIGRTMIN+4}; s2 blocking, mask {SIGUSR2} (all blocked);
 *  - fdinfo sigmask and flags of each;
 *  - a SIGRTMIN+4 queued with value 55 before any dump is still pending: s1 reads it first
 *    (signo, si_code SI_QUEUE, value), then nothing (EAGAIN); it is queued again afterwards;
 *  - sigqueue(RTMIN+4, 77) and kill(SIGUSR1) are read from s1 with their values;
 *  - s2 is not readable, a SIGUSR2 makes it readable and it reads SIGUSR2; s1 does not see it.
 */
#include "wl.h"
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/signalfd.h>

static int s1, s2;

static int fdinfo_sigmask(int fd, char *out, size_t n)
{
    char p[64], buf[4096];
    snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    char *l = strstr(buf, "sigmask:");
    if (!l) return -1;
    sscanf(l + 8, "%63s", out);
    (void)n;
    return 0;
}

static int readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static int read_one(int fd, int signo, int code, int value, const char *what, char *why, size_t len)
{
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof(si));
    if (n != sizeof(si)) {
        snprintf(why, len, "%s: read returned %zd (%s)", what, n, strerror(errno));
        return 0;
    }
    if ((int)si.ssi_signo != signo || si.ssi_code != code || (value >= 0 && si.ssi_int != value) ||
        si.ssi_pid != (uint32_t)getpid()) {
        snprintf(why, len, "%s: got signo %u code %d value %d pid %u, expected %d %d %d %d", what,
                 si.ssi_signo, si.ssi_code, si.ssi_int, si.ssi_pid, signo, code, value, getpid());
        return 0;
    }
    return 1;
}

static void queue(int sig, int value)
{
    union sigval v = {.sival_int = value};
    sigqueue(getpid(), sig, v);
}

static int check(char *why, size_t len)
{
    char m[64];
    const char *want1 = "0000002000000200"; /* SIGUSR1 (10) and SIGRTMIN+4 (38 with glibc) */
    const char *want2 = "0000000000000800"; /* SIGUSR2 (12) */
    if (fdinfo_sigmask(s1, m, sizeof(m)) || strcmp(m, want1)) {
        snprintf(why, len, "s1: fdinfo sigmask %s, expected %s", m, want1);
        return 0;
    }
    if (fdinfo_sigmask(s2, m, sizeof(m)) || strcmp(m, want2)) {
        snprintf(why, len, "s2: fdinfo sigmask %s, expected %s", m, want2);
        return 0;
    }
    int f1 = fcntl(s1, F_GETFL), f2 = fcntl(s2, F_GETFL);
    if (!(f1 & O_NONBLOCK) || (f2 & O_NONBLOCK) || !(fcntl(s1, F_GETFD) & FD_CLOEXEC)) {
        snprintf(why, len, "flags s1 %#o s2 %#o: expected s1 nonblocking and close-on-exec, s2 blocking", f1, f2);
        return 0;
    }
    int ok = read_one(s1, SIGRTMIN + 4, SI_QUEUE, 55, "s1, the signal pending since setup", why, len);
    queue(SIGRTMIN + 4, 55);
    if (!ok) return 0;
    /* That one queued again is now the only one: read it, check EAGAIN, queue it once more. */
    if (!read_one(s1, SIGRTMIN + 4, SI_QUEUE, 55, "s1, requeued", why, len)) return 0;
    struct signalfd_siginfo si;
    if (read(s1, &si, sizeof(si)) != -1 || errno != EAGAIN) {
        queue(SIGRTMIN + 4, 55);
        snprintf(why, len, "s1: a read with nothing pending did not fail with EAGAIN");
        return 0;
    }
    queue(SIGRTMIN + 4, 77);
    kill(getpid(), SIGUSR1);
    /* Both pending: standard signals are dequeued first. */
    ok = read_one(s1, SIGUSR1, SI_USER, -1, "s1, SIGUSR1", why, len) &&
         read_one(s1, SIGRTMIN + 4, SI_QUEUE, 77, "s1, RTMIN+4 value 77", why, len);
    queue(SIGRTMIN + 4, 55);
    if (!ok) return 0;
    if (readable(s2)) { snprintf(why, len, "s2: readable with nothing pending"); return 0; }
    kill(getpid(), SIGUSR2);
    if (!readable(s2)) { snprintf(why, len, "s2: not readable with SIGUSR2 pending"); return 0; }
    if (!read_one(s2, SIGUSR2, SI_USER, -1, "s2, SIGUSR2", why, len)) return 0;
    return 1;
}

int main(void)
{
    wl_init();
    sigset_t all, m1, m2;
    sigemptyset(&all);
    sigemptyset(&m1);
    sigemptyset(&m2);
    sigaddset(&m1, SIGUSR1);
    sigaddset(&m1, SIGRTMIN + 4);
    sigaddset(&m2, SIGUSR2);
    sigaddset(&all, SIGUSR1);
    sigaddset(&all, SIGUSR2);
    sigaddset(&all, SIGRTMIN + 4);
    sigprocmask(SIG_BLOCK, &all, NULL);
    s1 = signalfd(-1, &m1, SFD_NONBLOCK | SFD_CLOEXEC);
    s2 = signalfd(-1, &m2, 0);
    if (s1 < 0 || s2 < 0) { perror("signalfd"); return 2; }
    queue(SIGRTMIN + 4, 55);
    fprintf(stderr, "signalfd: s1 %d s2 %d\n", s1, s2);
    wl_ready();
    for (;;) {
        wl_answer_check("signalfd", check);
        wl_nap();
    }
}
