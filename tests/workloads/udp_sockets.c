/* vzcpt: netns */
/*
 * UDP over IPv4 and IPv6: per family a socket A bound to loopback (SO_BROADCAST on IPv4, a
 * receive buffer size) and a socket B bound to the loopback device (SO_BINDTODEVICE,
 * IPV6_V6ONLY on IPv6), bound and connected to A. Between checks datagrams of known contents
 * wait unread in both: three from A in B's queue, two from B in A's.
 *
 * Each check: options, addresses and file flags as set; each queue holds exactly the
 * datagrams sent, in order, with their source address and length; fresh datagrams go both
 * ways; then new ones are queued for the next dump.
 */
#include "wl.h"
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct fam {
    int family;
    const char *name;
    int a, b;
    struct sockaddr_storage aa, ba;
    socklen_t alen;
};

static struct fam fams[2];
static int round_no = 0;

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
    if (setsockopt(fd, level, opt, &v, sizeof(v))) { perror("setsockopt"); exit(2); }
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

/* Datagram k of round r from A (dir 0) or B (dir 1): its length and contents are known. */
static size_t make(int dir, int r, int k, int fam, unsigned char *buf)
{
    size_t len = 20 + 300 * k + 7 * r + fam;
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 31 + k * 7 + r * 13 + dir * 101 + fam * 3);
    return len;
}

static void queue_round(void)
{
    unsigned char buf[2048];
    round_no++;
    for (int f = 0; f < 2; f++) {
        struct fam *x = &fams[f];
        for (int k = 0; k < 3; k++) {
            size_t n = make(0, round_no, k, f, buf);
            if (sendto(x->a, buf, n, 0, (struct sockaddr *)&x->ba, x->alen) != (ssize_t)n) {
                perror("sendto");
                exit(2);
            }
        }
        for (int k = 0; k < 2; k++) {
            size_t n = make(1, round_no, k, f, buf);
            if (send(x->b, buf, n, 0) != (ssize_t)n) { perror("send"); exit(2); }
        }
    }
}

static int same_addr(struct sockaddr_storage *x, socklen_t xl, struct sockaddr_storage *y,
                     socklen_t yl)
{
    return xl == yl && !memcmp(x, y, xl);
}

/* Reads `count` datagrams of direction `dir` from `fd`, then nothing more. */
static int expect(struct fam *x, int fd, int dir, int count, struct sockaddr_storage *from,
                  char *why, size_t len)
{
    unsigned char buf[4096], want[2048];
    for (int k = 0; k < count; k++) {
        struct sockaddr_storage src;
        socklen_t sl = sizeof(src);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&src, &sl);
        size_t wn = make(dir, round_no, k, x - fams, want);
        if (n < 0) {
            snprintf(why, len, "%s %s: datagram %d of round %d is missing: %s", x->name,
                     dir ? "A" : "B", k, round_no, strerror(errno));
            return 0;
        }
        if ((size_t)n != wn || memcmp(buf, want, wn)) {
            snprintf(why, len, "%s %s: datagram %d of round %d has %zd bytes, want %zu, or other contents",
                     x->name, dir ? "A" : "B", k, round_no, n, wn);
            return 0;
        }
        if (!same_addr(&src, sl, from, x->alen)) {
            snprintf(why, len, "%s %s: datagram %d comes from another address", x->name,
                     dir ? "A" : "B", k);
            return 0;
        }
    }
    if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0 || errno != EAGAIN) {
        snprintf(why, len, "%s %s: more datagrams than were sent", x->name, dir ? "A" : "B");
        return 0;
    }
    return 1;
}

static int check_fam(struct fam *x, char *why, size_t len)
{
    struct sockaddr_storage s;
    socklen_t sl = sizeof(s);
    if (getsockname(x->a, (struct sockaddr *)&s, &sl) || !same_addr(&s, sl, &x->aa, x->alen)) {
        snprintf(why, len, "%s A: bound to another address", x->name);
        return 0;
    }
    sl = sizeof(s);
    if (getpeername(x->a, (struct sockaddr *)&s, &sl) == 0 || errno != ENOTCONN) {
        snprintf(why, len, "%s A: connected, it was not", x->name);
        return 0;
    }
    sl = sizeof(s);
    if (getsockname(x->b, (struct sockaddr *)&s, &sl) || !same_addr(&s, sl, &x->ba, x->alen)) {
        snprintf(why, len, "%s B: bound to another address", x->name);
        return 0;
    }
    sl = sizeof(s);
    if (getpeername(x->b, (struct sockaddr *)&s, &sl) || !same_addr(&s, sl, &x->aa, x->alen)) {
        snprintf(why, len, "%s B: not connected to A", x->name);
        return 0;
    }
    char dev[IFNAMSIZ] = "";
    socklen_t dl = sizeof(dev);
    getsockopt(x->b, SOL_SOCKET, SO_BINDTODEVICE, dev, &dl);
    if (strcmp(dev, "lo")) {
        snprintf(why, len, "%s B: bound to device '%s', not lo", x->name, dev);
        return 0;
    }
    if (x->family == AF_INET && geti(x->a, SOL_SOCKET, SO_BROADCAST) != 1) {
        snprintf(why, len, "%s A: SO_BROADCAST lost", x->name);
        return 0;
    }
    if (x->family == AF_INET6 && geti(x->b, IPPROTO_IPV6, IPV6_V6ONLY) != 1) {
        snprintf(why, len, "%s B: IPV6_V6ONLY lost", x->name);
        return 0;
    }
    if (geti(x->a, SOL_SOCKET, SO_RCVBUF) != 2 * (96 << 10)) {
        snprintf(why, len, "%s A: SO_RCVBUF %d", x->name, geti(x->a, SOL_SOCKET, SO_RCVBUF));
        return 0;
    }
    if (!(fcntl(x->a, F_GETFL) & O_NONBLOCK) || (fcntl(x->b, F_GETFL) & O_NONBLOCK) ||
        !(fcntl(x->b, F_GETFD) & FD_CLOEXEC)) {
        snprintf(why, len, "%s: file flags changed", x->name);
        return 0;
    }
    /* B is blocking: an empty queue would hang the check, so peek first. */
    char c;
    if (recv(x->b, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0) {
        snprintf(why, len, "%s B: its queue is empty: %s", x->name, strerror(errno));
        return 0;
    }
    if (!expect(x, x->b, 0, 3, &x->aa, why, len))
        return 0;
    if (!expect(x, x->a, 1, 2, &x->ba, why, len))
        return 0;
    return 1;
}

static int check(char *why, size_t len)
{
    for (int f = 0; f < 2; f++)
        if (!check_fam(&fams[f], why, len))
            return 0;
    queue_round();
    return 1;
}

int main(void)
{
    wl_init();
    fams[0] = (struct fam){.family = AF_INET, .name = "IPv4"};
    fams[1] = (struct fam){.family = AF_INET6, .name = "IPv6"};
    for (int f = 0; f < 2; f++) {
        struct fam *x = &fams[f];
        x->a = socket(x->family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (x->family == AF_INET)
            seti(x->a, SOL_SOCKET, SO_BROADCAST, 1);
        seti(x->a, SOL_SOCKET, SO_RCVBUF, 96 << 10);
        loopback(x->family, &x->aa, &x->alen);
        if (bind(x->a, (struct sockaddr *)&x->aa, x->alen)) { perror("bind A"); exit(2); }
        socklen_t l = sizeof(x->aa);
        getsockname(x->a, (struct sockaddr *)&x->aa, &l);

        x->b = socket(x->family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (setsockopt(x->b, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3)) { perror("SO_BINDTODEVICE"); exit(2); }
        if (x->family == AF_INET6)
            seti(x->b, IPPROTO_IPV6, IPV6_V6ONLY, 1);
        loopback(x->family, &x->ba, &l);
        if (bind(x->b, (struct sockaddr *)&x->ba, x->alen)) { perror("bind B"); exit(2); }
        l = sizeof(x->ba);
        getsockname(x->b, (struct sockaddr *)&x->ba, &l);
        if (connect(x->b, (struct sockaddr *)&x->aa, x->alen)) { perror("connect"); exit(2); }
    }
    queue_round();
    wl_ready();
    for (;;) {
        wl_answer_check("udp_sockets", check);
        wl_nap();
    }
}
