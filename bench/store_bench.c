/*
 * store_bench -- request events per second into SQLite with tally's
 * default settings (and with the JSONL file beside it), import speed in
 * MB/s of JSONL, and in the same run a baseline that does what OpenJarvis
 * (OpenJarvis TelemetryStore) does: a prepared INSERT per record into its
 * `telemetry` table, a commit per 50 records, SQLite's default journal and
 * synchronous settings.  The recording thread's queue holds the whole run
 * (so the figure is the writer's and the database's, not drops), and its
 * first event -- which allocates and touches the queue -- is not timed.
 *
 *   store_bench [--events N] [--tries K] [--dir DIR] [--cli PATH-TO-tally]
 *
 * Each case runs K times (default 5), interleaved with the others so that
 * a noisy neighbour hits them alike; the medians are reported.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(tally_request *q, int i, char *rid)
{
    static const char *models[] = {"llama-3.1-8b", "qwen2.5-32b", "gpt-4o-mini"};
    memset(q, 0, sizeof *q);
    snprintf(rid, 32, "req-%08d", i);
    q->model = models[i % 3];
    q->engine = (i & 1) ? "vllm" : "llama.cpp";
    q->route = "direct";
    q->request_id = rid;
    q->prompt_tokens = 100 + i % 1000;
    q->completion_tokens = 10 + i % 300;
    q->latency_us = 1000 + i % 100000;
    q->ttft_us = 200 + i % 1000;
    q->energy_j = 0.5 * (i % 40);
    q->gpu_util_pct = 70;
    q->flags = TALLY_HAS_ENERGY | TALLY_HAS_GPU_UTIL;
}

/* Events stored in a tally database (-1 when it cannot be read). */
static int64_t rows_of(const char *db)
{
    sqlite3 *s;
    sqlite3_stmt *st;
    int64_t n = -1;
    if (sqlite3_open_v2(db, &s, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(s, "SELECT count(*) FROM events", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(s);
    return n;
}

static void rm_db(const char *p)
{
    char x[600];
    unlink(p);
    snprintf(x, sizeof x, "%s-wal", p);
    unlink(x);
    snprintf(x, sizeof x, "%s-shm", p);
    unlink(x);
    snprintf(x, sizeof x, "%s-journal", p);
    unlink(x);
}

/* tally: recording thread -> writer -> SQLite, default settings; the
 * queue holds the whole run so the figure is the writer's, not drops. */
static double tally_rate(const char *db, int n, const char *jsonl)
{
    rm_db(db);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.sqlite_path = db;
    cfg.path = jsonl; /* NULL: SQLite only */
    cfg.queue_bytes = (size_t)n * 400;
    tally_t *h = tally_open(&cfg);
    char rid[32];
    tally_request q;
    /* The recording thread's ring is made (and its memory touched) by its
     * first event: outside the measurement. */
    fill(&q, 0, rid);
    tally_request_record(h, &q);
    tally_flush(h, 600000);
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        fill(&q, i, rid);
        tally_request_record(h, &q);
    }
    tally_flush(h, 600000);
    double t1 = now_s();
    tally_counters c;
    tally_get_counters(h, &c);
    tally_close(h, NULL);
    if (c.dropped || c.sink_failures) {
        /* Lost events would make the rate a lie: fail, print no figure. */
        fprintf(stderr, "store_bench: FAILED: dropped %llu, sink failures %llu\n", (unsigned long long)c.dropped,
                (unsigned long long)c.sink_failures);
        exit(1);
    }
    return n / (t1 - t0);
}

/* OpenJarvis: OpenJarvis's telemetry table, a prepared INSERT per record,
 * commit every 50. */
static double baseline_rate(const char *db, int n)
{
    rm_db(db);
    sqlite3 *s;
    sqlite3_open(db, &s);
    sqlite3_exec(s,
                 "CREATE TABLE telemetry(id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL, model_id TEXT,"
                 " engine TEXT, agent TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,"
                 " latency_seconds REAL, ttft REAL, cost_usd REAL, energy_joules REAL, gpu_utilization_pct REAL,"
                 " throughput_tok_per_sec REAL, metadata TEXT)",
                 NULL, NULL, NULL);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(s,
                       "INSERT INTO telemetry(timestamp, model_id, engine, agent, prompt_tokens, completion_tokens,"
                       " total_tokens, latency_seconds, ttft, cost_usd, energy_joules, gpu_utilization_pct,"
                       " throughput_tok_per_sec, metadata) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       -1, &st, NULL);
    char rid[32];
    tally_request q;
    double t0 = now_s();
    sqlite3_exec(s, "BEGIN", NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        fill(&q, i, rid);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sqlite3_bind_double(st, 1, (double)ts.tv_sec + ts.tv_nsec / 1e9);
        sqlite3_bind_text(st, 2, q.model, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, q.engine, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, q.prompt_tokens);
        sqlite3_bind_int64(st, 6, q.completion_tokens);
        sqlite3_bind_int64(st, 7, q.prompt_tokens + q.completion_tokens);
        sqlite3_bind_double(st, 8, q.latency_us / 1e6);
        sqlite3_bind_double(st, 9, q.ttft_us / 1e6);
        sqlite3_bind_double(st, 10, 0);
        sqlite3_bind_double(st, 11, q.energy_j);
        sqlite3_bind_double(st, 12, q.gpu_util_pct);
        sqlite3_bind_double(st, 13, q.completion_tokens / (q.latency_us / 1e6));
        sqlite3_bind_text(st, 14, "{}", -1, SQLITE_STATIC);
        sqlite3_step(st);
        sqlite3_reset(st);
        if (i % 50 == 49) {
            sqlite3_exec(s, "COMMIT", NULL, NULL, NULL);
            sqlite3_exec(s, "BEGIN", NULL, NULL, NULL);
        }
    }
    sqlite3_exec(s, "COMMIT", NULL, NULL, NULL);
    double t1 = now_s();
    sqlite3_finalize(st);
    sqlite3_close(s);
    return n / (t1 - t0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and prints "(tries a b c ...)" into buf; returns the median. */
static double median(double *v, int k, char *buf, size_t cap)
{
    qsort(v, (size_t)k, sizeof *v, cmp_double);
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "(tries");
    for (int i = 0; i < k && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, " %.0f", v[i]);
    if (o < cap) snprintf(buf + o, cap - o, ")");
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

enum { MAX_TRIES = 15 };

int main(int argc, char **argv)
{
    int n = 500000, tries = 5;
    const char *dir = "/tmp", *cli = "./build/tally";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--events") && i + 1 < argc) n = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--tries") && i + 1 < argc) tries = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--cli") && i + 1 < argc) cli = argv[++i];
        else {
            fprintf(stderr, "usage: store_bench [--events N] [--tries K] [--dir DIR] [--cli PATH]\n");
            return 2;
        }
    }
    if (n < 1000) n = 1000;
    if (tries < 1) tries = 1;
    if (tries > MAX_TRIES) tries = MAX_TRIES;
    char db[512], jsonl[512], db2[512];
    snprintf(db, sizeof db, "%s/store_bench_%d.db", dir, (int)getpid());
    snprintf(db2, sizeof db2, "%s/store_bench_%d_import.db", dir, (int)getpid());
    snprintf(jsonl, sizeof jsonl, "%s/store_bench_%d.jsonl", dir, (int)getpid());
    printf("# store_bench: %d request events\n", n);

    double t[MAX_TRIES], b[MAX_TRIES], tj[MAX_TRIES];
    int bn = n / 10 < 20000 ? 20000 : n / 10; /* the baseline is slow: a tenth of the events */
    for (int k = 0; k < tries; k++) {
        t[k] = tally_rate(db, n, NULL);
        b[k] = baseline_rate(db, bn);
        unlink(jsonl);
        tj[k] = tally_rate(db, n, jsonl);
    }
    unlink(jsonl);
    char ts[256], bs[256], tjs[256];
    double tm = median(t, tries, ts, sizeof ts), bm = median(b, tries, bs, sizeof bs);
    double tjm = median(tj, tries, tjs, sizeof tjs);
    printf("case=sqlite_insert events_per_s=%.0f %s\n", tm, ts);
    printf("case=baseline_openjarvis events_per_s=%.0f %s\n", bm, bs);
    printf("case=sqlite_and_jsonl events_per_s=%.0f %s\n", tjm, tjs);
    printf("ratio sqlite_insert/baseline_openjarvis=%.1f\n", tm / bm);

    /* Import: a JSONL file written by tally, loaded by `tally import`. */
    unlink(jsonl);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = jsonl;
    cfg.queue_bytes = (size_t)n * 400;
    tally_t *h = tally_open(&cfg);
    char rid[32];
    tally_request q;
    for (int i = 0; i < n; i++) {
        fill(&q, i, rid);
        tally_request_record(h, &q);
    }
    tally_close(h, NULL);
    struct stat st;
    stat(jsonl, &st);
    rm_db(db2);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s import %s --db %s >/dev/null", cli, jsonl, db2);
    if (access(cli, X_OK) != 0) {
        fprintf(stderr, "store_bench: case=import FAILED: %s is not an executable tally (give --cli PATH)\n", cli);
        return 1;
    }
    double t0 = now_s();
    int rc = system(cmd);
    double t1 = now_s();
    /* A case that did not do its work fails; it never prints a figure. */
    int64_t imported = rc == 0 ? rows_of(db2) : -1;
    if (rc != 0 || imported != (int64_t)n + 2) {
        fprintf(stderr, "store_bench: case=import FAILED: `%s` exited %d and stored %lld of %d events\n", cmd, rc,
                (long long)imported, n + 2);
        return 1;
    }
    printf("case=import bytes=%lld seconds=%.2f mb_per_s=%.1f events_per_s=%.0f\n", (long long)st.st_size, t1 - t0,
           st.st_size / 1e6 / (t1 - t0), n / (t1 - t0));
    rm_db(db);
    rm_db(db2);
    unlink(jsonl);
    return 0;
}
