/*
 * unix_pair: a stream socketpair whose ends live in two processes, with data queued in both
 * directions (40000 bytes root -> child, 30000 bytes child -> root), and a second stream
 * socketpair whose two ends are both in the root (1000 bytes queued).
 *
 * On a check the root reads its queue (exactly 30000 bytes of the child's pattern, nothing
 * more), then asks the child over a pipe to read its own (exactly 40000 bytes); the child
 * answers on another pipe and writes its 30000 bytes again; the root then writes its 40000
 * bytes again. So every dump sees both queues full, and a dump that consumed (or duplicated)
 * a byte fails the next check, of the original (leave-running) as of the copy.
 */
#include "unix_wl.h"
#include <signal.h>

#define RC_LEN 40000
#define CR_LEN 30000
#define SELF_LEN 1000

static int sv[2], cmd[2], ans[2], self_pair[2];

static void child_loop(void)
{
    close(sv[0]);
    close(cmd[1]);
    close(ans[0]);
    if (ux_send_pattern(sv[1], CR_LEN, 2)) ux_die("child write");
    write(ans[1], "R", 1);
    for (;;) {
        char c;
        if (read(cmd[0], &c, 1) != 1) exit(0);
        char why[256] = "";
        if (ux_expect_stream(sv[1], RC_LEN, 1, "child's end", why, sizeof(why)))
            snprintf(why, sizeof(why), "PASS");
        char rec[256] = {0};
        snprintf(rec, sizeof(rec), "%s", why);
        if (ux_send_pattern(sv[1], CR_LEN, 2)) snprintf(rec, sizeof(rec), "child rewrite: %s", strerror(errno));
        write(ans[1], rec, sizeof(rec));
    }
}

static int check(char *why, size_t len)
{
    if (!ux_expect_stream(sv[0], CR_LEN, 2, "root's end", why, len)) return 0;
    if (!ux_expect_stream(self_pair[1], SELF_LEN, 3, "same-process pair", why, len)) return 0;
    if (ux_send_pattern(self_pair[0], SELF_LEN, 3)) { snprintf(why, len, "rewrite self pair"); return 0; }
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM) {
        snprintf(why, len, "SO_TYPE %d", type);
        return 0;
    }
    if (write(cmd[1], "c", 1) != 1) { snprintf(why, len, "command pipe: %s", strerror(errno)); return 0; }
    char rec[256];
    if (read(ans[0], rec, sizeof(rec)) != sizeof(rec)) { snprintf(why, len, "child answer lost"); return 0; }
    rec[255] = 0;
    if (strcmp(rec, "PASS")) { snprintf(why, len, "%s", rec); return 0; }
    if (ux_send_pattern(sv[0], RC_LEN, 1)) { snprintf(why, len, "root rewrite: %s", strerror(errno)); return 0; }
    /* The child's rewrite lands before the next dump. */
    double end = wl_now() + 5;
    while (ux_inq(sv[0]) != CR_LEN)
        if (wl_now() > end) { snprintf(why, len, "the child's data did not come back"); return 0; }
        else wl_nap();
    return 1;
}

int main(void)
{
    wl_init();
    signal(SIGPIPE, SIG_IGN);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || socketpair(AF_UNIX, SOCK_STREAM, 0, self_pair))
        ux_die("socketpair");
    if (pipe(cmd) || pipe(ans)) ux_die("pipe");
    pid_t pid = fork();
    if (pid < 0) ux_die("fork");
    if (pid == 0) child_loop();
    close(sv[1]);
    close(cmd[0]);
    close(ans[1]);
    char c;
    if (read(ans[0], &c, 1) != 1) ux_die("child start");
    if (ux_send_pattern(sv[0], RC_LEN, 1) || ux_send_pattern(self_pair[0], SELF_LEN, 3)) ux_die("write");
    while (ux_inq(sv[0]) != CR_LEN) wl_nap();
    wl_ready();
    for (;;) {
        wl_answer_check("unix_pair", check);
        wl_nap();
    }
}
