/*
 * eventfd: three eventfds, each checked after every restore:
 *  - e1 nonblocking, counter 0x100000005 (more than the 32-bit initial value eventfd() takes):
 *    one read returns it all, the next fails with EAGAIN; written back;
 *  - e2 blocking, EFD_SEMAPHORE, counter 3: three reads return 1 each, then it is not
 *    readable (poll); written back;
 *  - e3 nonblocking, EFD_SEMAPHORE, counter 0: a read fails with EAGAIN; poll says writable;
 *  - flags (O_NONBLOCK, O_RDWR, FD_CLOEXEC) and fdinfo (eventfd-semaphore) of each;
 *  - e1 is also held by a child process (fork): a write by the child is read by the parent,
 *    so the description is still shared.
 */
#include "wl.h"
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#define E1_COUNT 0x100000005ull

static int e1, e2, e3;
static int to_child[2];

static int fdinfo_field(int fd, const char *key, char *out, size_t n)
{
    char p[64], buf[4096];
    snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    char *l = strstr(buf, key);
    if (!l) return -1;
    l += strlen(key);
    while (*l == ':' || *l == ' ' || *l == '\t') l++;
    size_t i = 0;
    while (l[i] && l[i] != '\n' && i + 1 < n) { out[i] = l[i]; i++; }
    out[i] = 0;
    return 0;
}

static int check_flags(const char *name, int fd, int nonblock, const char *sem, char *why, size_t len)
{
    int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);
    if (fl < 0 || !!(fl & O_NONBLOCK) != nonblock || (fl & O_ACCMODE) != O_RDWR || !(fdf & FD_CLOEXEC)) {
        snprintf(why, len, "%s: flags %#o fd flags %#x, expected nonblock %d, O_RDWR, FD_CLOEXEC", name, fl, fdf, nonblock);
        return 0;
    }
    char v[64];
    if (fdinfo_field(fd, "eventfd-semaphore", v, sizeof(v)) || strcmp(v, sem)) {
        snprintf(why, len, "%s: fdinfo eventfd-semaphore %s, expected %s", name, v, sem);
        return 0;
    }
    return 1;
}

static int readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static int check(char *why, size_t len)
{
    if (!check_flags("e1", e1, 1, "0", why, len) || !check_flags("e2", e2, 0, "1", why, len) ||
        !check_flags("e3", e3, 1, "1", why, len))
        return 0;
    uint64_t v = 0;
    if (read(e1, &v, 8) != 8 || v != E1_COUNT) {
        snprintf(why, len, "e1: read %#llx (%s), expected %#llx", (unsigned long long)v, strerror(errno), E1_COUNT);
        return 0;
    }
    if (read(e1, &v, 8) != -1 || errno != EAGAIN) {
        snprintf(why, len, "e1: second read did not fail with EAGAIN");
        return 0;
    }
    /* The child writes 9 into its copy of e1 when asked. */
    if (write(to_child[1], "w", 1) != 1) { snprintf(why, len, "pipe to child: %s", strerror(errno)); return 0; }
    double t0 = wl_now();
    while (!readable(e1) && wl_now() - t0 < 3) wl_nap();
    if (read(e1, &v, 8) != 8 || v != 9) {
        snprintf(why, len, "e1: the child's write of 9 was not seen (read %llu): description not shared", (unsigned long long)v);
        return 0;
    }
    v = E1_COUNT;
    if (write(e1, &v, 8) != 8) { snprintf(why, len, "e1: write back: %s", strerror(errno)); return 0; }
    for (int i = 0; i < 3; i++) {
        if (!readable(e2)) { snprintf(why, len, "e2: not readable at read %d of 3", i + 1); return 0; }
        if (read(e2, &v, 8) != 8 || v != 1) {
            snprintf(why, len, "e2 (semaphore): read %d returned %llu, expected 1", i + 1, (unsigned long long)v);
            return 0;
        }
    }
    if (readable(e2)) { snprintf(why, len, "e2: readable after 3 semaphore reads of a counter of 3"); return 0; }
    v = 3;
    if (write(e2, &v, 8) != 8) { snprintf(why, len, "e2: write back: %s", strerror(errno)); return 0; }
    if (read(e3, &v, 8) != -1 || errno != EAGAIN) { snprintf(why, len, "e3: read of a zero counter did not fail with EAGAIN"); return 0; }
    struct pollfd p = {e3, POLLOUT, 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT)) { snprintf(why, len, "e3: not writable"); return 0; }
    return 1;
}

int main(void)
{
    wl_init();
    e1 = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e2 = eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC);
    e3 = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC);
    if (e1 < 0 || e2 < 0 || e3 < 0 || pipe2(to_child, O_CLOEXEC)) { perror("eventfd"); return 2; }
    uint64_t v = E1_COUNT;
    if (write(e1, &v, 8) != 8) { perror("write e1"); return 2; }
    pid_t child = fork();
    if (child == 0) {
        char c;
        while (read(to_child[0], &c, 1) == 1) {
            uint64_t nine = 9;
            if (write(e1, &nine, 8) != 8) _exit(3);
        }
        _exit(0);
    }
    fprintf(stderr, "eventfd: e1 %d e2 %d e3 %d child %d\n", e1, e2, e3, child);
    wl_ready();
    for (;;) {
        wl_answer_check("eventfd", check);
        wl_nap();
    }
}
