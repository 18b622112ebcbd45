/*
 * counter: the simplest workload. A buffer of WL_MEM_MB MiB (default 8) filled with a pattern
 * derived from each word's index, and a counter incremented in a loop. A check verifies every
 * word of the buffer and that the counter went on increasing since the previous check (it
 * never restarts from zero and never stops).
 */
#include "wl.h"
#include <stdint.h>

int main(void)
{
    wl_init();
    const char *mb = getenv("WL_MEM_MB");
    size_t size = (size_t)(mb ? atol(mb) : 8) << 20;
    uint64_t *buf = malloc(size);
    if (!buf) { perror("malloc"); return 2; }
    size_t words = size / 8;
    for (size_t i = 0; i < words; i++)
        buf[i] = i * 0x9e3779b97f4a7c15ULL;
    volatile uint64_t counter = 0;
    uint64_t at_last_check = 0;
    wl_ready();
    for (;;) {
        for (int i = 0; i < 100000; i++)
            counter++;
        if (wl_poll()) {
            size_t bad = words;
            for (size_t i = 0; i < words; i++)
                if (buf[i] != i * 0x9e3779b97f4a7c15ULL) { bad = i; break; }
            if (bad != words)
                wl_fail("word %zu of %zu is %#lx, expected %#lx", bad, words,
                        (unsigned long)buf[bad], (unsigned long)(bad * 0x9e3779b97f4a7c15ULL));
            else if (counter <= at_last_check)
                wl_fail("counter %lu did not advance past %lu", (unsigned long)counter,
                        (unsigned long)at_last_check);
            else
                wl_pass();
            at_last_check = counter;
        }
        wl_nap();
    }
}
