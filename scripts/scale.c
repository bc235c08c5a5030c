/* scale.c - one metadata pass of scripts/scale.sh over COUNT files in one directory.
 *
 *   scale create|stat|unlink DIR COUNT   openat(O_CREAT|O_EXCL|O_WRONLY) + close, fstatat,
 *                                        or unlinkat of the files f0000000... in DIR
 *   scale list DIR COUNT                 getdents64 over DIR with a 32 KiB buffer (what
 *                                        glibc's readdir uses); fails unless it sees COUNT
 *                                        names besides "." and ".."
 *
 * Prints one line: "SLOWEST OP COUNT SECONDS US_PER_FILE P50_US P99_US MAX_US CALLS", where
 * the latencies are of each call (each create + close; each getdents64 call for list), CALLS
 * is the number of timed calls and SLOWEST the index of the slowest. Any failing call aborts with a message and exit status 1. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void fail(const char *what, const char *name) {
    fprintf(stderr, "scale: %s %s: %s\n", what, name, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: scale create|stat|list|unlink DIR COUNT\n");
        return 2;
    }
    const char *op = argv[1];
    long count = atol(argv[3]);
    if (count <= 0) {
        fprintf(stderr, "scale: COUNT must be positive\n");
        return 2;
    }
    int dfd = open(argv[2], O_RDONLY | O_DIRECTORY);
    if (dfd < 0) fail("open", argv[2]);
    /* One latency per call, in microseconds; a listing makes far fewer calls than COUNT. */
    float *lat = malloc(count * sizeof *lat);
    if (!lat) fail("malloc", "");
    long calls = 0, worst = 0;
    char name[32];
    struct stat sb;
    double t0 = now(), t = t0, t1;
    if (!strcmp(op, "list")) {
        static char buf[32768];
        long seen = 0;
        for (;;) {
            long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
            t1 = now();
            if (n < 0) fail("getdents64", argv[2]);
            if (calls < count) {
                lat[calls] = (t1 - t) * 1e6;
                if (lat[calls] > lat[worst]) worst = calls;
                calls++;
            }
            t = t1;
            if (n == 0) break;
            for (long off = 0; off < n;) {
                struct dirent64 *d = (struct dirent64 *)(buf + off);
                if (strcmp(d->d_name, ".") && strcmp(d->d_name, "..")) seen++;
                off += d->d_reclen;
            }
        }
        if (seen != count) {
            fprintf(stderr, "scale: listed %ld names in %s, expected %ld\n", seen, argv[2], count);
            return 1;
        }
    } else {
        int which = !strcmp(op, "create") ? 0 : !strcmp(op, "stat") ? 1 : !strcmp(op, "unlink") ? 2 : -1;
        if (which < 0) {
            fprintf(stderr, "scale: unknown operation %s\n", op);
            return 2;
        }
        for (long i = 0; i < count; i++) {
            snprintf(name, sizeof name, "f%07ld", i);
            if (which == 0) {
                int fd = openat(dfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
                if (fd < 0) fail("create", name);
                if (close(fd) != 0) fail("close", name);
            } else if (which == 1) {
                if (fstatat(dfd, name, &sb, 0) != 0) fail("stat", name);
            } else if (unlinkat(dfd, name, 0) != 0) {
                fail("unlink", name);
            }
            t1 = now();
            lat[calls] = (t1 - t) * 1e6;
            if (lat[calls] > lat[worst]) worst = calls;
            calls++;
            t = t1;
        }
    }
    double total = t - t0;
    /* Which call was the slowest: a pause at the same count every run is the daemon's. */
    printf("%ld ", worst);
    qsort(lat, calls, sizeof *lat, cmp);
    printf("%s %ld %.3f %.2f %.1f %.1f %.1f %ld\n", op, count, total, total / count * 1e6,
           lat[calls / 2], lat[calls * 99 / 100], lat[calls - 1], calls);
    return 0;
}
