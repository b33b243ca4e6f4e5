/*
 * row -- lines to rows (see row.h).
 *
 * One pass over each object: every member's key is matched once against
 * the keys this reader knows, so a line costs the same whatever order its
 * keys come in, and an unknown key costs one comparison.
 */
#include "row.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "record.h"

void row_clear(row *r) { memset(r, 0, sizeof *r); }

size_t row_strings(row *r, sv *out[ROW_MAX_STRINGS])
{
    size_t n = 0;
    out[n++] = &r->id;
    out[n++] = &r->run_id;
    out[n++] = &r->kind;
    out[n++] = &r->phase;
    out[n++] = &r->name;
    for (int i = 0; i < N_REQUEST_LABELS; i++) out[n++] = FIELD_SV(r, &tally_request_labels[i]);
    out[n++] = &r->error;
    out[n++] = &r->degraded;
    out[n++] = &r->text;
    out[n++] = &r->json;
    out[n++] = &r->reason;
    out[n++] = &r->run_model;
    return n;
}

int row_batch_add(row_batch *b, const row *r)
{
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 1024;
        row *nr = realloc(b->rows, nc * sizeof *nr);
        if (!nr) return -1;
        b->rows = nr;
        b->cap = nc;
    }
    sv *fields[ROW_MAX_STRINGS];
    b->rows[b->n] = *r;
    size_t nf = row_strings(&b->rows[b->n], fields), need = 0;
    for (size_t i = 0; i < nf; i++)
        if (fields[i]->p) need += fields[i]->n;
    if (buf_reserve(&b->bytes, need)) {
        b->bytes.failed = 0;
        return -1;
    }
    /* Offsets now (+1, so that 0 stays "absent"), pointers in row_batch_fix. */
    for (size_t i = 0; i < nf; i++) {
        if (!fields[i]->p) continue;
        memcpy(b->bytes.p + b->bytes.len, fields[i]->p, fields[i]->n);
        fields[i]->p = (const char *)(uintptr_t)(b->bytes.len + 1);
        b->bytes.len += fields[i]->n;
    }
    b->n++;
    return 0;
}

void row_batch_fix(row_batch *b)
{
    for (size_t k = 0; k < b->n; k++) {
        sv *fields[ROW_MAX_STRINGS];
        size_t nf = row_strings(&b->rows[k], fields);
        for (size_t i = 0; i < nf; i++)
            if (fields[i]->p) fields[i]->p = b->bytes.p + ((uintptr_t)fields[i]->p - 1);
    }
}

void row_batch_clear(row_batch *b)
{
    b->n = 0;
    buf_reset(&b->bytes);
}

void row_batch_free(row_batch *b)
{
    free(b->rows);
    b->rows = NULL;
    b->n = b->cap = 0;
    buf_free(&b->bytes);
}

void row_ctx_init(row_ctx *c, const char *run_id)
{
    memset(c, 0, sizeof *c);
    snprintf(c->run_id, sizeof c->run_id, "%s", run_id ? run_id : "");
}

void row_take_run_model(row *r, const char *run_model, const char *run_phase)
{
    /* Requests (the most rows) carry their own model: nothing to do. */
    if (r->model.p || !run_model || !*run_model) return;
    int training = SV_IS(r->kind, "step") || SV_IS(r->kind, "epoch") || (SV_IS(r->kind, "eval") && !row_is_request(r)) ||
                   (SV_IS(r->kind, "error") && (!strcmp(run_phase, "train") || SV_IS(r->phase, "train")));
    if (training) r->model = (sv){run_model, strlen(run_model)};
}

/* The members of a line that rows use, each by a slot: those of the line's
 * object, of its `model` and `context` objects, and of a request's
 * `extra` (the named fields and numbers of fields.h by their index).
 * The same slots serve a parsed tree (scan_tree) and a parse that builds
 * only these members (row_from_line), so both read a line alike. */
enum {
    S_NONE, S_KIND, S_TAG, S_TS, S_T, S_ID, S_PHASE, S_NAME, S_RUN_ID, S_STARTED_AT, S_MODEL, S_REASON, S_EXTRA,
    S_STEP, S_LOSS, S_LR, S_WALL_US, S_TOKENS, S_UNFINISHED, S_TYPE, S_MESSAGE, S_REQUEST_ID, S_CONTEXT,
    S_MODEL_NAME, S_CONTEXT_LOSS,                   /* model.name, context.loss */
    S_X_OK, S_X_TEXT, S_X_ERROR, S_X_DEGRADED,      /* in extra */
    S_X_FIELD,                                      /* + the field's index: labels, then numbers (fields.h) */
    S_COUNT = S_X_FIELD + N_REQUEST_LABELS + N_REQUEST_NUMBERS
};

typedef struct parts {
    const jv *m[S_COUNT];  /* the first member of each slot (duplicate keys: the first wins, as with jv_get) */
} parts;

/* Where each key a row reads lives: (where, key) -> slot, in one open
 * hash table built once.  `where` is the object a member is in: the
 * line's own (W_TOP) or its extra/model/context object. */
enum { W_TOP, W_EXTRA, W_MODEL, W_CONTEXT };

_Static_assert(S_COUNT <= 255, "slots fit a keyset's slot");

static json_keyset keytab;
static pthread_once_t keytab_once = PTHREAD_ONCE_INIT;

static void key_add(int where, const char *k, int slot)
{
    if (json_keyset_add(&keytab, where, k, slot)) abort(); /* the table outgrown: a build error, caught by every test */
}

static void keytab_build(void)
{
    static const struct { const char *k; int slot; } top[] = {
        {"t", S_T}, {"ts", S_TS}, {"id", S_ID}, {"lr", S_LR}, {"tag", S_TAG}, {"kind", S_KIND},
        {"name", S_NAME}, {"step", S_STEP}, {"loss", S_LOSS}, {"type", S_TYPE}, {"phase", S_PHASE},
        {"model", S_MODEL}, {"extra", S_EXTRA}, {"run_id", S_RUN_ID}, {"reason", S_REASON},
        {"tokens", S_TOKENS}, {"wall_us", S_WALL_US}, {"message", S_MESSAGE}, {"context", S_CONTEXT},
        {"started_at", S_STARTED_AT}, {"request_id", S_REQUEST_ID}, {"unfinished", S_UNFINISHED},
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) key_add(W_TOP, top[i].k, top[i].slot);
    key_add(W_EXTRA, "ok", S_X_OK);
    key_add(W_EXTRA, "text", S_X_TEXT);
    key_add(W_EXTRA, "error", S_X_ERROR);
    key_add(W_EXTRA, "degraded", S_X_DEGRADED);
    for (int i = 0; i < N_REQUEST_LABELS; i++) key_add(W_EXTRA, tally_request_labels[i].key, S_X_FIELD + i);
    for (int i = 0; i < N_REQUEST_NUMBERS; i++)
        key_add(W_EXTRA, tally_request_numbers[i].key, S_X_FIELD + N_REQUEST_LABELS + i);
    key_add(W_MODEL, "name", S_MODEL_NAME);
    key_add(W_CONTEXT, "loss", S_CONTEXT_LOSS);
}

/* The kind of an object at `depth` inside slot `pslot`, or -1 when no
 * member of it is read. */
static int where_of(int depth, int pslot)
{
    if (depth == 1) return W_TOP;
    if (depth != 2) return -1;
    if (pslot == S_EXTRA) return W_EXTRA;
    if (pslot == S_MODEL) return W_MODEL;
    if (pslot == S_CONTEXT) return W_CONTEXT;
    return -1;
}

/* The slot of member `k` of an object at `depth` inside slot `pslot`. */
static int slot_of(int depth, int pslot, const char *k, size_t n)
{
    int where = where_of(depth, pslot);
    return where < 0 ? 0 : json_keyset_find(&keytab, where, k, n);
}

static void take(parts *t, int slot, const jv *v)
{
    if (!t->m[slot]) t->m[slot] = v;
}

static void scan_object(parts *t, const jv *obj, int depth, int pslot)
{
    for (const jv *e = obj->child; e; e = e->next) {
        int s = slot_of(depth, pslot, e->key, e->keylen);
        if (s) take(t, s, e);
    }
}

/* A whole tree's members into their slots. */
static void scan_tree(const jv *obj, parts *t)
{
    memset(t, 0, sizeof *t);
    scan_object(t, obj, 1, 0);
    if (t->m[S_EXTRA] && t->m[S_EXTRA]->type == JV_OBJ) scan_object(t, t->m[S_EXTRA], 2, S_EXTRA);
    if (t->m[S_MODEL] && t->m[S_MODEL]->type == JV_OBJ) scan_object(t, t->m[S_MODEL], 2, S_MODEL);
    if (t->m[S_CONTEXT] && t->m[S_CONTEXT]->type == JV_OBJ) scan_object(t, t->m[S_CONTEXT], 2, S_CONTEXT);
}

/* json_parse_keep's questions: a slot not yet taken is built. */
static int want(void *ud, int depth, int pslot, const char *k, size_t n)
{
    parts *t = ud;
    int s = slot_of(depth, pslot, k, n);
    return s && !t->m[s] ? s : 0;
}

static void got(void *ud, int slot, const jv *v) { take(ud, slot, v); }

static void forget(void *ud) { memset(ud, 0, sizeof(parts)); }

static sv str(const jv *v)
{
    if (!v || v->type != JV_STR) return (sv){NULL, 0};
    return (sv){v->s, v->n};
}

static int num(const jv *v, double *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = jv_num(v, 0);
    return 1;
}

static int inum(const jv *v, int64_t *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = jv_int(v, 0);
    return 1;
}

static void set_ts(row *r, double ts)
{
    if (ts >= 0 && ts < ROW_TS_MAX) {
        r->ts = ts;
        r->has |= ROW_TS;
    }
}

static void request_fields(const parts *t, row *r)
{
    const jv *const *f = &t->m[S_X_FIELD];
    for (int i = 0; i < N_REQUEST_LABELS; i++) *FIELD_SV(r, &tally_request_labels[i]) = str(f[i]);
    r->error = str(t->m[S_X_ERROR]);
    r->degraded = str(t->m[S_X_DEGRADED]);
    r->text = str(t->m[S_X_TEXT]);
    for (int i = 0; i < N_REQUEST_NUMBERS; i++) {
        const number_def *d = &tally_request_numbers[i];
        void *m = (char *)r + d->row_off;
        const jv *x = f[N_REQUEST_LABELS + i];
        int has = d->row_type == FLD_I64 ? inum(x, m) : num(x, m);
        if (has) r->has |= d->rowbit;
    }
    /* toy/v1 producers before `ok` existed: a request with an error failed. */
    const jv *ok = t->m[S_X_OK];
    if (ok && (ok->type == JV_TRUE || ok->type == JV_FALSE)) r->ok = ok->type == JV_TRUE;
    else r->ok = r->error.p == NULL;
    r->has |= ROW_OK;
}

/* TelemetryLogger: {"ts":..,"tag":"step_end","step":N,"context":{..}} */
static int from_tag(const parts *t, row_ctx *c, row *r)
{
    sv tag = str(t->m[S_TAG]);
    if (SV_IS(tag, "step_end")) r->kind = SV_LIT("step");
    else if (SV_IS(tag, "epoch_end")) r->kind = SV_LIT("epoch");
    else r->kind = tag; /* step_begin, epoch_begin, error, and anything else as is */
    if ((tag.n >= 4 && !memcmp(tag.p, "step", 4)) || (tag.n >= 5 && !memcmp(tag.p, "epoch", 5)))
        r->phase = SV_LIT("train");
    if (inum(t->m[S_STEP], &r->step)) r->has |= ROW_STEP;
    double loss;
    if (num(t->m[S_CONTEXT_LOSS], &loss)) {
        r->loss = loss;
        r->has |= ROW_LOSS;
    }
    if (SV_IS(tag, "step_begin")) {
        c->have_begin = (r->has & ROW_STEP) && (r->has & ROW_TS);
        c->begin_step = r->step;
        c->begin_ts = r->ts;
    } else if (SV_IS(tag, "step_end")) {
        /* Its wall time: from the step_begin of the same step just before. */
        if (c->have_begin && (r->has & ROW_STEP) && c->begin_step == r->step && (r->has & ROW_TS)) {
            r->wall_us = (r->ts - c->begin_ts) * 1e6;
            r->has |= ROW_WALL;
        }
        c->have_begin = 0;
    } else if (SV_IS(tag, "error")) {
        r->name = str(t->m[S_TYPE]);
        r->error = str(t->m[S_MESSAGE]);
    }
    return 1;
}

/* The run an id's tag names, or NULL. */
static row_run *run_of(row_ctx *c, sv id)
{
    if (!id.p || id.n != TALLY_ID_LEN) return NULL;
    for (int i = 0; i < c->nruns; i++)
        if (memcmp(c->runs[i].tag, id.p, TALLY_ID_RUN) == 0) return &c->runs[i];
    return NULL;
}

/* Remembers a run_start's tag (the oldest is forgotten past ROW_CTX_RUNS). */
static row_run *run_add(row_ctx *c, sv id)
{
    row_run *x = run_of(c, id);
    if (x) return x;
    if (!id.p || id.n != TALLY_ID_LEN) return NULL;
    if (c->nruns < ROW_CTX_RUNS) x = &c->runs[c->nruns++];
    else x = &c->runs[c->evict++ % ROW_CTX_RUNS];
    memcpy(x->tag, id.p, TALLY_ID_RUN);
    x->tag[TALLY_ID_RUN] = 0;
    return x;
}

/* One line's members, by slot, into r. */
static int from_parts(const parts *t, row_ctx *c, row *r)
{
    double x;
    if (num(t->m[S_TS], &x)) set_ts(r, x);
    r->run_id = (sv){c->run_id, strlen(c->run_id)};
    sv kind = str(t->m[S_KIND]);
    if (!kind.p) {
        if (!str(t->m[S_TAG]).p) return 0;
        return from_tag(t, c, r);
    }
    r->kind = kind;
    r->phase = str(t->m[S_PHASE]);
    r->name = str(t->m[S_NAME]);
    r->id = str(t->m[S_ID]);
    row_run *run = SV_IS(kind, "run_start") ? NULL : run_of(c, r->id);
    if (run) r->run_id = (sv){run->run_id, strlen(run->run_id)};
    if (inum(t->m[S_STEP], &r->step)) r->has |= ROW_STEP;
    if (num(t->m[S_LOSS], &r->loss)) r->has |= ROW_LOSS;
    if (SV_IS(kind, "run_start")) {
        sv rid = str(t->m[S_RUN_ID]);
        if (rid.p) {
            snprintf(c->run_id, sizeof c->run_id, "%.*s", (int)rid.n, rid.p);
            r->run_id = (sv){c->run_id, strlen(c->run_id)};
        }
        if (r->has & ROW_TS) {
            c->started = r->ts;
            c->have_started = 1;
        } else if (t->m[S_STARTED_AT] && t->m[S_STARTED_AT]->type == JV_STR && iso8601_parse(t->m[S_STARTED_AT]->s, &x) == 0) {
            c->started = x;
            c->have_started = 1;
        } else {
            c->have_started = 0;
        }
        row_run *nr = run_add(c, r->id);
        if (nr) {
            memcpy(nr->run_id, c->run_id, sizeof nr->run_id);
            nr->started = c->started;
            nr->have_started = c->have_started;
        }
        r->run_model = t->m[S_MODEL] && t->m[S_MODEL]->type == JV_OBJ ? str(t->m[S_MODEL_NAME]) : str(t->m[S_MODEL]);
        snprintf(c->model, sizeof c->model, "%.*s", r->run_model.n < sizeof c->model ? (int)r->run_model.n : 0,
                 r->run_model.p ? r->run_model.p : "");
        snprintf(c->phase, sizeof c->phase, "%.*s", r->phase.n < sizeof c->phase ? (int)r->phase.n : 0,
                 r->phase.p ? r->phase.p : "");
        if (nr) {
            memcpy(nr->model, c->model, sizeof nr->model);
            memcpy(nr->phase, c->phase, sizeof nr->phase);
        }
    } else if (SV_IS(kind, "run_end")) {
        r->reason = str(t->m[S_REASON]);
    }
    /* toy/v1 without ts: the run's start plus t (an integer for tep). */
    if (!(r->has & ROW_TS) && num(t->m[S_T], &x)) {
        if (run && run->have_started) set_ts(r, run->started + x);
        else if (!run && c->have_started) set_ts(r, c->started + x);
    }
    if (SV_IS(kind, "eval") && SV_IS(r->name, "request") && t->m[S_EXTRA] && t->m[S_EXTRA]->type == JV_OBJ) {
        request_fields(t, r);
    } else if (SV_IS(kind, "step") || SV_IS(kind, "epoch")) {
        /* An unfinished span's wall time is only how long it had run. */
        if (!t->m[S_UNFINISHED] && num(t->m[S_WALL_US], &r->wall_us)) r->has |= ROW_WALL;
        if (SV_IS(kind, "step") && inum(t->m[S_TOKENS], &r->step_tokens)) r->has |= ROW_STEP_TOKENS;
        if (SV_IS(kind, "step") && num(t->m[S_LR], &r->lr)) r->has |= ROW_LR;
        /* tally writes a NaN or infinite loss as null: a diverged step. */
        if (SV_IS(kind, "step") && t->m[S_LOSS] && t->m[S_LOSS]->type == JV_NULL) r->has |= ROW_LOSS_NONFINITE;
    } else if (SV_IS(kind, "error")) {
        r->name = str(t->m[S_TYPE]);
        r->error = str(t->m[S_MESSAGE]);
        r->request_id = str(t->m[S_REQUEST_ID]);
    }
    if (SV_IS(kind, "run_start")) return 1;
    if (run) row_take_run_model(r, run->model, run->phase);
    else row_take_run_model(r, c->model, c->phase);
    return 1;
}

int row_from_json(const jv *v, row_ctx *c, row *r)
{
    row_clear(r);
    if (!v || v->type != JV_OBJ) return 0;
    pthread_once(&keytab_once, keytab_build);
    parts t;
    scan_tree(v, &t);
    return from_parts(&t, c, r);
}

int row_from_line(json_arena *a, char *line, size_t len, int copy, row_ctx *c, row *r, const jv **root,
                  json_error *err)
{
    row_clear(r);
    pthread_once(&keytab_once, keytab_build);
    parts t;
    memset(&t, 0, sizeof t);
    json_keep k = {.want = want, .got = got, .reset = forget, .ud = &t, .copy = copy,
                   .keys = &keytab, .where = where_of, .slots = t.m};
    const jv *v = json_parse_keep(a, line, len, &k, err);
    *root = v;
    if (!v || v->type != JV_OBJ) return 0;
    return from_parts(&t, c, r);
}
