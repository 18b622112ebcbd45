/*
 * files: every kind of file descriptor of issue 2 part 4, in a two-process tree.
 *
 * Set up under $VZCPT_CTL/files/ and checked on every check against values recorded at setup:
 *  - regular files: ro.dat O_RDONLY at fd 100 (position 1234) and its dup at fd 200 (dup3
 *    O_CLOEXEC: one open file description, so one offset, but FD_CLOEXEC only on fd 200);
 *    rw.dat O_RDWR|O_CLOEXEC at 5000 (opened after the fork: the child does not have it);
 *    app.dat O_WRONLY|O_APPEND|O_CLOEXEC at 777 (a write must still land at the end of file);
 *    big.dat O_RDWR at 5 GiB + 4321 in a 6 GiB sparse file (64-bit offsets).
 *    For each: lseek(fd, 0, SEEK_CUR), F_GETFL access mode and O_APPEND/O_NONBLOCK, F_GETFD
 *    FD_CLOEXEC, fstat st_dev/st_ino/st_size equal to the recorded ones, the contents read
 *    with pread (and, for writable ones, a pwrite of the same bytes).
 *  - unl.dat O_RDWR|O_CLOEXEC unlinked while open (70000 bytes, position 3333): st_nlink == 0,
 *    the path is gone, the contents are all there, /proc/self/fd/N still reads
 *    "<its path> (deleted)". A second, separate open of it (O_RDONLY, position 100) must still
 *    be the same inode: it sees the bytes written through the first.
 *  - a directory fd at fd 500 (O_CLOEXEC): fstat is a dir with the recorded ino, getdents64
 *    lists exactly . .. a b c, openat relative to it opens "a" and reads its contents.
 *  - /dev/null (O_RDWR), /dev/zero, /dev/urandom (O_CLOEXEC): st_rdev, behaviour on read/write.
 *  - a pipe holding 10000 bytes of pattern (read end O_NONBLOCK): FIONREAD, then everything is
 *    read, verified and written back (the dump must neither consume nor duplicate the data).
 *  - a FIFO (mkfifo files/fifo) opened read end (O_NONBLOCK) and write end, 5000 bytes unread:
 *    same as the pipe, plus fstat ino of the FIFO inode and a writer newly opened by path must
 *    reach the restored read end (so the restored ends are the named FIFO, not a private pipe).
 *  - the whole fd table (/proc/self/fd) equals the recorded list: fd gaps (100, 200, 500)
 *    stay, nothing leaks in.
 *  - descriptors shared through fork: the child inherits everything opened before the fork.
 *    On a check the child answers first through child-1: it verifies its own fd table, that
 *    shared.dat's offset is what the root left there, then moves that offset; it writes a
 *    marker byte into the inherited pipe and into the inherited unlinked file. The root then
 *    sees the moved offset, the marker byte in its pipe read end and in its unlinked file (one
 *    open file description, one pipe, one inode, shared again after restore), and moves the
 *    offset of shared.dat for the child's next check.
 * Every check leaves the state (positions, on-disk contents, pipe contents) as it found it, except
 * the shared offset and marker bytes, which both processes track in their own memory, so a copy
 * restored from an earlier image (leave-running mode) checks consistently.
 */
#include "wl.h"
#include <dirent.h>
#include <poll.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>

#define FILE_SIZE 65536
#define APP_SIZE 3000
#define UNL_SIZE 70000
#define UNL_MARK_OFF 40000
#define PIPE_LEN 10000
#define FIFO_LEN 5000
#define BIG_SIZE (6LL << 30)
#define BIG_MARK_OFF (5LL << 30)
#define BIG_POS (BIG_MARK_OFF + 4321)
#define RO_POS 1234
#define RW_POS 5000
#define APP_POS 777
#define UNL_POS 3333
#define UNL_POS2 100
#define SH_POS0 4444
#define FD_RO 100
#define FD_RO_DUP 200
#define FD_DIR 500
#define MAXFDS 64

static const char BIG_MARK[] = "big-file-mark-at-5GiB";

/* One byte of the pattern of stream k. */
static unsigned char pat(int k, size_t i)
{
    return (unsigned char)(((i * 2654435761u) >> 13) ^ (unsigned)(k * 0x35) ^ i);
}

/* Offsets of shared.dat: moved by the child at check n, then by the root. */
static off_t child_off(long n) { return 1000 + n * 37; }
static off_t root_off(long n) { return 2000 + n * 41; }
static unsigned char unl_mark(long n) { return (unsigned char)(n * 13 + 0x5a); }
static unsigned char pipe_mark(long n) { return (unsigned char)(n * 7 + 0x21); }

static char dir_files[4200];
static char why[10000];

#define FAIL(...)                                                                             \
    do {                                                                                      \
        snprintf(why, sizeof(why), __VA_ARGS__);                                              \
        return -1;                                                                            \
    } while (0)

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static const char *fpath(const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", dir_files, name);
    return buf;
}

/* ---- the fd table -------------------------------------------------------------------- */

struct fdlist {
    int n;
    int fd[MAXFDS];
};

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static int list_fds(struct fdlist *l)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) FAIL("opendir /proc/self/fd: %s", strerror(errno));
    l->n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d)) continue;
        if (l->n < MAXFDS) l->fd[l->n++] = fd;
    }
    closedir(d);
    qsort(l->fd, l->n, sizeof(int), cmp_int);
    return 0;
}

static void fmt_fds(const struct fdlist *l, char *buf, size_t n)
{
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < l->n && off < n; i++)
        off += snprintf(buf + off, n - off, "%s%d", i ? "," : "", l->fd[i]);
}

static int check_fd_table(const char *who, const struct fdlist *rec)
{
    struct fdlist now;
    if (list_fds(&now)) return -1;
    if (now.n != rec->n || memcmp(now.fd, rec->fd, sizeof(int) * now.n)) {
        char a[800], b[800];
        fmt_fds(rec, a, sizeof(a));
        fmt_fds(&now, b, sizeof(b));
        FAIL("%s: fd table is [%s], expected [%s]", who, b, a);
    }
    return 0;
}

/* ---- generic per-fd checks ------------------------------------------------------------ */

struct fdrec {
    const char *name; /* for messages */
    int fd;
    int flags;        /* F_GETFL & (O_ACCMODE | O_APPEND | O_NONBLOCK) */
    int fdflags;      /* F_GETFD */
    off_t pos;        /* -1: not seekable */
    dev_t dev;
    ino_t ino;
    mode_t type;      /* S_IFMT bits */
    dev_t rdev;
    off_t size;       /* -1: not checked */
    char link[1024];  /* readlink /proc/self/fd/N; "" = not checked */
};

static void fd_link(int fd, char *buf, size_t n)
{
    char lp[64];
    snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
    ssize_t l = readlink(lp, buf, n - 1);
    buf[l > 0 ? l : 0] = 0;
}

static int fl_bits(int fd) { return fcntl(fd, F_GETFL) & (O_ACCMODE | O_APPEND | O_NONBLOCK); }

static void fmt_fl(int fl, char *buf, size_t n)
{
    const char *acc = (fl & O_ACCMODE) == O_RDONLY ? "O_RDONLY"
                      : (fl & O_ACCMODE) == O_WRONLY ? "O_WRONLY"
                      : (fl & O_ACCMODE) == O_RDWR   ? "O_RDWR"
                                                     : "O_ACCMODE?";
    snprintf(buf, n, "%s%s%s", acc, fl & O_APPEND ? "|O_APPEND" : "",
             fl & O_NONBLOCK ? "|O_NONBLOCK" : "");
}

static void record(struct fdrec *r, const char *name, int fd, int with_pos, int with_size)
{
    struct stat st;
    if (fstat(fd, &st)) die("fstat");
    r->name = name;
    r->fd = fd;
    r->flags = fl_bits(fd);
    r->fdflags = fcntl(fd, F_GETFD);
    r->pos = with_pos ? lseek(fd, 0, SEEK_CUR) : -1;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->type = st.st_mode & S_IFMT;
    r->rdev = st.st_rdev;
    r->size = with_size ? st.st_size : -1;
    if (r->type == S_IFIFO && strncmp(name, "fifo", 4))
        r->link[0] = 0; /* "pipe:[ino]": a new inode after restore */
    else
        fd_link(fd, r->link, sizeof(r->link));
}

/* Flags, FD_CLOEXEC, position, type, dev/ino (unless !check_ino), rdev, size. */
static int check_rec(const struct fdrec *r, int check_ino)
{
    struct stat st;
    if (fstat(r->fd, &st)) FAIL("%s (fd %d): fstat: %s", r->name, r->fd, strerror(errno));
    int fl = fcntl(r->fd, F_GETFL);
    if (fl < 0) FAIL("%s (fd %d): F_GETFL: %s", r->name, r->fd, strerror(errno));
    fl &= O_ACCMODE | O_APPEND | O_NONBLOCK;
    if (fl != r->flags) {
        char a[64], b[64];
        fmt_fl(fl, a, sizeof(a));
        fmt_fl(r->flags, b, sizeof(b));
        FAIL("%s (fd %d): F_GETFL flags %s, expected %s", r->name, r->fd, a, b);
    }
    int fdf = fcntl(r->fd, F_GETFD);
    if (fdf != r->fdflags)
        FAIL("%s (fd %d): F_GETFD %#x (FD_CLOEXEC %s), expected %#x", r->name, r->fd, fdf,
             fdf & FD_CLOEXEC ? "set" : "clear", r->fdflags);
    if ((st.st_mode & S_IFMT) != r->type)
        FAIL("%s (fd %d): file type %#o, expected %#o", r->name, r->fd,
             (unsigned)(st.st_mode & S_IFMT), (unsigned)r->type);
    if (check_ino && (st.st_dev != r->dev || st.st_ino != r->ino))
        FAIL("%s (fd %d): st_dev:st_ino %lx:%lu, expected %lx:%lu", r->name, r->fd,
             (unsigned long)st.st_dev, (unsigned long)st.st_ino, (unsigned long)r->dev,
             (unsigned long)r->ino);
    if (r->type == S_IFCHR && st.st_rdev != r->rdev)
        FAIL("%s (fd %d): st_rdev %u:%u, expected %u:%u", r->name, r->fd, major(st.st_rdev),
             minor(st.st_rdev), major(r->rdev), minor(r->rdev));
    if (r->size >= 0 && st.st_size != r->size)
        FAIL("%s (fd %d): st_size %lld, expected %lld", r->name, r->fd, (long long)st.st_size,
             (long long)r->size);
    if (r->link[0] && check_ino) {
        char l[1024];
        fd_link(r->fd, l, sizeof(l));
        if (strcmp(l, r->link))
            FAIL("%s (fd %d): /proc/self/fd/%d -> '%s', expected '%s'", r->name, r->fd, r->fd, l,
                 r->link);
    }
    if (r->pos >= 0) {
        off_t p = lseek(r->fd, 0, SEEK_CUR);
        if (p != r->pos)
            FAIL("%s (fd %d): position %lld, expected %lld", r->name, r->fd, (long long)p,
                 (long long)r->pos);
    }
    return 0;
}

/* pread [0, len) and compare with the pattern k (or with exp when not NULL). */
static int check_contents(const char *name, int fd, int k, const unsigned char *exp, size_t len)
{
    static unsigned char buf[UNL_SIZE + 16];
    ssize_t n = pread(fd, buf, len + 16, 0);
    if (n < 0) FAIL("%s (fd %d): pread: %s", name, fd, strerror(errno));
    if ((size_t)n != len) FAIL("%s (fd %d): pread got %zd bytes, expected %zu", name, fd, n, len);
    for (size_t i = 0; i < len; i++) {
        unsigned char e = exp ? exp[i] : pat(k, i);
        if (buf[i] != e)
            FAIL("%s (fd %d): byte %zu is %#x, expected %#x", name, fd, i, buf[i], e);
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= n;
    }
    return 0;
}

static void make_file(const char *name, int k, size_t len)
{
    char p[4300];
    unsigned char *buf = malloc(len);
    if (!buf) die("malloc");
    for (size_t i = 0; i < len; i++) buf[i] = pat(k, i);
    int fd = open(fpath(name, p, sizeof(p)), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, buf, len)) die(p);
    close(fd);
    free(buf);
}

/* Moves the file open on `fd` (O_CLOEXEC) to exactly `want`, closing the original. */
static int move_fd(int fd, int want, int cloexec)
{
    if (dup3(fd, want, cloexec ? O_CLOEXEC : 0) != want) die("dup3");
    close(fd);
    return want;
}

/* ---- state ------------------------------------------------------------------------------ */

enum { R_RO, R_RODUP, R_RW, R_APP, R_BIG, R_SH, R_UNL, R_UNL2, R_DIR, R_NULL, R_ZERO, R_URAND,
       R_PIPE_R, R_PIPE_W, R_FIFO_R, R_FIFO_W, R_COUNT };
static struct fdrec rec[R_COUNT];
static unsigned char unl_expect[UNL_SIZE];
static unsigned char pipe_pat[PIPE_LEN], fifo_pat[FIFO_LEN];
static ino_t dir_a_ino;
static pid_t child_pid;
static struct fdlist root_fds, child_fds;
static char unl_path[4300];

/* ---- the child -------------------------------------------------------------------------- */

static long child_last; /* last check answered by the child; 0: none yet */
static int child_sh_fd = 300; /* the child's shared.dat: another number, same description */
static unsigned char child_unl_byte;

static int child_check(long n)
{
    if (check_fd_table("child", &child_fds)) return -1;
    if (getppid() == 1 || kill(getppid(), 0)) FAIL("child: parent %d is gone", getppid());
    /* shared.dat: one description with the root; the root left its offset at root_off(last). */
    int fd = child_sh_fd;
    off_t want = child_last ? root_off(child_last) : SH_POS0;
    off_t p = lseek(fd, 0, SEEK_CUR);
    if (p != want)
        FAIL("child: shared.dat (fd %d) offset %lld, expected %lld (set by the parent)", fd,
             (long long)p, (long long)want);
    struct stat st;
    if (fstat(fd, &st) || st.st_ino != rec[R_SH].ino || st.st_dev != rec[R_SH].dev)
        FAIL("child: shared.dat (fd %d) is not the recorded inode", fd);
    if (lseek(fd, child_off(n), SEEK_SET) != child_off(n))
        FAIL("child: lseek shared.dat: %s", strerror(errno));
    /* The pipe: the root's data is visible through the child's inherited read end. */
    int avail = -1;
    if (ioctl(rec[R_PIPE_R].fd, FIONREAD, &avail))
        FAIL("child: FIONREAD on the pipe: %s", strerror(errno));
    if (avail != PIPE_LEN)
        FAIL("child: pipe (fd %d) holds %d bytes, expected %d", rec[R_PIPE_R].fd, avail, PIPE_LEN);
    unsigned char m = pipe_mark(n);
    if (write(rec[R_PIPE_W].fd, &m, 1) != 1)
        FAIL("child: write to the pipe: %s", strerror(errno));
    /* The unlinked file: same inode as the root's. */
    int ufd = rec[R_UNL].fd;
    if (fstat(ufd, &st)) FAIL("child: fstat unl.dat: %s", strerror(errno));
    if (st.st_nlink != 0) FAIL("child: unlinked unl.dat has st_nlink %lu", (unsigned long)st.st_nlink);
    unsigned char b = 0;
    if (pread(ufd, &b, 1, UNL_MARK_OFF) != 1) FAIL("child: pread unl.dat: %s", strerror(errno));
    if (b != child_unl_byte)
        FAIL("child: unl.dat byte %d is %#x, expected %#x", UNL_MARK_OFF, b, child_unl_byte);
    unsigned char um = unl_mark(n);
    if (pwrite(ufd, &um, 1, UNL_MARK_OFF) != 1)
        FAIL("child: pwrite unl.dat: %s", strerror(errno));
    child_unl_byte = um;
    return 0;
}

static void child_main(void)
{
    /* Shared.dat moves to fd 300 in the child; the FIFO is not the child's business. */
    move_fd(rec[R_SH].fd, child_sh_fd, 0);
    close(rec[R_FIFO_R].fd);
    close(rec[R_FIFO_W].fd);
    if (list_fds(&child_fds)) die("list_fds");
    child_unl_byte = unl_expect[UNL_MARK_OFF];
    for (;;) {
        if (wl_poll()) {
            static char out[sizeof(why) + 64];
            long n = wl_answered;
            if (child_check(n) == 0)
                snprintf(out, sizeof(out), "%ld PASS\n", n);
            else
                snprintf(out, sizeof(out), "%ld FAIL: %s\n", n, why);
            child_last = n;
            wl_write_file("child-1", out);
        }
        wl_nap();
    }
}

/* Waits for the child's answer to check n. */
static int wait_child(long n)
{
    char p[4300];
    double t0 = wl_now();
    wl_path("child-1", p, sizeof(p));
    for (;;) {
        char buf[3300] = {0};
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            char *rest;
            if (r > 0 && strtol(buf, &rest, 10) == n) {
                buf[strcspn(buf, "\n")] = 0;
                if (strcmp(rest, " PASS")) FAIL("child %d answered %s", child_pid, rest + 1);
                return 0;
            }
        }
        int st;
        pid_t w = waitpid(child_pid, &st, WNOHANG);
        if (w == child_pid)
            FAIL("child %d exited (status %#x) before answering check %ld", child_pid, st, n);
        if (w < 0) FAIL("waitpid(child %d): %s", child_pid, strerror(errno));
        if (wl_now() - t0 > 20) FAIL("child %d did not answer check %ld within 20 s", child_pid, n);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

/* ---- the root's checks ------------------------------------------------------------------ */

static int check_regular(void)
{
    for (int i = R_RO; i <= R_BIG; i++)
        if (check_rec(&rec[i], 1)) return -1;
    /* ro.dat: contents; a read() at the position moves the offset shared by fds 100 and 200. */
    if (check_contents("ro.dat", FD_RO, 1, NULL, FILE_SIZE)) return -1;
    unsigned char b[100];
    if (read(FD_RO, b, sizeof(b)) != sizeof(b)) FAIL("ro.dat: read at %d failed", RO_POS);
    for (int i = 0; i < 100; i++)
        if (b[i] != pat(1, RO_POS + i))
            FAIL("ro.dat: read() at position %d: byte %d is %#x, expected %#x", RO_POS, i, b[i],
                 pat(1, RO_POS + i));
    off_t p = lseek(FD_RO_DUP, 0, SEEK_CUR);
    if (p != RO_POS + 100)
        FAIL("fd %d (dup of fd %d): position %lld after reading 100 bytes on fd %d, expected %d "
             "(offset not shared)", FD_RO_DUP, FD_RO, (long long)p, FD_RO, RO_POS + 100);
    lseek(FD_RO_DUP, RO_POS, SEEK_SET);
    if ((p = lseek(FD_RO, 0, SEEK_CUR)) != RO_POS)
        FAIL("fd %d: position %lld after lseek on its dup fd %d, expected %d", FD_RO,
             (long long)p, FD_RO_DUP, RO_POS);
    if (write(FD_RO, b, 1) != -1 || errno != EBADF)
        FAIL("ro.dat (fd %d, O_RDONLY): write did not fail with EBADF", FD_RO);

    /* rw.dat: readable and writable (the same bytes written back). */
    int fd = rec[R_RW].fd;
    if (check_contents("rw.dat", fd, 2, NULL, FILE_SIZE)) return -1;
    for (int i = 0; i < 100; i++) b[i] = pat(2, 30000 + i);
    if (pwrite(fd, b, 100, 30000) != 100) FAIL("rw.dat: pwrite: %s", strerror(errno));

    /* app.dat: O_WRONLY|O_APPEND at 777: a write lands at the end, then undo it. */
    fd = rec[R_APP].fd;
    if (pread(fd, b, 1, 0) != -1 || errno != EBADF)
        FAIL("app.dat (fd %d, O_WRONLY): pread did not fail with EBADF", fd);
    if (write(fd, "appended!", 9) != 9) FAIL("app.dat: write: %s", strerror(errno));
    p = lseek(fd, 0, SEEK_CUR);
    struct stat st;
    fstat(fd, &st);
    if (p != APP_SIZE + 9 || st.st_size != APP_SIZE + 9)
        FAIL("app.dat (fd %d): after a 9-byte write at position %d: position %lld size %lld, "
             "expected both %d (O_APPEND lost?)", fd, APP_POS, (long long)p,
             (long long)st.st_size, APP_SIZE + 9);
    if (ftruncate(fd, APP_SIZE) || lseek(fd, APP_POS, SEEK_SET) != APP_POS)
        FAIL("app.dat: undo: %s", strerror(errno));
    char path[4300];
    int rfd = open(fpath("app.dat", path, sizeof(path)), O_RDONLY | O_CLOEXEC);
    if (rfd < 0) FAIL("open %s: %s", path, strerror(errno));
    int r = check_contents("app.dat (opened again by path)", rfd, 3, NULL, APP_SIZE);
    close(rfd);
    if (r) return -1;

    /* big.dat: 64-bit position, the mark at 5 GiB. */
    fd = rec[R_BIG].fd;
    char mk[sizeof(BIG_MARK)] = {0};
    if (pread(fd, mk, sizeof(BIG_MARK) - 1, BIG_MARK_OFF) != sizeof(BIG_MARK) - 1 ||
        strcmp(mk, BIG_MARK))
        FAIL("big.dat: at offset %lld: '%s', expected '%s'", (long long)BIG_MARK_OFF, mk, BIG_MARK);
    if (pwrite(fd, BIG_MARK, sizeof(BIG_MARK) - 1, BIG_MARK_OFF) != sizeof(BIG_MARK) - 1)
        FAIL("big.dat: pwrite: %s", strerror(errno));
    return 0;
}

static int check_unlinked(long n)
{
    struct fdrec *r = &rec[R_UNL];
    if (check_rec(r, 0)) return -1; /* a restored unlinked file is a new inode */
    struct stat st;
    fstat(r->fd, &st);
    if (st.st_nlink != 0)
        FAIL("unl.dat (fd %d): st_nlink %lu, expected 0 (unlinked while open)", r->fd,
             (unsigned long)st.st_nlink);
    if (access(unl_path, F_OK) == 0) FAIL("unlinked %s exists again", unl_path);
    char target[1024];
    fd_link(r->fd, target, sizeof(target));
    size_t l = strlen(target);
    if (l < 10 || strcmp(target + l - 10, " (deleted)"))
        FAIL("unl.dat (fd %d): /proc/self/fd/%d -> '%s', expected '... (deleted)'", r->fd, r->fd,
             target);
    unl_expect[UNL_MARK_OFF] = unl_mark(n); /* written by the child just now */
    return check_contents("unl.dat (unlinked)", r->fd, 0, unl_expect, UNL_SIZE);
}

static int check_shared(long n)
{
    if (check_rec(&rec[R_SH], 1)) return -1;
    int fd = rec[R_SH].fd;
    off_t p = lseek(fd, 0, SEEK_CUR);
    if (p != child_off(n))
        FAIL("shared.dat (fd %d, shared with the child): position %lld, expected %lld as moved by "
             "the child (open file description not shared?)", fd, (long long)p,
             (long long)child_off(n));
    if (check_contents("shared.dat", fd, 5, NULL, FILE_SIZE)) return -1;
    lseek(fd, root_off(n), SEEK_SET); /* for the child's next check */
    return 0;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static const char *dir_names[] = {".", "..", "a", "b", "c"};

/*
 * getdents64 from the current position: sets bit k of *mask for dir_names[k]; at most one
 * call (bufsize bytes) when once, else until the end. Counts duplicates in *dups.
 */
static int read_dir(int fd, size_t bufsize, int once, int *mask, int *dups)
{
    char buf[4096];
    *mask = 0;
    *dups = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, bufsize);
        if (n < 0) FAIL("getdents64 on the dir fd %d: %s", fd, strerror(errno));
        if (n == 0) break;
        for (long o = 0; o < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + o);
            int k;
            for (k = 0; k < 5 && strcmp(d->d_name, dir_names[k]); k++);
            if (k == 5) FAIL("dir fd %d: getdents64 lists unexpected '%s'", fd, d->d_name);
            if (*mask & (1 << k)) ++*dups;
            *mask |= 1 << k;
            o += d->d_reclen;
        }
        if (once) break;
    }
    return 0;
}

static void fmt_mask(int mask, char *buf, size_t n)
{
    size_t off = 0;
    buf[0] = 0;
    for (int k = 0; k < 5; k++)
        if (mask & (1 << k)) off += snprintf(buf + off, n - off, " %s", dir_names[k]);
}

static int dir_rest_mask; /* entries after the recorded (non-zero) directory position */

static int check_dir(void)
{
    struct fdrec *r = &rec[R_DIR];
    if (check_rec(r, 1)) return -1; /* includes the position: after the first two entries */
    int mask, dups;
    char a[64], b[64];
    if (read_dir(r->fd, 4096, 0, &mask, &dups)) return -1;
    if (mask != dir_rest_mask || dups) {
        fmt_mask(mask, a, sizeof(a));
        fmt_mask(dir_rest_mask, b, sizeof(b));
        FAIL("dir fd %d: getdents64 from position %lld lists {%s } (%d duplicates), expected {%s }",
             r->fd, (long long)r->pos, a, dups, b);
    }
    if (lseek(r->fd, 0, SEEK_SET) != 0) FAIL("dir fd %d: rewind: %s", r->fd, strerror(errno));
    if (read_dir(r->fd, 4096, 0, &mask, &dups)) return -1;
    if (mask != 31 || dups) {
        fmt_mask(mask, a, sizeof(a));
        FAIL("dir fd %d: getdents64 from 0 lists {%s } (%d duplicates), expected { . .. a b c }",
             r->fd, a, dups);
    }
    if (lseek(r->fd, r->pos, SEEK_SET) != r->pos)
        FAIL("dir fd %d: lseek back to %lld: %s", r->fd, (long long)r->pos, strerror(errno));
    int fd = openat(r->fd, "a", O_RDONLY | O_CLOEXEC);
    if (fd < 0) FAIL("openat(dir fd %d, \"a\"): %s", r->fd, strerror(errno));
    char c[32] = {0};
    ssize_t n = read(fd, c, sizeof(c) - 1);
    struct stat st;
    fstat(fd, &st);
    close(fd);
    if (n != 9 || strcmp(c, "content-a"))
        FAIL("openat(dir fd %d, \"a\") reads '%s', expected 'content-a'", r->fd, c);
    if (st.st_ino != dir_a_ino)
        FAIL("openat(dir fd %d, \"a\"): ino %lu, expected %lu", r->fd, (unsigned long)st.st_ino,
             (unsigned long)dir_a_ino);
    return 0;
}

static int check_devices(void)
{
    for (int i = R_NULL; i <= R_URAND; i++)
        if (check_rec(&rec[i], 1)) return -1;
    char b[64];
    if (read(rec[R_NULL].fd, b, sizeof(b)) != 0) FAIL("/dev/null: read did not return 0");
    if (write(rec[R_NULL].fd, b, sizeof(b)) != sizeof(b)) FAIL("/dev/null: write failed");
    memset(b, 0x55, sizeof(b));
    if (read(rec[R_ZERO].fd, b, sizeof(b)) != sizeof(b)) FAIL("/dev/zero: read failed");
    for (int i = 0; i < 64; i++)
        if (b[i]) FAIL("/dev/zero: byte %d is %#x", i, (unsigned char)b[i]);
    memset(b, 0, sizeof(b));
    if (read(rec[R_URAND].fd, b, sizeof(b)) != sizeof(b)) FAIL("/dev/urandom: read failed");
    int nz = 0;
    for (int i = 0; i < 64; i++) nz += b[i] != 0;
    if (nz < 32) FAIL("/dev/urandom: only %d of 64 bytes are non-zero", nz);
    return 0;
}

/*
 * A pipe-like pair: FIONREAD == expect, read everything (nonblocking read end), compare with
 * data (+ one extra byte `mark` if mark >= 0), write data back, FIONREAD == len again.
 */
static int check_pipe_data(const char *name, int rfd, int wfd, const unsigned char *data,
                           int len, int extra, const unsigned char *extra_data)
{
    static unsigned char buf[PIPE_LEN + 64];
    int avail = -1;
    if (ioctl(rfd, FIONREAD, &avail)) FAIL("%s: FIONREAD: %s", name, strerror(errno));
    if (avail != len + extra)
        FAIL("%s (fd %d): FIONREAD %d bytes unread, expected %d", name, rfd, avail, len + extra);
    int got = 0;
    while (got < len + extra) {
        ssize_t n = read(rfd, buf + got, len + extra - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) FAIL("%s: read after %d bytes: %s", name, got, n ? strerror(errno) : "EOF");
        got += n;
    }
    if (read(rfd, buf, 1) != -1 || errno != EAGAIN)
        FAIL("%s: more data than FIONREAD said, or read end not O_NONBLOCK", name);
    for (int i = 0; i < len; i++)
        if (buf[i] != data[i]) FAIL("%s: byte %d is %#x, expected %#x", name, i, buf[i], data[i]);
    for (int i = 0; i < extra; i++)
        if (buf[len + i] != extra_data[i])
            FAIL("%s: byte %d (written by %s) is %#x, expected %#x", name, len + i,
                 extra == 1 ? "the child" : "a writer opened by path", buf[len + i],
                 extra_data[i]);
    int sz = fcntl(wfd, F_GETPIPE_SZ);
    if (sz < len) FAIL("%s: pipe size %d, cannot write back %d bytes", name, sz, len);
    if (write_all(wfd, data, len)) FAIL("%s: write back: %s", name, strerror(errno));
    if (ioctl(rfd, FIONREAD, &avail) || avail != len)
        FAIL("%s: after writing %d bytes back to fd %d, fd %d has %d unread (ends not connected?)",
             name, len, wfd, rfd, avail);
    return 0;
}

static int check_pipes(long n)
{
    for (int i = R_PIPE_R; i <= R_FIFO_W; i++)
        if (check_rec(&rec[i], i >= R_FIFO_R)) return -1; /* pipefs inodes are new on restore */
    unsigned char m = pipe_mark(n);
    if (check_pipe_data("pipe", rec[R_PIPE_R].fd, rec[R_PIPE_W].fd, pipe_pat, PIPE_LEN, 1, &m))
        return -1;
    /* A writer opened by path now must reach the restored read end. */
    char p[4300];
    int wfd = open(fpath("fifo", p, sizeof(p)), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (wfd < 0) FAIL("open %s O_WRONLY|O_NONBLOCK: %s (no reader on the FIFO?)", p, strerror(errno));
    int w = write(wfd, "xyz", 3);
    close(wfd);
    if (w != 3) FAIL("write to %s: %s", p, strerror(errno));
    return check_pipe_data("fifo", rec[R_FIFO_R].fd, rec[R_FIFO_W].fd, fifo_pat, FIFO_LEN, 3,
                           (const unsigned char *)"xyz");
}

static int root_check(long n)
{
    if (wait_child(n)) {
        static char tmp[sizeof(why)];
        snprintf(tmp, sizeof(tmp), "%s", why);
        FAIL("%s", tmp);
    }
    if (check_fd_table("root", &root_fds)) return -1;
    if (check_regular()) return -1;
    if (check_unlinked(n)) return -1;
    if (check_shared(n)) return -1;
    if (check_dir()) return -1;
    if (check_devices()) return -1;
    if (check_pipes(n)) return -1;
    /*
     * Last, so that everything else has been checked first: the second description of the
     * unlinked file is the same inode (it sees the child's marker written through the first),
     * and the unlinked file keeps the name it was unlinked under.
     */
    struct fdrec *r2 = &rec[R_UNL2];
    if (check_rec(r2, 0)) return -1;
    struct stat s1, s2;
    if (fstat(rec[R_UNL].fd, &s1) || fstat(r2->fd, &s2)) FAIL("fstat unl.dat: %s", strerror(errno));
    if (s1.st_dev != s2.st_dev || s1.st_ino != s2.st_ino || s2.st_nlink != 0)
        FAIL("unl.dat: fd %d (second open of the file) is inode %lx:%lu nlink %lu, fd %d is "
             "%lx:%lu: one unlinked inode restored as two files", r2->fd,
             (unsigned long)s2.st_dev, (unsigned long)s2.st_ino, (unsigned long)s2.st_nlink,
             rec[R_UNL].fd, (unsigned long)s1.st_dev, (unsigned long)s1.st_ino);
    if (check_contents("unl.dat (2nd open)", r2->fd, 0, unl_expect, UNL_SIZE)) return -1;
    for (int i = R_UNL; i <= R_UNL2; i++) {
        char l[1024];
        fd_link(rec[i].fd, l, sizeof(l));
        if (strcmp(l, rec[i].link))
            FAIL("%s (fd %d): /proc/self/fd/%d -> '%s', expected '%s' (the name it was unlinked "
                 "under)", rec[i].name, rec[i].fd, rec[i].fd, l, rec[i].link);
    }
    return 0;
}

/* ---- setup ------------------------------------------------------------------------------- */

static void rm_files(void)
{
    const char *names[] = {"ro.dat", "rw.dat", "app.dat", "big.dat", "shared.dat", "unl.dat",
                           "fifo", "dir/a", "dir/b", "dir/c", "dir"};
    char p[4300];
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        fpath(names[i], p, sizeof(p));
        if (unlink(p) && errno == EISDIR) rmdir(p);
        rmdir(p);
    }
}

int main(void)
{
    wl_init();
    snprintf(dir_files, sizeof(dir_files), "%s/files", wl_ctl);
    if (mkdir(dir_files, 0755) && errno != EEXIST) die(dir_files);
    rm_files();
    char p[4300];

    make_file("ro.dat", 1, FILE_SIZE);
    make_file("rw.dat", 2, FILE_SIZE);
    make_file("app.dat", 3, APP_SIZE);
    make_file("shared.dat", 5, FILE_SIZE);

    /* ro.dat at fd 100, its dup at fd 200 with FD_CLOEXEC (per fd, not per description). */
    int fd = open(fpath("ro.dat", p, sizeof(p)), O_RDONLY);
    if (fd < 0) die(p);
    move_fd(fd, FD_RO, 0);
    lseek(FD_RO, RO_POS, SEEK_SET);
    if (dup3(FD_RO, FD_RO_DUP, O_CLOEXEC) != FD_RO_DUP) die("dup3");
    record(&rec[R_RO], "ro.dat", FD_RO, 1, 1);
    record(&rec[R_RODUP], "ro.dat (dup)", FD_RO_DUP, 1, 1);

    fd = open(fpath("app.dat", p, sizeof(p)), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) die(p);
    lseek(fd, APP_POS, SEEK_SET);
    record(&rec[R_APP], "app.dat", fd, 1, 1);

    fd = open(fpath("big.dat", p, sizeof(p)), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, BIG_SIZE)) die(p);
    if (pwrite(fd, BIG_MARK, sizeof(BIG_MARK) - 1, BIG_MARK_OFF) != sizeof(BIG_MARK) - 1)
        die("pwrite big.dat");
    lseek(fd, BIG_POS, SEEK_SET);
    record(&rec[R_BIG], "big.dat", fd, 1, 1);

    fd = open(fpath("shared.dat", p, sizeof(p)), O_RDWR);
    if (fd < 0) die(p);
    lseek(fd, SH_POS0, SEEK_SET);
    record(&rec[R_SH], "shared.dat", fd, 0, 1); /* its position moves: checked apart */

    /* unl.dat: written, unlinked, then left at 3333. */
    for (int i = 0; i < UNL_SIZE; i++) unl_expect[i] = pat(6, i);
    fpath("unl.dat", unl_path, sizeof(unl_path));
    fd = open(unl_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, unl_expect, UNL_SIZE)) die(unl_path);
    int fd2 = open(unl_path, O_RDONLY); /* a second description of the same inode */
    if (fd2 < 0 || unlink(unl_path)) die(unl_path);
    lseek(fd, UNL_POS, SEEK_SET);
    lseek(fd2, UNL_POS2, SEEK_SET);
    record(&rec[R_UNL], "unl.dat", fd, 1, 1);
    record(&rec[R_UNL2], "unl.dat (2nd open)", fd2, 1, 1);

    /* A directory with three files, its fd at 500. */
    if (mkdir(fpath("dir", p, sizeof(p)), 0755)) die(p);
    const char *names[] = {"dir/a", "dir/b", "dir/c"};
    for (int i = 0; i < 3; i++) {
        fd = open(fpath(names[i], p, sizeof(p)), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        char text[16];
        snprintf(text, sizeof(text), "content-%c", 'a' + i);
        if (fd < 0 || write_all(fd, text, strlen(text))) die(p);
        struct stat st;
        fstat(fd, &st);
        if (i == 0) dir_a_ino = st.st_ino;
        close(fd);
    }
    fd = open(fpath("dir", p, sizeof(p)), O_RDONLY | O_DIRECTORY);
    if (fd < 0) die(p);
    move_fd(fd, FD_DIR, 1);
    /* Leave its position after the first two entries (48 bytes: two 24-byte records). */
    int m1, dups;
    if (read_dir(FD_DIR, 48, 1, &m1, &dups)) {
        fprintf(stderr, "%s\n", why);
        exit(2);
    }
    off_t first_pos = lseek(FD_DIR, 0, SEEK_CUR);
    if (__builtin_popcount(m1) != 2 || first_pos <= 0) {
        fprintf(stderr, "dir: the first getdents64 gave %d entries, position %lld\n",
                __builtin_popcount(m1), (long long)first_pos);
        exit(2);
    }
    dir_rest_mask = 31 & ~m1;
    record(&rec[R_DIR], "dir", FD_DIR, 1, 0);

    /* Devices. */
    fd = open("/dev/null", O_RDWR);
    if (fd < 0) die("/dev/null");
    record(&rec[R_NULL], "/dev/null", fd, 0, 0);
    fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) die("/dev/zero");
    record(&rec[R_ZERO], "/dev/zero", fd, 0, 0);
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("/dev/urandom");
    record(&rec[R_URAND], "/dev/urandom", fd, 0, 0);

    /* A pipe with 10000 bytes in it, written in three pieces; read end O_NONBLOCK. */
    int pp[2];
    if (pipe2(pp, 0)) die("pipe2");
    fcntl(pp[0], F_SETFL, O_NONBLOCK);
    for (int i = 0; i < PIPE_LEN; i++) pipe_pat[i] = pat(7, i);
    if (write_all(pp[1], pipe_pat, 3000) || write_all(pp[1], pipe_pat + 3000, 3000) ||
        write_all(pp[1], pipe_pat + 6000, PIPE_LEN - 6000))
        die("write pipe");
    record(&rec[R_PIPE_R], "pipe read end", pp[0], 0, 0);
    record(&rec[R_PIPE_W], "pipe write end", pp[1], 0, 0);

    /* A FIFO: read end (O_NONBLOCK, so that the open does not wait), write end, 5000 bytes. */
    if (mkfifo(fpath("fifo", p, sizeof(p)), 0644)) die(p);
    int fr = open(p, O_RDONLY | O_NONBLOCK);
    if (fr < 0) die(p);
    int fw = open(p, O_WRONLY);
    if (fw < 0) die(p);
    for (int i = 0; i < FIFO_LEN; i++) fifo_pat[i] = pat(8, i);
    if (write_all(fw, fifo_pat, FIFO_LEN)) die("write fifo");
    record(&rec[R_FIFO_R], "fifo read end", fr, 0, 0);
    record(&rec[R_FIFO_W], "fifo write end", fw, 0, 0);

    /* The child shares everything opened so far. */
    fflush(NULL);
    child_pid = fork();
    if (child_pid < 0) die("fork");
    if (child_pid == 0) child_main();

    /* rw.dat only in the root. */
    fd = open(fpath("rw.dat", p, sizeof(p)), O_RDWR | O_CLOEXEC);
    if (fd < 0) die(p);
    lseek(fd, RW_POS, SEEK_SET);
    record(&rec[R_RW], "rw.dat", fd, 1, 1);

    if (list_fds(&root_fds)) die("list_fds");
    char fl[800];
    fmt_fds(&root_fds, fl, sizeof(fl));
    printf("files: root %d fds [%s], child %d\n", getpid(), fl, child_pid);
    fflush(stdout);
    wl_ready();
    for (;;) {
        if (wl_poll()) {
            if (root_check(wl_answered) == 0)
                wl_pass();
            else
                wl_fail("%s", why);
        }
        wl_nap();
    }
}
