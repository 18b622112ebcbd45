/* vzcpt: netns */
/*
 * NETLINK_ROUTE sockets: one raw socket bound to a port id of its choice with the link
 * notification group (bind) and the IPv4 address group (NETLINK_ADD_MEMBERSHIP) and extended
 * acks on; one datagram socket left unbound. Each check: port id, groups and flag as set, and
 * both sockets still answer a link dump that lists "lo".
 */
#include "wl.h"
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>

#define PORTID 4242

static int raw_sk, dgram_sk;

/* Sends RTM_GETLINK (dump) and reads the answer to its end: 1 when "lo" is in it. */
static int dump_links(int fd, const char *name, char *why, size_t len)
{
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req = {
        .h = {.nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
              .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 77},
        .i = {.ifi_family = AF_UNSPEC},
    };
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
        snprintf(why, len, "%s: send RTM_GETLINK: %s", name, strerror(errno));
        return 0;
    }
    static char buf[65536];
    int found = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            snprintf(why, len, "%s: recv: %s", name, strerror(errno));
            return 0;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                if (!found)
                    snprintf(why, len, "%s: the link dump has no lo", name);
                return found;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                snprintf(why, len, "%s: the link dump failed", name);
                return 0;
            }
            if (h->nlmsg_type != RTM_NEWLINK)
                continue;
            struct ifinfomsg *ifi = NLMSG_DATA(h);
            int alen = IFLA_PAYLOAD(h);
            for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, alen); a = RTA_NEXT(a, alen))
                if (a->rta_type == IFLA_IFNAME && !strcmp(RTA_DATA(a), "lo"))
                    found = 1;
        }
    }
}

static int check(char *why, size_t len)
{
    struct sockaddr_nl a;
    socklen_t al = sizeof(a);
    if (getsockname(raw_sk, (struct sockaddr *)&a, &al) || a.nl_pid != PORTID) {
        snprintf(why, len, "raw socket: port id %u, want %u", a.nl_pid, PORTID);
        return 0;
    }
    unsigned groups[4] = {0};
    socklen_t gl = sizeof(groups);
    getsockopt(raw_sk, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &gl);
    unsigned want = RTMGRP_LINK | (1u << (RTNLGRP_IPV4_IFADDR - 1));
    if (groups[0] != want) {
        snprintf(why, len, "raw socket: groups %#x, want %#x", groups[0], want);
        return 0;
    }
    int v = 0;
    socklen_t vl = sizeof(v);
    getsockopt(raw_sk, SOL_NETLINK, NETLINK_EXT_ACK, &v, &vl);
    if (v != 1) {
        snprintf(why, len, "raw socket: NETLINK_EXT_ACK lost");
        return 0;
    }
    int type = 0;
    socklen_t tl = sizeof(type);
    getsockopt(dgram_sk, SOL_SOCKET, SO_TYPE, &type, &tl);
    if (type != SOCK_DGRAM) {
        snprintf(why, len, "second socket: type %d, not SOCK_DGRAM", type);
        return 0;
    }
    return dump_links(raw_sk, "raw socket", why, len) &&
           dump_links(dgram_sk, "datagram socket", why, len);
}

int main(void)
{
    wl_init();
    raw_sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_pid = PORTID, .nl_groups = RTMGRP_LINK};
    if (bind(raw_sk, (struct sockaddr *)&a, sizeof(a))) { perror("bind"); return 2; }
    int g = RTNLGRP_IPV4_IFADDR, one = 1;
    if (setsockopt(raw_sk, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) ||
        setsockopt(raw_sk, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one))) {
        perror("setsockopt");
        return 2;
    }
    dgram_sk = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE);
    if (dgram_sk < 0) { perror("socket"); return 2; }
    wl_ready();
    for (;;) {
        wl_answer_check("netlink_route", check);
        wl_nap();
    }
}
