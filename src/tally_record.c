/*
 * tally_record -- the recording calls: requests, steps and epochs (with
 * their spans), evals, errors, notes, generic events.
 *
 * The recording path is:  find this thread's ring (a thread-local cache
 * hit: one compare), measure the caller's strings, reserve the record,
 * copy, publish.  No lock, no allocation, no system call.  The first event
 * of a thread allocates its ring (and touches every page of it); a thread
 * that cannot get one has its events dropped and counted.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "energy.h"
#include "record.h"

/* Thread-local ring cache: slot 0 is the most recently used handle. */
#define TLS_SLOTS 8

typedef struct tls_slot {
    uint64_t id;
    ring *r;
} tls_slot;

/* initial-exec: a plain %fs-relative load even in the shared library (the
 * 128 bytes fit the static TLS that glibc keeps for dlopen()ed code). */
static _Thread_local tls_slot tls_cache[TLS_SLOTS] __attribute__((tls_model("initial-exec")));

static pthread_key_t tls_key;


static void tls_thread_exit(void *arg)
{
    (void)arg;
    for (int i = 0; i < TLS_SLOTS; i++) {
        ring *r = tls_cache[i].r;
        if (!r) continue;
        atomic_store_explicit(&r->thread_gone, 1, memory_order_release);
        tls_cache[i].r = NULL;
        tls_cache[i].id = 0;
        ring_release(r);
    }
}

void tally__tls_init(void) { pthread_key_create(&tls_key, tls_thread_exit); }

int tally__tls_owns(ring *r)
{
    for (int i = 0; i < TLS_SLOTS; i++)
        if (tls_cache[i].r == r) return 1;
    return 0;
}

static ring *ring_for_thread_slow(tally_t *h)
{
    for (int i = 1; i < TLS_SLOTS; i++) {
        if (tls_cache[i].id == h->id && tls_cache[i].r) {
            tls_slot s = tls_cache[i];
            memmove(&tls_cache[1], &tls_cache[0], sizeof(tls_slot) * (size_t)i);
            tls_cache[0] = s;
            return s.r;
        }
    }
    pthread_mutex_lock(&h->mu);
    ring *r = NULL;
    if (h->n_rings < h->max_threads) {
        r = ring_new(h->queue_bytes);
        if (r && h->is_child) tally__mirror_ring(h->shared, r);
        if (r) {
            r->next = atomic_load(&h->rings);
            atomic_store_explicit(&h->rings, r, memory_order_release);
            h->n_rings++;
        }
    }
    pthread_mutex_unlock(&h->mu);
    if (!r) return NULL;
    /* Evict the least recently used slot: that thread-handle pair gets a
     * new ring if it records again; the old one is drained and kept. */
    if (tls_cache[TLS_SLOTS - 1].r) {
        ring *old = tls_cache[TLS_SLOTS - 1].r;
        atomic_store(&old->thread_gone, 1);
        ring_release(old);
    }
    memmove(&tls_cache[1], &tls_cache[0], sizeof(tls_slot) * (TLS_SLOTS - 1));
    tls_cache[0].id = h->id;
    tls_cache[0].r = r;
    pthread_setspecific(tls_key, tls_cache); /* arms the exit destructor */
    return r;
}

static inline ring *ring_for_thread(tally_t *h)
{
    if (__builtin_expect(tls_cache[0].id == h->id, 1)) return tls_cache[0].r;
    return ring_for_thread_slow(h);
}

static void wake_writer(tally_t *h)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (!atomic_load_explicit(&h->writer_sleeping, memory_order_relaxed)) return;
    if (!atomic_exchange(&h->writer_sleeping, 0)) return;
    pthread_mutex_lock(&h->mu);
    h->wake = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->mu);
}

/* Reserves a record for this thread; NULL (and the drop counted) when it
 * cannot be had. */
static rec_hdr *rec_begin(tally_t *h, int type, size_t payload, ring **rp, uint64_t *newhead)
{
    if (__builtin_expect(!atomic_load_explicit(&h->run_started, memory_order_acquire), 0))
        tally__run_clock_start(h);
    ring *r = ring_for_thread(h);
    *rp = r;
    if (!r) {
        atomic_fetch_add(&h->lost_no_ring, 1);
        return NULL;
    }
    ring_bump(&r->offered, 1);
    if (__builtin_expect(r->offered_mirror != NULL, 0))
        atomic_store_explicit(r->offered_mirror, ring_load(&r->offered), memory_order_relaxed);
    rec_hdr *hd = ring_reserve(r, payload, newhead);
    if (!hd) {
        ring_bump(&r->dropped, 1);
        wake_writer(h);
        return NULL;
    }
    hd->type = (uint16_t)type;
    hd->mono_ns = tally__mono_ns();
    return hd;
}

static inline void rec_end(tally_t *h, ring *r, uint64_t newhead)
{
    ring_commit(r, newhead);
    if (__builtin_expect(ring_pending_at_least(r, h->flush_events) || ring_half_full(r, newhead), 0))
        wake_writer(h);
}

/* String measuring and packing. */
typedef struct pk {
    char *base;
    uint32_t off;
} pk;

static inline size_t str_len(const tally_t *h, const char *s, uint32_t *trunc, int bit)
{
    if (!s) return 0;
    size_t n = strnlen(s, h->max_string + 1);
    if (n > h->max_string) {
        n = utf8_cut(s, h->max_string);
        *trunc |= 1u << bit;
    }
    return n;
}

static inline rstr pk_str(pk *p, const char *s, size_t n)
{
    rstr r = {0, 0};
    if (!s) return r;
    r.off = p->off;
    r.len = (uint32_t)n;
    memcpy(p->base + p->off, s, n);
    p->off += (uint32_t)n;
    return r;
}

int64_t tally_request_begin(tally_t *h, int device)
{
    if (!handle_live(h)) return 0;
    int64_t t = tally__mono_ns();
    return h->energy ? energy_begin(h->energy, device, t) : t;
}

void tally_request_record(tally_t *h, const tally_request *q)
{
    if (!handle_live(h) || !q) return;
    const char *strs[RQ_NSTR] = {
#define X(SLOT, name, flags) q->name,
        TALLY_REQUEST_LABELS(X)
#undef X
        q->error, q->degraded, q->sampling_json, h->capture_text ? q->text : NULL, q->extra_json,
    };
    size_t lens[RQ_NSTR];
    uint32_t trunc = 0;
    size_t total = 0;
    for (int i = 0; i < RQ_NSTR; i++) {
        lens[i] = str_len(h, strs[i], &trunc, i);
        total += lens[i];
    }
    size_t nst = q->stages ? q->n_stages : 0;
    if (nst > 64) nst = 64;
    size_t stlen[64];
    for (size_t i = 0; i < nst; i++) {
        uint32_t t2 = 0;
        stlen[i] = str_len(h, q->stages[i].name, &t2, 0);
        total += stlen[i];
    }
    size_t fixed = sizeof(rec_request) + nst * sizeof(rec_stage);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_REQUEST, fixed + total, &r, &nh);
    int64_t end_ns = 0;
    if (q->begin_token && h->energy) end_ns = energy_end(h->energy, q->device, hd ? hd->mono_ns : tally__mono_ns());
    if (!r) return;
    /* Counters advance whether or not the event fit. */
    ring_bump(&r->requests, 1);
    if (q->completion_tokens > 0) ring_bump(&r->tokens_out, (uint64_t)q->completion_tokens);
    if (!hd) return;
    rec_request *rq = (rec_request *)(hd + 1);
#define COPY_NUMBER(key, api, rec, type, present, rowm, rowbit, flags) rq->rec = q->api;
    TALLY_REQUEST_NUMBERS(COPY_NUMBER)
#undef COPY_NUMBER
    rq->cost_input = q->cost_input_nusd;
    rq->cost_cached = q->cost_cached_nusd;
    rq->cost_cache_write = q->cost_cache_write_nusd;
    rq->cost_output = q->cost_output_nusd;
    rq->cost_reasoning = q->cost_reasoning_nusd;
    /* Zero means absent unless its bit says it is real (tally.h). */
    unsigned fl = q->flags;
    if (q->cost_nusd | q->cost_input_nusd | q->cost_cached_nusd | q->cost_cache_write_nusd | q->cost_output_nusd |
        q->cost_reasoning_nusd)
        fl |= TALLY_HAS_COST;
    if (q->energy_j != 0) fl |= TALLY_HAS_ENERGY;
    if (q->gpu_util_pct != 0) fl |= TALLY_HAS_GPU_UTIL;
    rq->flags = fl;
    rq->n_stages = (uint32_t)nst;
    rq->truncated = trunc;
    rq->device = q->device;
    rq->begin_ns = end_ns ? q->begin_token : 0;
    rq->end_ns = end_ns;
    pk p = {(char *)rq, (uint32_t)fixed};
    for (int i = 0; i < RQ_NSTR; i++) rq->s[i] = pk_str(&p, strs[i], lens[i]);
    rec_stage *st = (rec_stage *)(rq + 1);
    for (size_t i = 0; i < nst; i++) {
        st[i].name = pk_str(&p, q->stages[i].name ? q->stages[i].name : "", stlen[i]);
        st[i].us = q->stages[i].us;
    }
    rec_end(h, r, nh);
}

void tally_step_info_init(tally_step_info *info)
{
    if (info) memset(info, 0, sizeof *info);
}

/* wall_us < 0: not known (an end without its begin). */
static void record_step(tally_t *h, int64_t step, int64_t wall_us, const tally_step_info *info, int unfinished)
{
    static const tally_step_info none;
    if (!info) info = &none;
    uint32_t trunc = 0;
    size_t ml = str_len(h, info->metrics_json, &trunc, 0);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_STEP, sizeof(rec_step) + ml, &r, &nh);
    if (!hd) return;
    rec_step *s = (rec_step *)(hd + 1);
    s->step = step;
    s->tokens = info->tokens;
    s->wall_us = wall_us;
    s->loss = info->loss;
    s->lr = info->lr;
    s->grad_norm = info->grad_norm;
    /* Present: non-zero (NaN included: a diverged loss is news), or said. */
    s->present = (info->has & (TALLY_HAS_LOSS | TALLY_HAS_LR | TALLY_HAS_GRAD_NORM | TALLY_HAS_TOKENS)) |
                 (info->loss != 0 ? TALLY_HAS_LOSS : 0) | (info->lr != 0 ? TALLY_HAS_LR : 0) |
                 (info->grad_norm != 0 ? TALLY_HAS_GRAD_NORM : 0) | (info->tokens != 0 ? TALLY_HAS_TOKENS : 0);
    s->unfinished = (uint32_t)unfinished;
    s->truncated = trunc;
    pk p = {(char *)s, sizeof *s};
    s->metrics = pk_str(&p, info->metrics_json, ml);
    rec_end(h, r, nh);
}

static void record_epoch(tally_t *h, int64_t epoch, int64_t wall_us, const char *metrics, int unfinished)
{
    uint32_t trunc = 0;
    size_t ml = str_len(h, metrics, &trunc, 0);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_EPOCH, sizeof(rec_epoch) + ml, &r, &nh);
    if (!hd) return;
    rec_epoch *e = (rec_epoch *)(hd + 1);
    e->epoch = epoch;
    e->wall_us = wall_us;
    e->unfinished = (uint32_t)unfinished;
    e->truncated = trunc;
    pk p = {(char *)e, sizeof *e};
    e->metrics = pk_str(&p, metrics, ml);
    rec_end(h, r, nh);
}

/* Begin and end of a step or epoch span.  A begin while another span of
 * the same kind is open writes that one unfinished (its wall time up to
 * now); an end for another number than the open one writes the open one
 * unfinished and this one without wall time. */
/* Under span_mu: opens `sp` for `no`; returns 1 (and the old span's number
 * and wall time) when an open one has to be written unfinished. */
static int span_begin(span *sp, int64_t no, int64_t now, int64_t *old_no, int64_t *old_wall)
{
    int had = sp->open;
    *old_no = sp->no;
    *old_wall = (now - sp->begin_ns) / 1000;
    sp->open = 1;
    sp->no = no;
    sp->begin_ns = now;
    return had;
}

/* Under span_mu: closes `sp` for `no`; *wall = -1 when its begin was not
 * seen.  Returns 1 (and the other span's number and wall time) when an
 * open span of another number has to be written unfinished. */
static int span_end(span *sp, int64_t no, int64_t now, int64_t *wall, int64_t *old_no, int64_t *old_wall)
{
    int other = sp->open && sp->no != no;
    *wall = sp->open && !other ? (now - sp->begin_ns) / 1000 : -1;
    *old_no = sp->no;
    *old_wall = (now - sp->begin_ns) / 1000;
    sp->open = 0;
    return other;
}

void tally_step_begin(tally_t *h, int64_t step)
{
    if (!handle_live(h)) return;
    int64_t old_no, old_wall;
    pthread_mutex_lock(&h->span_mu);
    int unfinished = span_begin(&h->step_span, step, tally__mono_ns(), &old_no, &old_wall);
    pthread_mutex_unlock(&h->span_mu);
    if (unfinished) record_step(h, old_no, old_wall, NULL, 1);
}

void tally_step_end(tally_t *h, int64_t step, const tally_step_info *info)
{
    if (!handle_live(h)) return;
    int64_t wall, old_no, old_wall;
    pthread_mutex_lock(&h->span_mu);
    int other = span_end(&h->step_span, step, tally__mono_ns(), &wall, &old_no, &old_wall);
    pthread_mutex_unlock(&h->span_mu);
    if (other) record_step(h, old_no, old_wall, NULL, 1);
    record_step(h, step, wall, info, 0);
}

void tally_epoch_begin(tally_t *h, int64_t epoch)
{
    if (!handle_live(h)) return;
    int64_t old_no, old_wall;
    pthread_mutex_lock(&h->span_mu);
    int unfinished = span_begin(&h->epoch_span, epoch, tally__mono_ns(), &old_no, &old_wall);
    pthread_mutex_unlock(&h->span_mu);
    if (unfinished) record_epoch(h, old_no, old_wall, NULL, 1);
}

void tally_epoch_end(tally_t *h, int64_t epoch, const char *metrics_json)
{
    if (!handle_live(h)) return;
    int64_t wall, old_no, old_wall;
    pthread_mutex_lock(&h->span_mu);
    int other = span_end(&h->epoch_span, epoch, tally__mono_ns(), &wall, &old_no, &old_wall);
    pthread_mutex_unlock(&h->span_mu);
    if (other) record_epoch(h, old_no, old_wall, NULL, 1);
    record_epoch(h, epoch, wall, metrics_json, 0);
}

void tally_eval(tally_t *h, const char *name, double loss, double ppl, int64_t samples, const char *extra_json)
{
    if (!handle_live(h)) return;
    uint32_t trunc = 0;
    size_t nl = str_len(h, name, &trunc, 0), xl = str_len(h, extra_json, &trunc, 1);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_EVAL, sizeof(rec_eval) + nl + xl, &r, &nh);
    if (!hd) return;
    rec_eval *e = (rec_eval *)(hd + 1);
    e->loss = loss;
    e->ppl = ppl;
    e->samples = samples;
    e->truncated = trunc;
    pk p = {(char *)e, sizeof *e};
    e->name = pk_str(&p, name, nl);
    e->extra = pk_str(&p, extra_json, xl);
    rec_end(h, r, nh);
}

void tally_error_at(tally_t *h, const char *type, const char *message, const char *phase, int64_t step,
                    const char *request_id)
{
    if (!handle_live(h)) return;
    uint32_t trunc = 0;
    size_t tl = str_len(h, type, &trunc, 0), ml = str_len(h, message, &trunc, 1);
    size_t pl = str_len(h, phase, &trunc, 2), rl = str_len(h, request_id, &trunc, 3);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_ERROR, sizeof(rec_error) + tl + ml + pl + rl, &r, &nh);
    if (!r) return;
    ring_bump(&r->errors, 1);
    if (!hd) return;
    rec_error *e = (rec_error *)(hd + 1);
    e->step = step;
    e->truncated = trunc;
    pk p = {(char *)e, sizeof *e};
    e->type = pk_str(&p, type ? type : "error", type ? tl : 5);
    e->message = pk_str(&p, message ? message : "", ml);
    e->phase = pk_str(&p, phase, pl);
    e->request_id = pk_str(&p, request_id, rl);
    rec_end(h, r, nh);
}

void tally_error(tally_t *h, const char *type, const char *message)
{
    tally_error_at(h, type, message, NULL, -1, NULL);
}

void tally_note(tally_t *h, const char *text)
{
    if (!handle_live(h)) return;
    uint32_t trunc = 0;
    size_t tl = str_len(h, text, &trunc, 0);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_NOTE, sizeof(rec_note) + tl, &r, &nh);
    if (!hd) return;
    rec_note *n = (rec_note *)(hd + 1);
    n->truncated = trunc;
    pk p = {(char *)n, sizeof *n};
    n->text = pk_str(&p, text ? text : "", text ? tl : 0);
    rec_end(h, r, nh);
}

void tally_event(tally_t *h, const char *kind, const tally_field *f, size_t n)
{
    if (!handle_live(h)) return;
    if (!f) n = 0;
    if (n > 256) n = 256;
    uint32_t trunc = 0;
    size_t kl = str_len(h, kind ? kind : "event", &trunc, 0);
    size_t total = kl;
    for (size_t i = 0; i < n; i++) {
        uint32_t t2 = 0;
        total += str_len(h, f[i].key, &t2, 0);
        if (f[i].type == TALLY_FIELD_STRING || f[i].type == TALLY_FIELD_JSON) total += str_len(h, f[i].s, &trunc, 1);
    }
    size_t fixed = sizeof(rec_event) + n * sizeof(rec_field);
    ring *r;
    uint64_t nh;
    rec_hdr *hd = rec_begin(h, REC_EVENT, fixed + total, &r, &nh);
    if (!hd) return;
    rec_event *e = (rec_event *)(hd + 1);
    e->n_fields = (uint32_t)n;
    e->truncated = trunc;
    pk p = {(char *)e, (uint32_t)fixed};
    e->kind = pk_str(&p, kind ? kind : "event", kl);
    rec_field *rf = (rec_field *)(e + 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t t2 = 0;
        rf[i].key = pk_str(&p, f[i].key ? f[i].key : "", str_len(h, f[i].key, &t2, 0));
        rf[i].type = f[i].type;
        rf[i].i = f[i].i;
        rf[i].d = f[i].d;
        if (f[i].type == TALLY_FIELD_STRING || f[i].type == TALLY_FIELD_JSON)
            rf[i].s = pk_str(&p, f[i].s, str_len(h, f[i].s, &t2, 0));
        else
            rf[i].s = (rstr){0, 0};
    }
    rec_end(h, r, nh);
}

/* Spans begun and never ended are written, marked unfinished. */
void tally__end_spans(tally_t *h)
{
    pthread_mutex_lock(&h->span_mu);
    int so = h->step_span.open, eo = h->epoch_span.open;
    int64_t now = tally__mono_ns();
    int64_t sw = (now - h->step_span.begin_ns) / 1000, ew = (now - h->epoch_span.begin_ns) / 1000;
    h->step_span.open = h->epoch_span.open = 0;
    pthread_mutex_unlock(&h->span_mu);
    if (so) record_step(h, h->step_span.no, sw, NULL, 1);
    if (eo) record_epoch(h, h->epoch_span.no, ew, NULL, 1);
}

void tally__tls_forget(tally_t *h)
{
    for (int i = 0; i < TLS_SLOTS; i++)
        if (tls_cache[i].id == h->id) {
            ring_release(tls_cache[i].r);
            tls_cache[i].id = 0;
            tls_cache[i].r = NULL;
        }
}
