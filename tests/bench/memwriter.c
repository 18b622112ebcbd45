/*
 * memwriter MIB RATE: the program of the migration benchmark's VEs. Touches MIB MiB of
 * anonymous memory (every page non-zero, so none is skipped as a zero page), creates
 * /tmp/ready, then dirties RATE MB/s of random pages (one byte each) for ever.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: memwriter MIB RATE_MB_S\n"); return 2; }
    size_t pages = (size_t)atol(argv[1]) << 8;
    double per_ms = atof(argv[2]) * 1e6 / 4096 / 1000;
    unsigned char *b = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < pages; i++) memset(b + i * 4096, (int)(i % 251) + 1, 4096);
    fclose(fopen("/tmp/ready", "w"));
    unsigned seed = 1;
    double owed = 0;
    for (;;) {
        owed += per_ms;
        while (owed >= 1) {
            seed = seed * 1103515245 + 12345;
            b[(size_t)(seed >> 4) % pages * 4096]++;
            owed -= 1;
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}
