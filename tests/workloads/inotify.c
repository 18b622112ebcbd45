/*
 * inotify: one nonblocking inotify instance with watches 1, 2 and 4 (3 was removed: a gap),
 * checked after every restore:
 *  - fdinfo lists the same watch descriptors, inodes and masks as at setup (a directory D
 *    with IN_CREATE|IN_DELETE, a file F with IN_MODIFY, a subdirectory D/sub with
 *    IN_ATTRIB|IN_ONESHOT|IN_EXCL_UNLINK);
 *  - a file created and removed in D gives IN_CREATE then IN_DELETE on wd 1 with its name; a
 *    write to F gives IN_MODIFY on wd 2; nothing else is queued;
 *  - a new watch gets a descriptor above 4 (then removed, its IN_IGNORED read).
 * D lives in the scenario's work directory.
 */
#include "wl.h"
#include <stdint.h>
#include <sys/inotify.h>

static int in;
static char dir[4200], file[4300], sub[4300], rec[4096];
static long serial;

static void watches(char *out, size_t n)
{
    char p[64], buf[8192];
    snprintf(p, sizeof(p), "/proc/self/fdinfo/%d", in);
    FILE *f = fopen(p, "r");
    out[0] = 0;
    if (!f) return;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    /* The kernel lists them newest first; keep "wd ino mask" in that order. */
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
        unsigned wd, mask;
        unsigned long ino;
        if (sscanf(l, "inotify wd:%x ino:%lx sdev:%*x mask:%x", &wd, &ino, &mask) != 3) continue;
        char one[128];
        snprintf(one, sizeof(one), "wd %u ino %lu mask %#x; ", wd, ino, mask);
        strncat(out, one, n - strlen(out) - 1);
    }
}

/* Reads exactly the expected events (wd, mask, name or "") within 2 s. */
static int expect(const int *wd, const uint32_t *mask, const char **name, int n, char *why, size_t len)
{
    char buf[8192];
    int got = 0;
    double t0 = wl_now();
    while (got < n && wl_now() - t0 < 2) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0) {
            if (errno != EAGAIN) { snprintf(why, len, "read: %s", strerror(errno)); return 0; }
            wl_nap();
            continue;
        }
        for (char *p = buf; p < buf + r;) {
            struct inotify_event *e = (struct inotify_event *)p;
            const char *nm = e->len ? e->name : "";
            if (got >= n || e->wd != wd[got] || e->mask != mask[got] || strcmp(nm, name[got])) {
                snprintf(why, len, "event %d: wd %d mask %#x name '%s', expected wd %d mask %#x name '%s'",
                         got, e->wd, e->mask, nm, got < n ? wd[got] : -1, got < n ? mask[got] : 0,
                         got < n ? name[got] : "(none)");
                return 0;
            }
            got++;
            p += sizeof(*e) + e->len;
        }
    }
    if (got < n) { snprintf(why, len, "only %d of %d events came in 2 s", got, n); return 0; }
    return 1;
}

static int check(char *why, size_t len)
{
    char now[4096];
    watches(now, sizeof(now));
    if (strcmp(now, rec)) { snprintf(why, len, "watches %s, recorded %s", now, rec); return 0; }
    int fl = fcntl(in, F_GETFL);
    if (!(fl & O_NONBLOCK)) { snprintf(why, len, "flags %#o: not nonblocking", fl); return 0; }
    char buf[64];
    if (read(in, buf, sizeof(buf)) != -1 || errno != EAGAIN) { snprintf(why, len, "events queued before the check"); return 0; }
    char name[64], path[4400];
    snprintf(name, sizeof(name), "touched-%ld", ++serial);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) { snprintf(why, len, "create %s: %s", path, strerror(errno)); return 0; }
    close(fd);
    unlink(path);
    int f = open(file, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (f < 0 || write(f, "x", 1) != 1) { snprintf(why, len, "write %s: %s", file, strerror(errno)); return 0; }
    close(f);
    int wds[] = {1, 1, 2};
    uint32_t masks[] = {IN_CREATE, IN_DELETE, IN_MODIFY};
    const char *names[] = {name, name, ""};
    if (!expect(wds, masks, names, 3, why, len)) return 0;
    int extra = inotify_add_watch(in, dir, IN_OPEN | IN_MASK_CREATE);
    if (extra != -1 || errno != EEXIST) { snprintf(why, len, "a second watch on D: %d (%s), expected EEXIST: D is not watched", extra, strerror(errno)); return 0; }
    extra = inotify_add_watch(in, "/", IN_OPEN);
    if (extra <= 4) { snprintf(why, len, "a new watch got descriptor %d, expected > 4", extra); return 0; }
    inotify_rm_watch(in, extra);
    int wd_ig[] = {extra};
    uint32_t m_ig[] = {IN_IGNORED};
    const char *n_ig[] = {""};
    return expect(wd_ig, m_ig, n_ig, 1, why, len);
}

int main(void)
{
    wl_init();
    char cwd[4096];
    if (!getcwd(cwd, sizeof(cwd))) return 2;
    snprintf(dir, sizeof(dir), "%s/inotify-dir", cwd);
    snprintf(file, sizeof(file), "%s/file", dir);
    snprintf(sub, sizeof(sub), "%s/sub", dir);
    mkdir(dir, 0700);
    mkdir(sub, 0700);
    int fd = open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) { perror("create"); return 2; }
    close(fd);
    in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int w1 = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE);
    int w2 = inotify_add_watch(in, file, IN_MODIFY);
    int w3 = inotify_add_watch(in, "/", IN_OPEN);
    inotify_rm_watch(in, w3);
    int w4 = inotify_add_watch(in, sub, IN_ATTRIB | IN_ONESHOT | IN_EXCL_UNLINK);
    if (w1 != 1 || w2 != 2 || w3 != 3 || w4 != 4) { fprintf(stderr, "inotify: wds %d %d %d %d\n", w1, w2, w3, w4); return 2; }
    char buf[4096];
    while (read(in, buf, sizeof(buf)) > 0) {} /* the IN_IGNORED of watch 3 */
    watches(rec, sizeof(rec));
    fprintf(stderr, "inotify: fd %d watches %s\n", in, rec);
    wl_ready();
    for (;;) {
        wl_answer_check("inotify", check);
        wl_nap();
    }
}
