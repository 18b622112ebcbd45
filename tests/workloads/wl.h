/*
 * The workload protocol of the vzcpt test suite (see tests/README.md).
 *
 * A workload starts, sets up its state, and calls wl_ready(). It then goes on with its own
 * activity and calls wl_poll() often (at least every 20 ms). wl_poll() returns 1 when the
 * harness asks for a check (the file $VZCPT_CTL/check exists and is newer than the last one
 * answered): the workload then verifies every piece of its state and answers with wl_pass() or
 * wl_fail("reason"), which writes $VZCPT_CTL/result atomically, and goes on running. The
 * harness dumps and restores the workload between checks; the workload never knows when.
 */
#ifndef VZCPT_WL_H
#define VZCPT_WL_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char wl_ctl[4096];
static long wl_answered = 0; /* sequence number of the last check answered */

static inline const char *wl_path(const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", wl_ctl, name);
    return buf;
}

static inline void wl_write_file(const char *name, const char *text)
{
    char tmp[4200], dst[4200];
    snprintf(tmp, sizeof(tmp), "%s/.%s.%d", wl_ctl, name, getpid());
    wl_path(name, dst, sizeof(dst));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { perror("wl: open"); exit(2); }
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len) { perror("wl: write"); exit(2); }
    close(fd);
    if (rename(tmp, dst)) { perror("wl: rename"); exit(2); }
}

/* Call first: reads $VZCPT_CTL. */
static inline void wl_init(void)
{
    const char *c = getenv("VZCPT_CTL");
    if (!c) { fprintf(stderr, "wl: VZCPT_CTL is not set\n"); exit(2); }
    snprintf(wl_ctl, sizeof(wl_ctl), "%s", c);
}

static inline void wl_ready(void) { wl_write_file("ready", "ready\n"); }

/* 1 when a new check is requested. The check file holds its sequence number. */
static inline int wl_poll(void)
{
    char p[4200], buf[64] = {0};
    int fd = open(wl_path("check", p, sizeof(p)), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    long seq = strtol(buf, NULL, 10);
    if (seq <= wl_answered) return 0;
    wl_answered = seq;
    return 1;
}

static inline void wl_answer(const char *text)
{
    char buf[8192];
    snprintf(buf, sizeof(buf), "%ld %s\n", wl_answered, text);
    wl_write_file("result", buf);
}

static inline void wl_pass(void) { wl_answer("PASS"); }

static inline void wl_fail(const char *fmt, ...)
{
    char msg[4096], out[4200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(out, sizeof(out), "FAIL: %s", msg);
    wl_answer(out);
}

/* Runs `check` (1 = pass, else `why` says what failed) when a check is requested, answers
 * it and logs the verdict to stderr as "<name>: check N PASS|FAIL: why". */
static inline void wl_answer_check(const char *name, int (*check)(char *why, size_t len))
{
    if (!wl_poll())
        return;
    char why[1024] = "";
    if (check(why, sizeof(why))) {
        fprintf(stderr, "%s: check %ld PASS\n", name, wl_answered);
        wl_pass();
    } else {
        fprintf(stderr, "%s: check %ld FAIL: %s\n", name, wl_answered, why);
        wl_fail("%s", why);
    }
}

/* Sleep a little between polls (10 ms): the workload is often dumped inside this nanosleep. */
static inline void wl_nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static inline double wl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
#endif
