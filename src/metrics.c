/*
 * metrics -- the shared series table and the Prometheus text (metrics.h).
 */
#include "metrics.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#include "encode.h"
#include "hash.h"
#include "row.h"

/* Bucket boundaries: the GenAI conventions' recommendations, and tally's
 * own for the families they do not cover. */
static const double b_duration[] = {0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double b_tokens[] = {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
static const double b_ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0};
static const double b_tpot[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
static const double b_energy[] = {0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000};
static const double b_step[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

#define NB(a) (int)(sizeof a / sizeof a[0])
#define GENAI_LABELS "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"
#define GENAI_OTEL "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "error.type"

const mx_family tally_mx_families[MXF_COUNT] = {
    [MXF_DURATION] = {"gen_ai_client_operation_duration_seconds", "gen_ai.client.operation.duration", "s",
                      MX_HISTOGRAM, "GenAI operation duration.", b_duration, NB(b_duration),
                      {GENAI_LABELS}, {GENAI_OTEL}},
    [MXF_TOKEN_USAGE] = {"gen_ai_client_token_usage", "gen_ai.client.token.usage", "{token}", MX_HISTOGRAM,
                         "Number of input and output tokens used.", b_tokens, NB(b_tokens),
                         {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"},
                         {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.token.type"}},
    [MXF_TTFT] = {"gen_ai_server_time_to_first_token_seconds", "gen_ai.server.time_to_first_token", "s",
                  MX_HISTOGRAM, "Time to generate first token for successful responses (streaming requests).",
                  b_ttft, NB(b_ttft), {GENAI_LABELS}, {GENAI_OTEL}},
    [MXF_TPOT] = {"gen_ai_server_time_per_output_token_seconds", "gen_ai.server.time_per_output_token", "s",
                  MX_HISTOGRAM, "Time per output token generated after the first token for successful responses.",
                  b_tpot, NB(b_tpot), {GENAI_LABELS}, {GENAI_OTEL}},
    [MXF_REQUESTS] = {"tally_requests_total", "tally.requests", "{request}", MX_COUNTER,
                      "Requests recorded, by model, engine, route and outcome (ok or error).", NULL, 0,
                      {"gen_ai_request_model", "engine", "route", "outcome"},
                      {"gen_ai.request.model", "tally.engine", "tally.route", "tally.outcome"}},
    [MXF_DEGRADED] = {"tally_requests_degraded_total", "tally.requests.degraded", "{request}", MX_COUNTER,
                      "Requests that were answered in a degraded way, by reason.", NULL, 0,
                      {"gen_ai_request_model", "reason"}, {"gen_ai.request.model", "tally.degraded"}},
    [MXF_COST] = {"tally_cost_usd_total", "tally.cost", "USD", MX_COUNTER, "Cost of the requests, in US dollars.",
                  NULL, 0, {"gen_ai_request_model", "gen_ai_provider_name"},
                  {"gen_ai.request.model", "gen_ai.provider.name"}},
    [MXF_TOKENS] = {"tally_tokens_total", "tally.tokens", "{token}", MX_COUNTER,
                    "Tokens by type: input, output, cached (read from cache), cache_write, reasoning.", NULL, 0,
                    {"gen_ai_request_model", "gen_ai_token_type"}, {"gen_ai.request.model", "gen_ai.token.type"}},
    [MXF_REQ_ENERGY] = {"tally_request_energy_joules", "tally.request.energy", "J", MX_HISTOGRAM,
                        "Energy attributed to each request.", b_energy, NB(b_energy), {"gen_ai_request_model"},
                        {"gen_ai.request.model"}},
    [MXF_ENERGY] = {"tally_energy_joules_total", "tally.energy", "J", MX_COUNTER,
                    "Energy used by each sampled device since the run started.", NULL, 0, {"device"},
                    {"tally.device"}},
    [MXF_STEPS] = {"tally_train_steps_total", "tally.train.steps", "{step}", MX_COUNTER, "Training steps.", NULL,
                   0, {NULL}, {NULL}},
    [MXF_STEP_DURATION] = {"tally_train_step_duration_seconds", "tally.train.step.duration", "s", MX_HISTOGRAM,
                           "Wall time of each training step.", b_step, NB(b_step), {NULL}, {NULL}},
    [MXF_LOSS] = {"tally_train_loss", "tally.train.loss", "1", MX_GAUGE, "The last finite training loss.", NULL, 0,
                  {NULL}, {NULL}},
    [MXF_NONFINITE] = {"tally_train_nonfinite_losses_total", "tally.train.nonfinite_losses", "{step}", MX_COUNTER,
                       "Steps whose loss was NaN or infinite.", NULL, 0, {NULL}, {NULL}},
    [MXF_EPOCHS] = {"tally_train_epochs_total", "tally.train.epochs", "{epoch}", MX_COUNTER, "Training epochs.",
                    NULL, 0, {NULL}, {NULL}},
    [MXF_TRAIN_TOKENS] = {"tally_train_tokens_total", "tally.train.tokens", "{token}", MX_COUNTER,
                          "Tokens processed by training steps.", NULL, 0, {NULL}, {NULL}},
    [MXF_ERRORS] = {"tally_errors_total", "tally.errors", "{error}", MX_COUNTER, "Error events, by type.", NULL, 0,
                    {"error_type"}, {"error.type"}},
    [MXF_OFFERED] = {"tally_events_offered_total", "tally.events.offered", "{event}", MX_COUNTER,
                     "Events handed to tally by the program.", NULL, 0, {NULL}, {NULL}},
    [MXF_WRITTEN] = {"tally_events_written_total", "tally.events.written", "{event}", MX_COUNTER,
                     "Events tally encoded and gave to its sinks.", NULL, 0, {NULL}, {NULL}},
    [MXF_DROPPED] = {"tally_events_dropped_total", "tally.events.dropped", "{event}", MX_COUNTER,
                     "Events dropped because a queue was full.", NULL, 0, {NULL}, {NULL}},
    [MXF_SINK_LOST] = {"tally_sink_lost_total", "tally.sink.lost", "{event}", MX_COUNTER,
                       "Events a sink could not keep (each sink counts its own).", NULL, 0, {"sink"},
                       {"tally.sink"}},
    [MXF_OVERFLOW] = {"tally_metrics_series_overflow_total", "tally.metrics.series_overflow", "{event}", MX_COUNTER,
                      "Events counted in a family's _other series because it reached its series cap.", NULL, 0,
                      {"family"}, {"tally.family"}},
};

/* ---- the shared table ------------------------------------------------------ */

#define MX_KEY 200            /* label values, NUL-separated */
#define MX_VALUE_MAX 64       /* one label value, bytes */
#define MX_VALUES (MX_MAX_BUCKETS + 2)

enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_READY = 2 };

typedef struct mx_slot {
    _Atomic uint32_t state;
    uint16_t family;
    uint16_t key_len;
    uint64_t hash;
    char key[MX_KEY];
    _Atomic uint64_t v[MX_VALUES];   /* histogram: bucket counts, then the sum's bits; else v[0] = value bits */
} mx_slot;

struct metrics {
    uint32_t n_slots, cap;
    size_t bytes;
    _Atomic uint32_t used;
    _Atomic uint32_t series[MXF_COUNT];
    _Atomic uint64_t overflowed;
    mx_slot slots[];
};

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 64;
    while (p < n && p < (1u << 20)) p <<= 1;
    return p;
}

metrics *metrics_new(uint32_t max_series, uint32_t cap)
{
    uint32_t n = pow2_at_least(max_series ? max_series * 2 : 8192);
    size_t bytes = sizeof(metrics) + (size_t)n * sizeof(mx_slot);
    metrics *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    m->n_slots = n;
    m->cap = cap ? cap : 500;
    m->bytes = bytes;
    return m;
}

void metrics_free(metrics *m)
{
    if (m) munmap(m, m->bytes);
}

static double bits_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static uint64_t double_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, double_bits(bits_double(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

static int n_labels(const mx_family *f)
{
    int n = 0;
    while (n < MX_MAX_LABELS && f->labels[n]) n++;
    return n;
}

/* The key: each value (cut at MX_VALUE_MAX bytes on a UTF-8 boundary)
 * followed by a NUL.  Returns its length, or 0 when it does not fit. */
static size_t make_key(const mx_family *f, const char *const *values, char *key)
{
    size_t len = 0;
    for (int i = 0; i < n_labels(f); i++) {
        const char *v = values && values[i] ? values[i] : "";
        size_t n = strnlen(v, MX_VALUE_MAX + 1);
        if (n > MX_VALUE_MAX) n = utf8_cut(v, MX_VALUE_MAX);
        if (len + n + 1 > MX_KEY) return 0;
        memcpy(key + len, v, n);
        key[len + n] = 0;
        len += n + 1;
    }
    return len;
}

static mx_slot *probe(metrics *m, mx_family_id f, const char *key, size_t len, int may_claim)
{
    uint64_t h = fnv1a(FNV_SEED, key, len) ^ ((uint64_t)(f + 1) * 0x9e3779b97f4a7c15ull);
    uint32_t mask = m->n_slots - 1;
    for (uint32_t i = 0; i < m->n_slots; i++) {
        mx_slot *s = &m->slots[(h + i) & mask];
        uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == SLOT_FREE) {
            if (!may_claim) return NULL;
            if (atomic_compare_exchange_strong(&s->state, &st, SLOT_CLAIMED)) {
                s->family = (uint16_t)f;
                s->key_len = (uint16_t)len;
                s->hash = h;
                memcpy(s->key, key, len);
                atomic_store_explicit(&s->state, SLOT_READY, memory_order_release);
                atomic_fetch_add(&m->used, 1);
                return s;
            }
        }
        /* Claimed by another thread or process: it is writing the key;
         * wait a little for it (bounded: a claimer that died leaves the
         * slot unusable, never the table). */
        for (int spin = 0; st == SLOT_CLAIMED && spin < 100000; spin++)
            st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == SLOT_READY && s->hash == h && s->family == f && s->key_len == len && !memcmp(s->key, key, len))
            return s;
    }
    return NULL;
}

static const char *const other_values[MX_MAX_LABELS] = {"_other", "_other", "_other", "_other", "_other"};

static mx_slot *series_for(metrics *m, mx_family_id f, const char *const *values)
{
    char key[MX_KEY];
    size_t len = make_key(&tally_mx_families[f], values, key);
    mx_slot *s = len || !n_labels(&tally_mx_families[f]) ? probe(m, f, key, len, 0) : NULL;
    if (s) return s;
    /* A new series: within the family's cap, or its _other series. */
    if (len || !n_labels(&tally_mx_families[f])) {
        if (atomic_fetch_add(&m->series[f], 1) < m->cap) {
            s = probe(m, f, key, len, 1);
            if (s) return s;
        }
        atomic_fetch_sub(&m->series[f], 1);
    }
    atomic_fetch_add(&m->overflowed, 1);
    if (f != MXF_OVERFLOW) {
        const char *fam[1] = {tally_mx_families[f].name};
        mx_slot *o = series_for(m, MXF_OVERFLOW, fam);
        if (o) atomic_add_double(&o->v[0], 1);
    }
    len = make_key(&tally_mx_families[f], other_values, key);
    return probe(m, f, key, len, 1);
}

void metrics_add(metrics *m, mx_family_id f, const char *const *values, double v)
{
    if (!m || !(v == v)) return;
    mx_slot *s = series_for(m, f, values);
    if (s) atomic_add_double(&s->v[0], v);
}

void metrics_set(metrics *m, mx_family_id f, const char *const *values, double v)
{
    if (!m) return;
    mx_slot *s = series_for(m, f, values);
    if (s) atomic_store_explicit(&s->v[0], double_bits(v), memory_order_relaxed);
}

void metrics_hist(metrics *m, mx_family_id f, const char *const *values, double v)
{
    if (!m || !isfinite(v)) return;
    const mx_family *fam = &tally_mx_families[f];
    mx_slot *s = series_for(m, f, values);
    if (!s) return;
    int b = 0;
    while (b < fam->n_bounds && v > fam->bounds[b]) b++;
    atomic_fetch_add_explicit(&s->v[b], 1, memory_order_relaxed);
    atomic_add_double(&s->v[MX_VALUES - 1], v);
}

/* ---- from events -------------------------------------------------------------- */

/* A string field as a C string (rows hold pointer + length). */
static const char *cstr(sv v, char *tmp, size_t cap)
{
    if (!v.p || !v.n) return NULL;
    size_t n = v.n < cap - 1 ? v.n : cap - 1;
    memcpy(tmp, v.p, n);
    tmp[n] = 0;
    return tmp;
}

static void observe_request(metrics *m, const row *r)
{
    char model_b[MX_VALUE_MAX + 1], prov_b[MX_VALUE_MAX + 1], err_b[MX_VALUE_MAX + 1], eng_b[MX_VALUE_MAX + 1],
        route_b[MX_VALUE_MAX + 1], deg_b[MX_VALUE_MAX + 1];
    const char *model = cstr(r->model, model_b, sizeof model_b);
    const char *provider = cstr(r->provider, prov_b, sizeof prov_b);
    if (!provider) provider = cstr(r->engine, prov_b, sizeof prov_b);
    if (!model) model = "unknown";
    if (!provider) provider = "unknown";
    const char *error = r->ok ? NULL : cstr(r->error, err_b, sizeof err_b);
    if (!r->ok && !error) error = "_OTHER";
    const char *g[4] = {"chat", provider, model, error};

    if (r->has & ROW_LATENCY) metrics_hist(m, MXF_DURATION, g, r->latency_us / 1e6);
    const char *tin[4] = {"chat", provider, model, "input"};
    const char *tout[4] = {"chat", provider, model, "output"};
    if (r->has & ROW_PROMPT) metrics_hist(m, MXF_TOKEN_USAGE, tin, (double)r->prompt);
    if (r->has & ROW_COMPLETION) metrics_hist(m, MXF_TOKEN_USAGE, tout, (double)r->completion);
    if (r->ok && (r->has & ROW_TTFT) && r->ttft_us > 0) {
        metrics_hist(m, MXF_TTFT, g, r->ttft_us / 1e6);
        if ((r->has & ROW_LATENCY) && r->completion > 1 && r->latency_us >= r->ttft_us)
            metrics_hist(m, MXF_TPOT, g, (r->latency_us - r->ttft_us) / 1e6 / (double)(r->completion - 1));
    }
    const char *rq[4] = {model, cstr(r->engine, eng_b, sizeof eng_b), cstr(r->route, route_b, sizeof route_b),
                         r->ok ? "ok" : "error"};
    metrics_add(m, MXF_REQUESTS, rq, 1);
    const char *deg = cstr(r->degraded, deg_b, sizeof deg_b);
    if (deg) {
        const char *d[2] = {model, deg};
        metrics_add(m, MXF_DEGRADED, d, 1);
    }
    if (r->has & (ROW_COST | ROW_COST_USD)) {
        const char *c[2] = {model, provider};
        metrics_add(m, MXF_COST, c, (r->has & ROW_COST) ? (double)r->cost_nusd / 1e9 : r->cost_usd);
    }
    static const char *const types[5] = {"input", "output", "cached", "cache_write", "reasoning"};
    const int64_t n[5] = {r->prompt, r->completion, r->cached, r->cache_write, r->reasoning};
    for (int i = 0; i < 5; i++)
        if (n[i] > 0) {
            const char *t[2] = {model, types[i]};
            metrics_add(m, MXF_TOKENS, t, (double)n[i]);
        }
    if (r->has & ROW_ENERGY) {
        const char *e[1] = {model};
        metrics_hist(m, MXF_REQ_ENERGY, e, r->energy_j);
    }
}

void metrics_observe(metrics *m, const row *r)
{
    if (!m || !r) return;
    if (row_is_request(r)) {
        observe_request(m, r);
    } else if (SV_IS(r->kind, "step")) {
        metrics_add(m, MXF_STEPS, NULL, 1);
        if (r->has & ROW_WALL) metrics_hist(m, MXF_STEP_DURATION, NULL, r->wall_us / 1e6);
        if ((r->has & ROW_LOSS) && isfinite(r->loss)) metrics_set(m, MXF_LOSS, NULL, r->loss);
        if ((r->has & ROW_LOSS_NONFINITE) || ((r->has & ROW_LOSS) && !isfinite(r->loss)))
            metrics_add(m, MXF_NONFINITE, NULL, 1);
        if ((r->has & ROW_STEP_TOKENS) && r->step_tokens > 0)
            metrics_add(m, MXF_TRAIN_TOKENS, NULL, (double)r->step_tokens);
    } else if (SV_IS(r->kind, "epoch")) {
        metrics_add(m, MXF_EPOCHS, NULL, 1);
    } else if (SV_IS(r->kind, "error")) {
        char t_b[MX_VALUE_MAX + 1];
        const char *t[1] = {cstr(r->name, t_b, sizeof t_b)};
        if (!t[0]) t[0] = "_OTHER";
        metrics_add(m, MXF_ERRORS, t, 1);
    }
}

/* ---- reading ------------------------------------------------------------------- */

static void fill_series(const mx_slot *s, mx_series *out, char *vals)
{
    const mx_family *f = &tally_mx_families[s->family];
    memset(out, 0, sizeof *out);
    out->family = (mx_family_id)s->family;
    memcpy(vals, s->key, s->key_len);
    size_t off = 0;
    for (int i = 0; i < n_labels(f); i++) {
        out->values[i] = vals + off;
        off += strlen(vals + off) + 1;
    }
    if (f->type == MX_HISTOGRAM) {
        for (int b = 0; b <= f->n_bounds; b++) {
            out->counts[b] = atomic_load_explicit(&s->v[b], memory_order_relaxed);
            out->count += out->counts[b];
        }
        out->sum = bits_double(atomic_load_explicit(&s->v[MX_VALUES - 1], memory_order_relaxed));
    } else {
        out->value = bits_double(atomic_load_explicit(&s->v[0], memory_order_relaxed));
    }
}

/* Every ready series of family f. */
static void each_of_family(const metrics *m, int f, void (*fn)(void *ud, const mx_series *s), void *ud)
{
    char vals[MX_KEY];
    for (uint32_t i = 0; i < m->n_slots; i++) {
        const mx_slot *s = &m->slots[i];
        if (atomic_load_explicit((_Atomic uint32_t *)&s->state, memory_order_acquire) != SLOT_READY ||
            s->family != f)
            continue;
        mx_series out;
        fill_series(s, &out, vals);
        fn(ud, &out);
    }
}

void metrics_foreach(const metrics *m, void (*fn)(void *ud, const mx_series *s), void *ud)
{
    if (!m) return;
    for (int f = 0; f < MXF_COUNT; f++) each_of_family(m, f, fn, ud);
}

uint32_t metrics_series(const metrics *m) { return m ? atomic_load((_Atomic uint32_t *)&m->used) : 0; }
uint64_t metrics_overflowed(const metrics *m) { return m ? atomic_load((_Atomic uint64_t *)&m->overflowed) : 0; }

/* ---- Prometheus text ------------------------------------------------------------ */

static void put_num(buf *b, double v)
{
    if (isnan(v)) buf_puts(b, "NaN");
    else if (isinf(v)) buf_puts(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9e15) enc_i64(b, (int64_t)v);
    else enc_double(b, v);
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label_value(buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\') buf_puts(b, "\\\\");
        else if (*v == '"') buf_puts(b, "\\\"");
        else if (*v == '\n') buf_puts(b, "\\n");
        else buf_putc(b, *v);
    }
}

/* {name="value",...[,le="x"]}: absent (empty) values are left out. */
static void put_labels(buf *b, const mx_family *f, const mx_series *s, int has_le, double le)
{
    int any = 0;
    for (int i = 0; i < MX_MAX_LABELS && f->labels[i]; i++) {
        if (!s->values[i] || !*s->values[i]) continue;
        buf_putc(b, any ? ',' : '{');
        any = 1;
        buf_puts(b, f->labels[i]);
        buf_puts(b, "=\"");
        put_label_value(b, s->values[i]);
        buf_putc(b, '"');
    }
    if (has_le) {
        buf_putc(b, any ? ',' : '{');
        any = 1;
        buf_puts(b, "le=\"");
        put_num(b, le);
        buf_putc(b, '"');
    }
    if (any) buf_putc(b, '}');
}

/* One line: NAME[SUFFIX]{labels[,le]} VALUE */
static void put_sample(buf *b, const mx_family *f, const mx_series *s, const char *suffix, int has_le, double le,
                       double v)
{
    buf_puts(b, f->name);
    buf_puts(b, suffix);
    put_labels(b, f, s, has_le, le);
    buf_putc(b, ' ');
    put_num(b, v);
    buf_putc(b, '\n');
}

static void render_series(void *ud, const mx_series *s)
{
    buf *b = ud;
    const mx_family *f = &tally_mx_families[s->family];
    if (f->type != MX_HISTOGRAM) {
        put_sample(b, f, s, "", 0, 0, s->value);
        return;
    }
    uint64_t cum = 0;
    for (int i = 0; i <= f->n_bounds; i++) {
        cum += s->counts[i];
        put_sample(b, f, s, "_bucket", 1, i < f->n_bounds ? f->bounds[i] : INFINITY, (double)cum);
    }
    put_sample(b, f, s, "_sum", 0, 0, s->sum);
    put_sample(b, f, s, "_count", 0, 0, (double)cum);
}

void metrics_render(const metrics *m, buf *b)
{
    static const char *const types[] = {"", "counter", "gauge", "histogram"};
    for (int f = 0; f < MXF_COUNT; f++) {
        const mx_family *fam = &tally_mx_families[f];
        buf_puts(b, "# HELP ");
        buf_puts(b, fam->name);
        buf_putc(b, ' ');
        buf_puts(b, fam->help);
        buf_puts(b, "\n# TYPE ");
        buf_puts(b, fam->name);
        buf_putc(b, ' ');
        buf_puts(b, types[fam->type]);
        buf_putc(b, '\n');
        if (m) each_of_family(m, f, render_series, b);
    }
}
