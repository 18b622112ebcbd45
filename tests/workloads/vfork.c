/*
 * vfork: a parent that vforks again and again; each child sleeps 30 ms before it execs
 * /bin/true, so a dump often finds the parent waiting inside vfork for a child that must not
 * be stopped (the cgroup freezer counts such a parent as frozen; a seize that stopped the
 * child would wait for the parent forever). A check verifies that the vforks go on and that
 * every child exited with status 0.
 */
#include "wl.h"
#include <sys/wait.h>
#include <time.h>

int main(void)
{
    wl_init();
    long done = 0, at_last_check = 0;
    char *const argv[] = {"true", NULL};
    wl_ready();
    for (;;) {
        pid_t pid = vfork();
        if (pid == 0) {
            struct timespec ts = {0, 30 * 1000 * 1000};
            nanosleep(&ts, NULL);
            execv("/bin/true", argv);
            _exit(127);
        }
        if (pid < 0) {
            wl_fail("vfork: %s", strerror(errno));
            continue;
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            wl_fail("child %d ended with status %#x", pid, st);
        }
        done++;
        if (wl_poll()) {
            if (done <= at_last_check)
                wl_fail("no vfork since the last check (%ld)", done);
            else
                wl_pass();
            at_last_check = done;
        }
    }
}
