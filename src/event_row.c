/*
 * event_row -- the row of an event, built once by the writer for the
 * sinks that store rows (the database): from the ring record, or for
 * run_start / run_end from the handle's own fields.  The row's strings
 * point into the record and the handle; `json` is set by the writer to
 * the line it encoded.
 */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "record.h"
#include "row.h"

static sv rs(const void *base, rstr r)
{
    if (!r.off) return (sv){NULL, 0};
    return (sv){(const char *)base + r.off, r.len};
}

void tally__row_of_event(struct tally *h, const wev *ev, row *r)
{
    row_clear(r);
    r->ts = (double)ev->ts_us / 1e6;
    r->has = ROW_TS;
    r->run_id = (sv){h->run_id, strlen(h->run_id)};
    switch (ev->type) {
    case REC_REQUEST: {
        const rec_request *q = ev->payload;
        r->kind = SV_LIT("eval");
        r->phase = SV_LIT("serve");
        r->name = SV_LIT("request");
        for (int i = 0; i < N_REQUEST_LABELS; i++)
            *FIELD_SV(r, &tally_request_labels[i]) = rs(q, q->s[tally_request_labels[i].slot]);
        r->error = rs(q, q->s[RQ_ERROR]);
        r->degraded = rs(q, q->s[RQ_DEGRADED]);
        r->text = rs(q, q->s[RQ_TEXT]);
        r->ok = !q->s[RQ_ERROR].off && !(q->flags & TALLY_FAILED);
        /* The numbers (fields.h), expanded from the list: per event. */
#define ROW_NUMBER(key, api, rec, type, present, rowm, rowbit, fl)                                                 \
    if ((present) == FLD_ALWAYS || ((present) == FLD_POSITIVE ? q->rec > 0 : (q->flags & (present)) != 0)) {     \
        r->rowm = q->rec;                                                                                         \
        r->has |= (rowbit);                                                                                       \
    }
        TALLY_REQUEST_NUMBERS(ROW_NUMBER)
#undef ROW_NUMBER
        r->has |= ROW_OK;
        break;
    }
    case REC_STEP: {
        const rec_step *st = ev->payload;
        r->kind = SV_LIT("step");
        r->phase = SV_LIT("train");
        r->step = st->step;
        r->has |= ROW_STEP;
        if (st->present & TALLY_HAS_LOSS) {
            if (isfinite(st->loss)) { r->loss = st->loss; r->has |= ROW_LOSS; }
            else r->has |= ROW_LOSS_NONFINITE;
        }
        if (!st->unfinished && st->wall_us >= 0) { r->wall_us = (double)st->wall_us; r->has |= ROW_WALL; }
        if (st->present & TALLY_HAS_TOKENS) { r->step_tokens = st->tokens; r->has |= ROW_STEP_TOKENS; }
        if (st->present & TALLY_HAS_LR) { r->lr = st->lr; r->has |= ROW_LR; }
        break;
    }
    case REC_EPOCH: {
        const rec_epoch *e = ev->payload;
        r->kind = SV_LIT("epoch");
        r->phase = SV_LIT("train");
        if (!e->unfinished && e->wall_us >= 0) { r->wall_us = (double)e->wall_us; r->has |= ROW_WALL; }
        break;
    }
    case REC_EVAL: {
        const rec_eval *e = ev->payload;
        r->kind = SV_LIT("eval");
        r->phase = SV_LIT("eval");
        r->name = e->name.off ? rs(e, e->name) : SV_LIT("eval");
        if (e->loss == e->loss) { r->loss = e->loss; r->has |= ROW_LOSS; }
        break;
    }
    case REC_ERROR: {
        const rec_error *e = ev->payload;
        r->kind = SV_LIT("error");
        r->name = rs(e, e->type);
        r->error = rs(e, e->message);
        r->phase = rs(e, e->phase);
        r->request_id = rs(e, e->request_id);
        if (e->step >= 0) { r->step = e->step; r->has |= ROW_STEP; }
        break;
    }
    case REC_NOTE:
        r->kind = SV_LIT("note");
        break;
    case REC_EVENT: {
        const rec_event *e = ev->payload;
        r->kind = rs(e, e->kind);
        break;
    }
    case WEV_RUN_START:
        /* From the handle's own fields: nothing is parsed back. */
        r->kind = SV_LIT("run_start");
        r->phase = (sv){h->phase, strlen(h->phase)};
        r->run_model = (sv){h->model, strlen(h->model)};
        break;
    case WEV_RUN_END:
        r->kind = SV_LIT("run_end");
        r->reason = (sv){h->end_reason, strlen(h->end_reason)};
        break;
    default:
        break;
    }
    r->id = (sv){ev->id, strlen(ev->id)};
    row_take_run_model(r, h->model, h->phase);
}

