/*
 * internal -- the handle, shared by the library's modules (never installed).
 *
 * Data flows one way: caller -> ring -> writer -> sinks.  Fields are grouped
 * by who writes them: the opener (read-only afterwards), callers (rings,
 * spans), the writer thread (everything under "writer-owned").
 */
#ifndef TALLY_INTERNAL_H
#define TALLY_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "event_id.h"
#include "json.h"
#include "prices.h"
#include "util.h"

struct energy;
#include "ring.h"
#include "tally.h"

/* Events a sink is given: a ring record, or one of the two the writer
 * makes itself. */
enum { WEV_RUN_START = 100, WEV_RUN_END = 101 };

typedef struct wev {
    int type;                 /* REC_* or WEV_* */
    const void *payload;      /* the record's fixed part (NULL for WEV_*) */
    int64_t t_us, ts_us;
    char id[TALLY_ID_LEN + 2]; /* the event's id: run nonce + process + sequence */
} wev;

typedef struct sink sink;
struct row;
typedef struct sink_ops {
    const char *name;
    /* 1: write() needs the event's row (the writer builds it once). */
    int wants_row;
    /* One event: its record, its row (NULL unless wants_row; valid for
     * the call only), its line.  Returns -1 when it could not be kept
     * (counted as this sink's loss). */
    int (*write)(sink *s, const wev *ev, const struct row *r, const char *line, size_t len);
    /* End of a batch; returns how many events were lost since the last
     * commit.  With `sync` (a flush, or close) the batch must be where it
     * goes before this returns; without, a sink may finish it later. */
    uint64_t (*commit)(sink *s, int sync);
    /* In a forked child, before its writer starts: drop the parent's state. */
    void (*after_fork)(sink *s);
    void (*close)(sink *s);
} sink_ops;

struct sink {
    const sink_ops *ops;
    struct tally *h;
    void *state;
    _Atomic uint64_t lost;    /* events this sink could not keep (its own count) */
};

#define TALLY_MAX_SINKS 7

/* Totals of every process sharing the run (MAP_SHARED), for run_end.
 * Forked children also mirror each ring's `offered` here, and add what
 * they wrote and dropped to child_settled: what a child offered and never
 * settled (it ended with _exit() holding a queue) is run_end's `lost`. */
#define MIRROR_SLOTS 1024
typedef struct shared_totals {
    _Atomic uint64_t requests, errors, tokens_out, written, dropped, processes, unpriced;
    _Atomic uint64_t child_settled;
    _Atomic uint32_t mirrors;
    _Atomic uint64_t mirror[MIRROR_SLOTS];
} shared_totals;

/* In a forked child, gives ring r a mirror slot (none left: not mirrored). */
static inline void tally__mirror_ring(shared_totals *s, ring *r)
{
    if (!s) return;
    uint32_t i = atomic_fetch_add(&s->mirrors, 1);
    if (i < MIRROR_SLOTS) r->offered_mirror = &s->mirror[i];
}

/* An open step or epoch: its number and when it began (tally.c). */
typedef struct span {
    int open;
    int64_t no, begin_ns;
} span;

/* Counter snapshot of one process (ring.h's RING_COUNTERS). */
typedef ring_counts counts;

struct tally {
    uint64_t id;              /* unique for the process's life: TLS key */
    int enabled;
    unsigned fork_gen;        /* tally__fork_gen when the writer started */
    int is_child;             /* this process did not open the handle */

    /* Settings. */
    size_t max_string, queue_bytes, memory_max_events;
    uint32_t flush_events, flush_ms, max_threads;
    int capture_text, fsync_on_flush;
    char *path, *db_path;
    int64_t retention_max_age_s, retention_max_rows;
    tally_log_fn log;
    void *log_ud;
    tally_event_fn subscriber;
    void *subscriber_ud;

    /* Identity (owned copies). */
    char *run_id, *phase, *host, *os, *arch, *backend, *backend_device;
    char *model, *model_path, *config_json, *git_sha, *git_branch;
    int git_dirty;
    int pid;

    /* Run clock, fixed by the first event or tally_run_start(). */
    _Atomic int run_started;
    int64_t origin_mono_ns, origin_real_us;
    time_t started_at;

    /* Rings: pushed at the head under `mu`, unlinked by the writer only. */
    pthread_mutex_t mu;
    pthread_cond_t wake_cv, done_cv;
    _Atomic(ring *) rings;
    uint32_t n_rings;
    _Atomic uint64_t lost_no_ring;   /* events from threads with no ring */

    /* Writer control (under mu). */
    _Atomic int writer_sleeping;
    int stop, wake;
    uint64_t flush_req, flush_done;
    pthread_t writer;
    int writer_running;

    /* Spans (under span_mu). */
    pthread_mutex_t span_mu;
    span step_span, epoch_span;

    /* Writer-owned. */
    buf line;
    json_arena arena;         /* for checking callers' JSON */
    sink sinks[TALLY_MAX_SINKS];
    int n_sinks;
    int wants_rows;           /* some sink stores rows */
    sink *memory;             /* the memory sink, when configured */
    sink *metrics;            /* the Prometheus sink, when configured */
    int64_t last_t_us;
    char nonce[13];           /* the run: 48 random bits, hex, the same in its forked children */
    char proc[7];             /* the process within the run: 0 for the opener, 1, 2, ... */
    uint64_t event_seq;
    int run_start_written;
    int has_final;
    int64_t final_step;
    double final_loss;
    counts retired;           /* counters of rings already freed */
    counts published;         /* what was added to `shared` so far */
    uint64_t published_written;
    uint64_t uncommitted;       /* events given to the sinks, batch not yet committed */
    uint64_t published_settled; /* written - uncommitted, as last added to child_settled */
    _Atomic uint64_t written, sink_failures, unpriced;
    uint64_t published_unpriced;
    prices prices;            /* loaded price table (n == 0: none) */
    struct energy *energy;    /* samplers, when asked for */
    shared_totals *shared;
    int warned_drop, warned_sink, warned_misuse, warned_dupkey;
    const char *end_reason;   /* set by tally_close for the writer */
    int end_has_code, end_code;
};

/* A sink whose file or database could not be opened tries again at most
 * every 5 s: returns 1 (and notes the time) when a try is due. */
static inline int sink_retry_due(int64_t *last_try_ns, int64_t now_ns)
{
    if (*last_try_ns && now_ns - *last_try_ns < 5000000000LL) return 0;
    *last_try_ns = now_ns;
    return 1;
}

/* Logging, at most once per flag. */
void tally__log(struct tally *h, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void tally__warn_once(struct tally *h, int *flag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Files tally creates: 0600 when request text is captured (prompts are
 * private), else 0644 (before the umask). */
static inline unsigned tally__file_mode(const struct tally *h) { return h->capture_text ? 0600 : 0644; }


/* Sums every ring's counters with the retired ones. */
void tally__count(struct tally *h, counts *c);

/* tally_process.c: the registry of handles, fork and exit handlers. */
extern _Atomic unsigned tally__fork_gen;
void tally__process_init(void);          /* once per process, from tally_open */
void tally__register_handle(struct tally *h);
void tally__unregister_handle(struct tally *h);
void tally__child_restart(struct tally *h);

/* A handle that records: enabled, and in a forked child, restarted. */
static inline int handle_live(struct tally *h)
{
    if (!h || !h->enabled) return 0;
    if (__builtin_expect(h->fork_gen != atomic_load_explicit(&tally__fork_gen, memory_order_relaxed), 0))
        tally__child_restart(h);
    return 1;
}

/* tally_record.c */
void tally__tls_init(void);
int tally__tls_owns(ring *r);                 /* this thread's cache holds r */
void tally__tls_forget(struct tally *h);      /* drop this thread's cached ring of h */
void tally__end_spans(struct tally *h);       /* write open spans, unfinished */

/* tally.c */
void tally__run_clock_start(struct tally *h);

/* event_encode.c: an event's line into b (not run_end, whose head only is
 * shared). */
struct rec_request;
void tally__encode_event(struct tally *h, buf *b, const wev *ev);
void tally__encode_head(buf *b, const char *kind, size_t kind_len, const wev *ev);

/* writer_enrich.c: a request's cost and energy, in place. */
void tally__enrich_request(struct tally *h, struct rec_request *q, int64_t ts_us);

/* event_row.c: the row of an event (its json left for the caller). */
void tally__row_of_event(struct tally *h, const wev *ev, struct row *r);

/* writer.c */
/* 1 when some recording queue is at least 3/4 full (writer thread only):
 * a sink may make the writer wait only while this is 0. */
int tally__rings_pressed(struct tally *h);
int writer_start(struct tally *h);
/* Drains everything, writes run_end (opening process only), closes the
 * sinks and joins the thread. */
void writer_stop(struct tally *h, const char *reason, int has_code, int code);
/* The same at exit: waits for the writer at most `ms`. */
void writer_stop_within(struct tally *h, const char *reason, int ms);

/* sinks */
/* `named_by_tally`: the path is <run_dir>/<run_id>/events.jsonl, so a
 * symbolic link planted there is not followed (an explicit path may be
 * one, e.g. /dev/stdout). */
int sink_jsonl_open(struct tally *h, sink *s, const char *path, int named_by_tally);
int sink_memory_open(struct tally *h, sink *s, size_t max_events);
int sink_callback_open(struct tally *h, sink *s, tally_event_fn fn, void *ud);
int sink_metrics_open(struct tally *h, sink *s, const char *listen, uint32_t series_cap);
int sink_metrics_port(const sink *s);
struct metrics *sink_metrics_table(const sink *s);
int sink_otlp_open(struct tally *h, sink *s, const tally_config *cfg, const char *endpoint, struct metrics *mx);
int sink_clickhouse_open(struct tally *h, sink *s, const tally_config *cfg, const char *url);
int sink_sqlite_open(struct tally *h, sink *s, const char *path);
void tally__new_nonce(struct tally *h);
size_t sink_memory_count(sink *s);
void sink_memory_foreach(sink *s, int (*fn)(void *, const char *, size_t), void *ud);

#endif
