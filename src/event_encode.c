/*
 * event_encode -- one JSON line per event, on the writer thread: the
 * toy/v1 shapes of docs/format.md (kind, t, ts, id first), the
 * request's named fields from src/fields.h, the caller's JSON checked and
 * re-encoded (never spliced), tally's own keys never written twice.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "internal.h"
#include "record.h"

static inline void put_str(buf *b, const void *base, rstr s)
{
    enc_str(b, (const char *)base + s.off, s.len);
}

/* The keys tally itself writes in a request's `extra`: the fields of
 * fields.h, and these.  A caller's extra_json cannot take them. */
static json_keyset own_keys;
static pthread_once_t own_keys_once = PTHREAD_ONCE_INIT;

static void own_keys_build(void)
{
    static const char *const own[] = {
        "stage_us", "cost_breakdown_nusd", "ok", "error", "degraded", "escalated", "fallback", "cache_hit",
        "ceiling_hit", "user_cap_hit", "sampling", "sampling_unparsed", "text", "truncated", "extra_unparsed",
    };
    int bad = 0;
    for (int i = 0; i < N_REQUEST_LABELS; i++) bad |= json_keyset_add(&own_keys, 0, tally_request_labels[i].key, 1);
    for (int i = 0; i < N_REQUEST_NUMBERS; i++) bad |= json_keyset_add(&own_keys, 0, tally_request_numbers[i].key, 1);
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) bad |= json_keyset_add(&own_keys, 0, own[i], 1);
    if (bad) abort(); /* the table outgrown: a build error, caught by every test */
}

static int request_key(const char *k, size_t n)
{
    pthread_once(&own_keys_once, own_keys_build);
    return json_keyset_find(&own_keys, 0, k, n) != 0;
}

/* Whether two members' names are the same as written ("caller_" before
 * a renamed one). */
static int same_name_written(const jv *a, int ra, const jv *b, int rb)
{
    if (a->keylen + (ra ? 7 : 0) != b->keylen + (rb ? 7 : 0)) return 0;
    if (ra == rb) return memcmp(a->key, b->key, a->keylen) == 0;
    const jv *r = ra ? a : b, *p = ra ? b : a; /* p's name must be "caller_" + r's */
    return memcmp(p->key, "caller_", 7) == 0 && memcmp(p->key + 7, r->key, r->keylen) == 0;
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
            /* Duplicates are looked for among the first DUP_WINDOW members
             * (a bound on the work; larger objects are rare). */
            enum { DUP_WINDOW = 256 };
            const jv *seen[DUP_WINDOW];
            unsigned char seen_renamed[DUP_WINDOW];
            int nseen = 0;
            for (const jv *e = v->child; e; e = e->next) {
                int renamed = request_key(e->key, e->keylen);
                if (renamed && e->keylen + 7 > 64) continue; /* cannot happen: tally's keys are short */
                int dup = 0;
                for (int k = 0; k < nseen && !dup; k++) dup = same_name_written(seen[k], seen_renamed[k], e, renamed);
                if (dup) {
                    tally__warn_once(h, &h->warned_dupkey,
                                     "extra_json has two members named \"%.*s\": the first is kept",
                                     (int)(e->keylen > 64 ? 64 : e->keylen), e->key);
                    continue;
                }
                if (nseen < DUP_WINDOW) {
                    seen[nseen] = e;
                    seen_renamed[nseen++] = (unsigned char)renamed;
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

void tally__encode_head(buf *b, const char *kind, size_t kind_len, const wev *ev)
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

static const char *const rq_names[RQ_NSTR] = {
#define X(SLOT, name, flags) #name,
    TALLY_REQUEST_LABELS(X)
#undef X
    "error", "degraded", "sampling", "text", "extra",
};

/* The request's numbers (fields.h) that are present: the required ones
 * (`required` 1) or the others.  Expanded from the list into straight-line
 * code (every test on a field's flags is a constant): this is per event. */
static inline void enc_number_i64(buf *b, int64_t v) { enc_i64(b, v); }
static inline void enc_number_f64(buf *b, double v) { enc_double(b, v); }
#define NUMBER_PRESENT(v, present, flags)                                                                         \
    ((present) == FLD_ALWAYS ? 1 : (present) == FLD_POSITIVE ? (v) > 0 : ((flags) & (present)) != 0)
static void put_numbers(buf *b, const rec_request *q, int required)
{
#define PUT_NUMBER(key, api, rec, type, present, rowm, rowbit, fl)                                                \
    if (!((fl) & FLD_REQUIRED) == !required && NUMBER_PRESENT(q->rec, present, q->flags)) {                        \
        buf_put(b, ",\"" #key "\":", sizeof(",\"" #key "\":") - 1);                                                 \
        _Generic(q->rec, double: enc_number_f64, default: enc_number_i64)(b, q->rec);                                \
    }
    TALLY_REQUEST_NUMBERS(PUT_NUMBER)
#undef PUT_NUMBER
}

static void enc_request(struct tally *h, buf *b, const wev *ev)
{
    const rec_request *q = ev->payload;
    const rstr *s = q->s;
    tally__encode_head(b, "eval", 4, ev);
    buf_put(b, ",\"phase\":\"serve\",\"name\":\"request\",\"extra\":{\"model\":", 51);
    put_str(b, q, s[RQ_MODEL]);
    put_numbers(b, q, 1); /* the required numbers lead */
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
    put_numbers(b, q, 0);
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
    tally__encode_head(b, "step", 4, ev);
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
    tally__encode_head(b, "epoch", 5, ev);
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
    tally__encode_head(b, "eval", 4, ev);
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
    tally__encode_head(b, "error", 5, ev);
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
    tally__encode_head(b, "note", 4, ev);
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
    tally__encode_head(b, base + e->kind.off, e->kind.len, ev);
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
    tally__encode_head(b, "run_start", 9, ev);
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

void tally__encode_event(struct tally *h, buf *b, const wev *ev)
{
    switch (ev->type) {
    case REC_REQUEST: enc_request(h, b, ev); break;
    case REC_STEP: enc_step(h, b, ev); break;
    case REC_EPOCH: enc_epoch(h, b, ev); break;
    case REC_EVAL: enc_eval(h, b, ev); break;
    case REC_ERROR: enc_error(h, b, ev); break;
    case REC_NOTE: enc_note(h, b, ev); break;
    case REC_EVENT: enc_event(h, b, ev); break;
    case WEV_RUN_START: enc_run_start(h, b, ev); break;
    default: break;
    }
}
