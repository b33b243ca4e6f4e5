/*
 * tally -- the public API: opening a handle, the recording calls, fork.
 *
 * The recording path is:  find this thread's ring (a thread-local cache
 * hit: one compare), measure the caller's strings, reserve the record,
 * copy, publish.  No lock, no allocation, no system call.  The first event
 * of a thread allocates its ring (and touches every page of it); a thread
 * that cannot get one has its events dropped and counted.
 *
 * fork(): the writer thread does not survive fork, so the child handler
 * empties the rings the child inherited (their events belong to the
 * parent, which writes them), and the child's first event starts a writer
 * of its own.  Counters that run_end sums across processes live in a
 * MAP_SHARED page that each process's writer adds to.
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
static _Atomic unsigned tally__fork_gen = 0;

/* Every open handle, for the fork handlers. */
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static tally_t *all_handles[256];
static int n_all_handles;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static void exit_init(void);

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
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

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

static void tls_init(void) { pthread_key_create(&tls_key, tls_thread_exit); }

/* ---- fork ------------------------------------------------------------ */

static void fork_prepare(void)
{
    pthread_mutex_lock(&all_mu);
    for (int i = 0; i < n_all_handles; i++) {
        pthread_mutex_lock(&all_handles[i]->mu);
        pthread_mutex_lock(&all_handles[i]->span_mu);
    }
}

static void fork_parent(void)
{
    for (int i = n_all_handles - 1; i >= 0; i--) {
        pthread_mutex_unlock(&all_handles[i]->span_mu);
        pthread_mutex_unlock(&all_handles[i]->mu);
    }
    pthread_mutex_unlock(&all_mu);
}

static int tls_owns(ring *r)
{
    for (int i = 0; i < TLS_SLOTS; i++)
        if (tls_cache[i].r == r) return 1;
    return 0;
}

/* The process part of ids (internal.h): 6 hex digits. */
static void proc_hex(tally_t *h, uint64_t idx)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 5; i >= 0; i--, idx >>= 4) h->proc[i] = hex[idx & 15];
    h->proc[6] = 0;
}

/* Runs in the child, on the thread that called fork(); only plain stores
 * and lock-free atomics here. */
static void fork_child(void)
{
    atomic_fetch_add(&tally__fork_gen, 1);
    for (int i = 0; i < n_all_handles; i++) {
        tally_t *h = all_handles[i];
        pthread_mutex_init(&h->mu, NULL);
        pthread_mutex_init(&h->span_mu, NULL);
        pthread_cond_init(&h->wake_cv, NULL);
        pthread_cond_init(&h->done_cv, NULL);
        h->writer_running = 0;
        h->stop = 0;
        h->wake = 0;
        h->flush_req = h->flush_done = 0;
        atomic_store(&h->writer_sleeping, 0);
        h->is_child = 1;
        h->pid = (int)getpid();
        h->run_start_written = 1; /* the parent writes run_start and run_end */
        h->energy = NULL;         /* the sampler stays with the parent (docs/energy.md) */
        for (ring *r = atomic_load(&h->rings); r; r = r->next) {
            ring_reset(r);
            /* Rings of threads that do not exist here are freed by the
             * child's writer once it sees them gone. */
            if (!tls_owns(r)) {
                atomic_store(&r->thread_gone, 1);
                atomic_store(&r->refs, 1);
            }
        }
        memset(&h->retired, 0, sizeof h->retired);
        memset(&h->published, 0, sizeof h->published);
        h->published_written = 0;
        atomic_store(&h->written, 0);
        atomic_store(&h->sink_failures, 0);
        for (int k = 0; k < h->n_sinks; k++) atomic_store(&h->sinks[k].lost, 0);
        atomic_store(&h->unpriced, 0);
        h->published_unpriced = 0;
        atomic_store(&h->lost_no_ring, 0);
        /* The child's place in the run: its events keep the run's nonce. */
        uint64_t idx;
        if (h->shared) idx = atomic_fetch_add(&h->shared->processes, 1);
        else if (getrandom(&idx, sizeof idx, GRND_NONBLOCK) != (ssize_t)sizeof idx) idx = (uint64_t)getpid();
        proc_hex(h, idx);
        h->event_seq = 0;
    }
    pthread_mutex_unlock(&all_mu);
}

static void fork_init(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* A child's first call starts its writer. */
static void child_restart(tally_t *h)
{
    pthread_mutex_lock(&h->mu);
    unsigned g = atomic_load(&tally__fork_gen);
    if (h->fork_gen != g) {
        h->fork_gen = g;
        for (int i = 0; i < h->n_sinks; i++)
            if (h->sinks[i].ops->after_fork) h->sinks[i].ops->after_fork(&h->sinks[i]);
        buf_reset(&h->line);
        writer_start(h);
    }
    pthread_mutex_unlock(&h->mu);
}

static inline int handle_live(tally_t *h)
{
    if (!h || !h->enabled) return 0;
    if (__builtin_expect(h->fork_gen != atomic_load_explicit(&tally__fork_gen, memory_order_relaxed), 0))
        child_restart(h);
    return 1;
}

/* ---- logging and clocks ---------------------------------------------- */

__attribute__((format(printf, 3, 0))) static void vlog(tally_t *h, int level, const char *fmt, va_list ap)
{
    if (!h || !h->log) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    h->log(h->log_ud, level, msg);
}

void tally__log(tally_t *h, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(h, level, fmt, ap);
    va_end(ap);
}

void tally__warn_once(tally_t *h, int *flag, const char *fmt, ...)
{
    if (__atomic_exchange_n(flag, 1, __ATOMIC_RELAXED)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(h, TALLY_LOG_WARN, fmt, ap);
    va_end(ap);
}

int64_t tally__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t tally__real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- event ids ---------------------------------------------------------- */

/* Each run gets 48 random bits; an event's id is those, its process's
 * place in the run and its sequence number in that process (internal.h),
 * so ids never collide across the processes of a run or across runs,
 * `tally import` can skip what it already has, and readers can tell which
 * run an event belongs to in a file that several runs share. */
void tally__new_nonce(tally_t *h)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)tally__real_us() * 6364136223846793005ull ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)h;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 12; i++) h->nonce[i] = hex[(r >> (4 * i)) & 15];
    h->nonce[12] = 0;
    proc_hex(h, 0);
    h->event_seq = 0;
}

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

/* mkdir -p; with parents_only, the last component (a file name) is left. */
int tally__mkdir_p(const char *path, int parents_only)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (tmp[i] != '/') continue;
        tmp[i] = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        tmp[i] = '/';
    }
    if (!parents_only && mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
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

static void register_handle(tally_t *h)
{
    pthread_mutex_lock(&all_mu);
    if (n_all_handles < (int)(sizeof all_handles / sizeof all_handles[0]))
        all_handles[n_all_handles++] = h;
    else
        tally__log(h, TALLY_LOG_WARN, "more than 256 open handles: fork() will not reset this one");
    pthread_mutex_unlock(&all_mu);
}

static void unregister_handle(tally_t *h)
{
    pthread_mutex_lock(&all_mu);
    for (int i = 0; i < n_all_handles; i++)
        if (all_handles[i] == h) {
            all_handles[i] = all_handles[--n_all_handles];
            break;
        }
    pthread_mutex_unlock(&all_mu);
}

tally_t *tally_open(const tally_config *cfg_in)
{
    tally_config def;
    tally_config_init(&def);
    const tally_config *cfg = cfg_in ? cfg_in : &def;

    pthread_once(&fork_once, fork_init);
    pthread_once(&tls_once, tls_init);

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
    h->enabled = !env_true("TALLY_DISABLE") && (want_file || (db && *db) || cfg->memory_sink || cfg->subscriber);
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

    void *m = mmap(NULL, sizeof(shared_totals), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
        h->shared = m;
        atomic_store(&h->shared->processes, 1);
    } else {
        tally__log(h, TALLY_LOG_WARN, "no shared counters (mmap: %s): run_end counts this process only", strerror(errno));
    }

    if (cfg->energy || env_true("TALLY_ENERGY")) h->energy = energy_start(h, cfg->energy_interval_ms);

    register_handle(h);
    pthread_once(&exit_once, exit_init);
    if (writer_start(h) != 0) {
        tally__log(h, TALLY_LOG_ERROR, "cannot start the writer thread: events will be dropped");
    }
    return h;
}

int tally_enabled(const tally_t *h) { return h && h->enabled; }

const char *tally_run_id(const tally_t *h) { return h && h->run_id ? h->run_id : ""; }

static void run_clock_start(tally_t *h)
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
    run_clock_start(h);
    /* The writer writes run_start before anything else; wake it so that
     * a run with no events still has its run_start on disk promptly. */
    pthread_mutex_lock(&h->mu);
    h->wake = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- the recording path ------------------------------------------------ */

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
        run_clock_start(h);
    ring *r = ring_for_thread(h);
    *rp = r;
    if (!r) {
        atomic_fetch_add(&h->lost_no_ring, 1);
        return NULL;
    }
    ring_bump(&r->offered, 1);
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
    rq->prompt = q->prompt_tokens;
    rq->completion = q->completion_tokens;
    rq->latency_us = q->latency_us;
    rq->cached = q->cached_tokens;
    rq->cache_write = q->cache_write_tokens;
    rq->reasoning = q->reasoning_tokens;
    rq->ttft_us = q->ttft_us;
    rq->cost = q->cost_nusd;
    rq->cost_input = q->cost_input_nusd;
    rq->cost_cached = q->cost_cached_nusd;
    rq->cost_cache_write = q->cost_cache_write_nusd;
    rq->cost_output = q->cost_output_nusd;
    rq->cost_reasoning = q->cost_reasoning_nusd;
    rq->energy_j = q->energy_j;
    rq->gpu_util = q->gpu_util_pct;
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

/* ---- flush, counters, close ---------------------------------------------- */

int tally_flush(tally_t *h, uint32_t timeout_ms)
{
    if (!handle_live(h)) return 0;
    if (!timeout_ms) timeout_ms = 5000;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
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
    for (ring *r = atomic_load_explicit(&h->rings, memory_order_acquire); r; r = r->next) {
        c->offered += ring_load(&r->offered);
        c->dropped += ring_load(&r->dropped);
        c->requests += ring_load(&r->requests);
        c->errors += ring_load(&r->errors);
        c->tokens_out += ring_load(&r->tokens_out);
    }
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

/* Spans begun and never ended are written, marked unfinished. */
static void end_spans(tally_t *h)
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

static void close_impl(tally_t *h, const char *reason, int has_code, int code)
{
    if (!h) return;
    if (!h->enabled) {
        free_handle(h);
        return;
    }
    handle_live(h); /* a child that never recorded still needs its writer state */
    end_spans(h);
    /* A last sample now, so that every request recorded so far can be
     * given its energy before the writer's final drain. */
    if (h->energy && !h->is_child) energy_stop(h->energy, tally__mono_ns());

    writer_stop(h, reason, has_code, code);
    unregister_handle(h);
    /* The writer is gone; the handle holds the last reference of every ring
     * whose thread has exited, and shares the others with their threads. */
    ring *r = atomic_load(&h->rings);
    while (r) {
        ring *n = r->next;
        ring_release(r);
        r = n;
    }
    for (int i = 0; i < TLS_SLOTS; i++)
        if (tls_cache[i].id == h->id) {
            ring_release(tls_cache[i].r);
            tls_cache[i].id = 0;
            tls_cache[i].r = NULL;
        }
    buf_free(&h->line);
    prices_free(&h->prices);
    if (!h->is_child) energy_free(h->energy);
    if (h->shared) munmap(h->shared, sizeof(shared_totals));
    free_handle(h);
}

/* ---- exit --------------------------------------------------------------- */

/* A program that returns from main() or calls exit() without tally_close()
 * still gets what it recorded: every open handle's queue is written, and
 * (in the process that opened it) run_end with reason "not_closed".  The
 * handle is not freed (other threads may still be recording); later
 * calls on it do nothing.  Each handle gets at most EXIT_WAIT_MS: a sink
 * that hangs cannot hang the program's exit.  A forked child that ends
 * with _exit() runs no exit handlers and cannot be helped. */
#define EXIT_WAIT_MS 5000

static void flush_at_exit(void)
{
    tally_t *hs[256];
    pthread_mutex_lock(&all_mu);
    int n = n_all_handles;
    memcpy(hs, all_handles, (size_t)n * sizeof hs[0]);
    pthread_mutex_unlock(&all_mu);
    for (int i = 0; i < n; i++) {
        tally_t *h = hs[i];
        if (!h->enabled) continue;
        /* A forked child that never recorded has nothing queued. */
        if (h->fork_gen != atomic_load(&tally__fork_gen)) continue;
        end_spans(h);
        if (h->energy && !h->is_child) energy_stop(h->energy, tally__mono_ns());
        writer_stop_within(h, "not_closed", EXIT_WAIT_MS);
        h->enabled = 0;
        unregister_handle(h);
    }
}

static void exit_init(void) { atexit(flush_at_exit); }

void tally_close(tally_t *h, const char *reason) { close_impl(h, reason, 0, 0); }

void tally_close_with_code(tally_t *h, const char *reason, int exit_code)
{
    close_impl(h, reason, 1, exit_code);
}
