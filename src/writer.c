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
    if (ev->type == WEV_RUN_END) return; /* encoded by writer_finish */
    tally__encode_event(h, b, ev);
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
        ring_counts_add(&h->retired, dead);
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
                tally__enrich_request(h, (rec_request *)(hd + 1), ev.ts_us);
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
    if (h->is_child) {
        /* Settled: committed to the sinks (an event still in a sink's
         * buffer would be lost by _exit()), or dropped. */
        uint64_t settled = w - h->uncommitted;
        atomic_fetch_add(&h->shared->child_settled,
                         (settled - h->published_settled) + (c.dropped - h->published.dropped));
        h->published_settled = settled;
    }
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
        h->uncommitted = batch;
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
                struct timespec dl = tally__deadline(wait_ns);
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
    struct timespec dl = tally__deadline((int64_t)ms * 1000000);
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

static uint64_t children_lost(shared_totals *s)
{
    if (!s) return 0;
    uint32_t n = atomic_load(&s->mirrors);
    if (n > MIRROR_SLOTS) n = MIRROR_SLOTS;
    uint64_t offered = 0;
    for (uint32_t i = 0; i < n; i++) offered += atomic_load(&s->mirror[i]);
    uint64_t settled = atomic_load(&s->child_settled);
    return offered > settled ? offered - settled : 0;
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
        tally__encode_head(b, "run_end", 7, &ev);
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
        /* What forked children offered and never wrote nor counted as
         * dropped: a child that ended with _exit() holding a queue. */
        ENC_NKEY(b, "lost");
        enc_i64(b, (int64_t)children_lost(s));
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
    if (h->is_child) {
        /* Everything is committed now: a child's last word on what it settled. */
        h->uncommitted = 0;
        publish(h);
    }
    /* Last opened, first closed: the OTLP exporter reads the metrics
     * sink's table until it has stopped. */
    for (int i = h->n_sinks - 1; i >= 0; i--)
        if (h->sinks[i].ops->close) h->sinks[i].ops->close(&h->sinks[i]);
    h->n_sinks = 0;
    h->memory = NULL;
    h->metrics = NULL;
    json_arena_free(&h->arena);
}
