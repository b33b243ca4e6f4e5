/*
 * row -- lines to rows (see row.h).
 *
 * One pass over each object: every member's key is matched once against
 * the keys this reader knows, so a line costs the same whatever order its
 * keys come in, and an unknown key costs one comparison.
 */
#include "row.h"

#include <stdio.h>
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
    return n;
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

/* The members a top-level line may have that rows use. */
typedef struct top {
    const jv *kind, *tag, *ts, *t, *id, *phase, *name, *run_id, *started_at, *model, *reason, *extra;
    const jv *step, *loss, *lr, *wall_us, *tokens, *unfinished, *type, *message, *request_id, *context;
} top;

/* The members of a request's `extra` that rows use. */
typedef struct xtra {
    const jv *label[RQ_NLABELS];   /* the named fields (fields.h), by slot */
    const jv *number[N_REQUEST_NUMBERS];  /* the numbers (fields.h), in their order */
    const jv *error, *degraded, *text, *ok;
} xtra;

/* The first of duplicate keys wins, as with jv_get(). */
#define TAKE(slot) do { if (!(slot)) (slot) = e; } while (0)
#define KEY(e, lit) ((e)->keylen == sizeof(lit) - 1 && memcmp((e)->key, lit, sizeof(lit) - 1) == 0)

static void scan_top(const jv *obj, top *o)
{
    memset(o, 0, sizeof *o);
    for (const jv *e = obj->child; e; e = e->next) {
        switch (e->keylen) {
        case 1: if (e->key[0] == 't') TAKE(o->t); break;
        case 2:
            if (KEY(e, "ts")) TAKE(o->ts);
            else if (KEY(e, "id")) TAKE(o->id);
            else if (KEY(e, "lr")) TAKE(o->lr);
            break;
        case 3: if (KEY(e, "tag")) TAKE(o->tag); break;
        case 4:
            if (KEY(e, "kind")) TAKE(o->kind);
            else if (KEY(e, "name")) TAKE(o->name);
            else if (KEY(e, "step")) TAKE(o->step);
            else if (KEY(e, "loss")) TAKE(o->loss);
            else if (KEY(e, "type")) TAKE(o->type);
            break;
        case 5:
            if (KEY(e, "phase")) TAKE(o->phase);
            else if (KEY(e, "model")) TAKE(o->model);
            else if (KEY(e, "extra")) TAKE(o->extra);
            break;
        case 6:
            if (KEY(e, "run_id")) TAKE(o->run_id);
            else if (KEY(e, "reason")) TAKE(o->reason);
            else if (KEY(e, "tokens")) TAKE(o->tokens);
            break;
        case 7:
            if (KEY(e, "wall_us")) TAKE(o->wall_us);
            else if (KEY(e, "message")) TAKE(o->message);
            else if (KEY(e, "context")) TAKE(o->context);
            break;
        case 10:
            if (KEY(e, "started_at")) TAKE(o->started_at);
            else if (KEY(e, "request_id")) TAKE(o->request_id);
            else if (KEY(e, "unfinished")) TAKE(o->unfinished);
            break;
        default: break;
        }
    }
}

static void scan_extra(const jv *obj, xtra *x)
{
    memset(x, 0, sizeof *x);
    for (const jv *e = obj->child; e; e = e->next) {
        switch (e->keylen) {
        case 2: if (KEY(e, "ok")) { TAKE(x->ok); continue; } break;
        case 4: if (KEY(e, "text")) { TAKE(x->text); continue; } break;
        case 5: if (KEY(e, "error")) { TAKE(x->error); continue; } break;
        case 8: if (KEY(e, "degraded")) { TAKE(x->degraded); continue; } break;
        default: break;
        }
        /* The named fields and numbers (fields.h). */
        int idx = request_key_index(e->key, e->keylen);
        if (idx < 0) continue;
        if (idx < N_REQUEST_LABELS) TAKE(x->label[tally_request_labels[idx].slot]);
        else TAKE(x->number[idx - N_REQUEST_LABELS]);
    }
}

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

static void request_fields(const jv *extra, row *r)
{
    xtra x;
    scan_extra(extra, &x);
    for (int i = 0; i < N_REQUEST_LABELS; i++)
        *FIELD_SV(r, &tally_request_labels[i]) = str(x.label[tally_request_labels[i].slot]);
    r->error = str(x.error);
    r->degraded = str(x.degraded);
    r->text = str(x.text);
    for (int i = 0; i < N_REQUEST_NUMBERS; i++) {
        const number_def *f = &tally_request_numbers[i];
        void *m = (char *)r + f->row_off;
        int got = f->row_type == FLD_I64 ? inum(x.number[i], m) : num(x.number[i], m);
        if (got) r->has |= f->rowbit;
    }
    /* toy/v1 producers before `ok` existed: a request with an error failed. */
    if (x.ok && (x.ok->type == JV_TRUE || x.ok->type == JV_FALSE)) r->ok = x.ok->type == JV_TRUE;
    else r->ok = r->error.p == NULL;
    r->has |= ROW_OK;
}

/* TelemetryLogger: {"ts":..,"tag":"step_end","step":N,"context":{..}} */
static int from_tag(const top *o, row_ctx *c, row *r)
{
    sv tag = str(o->tag);
    if (SV_IS(tag, "step_end")) r->kind = SV_LIT("step");
    else if (SV_IS(tag, "epoch_end")) r->kind = SV_LIT("epoch");
    else r->kind = tag; /* step_begin, epoch_begin, error, and anything else as is */
    if ((tag.n >= 4 && !memcmp(tag.p, "step", 4)) || (tag.n >= 5 && !memcmp(tag.p, "epoch", 5)))
        r->phase = SV_LIT("train");
    if (inum(o->step, &r->step)) r->has |= ROW_STEP;
    double loss;
    if (o->context && num(jv_getn(o->context, "loss", 4), &loss)) {
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
        r->name = str(o->type);
        r->error = str(o->message);
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

int row_from_json(const jv *v, row_ctx *c, row *r)
{
    row_clear(r);
    if (!v || v->type != JV_OBJ) return 0;
    top o;
    scan_top(v, &o);
    double x;
    if (num(o.ts, &x)) set_ts(r, x);
    r->run_id = (sv){c->run_id, strlen(c->run_id)};
    sv kind = str(o.kind);
    if (!kind.p) {
        if (!str(o.tag).p) return 0;
        return from_tag(&o, c, r);
    }
    r->kind = kind;
    r->phase = str(o.phase);
    r->name = str(o.name);
    r->id = str(o.id);
    row_run *run = SV_IS(kind, "run_start") ? NULL : run_of(c, r->id);
    if (run) r->run_id = (sv){run->run_id, strlen(run->run_id)};
    if (inum(o.step, &r->step)) r->has |= ROW_STEP;
    if (num(o.loss, &r->loss)) r->has |= ROW_LOSS;
    if (SV_IS(kind, "run_start")) {
        sv rid = str(o.run_id);
        if (rid.p) {
            snprintf(c->run_id, sizeof c->run_id, "%.*s", (int)rid.n, rid.p);
            r->run_id = (sv){c->run_id, strlen(c->run_id)};
        }
        if (r->has & ROW_TS) {
            c->started = r->ts;
            c->have_started = 1;
        } else if (o.started_at && o.started_at->type == JV_STR && iso8601_parse(o.started_at->s, &x) == 0) {
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
        r->run_model = o.model && o.model->type == JV_OBJ ? str(jv_getn(o.model, "name", 4)) : str(o.model);
        snprintf(c->model, sizeof c->model, "%.*s", r->run_model.n < sizeof c->model ? (int)r->run_model.n : 0,
                 r->run_model.p ? r->run_model.p : "");
        snprintf(c->phase, sizeof c->phase, "%.*s", r->phase.n < sizeof c->phase ? (int)r->phase.n : 0,
                 r->phase.p ? r->phase.p : "");
        if (nr) {
            memcpy(nr->model, c->model, sizeof nr->model);
            memcpy(nr->phase, c->phase, sizeof nr->phase);
        }
    } else if (SV_IS(kind, "run_end")) {
        r->reason = str(o.reason);
    }
    /* toy/v1 without ts: the run's start plus t (an integer for tep). */
    if (!(r->has & ROW_TS) && num(o.t, &x)) {
        if (run && run->have_started) set_ts(r, run->started + x);
        else if (!run && c->have_started) set_ts(r, c->started + x);
    }
    if (SV_IS(kind, "eval") && SV_IS(r->name, "request") && o.extra && o.extra->type == JV_OBJ) {
        request_fields(o.extra, r);
    } else if (SV_IS(kind, "step") || SV_IS(kind, "epoch")) {
        /* An unfinished span's wall time is only how long it had run. */
        if (!o.unfinished && num(o.wall_us, &r->wall_us)) r->has |= ROW_WALL;
        if (SV_IS(kind, "step") && inum(o.tokens, &r->step_tokens)) r->has |= ROW_STEP_TOKENS;
        if (SV_IS(kind, "step") && num(o.lr, &r->lr)) r->has |= ROW_LR;
        /* tally writes a NaN or infinite loss as null: a diverged step. */
        if (SV_IS(kind, "step") && o.loss && o.loss->type == JV_NULL) r->has |= ROW_LOSS_NONFINITE;
    } else if (SV_IS(kind, "error")) {
        r->name = str(o.type);
        r->error = str(o.message);
        r->request_id = str(o.request_id);
    }
    if (SV_IS(kind, "run_start")) return 1;
    if (run) row_take_run_model(r, run->model, run->phase);
    else row_take_run_model(r, c->model, c->phase);
    return 1;
}
