/* vzcpt: netns */
/*
 * TCP over IPv4 and IPv6 inside the tree: for each family a listener (SO_REUSEADDR, a
 * backlog; SO_REUSEPORT on IPv4, IPV6_V6ONLY on IPv6), a client connected to it and the
 * server end it accepted, each with its options. Both ends stream bytes of a known sequence
 * to each other and nobody reads between checks, so at every dump both directions have bytes
 * in the receiver's queue and bytes never sent in the sender's queue.
 *
 * Each check: listeners and connections still in their states with their options and file
 * flags, both queues non-empty, then everything drained and compared byte for byte with
 * what the other end wrote (none lost, none doubled, in order), a new connection accepted by
 * each listener, and the queues filled again for the next dump.
 */
#include "wl.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>

struct dir {
    int wfd, rfd;
    unsigned long long tx, rx;
    unsigned seed;
    const char *name;
};

struct fam {
    int family;
    const char *name;
    int listener, client, server, backlog;
    struct sockaddr_storage addr; /* the listener's */
    socklen_t alen;
};

static struct fam fams[2];
static struct dir dirs[4];

static unsigned char stream_byte(unsigned seed, unsigned long long i)
{
    unsigned long long x = (i + 1) * 0x9E3779B97F4A7C15ULL + seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    return (unsigned char)(x >> 40);
}

static int geti(int fd, int level, int opt)
{
    int v = -1;
    socklen_t l = sizeof(v);
    if (getsockopt(fd, level, opt, &v, &l))
        return -1;
    return v;
}

static void seti(int fd, int level, int opt, int v)
{
    if (setsockopt(fd, level, opt, &v, sizeof(v))) {
        perror("setsockopt");
        exit(2);
    }
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void loopback(int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        *len = sizeof(*a);
    }
}

static void setup(struct fam *f)
{
    f->listener = socket(f->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (f->listener < 0) { perror("socket"); exit(2); }
    seti(f->listener, SOL_SOCKET, SO_REUSEADDR, 1);
    if (f->family == AF_INET)
        seti(f->listener, SOL_SOCKET, SO_REUSEPORT, 1);
    else
        seti(f->listener, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    /* Inherited by the accepted end: a small window, so the sender keeps unsent bytes. */
    seti(f->listener, SOL_SOCKET, SO_SNDBUF, 64 << 10);
    seti(f->listener, SOL_SOCKET, SO_RCVBUF, 64 << 10);
    loopback(f->family, &f->addr, &f->alen);
    if (bind(f->listener, (struct sockaddr *)&f->addr, f->alen)) { perror("bind"); exit(2); }
    if (listen(f->listener, f->backlog)) { perror("listen"); exit(2); }
    f->alen = sizeof(f->addr);
    getsockname(f->listener, (struct sockaddr *)&f->addr, &f->alen);

    f->client = socket(f->family, SOCK_STREAM, 0);
    /* Small buffers: queues of some hundred KiB, set before connecting (window scale). */
    seti(f->client, SOL_SOCKET, SO_SNDBUF, 48 << 10);
    seti(f->client, SOL_SOCKET, SO_RCVBUF, 48 << 10);
    seti(f->client, IPPROTO_TCP, TCP_NODELAY, 1);
    if (connect(f->client, (struct sockaddr *)&f->addr, f->alen)) { perror("connect"); exit(2); }
    f->server = accept4(f->listener, NULL, NULL, SOCK_CLOEXEC);
    if (f->server < 0) { perror("accept"); exit(2); }
    seti(f->server, SOL_SOCKET, SO_KEEPALIVE, 1);
    seti(f->server, IPPROTO_TCP, TCP_KEEPIDLE, 77);
    seti(f->server, IPPROTO_TCP, TCP_KEEPINTVL, 11);
    seti(f->server, IPPROTO_TCP, TCP_KEEPCNT, 5);
    struct linger lg = {1, 3};
    setsockopt(f->server, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    set_nonblock(f->client);
    set_nonblock(f->server);
}

/* Writes until the socket takes no more, even after the kernel has moved what it could to
 * the receiver. */
static int fill(struct dir *d, char *why, size_t len)
{
    unsigned char buf[16384];
    for (int idle = 0; idle < 3;) {
        for (size_t k = 0; k < sizeof(buf); k++)
            buf[k] = stream_byte(d->seed, d->tx + k);
        ssize_t n = send(d->wfd, buf, sizeof(buf), MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            idle++;
            usleep(20000);
            continue;
        }
        if (n <= 0) {
            snprintf(why, len, "%s: write: %s", d->name, strerror(errno));
            return 0;
        }
        idle = 0;
        d->tx += n;
    }
    return 1;
}

/* Reads until every byte written by the other end has arrived, comparing each. */
static int drain(char *why, size_t len)
{
    unsigned char buf[65536];
    double deadline = wl_now() + 20;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < 4; i++) {
            struct dir *d = &dirs[i];
            while (d->rx < d->tx) {
                ssize_t n = recv(d->rfd, buf, sizeof(buf), 0);
                if (n < 0 && errno == EAGAIN)
                    break;
                if (n <= 0) {
                    snprintf(why, len, "%s: read after %llu of %llu bytes: %s", d->name, d->rx,
                             d->tx, n == 0 ? "end of stream" : strerror(errno));
                    return 0;
                }
                for (ssize_t k = 0; k < n; k++)
                    if (buf[k] != stream_byte(d->seed, d->rx + k)) {
                        snprintf(why, len, "%s: byte %llu differs from the one written", d->name,
                                 d->rx + k);
                        return 0;
                    }
                d->rx += n;
                if (d->rx > d->tx) {
                    snprintf(why, len, "%s: %llu bytes read, only %llu written", d->name, d->rx,
                             d->tx);
                    return 0;
                }
            }
            if (d->rx < d->tx)
                pending = 1;
        }
        if (!pending)
            return 1;
        if (wl_now() > deadline) {
            for (int i = 0; i < 4; i++)
                if (dirs[i].rx < dirs[i].tx)
                    snprintf(why, len, "%s: only %llu of %llu bytes arrived in 20 s", dirs[i].name,
                             dirs[i].rx, dirs[i].tx);
            return 0;
        }
        struct pollfd p[4];
        for (int i = 0; i < 4; i++)
            p[i] = (struct pollfd){.fd = dirs[i].rfd, .events = POLLIN};
        poll(p, 4, 50);
    }
}

static int check_fam(struct fam *f, char *why, size_t len)
{
    struct tcp_info ti;
    socklen_t tl = sizeof(ti);
    if (getsockopt(f->listener, IPPROTO_TCP, TCP_INFO, &ti, &tl) || ti.tcpi_state != TCP_LISTEN) {
        snprintf(why, len, "%s listener: not listening (state %d)", f->name, ti.tcpi_state);
        return 0;
    }
    if ((int)ti.tcpi_sacked != f->backlog) {
        snprintf(why, len, "%s listener: backlog %u, want %d", f->name, ti.tcpi_sacked, f->backlog);
        return 0;
    }
    if (geti(f->listener, SOL_SOCKET, SO_REUSEADDR) != 1) {
        snprintf(why, len, "%s listener: SO_REUSEADDR lost", f->name);
        return 0;
    }
    if (f->family == AF_INET && geti(f->listener, SOL_SOCKET, SO_REUSEPORT) != 1) {
        snprintf(why, len, "%s listener: SO_REUSEPORT lost", f->name);
        return 0;
    }
    if (f->family == AF_INET6 && geti(f->listener, IPPROTO_IPV6, IPV6_V6ONLY) != 1) {
        snprintf(why, len, "%s listener: IPV6_V6ONLY lost", f->name);
        return 0;
    }
    if (fcntl(f->listener, F_GETFL) & O_NONBLOCK || !(fcntl(f->listener, F_GETFD) & FD_CLOEXEC)) {
        snprintf(why, len, "%s listener: file flags changed", f->name);
        return 0;
    }
    int ends[2] = {f->client, f->server}, outq_total = 0;
    for (int i = 0; i < 2; i++) {
        tl = sizeof(ti);
        if (getsockopt(ends[i], IPPROTO_TCP, TCP_INFO, &ti, &tl) || ti.tcpi_state != TCP_ESTABLISHED) {
            snprintf(why, len, "%s %s: state %d, not established", f->name, i ? "server" : "client",
                     ti.tcpi_state);
            return 0;
        }
        if (!(fcntl(ends[i], F_GETFL) & O_NONBLOCK)) {
            snprintf(why, len, "%s %s: O_NONBLOCK lost", f->name, i ? "server" : "client");
            return 0;
        }
        int inq = -1, outq = -1;
        ioctl(ends[i], SIOCINQ, &inq);
        ioctl(ends[i], SIOCOUTQ, &outq);
        if (inq <= 0 || outq < 0) {
            snprintf(why, len, "%s %s: %d bytes to read (%d to send): some should be in flight",
                     f->name, i ? "server" : "client", inq, outq);
            return 0;
        }
        outq_total += outq;
    }
    /* The loopback moves bytes until a receive queue is full: one end at least keeps some. */
    if (outq_total <= 0) {
        snprintf(why, len, "%s: no end has bytes in its send queue", f->name);
        return 0;
    }
    struct sockaddr_storage a, b;
    socklen_t al = sizeof(a), bl = sizeof(b);
    getpeername(f->client, (struct sockaddr *)&a, &al);
    getsockname(f->server, (struct sockaddr *)&b, &bl);
    if (al != bl || memcmp(&a, &b, al)) {
        snprintf(why, len, "%s: the client's peer is not the server's address", f->name);
        return 0;
    }
    if (geti(f->client, IPPROTO_TCP, TCP_NODELAY) != 1 ||
        geti(f->client, SOL_SOCKET, SO_SNDBUF) != 2 * (48 << 10) ||
        geti(f->client, SOL_SOCKET, SO_RCVBUF) != 2 * (48 << 10)) {
        snprintf(why, len, "%s client: nodelay %d sndbuf %d rcvbuf %d", f->name,
                 geti(f->client, IPPROTO_TCP, TCP_NODELAY), geti(f->client, SOL_SOCKET, SO_SNDBUF),
                 geti(f->client, SOL_SOCKET, SO_RCVBUF));
        return 0;
    }
    struct linger lg = {0, 0};
    socklen_t ll = sizeof(lg);
    getsockopt(f->server, SOL_SOCKET, SO_LINGER, &lg, &ll);
    if (geti(f->server, SOL_SOCKET, SO_KEEPALIVE) != 1 ||
        geti(f->server, IPPROTO_TCP, TCP_KEEPIDLE) != 77 ||
        geti(f->server, IPPROTO_TCP, TCP_KEEPINTVL) != 11 ||
        geti(f->server, IPPROTO_TCP, TCP_KEEPCNT) != 5 || !lg.l_onoff || lg.l_linger != 3) {
        snprintf(why, len, "%s server: keepalive %d idle %d intvl %d cnt %d linger %d/%d", f->name,
                 geti(f->server, SOL_SOCKET, SO_KEEPALIVE),
                 geti(f->server, IPPROTO_TCP, TCP_KEEPIDLE),
                 geti(f->server, IPPROTO_TCP, TCP_KEEPINTVL),
                 geti(f->server, IPPROTO_TCP, TCP_KEEPCNT), lg.l_onoff, lg.l_linger);
        return 0;
    }
    return 1;
}

/* The listener still accepts: a new connection, a few bytes each way. */
static int new_connection(struct fam *f, char *why, size_t len)
{
    int c = socket(f->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(c, (struct sockaddr *)&f->addr, f->alen)) {
        snprintf(why, len, "%s: connect to the listener: %s", f->name, strerror(errno));
        close(c);
        return 0;
    }
    struct pollfd p = {.fd = f->listener, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) {
        snprintf(why, len, "%s: the listener does not see the new connection", f->name);
        close(c);
        return 0;
    }
    int s = accept4(f->listener, NULL, NULL, SOCK_CLOEXEC);
    char buf[8] = {0};
    int ok = s >= 0 && write(c, "ping", 4) == 4 && read(s, buf, 4) == 4 && !memcmp(buf, "ping", 4) &&
             write(s, "pong", 4) == 4 && read(c, buf, 4) == 4 && !memcmp(buf, "pong", 4);
    if (!ok)
        snprintf(why, len, "%s: the new connection does not carry data", f->name);
    close(c);
    if (s >= 0)
        close(s);
    return ok;
}

static int check(char *why, size_t len)
{
    for (int i = 0; i < 2; i++)
        if (!check_fam(&fams[i], why, len))
            return 0;
    if (!drain(why, len))
        return 0;
    for (int i = 0; i < 2; i++)
        if (!new_connection(&fams[i], why, len))
            return 0;
    for (int i = 0; i < 4; i++)
        if (!fill(&dirs[i], why, len))
            return 0;
    fprintf(stderr, "tcp_stream: streams at %llu/%llu/%llu/%llu bytes\n", dirs[0].tx, dirs[1].tx,
            dirs[2].tx, dirs[3].tx);
    return 1;
}

int main(void)
{
    wl_init();
    fams[0] = (struct fam){.family = AF_INET, .name = "IPv4", .backlog = 7};
    fams[1] = (struct fam){.family = AF_INET6, .name = "IPv6", .backlog = 5};
    for (int i = 0; i < 2; i++) {
        setup(&fams[i]);
        dirs[2 * i] = (struct dir){.wfd = fams[i].client, .rfd = fams[i].server,
                                   .seed = 11 + 2 * i,
                                   .name = i ? "IPv6 client->server" : "IPv4 client->server"};
        dirs[2 * i + 1] = (struct dir){.wfd = fams[i].server, .rfd = fams[i].client,
                                       .seed = 12 + 2 * i,
                                       .name = i ? "IPv6 server->client" : "IPv4 server->client"};
    }
    char why[256];
    for (int i = 0; i < 4; i++)
        if (!fill(&dirs[i], why, sizeof(why))) {
            fprintf(stderr, "tcp_stream: %s\n", why);
            return 2;
        }
    wl_ready();
    for (;;) {
        wl_answer_check("tcp_stream", check);
        wl_nap();
    }
}
