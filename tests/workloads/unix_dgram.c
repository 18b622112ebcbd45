/*
 * unix_dgram: datagram sockets with queued messages, their boundaries and their senders.
 *  - a socketpair: 5 messages one way (1, 100, 0, 5000 and 33 bytes: a zero-length one too),
 *    3 the other way (7, 70000, 2 bytes);
 *  - a receiver bound to $VZCPT_CTL/dgram.sock, unconnected, holding 4 messages from three
 *    senders: s1 (an abstract name), an unnamed socket, s2 (bound to $VZCPT_CTL/s2.sock), s1
 *    again; each must come back with its sender's name (recvfrom);
 *  - a socket connected (one way) to a receiver bound to an abstract name, 2 messages queued
 *    there; after restore it is still connected (getpeername, send without an address).
 * A check reads every queue message by message (MSG_TRUNC gives each one's real length),
 * compares lengths, bytes and senders, makes sure nothing more is queued, and sends the same
 * messages again from the same sockets, so every dump sees the same queues.
 */
#include "unix_wl.h"

static int sp[2], recv_fd, s1, s2, s3, conn, recv2;
static struct sockaddr_un recv_a, s1_a, s2_a, recv2_a;
static socklen_t recv_al, s1_al, s2_al, recv2_al;
static const size_t fwd_len[] = {1, 100, 0, 5000, 33};
static const size_t back_len[] = {7, 70000, 2};

static void send_msgs(int fd, const size_t *lens, int n, unsigned seed)
{
    static unsigned char buf[70000];
    for (int i = 0; i < n; i++) {
        ux_fill(buf, lens[i], seed + i);
        if (send(fd, buf, lens[i], 0) != (ssize_t)lens[i]) ux_die("send");
    }
}

static int expect_msgs(int fd, const size_t *lens, int n, unsigned seed, const char *what, char *why,
                       size_t len)
{
    static unsigned char got[80000], want[80000];
    for (int i = 0; i < n; i++) {
        ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT | MSG_TRUNC);
        if (r != (ssize_t)lens[i]) {
            snprintf(why, len, "%s: message %d is %zd bytes (%s), expected %zu", what, i, r,
                     r < 0 ? strerror(errno) : "", lens[i]);
            return 0;
        }
        ux_fill(want, lens[i], seed + i);
        if (memcmp(got, want, lens[i])) {
            snprintf(why, len, "%s: message %d differs", what, i);
            return 0;
        }
    }
    if (recv(fd, got, sizeof(got), MSG_DONTWAIT) >= 0 || errno != EAGAIN) {
        snprintf(why, len, "%s: more than %d messages queued", what, n);
        return 0;
    }
    return 1;
}

/* The bound receiver's queue: (sender, text); sender 0 = s1, 1 = unnamed s3, 2 = s2. */
static const struct { int sender; const char *text; } from_msgs[] = {
    {0, "one"}, {1, "three-unnamed"}, {2, "two"}, {0, "one again"},
};

static void send_from(void)
{
    int fds[3] = {s1, s3, s2};
    for (int i = 0; i < 4; i++)
        if (sendto(fds[from_msgs[i].sender], from_msgs[i].text, strlen(from_msgs[i].text), 0,
                   (struct sockaddr *)&recv_a, recv_al) < 0)
            ux_die("sendto");
    if (send(conn, "via-connect-1", 13, 0) != 13 || send(conn, "via-connect-2!", 14, 0) != 14)
        ux_die("send connected");
}

static int check(char *why, size_t len)
{
    if (!expect_msgs(sp[1], fwd_len, 5, 20, "pair forward", why, len) ||
        !expect_msgs(sp[0], back_len, 3, 30, "pair back", why, len))
        return 0;
    for (int i = 0; i < 4; i++) {
        char buf[64] = {0};
        struct sockaddr_un from;
        socklen_t fl = sizeof(from);
        ssize_t r = recvfrom(recv_fd, buf, sizeof(buf) - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (r != (ssize_t)strlen(from_msgs[i].text) || strcmp(buf, from_msgs[i].text)) {
            snprintf(why, len, "bound receiver: message %d is '%s' (%zd), expected '%s'", i, buf, r,
                     from_msgs[i].text);
            return 0;
        }
        int s = from_msgs[i].sender;
        int ok = s == 1 ? fl <= sizeof(sa_family_t)
                        : ux_same_addr(&from, fl, s == 0 ? &s1_a : &s2_a, s == 0 ? s1_al : s2_al);
        if (!ok) {
            snprintf(why, len, "bound receiver: message %d comes from '%.*s' (len %u), not sender %d", i,
                     (int)(fl > 2 ? fl - 3 : 0), from.sun_path + 1, fl, s);
            return 0;
        }
    }
    char buf[64];
    if (recv(recv_fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0 || errno != EAGAIN) {
        snprintf(why, len, "bound receiver: more than 4 messages");
        return 0;
    }
    for (int i = 1; i <= 2; i++) {
        memset(buf, 0, sizeof(buf));
        ssize_t r = recv(recv2, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        char want[32];
        snprintf(want, sizeof(want), i == 1 ? "via-connect-1" : "via-connect-2!");
        if (r < 0 || strcmp(buf, want)) {
            snprintf(why, len, "abstract receiver: message %d '%s', expected '%s'", i, buf, want);
            return 0;
        }
    }
    struct sockaddr_un peer;
    socklen_t pl = sizeof(peer);
    if (getpeername(conn, (struct sockaddr *)&peer, &pl) || !ux_same_addr(&peer, pl, &recv2_a, recv2_al)) {
        snprintf(why, len, "the connected socket's peer name changed");
        return 0;
    }
    struct sockaddr_un me;
    socklen_t ml = sizeof(me);
    if (getsockname(recv_fd, (struct sockaddr *)&me, &ml) || !ux_same_addr(&me, ml, &recv_a, recv_al)) {
        snprintf(why, len, "the bound receiver's name changed");
        return 0;
    }
    send_msgs(sp[0], fwd_len, 5, 20);
    send_msgs(sp[1], back_len, 3, 30);
    send_from();
    return 1;
}

static int bound_dgram(struct sockaddr_un *a, socklen_t *al, const char *name, int abstract)
{
    *al = ux_addr(a, name, abstract);
    if (!abstract) unlink(a->sun_path);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)a, *al)) ux_die(name);
    return fd;
}

int main(void)
{
    wl_init();
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sp)) ux_die("socketpair");
    int big = 1 << 20;
    setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    recv_fd = bound_dgram(&recv_a, &recv_al, "dgram.sock", 0);
    s1 = bound_dgram(&s1_a, &s1_al, "s1", 1);
    s2 = bound_dgram(&s2_a, &s2_al, "s2.sock", 0);
    s3 = socket(AF_UNIX, SOCK_DGRAM, 0);
    recv2 = bound_dgram(&recv2_a, &recv2_al, "r2", 1);
    conn = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (s3 < 0 || conn < 0 || connect(conn, (struct sockaddr *)&recv2_a, recv2_al)) ux_die("connect");
    send_msgs(sp[0], fwd_len, 5, 20);
    send_msgs(sp[1], back_len, 3, 30);
    send_from();
    wl_ready();
    for (;;) {
        wl_answer_check("unix_dgram", check);
        wl_nap();
    }
}
