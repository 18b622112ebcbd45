/*
 * unix_listen: a stream listener bound to $VZCPT_CTL/listen.sock (mode 0600, backlog 3) with
 * one accepted connection holding data both ways (5000 bytes client -> server, 7000 bytes
 * server -> client) and 2 clients waiting in its backlog, not accepted.
 *
 * A check verifies: the listener's name and SO_ACCEPTCONN, the socket file (a socket, mode
 * 0600), the accepted pair's names (getsockname of the accepted end and getpeername of the
 * client are the listener's path) and queues (exact bytes, read and written again); the
 * backlog: 2 more nonblocking clients still fit (2 + 2 = backlog + 1), a fifth is refused
 * with EAGAIN; then 4 accepts in order, each accepted end sending the client's number, which
 * must arrive at the 1st, 2nd, ... client (the waiting clients came back in their order and
 * connected to this listener); a fifth accept finds nothing. It then closes all that and
 * makes 2 new waiting clients for the next dump.
 */
#include "unix_wl.h"
#include <signal.h>

#define C2S 5000
#define S2C 7000

static int lfd, cli, acc, waiting[2];
static struct sockaddr_un laddr;
static socklen_t laddr_len;

static int new_client(int nonblock)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&laddr, laddr_len)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int check_name(int fd, int peer, const char *what, char *why, size_t len)
{
    struct sockaddr_un a;
    socklen_t al = sizeof(a);
    int r = peer ? getpeername(fd, (struct sockaddr *)&a, &al) : getsockname(fd, (struct sockaddr *)&a, &al);
    if (r || !ux_same_addr(&a, al, &laddr, laddr_len)) {
        snprintf(why, len, "%s: name is '%.*s' (len %u), expected %s", what, (int)(al > 2 ? al - 2 : 0),
                 a.sun_path, al, laddr.sun_path);
        return 0;
    }
    return 1;
}

static int check(char *why, size_t len)
{
    int v = 0;
    socklen_t vl = sizeof(v);
    if (getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl) || v != 1) {
        snprintf(why, len, "the listener does not listen");
        return 0;
    }
    if (!check_name(lfd, 0, "listener", why, len) || !check_name(acc, 0, "accepted end", why, len) ||
        !check_name(cli, 1, "client's peer", why, len))
        return 0;
    struct stat st;
    if (stat(laddr.sun_path, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0600) {
        snprintf(why, len, "socket file %s: %s mode %o", laddr.sun_path, strerror(errno), st.st_mode);
        return 0;
    }
    if (!ux_expect_stream(acc, C2S, 11, "accepted end", why, len) ||
        !ux_expect_stream(cli, S2C, 12, "client", why, len))
        return 0;
    if (ux_send_pattern(cli, C2S, 11) || ux_send_pattern(acc, S2C, 12)) {
        snprintf(why, len, "rewrite: %s", strerror(errno));
        return 0;
    }
    int c[5];
    c[0] = waiting[0];
    c[1] = waiting[1];
    for (int i = 2; i < 4; i++)
        if ((c[i] = new_client(1)) < 0) {
            snprintf(why, len, "extra client %d: %s (backlog too small?)", i - 1, strerror(errno));
            return 0;
        }
    int extra = new_client(1);
    if (extra >= 0 || errno != EAGAIN) {
        snprintf(why, len, "a fifth waiting client was %s (backlog too large?)",
                 extra >= 0 ? "accepted" : strerror(errno));
        return 0;
    }
    int ok = 1;
    for (int i = 0; i < 4 && ok; i++) {
        int a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (a < 0) { snprintf(why, len, "accept %d: %s", i, strerror(errno)); return 0; }
        char id = (char)('0' + i), got = 0;
        send(a, &id, 1, MSG_NOSIGNAL);
        if (ux_read_exact(c[i], &got, 1) || got != id) {
            snprintf(why, len, "accepted connection %d did not reach client %d (got '%c')", i, i, got);
            ok = 0;
        }
        close(a);
    }
    struct pollfd pf = {lfd, POLLIN, 0};
    if (ok && poll(&pf, 1, 0) != 0) {
        snprintf(why, len, "a fifth connection was waiting");
        ok = 0;
    }
    for (int i = 0; i < 4; i++) close(c[i]);
    if ((waiting[0] = new_client(0)) < 0 || (waiting[1] = new_client(0)) < 0) {
        snprintf(why, len, "new waiting clients: %s", strerror(errno));
        return 0;
    }
    return ok;
}

int main(void)
{
    wl_init();
    signal(SIGPIPE, SIG_IGN);
    laddr_len = ux_addr(&laddr, "listen.sock", 0);
    unlink(laddr.sun_path);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, laddr_len)) ux_die("bind");
    if (chmod(laddr.sun_path, 0600) || listen(lfd, 3)) ux_die("listen");
    if ((cli = new_client(0)) < 0 || (acc = accept(lfd, NULL, NULL)) < 0) ux_die("accept");
    if (ux_send_pattern(cli, C2S, 11) || ux_send_pattern(acc, S2C, 12)) ux_die("write");
    if ((waiting[0] = new_client(0)) < 0 || (waiting[1] = new_client(0)) < 0) ux_die("clients");
    wl_ready();
    for (;;) {
        wl_answer_check("unix_listen", check);
        wl_nap();
    }
}
