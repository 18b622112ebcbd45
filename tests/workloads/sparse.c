/*
 * sparse: a 1 GiB private anonymous mapping (MAP_NORESERVE) of which only 64 MiB is touched.
 *
 * Setup: mmap 1 GiB PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE (no THP advice:
 * the machine's THP mode is logged). 16384 distinct pages chosen by a fixed xorshift sequence are
 * filled with a pattern derived from the page index and the word index; 512 other pages are
 * written with zeros explicitly (present but zero: the dump may leave them out), and 1024 other
 * pages are only read (mapped to the kernel's shared zero page: present in pagemap, not in Rss).
 *
 * Each check verifies, against values recorded at setup:
 *  - the /proc/self/maps line of the area: same start, end, perms, offset, dev, inode, path;
 *  - the VmFlags of the area in /proc/self/smaps: the same set as at setup (e.g. "nr" for
 *    MAP_NORESERVE, no "ac": a restore without MAP_NORESERVE would account the whole GiB);
 *  - Rss of the area (smaps, read first, before the check faults anything in) is at most
 *    touched + zero-written pages + 4 MiB of slack: a restore must not populate the whole GiB.
 *    Rss and the pagemap present count are logged at every check;
 *  - every touched page holds its pattern (each word compared);
 *  - every other page reads as zero: pages that pagemap reports present or swapped are read in
 *    full (and the zero-written and read-only sample pages always are); pages not present in
 *    an anonymous private area read as zero by definition (the maps check ensures the area is
 *    still anonymous), so they are not faulted in, which keeps a check fast (< 100 ms) and the
 *    area sparse.
 */
#include "wl.h"
#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define AREA (1UL << 30)
#define NPAGES (AREA / PAGE)  /* 262144 */
#define NTOUCH 16384          /* 64 MiB */
#define NZERO 512             /* written with zeros */
#define NREAD 1024            /* only read (shared zero page) */
#define WORDS (PAGE / 8)
#define SLACK_KB 4096

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)

enum { UNTOUCHED = 0, PATTERN = 1, ZEROED = 2, READONLY = 3 };

static unsigned char *area;
static unsigned char kind[NPAGES];
static char maps_line[512];    /* the maps line of the area at setup, without the newline */
static char vmflags[256];      /* its VmFlags at setup */
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
    fprintf(stderr, "sparse: setup: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t pattern(size_t page, size_t word)
{
    uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 29;
    return x ^ (word * 0xBF58476D1CE4E5B9ULL) ^ ((uint64_t)page << 40);
}

static uint64_t xs_state = 0x2545F4914F6CDD1DULL;
static uint64_t xorshift(void)
{
    xs_state ^= xs_state << 13;
    xs_state ^= xs_state >> 7;
    xs_state ^= xs_state << 17;
    return xs_state;
}

/* Picks n distinct UNTOUCHED pages and gives them kind k. */
static void pick(int n, unsigned char k)
{
    while (n > 0) {
        size_t p = xorshift() % NPAGES;
        if (kind[p] != UNTOUCHED)
            continue;
        kind[p] = k;
        n--;
    }
}

/* The maps line containing the area (copied without newline); 0 if none. */
static int find_maps_line(char *out, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx", &s, &e) != 2)
            continue;
        if (s <= (unsigned long)area && (unsigned long)area < e) {
            line[strcspn(line, "\n")] = 0;
            snprintf(out, len, "%s", line);
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Rss (kB) and VmFlags of the smaps entry that starts at the area; -1 if not found. */
static long smaps_info(char *flags, size_t flen)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[1024];
    int in = 0;
    long rss = -1;
    flags[0] = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long s, e;
        char c;
        /* An area header is "start-end perms ..."; field lines are "Name:  value" (no field
         * name parses as "hex-hex"). */
        if (sscanf(line, "%lx-%lx %c", &s, &e, &c) == 3) {
            if (in)
                break;
            in = s == (unsigned long)area;
            continue;
        }
        if (!in)
            continue;
        if (!strncmp(line, "Rss:", 4))
            rss = atol(line + 4);
        else if (!strncmp(line, "VmFlags:", 8)) {
            char *v = line + 8;
            while (*v == ' ')
                v++;
            v[strcspn(v, "\n")] = 0;
            /* trim trailing spaces */
            size_t n = strlen(v);
            while (n && v[n - 1] == ' ')
                v[--n] = 0;
            snprintf(flags, flen, "%s", v);
        }
    }
    fclose(f);
    return rss;
}

/* 1 if the flag sets (space-separated two-letter words) are equal, whatever the order. */
static int same_flag_set(const char *a, const char *b)
{
    char wa[64][4], wb[64][4];
    int na = 0, nb = 0;
    for (const char *p = a; *p && na < 64;) {
        while (*p == ' ') p++;
        if (!*p) break;
        int l = 0;
        while (p[l] && p[l] != ' ' && l < 3) { wa[na][l] = p[l]; l++; }
        wa[na++][l] = 0;
        while (*p && *p != ' ') p++;
    }
    for (const char *p = b; *p && nb < 64;) {
        while (*p == ' ') p++;
        if (!*p) break;
        int l = 0;
        while (p[l] && p[l] != ' ' && l < 3) { wb[nb][l] = p[l]; l++; }
        wb[nb++][l] = 0;
        while (*p && *p != ' ') p++;
    }
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++) {
        int found = 0;
        for (int j = 0; j < nb; j++) found |= !strcmp(wa[i], wb[j]);
        if (!found)
            return 0;
    }
    return 1;
}

static uint64_t pm[NPAGES];

static void check(void)
{
    double t0 = wl_now();
    /* 1. Rss and VmFlags, first: nothing faulted in by this check yet. */
    char flags[256];
    long rss = smaps_info(flags, sizeof(flags));
    /* 2. pagemap of the whole area. */
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("open /proc/self/pagemap: %s", strerror(errno));
        return;
    }
    ssize_t n = pread(fd, pm, sizeof(pm), (off_t)((unsigned long)area / PAGE * 8));
    close(fd);
    if (n != (ssize_t)sizeof(pm)) {
        fail("pread /proc/self/pagemap: %zd of %zu bytes (%s)", n, sizeof(pm), strerror(errno));
        return;
    }
    size_t present = 0;
    for (size_t p = 0; p < NPAGES; p++)
        present += (pm[p] & (PM_PRESENT | PM_SWAP)) != 0;
    fprintf(stderr, "sparse: check %ld: area Rss %ld kB, pagemap present %zu pages, VmFlags '%s'\n",
            wl_answered, rss, present, flags);

    char line[512];
    if (!find_maps_line(line, sizeof(line)))
        fail("no /proc/self/maps line contains the area at %p", (void *)area);
    else if (strcmp(line, maps_line))
        fail("maps line of the area changed: expected '%s', got '%s'", maps_line, line);
    if (rss < 0)
        fail("no /proc/self/smaps entry starts at the area %p", (void *)area);
    else if (!same_flag_set(flags, vmflags))
        fail("VmFlags of the area changed: expected '%s', got '%s'", vmflags, flags);
    else if (rss > (long)((NTOUCH + NZERO) * (PAGE / 1024)) + SLACK_KB)
        fail("area Rss is %ld kB, more than the %lu kB touched + %d kB slack (the restore "
             "populated untouched pages; pagemap present: %zu of %lu pages)",
             rss, (unsigned long)(NTOUCH + NZERO) * (PAGE / 1024), SLACK_KB, present,
             (unsigned long)NPAGES);
    if (failed)
        return;

    /* 3. Contents. */
    size_t read_zero = 0;
    for (size_t p = 0; p < NPAGES && !failed; p++) {
        const uint64_t *w = (const uint64_t *)(area + p * PAGE);
        if (kind[p] == PATTERN) {
            for (size_t i = 0; i < WORDS; i++)
                if (w[i] != pattern(p, i)) {
                    fail("touched page %zu (%p) word %zu is %#llx, expected %#llx", p, (void *)w,
                         i, (unsigned long long)w[i], (unsigned long long)pattern(p, i));
                    break;
                }
        } else if (kind[p] != UNTOUCHED || (pm[p] & (PM_PRESENT | PM_SWAP))) {
            read_zero++;
            for (size_t i = 0; i < WORDS; i++)
                if (w[i]) {
                    fail("%s page %zu (%p) word %zu is %#llx, expected 0 (pagemap %#llx)",
                         kind[p] == ZEROED     ? "zero-written"
                         : kind[p] == READONLY ? "read-only (zero page)"
                                               : "untouched but present",
                         p, (void *)w, i, (unsigned long long)w[i], (unsigned long long)pm[p]);
                    break;
                }
        }
    }
    fprintf(stderr, "sparse: check %ld: %d pattern pages and %zu zero pages read, %.3f s\n",
            wl_answered, NTOUCH, read_zero, wl_now() - t0);
}

int main(void)
{
    wl_init();
    char thp[128] = "?";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(thp, sizeof(thp), f)) snprintf(thp, sizeof(thp), "?");
        thp[strcspn(thp, "\n")] = 0;
        fclose(f);
    }
    area = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    if (area == MAP_FAILED)
        die("mmap 1 GiB");
    pick(NTOUCH, PATTERN);
    pick(NZERO, ZEROED);
    pick(NREAD, READONLY);
    volatile uint64_t sink = 0;
    for (size_t p = 0; p < NPAGES; p++) {
        uint64_t *w = (uint64_t *)(area + p * PAGE);
        if (kind[p] == PATTERN)
            for (size_t i = 0; i < WORDS; i++) w[i] = pattern(p, i);
        else if (kind[p] == ZEROED)
            memset(w, 0, PAGE);
        else if (kind[p] == READONLY)
            sink += *(volatile uint64_t *)w;
    }
    (void)sink;
    if (!find_maps_line(maps_line, sizeof(maps_line)))
        die("find the area in /proc/self/maps");
    long rss = smaps_info(vmflags, sizeof(vmflags));
    if (rss < 0)
        die("find the area in /proc/self/smaps");
    fprintf(stderr, "sparse: area %p (1 GiB), THP '%s'\n  maps '%s'\n  VmFlags '%s'\n"
            "  %d pattern pages, %d zero-written, %d read-only; Rss at setup %ld kB\n",
            (void *)area, thp, maps_line, vmflags, NTOUCH, NZERO, NREAD, rss);
    wl_ready();
    for (;;) {
        if (wl_poll()) {
            failed = 0;
            check();
            if (failed) {
                fprintf(stderr, "sparse: check %ld FAIL: %s\n", wl_answered, msg);
                wl_fail("%s", msg);
            } else {
                fprintf(stderr, "sparse: check %ld PASS\n", wl_answered);
                wl_pass();
            }
        }
        wl_nap();
    }
}
