/* Shift a process's wall clock (CLOCK_REALTIME, gettimeofday, time) by the number of seconds
 * in the file named by $CLOCKSHIFT_FILE, re-read on every call so a test can step the clock
 * while the process runs. Monotonic clocks and sleeps are left alone (Debian's libfaketime
 * 0.9.10 breaks time.sleep() of CPython 3.11+ with EINVAL). Loaded with LD_PRELOAD by tests. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static double shift_seconds(void) {
    const char *path = getenv("CLOCKSHIFT_FILE");
    double s = 0;
    if (path) {
        FILE *f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%lf", &s) != 1) s = 0;
            fclose(f);
        }
    }
    return s;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *) = NULL;
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + (long long)(shift_seconds() * 1e9);
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (r == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
