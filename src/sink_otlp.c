/*
 * sink_otlp -- the OTLP/HTTP exporter (docs/otlp.md).
 *
 * The writer thread turns each event into a span (otlp.c) in the current
 * batch; a batch is sealed at 512 spans, 1 MiB, or the writer's commit,
 * and handed to a queue (16 MiB at most).  A sender thread of the sink
 * posts batches to <endpoint>/v1/traces with libcurl, and the metrics
 * table to <endpoint>/v1/metrics every interval.
 *
 * Delivery, as OTLP/HTTP asks: 429, 502, 503, 504 and connection failures
 * are retried (after Retry-After when the server gives one, else with
 * exponential backoff and jitter); any other refusal (400, 413, ...) is
 * not: its spans are counted as this sink's losses, the server's message
 * logged, and a spooled batch set aside in <spool>/rejected/.  A partial
 * success counts the rejected spans.
 *
 * The spool: while the collector cannot be reached, batches go to files in
 * the spool directory, named so that their order is their age, and are
 * replayed oldest first when it answers again -- by this process or by
 * the next one to open the same spool.  A file is claimed by renaming it,
 * so two processes never send the same one.  Beyond the spool's cap,
 * batches are dropped and counted.  The recording call never waits for
 * any of this: it only ever meets its ring.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "internal.h"
#include "metrics.h"
#include "otlp.h"
#include "row.h"

#define BATCH_SPANS 512
#define BATCH_BYTES ((size_t)1 << 20)
#define QUEUE_BYTES ((size_t)16 << 20)
#define RESPONSE_MAX ((size_t)64 << 10)
#define CLOSE_WAIT_MS 2000

typedef struct batch {
    char *body;
    size_t len;
    uint32_t spans;
    char name[96];          /* its spool file name: age, process, sequence, spans */
    struct batch *next;
} batch;

struct otlp_exporter {
    tally_log_fn log;
    void *log_ud;
    char *traces_url, *metrics_url;
    struct curl_slist *headers;
    int gzip;
    char *spool;             /* directory, NULL = none */
    uint64_t spool_cap;
    _Atomic uint64_t spool_bytes; /* written by the writer (a full queue) and the sender */
    _Atomic int spool_pending; /* the spool may hold files: worth a look (set at open) */
    uint32_t backoff_ms;     /* first retry's wait */
    uint32_t metrics_ms;     /* metrics export interval */
    metrics *mx;
    otlp_res res;
    char *service, *instance, *host, *run_id;  /* owned copies, for the resource */
    int64_t start_ns;

    /* Writer-owned: the open batch. */
    buf cur;
    uint32_t cur_spans;
    uint64_t seq;

    /* Shared with the sender, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    batch *head, *tail;
    size_t queued;
    int stop, running;
    pthread_t thread;
    _Atomic uint64_t own_lost;
    _Atomic uint64_t *lost;  /* spans this exporter could not deliver */
    _Atomic uint64_t sent, retried, rejected;
    int warned_reject, warned_full, warned_down;
    CURL *curl;              /* the sender's */
};
typedef struct otlp_exporter osink;

__attribute__((format(printf, 3, 4))) static void olog(osink *o, int level, const char *fmt, ...)
{
    if (!o->log) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->log(o->log_ud, level, msg);
}

static int64_t now_ns(void) { return tally__real_us() * 1000; }

/* ---- the spool ----------------------------------------------------------------- */

static int spool_write(osink *o, const batch *b)
{
    if (!o->spool) return -1;
    if (atomic_load(&o->spool_bytes) + b->len > o->spool_cap) {
        if (!o->warned_full++)
            olog(o, TALLY_LOG_WARN, "OTLP spool %s is full (%llu bytes): batches are dropped and counted", o->spool,
                 (unsigned long long)o->spool_cap);
        return -1;
    }
    char tmp[4200], path[4200];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", o->spool, b->name);
    snprintf(path, sizeof path, "%s/%s", o->spool, b->name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < b->len) {
        ssize_t w = write(fd, b->body + off, b->len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    atomic_fetch_add(&o->spool_bytes, b->len);
    atomic_store(&o->spool_pending, 1);
    return 0;
}

static uint32_t spans_of_name(const char *name)
{
    const char *dash = strrchr(name, '-');
    return dash ? (uint32_t)strtoul(dash + 1, NULL, 10) : 0;
}

/* The oldest spool file (by name), claimed by renaming it to
 * NAME.sending-PID; a file another process claimed and died holding is
 * taken back.  Returns 1 with the names filled, 0 when the spool is empty. */
static int spool_claim(osink *o, char *claimed, size_t cap, char *orig, size_t ocap)
{
    DIR *d = opendir(o->spool);
    if (!d) return 0;
    char best[256] = "";
    struct dirent *e;
    uint64_t bytes = 0;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (n[0] == '.' || !strcmp(n, "rejected")) continue;
        const char *s = strstr(n, ".sending-");
        if (s) {
            long pid = strtol(s + 9, NULL, 10);
            if (pid > 0 && pid != getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
                char from[4200], to[4200];
                snprintf(from, sizeof from, "%s/%s", o->spool, n);
                snprintf(to, sizeof to, "%s/%.*s", o->spool, (int)(s - n), n);
                rename(from, to);
            }
            continue;
        }
        struct stat st;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", o->spool, n);
        if (stat(p, &st) == 0) bytes += (uint64_t)st.st_size;
        if (strlen(n) < sizeof best && (!best[0] || strcmp(n, best) < 0)) snprintf(best, sizeof best, "%s", n);
    }
    closedir(d);
    atomic_store(&o->spool_bytes, bytes);
    if (!best[0]) return 0;
    snprintf(orig, ocap, "%s/%s", o->spool, best);
    snprintf(claimed, cap, "%s/%s.sending-%d", o->spool, best, (int)getpid());
    if (rename(orig, claimed) != 0) return spool_claim(o, claimed, cap, orig, ocap); /* taken meanwhile */
    return 1;
}

/* spool_claim, when the spool may hold a file: the directory is read only
 * then (the flag is cleared before looking, so a file written meanwhile
 * sets it again), not before every batch. */
static int spool_next(osink *o, char *claimed, size_t cap, char *orig, size_t ocap)
{
    if (!o->spool || !atomic_exchange(&o->spool_pending, 0)) return 0;
    if (!spool_claim(o, claimed, cap, orig, ocap)) return 0;
    atomic_store(&o->spool_pending, 1); /* there may be more */
    return 1;
}

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > (off_t)(64 << 20)) {
        close(fd);
        return NULL;
    }
    char *p = malloc((size_t)st.st_size);
    size_t off = 0;
    while (p && off < (size_t)st.st_size) {
        ssize_t r = read(fd, p + off, (size_t)st.st_size - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        off += (size_t)r;
    }
    close(fd);
    if (!p || off != (size_t)st.st_size) {
        free(p);
        return NULL;
    }
    *len = off;
    return p;
}

/* ---- posting --------------------------------------------------------------------- */

enum { POST_OK, POST_RETRY, POST_REJECT, POST_IDENTITY };

typedef struct resp {
    buf body;
    long retry_after_s;
} resp;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    resp *r = ud;
    size_t len = size * n;
    if (r->body.len + len <= RESPONSE_MAX) buf_put(&r->body, p, len);
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    resp *r = ud;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        char tmp[32];
        size_t k = len - 12 < sizeof tmp - 1 ? len - 12 : sizeof tmp - 1;
        memcpy(tmp, p + 12, k);
        tmp[k] = 0;
        char *end;
        long v = strtol(tmp, &end, 10);
        if (end != tmp && v >= 0) r->retry_after_s = v > 3600 ? 3600 : v;
    }
    return len;
}

static int gzip_body(const char *in, size_t n, buf *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* level 1: most of the saving (spans are repetitive) for a third of the time */
    if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return -1;
    size_t bound = deflateBound(&z, (uLong)n);
    if (buf_reserve(out, bound) != 0) {
        deflateEnd(&z);
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out->p + out->len;
    z.avail_out = (uInt)bound;
    int rc = deflate(&z, Z_FINISH);
    out->len += bound - z.avail_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

/* The spans a partial success rejected (0 when none). */
static uint64_t rejected_spans(osink *o, const buf *body, const char *what)
{
    if (!body->len) return 0;
    json_arena a;
    json_arena_init(&a, (size_t)1 << 20);
    json_error err;
    jv *v = json_parse(&a, body->p, body->len, &err);
    uint64_t n = 0;
    const jv *ps = v ? jv_get(v, "partialSuccess") : NULL;
    if (ps) {
        const jv *r = jv_get(ps, what);
        if (r && r->type == JV_STR) n = strtoull(r->s, NULL, 10);
        else if (r) n = (uint64_t)jv_int(r, 0);
        const char *msg = jv_str(jv_get(ps, "errorMessage"));
        if (n || (msg && *msg))
            olog(o, TALLY_LOG_WARN, "OTLP collector took the batch in part: %llu %s refused: %.200s",
                       (unsigned long long)n, what, msg ? msg : "");
    }
    json_arena_free(&a);
    return n;
}

static int post(osink *o, const char *url, const char *body, size_t len, uint32_t spans, long *retry_after)
{
    /* One handle for the sender's life: its connection is kept alive. */
    if (!o->curl) o->curl = curl_easy_init();
    CURL *c = o->curl;
    if (!c) return POST_RETRY;
    curl_easy_reset(c);
    resp r = {{0}, -1};
    buf_init(&r.body, RESPONSE_MAX);
    buf z;
    buf_init(&z, (size_t)96 << 20);
    struct curl_slist *hdrs = NULL;
    for (struct curl_slist *s = o->headers; s; s = s->next) hdrs = curl_slist_append(hdrs, s->data);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    if (o->gzip && gzip_body(body, len, &z) == 0) {
        hdrs = curl_slist_append(hdrs, "Content-Encoding: gzip");
        body = z.p;
        len = z.len;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    buf_free(&z);
    int out;
    *retry_after = r.retry_after_s;
    if (rc != CURLE_OK) {
        if (!o->warned_down++)
            olog(o, TALLY_LOG_WARN, "OTLP collector %s cannot be reached (%s): batches are kept and retried", url,
                 curl_easy_strerror(rc));
        out = POST_RETRY;
    } else if (status >= 200 && status < 300) {
        uint64_t n = rejected_spans(o, &r.body, strstr(url, "/v1/metrics") ? "rejectedDataPoints" : "rejectedSpans");
        if (n && spans) atomic_fetch_add(o->lost, n > spans ? spans : n);
        out = POST_OK;
    } else if (status == 429 || status == 502 || status == 503 || status == 504) {
        out = POST_RETRY;
    } else if (status == 415 && o->gzip) {
        o->gzip = 0; /* this server takes no compressed bodies */
        out = POST_IDENTITY;
    } else {
        olog(o, TALLY_LOG_WARN, "OTLP collector refused a batch of %u (HTTP %ld), not retried: %.200s",
                   spans, status, r.body.len ? r.body.p : "");
        out = POST_REJECT;
    }
    buf_free(&r.body);
    return out;
}

/* ---- the sender thread -------------------------------------------------------------- */

static void batch_free(batch *b)
{
    if (!b) return;
    free(b->body);
    free(b);
}

static void set_aside(osink *o, const char *claimed, const char *orig)
{
    char dir[4200], to[4300];
    snprintf(dir, sizeof dir, "%s/rejected", o->spool);
    mkdir(dir, 0700);
    const char *base = strrchr(orig, '/');
    snprintf(to, sizeof to, "%s%s", dir, base ? base : "/batch");
    if (rename(claimed, to) != 0) unlink(claimed);
}

/* Moves every queued batch to the spool (in order): while the collector is
 * away, memory holds nothing that a crash could lose. */
static void queue_to_spool(osink *o)
{
    pthread_mutex_lock(&o->mu);
    batch *b = o->head;
    o->head = o->tail = NULL;
    o->queued = 0;
    pthread_mutex_unlock(&o->mu);
    while (b) {
        batch *n = b->next;
        if (spool_write(o, b) != 0) atomic_fetch_add(o->lost, b->spans);
        batch_free(b);
        b = n;
    }
}

static uint32_t backoff_wait(osink *o, int tries, long retry_after)
{
    if (retry_after >= 0) return (uint32_t)retry_after * 1000u;
    uint64_t w = (uint64_t)o->backoff_ms << (tries < 6 ? tries : 6);
    if (w > 60000) w = 60000;
    /* jitter: 75% .. 125% */
    uint64_t j = (uint64_t)(tally__mono_ns() / 1000) % (w / 2 + 1);
    return (uint32_t)(w * 3 / 4 + j);
}

/* Waits ms, or less when stopping.  Returns 1 when stop was asked. */
static int wait_ms(osink *o, uint32_t ms)
{
    struct timespec dl = tally__deadline((int64_t)ms * 1000000);
    pthread_mutex_lock(&o->mu);
    while (!o->stop && pthread_cond_timedwait(&o->cv, &o->mu, &dl) == 0) {
    }
    int stop = o->stop;
    pthread_mutex_unlock(&o->mu);
    return stop;
}

static void export_metrics(osink *o)
{
    if (!o->mx || !o->metrics_url) return;
    buf b;
    buf_init(&b, (size_t)64 << 20);
    otlp_metrics(&b, o->mx, &o->res, o->start_ns, now_ns());
    long ra;
    if (!b.failed) post(o, o->metrics_url, b.p, b.len, 0, &ra);
    buf_free(&b);
}

static void *sender(void *arg)
{
    osink *o = arg;
    int tries = 0;
    int64_t next_metrics = tally__mono_ns() + (int64_t)o->metrics_ms * 1000000;
    int64_t stop_by = 0;
    for (;;) {
        pthread_mutex_lock(&o->mu);
        int stop = o->stop;
        if (stop && !stop_by) stop_by = tally__mono_ns() + (int64_t)CLOSE_WAIT_MS * 1000000;
        int have_queue = o->head != NULL;
        pthread_mutex_unlock(&o->mu);
        if (stop && tally__mono_ns() > stop_by) break;

        if (tally__mono_ns() >= next_metrics) {
            export_metrics(o);
            next_metrics = tally__mono_ns() + (int64_t)o->metrics_ms * 1000000;
        }

        char claimed[4300], orig[4300];
        batch *b = NULL;
        char *body = NULL;
        size_t len = 0;
        uint32_t spans = 0;
        int from_spool = 0;
        if (spool_next(o, claimed, sizeof claimed, orig, sizeof orig)) {
            body = read_file(claimed, &len);
            const char *base = strrchr(orig, '/');
            spans = spans_of_name(base ? base + 1 : orig);
            from_spool = 1;
            if (!body) {
                atomic_fetch_add(o->lost, spans);
                set_aside(o, claimed, orig);
                continue;
            }
            /* what is queued is newer: it joins the spool behind */
            if (have_queue) queue_to_spool(o);
        } else if (have_queue) {
            pthread_mutex_lock(&o->mu);
            b = o->head;
            o->head = b->next;
            if (!o->head) o->tail = NULL;
            o->queued -= b->len;
            pthread_mutex_unlock(&o->mu);
            body = b->body;
            len = b->len;
            spans = b->spans;
        } else {
            if (stop) break;
            int64_t now = tally__mono_ns();
            uint32_t ms = next_metrics > now ? (uint32_t)((next_metrics - now) / 1000000) + 1 : 1;
            pthread_mutex_lock(&o->mu);
            if (!o->head && !o->stop) {
                struct timespec dl = tally__deadline((int64_t)ms * 1000000);
                pthread_cond_timedwait(&o->cv, &o->mu, &dl);
            }
            pthread_mutex_unlock(&o->mu);
            continue;
        }

        long retry_after = -1;
        int r = post(o, o->traces_url, body, len, spans, &retry_after);
        if (r == POST_IDENTITY) r = post(o, o->traces_url, body, len, spans, &retry_after);
        if (r == POST_OK) {
            tries = 0;
            atomic_fetch_add(&o->sent, spans);
            if (from_spool) unlink(claimed);
        } else if (r == POST_REJECT) {
            atomic_fetch_add(&o->rejected, spans);
            atomic_fetch_add(o->lost, spans);
            if (from_spool) set_aside(o, claimed, orig);
        } else {
            atomic_fetch_add(&o->retried, 1);
            if (from_spool) {
                rename(claimed, orig);           /* back in line, first */
            } else if (spool_write(o, b) != 0) {
                /* no spool (or full): keep it in memory, first in line */
                pthread_mutex_lock(&o->mu);
                if (o->queued + b->len <= QUEUE_BYTES && !o->stop) {
                    b->next = o->head;
                    o->head = b;
                    if (!o->tail) o->tail = b;
                    o->queued += b->len;
                    b = NULL;
                }
                pthread_mutex_unlock(&o->mu);
                if (b) atomic_fetch_add(o->lost, spans);
            }
            if (!stop) {
                uint32_t w = backoff_wait(o, tries++, retry_after);
                if (wait_ms(o, w)) {
                    /* closing while the collector is away: to the spool */
                    if (o->spool) queue_to_spool(o);
                }
            } else {
                if (o->spool) queue_to_spool(o);
                if (from_spool) free(body);
                else batch_free(b);
                break;
            }
        }
        if (from_spool) free(body);
        else batch_free(b);
    }
    /* Closing: what is still queued goes to the spool, else it is lost. */
    pthread_mutex_lock(&o->mu);
    int left = o->head != NULL;
    pthread_mutex_unlock(&o->mu);
    if (left) {
        if (o->spool) queue_to_spool(o);
        pthread_mutex_lock(&o->mu);
        for (batch *b = o->head; b;) {
            batch *n = b->next;
            atomic_fetch_add(o->lost, b->spans);
            batch_free(b);
            b = n;
        }
        o->head = o->tail = NULL;
        pthread_mutex_unlock(&o->mu);
    }
    export_metrics(o);
    return NULL;
}

static void start_sender(osink *o)
{
    if (o->running) return;
    o->stop = 0;
    if (pthread_create(&o->thread, NULL, sender, o) == 0) o->running = 1;
    else olog(o, TALLY_LOG_ERROR, "OTLP exporter: cannot start its thread");
}

/* ---- the sink --------------------------------------------------------------------- */

static void seal(osink *o)
{
    if (!o->cur_spans) return;
    otlp_traces_end(&o->cur);
    batch *b = calloc(1, sizeof *b);
    char *body = b && !o->cur.failed ? malloc(o->cur.len) : NULL;
    if (!b || !body) {
        atomic_fetch_add(o->lost, o->cur_spans);
        free(b);
        free(body);
    } else {
        memcpy(body, o->cur.p, o->cur.len);
        b->body = body;
        b->len = o->cur.len;
        b->spans = o->cur_spans;
        snprintf(b->name, sizeof b->name, "%020lld-%010d-%010llu-%u.json", (long long)now_ns(), (int)getpid(),
                 (unsigned long long)++o->seq, b->spans);
        pthread_mutex_lock(&o->mu);
        if (o->queued + b->len > QUEUE_BYTES) {
            pthread_mutex_unlock(&o->mu);
            /* the sender is stuck on an unreachable collector: straight to the spool */
            if (spool_write(o, b) != 0) atomic_fetch_add(o->lost, b->spans);
            batch_free(b);
        } else {
            if (o->tail) o->tail->next = b;
            else o->head = b;
            o->tail = b;
            o->queued += b->len;
            pthread_cond_signal(&o->cv);
            pthread_mutex_unlock(&o->mu);
        }
    }
    buf_reset(&o->cur);
    o->cur_spans = 0;
}

int otlp_exporter_add(osink *o, const char *id, int64_t ts_us, const void *payload, int type, const struct row *r)
{
    if (!o->running) start_sender(o);
    if (!o->cur_spans) otlp_traces_begin(&o->cur, &o->res);
    size_t mark = o->cur.len;
    if (otlp_span(&o->cur, o->cur_spans == 0, id, ts_us, payload, type, r)) {
        if (o->cur.failed) {
            /* one span too large for a batch: lost, the batch kept */
            o->cur.failed = 0;
            o->cur.len = mark;
            return -1;
        }
        o->cur_spans++;
    }
    if (!o->cur_spans) buf_reset(&o->cur);
    if (o->cur_spans >= BATCH_SPANS || o->cur.len >= BATCH_BYTES) seal(o);
    return 0;
}

void otlp_exporter_seal(osink *o) { seal(o); }

uint64_t otlp_exporter_lost(const osink *o) { return atomic_load(o->lost); }
uint64_t otlp_exporter_sent(const osink *o) { return atomic_load((_Atomic uint64_t *)&o->sent); }

void otlp_exporter_after_fork(osink *o)
{
    o->curl = NULL; /* the parent's connection */
    /* The parent's queue and sender stay with the parent. */
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->head = o->tail = NULL;
    o->queued = 0;
    o->running = 0;
    o->stop = 0;
    buf_reset(&o->cur);
    o->cur_spans = 0;
    o->seq = 0;
}

void otlp_exporter_close(osink *o)
{
    if (!o) return;
    seal(o);
    if (o->running) {
        pthread_mutex_lock(&o->mu);
        o->stop = 1;
        pthread_cond_broadcast(&o->cv);
        pthread_mutex_unlock(&o->mu);
        pthread_join(o->thread, NULL);
        o->running = 0;
    } else if (o->head) {
        queue_to_spool(o);
    }
    curl_slist_free_all(o->headers);
    if (o->curl) curl_easy_cleanup(o->curl);
    buf_free(&o->cur);
    free(o->traces_url);
    free(o->metrics_url);
    free(o->spool);
    free(o->service);
    free(o->instance);
    free(o->host);
    free(o->run_id);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    free(o);
}

/* OTEL_EXPORTER_OTLP_HEADERS: "k1=v1,k2=v2", values percent-decoded.  The
 * values (credentials) are never logged.  A header whose name or decoded
 * value holds a control character (a CR LF would start another header) is
 * left out. */
struct curl_slist *otlp_parse_headers(const char *env)
{
    struct curl_slist *l = NULL;
    if (!env) return NULL;
    const char *p = env;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (eq && eq > p && n < 4096) {
            char line[4200];
            size_t kn = (size_t)(eq - p), o = 0;
            while (kn && p[kn - 1] == ' ') kn--;
            memcpy(line, p, kn);
            o = kn;
            line[o++] = ':';
            line[o++] = ' ';
            for (const char *v = eq + 1; v < p + n && o < sizeof line - 1; v++) {
                if (*v == '%' && v + 2 < p + n) {
                    char hx[3] = {v[1], v[2], 0};
                    line[o++] = (char)strtol(hx, NULL, 16);
                    v += 2;
                } else {
                    line[o++] = *v;
                }
            }
            line[o] = 0;
            int clean = kn > 0;
            for (size_t q = 0; q < o && clean; q++)
                if ((unsigned char)line[q] < 0x20 || line[q] == 0x7f || (q < kn && line[q] == ':')) clean = 0;
            if (clean) l = curl_slist_append(l, line);
        }
        if (!end) break;
        p = end + 1;
    }
    return l;
}

static char *join_url(const char *base, const char *path)
{
    size_t n = strlen(base);
    while (n && base[n - 1] == '/') n--;
    char *u = malloc(n + strlen(path) + 1);
    if (!u) return NULL;
    size_t pn = strlen(path);
    memcpy(u, base, n);
    memcpy(u + n, path, pn + 1);
    return u;
}

osink *otlp_exporter_open(const otlp_conf *c)
{
    tally__curl_init();
    osink *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->log = c->log;
    o->log_ud = c->log_ud;
    o->lost = c->lost ? c->lost : &o->own_lost;
    o->traces_url = join_url(c->endpoint, "/v1/traces");
    o->metrics_url = join_url(c->endpoint, "/v1/metrics");
    o->headers = otlp_parse_headers(getenv("OTEL_EXPORTER_OTLP_HEADERS"));
    const char *comp = getenv("OTEL_EXPORTER_OTLP_COMPRESSION");
    o->gzip = !(comp && !strcmp(comp, "none"));
    if (c->spool && *c->spool) {
        if (tally__mkdir_p(c->spool, 0) == 0) o->spool = strdup(c->spool);
        else olog(o, TALLY_LOG_WARN, "OTLP spool %s cannot be made (%s): batches wait in memory only", c->spool,
                  strerror(errno));
    }
    o->spool_cap = c->spool_max_bytes ? c->spool_max_bytes : (uint64_t)256 << 20;
    atomic_store(&o->spool_pending, o->spool != NULL); /* an earlier process's batches, if any */
    o->backoff_ms = c->backoff_ms ? c->backoff_ms : 1000;
    const char *iv = getenv("OTEL_METRIC_EXPORT_INTERVAL");
    long ms = iv ? strtol(iv, NULL, 10) : 0;
    o->metrics_ms = ms > 0 ? (uint32_t)ms : c->metrics_interval_ms ? c->metrics_interval_ms : 60000;
    o->mx = c->metrics;
    const char *svc = getenv("OTEL_SERVICE_NAME");
    o->service = strdup(svc && *svc ? svc : "tally");
    char inst[300];
    snprintf(inst, sizeof inst, "%s/%d", c->run_id ? c->run_id : "", (int)getpid());
    o->instance = strdup(inst);
    o->host = strdup(c->host ? c->host : "");
    o->run_id = strdup(c->run_id ? c->run_id : "");
    o->res = (otlp_res){o->service, o->instance, o->host, o->run_id, tally_version()};
    o->start_ns = now_ns();
    buf_init(&o->cur, BATCH_BYTES + ((size_t)4 << 20));
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    if (!o->traces_url || !o->metrics_url || !o->service || !o->instance || !o->host || !o->run_id) {
        otlp_exporter_close(o);
        return NULL;
    }
    /* At once, not at the first event: a spool left by an earlier process
     * is replayed even by one that records nothing. */
    start_sender(o);
    return o;
}

/* ---- the sink --------------------------------------------------------------------------- */

static int ot_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)line;
    (void)len;
    return otlp_exporter_add(s->state, ev->id, ev->ts_us, ev->payload, ev->type, r);
}

static uint64_t ot_commit(sink *s, int sync)
{
    (void)sync;
    otlp_exporter_seal(s->state);
    return 0;
}

static void ot_after_fork(sink *s) { otlp_exporter_after_fork(s->state); }

static void ot_close(sink *s)
{
    osink *o = s->state;
    if (!o) return;
    s->state = NULL;
    otlp_exporter_close(o);
}

static const sink_ops ot_ops = {"otlp", 1, ot_write, ot_commit, ot_after_fork, ot_close};

int sink_otlp_open(struct tally *h, sink *s, const tally_config *cfg, const char *endpoint, metrics *mx)
{
    s->ops = &ot_ops;
    s->h = h;
    const char *spool = getenv("TALLY_OTLP_SPOOL");
    if (!spool || !*spool) spool = cfg->otlp_spool_dir;
    char def[4200];
    if ((!spool || !*spool) && (h->path || h->db_path)) {
        snprintf(def, sizeof def, "%s.otlp-spool", h->path ? h->path : h->db_path);
        spool = def;
    }
    otlp_conf c = {endpoint, spool, cfg->otlp_spool_max_bytes, cfg->otlp_backoff_ms, cfg->otlp_metrics_interval_ms,
                   mx, h->host, h->run_id, h->log, h->log_ud, &s->lost};
    s->state = otlp_exporter_open(&c);
    return s->state ? 0 : -1;
}
