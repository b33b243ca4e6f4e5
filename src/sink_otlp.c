/*
 * sink_otlp -- the OTLP/HTTP exporter (docs/otlp.md).
 *
 * The writer thread turns each event into a span (otlp.c) in the current
 * batch; a batch is sealed at 512 spans, 1 MiB, or the writer's commit,
 * and handed to the shipper (ship.c: a queue of 16 MiB at most, a sender
 * thread, retries, the spool), which posts it to <endpoint>/v1/traces;
 * the metrics table goes to <endpoint>/v1/metrics every interval.
 *
 * What an answer means, as OTLP/HTTP asks: 429, 502, 503, 504 and
 * connection failures are retried (after Retry-After when the server
 * gives one, else with exponential backoff and jitter); any other refusal
 * (400, 413, ...) is not: its spans are counted as this sink's losses, the
 * server's message logged, and the batch set aside in <spool>/rejected/.
 * A partial success counts the rejected spans.  The recording call never
 * waits for any of this: it only ever meets its ring.
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "metrics.h"
#include "otlp.h"
#include "row.h"
#include "ship.h"

#define BATCH_SPANS 512
#define BATCH_BYTES ((size_t)1 << 20)

struct otlp_exporter {
    ship *ship;
    char *traces_url, *metrics_url;
    struct curl_slist *headers;  /* the user's, and Content-Type */
    metrics *mx;
    otlp_res res;
    char *service, *instance, *host, *run_id;  /* owned copies, for the resource */
    int64_t start_ns;
    _Atomic uint64_t own_lost;
    _Atomic uint64_t *lost;  /* spans this exporter could not deliver */

    /* Writer-owned: the open batch. */
    buf cur;
    uint32_t cur_spans;
};
typedef struct otlp_exporter osink;

static int64_t now_ns(void) { return tally__real_us() * 1000; }

/* The spans a partial success rejected (0 when none). */
static uint64_t rejected_spans(ship *sh, const buf *body, const char *what)
{
    if (!body->len) return 0;
    json_arena a;
    json_arena_init(&a, (size_t)1 << 20);
    json_error err;
    jv *v = json_parse(&a, body->p, body->len, &err);
    uint64_t n = 0;
    const jv *ps = v ? jv_get(v, "partialSuccess") : NULL;
    if (ps) {
        const jv *r = jv_get(ps, what);
        if (r && r->type == JV_STR) n = strtoull(r->s, NULL, 10);
        else if (r) n = (uint64_t)jv_int(r, 0);
        const char *msg = jv_str(jv_get(ps, "errorMessage"));
        if (n || (msg && *msg))
            ship_log(sh, TALLY_LOG_WARN, "OTLP collector took the batch in part: %llu %s refused: %.200s",
                       (unsigned long long)n, what, msg ? msg : "");
    }
    json_arena_free(&a);
    return n;
}

static int post(void *ud, ship *sh, const char *body, size_t len, uint32_t spans, long *retry_after, char *reason,
                size_t reason_len)
{
    osink *o = ud;
    ship_resp r = {0};
    long status = ship_http(sh, o->traces_url, o->headers, NULL, NULL, body, len, &r);
    int out;
    *retry_after = r.retry_after_s;
    if (status < 0 || status == 429 || status == 502 || status == 503 || status == 504) {
        out = SHIP_RETRY;
    } else if (status >= 200 && status < 300) {
        uint64_t n = rejected_spans(sh, &r.body, "rejectedSpans");
        if (n && spans) atomic_fetch_add(o->lost, n > spans ? spans : n);
        out = SHIP_OK;
    } else {
        snprintf(reason, reason_len, "HTTP %ld: %.200s", status, r.body.len ? r.body.p : "");
        ship_log(sh, TALLY_LOG_WARN, "OTLP collector refused a batch of %u, not retried: %s", spans, reason);
        out = SHIP_REJECT;
    }
    ship_resp_free(&r);
    return out;
}

static void export_metrics(void *ud, ship *sh)
{
    osink *o = ud;
    if (!o->mx || !o->metrics_url) return;
    buf b;
    buf_init(&b, (size_t)64 << 20);
    otlp_metrics(&b, o->mx, &o->res, o->start_ns, now_ns());
    if (!b.failed) {
        ship_resp r = {0};
        long status = ship_http(sh, o->metrics_url, o->headers, NULL, NULL, b.p, b.len, &r);
        if (status >= 200 && status < 300) rejected_spans(sh, &r.body, "rejectedDataPoints");
        ship_resp_free(&r);
    }
    buf_free(&b);
}

/* ---- the sink --------------------------------------------------------------------- */

static void seal(osink *o)
{
    if (!o->cur_spans) return;
    otlp_traces_end(&o->cur);
    if (o->cur.failed) atomic_fetch_add(o->lost, o->cur_spans);
    else ship_batch(o->ship, o->cur.p, o->cur.len, o->cur_spans);
    buf_reset(&o->cur);
    o->cur_spans = 0;
}

int otlp_exporter_add(osink *o, const char *id, int64_t ts_us, const void *payload, int type, const struct row *r)
{
    if (!o->cur_spans) otlp_traces_begin(&o->cur, &o->res);
    size_t mark = o->cur.len;
    if (otlp_span(&o->cur, o->cur_spans == 0, id, ts_us, payload, type, r)) {
        if (o->cur.failed) {
            /* one span too large for a batch: lost, the batch kept */
            o->cur.failed = 0;
            o->cur.len = mark;
            return -1;
        }
        o->cur_spans++;
    }
    if (!o->cur_spans) buf_reset(&o->cur);
    if (o->cur_spans >= BATCH_SPANS || o->cur.len >= BATCH_BYTES) seal(o);
    return 0;
}

void otlp_exporter_seal(osink *o) { seal(o); }

uint64_t otlp_exporter_lost(const osink *o) { return atomic_load(o->lost); }
uint64_t otlp_exporter_sent(const osink *o) { return ship_sent(o->ship); }

void otlp_exporter_after_fork(osink *o)
{
    ship_after_fork(o->ship);
    buf_reset(&o->cur);
    o->cur_spans = 0;
}

void otlp_exporter_close(osink *o)
{
    if (!o) return;
    if (o->ship) {
        seal(o);
        ship_close(o->ship);
    }
    curl_slist_free_all(o->headers);
    buf_free(&o->cur);
    free(o->traces_url);
    free(o->metrics_url);
    free(o->service);
    free(o->instance);
    free(o->host);
    free(o->run_id);
    free(o);
}

/* OTEL_EXPORTER_OTLP_HEADERS: "k1=v1,k2=v2", values percent-decoded.  The
 * values (credentials) are never logged.  A header whose name or decoded
 * value holds a control character (a CR LF would start another header) is
 * left out. */
struct curl_slist *otlp_parse_headers(const char *env)
{
    struct curl_slist *l = NULL;
    if (!env) return NULL;
    const char *p = env;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (eq && eq > p && n < 4096) {
            char line[4200];
            size_t kn = (size_t)(eq - p), o = 0;
            while (kn && p[kn - 1] == ' ') kn--;
            memcpy(line, p, kn);
            o = kn;
            line[o++] = ':';
            line[o++] = ' ';
            for (const char *v = eq + 1; v < p + n && o < sizeof line - 1; v++) {
                if (*v == '%' && v + 2 < p + n) {
                    char hx[3] = {v[1], v[2], 0};
                    line[o++] = (char)strtol(hx, NULL, 16);
                    v += 2;
                } else {
                    line[o++] = *v;
                }
            }
            line[o] = 0;
            int clean = kn > 0;
            for (size_t q = 0; q < o && clean; q++)
                if ((unsigned char)line[q] < 0x20 || line[q] == 0x7f || (q < kn && line[q] == ':')) clean = 0;
            if (clean) l = curl_slist_append(l, line);
        }
        if (!end) break;
        p = end + 1;
    }
    return l;
}

static char *join_url(const char *base, const char *path)
{
    size_t n = strlen(base);
    while (n && base[n - 1] == '/') n--;
    char *u = malloc(n + strlen(path) + 1);
    if (!u) return NULL;
    size_t pn = strlen(path);
    memcpy(u, base, n);
    memcpy(u + n, path, pn + 1);
    return u;
}

osink *otlp_exporter_open(const otlp_conf *c)
{
    osink *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->lost = c->lost ? c->lost : &o->own_lost;
    o->traces_url = join_url(c->endpoint, "/v1/traces");
    o->metrics_url = join_url(c->endpoint, "/v1/metrics");
    o->headers = otlp_parse_headers(getenv("OTEL_EXPORTER_OTLP_HEADERS"));
    o->headers = curl_slist_append(o->headers, "Content-Type: application/json");
    o->mx = c->metrics;
    const char *svc = getenv("OTEL_SERVICE_NAME");
    o->service = strdup(svc && *svc ? svc : "tally");
    char inst[300];
    snprintf(inst, sizeof inst, "%s/%d", c->run_id ? c->run_id : "", (int)getpid());
    o->instance = strdup(inst);
    o->host = strdup(c->host ? c->host : "");
    o->run_id = strdup(c->run_id ? c->run_id : "");
    o->res = (otlp_res){o->service, o->instance, o->host, o->run_id, tally_version()};
    o->start_ns = now_ns();
    buf_init(&o->cur, BATCH_BYTES + ((size_t)4 << 20));
    if (!o->traces_url || !o->metrics_url || !o->headers || !o->service || !o->instance || !o->host || !o->run_id) {
        otlp_exporter_close(o);
        return NULL;
    }
    const char *iv = getenv("OTEL_METRIC_EXPORT_INTERVAL");
    long ms = iv ? strtol(iv, NULL, 10) : 0;
    const char *comp = getenv("OTEL_EXPORTER_OTLP_COMPRESSION");
    ship_conf sc = {
        .what = "OTLP collector",
        .post = post,
        .tick = o->mx ? export_metrics : NULL,
        .tick_ms = ms > 0 ? (uint32_t)ms : c->metrics_interval_ms ? c->metrics_interval_ms : 60000,
        .ud = o,
        .spool = c->spool,
        .spool_max_bytes = c->spool_max_bytes,
        .backoff_ms = c->backoff_ms,
        .log = c->log,
        .log_ud = c->log_ud,
        .lost = o->lost,
        .plain = comp && !strcmp(comp, "none"),
    };
    o->ship = ship_open(&sc);
    if (!o->ship) {
        otlp_exporter_close(o);
        return NULL;
    }
    return o;
}

/* ---- the sink --------------------------------------------------------------------------- */

static int ot_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)line;
    (void)len;
    return otlp_exporter_add(s->state, ev->id, ev->ts_us, ev->payload, ev->type, r);
}

static uint64_t ot_commit(sink *s, int sync)
{
    (void)sync;
    otlp_exporter_seal(s->state);
    return 0;
}

static void ot_after_fork(sink *s) { otlp_exporter_after_fork(s->state); }

static void ot_close(sink *s)
{
    osink *o = s->state;
    if (!o) return;
    s->state = NULL;
    otlp_exporter_close(o);
}

static const sink_ops ot_ops = {"otlp", 1, ot_write, ot_commit, ot_after_fork, ot_close};

int sink_otlp_open(struct tally *h, sink *s, const tally_config *cfg, const char *endpoint, metrics *mx)
{
    s->ops = &ot_ops;
    s->h = h;
    char def[4200];
    const char *spool = ship_spool_dir(h, "TALLY_OTLP_SPOOL", cfg->otlp_spool_dir, ".otlp-spool", def, sizeof def);
    otlp_conf c = {endpoint, spool, cfg->otlp_spool_max_bytes, cfg->otlp_backoff_ms, cfg->otlp_metrics_interval_ms,
                   mx, h->host, h->run_id, h->log, h->log_ud, &s->lost};
    s->state = otlp_exporter_open(&c);
    return s->state ? 0 : -1;
}
