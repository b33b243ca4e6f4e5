/*
 * make_db -- a tally database of N request events spread over H hours, for
 * stats_bench.sh: the size of a busy service's day (10 million requests
 * is 116 a second for 24 h), which a simulated server cannot produce
 * because its events carry the time they happen.
 *
 *   make_db DB [ROWS] [HOURS] [--jsonl FILE]    (defaults: 10000000 24)
 *
 * With --jsonl, the same events are also written to FILE as JSON Lines
 * (each row's line), so that one question can be timed over both.
 *
 * Rows go in through the store's own path (store_insert_rows, the rollup
 * kept in the same transactions), 20,000 per transaction, each with the
 * JSON line tally would have written.  The mix: 3 models x 2 engines x 3
 * routes, lognormal latencies, half streaming, 3% failed, 5% degraded.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "row.h"
#include "store.h"

#define PER_TXN 20000

static const char *models[] = {"llama-3.1-8b", "qwen2.5-32b", "gpt-4o-mini"};
static const char *engines[] = {"vllm", "llama.cpp"};
static const char *routes[] = {"direct", "web_then_model", "reason_then_model"};
static const char *reasons[] = {"web_failed", "empty_completion", "grounding_cap"};

static uint64_t rng = 88172645463325252ull;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv)
{
    const char *jsonl = NULL;
    if (argc > 3 && !strcmp(argv[argc - 2], "--jsonl")) {
        jsonl = argv[argc - 1];
        argc -= 2;
    }
    if (argc < 2 || argc > 4 || argv[1][0] == '-') {
        fprintf(stderr, "usage: make_db DB [ROWS] [HOURS] [--jsonl FILE]\n"
                        "  adds ROWS request events (default 10000000) to the tally database DB\n"
                        "  (created if missing),\n"
                        "  spread over the HOURS (default 24) before now; with --jsonl, also to FILE\n");
        return argc == 2 && !strcmp(argv[1], "--help") ? 0 : 2;
    }
    FILE *out = jsonl ? fopen(jsonl, "w") : NULL;
    if (jsonl && !out) {
        fprintf(stderr, "make_db: cannot write %s\n", jsonl);
        return 1;
    }
    const char *path = argv[1];
    long rows = argc > 2 ? strtol(argv[2], NULL, 10) : 10000000;
    double hours = argc > 3 ? strtod(argv[3], NULL) : 24;
    if (rows < 1 || !(hours > 0)) {
        fprintf(stderr, "make_db: ROWS and HOURS must be positive\n");
        return 2;
    }
    char err[512];
    store *s = store_open(path, STORE_CREATE | STORE_CHECKPOINTER, err, sizeof err);
    if (!s) {
        fprintf(stderr, "make_db: %s\n", err);
        return 1;
    }
    row *batch = calloc(PER_TXN, sizeof *batch);
    char (*json)[512] = malloc((size_t)PER_TXN * 512);
    char (*ids)[32] = malloc((size_t)PER_TXN * 32);
    char (*rids)[32] = malloc((size_t)PER_TXN * 32);
    if (!batch || !json || !ids || !rids) return 1;
    double t1 = (double)time(NULL), t0 = t1 - hours * 3600, step = hours * 3600 / (double)rows;
    for (long done = 0; done < rows;) {
        int n = rows - done < PER_TXN ? (int)(rows - done) : PER_TXN;
        for (int i = 0; i < n; i++) {
            long k = done + i;
            row *r = &batch[i];
            row_clear(r);
            int m = (int)(rnd() * 3), e = (int)(rnd() * 2);
            r->ts = floor((t0 + (double)k * step) * 1e6) / 1e6;
            r->kind = SV_LIT("eval");
            r->phase = SV_LIT("serve");
            r->name = SV_LIT("request");
            r->run_id = SV_LIT("serve-bench-001");
            r->model = (sv){models[m], strlen(models[m])};
            r->engine = (sv){engines[e], strlen(engines[e])};
            const char *route = routes[(int)(rnd() * 3)];
            r->route = (sv){route, strlen(route)};
            snprintf(ids[i], 32, "5bench0000%012lx", k);
            snprintf(rids[i], 32, "req-%09ld", k);
            r->id = (sv){ids[i], strlen(ids[i])};
            r->request_id = (sv){rids[i], strlen(rids[i])};
            r->prompt = 50 + (int64_t)(rnd() * 2000);
            r->completion = 10 + (int64_t)(rnd() * 500);
            double u1 = rnd() + 1e-9, u2 = rnd();
            r->latency_us = floor(exp(log((m + 1) * 8000.0 * (e ? 1.6 : 1.0)) +
                                      0.4 * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2)) *
                                  (double)r->completion / 50);
            r->ok = rnd() >= 0.03;
            r->has = ROW_TS | ROW_OK | ROW_PROMPT | ROW_COMPLETION | ROW_LATENCY | ROW_COST | ROW_ENERGY;
            if (k % 2 == 0) {
                r->ttft_us = floor(r->latency_us / 8) + 1;
                r->has |= ROW_TTFT;
            }
            r->cost_nusd = r->prompt * 150 * (m + 1) + r->completion * 600 * (m + 1);
            r->energy_j = (double)r->completion * (m + 1) * 0.35;
            if (!r->ok) r->error = SV_LIT("upstream timeout");
            else if (rnd() < 0.05) r->degraded = (sv){reasons[k % 3], strlen(reasons[k % 3])};
            /* the line says what the row says (ttft, error, degraded included) */
            char ttft[48] = "", why[96] = "";
            if (r->has & ROW_TTFT) snprintf(ttft, sizeof ttft, ",\"ttft_us\":%.0f", r->ttft_us);
            if (!r->ok) snprintf(why, sizeof why, ",\"error\":\"upstream timeout\"");
            else if (r->degraded.p) snprintf(why, sizeof why, ",\"degraded\":\"%.*s\"", (int)r->degraded.n, r->degraded.p);
            int len = snprintf(json[i], 512,
                               "{\"kind\":\"eval\",\"t\":%.6f,\"ts\":%.6f,\"id\":\"%s\",\"phase\":\"serve\","
                               "\"name\":\"request\",\"extra\":{\"model\":\"%s\",\"prompt_tokens\":%lld,"
                               "\"completion_tokens\":%lld,\"latency_us\":%.0f%s,\"engine\":\"%s\",\"route\":\"%s\","
                               "\"request_id\":\"%s\",\"cost_nusd\":%lld,\"energy_j\":%.17g,\"ok\":%s%s}}",
                               r->ts - t0, r->ts, ids[i], models[m], (long long)r->prompt, (long long)r->completion,
                               r->latency_us, ttft, engines[e], route, rids[i], (long long)r->cost_nusd, r->energy_j,
                               r->ok ? "true" : "false", why);
            r->json = (sv){json[i], (size_t)len};
            if (out) {
                fwrite(json[i], 1, (size_t)len, out);
                fputc('\n', out);
            }
        }
        if (store_begin(s) || store_insert_rows(s, batch, (size_t)n, 0, NULL) || store_commit(s)) {
            fprintf(stderr, "make_db: %s\n", store_errmsg(s));
            return 1;
        }
        done += n;
    }
    store_close(s);
    if (out && fclose(out) != 0) {
        fprintf(stderr, "make_db: cannot write %s\n", jsonl);
        return 1;
    }
    free(batch);
    free(json);
    free(ids);
    free(rids);
    return 0;
}
