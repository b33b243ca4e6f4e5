/*
 * otlp -- events and metrics in OTLP's JSON encoding (docs/otlp.md).
 *
 * The protobuf JSON mapping as OTLP/HTTP uses it: trace and span ids as
 * lowercase hex (not base64), enum values as numbers, 64-bit integers
 * (times, token counts, histogram counts) as decimal strings, attribute
 * values wrapped as {"stringValue": ...} / {"intValue": "..."} / ...
 *
 * Ids are derived from the event's id, so a batch sent twice (a retry
 * after a lost answer, a spool replayed) carries the same ids: a
 * collector that de-duplicates can.
 */
#include "otlp.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "encode.h"
#include "hash.h"
#include "metrics.h"
#include "record.h"
#include "row.h"
#include "tally.h"

/* ---- attributes ------------------------------------------------------------ */

static void key(buf *b, int *first, const char *k)
{
    if (!*first) buf_putc(b, ',');
    *first = 0;
    buf_puts(b, "{\"key\":");
    enc_cstr(b, k);
    buf_puts(b, ",\"value\":");
}

static void attr_sv(buf *b, int *first, const char *k, sv v)
{
    if (!v.p || !v.n) return;
    key(b, first, k);
    buf_puts(b, "{\"stringValue\":");
    enc_str(b, v.p, v.n);
    buf_puts(b, "}}");
}

static void attr_str(buf *b, int *first, const char *k, const char *v)
{
    if (v && *v) attr_sv(b, first, k, (sv){v, strlen(v)});
}

static void attr_int(buf *b, int *first, const char *k, int64_t v)
{
    key(b, first, k);
    buf_puts(b, "{\"intValue\":\"");
    enc_i64(b, v);
    buf_puts(b, "\"}}");
}

static void attr_double(buf *b, int *first, const char *k, double v)
{
    if (!isfinite(v)) return;
    key(b, first, k);
    buf_puts(b, "{\"doubleValue\":");
    enc_double(b, v);
    buf_puts(b, "}}");
}

static void attr_bool(buf *b, int *first, const char *k, int v)
{
    key(b, first, k);
    buf_puts(b, v ? "{\"boolValue\":true}}" : "{\"boolValue\":false}}");
}

static void put_nanos(buf *b, int64_t ns)
{
    buf_putc(b, '"');
    enc_i64(b, ns < 0 ? 0 : ns);
    buf_putc(b, '"');
}

static void put_hex(buf *b, uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    char out[16];
    for (int i = digits - 1; i >= 0; i--, v >>= 4) out[i] = hex[v & 15];
    buf_put(b, out, (size_t)digits);
}

/* ---- resource ----------------------------------------------------------------- */

void otlp_resource(buf *b, const otlp_res *res)
{
    int first = 1;
    buf_puts(b, "\"resource\":{\"attributes\":[");
    attr_str(b, &first, "service.name", res->service_name && *res->service_name ? res->service_name : "tally");
    attr_str(b, &first, "service.instance.id", res->instance_id);
    attr_str(b, &first, "host.name", res->host);
    attr_str(b, &first, "tally.run_id", res->run_id);
    attr_str(b, &first, "telemetry.sdk.name", "tally");
    attr_str(b, &first, "telemetry.sdk.language", "c");
    attr_str(b, &first, "telemetry.sdk.version", res->version);
    buf_puts(b, "]}");
}

static void scope(buf *b, const otlp_res *res)
{
    buf_puts(b, "\"scope\":{\"name\":\"tally\",\"version\":");
    enc_cstr(b, res->version ? res->version : "");
    buf_putc(b, '}');
}

void otlp_traces_begin(buf *b, const otlp_res *res)
{
    buf_puts(b, "{\"resourceSpans\":[{");
    otlp_resource(b, res);
    buf_puts(b, ",\"scopeSpans\":[{");
    scope(b, res);
    buf_puts(b, ",\"spans\":[");
}

void otlp_traces_end(buf *b) { buf_puts(b, "]}]}]}"); }

/* ---- spans ---------------------------------------------------------------------- */

enum { KIND_INTERNAL = 1, KIND_CLIENT = 3 };
enum { STATUS_UNSET = 0, STATUS_OK = 1, STATUS_ERROR = 2 };

static int64_t us_of(double v) { return isfinite(v) ? (int64_t)llround(v) : 0; }

int otlp_span(buf *b, int first_span, const char *id, int64_t end_us, const void *payload, int type, const row *r)
{
    const char *kind = NULL;
    char name[160];
    int64_t dur_us = 0;
    int span_kind = KIND_INTERNAL;
    if (row_is_request(r)) {
        kind = "request";
        dur_us = (r->has & ROW_LATENCY) ? us_of(r->latency_us) : 0;
        span_kind = KIND_CLIENT;
        snprintf(name, sizeof name, "chat %.*s", (int)(r->model.n < 120 ? r->model.n : 120),
                 r->model.p ? r->model.p : "");
    } else if (SV_IS(r->kind, "step") || SV_IS(r->kind, "epoch")) {
        kind = r->kind.p;
        dur_us = (r->has & ROW_WALL) ? us_of(r->wall_us) : 0;
        snprintf(name, sizeof name, "train %.*s", (int)r->kind.n, r->kind.p);
    } else if (SV_IS(r->kind, "eval")) {
        kind = "eval";
        snprintf(name, sizeof name, "eval %.*s", (int)(r->name.n < 120 ? r->name.n : 120), r->name.p ? r->name.p : "");
    } else if (SV_IS(r->kind, "error")) {
        kind = "error";
        snprintf(name, sizeof name, "error %.*s", (int)(r->name.n < 120 ? r->name.n : 120), r->name.p ? r->name.p : "");
    } else {
        return 0; /* run_start, run_end, notes and the caller's own kinds are not spans */
    }
    (void)kind;
    size_t idlen = strlen(id);
    uint64_t h1 = fnv1a(FNV_SEED, id, idlen);
    uint64_t h2 = fnv1a(h1 ^ 0x5bd1e995u, id, idlen);
    if (!first_span) buf_putc(b, ',');
    buf_puts(b, "{\"traceId\":\"");
    put_hex(b, h1, 16);
    put_hex(b, h2 | 1, 16);
    buf_puts(b, "\",\"spanId\":\"");
    put_hex(b, h2 ^ (h1 << 1) ? h2 ^ (h1 << 1) : 1, 16);
    buf_puts(b, "\",\"name\":");
    enc_cstr(b, name);
    buf_puts(b, ",\"kind\":");
    enc_i64(b, span_kind);
    buf_puts(b, ",\"startTimeUnixNano\":");
    put_nanos(b, (end_us - dur_us) * 1000);
    buf_puts(b, ",\"endTimeUnixNano\":");
    put_nanos(b, end_us * 1000);
    buf_puts(b, ",\"attributes\":[");
    int first = 1;
    int failed = 0;
    attr_str(b, &first, "tally.event.id", id);
    if (row_is_request(r)) {
        attr_str(b, &first, "gen_ai.operation.name", "chat");
        attr_sv(b, &first, "gen_ai.provider.name", r->provider.n ? r->provider : r->engine);
        attr_sv(b, &first, "gen_ai.request.model", r->model);
        if (r->has & ROW_PROMPT) attr_int(b, &first, "gen_ai.usage.input_tokens", r->prompt);
        if (r->has & ROW_COMPLETION) attr_int(b, &first, "gen_ai.usage.output_tokens", r->completion);
        if (r->cached > 0) attr_int(b, &first, "gen_ai.usage.cache_read.input_tokens", r->cached);
        if (r->cache_write > 0) attr_int(b, &first, "gen_ai.usage.cache_creation.input_tokens", r->cache_write);
        if (r->reasoning > 0) attr_int(b, &first, "gen_ai.usage.reasoning.output_tokens", r->reasoning);
        if (r->finish_reason.n) {
            key(b, &first, "gen_ai.response.finish_reasons");
            buf_puts(b, "{\"arrayValue\":{\"values\":[{\"stringValue\":");
            enc_str(b, r->finish_reason.p, r->finish_reason.n);
            buf_puts(b, "}]}}}");
        }
        attr_sv(b, &first, "gen_ai.response.id", r->provider_request_id);
        if (!r->ok) {
            failed = 1;
            if (r->error.n) attr_sv(b, &first, "error.type", r->error);
            else attr_str(b, &first, "error.type", "_OTHER");
        }
        attr_sv(b, &first, "tally.engine", r->engine);
        attr_sv(b, &first, "tally.route", r->route);
        attr_sv(b, &first, "tally.request_id", r->request_id);
        attr_sv(b, &first, "tally.principal_id", r->principal_id);
        attr_sv(b, &first, "tally.prompt_version", r->prompt_version);
        attr_sv(b, &first, "tally.degraded", r->degraded);
        if (r->has & ROW_TTFT) attr_int(b, &first, "tally.ttft_us", us_of(r->ttft_us));
        if (r->has & ROW_COST) attr_double(b, &first, "tally.cost_usd", (double)r->cost_nusd / 1e9);
        if (r->has & ROW_ENERGY) attr_double(b, &first, "tally.energy_j", r->energy_j);
        if (r->has & ROW_GPU) attr_double(b, &first, "tally.gpu_util_pct", r->gpu_util);
        if (payload && type == REC_REQUEST) {
            const rec_request *q = payload;
            const rec_stage *st = (const rec_stage *)(q + 1);
            for (uint32_t i = 0; i < q->n_stages; i++) {
                char k[96];
                snprintf(k, sizeof k, "tally.stage.%.*s_us", (int)(st[i].name.len < 64 ? st[i].name.len : 64),
                         st[i].name.off ? (const char *)q + st[i].name.off : "");
                attr_int(b, &first, k, st[i].us);
            }
        }
    } else if (SV_IS(r->kind, "step") || SV_IS(r->kind, "epoch")) {
        if (r->has & ROW_STEP) attr_int(b, &first, SV_IS(r->kind, "step") ? "tally.step" : "tally.epoch", r->step);
        if (r->has & ROW_LOSS) attr_double(b, &first, "tally.loss", r->loss);
        if (r->has & ROW_LOSS_NONFINITE) attr_bool(b, &first, "tally.loss_nonfinite", 1);
        if (r->has & ROW_STEP_TOKENS) attr_int(b, &first, "tally.tokens", r->step_tokens);
        if (payload && type == REC_STEP) {
            const rec_step *s = payload;
            if (s->present & TALLY_HAS_LR) attr_double(b, &first, "tally.lr", s->lr);
            if (s->present & TALLY_HAS_GRAD_NORM) attr_double(b, &first, "tally.grad_norm", s->grad_norm);
            if (s->unfinished) attr_bool(b, &first, "tally.unfinished", 1);
        }
    } else if (SV_IS(r->kind, "eval")) {
        attr_sv(b, &first, "tally.eval", r->name);
        if (r->has & ROW_LOSS) attr_double(b, &first, "tally.loss", r->loss);
    } else {
        failed = 1;
        attr_sv(b, &first, "error.type", r->name);
        attr_sv(b, &first, "tally.message", r->error);
        if (r->has & ROW_STEP) attr_int(b, &first, "tally.step", r->step);
    }
    buf_puts(b, "],\"status\":{\"code\":");
    enc_i64(b, failed ? STATUS_ERROR : STATUS_UNSET);
    if (failed && r->error.n) {
        buf_puts(b, ",\"message\":");
        enc_str(b, r->error.p, r->error.n < 1024 ? r->error.n : utf8_cut(r->error.p, 1024));
    }
    buf_puts(b, "}}");
    return 1;
}

/* ---- metrics ---------------------------------------------------------------------- */

typedef struct mctx {
    buf *b;
    int family;          /* the family whose data points are open, -1 none */
    int first_metric, first_point;
    int64_t start_ns, now_ns;
} mctx;

static void close_family(mctx *c)
{
    if (c->family < 0) return;
    const mx_family *f = &tally_mx_families[c->family];
    buf_puts(c->b, f->type == MX_GAUGE ? "]}}" : "],\"aggregationTemporality\":2");
    if (f->type == MX_COUNTER) buf_puts(c->b, ",\"isMonotonic\":true");
    if (f->type != MX_GAUGE) buf_puts(c->b, "}}");
    c->family = -1;
}

static void put_point(void *ud, const mx_series *s)
{
    mctx *c = ud;
    buf *b = c->b;
    const mx_family *f = &tally_mx_families[s->family];
    if (c->family != (int)s->family) {
        close_family(c);
        if (!c->first_metric) buf_putc(b, ',');
        c->first_metric = 0;
        buf_puts(b, "{\"name\":");
        enc_cstr(b, f->otel_name);
        buf_puts(b, ",\"unit\":");
        enc_cstr(b, f->unit);
        buf_puts(b, ",\"description\":");
        enc_cstr(b, f->help);
        buf_puts(b, f->type == MX_HISTOGRAM ? ",\"histogram\":{\"dataPoints\":["
                    : f->type == MX_COUNTER ? ",\"sum\":{\"dataPoints\":["
                                            : ",\"gauge\":{\"dataPoints\":[");
        c->family = (int)s->family;
        c->first_point = 1;
    }
    if (!c->first_point) buf_putc(b, ',');
    c->first_point = 0;
    buf_puts(b, "{\"attributes\":[");
    int first = 1;
    for (int i = 0; i < MX_MAX_LABELS && f->otel_labels[i]; i++) attr_str(b, &first, f->otel_labels[i], s->values[i]);
    buf_puts(b, "],\"startTimeUnixNano\":");
    put_nanos(b, c->start_ns);
    buf_puts(b, ",\"timeUnixNano\":");
    put_nanos(b, c->now_ns);
    if (f->type == MX_HISTOGRAM) {
        buf_puts(b, ",\"count\":\"");
        enc_i64(b, (int64_t)s->count);
        buf_puts(b, "\",\"sum\":");
        enc_double(b, isfinite(s->sum) ? s->sum : 0);
        buf_puts(b, ",\"bucketCounts\":[");
        for (int i = 0; i <= f->n_bounds; i++) {
            if (i) buf_putc(b, ',');
            buf_putc(b, '"');
            enc_i64(b, (int64_t)s->counts[i]);
            buf_putc(b, '"');
        }
        buf_puts(b, "],\"explicitBounds\":[");
        for (int i = 0; i < f->n_bounds; i++) {
            if (i) buf_putc(b, ',');
            enc_double(b, f->bounds[i]);
        }
        buf_puts(b, "]}");
    } else {
        buf_puts(b, ",\"asDouble\":");
        enc_double(b, isfinite(s->value) ? s->value : 0);
        buf_putc(b, '}');
    }
}

void otlp_metrics(buf *b, const struct metrics *m, const otlp_res *res, int64_t start_ns, int64_t now_ns)
{
    mctx c = {b, -1, 1, 1, start_ns, now_ns};
    buf_puts(b, "{\"resourceMetrics\":[{");
    otlp_resource(b, res);
    buf_puts(b, ",\"scopeMetrics\":[{");
    scope(b, res);
    buf_puts(b, ",\"metrics\":[");
    metrics_foreach(m, put_point, &c);
    close_family(&c);
    buf_puts(b, "]}]}]}");
}
