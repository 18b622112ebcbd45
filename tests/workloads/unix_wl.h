/* Helpers shared by the unix socket workloads (unix_*.c). */
#ifndef VZCPT_UNIX_WL_H
#define VZCPT_UNIX_WL_H
#include "wl.h"
#include <poll.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

/* A pattern that differs per seed and position. */
static inline void ux_fill(unsigned char *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 8));
}

static inline int ux_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd pf = {fd, POLLOUT, 0}; poll(&pf, 1, 100); continue; }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads exactly n bytes within 5 s; -1 on error, EOF or timeout. */
static inline int ux_read_exact(int fd, void *buf, size_t n)
{
    char *p = buf;
    double end = wl_now() + 5;
    while (n) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) {
            if (wl_now() > end) return -1;
            continue;
        }
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static inline int ux_inq(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n)) return -1;
    return n;
}

/* Checks that `fd` has exactly the n bytes of pattern `seed` queued, reads them. */
static inline int ux_expect_stream(int fd, size_t n, unsigned seed, const char *what, char *why,
                                   size_t len)
{
    int q = ux_inq(fd);
    if (q != (int)n) { snprintf(why, len, "%s: %d bytes queued, expected %zu", what, q, n); return 0; }
    unsigned char *got = malloc(n), *want = malloc(n);
    ux_fill(want, n, seed);
    int ok = ux_read_exact(fd, got, n) == 0;
    if (!ok) snprintf(why, len, "%s: reading %zu bytes: %s", what, n, strerror(errno));
    else if (memcmp(got, want, n)) { ok = 0; snprintf(why, len, "%s: queued data differs", what); }
    free(got);
    free(want);
    return ok;
}

static inline int ux_send_pattern(int fd, size_t n, unsigned seed)
{
    unsigned char *b = malloc(n ? n : 1);
    ux_fill(b, n, seed);
    int r = ux_write_all(fd, b, n);
    free(b);
    return r;
}

/* A sockaddr_un for a path under $VZCPT_CTL, or (abstract) "@vzcpt:<ctl>:name". */
static inline socklen_t ux_addr(struct sockaddr_un *a, const char *name, int abstract)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (!abstract) {
        if (strlen(wl_ctl) + strlen(name) + 2 > sizeof(a->sun_path)) {
            fprintf(stderr, "setup: %s/%s is too long for a socket path\n", wl_ctl, name);
            exit(2);
        }
        memcpy(a->sun_path, wl_ctl, strlen(wl_ctl));
        a->sun_path[strlen(wl_ctl)] = '/';
        memcpy(a->sun_path + strlen(wl_ctl) + 1, name, strlen(name) + 1);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1);
    }
    /* The tail of the control directory keeps the name short and unique per scenario. */
    size_t cl = strlen(wl_ctl);
    const char *tail = cl > 60 ? wl_ctl + cl - 60 : wl_ctl;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "vzcpt:%s:%s", tail, name);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static inline int ux_same_addr(const struct sockaddr_un *a, socklen_t al, const struct sockaddr_un *b,
                               socklen_t bl)
{
    return al == bl && memcmp(a, b, al) == 0;
}

static inline void ux_die(const char *what)
{
    fprintf(stderr, "setup: %s: %s\n", what, strerror(errno));
    exit(2);
}
#endif
