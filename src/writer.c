/*
 * writer -- the background thread: drains rings, encodes JSON, feeds sinks.
 *
 * Why a thread: the caller's cost must be a copy into memory it owns.
 * Everything slow -- number formatting, escaping, checking the caller's
 * JSON, write(2), fsync(2), SQLite -- happens here, where a slow disk
 * delays the telemetry and never the program.
 *
 * Flush policy: a batch is committed to the sinks (one write(2) for the
 * JSONL file) when it holds `flush_events` events, when its oldest event is
 * `flush_ms` old, on tally_flush(), and at close.  The thread sleeps on a
 * condition variable; a producer wakes it only when its ring holds
 * `flush_events` records or is half full, and only if the writer said it
 * was going to sleep (a cheap flag read before the lock: coalesced
 * wake-ups).  Otherwise it polls every flush_ms/4.
 *
 * Time: `t` is the monotonic time since the run's start, never decreasing
 * (an event drained after a later one from another thread is written with
 * the later t); `ts` is the wall clock at the run's start plus t.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "energy.h"
#include "internal.h"
#include "record.h"
#include "row.h"

#define BUSY_BATCH 4096   /* records drained per ring per pass */

static void writer_finish(struct tally *h);

/* ---- encoding helpers ------------------------------------------------- */

static inline void put_str(buf *b, const void *base, rstr s)
{
    enc_str(b, (const char *)base + s.off, s.len);
}

/* The keys tally itself writes in a request's `extra`, besides the named
 * fields of fields.h: a caller's extra_json cannot take them. */
static int request_key(const char *k, size_t n)
{
    static const char *const own[] = {
        "prompt_tokens", "completion_tokens", "latency_us", "cached_tokens", "cache_write_tokens",
        "reasoning_tokens", "ttft_us", "stage_us", "cost_nusd", "cost_breakdown_nusd", "energy_j", "gpu_util_pct",
        "ok", "error", "degraded", "escalated", "fallback", "cache_hit", "ceiling_hit", "user_cap_hit", "sampling",
        "sampling_unparsed", "text", "truncated", "extra_unparsed",
    };
    if (field_by_key(k, n)) return 1;
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (strlen(own[i]) == n && memcmp(own[i], k, n) == 0) return 1;
    return 0;
}

/* Was this key already written among the caller's members? */
static int seen_before(const jv *first, const jv *upto, const char *k, size_t n, int renamed)
{
    for (const jv *e = first; e != upto; e = e->next) {
        int er = request_key(e->key, e->keylen);
        /* compare the names as written: "caller_" + key for renamed ones */
        if (er == renamed && e->keylen == n && memcmp(e->key, k, n) == 0) return 1;
        if (!er && renamed && e->keylen == n + 7 && memcmp(e->key, "caller_", 7) == 0 &&
            memcmp(e->key + 7, k, n) == 0)
            return 1;
        if (er && !renamed && n == e->keylen + 7 && memcmp(k, "caller_", 7) == 0 &&
            memcmp(k + 7, e->key, e->keylen) == 0)
            return 1;
    }
    return 0;
}

/* Writes the caller's JSON `s` as `,"key":<value>`; with `merge`, the
 * members of an object are written into the request's `extra` instead:
 * a member named like one of tally's keys is written as "caller_<key>"
 * (tally's value stays the one readers see), and of members with the same
 * name the first is kept -- a line never has two of one key.  What does
 * not parse (or is not an object when `want_obj`) is kept as a string
 * under "<key>_unparsed". */
static void put_caller_json(struct tally *h, buf *b, const char *key, const char *s, size_t n, int merge,
                            int want_obj)
{
    json_arena_reset(&h->arena);
    jv *v = json_parse(&h->arena, s, n, NULL);
    if (v && (!want_obj || v->type == JV_OBJ)) {
        if (merge) {
            int i = 0;
            for (const jv *e = v->child; e; e = e->next, i++) {
                int renamed = request_key(e->key, e->keylen);
                if (renamed && e->keylen + 7 > 64) continue; /* cannot happen: tally's keys are short */
                /* Duplicates are looked for among the first 256 members
                 * (a bound on the work; larger objects are rare). */
                if (i < 256 && seen_before(v->child, e, e->key, e->keylen, renamed)) {
                    tally__warn_once(h, &h->warned_dupkey,
                                     "extra_json has two members named \"%.*s\": the first is kept",
                                     (int)(e->keylen > 64 ? 64 : e->keylen), e->key);
                    continue;
                }
                buf_putc(b, ',');
                if (renamed) {
                    /* tally's keys are short: the renamed one fits. */
                    char k[64];
                    memcpy(k, "caller_", 7);
                    memcpy(k + 7, e->key, e->keylen);
                    enc_str(b, k, e->keylen + 7);
                } else {
                    enc_str(b, e->key, e->keylen);
                }
                buf_putc(b, ':');
                jv_write(b, e);
            }
        } else {
            buf_putc(b, ',');
            enc_cstr(b, key);
            buf_putc(b, ':');
            jv_write(b, v);
        }
        return;
    }
    buf_putc(b, ',');
    buf_putc(b, '"');
    buf_puts(b, key);
    buf_put(b, "_unparsed\":", 11);
    enc_str(b, s, n);
}

static void put_caller_json_r(struct tally *h, buf *b, const char *key, const void *base, rstr s, int merge)
{
    if (!s.off) return;
    put_caller_json(h, b, key, (const char *)base + s.off, s.len, merge, 1);
}

static void put_truncated(buf *b, uint32_t mask, const char *const *names, int n)
{
    if (!mask) return;
    ENC_NKEY(b, "truncated");
    buf_putc(b, '[');
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (!(mask & (1u << i))) continue;
        if (!first) buf_putc(b, ',');
        first = 0;
        enc_cstr(b, names[i]);
    }
    buf_putc(b, ']');
}

static void put_head(buf *b, const char *kind, size_t kind_len, const wev *ev)
{
    buf_put(b, "{\"kind\":", 8);
    enc_str(b, kind, kind_len);
    ENC_NKEY(b, "t");
    enc_us_as_seconds(b, ev->t_us);
    ENC_NKEY(b, "ts");
    enc_us_as_seconds(b, ev->ts_us);
    buf_put(b, ",\"id\":\"", 7);
    buf_put(b, ev->id, TALLY_ID_LEN);
    buf_putc(b, '"');
}

static inline void put_num_if(buf *b, const char *key, size_t klen, double v)
{
    if (isnan(v)) return;
    buf_putc(b, ',');
    buf_putc(b, '"');
    buf_put(b, key, klen);
    buf_put(b, "\":", 2);
    enc_double(b, v);
}
#define PUT_NUM_IF(b, lit, v) put_num_if((b), lit, sizeof(lit) - 1, (v))

/* ---- one encoder per event kind -------------------------------------------- */

static const char *const rq_names[RQ_NSTR] = {
#define X(SLOT, name, flags) #name,
    TALLY_REQUEST_LABELS(X)
#undef X
    "error", "degraded", "sampling", "text", "extra",
};

static void enc_request(struct tally *h, buf *b, const wev *ev)
{
    const rec_request *q = ev->payload;
    const rstr *s = q->s;
    put_head(b, "eval", 4, ev);
    buf_put(b, ",\"phase\":\"serve\",\"name\":\"request\",\"extra\":{\"model\":", 51);
    put_str(b, q, s[RQ_MODEL]);
    ENC_NKEY(b, "prompt_tokens");
    enc_i64(b, q->prompt);
    ENC_NKEY(b, "completion_tokens");
    enc_i64(b, q->completion);
    ENC_NKEY(b, "latency_us");
    enc_i64(b, q->latency_us);
    /* The named fields (fields.h) but the model, which leads. */
    static const struct { int slot; const char *key; size_t klen; } opt[] = {
#define X(SLOT, name, flags) {RQ_##SLOT, ",\"" #name "\":", sizeof(",\"" #name "\":") - 1},
        TALLY_REQUEST_LABELS(X)
#undef X
    };
    for (size_t i = 1; i < sizeof opt / sizeof opt[0]; i++) {
        if (!s[opt[i].slot].off) continue;
        buf_put(b, opt[i].key, opt[i].klen);
        put_str(b, q, s[opt[i].slot]);
    }
    if (q->cached > 0) { ENC_NKEY(b, "cached_tokens"); enc_i64(b, q->cached); }
    if (q->cache_write > 0) { ENC_NKEY(b, "cache_write_tokens"); enc_i64(b, q->cache_write); }
    if (q->reasoning > 0) { ENC_NKEY(b, "reasoning_tokens"); enc_i64(b, q->reasoning); }
    if (q->ttft_us > 0) { ENC_NKEY(b, "ttft_us"); enc_i64(b, q->ttft_us); }
    if (q->n_stages) {
        const rec_stage *st = (const rec_stage *)(q + 1);
        ENC_NKEY(b, "stage_us");
        buf_putc(b, '{');
        for (uint32_t i = 0; i < q->n_stages; i++) {
            if (i) buf_putc(b, ',');
            put_str(b, q, st[i].name);
            buf_putc(b, ':');
            enc_i64(b, st[i].us);
        }
        buf_putc(b, '}');
    }
    if (q->flags & TALLY_HAS_COST) {
        ENC_NKEY(b, "cost_nusd");
        enc_i64(b, q->cost);
        ENC_NKEY(b, "cost_breakdown_nusd");
        buf_put(b, "{\"input\":", 9);
        enc_i64(b, q->cost_input);
        ENC_NKEY(b, "cached");
        enc_i64(b, q->cost_cached);
        ENC_NKEY(b, "cache_write");
        enc_i64(b, q->cost_cache_write);
        ENC_NKEY(b, "output");
        enc_i64(b, q->cost_output);
        ENC_NKEY(b, "reasoning");
        enc_i64(b, q->cost_reasoning);
        buf_putc(b, '}');
    }
    if (q->flags & TALLY_HAS_ENERGY) { ENC_NKEY(b, "energy_j"); enc_double(b, q->energy_j); }
    if (q->flags & TALLY_HAS_GPU_UTIL) { ENC_NKEY(b, "gpu_util_pct"); enc_double(b, q->gpu_util); }
    int ok = !s[RQ_ERROR].off && !(q->flags & TALLY_FAILED);
    if (ok) buf_put(b, ",\"ok\":true", 10);
    else buf_put(b, ",\"ok\":false", 11);
    if (s[RQ_ERROR].off) { ENC_NKEY(b, "error"); put_str(b, q, s[RQ_ERROR]); }
    if (s[RQ_DEGRADED].off) { ENC_NKEY(b, "degraded"); put_str(b, q, s[RQ_DEGRADED]); }
    if (q->flags & TALLY_ESCALATED) buf_put(b, ",\"escalated\":true", 17);
    if (q->flags & TALLY_FALLBACK) buf_put(b, ",\"fallback\":true", 16);
    if (q->flags & TALLY_CACHE_HIT) buf_put(b, ",\"cache_hit\":true", 17);
    if (q->flags & TALLY_CEILING_HIT) buf_put(b, ",\"ceiling_hit\":true", 19);
    if (q->flags & TALLY_USER_CAP_HIT) buf_put(b, ",\"user_cap_hit\":true", 20);
    put_caller_json_r(h, b, "sampling", q, s[RQ_SAMPLING], 0);
    if (s[RQ_TEXT].off) { ENC_NKEY(b, "text"); put_str(b, q, s[RQ_TEXT]); }
    put_truncated(b, q->truncated, rq_names, RQ_NSTR);
    put_caller_json_r(h, b, "extra", q, s[RQ_EXTRA], 1);
    buf_put(b, "}}", 2);
}

static void enc_step(struct tally *h, buf *b, const wev *ev)
{
    const rec_step *s = ev->payload;
    static const char *const names[] = {"metrics"};
    put_head(b, "step", 4, ev);
    buf_put(b, ",\"phase\":\"train\",\"step\":", 24);
    enc_i64(b, s->step);
    /* enc_double writes null for NaN / infinity: a diverged loss stays
     * visible (and counted by stats) instead of vanishing. */
    if (s->present & TALLY_HAS_LOSS) { ENC_NKEY(b, "loss"); enc_double(b, s->loss); }
    if (s->present & TALLY_HAS_LR) { ENC_NKEY(b, "lr"); enc_double(b, s->lr); }
    if (s->present & TALLY_HAS_GRAD_NORM) { ENC_NKEY(b, "grad_norm"); enc_double(b, s->grad_norm); }
    if (s->present & TALLY_HAS_TOKENS) {
        if (s->tokens < 0)
            tally__warn_once(h, &h->warned_misuse, "a step with negative tokens (%lld) is written as given",
                             (long long)s->tokens);
        ENC_NKEY(b, "tokens");
        enc_i64(b, s->tokens);
    }
    if (s->wall_us >= 0) { ENC_NKEY(b, "wall_us"); enc_i64(b, s->wall_us); }
    if (s->unfinished) buf_put(b, ",\"unfinished\":true", 18);
    put_caller_json_r(h, b, "metrics", s, s->metrics, 0);
    put_truncated(b, s->truncated, names, 1);
    buf_putc(b, '}');
    if (s->unfinished) return;
    h->has_final |= 1;
    h->final_step = s->step;
    if ((s->present & TALLY_HAS_LOSS) && isfinite(s->loss)) {
        h->has_final |= 2;
        h->final_loss = s->loss;
    }
}

static void enc_epoch(struct tally *h, buf *b, const wev *ev)
{
    const rec_epoch *e = ev->payload;
    static const char *const names[] = {"metrics"};
    put_head(b, "epoch", 5, ev);
    buf_put(b, ",\"phase\":\"train\",\"epoch\":", 25);
    enc_i64(b, e->epoch);
    if (e->wall_us >= 0) { ENC_NKEY(b, "wall_us"); enc_i64(b, e->wall_us); }
    if (e->unfinished) buf_put(b, ",\"unfinished\":true", 18);
    put_caller_json_r(h, b, "metrics", e, e->metrics, 0);
    put_truncated(b, e->truncated, names, 1);
    buf_putc(b, '}');
}

static void enc_eval(struct tally *h, buf *b, const wev *ev)
{
    const rec_eval *e = ev->payload;
    static const char *const names[] = {"name", "extra"};
    put_head(b, "eval", 4, ev);
    buf_put(b, ",\"phase\":\"eval\",\"name\":", 23);
    if (e->name.off) put_str(b, e, e->name);
    else buf_put(b, "\"eval\"", 6);
    PUT_NUM_IF(b, "loss", e->loss);
    PUT_NUM_IF(b, "ppl", e->ppl);
    if (e->samples >= 0) { ENC_NKEY(b, "samples"); enc_i64(b, e->samples); }
    put_caller_json_r(h, b, "extra", e, e->extra, 0);
    put_truncated(b, e->truncated, names, 2);
    buf_putc(b, '}');
}

static void enc_error(struct tally *h, buf *b, const wev *ev)
{
    (void)h;
    const rec_error *e = ev->payload;
    static const char *const names[] = {"type", "message", "phase", "request_id"};
    put_head(b, "error", 5, ev);
    ENC_NKEY(b, "type");
    put_str(b, e, e->type);
    ENC_NKEY(b, "message");
    put_str(b, e, e->message);
    if (e->phase.off) { ENC_NKEY(b, "phase"); put_str(b, e, e->phase); }
    if (e->step >= 0) { ENC_NKEY(b, "step"); enc_i64(b, e->step); }
    if (e->request_id.off) { ENC_NKEY(b, "request_id"); put_str(b, e, e->request_id); }
    put_truncated(b, e->truncated, names, 4);
    buf_putc(b, '}');
}

static void enc_note(struct tally *h, buf *b, const wev *ev)
{
    (void)h;
    const rec_note *n = ev->payload;
    static const char *const names[] = {"text"};
    put_head(b, "note", 4, ev);
    ENC_NKEY(b, "text");
    put_str(b, n, n->text);
    put_truncated(b, n->truncated, names, 1);
    buf_putc(b, '}');
}

/* tally's own top-level keys: a generic event's field of that name is
 * written as field_<key>. */
static int reserved_key(const char *k, size_t n)
{
    return (n == 4 && memcmp(k, "kind", 4) == 0) || (n == 1 && k[0] == 't') ||
           (n == 2 && memcmp(k, "ts", 2) == 0) || (n == 2 && memcmp(k, "id", 2) == 0) ||
           (n == 9 && memcmp(k, "truncated", 9) == 0);
}

static void enc_event(struct tally *h, buf *b, const wev *ev)
{
    const rec_event *e = ev->payload;
    static const char *const names[] = {"kind", "fields"};
    const char *base = (const char *)e;
    put_head(b, base + e->kind.off, e->kind.len, ev);
    const rec_field *f = (const rec_field *)(e + 1);
    for (uint32_t i = 0; i < e->n_fields; i++) {
        const char *k = base + f[i].key.off;
        size_t kl = f[i].key.len;
        buf_putc(b, ',');
        if (reserved_key(k, kl) || kl == 0) {
            /* kind, t, ts, id and truncated are tally's; the caller's
             * value is kept under field_<key> rather than written twice. */
            buf_putc(b, '"');
            buf_put(b, "field_", 6);
            buf_put(b, k, kl);
            buf_putc(b, '"');
        } else {
            enc_str(b, k, kl);
        }
        buf_putc(b, ':');
        switch (f[i].type) {
        case TALLY_FIELD_INT: enc_i64(b, f[i].i); break;
        case TALLY_FIELD_DOUBLE: enc_double(b, f[i].d); break;
        case TALLY_FIELD_BOOL: buf_puts(b, f[i].i ? "true" : "false"); break;
        case TALLY_FIELD_STRING:
            if (f[i].s.off) put_str(b, e, f[i].s);
            else buf_put(b, "null", 4);
            break;
        case TALLY_FIELD_JSON: {
            if (!f[i].s.off) { buf_put(b, "null", 4); break; }
            json_arena_reset(&h->arena);
            jv *v = json_parse(&h->arena, base + f[i].s.off, f[i].s.len, NULL);
            if (v) jv_write(b, v);
            else {
                buf_put(b, "{\"unparsed\":", 12);
                put_str(b, e, f[i].s);
                buf_putc(b, '}');
            }
            break;
        }
        default: buf_put(b, "null", 4);
        }
    }
    put_truncated(b, e->truncated, names, 2);
    buf_putc(b, '}');
}

static void enc_run_start(struct tally *h, buf *b, const wev *ev)
{
    put_head(b, "run_start", 9, ev);
    buf_put(b, ",\"schema\":\"toy/v1\",\"run_id\":", 28);
    enc_cstr(b, h->run_id);
    ENC_NKEY(b, "started_at");
    enc_iso8601(b, h->started_at);
    buf_put(b, ",\"host\":{\"name\":", 16);
    enc_cstr(b, h->host);
    ENC_NKEY(b, "os");
    enc_cstr(b, h->os);
    ENC_NKEY(b, "arch");
    enc_cstr(b, h->arch);
    buf_put(b, "},\"backend\":{\"kind\":", 20);
    enc_cstr(b, h->backend);
    if (h->backend_device) { ENC_NKEY(b, "device"); enc_cstr(b, h->backend_device); }
    buf_put(b, "},\"model\":{\"name\":", 18);
    enc_cstr(b, h->model);
    if (h->model_path) { ENC_NKEY(b, "path"); enc_cstr(b, h->model_path); }
    buf_putc(b, '}');
    if (h->config_json) put_caller_json(h, b, "config", h->config_json, strlen(h->config_json), 0, 1);
    else buf_put(b, ",\"config\":{}", 12);
    ENC_NKEY(b, "phase");
    enc_cstr(b, h->phase);
    if (h->git_sha) {
        buf_put(b, ",\"git\":{\"sha\":", 14);
        enc_cstr(b, h->git_sha);
        ENC_NKEY(b, "branch");
        enc_cstr(b, h->git_branch ? h->git_branch : "");
        buf_puts(b, h->git_dirty ? ",\"dirty\":true}" : ",\"dirty\":false}");
    }
    ENC_NKEY(b, "pid");
    enc_i64(b, h->pid);
    buf_putc(b, '}');
}

/* ---- sinks --------------------------------------------------------------- */

/* A sink's losses count against that sink alone (and in the total). */
static void sink_lost(struct tally *h, sink *s, uint64_t n)
{
    atomic_fetch_add(&s->lost, n);
    atomic_fetch_add(&h->sink_failures, n);
}

/* One event to every sink: its line, and its row (built once) for the
 * sinks that store rows. */
static void give_to_sinks(struct tally *h, const wev *ev, const buf *b)
{
    row r;
    const row *rp = NULL;
    if (h->wants_rows) {
        tally__row_of_event(h, ev, &r);
        r.json = (sv){b->p, b->len};
        rp = &r;
    }
    for (int i = 0; i < h->n_sinks; i++)
        if (h->sinks[i].ops->write(&h->sinks[i], ev, rp, b->p, b->len) != 0) sink_lost(h, &h->sinks[i], 1);
}

static void emit(struct tally *h, const wev *ev)
{
    buf *b = &h->line;
    buf_reset(b);
    switch (ev->type) {
    case REC_REQUEST: enc_request(h, b, ev); break;
    case REC_STEP: enc_step(h, b, ev); break;
    case REC_EPOCH: enc_epoch(h, b, ev); break;
    case REC_EVAL: enc_eval(h, b, ev); break;
    case REC_ERROR: enc_error(h, b, ev); break;
    case REC_NOTE: enc_note(h, b, ev); break;
    case REC_EVENT: enc_event(h, b, ev); break;
    case WEV_RUN_START: enc_run_start(h, b, ev); break;
    default: return; /* WEV_RUN_END is encoded by writer_finish */
    }
    if (b->failed) {
        /* Only an event larger than the line cap gets here. */
        atomic_fetch_add(&h->sink_failures, 1);
        tally__warn_once(h, &h->warned_sink, "an event larger than %zu bytes was not written", b->max);
        return;
    }
    give_to_sinks(h, ev, b);
    /* Only this thread writes `written`: no locked add per event.  It
     * counts the caller's events, not run_start (tally.h, the counters). */
    if (ev->type < WEV_RUN_START) ring_bump(&h->written, 1);
}

static void commit(struct tally *h, int sync)
{
    for (ring *r = atomic_load_explicit(&h->rings, memory_order_acquire); r; r = r->next)
        atomic_store_explicit(&r->consumed_seq, r->drained, memory_order_release);
    for (int i = 0; i < h->n_sinks; i++) {
        uint64_t lost = h->sinks[i].ops->commit ? h->sinks[i].ops->commit(&h->sinks[i], sync) : 0;
        if (lost) sink_lost(h, &h->sinks[i], lost);
    }
}

/* Time of an event: see the top of this file. */
static void stamp(struct tally *h, wev *ev, int64_t mono_ns)
{
    int64_t t = (mono_ns - h->origin_mono_ns) / 1000;
    if (t < h->last_t_us) t = h->last_t_us;
    h->last_t_us = t;
    ev->t_us = t;
    ev->ts_us = h->origin_real_us + t;
    /* id: run nonce, process, 10 hex digits of sequence (internal.h). */
    static const char hex[] = "0123456789abcdef";
    uint64_t seq = ++h->event_seq;
    memcpy(ev->id, h->nonce, TALLY_ID_RUN);
    memcpy(ev->id + TALLY_ID_RUN, h->proc, TALLY_ID_WRITER - TALLY_ID_RUN);
    for (int i = TALLY_ID_LEN - 1; i >= TALLY_ID_WRITER; i--, seq >>= 4) ev->id[i] = hex[seq & 15];
    ev->id[TALLY_ID_LEN] = 0;
}

static void emit_run_start(struct tally *h)
{
    if (h->run_start_written || !atomic_load_explicit(&h->run_started, memory_order_acquire)) return;
    h->run_start_written = 1;
    wev ev = {WEV_RUN_START, NULL, 0, 0, {0}};
    stamp(h, &ev, h->origin_mono_ns);
    emit(h, &ev);
}

/* ---- pricing ------------------------------------------------------------------ */

/* A request recorded without a cost is costed here, off the caller's
 * thread, at the price in effect at its time; the record (which the writer
 * owns until it moves the ring's tail) is updated in place so that every
 * sink sees the same cost.  No price: no cost, and counted as unpriced. */
static void price_request(struct tally *h, rec_request *q, int64_t ts_us)
{
    if (q->flags & TALLY_HAS_COST) return;
    char model[256];
    size_t n = q->s[RQ_MODEL].len < sizeof model - 1 ? q->s[RQ_MODEL].len : sizeof model - 1;
    memcpy(model, (const char *)q + q->s[RQ_MODEL].off, n);
    model[n] = 0;
    cost c;
    if (h->prices.n && q->s[RQ_MODEL].off &&
        prices_cost(&h->prices, model, (double)ts_us / 1e6, q->prompt, q->cached, q->cache_write, q->completion,
                    q->reasoning, &c) == 0) {
        q->cost = c.total;
        q->cost_input = c.input;
        q->cost_cached = c.cached;
        q->cost_cache_write = c.cache_write;
        q->cost_output = c.output;
        q->cost_reasoning = c.reasoning;
        q->flags |= TALLY_HAS_COST;
    } else {
        ring_bump(&h->unpriced, 1);
    }
}

/* The request's share of the energy used while it was in flight, unless
 * the caller gave its own. */
static void attribute_energy(struct tally *h, rec_request *q)
{
    if (!h->energy || !q->end_ns) return;
    if (!(q->flags & TALLY_HAS_ENERGY)) {
        double j = energy_of(h->energy, q->device, q->begin_ns, q->end_ns);
        if (j >= 0) {
            q->energy_j = j;
            q->flags |= TALLY_HAS_ENERGY;
        }
    }
    if (!(q->flags & TALLY_HAS_GPU_UTIL)) {
        double u = energy_util(h->energy, q->device);
        if (u == u) {
            q->gpu_util = u;
            q->flags |= TALLY_HAS_GPU_UTIL;
        }
    }
}

/* ---- draining -------------------------------------------------------------- */

/* Unlinks a ring whose thread has gone and which is empty (under mu). */
static void retire(struct tally *h, ring *dead)
{
    pthread_mutex_lock(&h->mu);
    ring **pp = (ring **)&h->rings;
    while (*pp && *pp != dead) pp = &(*pp)->next;
    if (*pp) {
        *pp = dead->next;
        h->n_rings--;
        h->retired.offered += ring_load(&dead->offered);
        h->retired.dropped += ring_load(&dead->dropped);
        h->retired.requests += ring_load(&dead->requests);
        h->retired.errors += ring_load(&dead->errors);
        h->retired.tokens_out += ring_load(&dead->tokens_out);
    }
    pthread_mutex_unlock(&h->mu);
    ring_release(dead);
}

/* Drains every ring once; returns the number of events, and the monotonic
 * time of the oldest one in *oldest (when it is older). */
static uint64_t drain(struct tally *h, int64_t *oldest)
{
    uint64_t n = 0;
    ring *r = atomic_load_explicit(&h->rings, memory_order_acquire);
    while (r) {
        ring *next = r->next;
        int gone = atomic_load_explicit(&r->thread_gone, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t done = 0;
        while (tail != head && done < BUSY_BATCH) {
            uint64_t off = tail & r->mask;
            if (r->cap - off < sizeof(rec_hdr)) { tail += r->cap - off; continue; }
            const rec_hdr *hd = (const rec_hdr *)(r->data + off);
            /* A request whose energy span has not been sampled to its end
             * waits here (at most one sampling interval), and the ring
             * with it. */
            if (hd->type == REC_REQUEST && h->energy && ((const rec_request *)(hd + 1))->end_ns > energy_ready_until(h->energy))
                break;
            tail += hd->len;
            if (hd->type == REC_PAD) continue;
            emit_run_start(h);
            wev ev = {hd->type, hd + 1, 0, 0, {0}};
            stamp(h, &ev, hd->mono_ns);
            if (hd->type == REC_REQUEST) {
                price_request(h, (rec_request *)(hd + 1), ev.ts_us);
                attribute_energy(h, (rec_request *)(hd + 1));
            }
            if (!*oldest || hd->mono_ns < *oldest) *oldest = hd->mono_ns;
            emit(h, &ev);
            done++;
        }
        if (done) {
            atomic_store_explicit(&r->tail, tail, memory_order_release);
            r->drained += done;
            n += done;
        }
        if (gone && tail == head) retire(h, r);
        r = next;
    }
    return n;
}

int tally__rings_pressed(struct tally *h)
{
    for (ring *r = atomic_load_explicit(&h->rings, memory_order_acquire); r; r = r->next) {
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        if (head - tail >= r->cap / 4 * 3) return 1;
    }
    return 0;
}

static int need_drain(struct tally *h)
{
    for (ring *r = atomic_load_explicit(&h->rings, memory_order_acquire); r; r = r->next) {
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        if (head - tail > r->cap / 2) return 1;
        if (ring_load(&r->seq) - ring_load(&r->consumed_seq) >= h->flush_events) return 1;
    }
    return 0;
}

/* Adds what this process did since the last call to the run's totals. */
static void publish(struct tally *h)
{
    if (!h->shared) return;
    counts c;
    tally__count(h, &c);
    uint64_t w = atomic_load(&h->written);
    atomic_fetch_add(&h->shared->requests, c.requests - h->published.requests);
    atomic_fetch_add(&h->shared->errors, c.errors - h->published.errors);
    atomic_fetch_add(&h->shared->tokens_out, c.tokens_out - h->published.tokens_out);
    atomic_fetch_add(&h->shared->dropped, c.dropped - h->published.dropped);
    atomic_fetch_add(&h->shared->written, w - h->published_written);
    uint64_t up = atomic_load(&h->unpriced);
    atomic_fetch_add(&h->shared->unpriced, up - h->published_unpriced);
    h->published_unpriced = up;
    h->published = c;
    h->published_written = w;
}

static void *writer_main(void *arg)
{
    struct tally *h = arg;
    int64_t oldest = 0;       /* monotonic ns of the oldest uncommitted event */
    uint64_t batch = 0;       /* events drained and not committed */
    uint64_t last_dropped = 0;
    int64_t poll_ns = (int64_t)h->flush_ms * 1000000 / 4;
    if (poll_ns < 1000000) poll_ns = 1000000;

    for (;;) {
        pthread_mutex_lock(&h->mu);
        uint64_t freq = h->flush_req;
        int stop = h->stop;
        h->wake = 0;
        pthread_mutex_unlock(&h->mu);

        uint64_t n;
        emit_run_start(h);
        do {
            n = drain(h, &oldest);
            batch += n;
            if (batch >= h->flush_events) {
                commit(h, 0);
                batch = 0;
                oldest = 0;
            }
        } while (n && (stop || freq != h->flush_done));

        int64_t now = tally__mono_ns();
        int due = batch && (now - oldest >= (int64_t)h->flush_ms * 1000000);
        if (due || stop || freq != h->flush_done) {
            commit(h, stop || freq != h->flush_done);
            batch = 0;
            oldest = 0;
        }
        publish(h);
        if (h->published.dropped != last_dropped) {
            last_dropped = h->published.dropped;
            tally__warn_once(h, &h->warned_drop,
                             "queue full: events are being dropped (counted in run_end.stats.dropped)");
        }
        pthread_mutex_lock(&h->mu);
        if (freq != h->flush_done) {
            h->flush_done = freq;
            pthread_cond_broadcast(&h->done_cv);
        }
        if (stop) {
            pthread_mutex_unlock(&h->mu);
            /* The last writes happen here too, with every signal blocked. */
            writer_finish(h);
            break;
        }
        if (n == 0 && !h->wake && !h->stop && h->flush_req == freq) {
            atomic_store(&h->writer_sleeping, 1);
            atomic_thread_fence(memory_order_seq_cst);
            if (!need_drain(h)) {
                int64_t wait_ns = poll_ns;
                if (batch) {
                    int64_t left = oldest + (int64_t)h->flush_ms * 1000000 - now;
                    if (left < wait_ns) wait_ns = left > 0 ? left : 0;
                }
                struct timespec dl;
                clock_gettime(CLOCK_REALTIME, &dl);
                int64_t ns = dl.tv_nsec + wait_ns % 1000000000;
                dl.tv_sec += (time_t)(wait_ns / 1000000000 + ns / 1000000000);
                dl.tv_nsec = (long)(ns % 1000000000);
                if (wait_ns > 0) pthread_cond_timedwait(&h->wake_cv, &h->mu, &dl);
            }
            atomic_store(&h->writer_sleeping, 0);
        }
        pthread_mutex_unlock(&h->mu);
    }
    return NULL;
}

int writer_start(struct tally *h)
{
    if (!h->arena.max) json_arena_init(&h->arena, (size_t)64 << 20);
    /* The writer blocks every signal: a write past RLIMIT_FSIZE then fails
     * with EFBIG instead of raising SIGXFSZ in the program. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&h->writer, NULL, writer_main, h);
    if (rc == 0) pthread_setname_np(h->writer, "tally-writer"); /* as top -H and perf show it */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) h->writer_running = 1;
    return rc == 0 ? 0 : -1;
}

void writer_stop(struct tally *h, const char *reason, int has_code, int code)
{
    pthread_mutex_lock(&h->mu);
    int running = h->writer_running;
    h->end_reason = reason && *reason ? reason : "completed";
    h->end_has_code = has_code;
    h->end_code = code;
    h->stop = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->mu);
    if (running) {
        pthread_join(h->writer, NULL);
    } else {
        /* No thread (it could not be started): finish here. */
        int64_t oldest = 0;
        while (drain(h, &oldest)) {}
        writer_finish(h);
    }
    h->writer_running = 0;
}

void writer_stop_within(struct tally *h, const char *reason, int ms)
{
    pthread_mutex_lock(&h->mu);
    int running = h->writer_running;
    h->end_reason = reason;
    h->end_has_code = 0;
    h->stop = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->mu);
    if (!running) {
        writer_stop(h, reason, 0, 0);
        return;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000;
    }
    if (pthread_timedjoin_np(h->writer, NULL, &dl) == 0) h->writer_running = 0;
    else tally__log(h, TALLY_LOG_WARN, "exiting: the writer did not finish within %d ms", ms);
}

/* {"device": joules, ...}: each device's total, or its idle part. */
static void put_device_map(buf *b, const energy_device_total *d, int nd, int idle)
{
    buf_putc(b, '{');
    for (int i = 0; i < nd; i++) {
        if (i) buf_putc(b, ',');
        enc_cstr(b, d[i].name);
        buf_putc(b, ':');
        enc_double(b, idle ? d[i].idle_j : d[i].total_j);
    }
    buf_putc(b, '}');
}

/* The end of the writer: run_end (in the opening process), the last
 * commit, and the sinks closed. */
static void writer_finish(struct tally *h)
{
    const char *reason = h->end_reason;
    int has_code = h->end_has_code, code = h->end_code;
    publish(h);
    if (!h->is_child) {
        if (!atomic_load(&h->run_started)) {
            h->origin_mono_ns = tally__mono_ns();
            h->origin_real_us = tally__real_us();
            h->started_at = (time_t)(h->origin_real_us / 1000000);
            atomic_store(&h->run_started, 1);
        }
        emit_run_start(h);
        counts c;
        tally__count(h, &c);
        wev ev = {WEV_RUN_END, NULL, 0, 0, {0}};
        stamp(h, &ev, tally__mono_ns());
        buf *b = &h->line;
        buf_reset(b);
        put_head(b, "run_end", 7, &ev);
        ENC_NKEY(b, "ended_at");
        enc_iso8601(b, (time_t)(ev.ts_us / 1000000));
        ENC_NKEY(b, "reason");
        enc_cstr(b, reason);
        shared_totals *s = h->shared;
        /* Every line of the run: the caller's events, run_start, run_end. */
        uint64_t written = (s ? atomic_load(&s->written) : atomic_load(&h->written)) + 2;
        buf_put(b, ",\"stats\":{\"requests\":", 21);
        enc_i64(b, (int64_t)(s ? atomic_load(&s->requests) : c.requests));
        ENC_NKEY(b, "errors");
        enc_i64(b, (int64_t)(s ? atomic_load(&s->errors) : c.errors));
        ENC_NKEY(b, "tokens_out");
        enc_i64(b, (int64_t)(s ? atomic_load(&s->tokens_out) : c.tokens_out));
        ENC_NKEY(b, "events");
        enc_i64(b, (int64_t)written);
        ENC_NKEY(b, "dropped");
        enc_i64(b, (int64_t)(s ? atomic_load(&s->dropped) : c.dropped));
        ENC_NKEY(b, "sink_failures");
        enc_i64(b, (int64_t)atomic_load(&h->sink_failures));
        ENC_NKEY(b, "sink_lost");
        buf_putc(b, '{');
        for (int i = 0; i < h->n_sinks; i++) {
            if (i) buf_putc(b, ',');
            enc_cstr(b, h->sinks[i].ops->name);
            buf_putc(b, ':');
            enc_i64(b, (int64_t)atomic_load(&h->sinks[i].lost));
        }
        buf_putc(b, '}');
        ENC_NKEY(b, "unpriced");
        enc_i64(b, (int64_t)(s ? atomic_load(&s->unpriced) : atomic_load(&h->unpriced)));
        ENC_NKEY(b, "processes");
        enc_i64(b, (int64_t)(s ? atomic_load(&s->processes) : 1));
        buf_putc(b, '}');
        if (h->has_final & 1) {
            ENC_NKEY(b, "final_step");
            enc_i64(b, h->final_step);
        }
        if (h->has_final & 2) {
            ENC_NKEY(b, "final_loss");
            enc_double(b, h->final_loss);
        }
        if (h->energy) {
            energy_device_total d[ENERGY_MAX_DEVICES];
            int nd = energy_devices(h->energy, d, ENERGY_MAX_DEVICES);
            ENC_NKEY(b, "energy_j");
            put_device_map(b, d, nd, 0);
            ENC_NKEY(b, "energy_idle_j");
            put_device_map(b, d, nd, 1);
        }
        if (has_code) {
            ENC_NKEY(b, "exit_code");
            enc_i64(b, code);
        }
        buf_putc(b, '}');
        give_to_sinks(h, &ev, b);
    }
    commit(h, 1);
    for (int i = 0; i < h->n_sinks; i++)
        if (h->sinks[i].ops->close) h->sinks[i].ops->close(&h->sinks[i]);
    h->n_sinks = 0;
    h->memory = NULL;
    json_arena_free(&h->arena);
}
