/*
 * unix_opts: socket options and status flags.
 *  - a stream socketpair: end A is O_NONBLOCK, SO_SNDBUF 50000 and SO_RCVBUF 30000 (the
 *    kernel doubles them), SO_PASSCRED, SO_RCVTIMEO 1.5 s, SO_SNDTIMEO 2.25 s; it holds 16
 *    bytes from B and has peeked 4 of them with SO_PEEK_OFF, so its peek offset is 4. End B
 *    has SO_SNDBUF forced (SO_SNDBUFFORCE, CAP_NET_ADMIN) to 8 MiB, above net.core.wmem_max,
 *    and SO_RCVTIMEO 0.2 s;
 *  - a datagram socket, O_NONBLOCK, SO_PASSCRED, SO_REUSEADDR, unbound and empty.
 * A check compares every value with the one read at setup (getsockopt, F_GETFL), then: a peek
 * at A returns "4567" (the offset was restored), which it sets back to 4; a receive on the
 * empty datagram socket fails at once with EAGAIN (nonblocking); a receive on B waits about
 * 0.2 s and fails with EAGAIN (its timeout).
 */
#include "unix_wl.h"

static int a, b, d;
struct opt { int *fd; int opt; const char *name; int value; };
static struct opt opts[] = {
    {&a, SO_SNDBUF, "A SO_SNDBUF", 0}, {&a, SO_RCVBUF, "A SO_RCVBUF", 0},
    {&a, SO_PASSCRED, "A SO_PASSCRED", 0}, {&a, SO_PEEK_OFF, "A SO_PEEK_OFF", 0},
    {&b, SO_SNDBUF, "B SO_SNDBUF", 0}, {&b, SO_RCVBUF, "B SO_RCVBUF", 0},
    {&b, SO_PASSCRED, "B SO_PASSCRED", 0}, {&b, SO_PEEK_OFF, "B SO_PEEK_OFF", 0},
    {&d, SO_PASSCRED, "D SO_PASSCRED", 0}, {&d, SO_REUSEADDR, "D SO_REUSEADDR", 0},
    {&d, SO_SNDBUF, "D SO_SNDBUF", 0},
};
#define NOPTS (int)(sizeof(opts) / sizeof(opts[0]))
static int flags_a, flags_b, flags_d;
static struct timeval tv_a_rcv, tv_a_snd, tv_b_rcv;

static int get_opt(int fd, int opt)
{
    int v = -12345;
    socklen_t l = sizeof(v);
    getsockopt(fd, SOL_SOCKET, opt, &v, &l);
    return v;
}

static int same_tv(int fd, int opt, const struct timeval *want)
{
    struct timeval tv;
    socklen_t l = sizeof(tv);
    return getsockopt(fd, SOL_SOCKET, opt, &tv, &l) == 0 && tv.tv_sec == want->tv_sec &&
           tv.tv_usec == want->tv_usec;
}

static int check(char *why, size_t len)
{
    for (int i = 0; i < NOPTS; i++) {
        int v = get_opt(*opts[i].fd, opts[i].opt);
        if (v != opts[i].value) {
            snprintf(why, len, "%s is %d, was %d", opts[i].name, v, opts[i].value);
            return 0;
        }
    }
    if (fcntl(a, F_GETFL) != flags_a || fcntl(b, F_GETFL) != flags_b || fcntl(d, F_GETFL) != flags_d) {
        snprintf(why, len, "status flags differ: %o %o %o, were %o %o %o", fcntl(a, F_GETFL),
                 fcntl(b, F_GETFL), fcntl(d, F_GETFL), flags_a, flags_b, flags_d);
        return 0;
    }
    if (!same_tv(a, SO_RCVTIMEO, &tv_a_rcv) || !same_tv(a, SO_SNDTIMEO, &tv_a_snd) ||
        !same_tv(b, SO_RCVTIMEO, &tv_b_rcv)) {
        snprintf(why, len, "a timeout differs");
        return 0;
    }
    char buf[8] = {0};
    if (recv(a, buf, 4, MSG_PEEK) != 4 || memcmp(buf, "4567", 4)) {
        snprintf(why, len, "peek at offset 4 gives '%s'", buf);
        return 0;
    }
    int four = 4;
    setsockopt(a, SOL_SOCKET, SO_PEEK_OFF, &four, sizeof(four));
    if (ux_inq(a) != 16) {
        snprintf(why, len, "A holds %d bytes, expected 16", ux_inq(a));
        return 0;
    }
    if (recv(d, buf, 1, 0) >= 0 || errno != EAGAIN) {
        snprintf(why, len, "the nonblocking datagram socket blocks or fails otherwise (%s)", strerror(errno));
        return 0;
    }
    double t = wl_now();
    if (recv(b, buf, 1, 0) >= 0 || errno != EAGAIN || wl_now() - t < 0.15 || wl_now() - t > 2) {
        snprintf(why, len, "B's receive timeout: %s after %.2f s", strerror(errno), wl_now() - t);
        return 0;
    }
    return 1;
}

int main(void)
{
    wl_init();
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp)) ux_die("socketpair");
    a = sp[0];
    b = sp[1];
    d = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int one = 1, snd = 50000, rcv = 30000, force = 8 << 20, zero = 0;
    fcntl(a, F_SETFL, O_NONBLOCK);
    tv_a_rcv = (struct timeval){1, 500000};
    tv_a_snd = (struct timeval){2, 250000};
    tv_b_rcv = (struct timeval){0, 200000};
    if (d < 0 || setsockopt(a, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) ||
        setsockopt(a, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) ||
        setsockopt(a, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
        setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv_a_rcv, sizeof(tv_a_rcv)) ||
        setsockopt(a, SOL_SOCKET, SO_SNDTIMEO, &tv_a_snd, sizeof(tv_a_snd)) ||
        setsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &tv_b_rcv, sizeof(tv_b_rcv)) ||
        setsockopt(d, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
        setsockopt(d, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
        ux_die("setsockopt");
    /* Needs CAP_NET_ADMIN; without it B keeps its default and the check still compares. */
    if (setsockopt(b, SOL_SOCKET, SO_SNDBUFFORCE, &force, sizeof(force)))
        fprintf(stderr, "unix_opts: SO_SNDBUFFORCE: %s (B keeps its default)\n", strerror(errno));
    if (ux_write_all(b, "0123456789abcdef", 16)) ux_die("write");
    char buf[4];
    if (setsockopt(a, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) || recv(a, buf, 4, MSG_PEEK) != 4)
        ux_die("peek");
    for (int i = 0; i < NOPTS; i++) opts[i].value = get_opt(*opts[i].fd, opts[i].opt);
    /* The kernel keeps timeouts in ticks: compare with what it reports, not what was set. */
    socklen_t tl = sizeof(struct timeval);
    getsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv_a_rcv, &tl);
    getsockopt(a, SOL_SOCKET, SO_SNDTIMEO, &tv_a_snd, &tl);
    getsockopt(b, SOL_SOCKET, SO_RCVTIMEO, &tv_b_rcv, &tl);
    flags_a = fcntl(a, F_GETFL);
    flags_b = fcntl(b, F_GETFL);
    flags_d = fcntl(d, F_GETFL);
    wl_ready();
    for (;;) {
        wl_answer_check("unix_opts", check);
        wl_nap();
    }
}
