/*
 * cowwriter MIB: rewrites MIB MiB of anonymous memory for ever, generation after generation,
 * in a way that makes any memory image not taken at one instant detectable (the background
 * (--cow) dump's tests and benchmark).
 *
 * Page 0 of the area holds one 64-bit word, state = G << 32 | P: generation G is being
 * written, page P is the one being written. Word j of page i (i >= 1) of generation g is
 * g << 40 | i << 9 | j. At every instant: pages 1..P-1 hold generation G, pages P+1.. hold
 * G-1, page P holds G in a prefix and G-1 in the rest. One store moves P (or G and P at the
 * end of a generation), so the invariant holds at every instruction boundary, and so in any
 * image of one instant; a page taken a moment too late (after it was rewritten) breaks it.
 *
 * Workload protocol (wl.h): ready once generation 0 is written; a check verifies the
 * invariant over the whole area (and that it moved since the last check: the process runs).
 * $VZCPT_CTL/progress holds the number of the last generation finished (19 digits).
 * With WL_KERNEL_WRITES=1 the pages are written by the kernel: read(2) from a pipe into the
 * area (a write fault in kernel mode). With WL_REMAP=1, at the start of each generation the
 * last 4 MiB are replaced by a new mapping with the same contents (mremap MREMAP_FIXED): the
 * pages a background copy had not copied yet are gone from the address space it protected.
 * With WL_FORK=1 it forks a child every fourth generation that rewrites its copy of the
 * first 4 MiB with garbage, lingers 1.5 s and exits (a child's copy-on-write must not change the parent's pages).
 */
#include "wl.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define WORDS (PG / 8)

static volatile uint64_t *area;
static size_t pages;

static inline uint64_t word(uint64_t g, uint64_t i, uint64_t j) { return g << 40 | i << 9 | j; }

static int check(char *why, size_t len)
{
    static uint64_t last;
    uint64_t state = area[0];
    uint64_t g = state >> 32, p = state & 0xffffffff;
    if (g < 1 || p < 1 || p >= pages) {
        snprintf(why, len, "bad state word %#lx", (unsigned long)state);
        return 0;
    }
    if (state == last) {
        snprintf(why, len, "no progress since the last check (state %#lx)", (unsigned long)state);
        return 0;
    }
    last = state;
    for (uint64_t i = 1; i < pages; i++) {
        volatile uint64_t *w = area + i * WORDS;
        for (uint64_t j = 0; j < WORDS; j++) {
            uint64_t want = i < p ? word(g, i, j) : word(g - 1, i, j);
            if (i == p && w[j] == word(g, i, j)) {
                /* the prefix written in generation g: allowed only before the rest */
                if (j > 0 && w[j - 1] != word(g, i, j - 1)) {
                    snprintf(why, len, "page %lu (being written) word %lu of gen %lu after an older one",
                             (unsigned long)i, (unsigned long)j, (unsigned long)g);
                    return 0;
                }
                continue;
            }
            if (w[j] != want) {
                snprintf(why, len,
                         "state gen %lu page %lu: page %lu word %lu is %#lx, want %#lx (gen %lu)",
                         (unsigned long)g, (unsigned long)p, (unsigned long)i, (unsigned long)j,
                         (unsigned long)w[j], (unsigned long)want,
                         (unsigned long)(i < p ? g : g - 1));
                return 0;
            }
        }
    }
    return 1;
}

int main(int argc, char **argv)
{
    wl_init();
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
    int forking = getenv("WL_FORK") && atoi(getenv("WL_FORK"));
    int kernel_writes = getenv("WL_KERNEL_WRITES") && atoi(getenv("WL_KERNEL_WRITES"));
    int remap = getenv("WL_REMAP") && atoi(getenv("WL_REMAP"));
    int pfd[2];
    if (kernel_writes && pipe(pfd)) { perror("pipe"); return 2; }
    static uint64_t page_buf[WORDS];
    pages = mib << 8;
    area = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) { perror("mmap"); return 2; }
    for (uint64_t i = 1; i < pages; i++)
        for (uint64_t j = 0; j < WORDS; j++)
            area[i * WORDS + j] = word(0, i, j);
    /* Progress goes through a shared mapping of the file, never an open descriptor: a dump
     * may come at any moment, and a descriptor of a file being renamed into place would name
     * a path that is gone at the restore. */
    char path[4200];
    int fd = open(wl_path("progress", path, sizeof path), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, 20)) { perror("progress file"); return 2; }
    char *progress = mmap(NULL, 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (progress == MAP_FAILED) { perror("mmap progress"); return 2; }
    close(fd);
    memcpy(progress, "0000000000000000000\n", 20);
    area[0] = 1UL << 32 | 1;
    wl_ready();
    for (uint64_t g = 1;; g++) {
        if (forking && g % 4 == 0) {
            pid_t c = fork();
            if (c == 0) {
                /* Keeps the first 4 MiB only (a child caught by a dump stays small),
                 * rewrites them, lingers (so that it seldom exits in the middle of a
                 * background copy that caught it) and exits. */
                size_t n = pages < 1024 ? pages : 1024;
                if (n < pages)
                    munmap((void *)(area + n * WORDS), (pages - n) * PG);
                for (uint64_t i = 1; i < n; i++)
                    for (uint64_t j = 0; j < WORDS; j++)
                        area[i * WORDS + j] = 0xdeadbeef;
                struct timespec ts = {1, 500 * 1000 * 1000};
                nanosleep(&ts, NULL);
                _exit(0);
            }
        }
        if (remap && pages > 2048) {
            size_t tail = 1024, first = pages - tail;
            uint64_t *n = mmap(NULL, tail * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (n == MAP_FAILED) { perror("mmap"); exit(3); }
            for (uint64_t i = 0; i < tail; i++)
                for (uint64_t j = 0; j < WORDS; j++)
                    n[i * WORDS + j] = word(g - 1, first + i, j);
            if (mremap(n, tail * PG, tail * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
                       (void *)(area + first * WORDS)) == MAP_FAILED) { perror("mremap"); exit(3); }
        }
        for (uint64_t i = 1; i < pages; i++) {
            area[0] = g << 32 | i;
            volatile uint64_t *w = area + i * WORDS;
            if (kernel_writes) {
                for (uint64_t j = 0; j < WORDS; j++)
                    page_buf[j] = word(g, i, j);
                if (write(pfd[1], page_buf, PG) != (ssize_t)PG) { perror("write pipe"); exit(3); }
                size_t got = 0;
                while (got < PG) {
                    ssize_t r = read(pfd[0], (char *)w + got, PG - got);
                    if (r <= 0) { perror("read into the area"); exit(3); }
                    got += r;
                }
            } else {
                for (uint64_t j = 0; j < WORDS; j++)
                    w[j] = word(g, i, j);
            }
            if ((i & 63) == 0)
                wl_answer_check("cowwriter", check);
        }
        area[0] = (g + 1) << 32 | 1;
        if (forking)
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        char buf[32];
        snprintf(buf, sizeof buf, "%019lu\n", (unsigned long)g);
        memcpy(progress, buf, 20);
    }
}
