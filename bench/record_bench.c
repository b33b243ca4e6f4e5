/*
 * record_bench -- what one recording call costs the caller, and how many
 * events per second the writer sustains into a file.
 *
 * Per case it prints one line ending in ratio_vs_naive=X, where the naive
 * way is what most hand-rolled telemetry does: format the line, fprintf it
 * under a mutex, fflush after each.  Latencies are per call, measured with
 * the TSC (calibrated against CLOCK_MONOTONIC, timer overhead subtracted),
 * reported as p50 / p99 / p99.9 / max over every call.
 *
 *   record_bench [--calls N] [--dir DIR] [--prices FILE]   (FILE: e.g. examples/prices.json)
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "tally.h"

/* Allocation counting per thread: this program's malloc family wraps
 * glibc's, so "no allocation on the recording path" is measured on the
 * recording thread alone (the writer thread allocates as it likes). */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static __thread size_t thread_allocs;
void *malloc(size_t n) { thread_allocs++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { thread_allocs++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { thread_allocs++; return __libc_realloc(p, n); }

static double ns_per_tick;
static uint64_t timer_overhead;
static int calls = 500000;
static const char *dir = "/tmp";

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t tick(void)
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void calibrate(void)
{
    uint64_t t0 = now_ns(), c0 = __rdtsc();
    usleep(200000);
    uint64_t t1 = now_ns(), c1 = __rdtsc();
    ns_per_tick = (double)(t1 - t0) / (double)(c1 - c0);
    uint64_t s[10001];
    for (int i = 0; i < 10001; i++) {
        uint64_t a = tick(), b = tick();
        s[i] = b - a;
    }
    qsort(s, 10001, sizeof s[0], cmp_u64);
    timer_overhead = s[5000];
}

typedef struct lat {
    double p50, p99, p999, max;
} lat;

static lat summarize(uint64_t *t, size_t n)
{
    qsort(t, n, sizeof t[0], cmp_u64);
    lat l;
    l.p50 = t[n / 2] * ns_per_tick;
    l.p99 = t[(size_t)(n * 0.99)] * ns_per_tick;
    l.p999 = t[(size_t)(n * 0.999)] * ns_per_tick;
    l.max = t[n - 1] * ns_per_tick;
    return l;
}

static void fill_request(tally_request *q, int i, char *rid, size_t rlen)
{
    static const char *models[] = {"llama-3.1-8b", "qwen2.5-32b", "gpt-4o-mini"};
    memset(q, 0, sizeof *q);
    snprintf(rid, rlen, "req-%08d", i);
    q->model = models[i % 3];
    q->engine = (i & 1) ? "vllm" : "llama.cpp";
    q->route = "direct";
    q->request_id = rid;
    q->principal_id = "team-chat";
    q->prompt_tokens = 100 + i % 1000;
    q->cached_tokens = 50;
    q->completion_tokens = 10 + i % 300;
    q->latency_us = 1000 + i % 100000;
    q->ttft_us = 200 + i % 1000;
}

/* ---- tally ---------------------------------------------------------------- */

typedef struct job {
    tally_t *h;
    int id, n, price; /* price: the request is begun (energy) and priced */
    uint64_t *ticks;
    size_t allocs_after_first;
} job;

static void *tally_worker(void *arg)
{
    job *j = arg;
    char rid[32];
    tally_request q;
    fill_request(&q, 0, rid, sizeof rid);
    tally_request_record(j->h, &q); /* the thread's first event allocates its ring */
    size_t a0 = thread_allocs;
    for (int i = 0; i < j->n; i++) {
        fill_request(&q, i, rid, sizeof rid);
        uint64_t a = tick();
        if (j->price) q.begin_token = tally_request_begin(j->h, 0);
        tally_request_record(j->h, &q);
        uint64_t b = tick();
        j->ticks[i] = b - a > timer_overhead ? b - a - timer_overhead : 0;
    }
    j->allocs_after_first = thread_allocs - a0;
    return NULL;
}

/* ---- naive: fprintf under a mutex, fflush each ---------------------------------- */

typedef struct naive {
    FILE *f;
    pthread_mutex_t mu;
    double t0;
} naive;

static void naive_record(naive *nv, const tally_request *q)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double t = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    pthread_mutex_lock(&nv->mu);
    fprintf(nv->f,
            "{\"kind\":\"eval\",\"t\":%.6f,\"ts\":%.6f,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{"
            "\"model\":\"%s\",\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"latency_us\":%lld,"
            "\"engine\":\"%s\",\"route\":\"%s\",\"request_id\":\"%s\",\"principal_id\":\"%s\","
            "\"cached_tokens\":%lld,\"ttft_us\":%lld,\"ok\":true}}\n",
            t - nv->t0, t, q->model, (long long)q->prompt_tokens, (long long)q->completion_tokens,
            (long long)q->latency_us, q->engine, q->route, q->request_id, q->principal_id,
            (long long)q->cached_tokens, (long long)q->ttft_us);
    fflush(nv->f);
    pthread_mutex_unlock(&nv->mu);
}

typedef struct njob {
    naive *nv;
    int n;
    uint64_t *ticks;
} njob;

static void *naive_worker(void *arg)
{
    njob *j = arg;
    char rid[32];
    tally_request q;
    for (int i = 0; i < j->n; i++) {
        fill_request(&q, i, rid, sizeof rid);
        uint64_t a = tick();
        naive_record(j->nv, &q);
        uint64_t b = tick();
        if (j->ticks) j->ticks[i] = b - a > timer_overhead ? b - a - timer_overhead : 0;
    }
    return NULL;
}

static void path_of(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/record_bench_%d_%s.jsonl", dir, (int)getpid(), name);
    unlink(out);
}

/* One latency case: `threads` threads each recording `calls` requests. */
static const char *price_file;

/* `calls` requests from one thread into h (begun first when `begin`),
 * then h closed: the per-call distribution. */
static lat one_thread(tally_t *h, uint64_t *ticks, int begin)
{
    job j = {h, 0, calls, begin, ticks, 0};
    pthread_t th;
    pthread_create(&th, NULL, tally_worker, &j);
    pthread_join(th, NULL);
    tally_close(h, NULL);
    return summarize(ticks, (size_t)calls);
}

static uint64_t *ticks_or_die(void)
{
    uint64_t *t = malloc(sizeof(uint64_t) * (size_t)calls);
    if (!t) {
        fprintf(stderr, "record_bench: out of memory for %d timings\n", calls);
        exit(1);
    }
    return t;
}

/* One thread: a plain request, then the same with pricing and energy on
 * (tally_request_begin + record, the writer pricing and attributing), in
 * the same process.  Energy needs a readable device: on a machine without
 * one, run with TALLY_NVML_LIB pointing at the test suite's fake NVML. */
static void priced_case(void)
{
    uint64_t *ticks = ticks_or_die();
    lat l[2];
    int energy_on = 0;
    for (int k = 0; k < 2; k++) {
        char path[512];
        path_of(path, sizeof path, k ? "priced" : "plain");
        tally_config cfg;
        tally_config_init(&cfg);
        cfg.path = path;
        cfg.queue_bytes = (size_t)calls * 512;
        if (k) {
            cfg.prices_path = price_file;
            cfg.energy = 1;
        }
        l[k] = one_thread(tally_open(&cfg), ticks, k);
        if (k) {
            /* Was energy really on?  The last line is run_end. */
            FILE *f = fopen(path, "r");
            char line[4096], last[4096] = "";
            while (f && fgets(line, sizeof line, f)) memcpy(last, line, sizeof last);
            if (f) fclose(f);
            energy_on = strstr(last, "energy_j") != NULL;
        }
        unlink(path);
    }
    printf("case=request_priced_energy calls=%d plain_p50_ns=%.0f plain_p99_ns=%.0f priced_p50_ns=%.0f "
           "priced_p99_ns=%.0f energy_sampling=%s ratio_vs_plain=%.2f\n",
           calls, l[0].p50, l[0].p99, l[1].p50, l[1].p99, energy_on ? "on" : "off(no device)", l[1].p50 / l[0].p50);
    free(ticks);
}

/* One thread: a plain request, then the same with the Prometheus endpoint
 * and the OTLP exporter on (to `otlp_url`, or to a port where nothing
 * listens: the collector is down and batches spool), tries interleaved in
 * the same process; medians of the tries' p50 and p99. */
static const char *otlp_url;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void exporters_case(void)
{
    enum { TRIES = 5 };
    uint64_t *ticks = ticks_or_die();
    double p50[2][TRIES], p99[2][TRIES];
    char spool[512];
    snprintf(spool, sizeof spool, "%s/record_bench_%d_spool", dir, (int)getpid());
    for (int t = 0; t < TRIES; t++)
        for (int k = 0; k < 2; k++) {
            char path[512];
            path_of(path, sizeof path, k ? "exporters" : "plain");
            tally_config cfg;
            tally_config_init(&cfg);
            cfg.path = path;
            cfg.queue_bytes = (size_t)calls * 512;
            if (k) {
                cfg.metrics_listen = "127.0.0.1:0";
                cfg.otlp_endpoint = otlp_url ? otlp_url : "http://127.0.0.1:9";
                cfg.otlp_spool_dir = spool;
            }
            tally_t *h = tally_open(&cfg);
            if (k && tally_metrics_port(h) == 0) {
                fprintf(stderr, "record_bench: the metrics endpoint did not start\n");
                exit(1);
            }
            lat l = one_thread(h, ticks, 0);
            p50[k][t] = l.p50;
            p99[k][t] = l.p99;
            unlink(path);
        }
    for (int k = 0; k < 2; k++) {
        qsort(p50[k], TRIES, sizeof(double), cmp_double);
        qsort(p99[k], TRIES, sizeof(double), cmp_double);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", spool);
    if (system(cmd) != 0) fprintf(stderr, "record_bench: could not remove %s\n", spool);
    printf("case=request_exporters calls=%d tries=%d collector=%s plain_p50_ns=%.0f plain_p99_ns=%.0f "
           "exporters_p50_ns=%.0f exporters_p99_ns=%.0f ratio_vs_plain=%.2f\n",
           calls, TRIES, otlp_url ? otlp_url : "down", p50[0][TRIES / 2], p99[0][TRIES / 2], p50[1][TRIES / 2],
           p99[1][TRIES / 2], p50[1][TRIES / 2] / p50[0][TRIES / 2]);
    free(ticks);
}

static void latency_case(int threads)
{
    char path[512], npath[512];
    path_of(path, sizeof path, "tally");
    path_of(npath, sizeof npath, "naive");
    uint64_t *ticks = malloc(sizeof(uint64_t) * (size_t)calls * (size_t)threads);
    uint64_t *nticks = malloc(sizeof(uint64_t) * (size_t)calls * (size_t)threads);

    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    /* Large enough that no call of the case is dropped: the figure is the
     * cost of an accepted event, not of a drop. */
    cfg.queue_bytes = (size_t)calls * 512;
    tally_t *h = tally_open(&cfg);
    pthread_t th[8];
    job jobs[8];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job){h, t, calls, 0, ticks + (size_t)t * calls, 0};
        pthread_create(&th[t], NULL, tally_worker, &jobs[t]);
    }
    size_t allocs = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        allocs += jobs[t].allocs_after_first;
    }
    tally_flush(h, 60000);
    tally_counters c;
    tally_get_counters(h, &c);
    tally_close(h, NULL);
    lat l = summarize(ticks, (size_t)calls * threads);

    naive nv = {fopen(npath, "a"), PTHREAD_MUTEX_INITIALIZER, (double)time(NULL)};
    njob nj[8];
    for (int t = 0; t < threads; t++) {
        nj[t] = (njob){&nv, calls, nticks + (size_t)t * calls};
        pthread_create(&th[t], NULL, naive_worker, &nj[t]);
    }
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    fclose(nv.f);
    lat nl = summarize(nticks, (size_t)calls * threads);

    printf("case=request_%dthread%s calls=%d p50_ns=%.0f p99_ns=%.0f p999_ns=%.0f max_ns=%.0f "
           "dropped=%llu allocs_after_first_event=%zu naive_p50_ns=%.0f naive_p99_ns=%.0f "
           "naive_p999_ns=%.0f ratio_vs_naive=%.1f\n",
           threads, threads > 1 ? "s" : "", calls * threads, l.p50, l.p99, l.p999, l.max,
           (unsigned long long)c.dropped, allocs, nl.p50, nl.p99, nl.p999, nl.p50 / l.p50);
    fflush(stdout);
    unlink(path);
    unlink(npath);
    free(ticks);
    free(nticks);
}

/* Sustained: one producer offering `rate` events/s for `secs` seconds into
 * the default queue; returns the events dropped. */
static uint64_t offer_at(double rate, double secs, double *achieved)
{
    char path[512];
    path_of(path, sizeof path, "sustained");
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    tally_t *h = tally_open(&cfg);
    char rid[32];
    tally_request q;
    uint64_t total = (uint64_t)(rate * secs);
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < total; i++) {
        if ((i & 255) == 0) {
            /* Pace in slices of 256 events. */
            uint64_t due = t0 + (uint64_t)((double)i / rate * 1e9);
            while (now_ns() < due) {}
        }
        fill_request(&q, (int)i, rid, sizeof rid);
        tally_request_record(h, &q);
    }
    tally_flush(h, 60000);
    uint64_t t1 = now_ns();
    tally_counters c;
    tally_get_counters(h, &c);
    tally_close(h, NULL);
    *achieved = (double)(c.written - 1) / ((double)(t1 - t0) / 1e9);
    unlink(path);
    return c.dropped;
}

static int cmp_u64p(const void *a, const void *b) { return cmp_u64(a, b); }

/* Each rate is tried three times; the median decides (the machines are
 * shared, and a page-cache stall on one try is not the writer's speed). */
static void sustained_case(void)
{
    double best = 0, achieved = 0;
    uint64_t best_drops = 0;
    double rates[] = {1e6, 1.5e6, 2e6, 2.5e6, 3e6, 4e6};
    (void)offer_at(1e6, 0.5, &achieved); /* warm-up */
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        uint64_t d[3];
        for (int k = 0; k < 3; k++) d[k] = offer_at(rates[i], 1.0, &achieved);
        qsort(d, 3, sizeof d[0], cmp_u64p);
        printf("  sustained offered=%.1fM/s dropped_per_try=%llu,%llu,%llu median=%llu\n", rates[i] / 1e6,
               (unsigned long long)d[0], (unsigned long long)d[1], (unsigned long long)d[2],
               (unsigned long long)d[1]);
        fflush(stdout);
        if (d[1] == 0) {
            best = rates[i];
            best_drops = d[1];
        }
    }
    /* The naive writer's throughput: one thread, as fast as it goes. */
    char npath[512];
    path_of(npath, sizeof npath, "naive_sustained");
    naive nv = {fopen(npath, "a"), PTHREAD_MUTEX_INITIALIZER, (double)time(NULL)};
    njob nj = {&nv, calls, NULL};
    uint64_t t0 = now_ns();
    naive_worker(&nj);
    uint64_t t1 = now_ns();
    fclose(nv.f);
    unlink(npath);
    double naive_rate = calls / ((double)(t1 - t0) / 1e9);
    printf("case=sustained_file max_rate_median_zero_drops=%.2fM/s dropped=%llu naive_rate=%.2fM/s "
           "ratio_vs_naive=%.1f\n",
           best / 1e6, (unsigned long long)best_drops, naive_rate / 1e6, best / naive_rate);
}

int main(int argc, char **argv)
{
    int exporters = 0, only_exporters = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--calls") && i + 1 < argc) calls = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--prices") && i + 1 < argc) price_file = argv[++i];
        else if (!strcmp(argv[i], "--exporters")) exporters = 1;
        else if (!strcmp(argv[i], "--otlp") && i + 1 < argc) otlp_url = argv[++i], exporters = 1;
        else if (!strcmp(argv[i], "--only-exporters")) only_exporters = 1, exporters = 1;
        else {
            fprintf(stderr, "usage: record_bench [--calls N] [--dir DIR] [--prices FILE] [--exporters] [--otlp URL] "
                            "[--only-exporters]\n");
            return 2;
        }
    }
    if (calls < 1000) calls = 1000;
    calibrate();
    printf("# record_bench: %d calls per thread, %d cpus, timer overhead %.1f ns subtracted\n", calls,
           (int)sysconf(_SC_NPROCESSORS_ONLN), timer_overhead * ns_per_tick);
    /* Sustained first: the latency cases leave the page cache full of
     * dirty pages, whose writeback would then compete for the 2 cores. */
    if (!only_exporters) {
        sustained_case();
        latency_case(1);
        latency_case(2);
        if (price_file) priced_case();
    }
    if (exporters) exporters_case();
    return 0;
}
