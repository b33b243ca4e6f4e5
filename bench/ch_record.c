/*
 * ch_record -- request events per second from one recording process into
 * ClickHouse through the library's sink, and in the same run the same
 * events into a JSONL file alone (the baseline).  Used by
 * bench/clickhouse_bench.sh.
 *
 *   ch_record HTTP_PORT [--events N] [--tries K] [--dir DIR]
 *
 * A ClickHouse case runs from the first recorded event until the server
 * counts every row (polled every 20 ms), a JSONL case until tally_close()
 * returns.  The queue holds the whole run, so the figure is delivery, not
 * drops; a case that drops or loses any event fails the benchmark.  Cases
 * alternate, K times each (default 3); medians are printed.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct answer {
    char s[64];
    size_t n;
} answer;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    answer *a = ud;
    size_t len = size * n;
    size_t k = len < sizeof a->s - 1 - a->n ? len : sizeof a->s - 1 - a->n;
    memcpy(a->s + a->n, p, k);
    a->n += k;
    a->s[a->n] = 0;
    return len;
}

/* One query's answer as a number; -1 when the server did not answer. */
static long long query(int port, const char *sql)
{
    CURL *c = curl_easy_init();
    if (!c) return -1;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    answer a = {{0}, 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, sql);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    long status = 0;
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return rc == CURLE_OK && status == 200 ? strtoll(a.s, NULL, 10) : -1;
}

static const char *models[] = {"llama-3.1-8b", "qwen2.5-32b", "gpt-4o-mini"};

/* One case: events/s, or -1 when an event was dropped or lost. */
static double run(int port, const char *dir, int n, int to_clickhouse, int k)
{
    char path[600], spool[600], url[256], drop[300];
    snprintf(path, sizeof path, "%s/ch-%d-%d.jsonl", dir, to_clickhouse, k);
    snprintf(spool, sizeof spool, "%s/spool-%d", dir, k);
    snprintf(url, sizeof url, "clickhouse://127.0.0.1:%d/bench%d", port, k);
    snprintf(drop, sizeof drop, "DROP DATABASE IF EXISTS bench%d", k);
    if (to_clickhouse && query(port, drop) < 0 && query(port, "SELECT 1") < 0) return -1;
    tally_config cfg;
    tally_config_init(&cfg);
    if (to_clickhouse) {
        cfg.clickhouse = url;
        cfg.clickhouse_spool_dir = spool;
    } else {
        cfg.path = path;
    }
    cfg.queue_bytes = (size_t)n * 512 + ((size_t)64 << 20);
    cfg.flush_events = 65536;
    tally_t *h = tally_open(&cfg);
    tally_request r = {0};
    r.engine = "vllm";
    r.route = "direct";
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        r.model = models[i % 3];
        r.prompt_tokens = 100 + i % 1000;
        r.completion_tokens = 20 + i % 300;
        r.latency_us = 5000 + i % 20000;
        r.ttft_us = 300 + i % 700;
        r.cost_nusd = 1000 + i % 5000;
        tally_request_record(h, &r);
    }
    tally_counters c;
    tally_flush(h, 600000);
    tally_get_counters(h, &c);
    if (c.dropped) {
        fprintf(stderr, "ch_record: %llu events dropped\n", (unsigned long long)c.dropped);
        tally_close(h, NULL);
        return -1;
    }
    double t1;
    if (to_clickhouse) {
        char sql[200];
        snprintf(sql, sizeof sql, "SELECT count() FROM bench%d.events WHERE name = 'request'", k);
        double deadline = now_s() + 600;
        long long got = 0;
        while ((got = query(port, sql)) < n && now_s() < deadline) usleep(20000);
        t1 = now_s();
        tally_close(h, NULL);
        if (got != n) {
            fprintf(stderr, "ch_record: ClickHouse holds %lld of %d events\n", got, n);
            return -1;
        }
    } else {
        tally_close(h, NULL);
        t1 = now_s();
        unlink(path);
    }
    return n / (t1 - t0);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ch_record HTTP_PORT [--events N] [--tries K] [--dir DIR]\n");
        return 2;
    }
    int port = (int)strtol(argv[1], NULL, 10), n = 1000000, tries = 3;
    const char *dir = "/tmp";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--events")) n = (int)strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--tries")) tries = (int)strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
    }
    if (n < 1 || tries < 1 || tries > 15) return 2;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    double ch[15], file[15];
    for (int k = 0; k < tries; k++) {
        ch[k] = run(port, dir, n, 1, k);
        file[k] = run(port, dir, n, 0, k);
        if (ch[k] < 0 || file[k] < 0) {
            fprintf(stderr, "ch_record: FAILED (a case lost or dropped events)\n");
            return 1;
        }
    }
    qsort(ch, (size_t)tries, sizeof ch[0], cmp);
    qsort(file, (size_t)tries, sizeof file[0], cmp);
    double mc = ch[tries / 2], mf = file[tries / 2];
    printf("record_to_clickhouse events=%d events_per_s=%.0f (median of %d)\n", n, mc, tries);
    printf("record_to_jsonl      events=%d events_per_s=%.0f (median of %d)\n", n, mf, tries);
    printf("ratio_vs_jsonl=%.2f\n", mc / mf);
    return 0;
}
