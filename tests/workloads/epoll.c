/*
 * epoll: an epoll instance (moved to fd 100) with five registrations and a second epoll
 * holding the first (nested), checked after every restore:
 *  - fdinfo of both lists the same targets with the same events and data as at setup;
 *  - epoll_wait(0) on ep returns exactly the ready ones with their data: p1 (a pipe with a
 *    byte in it, EPOLLIN, data 0x1111222233334444) and efd (an eventfd, EPOLLIN|EPOLLOUT
 *    registered, only EPOLLOUT ready, data 42); not p2 (empty pipe, edge-triggered), not the
 *    write end of p3 (EPOLLOUT|EPOLLONESHOT, already fired at setup, so disabled; see
 *    tfd_lines for the EPOLLERR|EPOLLHUP it gets back), not the
 *    timerfd (EPOLLIN, disarmed);
 *  - ep2 reports ep as readable with data 0xe9;
 *  - a byte written into p2 makes ep report it once (EPOLLIN, data 0xaaaa), not twice
 *    (edge-triggered); a write to efd adds EPOLLIN to its event; both undone afterwards.
 */
#include "wl.h"
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#define EP_FD 100

static int ep, ep2, p1[2], p2[2], p3[2], efd, tfd;
static char rec_ep[4096], rec_ep2[4096];

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The tfd lines of an epoll's fdinfo as "fd events data;" sorted by text (the kernel prints
 * them in the order of its tree, by file address). A disabled oneshot (fired, events reduced
 * to EPOLLONESHOT) reads back with EPOLLERR|EPOLLHUP after a restore: the kernel adds them to
 * every registration made by epoll_ctl, and only an epoll_wait delivering it can disable it
 * again; both are accepted as the same. */
static void tfd_lines(int fd, char *out, size_t n)
{
    char *lines[64];
    int nl = 0;
    char p[64], buf[8192];
    snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    out[0] = 0;
    if (!f) return;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
        if (strncmp(l, "tfd:", 4)) continue;
        /* Keep "tfd: N events: E data: D", drop pos/ino/sdev (the inode numbers change). */
        int tfd_n;
        unsigned ev;
        unsigned long long data;
        if (sscanf(l, "tfd: %d events: %x data: %llx", &tfd_n, &ev, &data) != 3) continue;
        if (ev == (EPOLLONESHOT | EPOLLERR | EPOLLHUP)) ev = EPOLLONESHOT;
        char one[128];
        snprintf(one, sizeof(one), "%d %x %llx;", tfd_n, ev, data);
        if (nl < 64) lines[nl++] = strdup(one);
    }
    qsort(lines, nl, sizeof(char *), cmp_str);
    for (int i = 0; i < nl; i++) {
        strncat(out, lines[i], n - strlen(out) - 1);
        free(lines[i]);
    }
}

struct want { uint64_t data; uint32_t events; };

static int expect(int epfd, const char *name, const struct want *w, int nw, char *why, size_t len)
{
    struct epoll_event evs[16];
    int n = epoll_wait(epfd, evs, 16, 0);
    if (n != nw) {
        char got[512] = "";
        for (int i = 0; i < n && i < 16; i++) {
            char one[64];
            snprintf(one, sizeof(one), " {%#llx %#x}", (unsigned long long)evs[i].data.u64, evs[i].events);
            strncat(got, one, sizeof(got) - strlen(got) - 1);
        }
        snprintf(why, len, "%s: epoll_wait returned %d events (%s), expected %d", name, n, got, nw);
        return 0;
    }
    for (int i = 0; i < nw; i++) {
        int found = 0;
        for (int j = 0; j < n; j++)
            if (evs[j].data.u64 == w[i].data && evs[j].events == w[i].events) found = 1;
        if (!found) {
            snprintf(why, len, "%s: no event {data %#llx events %#x} among the %d returned", name,
                     (unsigned long long)w[i].data, w[i].events, n);
            return 0;
        }
    }
    return 1;
}

static int check(char *why, size_t len)
{
    char now[4096];
    tfd_lines(ep, now, sizeof(now));
    if (strcmp(now, rec_ep)) { snprintf(why, len, "ep registrations (fd events data) %s, recorded %s", now, rec_ep); return 0; }
    tfd_lines(ep2, now, sizeof(now));
    if (strcmp(now, rec_ep2)) { snprintf(why, len, "ep2 registrations %s, recorded %s", now, rec_ep2); return 0; }
    struct want base[] = {{0x1111222233334444ull, EPOLLIN}, {42, EPOLLOUT}};
    if (!expect(ep, "ep", base, 2, why, len)) return 0;
    struct want nested[] = {{0xe9, EPOLLIN}};
    if (!expect(ep2, "ep2 (nested)", nested, 1, why, len)) return 0;
    if (write(p2[1], "x", 1) != 1) { snprintf(why, len, "write p2: %s", strerror(errno)); return 0; }
    uint64_t one = 1;
    if (write(efd, &one, 8) != 8) { snprintf(why, len, "write efd: %s", strerror(errno)); return 0; }
    struct want more[] = {{0x1111222233334444ull, EPOLLIN}, {42, EPOLLIN | EPOLLOUT}, {0xaaaa, EPOLLIN}};
    int ok = expect(ep, "ep after writes to p2 and efd", more, 3, why, len);
    struct want again[] = {{0x1111222233334444ull, EPOLLIN}, {42, EPOLLIN | EPOLLOUT}};
    ok = ok && expect(ep, "ep, p2 edge-triggered: not again", again, 2, why, len);
    char c;
    uint64_t v;
    if (read(p2[0], &c, 1) != 1 || read(efd, &v, 8) != 8) { snprintf(why, len, "undo: %s", strerror(errno)); return 0; }
    return ok && expect(ep, "ep after undoing", base, 2, why, len);
}

int main(void)
{
    wl_init();
    int e = epoll_create1(EPOLL_CLOEXEC);
    ep2 = epoll_create1(0);
    efd = eventfd(0, EFD_NONBLOCK);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (e < 0 || ep2 < 0 || efd < 0 || tfd < 0 || pipe(p1) || pipe2(p2, O_NONBLOCK) || pipe(p3)) { perror("setup"); return 2; }
    ep = dup3(e, EP_FD, O_CLOEXEC);
    close(e);
    if (write(p1[1], "a", 1) != 1) return 2;
    struct epoll_event ev;
    ev.events = EPOLLIN; ev.data.u64 = 0x1111222233334444ull;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p1[0], &ev)) { perror("ctl p1"); return 2; }
    ev.events = EPOLLIN | EPOLLET; ev.data.u64 = 0xaaaa;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p2[0], &ev)) { perror("ctl p2"); return 2; }
    ev.events = EPOLLIN | EPOLLOUT; ev.data.u64 = 42;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev)) { perror("ctl efd"); return 2; }
    ev.events = EPOLLIN; ev.data.u64 = 0x7f;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev)) { perror("ctl tfd"); return 2; }
    /* A oneshot that fires once alone, then stays disabled. */
    ev.events = EPOLLOUT | EPOLLONESHOT; ev.data.u64 = 0x0e;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p3[1], &ev)) { perror("ctl p3"); return 2; }
    struct epoll_event evs[8];
    int fired = 0;
    for (int i = 0, n = epoll_wait(ep, evs, 8, 0); i < n; i++)
        if (evs[i].data.u64 == 0x0e) fired = 1;
    if (!fired) { fprintf(stderr, "epoll: the oneshot did not fire at setup\n"); return 2; }
    ev.events = EPOLLIN; ev.data.u64 = 0xe9;
    if (epoll_ctl(ep2, EPOLL_CTL_ADD, ep, &ev)) { perror("ctl nested"); return 2; }
    tfd_lines(ep, rec_ep, sizeof(rec_ep));
    tfd_lines(ep2, rec_ep2, sizeof(rec_ep2));
    fprintf(stderr, "epoll: ep %d {%s} ep2 %d {%s}\n", ep, rec_ep, ep2, rec_ep2);
    wl_ready();
    for (;;) {
        wl_answer_check("epoll", check);
        wl_nap();
    }
}
