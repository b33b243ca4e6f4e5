/*
 * tally -- the handle: opening (settings, run identity, sinks), the run's
 * start, flushing, counters, closing.  The recording calls are in
 * tally_record.c; fork and exit in tally_process.c.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "encode.h"
#include "energy.h"
#include "record.h"

/* ---- process-wide state --------------------------------------------- */

static _Atomic uint64_t next_handle_id = 1;

/* ---- opening --------------------------------------------------------- */

void tally_config_init(tally_config *cfg)
{
    if (cfg) memset(cfg, 0, sizeof *cfg);
}

const char *tally_version(void) { return TALLY_VERSION_STRING; }

static char *dup_or(const char *s, const char *def)
{
    const char *v = s && *s ? s : def;
    return v ? strdup(v) : NULL;
}

/* serve-20261123-001: the first number whose directory under run_dir could
 * be created (mkdir is atomic, so two processes never share one). */
static char *make_run_id(tally_t *h, const char *run_dir, const char *prefix)
{
    char id[128];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y%m%d", &tm);
    if (run_dir && *run_dir) {
        if (tally__mkdir_p(run_dir, 0) == 0) {
            for (int n = 1; n < 100000; n++) {
                char dir[4096];
                snprintf(id, sizeof id, "%s-%s-%03d", prefix, day, n);
                snprintf(dir, sizeof dir, "%s/%s", run_dir, id);
                if (mkdir(dir, 0755) == 0) return strdup(id);
                if (errno != EEXIST) break;
            }
        }
        tally__log(h, TALLY_LOG_WARN, "cannot create a run directory under %s: %s", run_dir, strerror(errno));
    }
    char hms[16];
    strftime(hms, sizeof hms, "%H%M%S", &tm);
    snprintf(id, sizeof id, "%s-%s-%s-%d", prefix, day, hms, (int)getpid());
    return strdup(id);
}

/* A caller's run id names a directory under run_dir: it may not climb out
 * of it or hide.  Bytes other than letters, digits, '.', '_' and '-'
 * become '_'; a leading '.' gets a '_' before it ("../x" -> "_.._x");
 * at most 128 bytes.  A changed id is said once in the log. */
static char *safe_run_id(tally_t *h, const char *id)
{
    char out[130];
    size_t k = 0;
    if (id[0] == '.') out[k++] = '_';
    for (const char *p = id; *p && k < 129; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        out[k++] = ok ? c : '_';
    }
    out[k] = 0;
    if (strcmp(out, id) != 0) tally__log(h, TALLY_LOG_WARN, "run id \"%s\" is written as \"%s\"", id, out);
    return strdup(out);
}

static int env_true(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcmp(v, "false") != 0 && strcmp(v, "no") != 0;
}

tally_t *tally_open(const tally_config *cfg_in)
{
    tally_config def;
    tally_config_init(&def);
    const tally_config *cfg = cfg_in ? cfg_in : &def;

    tally__process_init();

    tally_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->id = atomic_fetch_add(&next_handle_id, 1);
    h->fork_gen = atomic_load(&tally__fork_gen);
    h->log = cfg->log;
    h->log_ud = cfg->log_ud;
    h->max_string = cfg->max_string ? cfg->max_string : 65536;
    if (h->max_string > 16u << 20) h->max_string = 16u << 20;
    h->queue_bytes = cfg->queue_bytes ? cfg->queue_bytes : 4u << 20;
    if (h->queue_bytes > 1u << 30) h->queue_bytes = 1u << 30;
    h->max_threads = cfg->max_threads ? cfg->max_threads : 1024;
    h->flush_events = cfg->flush_events ? cfg->flush_events : 1000;
    h->flush_ms = cfg->flush_ms ? cfg->flush_ms : 1000;
    h->fsync_on_flush = cfg->fsync_on_flush;
    h->capture_text = cfg->capture_text;
    h->memory_max_events = cfg->memory_max_events ? cfg->memory_max_events : 1000000;
    h->subscriber = cfg->subscriber;
    h->subscriber_ud = cfg->subscriber_ud;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->span_mu, NULL);
    pthread_cond_init(&h->wake_cv, NULL);
    pthread_cond_init(&h->done_cv, NULL);
    h->pid = (int)getpid();

    const char *env_path = getenv("TALLY_PATH");
    const char *path = env_path ? env_path : cfg->path;
    const char *env_db = getenv("TALLY_DB");
    const char *db = env_db ? env_db : cfg->sqlite_path;
    int want_file = (path && *path) || (!env_path && cfg->run_dir && *cfg->run_dir);
    const char *env_listen = getenv("TALLY_METRICS_LISTEN");
    const char *metrics_listen = env_listen && *env_listen ? env_listen : cfg->metrics_listen;
    const char *env_otlp = getenv("TALLY_OTLP_ENDPOINT");
    const char *otlp = env_otlp && *env_otlp ? env_otlp : cfg->otlp_endpoint;
    const char *env_ch = getenv("TALLY_CLICKHOUSE");
    const char *ch = env_ch && *env_ch ? env_ch : cfg->clickhouse;
    h->enabled = !env_true("TALLY_DISABLE") && (want_file || (db && *db) || cfg->memory_sink || cfg->subscriber ||
                                                (metrics_listen && *metrics_listen) || (otlp && *otlp) || (ch && *ch));
    if (!h->enabled) return h; /* disabled: no I/O, nothing more to allocate */

    h->phase = dup_or(cfg->phase, "serve");
    int train = strcmp(h->phase, "train") == 0;
    const char *run_dir = path && *path ? NULL : cfg->run_dir;
    h->run_id = cfg->run_id && *cfg->run_id ? safe_run_id(h, cfg->run_id)
                                            : make_run_id(h, run_dir, train ? "train" : "serve");
    if (h->run_id && cfg->run_id && *cfg->run_id && run_dir && *run_dir) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", run_dir, h->run_id);
        tally__mkdir_p(dir, 0);
    }
    char hostbuf[256] = "";
    gethostname(hostbuf, sizeof hostbuf - 1);
    struct utsname un;
    if (uname(&un) != 0) memset(&un, 0, sizeof un);
    for (char *c = un.sysname; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    h->host = dup_or(cfg->host, hostbuf[0] ? hostbuf : "unknown");
    h->os = dup_or(un.sysname, "unknown");
    h->arch = dup_or(un.machine, "unknown");
    h->backend = dup_or(cfg->backend, "cpu");
    h->backend_device = dup_or(cfg->backend_device, NULL);
    h->model = dup_or(cfg->model, "unknown");
    h->model_path = dup_or(cfg->model_path, NULL);
    h->config_json = dup_or(cfg->config_json, NULL);
    h->git_sha = dup_or(cfg->git_sha, NULL);
    h->git_branch = dup_or(cfg->git_branch, NULL);
    h->git_dirty = cfg->git_dirty;

    if (path && *path) {
        h->path = strdup(path);
    } else if (want_file) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s/events.jsonl", cfg->run_dir, h->run_id);
        h->path = strdup(p);
    }

    const char *env_prices = getenv("TALLY_PRICES");
    const char *pp = env_prices ? env_prices : cfg->prices_path;
    if (pp && *pp) {
        char perr[512];
        if (prices_load(&h->prices, pp, perr, sizeof perr) != 0)
            tally__log(h, TALLY_LOG_WARN, "%s: requests without a cost stay unpriced", perr);
    }
    h->retention_max_age_s = cfg->retention_max_age_s;
    h->retention_max_rows = cfg->retention_max_rows;
    tally__new_nonce(h);
    buf_init(&h->line, (size_t)8 << 20);
    /* A sink is kept when its state could be allocated; a JSONL file that
     * cannot be opened yet is kept too (it retries, and counts). */
    if (h->path) {
        sink_jsonl_open(h, &h->sinks[h->n_sinks], h->path, !(path && *path));
        if (h->sinks[h->n_sinks].state) h->n_sinks++;
    }
    if (db && *db) {
        h->db_path = strdup(db);
        sink_sqlite_open(h, &h->sinks[h->n_sinks], h->db_path);
        if (h->sinks[h->n_sinks].state) h->n_sinks++;
    }
    if (cfg->memory_sink) {
        sink_memory_open(h, &h->sinks[h->n_sinks], h->memory_max_events);
        if (h->sinks[h->n_sinks].state) h->memory = &h->sinks[h->n_sinks++];
    }
    if (cfg->subscriber) {
        sink_callback_open(h, &h->sinks[h->n_sinks], cfg->subscriber, cfg->subscriber_ud);
        if (h->sinks[h->n_sinks].state) h->n_sinks++;
    }
    if ((metrics_listen && *metrics_listen) || (otlp && *otlp)) {
        sink_metrics_open(h, &h->sinks[h->n_sinks], metrics_listen && *metrics_listen ? metrics_listen : NULL,
                          cfg->metrics_series_cap);
        if (h->sinks[h->n_sinks].state) h->metrics = &h->sinks[h->n_sinks++];
    }
    if (otlp && *otlp) {
        sink_otlp_open(h, &h->sinks[h->n_sinks], cfg, otlp, sink_metrics_table(h->metrics));
        if (h->sinks[h->n_sinks].state) h->n_sinks++;
    }
    if (ch && *ch) {
        sink_clickhouse_open(h, &h->sinks[h->n_sinks], cfg, ch);
        if (h->sinks[h->n_sinks].state) h->n_sinks++;
    }
    for (int i = 0; i < h->n_sinks; i++) h->wants_rows |= h->sinks[i].ops->wants_row;

    void *m = mmap(NULL, sizeof(shared_totals), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
        h->shared = m;
        atomic_store(&h->shared->processes, 1);
    } else {
        tally__log(h, TALLY_LOG_WARN, "no shared counters (mmap: %s): run_end counts this process only", strerror(errno));
    }

    if (cfg->energy || env_true("TALLY_ENERGY")) h->energy = energy_start(h, cfg->energy_interval_ms);

    tally__register_handle(h);
    if (writer_start(h) != 0) {
        tally__log(h, TALLY_LOG_ERROR, "cannot start the writer thread: events will be dropped");
    }
    return h;
}

int tally_enabled(const tally_t *h) { return h && h->enabled; }

const char *tally_run_id(const tally_t *h) { return h && h->run_id ? h->run_id : ""; }

void tally__run_clock_start(tally_t *h)
{
    pthread_mutex_lock(&h->mu);
    if (!atomic_load_explicit(&h->run_started, memory_order_relaxed)) {
        h->origin_mono_ns = tally__mono_ns();
        h->origin_real_us = tally__real_us();
        h->started_at = (time_t)(h->origin_real_us / 1000000);
        atomic_store_explicit(&h->run_started, 1, memory_order_release);
    }
    pthread_mutex_unlock(&h->mu);
}

void tally_run_start(tally_t *h)
{
    if (!handle_live(h)) return;
    tally__run_clock_start(h);
    /* The writer writes run_start before anything else; wake it so that
     * a run with no events still has its run_start on disk promptly. */
    pthread_mutex_lock(&h->mu);
    h->wake = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- flush, counters, close ---------------------------------------------- */

int tally_flush(tally_t *h, uint32_t timeout_ms)
{
    if (!handle_live(h)) return 0;
    if (!timeout_ms) timeout_ms = 5000;
    struct timespec dl = tally__deadline((int64_t)timeout_ms * 1000000);
    pthread_mutex_lock(&h->mu);
    if (!h->writer_running) {
        pthread_mutex_unlock(&h->mu);
        return 1;
    }
    uint64_t want = ++h->flush_req;
    h->wake = 1;
    atomic_store(&h->writer_sleeping, 0);
    pthread_cond_signal(&h->wake_cv);
    int rc = 0;
    while (h->flush_done < want && rc == 0) rc = pthread_cond_timedwait(&h->done_cv, &h->mu, &dl);
    int done = h->flush_done >= want;
    pthread_mutex_unlock(&h->mu);
    return done ? 0 : 1;
}

void tally__count(tally_t *h, counts *c)
{
    *c = h->retired;
    for (ring *r = atomic_load_explicit(&h->rings, memory_order_acquire); r; r = r->next) ring_counts_add(c, r);
    uint64_t lost = atomic_load(&h->lost_no_ring);
    c->offered += lost;
    c->dropped += lost;
}

void tally_get_counters(const tally_t *hc, tally_counters *out)
{
    if (!out) return;
    memset(out, 0, sizeof *out);
    tally_t *h = (tally_t *)hc;
    if (!h || !h->enabled) return;
    counts c;
    pthread_mutex_lock(&h->mu); /* the writer frees rings under mu */
    tally__count(h, &c);
    pthread_mutex_unlock(&h->mu);
    out->offered = c.offered;
    out->dropped = c.dropped;
    out->requests = c.requests;
    out->errors = c.errors;
    out->tokens_out = c.tokens_out;
    out->written = atomic_load(&h->written);
    out->unpriced = atomic_load(&h->unpriced);
    out->sink_failures = atomic_load(&h->sink_failures);
}

size_t tally_get_sinks(const tally_t *h, tally_sink_stats *out, size_t n)
{
    if (!h || !h->enabled) return 0;
    for (int i = 0; i < h->n_sinks && (size_t)i < n; i++) {
        out[i].name = h->sinks[i].ops->name;
        out[i].lost = atomic_load(&h->sinks[i].lost);
    }
    return (size_t)h->n_sinks;
}

int tally_metrics_port(const tally_t *h) { return h && h->enabled ? sink_metrics_port(h->metrics) : 0; }

size_t tally_memory_count(tally_t *h)
{
    return h && h->enabled && h->memory ? sink_memory_count(h->memory) : 0;
}

void tally_memory_foreach(tally_t *h, int (*fn)(void *, const char *, size_t), void *ud)
{
    if (h && h->enabled && h->memory && fn) sink_memory_foreach(h->memory, fn, ud);
}

static void free_handle(tally_t *h)
{
    char **owned[] = {&h->path, &h->db_path, &h->run_id, &h->phase, &h->host, &h->os, &h->arch, &h->backend,
                      &h->backend_device, &h->model, &h->model_path, &h->config_json, &h->git_sha,
                      &h->git_branch};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) free(*owned[i]);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->span_mu);
    pthread_cond_destroy(&h->wake_cv);
    pthread_cond_destroy(&h->done_cv);
    free(h);
}

static void close_impl(tally_t *h, const char *reason, int has_code, int code)
{
    if (!h) return;
    if (!h->enabled) {
        free_handle(h);
        return;
    }
    handle_live(h); /* a child that never recorded still needs its writer state */
    tally__end_spans(h);
    /* A last sample now, so that every request recorded so far can be
     * given its energy before the writer's final drain. */
    if (h->energy && !h->is_child) energy_stop(h->energy, tally__mono_ns());

    writer_stop(h, reason, has_code, code);
    tally__unregister_handle(h);
    /* The writer is gone; the handle holds the last reference of every ring
     * whose thread has exited, and shares the others with their threads. */
    ring *r = atomic_load(&h->rings);
    while (r) {
        ring *n = r->next;
        ring_release(r);
        r = n;
    }
    tally__tls_forget(h);
    buf_free(&h->line);
    prices_free(&h->prices);
    if (!h->is_child) energy_free(h->energy);
    if (h->shared) munmap(h->shared, sizeof(shared_totals));
    free_handle(h);
}

void tally_close(tally_t *h, const char *reason) { close_impl(h, reason, 0, 0); }

void tally_close_with_code(tally_t *h, const char *reason, int exit_code)
{
    close_impl(h, reason, 1, exit_code);
}
