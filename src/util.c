/*
 * util -- what every module of the library uses: the log callback (once
 * per problem), the clocks, mkdir -p.
 */
#include "internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

__attribute__((format(printf, 3, 0))) static void vlog(tally_t *h, int level, const char *fmt, va_list ap)
{
    if (!h || !h->log) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    h->log(h->log_ud, level, msg);
}

void tally__log(tally_t *h, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(h, level, fmt, ap);
    va_end(ap);
}

void tally__warn_once(tally_t *h, int *flag, const char *fmt, ...)
{
    if (__atomic_exchange_n(flag, 1, __ATOMIC_RELAXED)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(h, TALLY_LOG_WARN, fmt, ap);
    va_end(ap);
}

int64_t tally__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct timespec tally__deadline(int64_t ns)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (ns < 0) ns = 0;
    int64_t sum = dl.tv_nsec + ns % 1000000000;
    dl.tv_sec += (time_t)(ns / 1000000000 + sum / 1000000000);
    dl.tv_nsec = (long)(sum % 1000000000);
    return dl;
}

int64_t tally__real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* mkdir -p; with parents_only, the last component (a file name) is left. */
int tally__mkdir_p(const char *path, int parents_only)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (tmp[i] != '/') continue;
        tmp[i] = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        tmp[i] = '/';
    }
    if (!parents_only && mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* libcurl's global state, set up once for every part that sends (the OTLP
 * exporter, ClickHouse). */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }
void tally__curl_init(void) { pthread_once(&curl_once, curl_init_once); }
