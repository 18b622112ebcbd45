/*
 * memory: every kind of memory a process can have, and the mm fields that describe it.
 *
 * Checks (each compared with values recorded at setup):
 *  - private anonymous memory: a pattern in some pages, untouched pages still read as zeros;
 *  - MAP_SHARED|MAP_ANONYMOUS shared with a forked child: each writes its own half at setup and
 *    verifies the other's half; at each check the parent writes a token that the child must see,
 *    then the child writes one the parent must see (still one shared object, not two copies).
 *    The child answers in $VZCPT_CTL/child-0; the parent aggregates;
 *  - a private file mapping of a file created in the ctl dir, some pages modified: modified pages
 *    show the modifications, the others the file's contents, the file on disk is unchanged;
 *  - a shared file mapping: its contents equal the file's (pread), a write through the mapping
 *    reaches the file and a pwrite to the file shows in the mapping (reverted after the check);
 *  - heap: malloc'ed chunks (a linked list) and an sbrk() growth with a pattern, sbrk(0) unchanged;
 *  - the stack: the main loop runs at the bottom of a recursion of depth 1000, each frame holds
 *    a local array with a pattern; a forked copy can still grow it by 2 MiB (growsdown, gap);
 *  - protections: a PROT_NONE region (perms in /proc/self/maps, data still there when made
 *    readable for a moment) and a read-only region with data;
 *  - mm fields: /proc/self/stat start_code, end_code, start_stack, start_data..env_end;
 *    getauxval(AT_PHDR, AT_ENTRY, AT_RANDOM (and its 16 bytes), AT_SYSINFO_EHDR); the whole of
 *    /proc/self/auxv; readlink(/proc/self/exe); argv and environ strings; /proc/self/cmdline
 *    and /proc/self/environ;
 *  - the vdso: clock_gettime(CLOCK_MONOTONIC) never goes back between iterations (also across
 *    the restore), it and gettimeofday agree with the real syscalls and increase;
 *  - /proc/self/maps lines of [heap], [stack], [vdso], [vvar] (and [vvar_vclock] if present)
 *    at the same addresses as at setup; [vdso] starts at AT_SYSINFO_EHDR.
 */
#include "wl.h"
#include <signal.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define DEPTH 1000
#define FRAME_BYTES 128

static char msg[4096];
static int failed;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    if (failed)
        return; /* keep the first failure: it is the cause */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    failed = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "memory: setup: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Reads a whole file into buf (NUL-terminated); returns its length or -1. No stdio, no malloc. */
static ssize_t slurp(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, size - 1 - n);
        if (r < 0) {
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        n += r;
        if (n == size - 1)
            break;
    }
    close(fd);
    buf[n] = 0;
    return n;
}

static unsigned char anon_byte(size_t i) { return (unsigned char)((i * 7 + i / PAGE * 3 + 1) ^ 0x3c); }
static unsigned char parent_byte(size_t i) { return (unsigned char)((i * 13 + 7) ^ 0xa5); }
static unsigned char child_byte(size_t i) { return (unsigned char)((i * 29 + 3) ^ 0x5a); }
static unsigned char file_byte(size_t i) { return (unsigned char)((i * 11 + i / PAGE) ^ 0x77); }
static unsigned char cow_byte(size_t i) { return (unsigned char)((i * 5 + 100) ^ 0xe1); }
static unsigned char sfile_byte(size_t i) { return (unsigned char)((i * 17 + 9) ^ 0x1f); }
static unsigned char brk_byte(size_t i) { return (unsigned char)((i * 3 + 41) ^ 0x99); }
static unsigned char none_byte(size_t i) { return (unsigned char)((i * 19 + 5) ^ 0x42); }
static unsigned char ro_byte(size_t i) { return (unsigned char)((i * 23 + 1) ^ 0x0f); }
static unsigned char frame_byte(int depth, int i) { return (unsigned char)(depth * 31 + i * 7 + 1); }

/* ---- private anonymous ---- */
#define ANON_PAGES 64
static unsigned char *anon; /* pages 0..47 hold the pattern except every 4th page, 48..63 untouched */
static int anon_written(size_t page) { return page < 48 && page % 4 != 3; }

/* ---- shared anonymous, with the child ---- */
#define SHM_HALF (2 * PAGE)
struct mailbox {
    volatile long parent_ready, child_ready;
    volatile long parent_token, child_token;
};
static unsigned char *shm;  /* [0, SHM_HALF): parent's, [SHM_HALF, 2*SHM_HALF): child's, then a mailbox page */
static struct mailbox *mbox;
static pid_t child_pid;

/* ---- files ---- */
#define PFILE_PAGES 16
static const int pfile_modified[] = {2, 5, 11};
static unsigned char *pmap;
static char pfile_path[4200];
#define SFILE_PAGES 8
static unsigned char *smap;
static char sfile_path[4200];

/* ---- heap ---- */
struct node {
    struct node *next;
    long value;
    char text[40];
};
#define NODES 1000
static struct node *list_head;
#define BRK_GROWTH (64 * 1024)
static unsigned char *brk_area;
static void *brk_end;

/* ---- protections ---- */
#define NONE_PAGES 4
#define RO_PAGES 3
static unsigned char *none_area, *ro_area;

/* ---- stack ---- */
static volatile unsigned char *frames[DEPTH];

/* ---- mm fields ---- */
static unsigned long stat_fields[10]; /* 26,27,28,45..51 */
static const int stat_idx[10] = {26, 27, 28, 45, 46, 47, 48, 49, 50, 51};
static const char *stat_names[10] = {"start_code", "end_code", "start_stack", "start_data", "end_data",
                                     "start_brk", "arg_start", "arg_end", "env_start", "env_end"};
static unsigned long aux_vals[4];
static const unsigned long aux_types[4] = {AT_PHDR, AT_ENTRY, AT_RANDOM, AT_SYSINFO_EHDR};
static const char *aux_names[4] = {"AT_PHDR", "AT_ENTRY", "AT_RANDOM", "AT_SYSINFO_EHDR"};
static unsigned char at_random[16];
static char auxv0[4096];
static ssize_t auxv0_len;
static char exe0[4096];
static char cmdline0[8192], environ0[65536];
static ssize_t cmdline0_len, environ0_len;
static int g_argc;
static char **g_argv;
static char *argv0_copy[64];
static char *env_copy[256];
static int env_count;

/* ---- special mappings ---- */
static const char *special_names[] = {"[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]"};
#define NSPECIAL 5
static char special0[NSPECIAL][128]; /* "start-end perms" or "" when absent */

/* ---- vdso clocks ---- */
static struct timespec last_mono;
static char clock_problem[512];

static char mapsbuf[1 << 18];
static char statbuf[4096];

static int read_stat_fields(unsigned long *out)
{
    if (slurp("/proc/self/stat", statbuf, sizeof(statbuf)) < 0)
        return -1;
    char *p = strrchr(statbuf, ')');
    if (!p)
        return -1;
    p += 2; /* field 3 starts here */
    int field = 3, k = 0;
    while (*p && k < 10) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (field == stat_idx[k]) {
            if (*p == '-' || end == p)
                return -1;
            out[k++] = v;
        }
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
        field++;
    }
    return k == 10 ? 0 : -1;
}

/* The "start-end perms" of the line of /proc/self/maps named `name`, "" if none. */
static void maps_special(const char *maps, const char *name, char *out, size_t n)
{
    out[0] = 0;
    size_t nl = strlen(name);
    for (const char *line = maps; *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (len >= nl && memcmp(line + len - nl, name, nl) == 0 && (len == nl || line[len - nl - 1] == ' ')) {
            unsigned long s, e;
            char perms[8];
            if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) == 3)
                snprintf(out, n, "%lx-%lx %s", s, e, perms);
            return;
        }
        if (!eol)
            break;
        line = eol + 1;
    }
}

/* The perms and bounds of the mapping that contains addr; 0 if found. */
static int maps_find(const char *maps, unsigned long addr, char perms[8], unsigned long *s, unsigned long *e)
{
    for (const char *line = maps; *line;) {
        if (sscanf(line, "%lx-%lx %4s", s, e, perms) == 3 && addr >= *s && addr < *e)
            return 0;
        const char *eol = strchr(line, '\n');
        if (!eol)
            break;
        line = eol + 1;
    }
    return -1;
}

static double ts_sec(const struct timespec *t) { return t->tv_sec + t->tv_nsec / 1e9; }

/* Called every iteration: the vdso monotonic clock must never go back. */
static void clock_tick(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now)) {
        if (!clock_problem[0])
            snprintf(clock_problem, sizeof(clock_problem), "clock_gettime(CLOCK_MONOTONIC) failed: %s",
                     strerror(errno));
        return;
    }
    if ((now.tv_sec < last_mono.tv_sec || (now.tv_sec == last_mono.tv_sec && now.tv_nsec < last_mono.tv_nsec)) &&
        !clock_problem[0])
        snprintf(clock_problem, sizeof(clock_problem),
                 "CLOCK_MONOTONIC went back from %ld.%09ld to %ld.%09ld between two iterations",
                 (long)last_mono.tv_sec, last_mono.tv_nsec, (long)now.tv_sec, now.tv_nsec);
    last_mono = now;
}

/* ---------------- checks ---------------- */

static void check_anon(void)
{
    for (size_t i = 0; i < ANON_PAGES * PAGE; i++) {
        unsigned char want = anon_written(i / PAGE) ? anon_byte(i) : 0;
        if (anon[i] != want) {
            fail("private anon %p: byte %zu (page %zu) is 0x%02x, expected 0x%02x", (void *)anon, i, i / PAGE,
                 anon[i], want);
            return;
        }
    }
}

static void check_shared_halves(int as_child)
{
    for (size_t i = 0; i < SHM_HALF; i++) {
        if (shm[i] != parent_byte(i)) {
            fail("shared anon %p (%s): parent's half byte %zu is 0x%02x, expected 0x%02x", (void *)shm,
                 as_child ? "seen by the child" : "seen by the parent", i, shm[i], parent_byte(i));
            return;
        }
        if (shm[SHM_HALF + i] != child_byte(i)) {
            fail("shared anon %p (%s): child's half byte %zu is 0x%02x, expected 0x%02x", (void *)shm,
                 as_child ? "seen by the child" : "seen by the parent", i, shm[SHM_HALF + i], child_byte(i));
            return;
        }
    }
}

/* Waits until *p == want; 0 if it came. */
static int wait_value(volatile long *p, long want, double timeout)
{
    double end = wl_now() + timeout;
    while (__atomic_load_n(p, __ATOMIC_SEQ_CST) != want) {
        if (wl_now() > end)
            return -1;
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void check_pfile(void)
{
    static unsigned char disk[PFILE_PAGES * PAGE];
    int fd = open(pfile_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("open %s: %s", pfile_path, strerror(errno));
        return;
    }
    ssize_t n = pread(fd, disk, sizeof(disk), 0);
    close(fd);
    if (n != (ssize_t)sizeof(disk)) {
        fail("pread %s: got %zd bytes, expected %zu", pfile_path, n, sizeof(disk));
        return;
    }
    for (size_t i = 0; i < sizeof(disk); i++)
        if (disk[i] != file_byte(i)) {
            fail("private file mapping: the file %s changed on disk: byte %zu is 0x%02x, expected 0x%02x",
                 pfile_path, i, disk[i], file_byte(i));
            return;
        }
    for (size_t i = 0; i < PFILE_PAGES * PAGE; i++) {
        size_t pg = i / PAGE;
        int mod = 0;
        for (size_t k = 0; k < sizeof(pfile_modified) / sizeof(pfile_modified[0]); k++)
            mod |= pfile_modified[k] == (int)pg;
        unsigned char want = mod ? cow_byte(i) : file_byte(i);
        if (pmap[i] != want) {
            fail("private file mapping %p of %s: byte %zu (page %zu, %s) is 0x%02x, expected 0x%02x", (void *)pmap,
                 pfile_path, i, pg, mod ? "modified" : "unmodified", pmap[i], want);
            return;
        }
    }
}

static void check_sfile(void)
{
    static unsigned char disk[SFILE_PAGES * PAGE];
    int fd = open(sfile_path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fail("open %s: %s", sfile_path, strerror(errno));
        return;
    }
    ssize_t n = pread(fd, disk, sizeof(disk), 0);
    if (n != (ssize_t)sizeof(disk)) {
        fail("pread %s: got %zd bytes, expected %zu", sfile_path, n, sizeof(disk));
        close(fd);
        return;
    }
    for (size_t i = 0; i < sizeof(disk); i++) {
        if (smap[i] != sfile_byte(i)) {
            fail("shared file mapping %p of %s: byte %zu is 0x%02x, expected 0x%02x", (void *)smap, sfile_path, i,
                 smap[i], sfile_byte(i));
            close(fd);
            return;
        }
        if (disk[i] != sfile_byte(i)) {
            fail("shared file mapping: the file %s has byte %zu = 0x%02x, expected 0x%02x (written through the "
                 "mapping at setup)",
                 sfile_path, i, disk[i], sfile_byte(i));
            close(fd);
            return;
        }
    }
    /* Still shared with the file both ways: a write to the mapping shows in pread, a pwrite in the mapping. */
    size_t off = 3 * PAGE + 123;
    unsigned char orig = smap[off], b = (unsigned char)(orig ^ 0xff), got = 0;
    smap[off] = b;
    if (pread(fd, &got, 1, off) != 1 || got != b)
        fail("shared file mapping %p: a write of 0x%02x at offset %zu did not reach %s (pread gives 0x%02x)",
             (void *)smap, b, off, sfile_path, got);
    smap[off] = orig;
    size_t off2 = 6 * PAGE + 7;
    unsigned char orig2 = smap[off2], b2 = (unsigned char)(orig2 ^ 0x5a);
    if (pwrite(fd, &b2, 1, off2) != 1)
        fail("pwrite %s: %s", sfile_path, strerror(errno));
    else if (smap[off2] != b2)
        fail("shared file mapping %p: a pwrite of 0x%02x at offset %zu of %s does not show in the mapping (0x%02x)",
             (void *)smap, b2, off2, sfile_path, smap[off2]);
    if (pwrite(fd, &orig2, 1, off2) != 1)
        fail("pwrite %s (revert): %s", sfile_path, strerror(errno));
    close(fd);
}

static void check_heap(void)
{
    long i = 0;
    for (struct node *p = list_head; p; p = p->next, i++) {
        char want[40];
        snprintf(want, sizeof(want), "node %ld of the heap list", NODES - 1 - i);
        if (p->value != (NODES - 1 - i) * 1000003L || strcmp(p->text, want)) {
            fail("heap list node %ld at %p: value %ld text \"%.40s\", expected %ld \"%s\"", i, (void *)p, p->value,
                 p->text, (NODES - 1 - i) * 1000003L, want);
            return;
        }
    }
    if (i != NODES) {
        fail("heap list has %ld nodes, expected %d", i, NODES);
        return;
    }
    void *cur = sbrk(0);
    if (cur != brk_end) {
        fail("sbrk(0) is %p, expected %p", cur, brk_end);
        return;
    }
    for (size_t k = 0; k < BRK_GROWTH; k++)
        if (brk_area[k] != brk_byte(k)) {
            fail("sbrk area %p: byte %zu is 0x%02x, expected 0x%02x", (void *)brk_area, k, brk_area[k], brk_byte(k));
            return;
        }
}

static void check_stack(void)
{
    for (int d = 0; d < DEPTH; d++)
        for (int i = 0; i < FRAME_BYTES; i++)
            if (frames[d][i] != frame_byte(d, i)) {
                fail("stack frame of recursion depth %d at %p: byte %d is 0x%02x, expected 0x%02x", d,
                     (void *)frames[d], i, frames[d][i], frame_byte(d, i));
                return;
            }
}

/* The stack can still grow down (MAP_GROWSDOWN kept, its guard gap free): a forked copy
 * touches 2 MiB below the deepest frame, which lies outside the [stack] mapping as it is. */
__attribute__((noinline)) static void stack_grow(void)
{
    volatile char big[2 * 1024 * 1024];
    for (size_t i = 0; i < sizeof(big); i += 4096)
        big[i] = (char)i;
}

static void check_stack_grows(void)
{
    pid_t c = fork();
    if (c < 0) {
        fail("stack growth: fork: %s", strerror(errno));
        return;
    }
    if (c == 0) {
        stack_grow();
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c)
        fail("stack growth: waitpid: %s", strerror(errno));
    else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("stack growth: a copy growing the stack by 2 MiB died (status %#x, signal %d)", st,
             WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void check_protections(void)
{
    char perms[8];
    unsigned long s, e;
    if (maps_find(mapsbuf, (unsigned long)none_area, perms, &s, &e))
        fail("PROT_NONE region %p is not in /proc/self/maps", (void *)none_area);
    else if (strncmp(perms, "---p", 4) || e < (unsigned long)none_area + NONE_PAGES * PAGE)
        fail("PROT_NONE region %p: /proc/self/maps has %lx-%lx %s, expected ---p up to %lx", (void *)none_area, s, e,
             perms, (unsigned long)none_area + NONE_PAGES * PAGE);
    if (maps_find(mapsbuf, (unsigned long)ro_area, perms, &s, &e))
        fail("read-only region %p is not in /proc/self/maps", (void *)ro_area);
    else if (strncmp(perms, "r--p", 4) || e < (unsigned long)ro_area + RO_PAGES * PAGE)
        fail("read-only region %p: /proc/self/maps has %lx-%lx %s, expected r--p up to %lx", (void *)ro_area, s, e,
             perms, (unsigned long)ro_area + RO_PAGES * PAGE);
    if (failed)
        return;
    for (size_t i = 0; i < RO_PAGES * PAGE; i++)
        if (ro_area[i] != ro_byte(i)) {
            fail("read-only region %p: byte %zu is 0x%02x, expected 0x%02x", (void *)ro_area, i, ro_area[i],
                 ro_byte(i));
            return;
        }
    /* The data of the PROT_NONE region is still there: look for a moment. */
    if (mprotect(none_area, NONE_PAGES * PAGE, PROT_READ)) {
        fail("mprotect(PROT_READ) of the PROT_NONE region %p: %s", (void *)none_area, strerror(errno));
        return;
    }
    for (size_t i = 0; i < NONE_PAGES * PAGE; i++)
        if (none_area[i] != none_byte(i)) {
            fail("PROT_NONE region %p: byte %zu is 0x%02x, expected 0x%02x", (void *)none_area, i, none_area[i],
                 none_byte(i));
            break;
        }
    if (mprotect(none_area, NONE_PAGES * PAGE, PROT_NONE))
        fail("mprotect(PROT_NONE) back: %s", strerror(errno));
}

static void check_mm_fields(void)
{
    unsigned long now[10];
    if (read_stat_fields(now)) {
        fail("cannot parse /proc/self/stat: %.200s", statbuf);
        return;
    }
    for (int k = 0; k < 10; k++)
        if (now[k] != stat_fields[k]) {
            fail("/proc/self/stat field %d (%s) is %#lx, expected %#lx", stat_idx[k], stat_names[k], now[k],
                 stat_fields[k]);
            return;
        }
    for (int k = 0; k < 4; k++) {
        unsigned long v = getauxval(aux_types[k]);
        if (v != aux_vals[k]) {
            fail("getauxval(%s) is %#lx, expected %#lx", aux_names[k], v, aux_vals[k]);
            return;
        }
    }
    if (memcmp((void *)aux_vals[2], at_random, 16)) {
        fail("the 16 AT_RANDOM bytes at %#lx changed", aux_vals[2]);
        return;
    }
    static char auxv[4096];
    ssize_t n = slurp("/proc/self/auxv", auxv, sizeof(auxv));
    if (n != auxv0_len || memcmp(auxv, auxv0, n)) {
        const unsigned long *a = (const unsigned long *)auxv, *b = (const unsigned long *)auxv0;
        long at = -1;
        for (long i = 0; i < n / 8 && i < auxv0_len / 8; i++)
            if (a[i] != b[i]) {
                at = i;
                break;
            }
        if (at >= 0)
            fail("/proc/self/auxv differs: %zd bytes (setup %zd); word %ld is %#lx, expected %#lx", n, auxv0_len, at,
                 a[at], b[at]);
        else
            fail("/proc/self/auxv has %zd bytes, expected %zd", n, auxv0_len);
        return;
    }
    static char exe[4096];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[l < 0 ? 0 : l] = 0;
    if (l < 0 || strcmp(exe, exe0)) {
        fail("readlink(/proc/self/exe) is \"%s\" (%s), expected \"%s\"", exe, l < 0 ? strerror(errno) : "ok", exe0);
        return;
    }
    for (int i = 0; i < g_argc && i < 64; i++)
        if (!g_argv[i] || strcmp(g_argv[i], argv0_copy[i])) {
            fail("argv[%d] is \"%s\", expected \"%s\"", i, g_argv[i] ? g_argv[i] : "(null)", argv0_copy[i]);
            return;
        }
    for (int i = 0; i < env_count; i++)
        if (!environ[i] || strcmp(environ[i], env_copy[i])) {
            fail("environ[%d] is \"%.200s\", expected \"%.200s\"", i, environ[i] ? environ[i] : "(null)",
                 env_copy[i]);
            return;
        }
    static char buf[65536];
    n = slurp("/proc/self/cmdline", buf, sizeof(buf));
    if (n != cmdline0_len || memcmp(buf, cmdline0, n)) {
        fail("/proc/self/cmdline is %zd bytes \"%.100s\", expected %zd bytes \"%.100s\"", n, buf, cmdline0_len,
             cmdline0);
        return;
    }
    n = slurp("/proc/self/environ", buf, sizeof(buf));
    if (n != environ0_len || memcmp(buf, environ0, n)) {
        fail("/proc/self/environ is %zd bytes \"%.100s\", expected %zd bytes \"%.100s\"", n, buf, environ0_len,
             environ0);
        return;
    }
}

static void check_special_maps(void)
{
    for (int k = 0; k < NSPECIAL; k++) {
        char now[128];
        maps_special(mapsbuf, special_names[k], now, sizeof(now));
        if (strcmp(now, special0[k])) {
            fail("/proc/self/maps %s is \"%s\", expected \"%s\"", special_names[k], now[0] ? now : "(absent)",
                 special0[k][0] ? special0[k] : "(absent)");
            return;
        }
    }
    char vdso[128];
    maps_special(mapsbuf, "[vdso]", vdso, sizeof(vdso));
    if (strtoul(vdso, NULL, 16) != aux_vals[3])
        fail("[vdso] is at %s but AT_SYSINFO_EHDR is %#lx", vdso, aux_vals[3]);
}

static void check_clocks(void)
{
    if (clock_problem[0]) {
        fail("%s", clock_problem);
        return;
    }
    struct timespec v1, v2, s1;
    struct timeval g1, g2, sg;
    if (clock_gettime(CLOCK_MONOTONIC, &v1) || syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &s1) ||
        gettimeofday(&g1, NULL) || syscall(SYS_gettimeofday, &sg, NULL)) {
        fail("clock_gettime/gettimeofday failed: %s", strerror(errno));
        return;
    }
    double dv = ts_sec(&s1) - ts_sec(&v1);
    if (dv < 0 || dv > 0.5) {
        fail("vdso CLOCK_MONOTONIC %.6f disagrees with the syscall's %.6f", ts_sec(&v1), ts_sec(&s1));
        return;
    }
    double gv = g1.tv_sec + g1.tv_usec / 1e6, gs = sg.tv_sec + sg.tv_usec / 1e6;
    if (gs - gv < -0.001 || gs - gv > 0.5) {
        fail("vdso gettimeofday %.6f disagrees with the syscall's %.6f", gv, gs);
        return;
    }
    struct timespec nap = {0, 2 * 1000 * 1000};
    nanosleep(&nap, NULL);
    clock_gettime(CLOCK_MONOTONIC, &v2);
    gettimeofday(&g2, NULL);
    double d = ts_sec(&v2) - ts_sec(&v1);
    if (d < 0.0019 || d > 5) {
        fail("CLOCK_MONOTONIC advanced by %.6f s across a 2 ms nanosleep (%.6f -> %.6f)", d, ts_sec(&v1),
             ts_sec(&v2));
        return;
    }
    double dg = (g2.tv_sec + g2.tv_usec / 1e6) - gv;
    if (dg < 0.0015 || dg > 5)
        fail("gettimeofday advanced by %.6f s across a 2 ms nanosleep", dg);
}

static void wait_child_verdict(long seq)
{
    char path[4200], buf[4200];
    snprintf(path, sizeof(path), "%s/child-0", wl_ctl);
    double end = wl_now() + 10;
    for (;;) {
        ssize_t n = slurp(path, buf, sizeof(buf));
        if (n > 0 && strtol(buf, NULL, 10) == seq) {
            char *v = strchr(buf, ' ');
            v = v ? v + 1 : buf;
            v[strcspn(v, "\n")] = 0;
            if (strcmp(v, "PASS"))
                fail("child 0 (pid %d): %s", child_pid, v);
            return;
        }
        int st;
        pid_t w = waitpid(child_pid, &st, WNOHANG);
        if (w == child_pid) {
            fail("child 0 (pid %d) died (status %#x) before answering check %ld", child_pid, st, seq);
            child_pid = -1;
            return;
        }
        if (wl_now() > end) {
            fail("child 0 (pid %d) did not answer check %ld within 10 s (child-0 has \"%.100s\")", child_pid, seq,
                 n > 0 ? buf : "");
            return;
        }
        wl_nap();
    }
}

static void verify_parent(void)
{
    failed = 0;
    msg[0] = 0;
    long seq = wl_answered;
    if (child_pid <= 0) {
        fail("child 0 died earlier");
        return;
    }
    if (slurp("/proc/self/maps", mapsbuf, sizeof(mapsbuf)) < 0) {
        fail("read /proc/self/maps: %s", strerror(errno));
        return;
    }
    check_anon();
    check_shared_halves(0);
    /* A new write of each side must be seen by the other: one object, not two copies. */
    if (!failed) {
        __atomic_store_n(&mbox->parent_token, seq, __ATOMIC_SEQ_CST);
        if (wait_value(&mbox->child_token, seq, 10))
            fail("shared anon %p: the child's token %ld never showed in the parent's view (it has %ld): the "
                 "mapping is no longer shared",
                 (void *)shm, seq, mbox->child_token);
    }
    check_pfile();
    check_sfile();
    check_heap();
    check_stack();
    check_stack_grows();
    check_protections();
    check_mm_fields();
    check_special_maps();
    check_clocks();
    /* Always collect the child's verdict for this check, so the child is idle when we answer. */
    int had = failed;
    char mine[4096];
    snprintf(mine, sizeof(mine), "%s", msg);
    failed = 0;
    wait_child_verdict(seq);
    if (had) {
        snprintf(msg, sizeof(msg), "%s", mine);
        failed = 1;
    }
}

static void child_main(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(1);
    for (size_t i = 0; i < SHM_HALF; i++)
        shm[SHM_HALF + i] = child_byte(i);
    __atomic_store_n(&mbox->child_ready, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        if (wl_poll()) {
            long seq = wl_answered;
            failed = 0;
            msg[0] = 0;
            check_shared_halves(1);
            if (!failed && wait_value(&mbox->parent_token, seq, 10))
                fail("shared anon %p: the parent's token %ld never showed in the child's view (it has %ld): the "
                     "mapping is no longer shared",
                     (void *)shm, seq, mbox->parent_token);
            /* Answer the parent's write with ours even after a failure: the parent then reports the cause. */
            __atomic_store_n(&mbox->child_token, seq, __ATOMIC_SEQ_CST);
            char out[4200];
            snprintf(out, sizeof(out), "%ld %s%s\n", seq, failed ? "FAIL: " : "PASS", failed ? msg : "");
            wl_write_file("child-0", out);
        }
        wl_nap();
    }
}

static volatile int stop_loop; /* never set: keeps gcc from seeing an infinite recursion */

static void run_loop(void)
{
    while (!stop_loop) {
        clock_tick();
        if (wl_poll()) {
            verify_parent();
            if (failed)
                wl_fail("%s", msg);
            else
                wl_pass();
        }
        clock_tick();
        wl_nap();
    }
}

/* Touches 128 KiB below the deepest frame so the stack mapping never grows after setup. */
__attribute__((noinline)) static void stack_probe(void)
{
    volatile char probe[128 * 1024];
    for (size_t i = 0; i < sizeof(probe); i += 512)
        probe[i] = (char)i;
}

static void record_setup(void);

__attribute__((noinline)) static int recurse(int depth)
{
    volatile unsigned char buf[FRAME_BYTES];
    for (int i = 0; i < FRAME_BYTES; i++)
        buf[i] = frame_byte(depth, i);
    frames[depth] = buf;
    if (depth == DEPTH - 1) {
        stack_probe();
        record_setup();
        wl_ready();
        run_loop();
    } else {
        recurse(depth + 1);
    }
    return buf[depth % FRAME_BYTES]; /* no tail call: the frame stays */
}

static void record_setup(void)
{
    if (read_stat_fields(stat_fields))
        die("parse /proc/self/stat");
    for (int k = 0; k < 4; k++)
        aux_vals[k] = getauxval(aux_types[k]);
    memcpy(at_random, (void *)aux_vals[2], 16);
    auxv0_len = slurp("/proc/self/auxv", auxv0, sizeof(auxv0));
    if (auxv0_len <= 0)
        die("read /proc/self/auxv");
    ssize_t l = readlink("/proc/self/exe", exe0, sizeof(exe0) - 1);
    if (l < 0)
        die("readlink /proc/self/exe");
    exe0[l] = 0;
    cmdline0_len = slurp("/proc/self/cmdline", cmdline0, sizeof(cmdline0));
    environ0_len = slurp("/proc/self/environ", environ0, sizeof(environ0));
    if (cmdline0_len < 0 || environ0_len < 0)
        die("read /proc/self/cmdline or environ");
    if (slurp("/proc/self/maps", mapsbuf, sizeof(mapsbuf)) < 0)
        die("read /proc/self/maps");
    for (int k = 0; k < NSPECIAL; k++)
        maps_special(mapsbuf, special_names[k], special0[k], sizeof(special0[k]));
    for (int k = 0; k < 4; k++)
        if (!special0[k][0]) {
            fprintf(stderr, "memory: setup: no %s in /proc/self/maps\n", special_names[k]);
            exit(2);
        }
    clock_gettime(CLOCK_MONOTONIC, &last_mono);
    fprintf(stderr, "memory: ready: heap %s stack %s vdso %s vvar %s vvar_vclock %s\n", special0[0], special0[1],
            special0[2], special0[3], special0[4][0] ? special0[4] : "-");
}

static void *map_anon(size_t len, int flags)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

static int make_file(const char *path, unsigned char (*byte)(size_t), size_t len)
{
    static unsigned char buf[64 * 1024];
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path);
    for (size_t off = 0; off < len; off += sizeof(buf)) {
        size_t n = len - off < sizeof(buf) ? len - off : sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = byte ? byte(off + i) : 0;
        if (write(fd, buf, n) != (ssize_t)n)
            die("write");
    }
    return fd;
}

int main(int argc, char **argv)
{
    wl_init();
    setvbuf(stderr, NULL, _IONBF, 0);
    g_argc = argc;
    g_argv = argv;
    for (int i = 0; i < argc && i < 64; i++)
        argv0_copy[i] = strdup(argv[i]);
    for (env_count = 0; environ[env_count] && env_count < 256; env_count++)
        env_copy[env_count] = strdup(environ[env_count]);

    /* private anonymous */
    anon = map_anon(ANON_PAGES * PAGE, MAP_PRIVATE);
    for (size_t i = 0; i < ANON_PAGES * PAGE; i++)
        if (anon_written(i / PAGE))
            anon[i] = anon_byte(i);

    /* shared anonymous with a child */
    shm = map_anon(2 * SHM_HALF + PAGE, MAP_SHARED);
    mbox = (struct mailbox *)(shm + 2 * SHM_HALF);

    /* private file mapping with some pages modified */
    snprintf(pfile_path, sizeof(pfile_path), "%s/memory-private.dat", wl_ctl);
    int fd = make_file(pfile_path, file_byte, PFILE_PAGES * PAGE);
    pmap = mmap(NULL, PFILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (pmap == MAP_FAILED)
        die("mmap private file");
    close(fd);
    volatile unsigned char sink = 0;
    for (size_t pg = 0; pg < PFILE_PAGES; pg += 2)
        sink ^= pmap[pg * PAGE]; /* some unmodified pages are read (present), the others never touched */
    (void)sink;
    for (size_t k = 0; k < sizeof(pfile_modified) / sizeof(pfile_modified[0]); k++)
        for (size_t i = pfile_modified[k] * PAGE; i < (pfile_modified[k] + 1) * PAGE; i++)
            pmap[i] = cow_byte(i);

    /* shared file mapping, written through the mapping */
    snprintf(sfile_path, sizeof(sfile_path), "%s/memory-shared.dat", wl_ctl);
    fd = make_file(sfile_path, NULL, SFILE_PAGES * PAGE);
    smap = mmap(NULL, SFILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (smap == MAP_FAILED)
        die("mmap shared file");
    close(fd);
    for (size_t i = 0; i < SFILE_PAGES * PAGE; i++)
        smap[i] = sfile_byte(i);

    /* heap: a list of small chunks, then an sbrk growth */
    for (long i = 0; i < NODES; i++) {
        struct node *n = malloc(sizeof(*n));
        if (!n)
            die("malloc");
        n->value = i * 1000003L;
        snprintf(n->text, sizeof(n->text), "node %ld of the heap list", i);
        n->next = list_head;
        list_head = n;
    }
    brk_area = sbrk(BRK_GROWTH);
    if (brk_area == (void *)-1)
        die("sbrk");
    for (size_t i = 0; i < BRK_GROWTH; i++)
        brk_area[i] = brk_byte(i);
    brk_end = sbrk(0);

    /* protections */
    none_area = map_anon(NONE_PAGES * PAGE, MAP_PRIVATE);
    for (size_t i = 0; i < NONE_PAGES * PAGE; i++)
        none_area[i] = none_byte(i);
    if (mprotect(none_area, NONE_PAGES * PAGE, PROT_NONE))
        die("mprotect none");
    ro_area = map_anon(RO_PAGES * PAGE, MAP_PRIVATE);
    for (size_t i = 0; i < RO_PAGES * PAGE; i++)
        ro_area[i] = ro_byte(i);
    if (mprotect(ro_area, RO_PAGES * PAGE, PROT_READ))
        die("mprotect ro");

    for (size_t i = 0; i < SHM_HALF; i++)
        shm[i] = parent_byte(i);
    __atomic_store_n(&mbox->parent_ready, 1, __ATOMIC_SEQ_CST);
    child_pid = fork();
    if (child_pid < 0)
        die("fork");
    if (child_pid == 0)
        child_main();
    if (wait_value(&mbox->child_ready, 1, 10)) {
        fprintf(stderr, "memory: setup: the child did not write its half\n");
        exit(2);
    }

    recurse(0);
    return 0;
}
