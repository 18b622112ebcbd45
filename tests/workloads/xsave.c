/*
 * xsave: the extended register state of threads (the xsave area) survives a dump and restore.
 *
 * Two worker threads, each with its own patterns, run blocks of inline asm. One block:
 *   - loads known values: the x87 control word and eight 80-bit values onto the x87 stack (a
 *     normal, a zero, a denormal, an infinity, a NaN with payload... so the tag word is mixed),
 *     then records the x87 environment (fnstenv: control, status word with TOP, tag word; the
 *     last-instruction pointers FIP/FDP/FOP are not compared: on AMD, XSAVE leaves them out
 *     when no exception is pending, so any context switch zeroes them, dump or not);
 *     MXCSR (rounding mode, FZ/DAZ, sticky flags); all vector registers: XMM0-15 (SSE only),
 *     YMM0-15 (AVX), or ZMM0-31 and the opmasks k0-k7 (AVX-512, kmovq with BW, else kmovw);
 *   - spins about 30 ms (iterations calibrated at start) on a counter in memory (incq, dec,
 *     jnz: no vector or x87 instruction), so a dump most likely lands inside the spin, with
 *     the patterns live only in the registers;
 *   - stores every register back to memory (fnstenv again, stmxcsr, vector and opmask stores,
 *     fstpt of the eight x87 values).
 * Right after the block (before any libc call that could clobber vector registers) the thread
 * compares what the asm stored with the patterns and records the first mismatch (register,
 * byte offset, expected, got); mismatches are sticky and reported at the next check. PKRU (if
 * the OS enables protection keys) is set once per thread to a distinct value and compared
 * after each block with rdpkru. A block during which the thread's start time
 * (/proc/thread-self/stat) changed spanned a dump and restore (the dump landed in the asm);
 * their number is logged at each check.
 * The main thread holds a non-default x87 control word, MXCSR control bits and PKRU across its
 * libc calls (callee-saved per the ABI; nothing in this program changes them) and compares them
 * at every poll.
 * A check waits for each worker to complete two more blocks, then answers the first mismatch
 * recorded by any thread, or PASS.
 * Features are detected at run time (cpuid, xgetbv) and logged; only those present are used.
 * No cflags needed: the instructions are only in asm text, the AVX-512 function carries a target
 * attribute (for its k-register clobbers) and is only called when AVX-512 is present.
 */
#include "wl.h"
#include <cpuid.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#define NWORKERS 2
#define BLOCK_S 0.03 /* target duration of the spin of one block */

static uint64_t spin_n = 1000000; /* iterations of incq (mem); dec; jnz; calibrated */

/* Everything one asm block reads and writes; offsets are passed to the asm as immediates. */
struct xs {
    uint8_t vin[32][64];  /* patterns of (x|y|z)mm0..31 */
    uint8_t vout[32][64]; /* what the block stored */
    uint64_t kin[8], kout[8];
    uint8_t xin[8][16];   /* 80-bit x87 values, loaded xin[0] first */
    uint8_t xout[8][16];  /* fstpt order: xout[j] = st(0) at step j = xin[7 - j] */
    uint8_t env0[32];     /* fnstenv after loading */
    uint8_t env1[32];     /* fnstenv after the spin */
    uint32_t mxcsr_in, mxcsr_out;
    uint16_t cw_in, cw_out;
} __attribute__((aligned(64)));

enum vecmode { SSE, AVX, AVX512 };

static enum vecmode mode;
static int nvec, veclen; /* registers used and their width in bytes */
static int has_bw, has_pkru;
static unsigned long long xcr0;

struct worker {
    int index;
    pid_t tid;
    struct xs x;
    uint32_t pkru;
    volatile uint64_t prog;   /* spin counter in memory, incremented by the asm */
    volatile uint64_t blocks; /* blocks completed */
    volatile uint64_t mismatches;
    uint64_t restored_blocks; /* blocks during which the thread was dumped and restored */
    double longest;           /* wall time of the longest block */
    char first[512];          /* first mismatch, "" if none */
    pthread_mutex_t lock;
};

static struct worker workers[NWORKERS];

/* ---------- asm blocks ---------- */

#define X87_LOAD                                                                           \
    "fninit\n\t"                                                                           \
    "fldcw %c[o_cw_in](%[s])\n\t"                                                          \
    "fldt %c[o_xin]+0*16(%[s])\n\tfldt %c[o_xin]+1*16(%[s])\n\t"                           \
    "fldt %c[o_xin]+2*16(%[s])\n\tfldt %c[o_xin]+3*16(%[s])\n\t"                           \
    "fldt %c[o_xin]+4*16(%[s])\n\tfldt %c[o_xin]+5*16(%[s])\n\t"                           \
    "fldt %c[o_xin]+6*16(%[s])\n\tfldt %c[o_xin]+7*16(%[s])\n\t"                           \
    "fnstenv %c[o_env0](%[s])\n\t"                                                         \
    "fldcw %c[o_cw_in](%[s])\n\t"                                                          \
    "ldmxcsr %c[o_mxcsr_in](%[s])\n\t"

#define SPIN_LOOP                                                                          \
    "mov %[n], %%rcx\n\t"                                                                  \
    "1: incq (%[prog])\n\t"                                                                \
    "dec %%rcx\n\t"                                                                        \
    "jnz 1b\n\t"

#define X87_STORE                                                                          \
    "stmxcsr %c[o_mxcsr_out](%[s])\n\t"                                                    \
    "fnstenv %c[o_env1](%[s])\n\t"                                                         \
    "fnstcw %c[o_cw_out](%[s])\n\t"                                                        \
    "fstpt %c[o_xout]+0*16(%[s])\n\tfstpt %c[o_xout]+1*16(%[s])\n\t"                       \
    "fstpt %c[o_xout]+2*16(%[s])\n\tfstpt %c[o_xout]+3*16(%[s])\n\t"                       \
    "fstpt %c[o_xout]+4*16(%[s])\n\tfstpt %c[o_xout]+5*16(%[s])\n\t"                       \
    "fstpt %c[o_xout]+6*16(%[s])\n\tfstpt %c[o_xout]+7*16(%[s])\n\t"

#define OPERANDS(st, w)                                                                    \
    : [s] "r"(st), [prog] "r"(&(w)->prog), [n] "r"(spin_n),                                  \
      [o_cw_in] "i"(offsetof(struct xs, cw_in)), [o_cw_out] "i"(offsetof(struct xs, cw_out)), \
      [o_xin] "i"(offsetof(struct xs, xin)), [o_xout] "i"(offsetof(struct xs, xout)),     \
      [o_env0] "i"(offsetof(struct xs, env0)), [o_env1] "i"(offsetof(struct xs, env1)),   \
      [o_mxcsr_in] "i"(offsetof(struct xs, mxcsr_in)),                                     \
      [o_mxcsr_out] "i"(offsetof(struct xs, mxcsr_out)),                                   \
      [o_vin] "i"(offsetof(struct xs, vin)), [o_vout] "i"(offsetof(struct xs, vout)),     \
      [o_kin] "i"(offsetof(struct xs, kin)), [o_kout] "i"(offsetof(struct xs, kout))

#define CLOB_X87 "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"
#define CLOB_XMM0_15                                                                       \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",         \
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define CLOB_XMM16_31                                                                      \
    "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",        \
        "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"
#define CLOB_K "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"

/* Apply M(i) to 0..15 / 16..31. */
#define R16(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define R16_31(M)                                                                          \
    M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)
#define R8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

#define LD_X(i) "movdqu %c[o_vin]+" #i "*64(%[s]), %%xmm" #i "\n\t"
#define ST_X(i) "movdqu %%xmm" #i ", %c[o_vout]+" #i "*64(%[s])\n\t"
#define LD_Y(i) "vmovdqu %c[o_vin]+" #i "*64(%[s]), %%ymm" #i "\n\t"
#define ST_Y(i) "vmovdqu %%ymm" #i ", %c[o_vout]+" #i "*64(%[s])\n\t"
#define LD_Z(i) "vmovdqu64 %c[o_vin]+" #i "*64(%[s]), %%zmm" #i "\n\t"
#define ST_Z(i) "vmovdqu64 %%zmm" #i ", %c[o_vout]+" #i "*64(%[s])\n\t"
#define LD_KQ(i) "kmovq %c[o_kin]+" #i "*8(%[s]), %%k" #i "\n\t"
#define ST_KQ(i) "kmovq %%k" #i ", %c[o_kout]+" #i "*8(%[s])\n\t"
#define LD_KW(i) "kmovw %c[o_kin]+" #i "*8(%[s]), %%k" #i "\n\t"
#define ST_KW(i) "kmovw %%k" #i ", %c[o_kout]+" #i "*8(%[s])\n\t"

static void block_sse(struct worker *w)
{
    __asm__ volatile(X87_LOAD R16(LD_X) SPIN_LOOP R16(ST_X) X87_STORE
                     :
                     OPERANDS(&w->x, w)
                     : "rcx", "cc", "memory", CLOB_X87, CLOB_XMM0_15);
}

static void block_avx(struct worker *w)
{
    __asm__ volatile(X87_LOAD R16(LD_Y) SPIN_LOOP R16(ST_Y) X87_STORE "vzeroupper\n\t"
                     :
                     OPERANDS(&w->x, w)
                     : "rcx", "cc", "memory", CLOB_X87, CLOB_XMM0_15);
}

__attribute__((target("avx512f"))) static void block_avx512(struct worker *w)
{
    if (has_bw)
        __asm__ volatile(X87_LOAD R16(LD_Z) R16_31(LD_Z) R8(LD_KQ) SPIN_LOOP R16(ST_Z)
                             R16_31(ST_Z) R8(ST_KQ) X87_STORE "vzeroupper\n\t"
                         :
                         OPERANDS(&w->x, w)
                         : "rcx", "cc", "memory", CLOB_X87, CLOB_XMM0_15, CLOB_XMM16_31,
                           CLOB_K);
    else
        __asm__ volatile(X87_LOAD R16(LD_Z) R16_31(LD_Z) R8(LD_KW) SPIN_LOOP R16(ST_Z)
                             R16_31(ST_Z) R8(ST_KW) X87_STORE "vzeroupper\n\t"
                         :
                         OPERANDS(&w->x, w)
                         : "rcx", "cc", "memory", CLOB_X87, CLOB_XMM0_15, CLOB_XMM16_31,
                           CLOB_K);
}

static uint32_t rdpkru(void)
{
    uint32_t eax, edx;
    __asm__ volatile(".byte 0x0f, 0x01, 0xee" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}

static void wrpkru(uint32_t v)
{
    __asm__ volatile(".byte 0x0f, 0x01, 0xef" : : "a"(v), "c"(0), "d"(0) : "memory");
}

/* ---------- patterns ---------- */

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* An 80-bit x87 value: 64-bit significand then sign|exponent. */
static void f80(uint8_t *out, uint64_t mant, uint16_t sexp)
{
    memset(out, 0, 16);
    memcpy(out, &mant, 8);
    memcpy(out + 8, &sexp, 2);
}

static void init_patterns(struct worker *w)
{
    struct xs *x = &w->x;
    uint64_t seed = 0x5EED0000ULL + (uint64_t)w->index * 0x1000;
    for (int r = 0; r < 32; r++)
        for (int b = 0; b < 64; b += 8) {
            uint64_t v = mix(seed + (uint64_t)r * 64 + b);
            memcpy(&x->vin[r][b], &v, 8);
        }
    for (int k = 0; k < 8; k++) {
        x->kin[k] = mix(seed + 5000 + k);
        if (!has_bw)
            x->kin[k] &= 0xFFFF; /* kmovw: 16 bits */
    }
    for (int i = 0; i < 8; i++) {
        uint64_t m = mix(seed + 6000 + i) | (1ULL << 63); /* normalized: integer bit set */
        uint16_t e = (uint16_t)(0x3FFF - 40 + (mix(seed + 7000 + i) % 80));
        switch ((i + w->index) % 8) {
        case 2: f80(x->xin[i], 0, 0x8000); break;                        /* -0 */
        case 4: f80(x->xin[i], m >> 5, 0x0000); break;                   /* denormal */
        case 5: f80(x->xin[i], 1ULL << 63, 0x7FFF); break;               /* +inf */
        case 6: f80(x->xin[i], (3ULL << 62) | (m & 0xFFFFFF), 0xFFFF); break; /* -QNaN */
        default: f80(x->xin[i], m, (uint16_t)(e | (i & 1 ? 0x8000 : 0))); break;
        }
    }
    /* Control words keep bit 6 set (it reads back as 1) and all exceptions masked. */
    x->cw_in = w->index == 0 ? 0x0F7F /* RC truncate, PC extended */
                             : 0x067F /* RC down, PC double */;
    x->mxcsr_in = w->index == 0 ? 0xFFC0 /* FZ, RC truncate, masks, DAZ */
                                : 0x3FA5 /* RC down, masks, sticky flags IE|ZE|PE */;
    w->pkru = w->index == 0 ? 0xA5A5A5A4u : 0x5A5A5A58u; /* key 0 always allowed */
}

/* ---------- verification ---------- */

static void record(struct worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(struct worker *w, const char *fmt, ...)
{
    pthread_mutex_lock(&w->lock);
    if (!w->first[0]) {
        int n = snprintf(w->first, sizeof(w->first), "thread %d (tid %d) block %llu: ", w->index,
                         w->tid, (unsigned long long)w->blocks);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->first + n, sizeof(w->first) - n, fmt, ap);
        va_end(ap);
        fprintf(stderr, "xsave: MISMATCH %s\n", w->first);
    }
    w->mismatches++;
    pthread_mutex_unlock(&w->lock);
}

static void hex(char *out, const uint8_t *p, int n)
{
    /* little-endian: most significant byte first */
    for (int i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[n - 1 - i]);
}

static const char *env_field[3] = {"control word", "status word", "tag word"};

/* Compares what the block stored with the patterns; 1 if all equal. */
static int verify_block(struct worker *w)
{
    struct xs *x = &w->x;
    const char *rn = mode == SSE ? "xmm" : mode == AVX ? "ymm" : "zmm";
    for (int r = 0; r < nvec; r++)
        for (int b = 0; b < veclen; b += 8)
            if (memcmp(&x->vin[r][b], &x->vout[r][b], 8)) {
                char e[20], g[20];
                hex(e, &x->vin[r][b], 8);
                hex(g, &x->vout[r][b], 8);
                record(w, "%s%d bytes %d..%d = %s, expected %s", rn, r, b, b + 7, g, e);
                return 0;
            }
    if (mode == AVX512)
        for (int k = 0; k < 8; k++)
            if (x->kout[k] != x->kin[k]) {
                record(w, "k%d = %#llx, expected %#llx", k, (unsigned long long)x->kout[k],
                       (unsigned long long)x->kin[k]);
                return 0;
            }
    if (x->mxcsr_out != x->mxcsr_in) {
        record(w, "MXCSR = %#x, expected %#x", x->mxcsr_out, x->mxcsr_in);
        return 0;
    }
    if (x->cw_out != x->cw_in) {
        record(w, "x87 control word = %#x, expected %#x", x->cw_out, x->cw_in);
        return 0;
    }
    for (int f = 0; f < 3; f++) /* control, status, tag words (see the top comment) */
        if (memcmp(x->env0 + 4 * f, x->env1 + 4 * f, 4)) {
            uint32_t a, b;
            memcpy(&a, x->env0 + 4 * f, 4);
            memcpy(&b, x->env1 + 4 * f, 4);
            record(w, "x87 environment %s = %#x after the spin, %#x before it", env_field[f],
                   b & 0xFFFF, a & 0xFFFF);
            return 0;
        }
    for (int j = 0; j < 8; j++)
        if (memcmp(x->xout[j], x->xin[7 - j], 10)) {
            char e[24], g[24];
            hex(e, x->xin[7 - j], 10);
            hex(g, x->xout[j], 10);
            record(w, "x87 st(%d) = %s, expected %s", j, g, e);
            return 0;
        }
    if (has_pkru) {
        uint32_t p = rdpkru();
        if (p != w->pkru) {
            record(w, "PKRU = %#x, expected %#x", p, w->pkru);
            return 0;
        }
    }
    return 1;
}

/* Field 22 of /proc/thread-self/stat: changes when the thread is recreated by a restore. */
static unsigned long long thread_starttime(void)
{
    char buf[1024];
    int fd = open("/proc/thread-self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long long v = 0;
    /* after ')': state is field 3, starttime field 22 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d "
               "%*d %llu", &v) != 1)
        return 0;
    return v;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    w->tid = (pid_t)syscall(SYS_gettid);
    if (has_pkru) wrpkru(w->pkru);
    for (;;) {
        struct xs *x = &w->x;
        memset(x->vout, 0, sizeof(x->vout));
        memset(x->kout, 0, sizeof(x->kout));
        memset(x->xout, 0, sizeof(x->xout));
        memset(x->env0, 0, sizeof(x->env0));
        memset(x->env1, 0xEE, sizeof(x->env1));
        x->mxcsr_out = 0;
        x->cw_out = 0;
        unsigned long long st0 = thread_starttime();
        double t0 = wl_now();
        if (mode == AVX512)
            block_avx512(w);
        else if (mode == AVX)
            block_avx(w);
        else
            block_sse(w);
        verify_block(w);
        double dt = wl_now() - t0;
        if (thread_starttime() != st0)
            w->restored_blocks++;
        if (dt > w->longest) w->longest = dt;
        __atomic_add_fetch(&w->blocks, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* ---------- main thread ---------- */

#define MAIN_CW 0x0A7F       /* RC up, PC double */
#define MAIN_MXCSR 0x5F80    /* RC up, all masked; flags may change (libc float code) */
#define MXCSR_CTL 0xFFC0
#define MAIN_PKRU 0x0000003Cu

static char main_first[512];

static void main_set(void)
{
    uint16_t cw = MAIN_CW;
    uint32_t m = MAIN_MXCSR;
    __asm__ volatile("fldcw %0" : : "m"(cw));
    __asm__ volatile("ldmxcsr %0" : : "m"(m));
    if (has_pkru) wrpkru(MAIN_PKRU);
}

static void main_verify(void)
{
    uint16_t cw;
    uint32_t m;
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    __asm__ volatile("stmxcsr %0" : "=m"(m));
    char why[256] = "";
    if (cw != MAIN_CW)
        snprintf(why, sizeof(why), "x87 control word = %#x, expected %#x", cw, MAIN_CW);
    else if ((m & MXCSR_CTL) != (MAIN_MXCSR & MXCSR_CTL))
        snprintf(why, sizeof(why), "MXCSR control bits = %#x (MXCSR %#x), expected %#x",
                 m & MXCSR_CTL, m, MAIN_MXCSR & MXCSR_CTL);
    else if (has_pkru && rdpkru() != MAIN_PKRU)
        snprintf(why, sizeof(why), "PKRU = %#x, expected %#x", rdpkru(), MAIN_PKRU);
    if (why[0] && !main_first[0]) {
        snprintf(main_first, sizeof(main_first), "main thread: %s", why);
        fprintf(stderr, "xsave: MISMATCH %s\n", main_first);
    }
}

static int check(char *why, size_t len)
{
    uint64_t b0[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) b0[i] = __atomic_load_n(&workers[i].blocks, __ATOMIC_ACQUIRE);
    double start = wl_now();
    /* Two more blocks each: the one running at the request (it may have spanned the dump) and
     * one started after it. */
    for (;;) {
        int late = -1;
        for (int i = 0; i < NWORKERS; i++)
            if (__atomic_load_n(&workers[i].blocks, __ATOMIC_ACQUIRE) < b0[i] + 2) late = i;
        if (late < 0) break;
        if (wl_now() - start > 10.0) {
            snprintf(why, len, "thread %d (tid %d) completed %llu blocks in 10 s, expected 2 "
                     "(spin counter %llu)", late, workers[late].tid,
                     (unsigned long long)(workers[late].blocks - b0[late]),
                     (unsigned long long)workers[late].prog);
            return 0;
        }
        main_verify();
        wl_nap();
    }
    main_verify();
    for (int i = 0; i < NWORKERS; i++) {
        struct worker *w = &workers[i];
        pthread_mutex_lock(&w->lock);
        fprintf(stderr, "xsave: check %ld: thread %d: %llu blocks, %llu mismatches, %llu spanned "
                "a dump+restore (longest block %.3f s)\n", wl_answered, i,
                (unsigned long long)w->blocks, (unsigned long long)w->mismatches,
                (unsigned long long)w->restored_blocks, w->longest);
        if (w->first[0]) {
            snprintf(why, len, "%s (%llu mismatching blocks)", w->first,
                     (unsigned long long)w->mismatches);
            pthread_mutex_unlock(&w->lock);
            return 0;
        }
        pthread_mutex_unlock(&w->lock);
    }
    if (main_first[0]) {
        snprintf(why, len, "%s", main_first);
        return 0;
    }
    return 1;
}

static void detect(void)
{
    unsigned a, b, c, d;
    int osxsave = 0, avx = 0, avx2 = 0, avx512f = 0, pku = 0, ospke = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        osxsave = (c >> 27) & 1;
        avx = (c >> 28) & 1;
    }
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((unsigned long long)hi << 32) | lo;
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        avx2 = (b >> 5) & 1;
        avx512f = (b >> 16) & 1;
        has_bw = (b >> 30) & 1;
        pku = (c >> 3) & 1;
        ospke = (c >> 4) & 1;
    }
    int os_avx = (xcr0 & 6) == 6, os_avx512 = (xcr0 & 0xE6) == 0xE6;
    has_pkru = pku && ospke && (xcr0 & 0x200);
    if (avx512f && os_avx512) {
        mode = AVX512, nvec = 32, veclen = 64;
    } else if (avx && os_avx) {
        mode = AVX, nvec = 16, veclen = 32;
        has_bw = 0;
    } else {
        mode = SSE, nvec = 16, veclen = 16;
        has_bw = 0;
    }
    fprintf(stderr, "xsave: cpu avx=%d avx2=%d avx512f=%d avx512bw=%d pku=%d ospke=%d xcr0=%#llx\n"
            "xsave: checking x87 (cw, 8 values, environment), MXCSR, %s0-%d%s%s\n",
            avx, avx2, avx512f, has_bw, pku, ospke, xcr0,
            mode == SSE ? "xmm" : mode == AVX ? "ymm" : "zmm", nvec - 1,
            mode == AVX512 ? (has_bw ? ", k0-k7 (64-bit)" : ", k0-k7 (16-bit)") : "",
            has_pkru ? ", PKRU" : "");
}

int main(void)
{
    wl_init();
    detect();
    main_set();
    /* Calibrate the spin: time a block of spin_n iterations with worker 0's patterns. */
    workers[0].index = 0;
    init_patterns(&workers[0]);
    {
        double best = 1e9;
        for (int i = 0; i < 5; i++) {
            double t0 = wl_now();
            if (mode == AVX512) block_avx512(&workers[0]);
            else if (mode == AVX) block_avx(&workers[0]);
            else block_sse(&workers[0]);
            double dt = wl_now() - t0;
            if (dt < best) best = dt;
        }
        main_set(); /* the block changed this thread's x87 control word and MXCSR */
        uint64_t n = (uint64_t)(spin_n * (BLOCK_S / (best > 1e-6 ? best : 1e-6)));
        spin_n = n < 100000 ? 100000 : n > 1000000000 ? 1000000000 : n;
        workers[0].prog = 0;
        fprintf(stderr, "xsave: %.2f ms per million spins: %llu spins per block\n", best * 1e3,
                (unsigned long long)spin_n);
    }
    for (int i = 0; i < NWORKERS; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        pthread_mutex_init(&w->lock, NULL);
        init_patterns(w);
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, w)) {
            perror("pthread_create");
            return 2;
        }
    }
    /* Ready once each worker has completed a block (patterns verified once). */
    for (int i = 0; i < NWORKERS; i++)
        while (__atomic_load_n(&workers[i].blocks, __ATOMIC_ACQUIRE) < 1) wl_nap();
    for (int i = 0; i < NWORKERS; i++)
        fprintf(stderr, "xsave: thread %d tid %d: x87 cw %#x, MXCSR %#x, PKRU %#x, first block %s\n",
                i, workers[i].tid, workers[i].x.cw_in, workers[i].x.mxcsr_in, workers[i].pkru,
                workers[i].first[0] ? workers[i].first : "ok");
    wl_ready();
    for (;;) {
        main_verify();
        wl_answer_check("xsave", check);
        wl_nap();
    }
}
