/*
 * serve_sim -- a simulated OpenAI-style server recording every request.
 *
 * Four worker threads answer requests across three models and two engines.
 * Some stream (and so have a time to first token), some fail, some are
 * degraded.  Events go to runs/<run_id>/events.jsonl.
 *
 *   serve_sim [--requests N] [--threads N] [--runs DIR] [--seed N] [--queue-mb N] [--prices FILE]
 *
 * With --prices (examples/prices.json), tally costs each request itself.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static const char *models[] = {"llama-3.1-8b", "qwen2.5-32b", "gpt-4o-mini"};
static const char *engines[] = {"vllm", "llama.cpp"};
static const char *routes[] = {"direct", "web_then_model", "reason_then_model"};
static const char *degrade_reasons[] = {"web_failed", "empty_completion", "grounding_cap"};

typedef struct worker {
    tally_t *t;
    int id, count;
    unsigned seed;
} worker;

/* xorshift: deterministic per worker, no shared state. */
static double rnd(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return (*s % 1000000) / 1000000.0;
}

static double lognormal(unsigned *s, double mu, double sigma)
{
    double u1 = rnd(s) + 1e-9, u2 = rnd(s);
    return exp(mu + sigma * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
}

static void *work(void *arg)
{
    worker *w = arg;
    char rid[64], extra[128];
    for (int i = 0; i < w->count; i++) {
        int m = (int)(rnd(&w->seed) * 3), e = (int)(rnd(&w->seed) * 2);
        tally_request q = {0};
        q.model = models[m];
        q.engine = engines[e];
        q.route = routes[(int)(rnd(&w->seed) * 3)];
        q.provider = e ? "sglang" : "vllm";
        q.finish_reason = rnd(&w->seed) < 0.15 ? "length" : "stop";
        snprintf(rid, sizeof rid, "req-%d-%06d", w->id, i);
        q.request_id = rid;
        q.principal_id = (i % 7 == 0) ? "team-search" : "team-chat";
        q.prompt_tokens = 50 + (int64_t)(rnd(&w->seed) * 2000);
        q.cached_tokens = (i % 3 == 0) ? q.prompt_tokens / 2 : 0;
        q.completion_tokens = 10 + (int64_t)(rnd(&w->seed) * 500);
        q.reasoning_tokens = m == 1 ? q.completion_tokens / 4 : 0;
        double per_tok_us = (m + 1) * 8000.0 * (e ? 1.6 : 1.0);
        q.latency_us = (int64_t)(lognormal(&w->seed, log(per_tok_us), 0.4) * (double)q.completion_tokens / 50);
        int streaming = (i % 2) == 0;
        if (streaming) q.ttft_us = q.latency_us / 8 + 1;
        tally_stage st[2] = {{"queue", q.latency_us / 20}, {"generate", q.latency_us - q.latency_us / 20}};
        q.stages = st;
        q.n_stages = 2;
        q.energy_j = (double)q.completion_tokens * (m + 1) * 0.35;
        q.gpu_util_pct = 40 + rnd(&w->seed) * 55;
        q.flags = TALLY_HAS_ENERGY | TALLY_HAS_GPU_UTIL;
        snprintf(extra, sizeof extra, "{\"worker\":%d,\"stream\":%s}", w->id, streaming ? "true" : "false");
        q.extra_json = extra;
        q.sampling_json = "{\"temperature\":0.7,\"max_tokens\":1024}";
        double r = rnd(&w->seed);
        if (r < 0.03) {
            q.error = "upstream timeout";
            q.completion_tokens = 0;
            q.reasoning_tokens = 0;
            q.ttft_us = 0;
            tally_error_at(w->t, "TimeoutError", "upstream timeout", "serve", -1, rid);
        } else if (r < 0.08) {
            q.degraded = degrade_reasons[(int)(rnd(&w->seed) * 3)];
            q.flags |= TALLY_FALLBACK;
        }
        if (r > 0.9) q.flags |= TALLY_CACHE_HIT;
        tally_request_record(w->t, &q);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int requests = 4000, threads = 4, queue_mb = 0;
    unsigned seed = 42;
    const char *runs = "runs", *prices = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc) requests = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--queue-mb") == 0 && i + 1 < argc) queue_mb = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--prices") == 0 && i + 1 < argc) prices = argv[++i];
        else {
            fprintf(stderr, "usage: serve_sim [--requests N] [--threads N] [--runs DIR] [--seed N] [--queue-mb N] [--prices FILE]\n");
            return 2;
        }
    }
    if (requests < 0 || threads < 1 || threads > 64) {
        fprintf(stderr, "serve_sim: --requests must be >= 0 and --threads 1..64\n");
        return 2;
    }
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.run_dir = runs;
    cfg.phase = "serve";
    cfg.backend = "cuda";
    cfg.backend_device = "sim-gpu-0";
    cfg.model = "multi";
    cfg.config_json = "{\"workers\":4,\"max_batch\":32}";
    if (queue_mb > 0) cfg.queue_bytes = (size_t)queue_mb << 20;
    cfg.prices_path = prices;
    tally_t *t = tally_open(&cfg);
    tally_run_start(t);
    tally_note(t, "serve_sim starting");

    pthread_t th[64];
    worker w[64];
    for (int i = 0; i < threads; i++) {
        w[i] = (worker){t, i, requests / threads + (i < requests % threads), seed * 2654435761u + (unsigned)i + 1};
        pthread_create(&th[i], NULL, work, &w[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);

    tally_flush(t, 0);
    tally_counters c;
    tally_get_counters(t, &c);
    printf("run %s: %llu requests, %llu errors, %llu tokens out, %llu events written, %llu dropped\n",
           tally_run_id(t), (unsigned long long)c.requests, (unsigned long long)c.errors,
           (unsigned long long)c.tokens_out, (unsigned long long)c.written, (unsigned long long)c.dropped);
    printf("events: %s/%s/events.jsonl\n", runs, tally_run_id(t));
    tally_close(t, "completed");
    return 0;
}
