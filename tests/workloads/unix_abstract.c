/*
 * unix_abstract: sockets with abstract names, autobind, and a peer that closed.
 *  - a stream listener bound to an abstract name (unique per scenario: "vzcpt:<ctl dir>:abs")
 *    with one accepted connection; its client has SO_PASSCRED, so connect autobound it to a
 *    kernel-chosen abstract name, which must stay the same; 3000 bytes queued each way; the
 *    accepted end's name is the listener's; a new client can connect and be accepted;
 *  - a stream socketpair whose other end wrote 3000 bytes and closed: the survivor reads the
 *    bytes then end of file, and its send fails with EPIPE (replaced by a new one on each
 *    check);
 *  - a datagram socket bound to an abstract name holding 2 messages sent by a socket closed
 *    since.
 */
#include "unix_wl.h"
#include <signal.h>

static int lfd, cli, acc, orphan, dg;
static struct sockaddr_un laddr, auto_a, dg_a;
static socklen_t laddr_len, auto_al, dg_al;

static void make_orphan(void)
{
    int p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, p)) ux_die("socketpair");
    if (ux_send_pattern(p[1], 3000, 70)) ux_die("write");
    close(p[1]);
    orphan = p[0];
}

static void feed_dgram(void)
{
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (s < 0 || sendto(s, "first", 5, 0, (struct sockaddr *)&dg_a, dg_al) != 5 ||
        sendto(s, "second", 6, 0, (struct sockaddr *)&dg_a, dg_al) != 6)
        ux_die("sendto");
    close(s);
}

static int name_is(int fd, int peer, const struct sockaddr_un *want, socklen_t wl)
{
    struct sockaddr_un a;
    socklen_t al = sizeof(a);
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &al) : getsockname(fd, (struct sockaddr *)&a, &al);
    return r == 0 && ux_same_addr(&a, al, want, wl);
}

static int check(char *why, size_t len)
{
    if (!name_is(lfd, 0, &laddr, laddr_len) || !name_is(acc, 0, &laddr, laddr_len) ||
        !name_is(cli, 1, &laddr, laddr_len)) {
        snprintf(why, len, "the listener's abstract name is not where it was");
        return 0;
    }
    if (!name_is(cli, 0, &auto_a, auto_al) || !name_is(acc, 1, &auto_a, auto_al)) {
        snprintf(why, len, "the client's autobound name changed");
        return 0;
    }
    if (!ux_expect_stream(acc, 3000, 71, "accepted end", why, len) ||
        !ux_expect_stream(cli, 3000, 72, "client", why, len))
        return 0;
    if (ux_send_pattern(cli, 3000, 71) || ux_send_pattern(acc, 3000, 72)) {
        snprintf(why, len, "rewrite: %s", strerror(errno));
        return 0;
    }
    int n = socket(AF_UNIX, SOCK_STREAM, 0);
    if (n < 0 || connect(n, (struct sockaddr *)&laddr, laddr_len)) {
        snprintf(why, len, "a new client cannot connect to the abstract name: %s", strerror(errno));
        return 0;
    }
    int a = accept(lfd, NULL, NULL);
    char c = 0;
    if (a < 0 || send(n, "n", 1, 0) != 1 || ux_read_exact(a, &c, 1) || c != 'n') {
        snprintf(why, len, "the new connection does not work");
        return 0;
    }
    close(a);
    close(n);
    if (!ux_expect_stream(orphan, 3000, 70, "socket whose peer closed", why, len)) return 0;
    if (recv(orphan, &c, 1, MSG_DONTWAIT) != 0) {
        snprintf(why, len, "socket whose peer closed: no end of file (%s)", strerror(errno));
        return 0;
    }
    if (send(orphan, "x", 1, MSG_NOSIGNAL) >= 0 || errno != EPIPE) {
        snprintf(why, len, "socket whose peer closed: send does not fail with EPIPE (%s)", strerror(errno));
        return 0;
    }
    close(orphan);
    make_orphan();
    char buf[16] = {0};
    if (recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != 5 || strcmp(buf, "first") ||
        recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != 6 || strcmp(buf, "second") ||
        recv(dg, buf, sizeof(buf), MSG_DONTWAIT) >= 0) {
        snprintf(why, len, "abstract datagram socket: wrong messages ('%s')", buf);
        return 0;
    }
    if (!name_is(dg, 0, &dg_a, dg_al)) {
        snprintf(why, len, "abstract datagram socket: name changed");
        return 0;
    }
    feed_dgram();
    return 1;
}

int main(void)
{
    wl_init();
    signal(SIGPIPE, SIG_IGN);
    laddr_len = ux_addr(&laddr, "abs", 1);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, laddr_len) || listen(lfd, 4)) ux_die("listen");
    cli = socket(AF_UNIX, SOCK_STREAM, 0);
    int one = 1;
    if (cli < 0 || setsockopt(cli, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
        connect(cli, (struct sockaddr *)&laddr, laddr_len))
        ux_die("connect");
    auto_al = sizeof(auto_a);
    if (getsockname(cli, (struct sockaddr *)&auto_a, &auto_al) || auto_al <= sizeof(sa_family_t))
        ux_die("autobind");
    if ((acc = accept(lfd, NULL, NULL)) < 0) ux_die("accept");
    if (ux_send_pattern(cli, 3000, 71) || ux_send_pattern(acc, 3000, 72)) ux_die("write");
    make_orphan();
    dg_al = ux_addr(&dg_a, "dg", 1);
    dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (dg < 0 || bind(dg, (struct sockaddr *)&dg_a, dg_al)) ux_die("bind dgram");
    feed_dgram();
    wl_ready();
    for (;;) {
        wl_answer_check("unix_abstract", check);
        wl_nap();
    }
}
