/*
 * unix_seqpacket: seqpacket sockets, their record boundaries and shutdown states.
 *  - a socketpair with 3 records one way (10, 2000, 1 bytes) and 2 the other (500, 3);
 *  - a pair whose end A sent 2 records then shut down writing (SHUT_WR): B reads both
 *    records then end of file, A's send fails with EPIPE, B can still send to A;
 *  - a pair whose end C shut down reading (SHUT_RD): D's send fails with EPIPE, C reads end
 *    of file at once;
 *  - a listener bound to $VZCPT_CTL/seq.sock with an accepted connection holding 2 records
 *    from its client, and 1 client waiting in the backlog.
 * A check reads each record (MSG_TRUNC: real lengths) and sends them again; the shut-down
 * pair is replaced by a new one in the same state, the waiting client is accepted, used, and
 * replaced by a new waiting one.
 */
#include "unix_wl.h"
#include <signal.h>

static int q[2], h[2], r[2], lfd, cli, acc, waiting;
static struct sockaddr_un laddr;
static socklen_t laddr_len;
static const size_t fwd[] = {10, 2000, 1}, back[] = {500, 3}, half[] = {40, 41}, conn_recs[] = {64, 65};

static void send_recs(int fd, const size_t *lens, int n, unsigned seed)
{
    unsigned char buf[4096];
    for (int i = 0; i < n; i++) {
        ux_fill(buf, lens[i], seed + i);
        if (send(fd, buf, lens[i], MSG_NOSIGNAL) != (ssize_t)lens[i]) ux_die("send");
    }
}

static int expect_recs(int fd, const size_t *lens, int n, unsigned seed, const char *what, char *why,
                       size_t len)
{
    unsigned char got[4096], want[4096];
    for (int i = 0; i < n; i++) {
        ssize_t x = recv(fd, got, sizeof(got), MSG_DONTWAIT | MSG_TRUNC);
        ux_fill(want, lens[i], seed + i);
        if (x != (ssize_t)lens[i] || memcmp(got, want, lens[i])) {
            snprintf(why, len, "%s: record %d: %zd bytes (%s), expected %zu", what, i, x,
                     x < 0 ? strerror(errno) : "or different bytes", lens[i]);
            return 0;
        }
    }
    return 1;
}

static int empty(int fd)
{
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
}

static void make_half(void)
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, h)) ux_die("socketpair");
    send_recs(h[0], half, 2, 50);
    if (shutdown(h[0], SHUT_WR)) ux_die("shutdown");
}

static int new_client(void)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&laddr, laddr_len)) ux_die("connect");
    return fd;
}

static int check(char *why, size_t len)
{
    if (!expect_recs(q[1], fwd, 3, 10, "pair forward", why, len) ||
        !expect_recs(q[0], back, 2, 20, "pair back", why, len) ||
        !expect_recs(h[1], half, 2, 50, "half-closed pair", why, len) ||
        !expect_recs(acc, conn_recs, 2, 60, "accepted connection", why, len))
        return 0;
    if (!empty(q[0]) || !empty(q[1]) || !empty(acc)) {
        snprintf(why, len, "more records than expected");
        return 0;
    }
    char c;
    if (recv(h[1], &c, 1, MSG_DONTWAIT) != 0) {
        snprintf(why, len, "half-closed pair: no end of file after the records (%s)", strerror(errno));
        return 0;
    }
    if (send(h[0], "x", 1, MSG_NOSIGNAL) >= 0 || errno != EPIPE) {
        snprintf(why, len, "half-closed pair: the shut-down end can still send (%s)", strerror(errno));
        return 0;
    }
    if (send(h[1], "y", 1, MSG_NOSIGNAL) != 1 || recv(h[0], &c, 1, MSG_DONTWAIT) != 1 || c != 'y') {
        snprintf(why, len, "half-closed pair: the other way is broken (%s)", strerror(errno));
        return 0;
    }
    if (send(r[1], "z", 1, MSG_NOSIGNAL) >= 0 || errno != EPIPE) {
        snprintf(why, len, "SHUT_RD pair: the peer can still send (%s)", strerror(errno));
        return 0;
    }
    if (recv(r[0], &c, 1, MSG_DONTWAIT) != 0) {
        snprintf(why, len, "SHUT_RD pair: no end of file (%s)", strerror(errno));
        return 0;
    }
    int a = accept(lfd, NULL, NULL);
    if (a < 0 || send(waiting, "w", 1, MSG_NOSIGNAL) != 1 || recv(a, &c, 1, MSG_DONTWAIT) != 1 || c != 'w') {
        snprintf(why, len, "the waiting client: %s", strerror(errno));
        return 0;
    }
    close(a);
    close(waiting);
    waiting = new_client();
    close(h[0]);
    close(h[1]);
    make_half();
    send_recs(q[0], fwd, 3, 10);
    send_recs(q[1], back, 2, 20);
    send_recs(cli, conn_recs, 2, 60);
    return 1;
}

int main(void)
{
    wl_init();
    signal(SIGPIPE, SIG_IGN);
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, r))
        ux_die("socketpair");
    if (shutdown(r[0], SHUT_RD)) ux_die("shutdown");
    make_half();
    laddr_len = ux_addr(&laddr, "seq.sock", 0);
    unlink(laddr.sun_path);
    lfd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, laddr_len) || listen(lfd, 5)) ux_die("listen");
    cli = new_client();
    if ((acc = accept(lfd, NULL, NULL)) < 0) ux_die("accept");
    waiting = new_client();
    send_recs(q[0], fwd, 3, 10);
    send_recs(q[1], back, 2, 20);
    send_recs(cli, conn_recs, 2, 60);
    wl_ready();
    for (;;) {
        wl_answer_check("unix_seqpacket", check);
        wl_nap();
    }
}
