/*
 * unix_netns: unix sockets of a tree in its own network namespace (the workload unshares one
 * first), so sock_diag must be asked inside it and the sockets are rebuilt by the restored
 * root inside its new namespace: an abstract-name stream listener with an accepted connection
 * (2000 bytes queued each way) and one client waiting in its backlog, a datagram socket bound
 * to $VZCPT_CTL/netns-dgram.sock holding 2 messages, and a seqpacket socketpair with 2 records
 * queued. A check verifies the namespace is not the harness's, reads every queue and refills
 * it, accepts the waiting client and makes a new one.
 */
#include "unix_wl.h"
#include <sched.h>
#include <signal.h>

static int lfd, cli, acc, waiting, dg, sq[2];
static struct sockaddr_un laddr, dg_a;
static socklen_t laddr_len, dg_al;

static int new_client(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&laddr, laddr_len)) ux_die("connect");
    return fd;
}

static void feed(void)
{
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (s < 0 || sendto(s, "alpha", 5, 0, (struct sockaddr *)&dg_a, dg_al) != 5 ||
        sendto(s, "beta!", 5, 0, (struct sockaddr *)&dg_a, dg_al) != 5)
        ux_die("sendto");
    close(s);
    if (send(sq[0], "rec-one", 7, 0) != 7 || send(sq[0], "rec-two!", 8, 0) != 8) ux_die("send");
}

static int check(char *why, size_t len)
{
    /* PID 1 is the harness's driver, in the harness's network namespace. */
    char ns[64] = {0}, host[64] = {0};
    if (readlink("/proc/self/ns/net", ns, sizeof(ns) - 1) < 0 ||
        (readlink("/proc/1/ns/net", host, sizeof(host) - 1) > 0 && strcmp(host, ns) == 0)) {
        snprintf(why, len, "the workload is in the harness's network namespace");
        return 0;
    }
    if (!ux_expect_stream(acc, 2000, 81, "accepted end", why, len) ||
        !ux_expect_stream(cli, 2000, 82, "client", why, len))
        return 0;
    if (ux_send_pattern(cli, 2000, 81) || ux_send_pattern(acc, 2000, 82)) {
        snprintf(why, len, "rewrite: %s", strerror(errno));
        return 0;
    }
    char buf[16] = {0};
    if (recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != 5 || strcmp(buf, "alpha") ||
        recv(dg, buf, sizeof(buf), MSG_DONTWAIT) != 5 || strcmp(buf, "beta!")) {
        snprintf(why, len, "datagram queue: '%s'", buf);
        return 0;
    }
    memset(buf, 0, sizeof(buf));
    if (recv(sq[1], buf, sizeof(buf), MSG_DONTWAIT) != 7 || strcmp(buf, "rec-one") ||
        recv(sq[1], buf, sizeof(buf), MSG_DONTWAIT) != 8 || strcmp(buf, "rec-two!")) {
        snprintf(why, len, "seqpacket queue: '%s'", buf);
        return 0;
    }
    int a = accept(lfd, NULL, NULL);
    char c = 0;
    if (a < 0 || send(waiting, "w", 1, 0) != 1 || ux_read_exact(a, &c, 1) || c != 'w') {
        snprintf(why, len, "the waiting client: %s", strerror(errno));
        return 0;
    }
    close(a);
    close(waiting);
    waiting = new_client();
    feed();
    return 1;
}

int main(void)
{
    wl_init();
    signal(SIGPIPE, SIG_IGN);
    if (unshare(CLONE_NEWNET)) ux_die("unshare(CLONE_NEWNET)");
    laddr_len = ux_addr(&laddr, "netns-listener", 1);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, laddr_len) || listen(lfd, 4)) ux_die("listen");
    cli = new_client();
    if ((acc = accept(lfd, NULL, NULL)) < 0) ux_die("accept");
    waiting = new_client();
    if (ux_send_pattern(cli, 2000, 81) || ux_send_pattern(acc, 2000, 82)) ux_die("write");
    dg_al = ux_addr(&dg_a, "netns-dgram.sock", 0);
    unlink(dg_a.sun_path);
    dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (dg < 0 || bind(dg, (struct sockaddr *)&dg_a, dg_al)) ux_die("bind");
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq)) ux_die("socketpair");
    feed();
    wl_ready();
    for (;;) {
        wl_answer_check("unix_netns", check);
        wl_nap();
    }
}
