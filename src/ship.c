/*
 * ship -- batches to a server over HTTP: a queue, a sender thread,
 * retries with backoff, and a spool on disk (see ship.h).
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include "ship.h"

#define RESPONSE_MAX ((size_t)64 << 10)
#define CLOSE_WAIT_MS 2000
#define FILE_MAX ((off_t)128 << 20)

typedef struct batch {
    char *body;
    size_t len;
    uint32_t items;
    char name[96];          /* its spool file name: age, process, sequence, items */
    struct batch *next;
} batch;

struct ship {
    ship_conf c;
    char *spool;             /* directory, NULL = none */
    uint64_t spool_cap;
    _Atomic uint64_t spool_bytes; /* written by the sealing thread (a full queue) and the sender */
    _Atomic int spool_pending; /* the spool may hold files: worth a look (set at open) */
    _Atomic int warned_full, warned_down;
    int gzip;

    pthread_mutex_t mu;
    pthread_cond_t cv;        /* the sender's wake-up */
    pthread_cond_t idle_cv;   /* ship_drain's */
    batch *head, *tail;
    size_t queued;
    int posting;              /* the sender holds a batch */
    int stop, running;
    pthread_t thread;
    buf open;                 /* ship_append's batch, under mu */
    uint32_t open_items;
    int64_t open_since;       /* monotonic ns */
    uint64_t seq;

    _Atomic uint64_t own_lost;
    _Atomic uint64_t *lost;
    _Atomic uint64_t sent;
    CURL *curl;               /* the sender's */
};

void ship_log(ship *s, int level, const char *fmt, ...)
{
    if (!s->c.log) return;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->c.log(s->c.log_ud, level, msg);
}

static void lose(ship *s, uint64_t n) { atomic_fetch_add(s->lost, n); }

/* ---- the spool ----------------------------------------------------------------- */

/* body into DIR/NAME, whole or not at all (written aside, then renamed). */
static int write_file(const char *dir, const char *name, const char *body, size_t len)
{
    char tmp[4200], path[4200];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, body + off, len - off);
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
    return 0;
}

static int spool_write(ship *s, const batch *b)
{
    if (!s->spool) return -1;
    if (atomic_load(&s->spool_bytes) + b->len > s->spool_cap) {
        if (!atomic_fetch_add(&s->warned_full, 1))
            ship_log(s, TALLY_LOG_WARN, "%s spool %s is full (%llu bytes): batches are dropped and counted",
                     s->c.what, s->spool, (unsigned long long)s->spool_cap);
        return -1;
    }
    if (write_file(s->spool, b->name, b->body, b->len) != 0) return -1;
    atomic_fetch_add(&s->spool_bytes, b->len);
    atomic_store(&s->spool_pending, 1);
    return 0;
}

static uint32_t items_of_name(const char *name)
{
    const char *dash = strrchr(name, '-');
    return dash ? (uint32_t)strtoul(dash + 1, NULL, 10) : 0;
}

/* The oldest spool file (by name), claimed by renaming it to
 * NAME.sending-PID; a file another process claimed and died holding is
 * taken back.  Returns 1 with the names filled, 0 when the spool is empty. */
static int spool_claim(ship *s, char *claimed, size_t cap, char *orig, size_t ocap)
{
    for (int attempt = 0; attempt < 64; attempt++) {
        DIR *d = opendir(s->spool);
        if (!d) return 0;
        char best[256] = "";
        struct dirent *e;
        uint64_t bytes = 0;
        while ((e = readdir(d))) {
            const char *n = e->d_name;
            if (n[0] == '.' || !strcmp(n, "rejected")) continue;
            const char *sending = strstr(n, ".sending-");
            if (sending) {
                long pid = strtol(sending + 9, NULL, 10);
                if (pid > 0 && pid != getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
                    char from[4200], to[4200];
                    snprintf(from, sizeof from, "%s/%s", s->spool, n);
                    snprintf(to, sizeof to, "%s/%.*s", s->spool, (int)(sending - n), n);
                    rename(from, to);
                }
                continue;
            }
            struct stat st;
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", s->spool, n);
            if (stat(p, &st) == 0) bytes += (uint64_t)st.st_size;
            if (strlen(n) < sizeof best && (!best[0] || strcmp(n, best) < 0)) snprintf(best, sizeof best, "%s", n);
        }
        closedir(d);
        atomic_store(&s->spool_bytes, bytes);
        if (!best[0]) return 0;
        snprintf(orig, ocap, "%s/%s", s->spool, best);
        snprintf(claimed, cap, "%s/%s.sending-%d", s->spool, best, (int)getpid());
        if (rename(orig, claimed) == 0) return 1;
        /* another process took it meanwhile: look again */
    }
    return 0;
}

/* spool_claim, when the spool may hold a file: the directory is read only
 * then (the flag is cleared before looking, so a file written meanwhile
 * sets it again), not before every batch. */
static int spool_next(ship *s, char *claimed, size_t cap, char *orig, size_t ocap)
{
    if (!s->spool || !atomic_exchange(&s->spool_pending, 0)) return 0;
    if (!spool_claim(s, claimed, cap, orig, ocap)) return 0;
    atomic_store(&s->spool_pending, 1); /* there may be more */
    return 1;
}

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > FILE_MAX) {
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

/* A refused batch, kept for a person to look at: rejected/NAME, with the
 * server's message in rejected/NAME.reason.  From the spool (claimed: the
 * claimed file is moved) or from memory (body written there). */
static void set_aside(ship *s, const char *claimed, const char *name, const batch *b, const char *reason)
{
    char dir[4200], to[4400];
    snprintf(dir, sizeof dir, "%s/rejected", s->spool);
    mkdir(dir, 0700);
    if (claimed) {
        snprintf(to, sizeof to, "%s/%s", dir, name);
        if (rename(claimed, to) != 0) {
            unlink(claimed);
            return;
        }
    } else if (write_file(dir, name, b->body, b->len) != 0) {
        return;
    }
    if (!reason || !*reason) return;
    char why[300];
    snprintf(why, sizeof why, "%s.reason", name);
    size_t n = strlen(reason);
    char line[600];
    snprintf(line, sizeof line, "%.*s\n", (int)(n < 590 ? n : 590), reason);
    write_file(dir, why, line, strlen(line)); /* the batch itself is kept; its note is best effort */
}

/* ---- posting --------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    ship_resp *r = ud;
    size_t len = size * n;
    if (r->body.len + len <= RESPONSE_MAX) buf_put(&r->body, p, len);
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    ship_resp *r = ud;
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
    /* level 1: most of the saving (the bodies are repetitive) for a third of the time */
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

static long http_once(ship *s, const char *url, const struct curl_slist *headers, const char *user,
                      const char *password, const char *body, size_t len, int gz, ship_resp *r)
{
    /* One handle for the sender's life: its connection is kept alive. */
    if (!s->curl) s->curl = curl_easy_init();
    CURL *c = s->curl;
    r->status = -1;
    r->retry_after_s = -1;
    r->error[0] = 0;
    buf_reset(&r->body);
    if (!c) {
        snprintf(r->error, sizeof r->error, "cannot start an HTTP client");
        return -1;
    }
    curl_easy_reset(c);
    buf z;
    buf_init(&z, (size_t)192 << 20);
    struct curl_slist *hdrs = NULL;
    for (const struct curl_slist *h = headers; h; h = h->next) hdrs = curl_slist_append(hdrs, h->data);
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    if (gz && gzip_body(body, len, &z) == 0) {
        hdrs = curl_slist_append(hdrs, "Content-Encoding: gzip");
        body = z.p;
        len = z.len;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (user && *user) {
        curl_easy_setopt(c, CURLOPT_USERNAME, user);
        if (password) curl_easy_setopt(c, CURLOPT_PASSWORD, password);
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    }
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    buf_free(&z);
    buf_putc(&r->body, 0); /* a C string for messages; len excludes it */
    if (!r->body.failed) r->body.len--;
    if (rc != CURLE_OK || status <= 0) {
        snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(rc));
        if (!atomic_fetch_add(&s->warned_down, 1))
            ship_log(s, TALLY_LOG_WARN, "%s cannot be reached (%s): batches are kept and retried", s->c.what,
                     r->error);
        return r->status = -1;
    }
    return r->status = status;
}

long ship_http(ship *s, const char *url, const struct curl_slist *headers, const char *user, const char *password,
               const char *body, size_t len, ship_resp *r)
{
    if (!r->body.max) buf_init(&r->body, RESPONSE_MAX + 1);
    long st = http_once(s, url, headers, user, password, body, len, s->gzip, r);
    if (st == 415 && s->gzip) {
        s->gzip = 0; /* this server takes no compressed bodies */
        st = http_once(s, url, headers, user, password, body, len, 0, r);
    }
    return st;
}

void ship_resp_free(ship_resp *r) { buf_free(&r->body); }

/* ---- the queue ----------------------------------------------------------------------- */

static void batch_free(batch *b)
{
    if (!b) return;
    free(b->body);
    free(b);
}

static batch *batch_new(ship *s, char *body, size_t len, uint32_t items)
{
    batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->body = body;
    b->len = len;
    b->items = items;
    snprintf(b->name, sizeof b->name, "%020lld-%010d-%010llu-%u", (long long)tally__real_us() * 1000, (int)getpid(),
             (unsigned long long)++s->seq, items);
    return b;
}

/* Queues b (mu held); when the queue is full (the sender is stuck on a
 * server that is away) it is returned for the caller to spool outside
 * the lock. */
static batch *enqueue_locked(ship *s, batch *b)
{
    if (s->queued + b->len > s->c.queue_bytes) return b;
    if (s->tail) s->tail->next = b;
    else s->head = b;
    s->tail = b;
    s->queued += b->len;
    pthread_cond_signal(&s->cv);
    return NULL;
}

static void spool_or_lose(ship *s, batch *b)
{
    if (!b) return;
    if (spool_write(s, b) != 0) lose(s, b->items);
    batch_free(b);
}

int ship_batch(ship *s, const char *body, size_t len, uint32_t items)
{
    char *copy = malloc(len ? len : 1);
    batch *b = copy ? batch_new(s, copy, len, items) : NULL;
    if (!b) {
        free(copy);
        lose(s, items);
        return -1;
    }
    memcpy(copy, body, len);
    pthread_mutex_lock(&s->mu);
    batch *full = enqueue_locked(s, b);
    pthread_mutex_unlock(&s->mu);
    if (!full) return 0;
    uint64_t before = atomic_load(s->lost);
    spool_or_lose(s, full);
    return atomic_load(s->lost) == before ? 0 : -1;
}

/* The open batch becomes a queued one (mu held); returns a batch for the
 * caller to spool when the queue is full. */
static batch *seal_locked(ship *s)
{
    if (!s->open_items) return NULL;
    batch *b = NULL;
    if (!s->open.failed) {
        b = batch_new(s, s->open.p, s->open.len, s->open_items);
        if (b) {
            /* the batch takes the buffer; the open one starts afresh */
            size_t max = s->open.max;
            buf_init(&s->open, max);
        }
    }
    if (!b) lose(s, s->open_items);
    buf_reset(&s->open);
    s->open_items = 0;
    return b ? enqueue_locked(s, b) : NULL;
}

int ship_append(ship *s, const char *body, size_t len, uint32_t items, int sync)
{
    batch *full = NULL, *full2 = NULL;
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (items) {
        if (s->open_items && s->open.len + len > s->c.batch_bytes) full = seal_locked(s);
        if (!s->open_items) s->open_since = tally__mono_ns();
        buf_put(&s->open, body, len);
        if (s->open.failed) {
            /* larger than a batch may be: these rows are lost, the batch kept */
            s->open.failed = 0;
            lose(s, items);
            rc = -1;
        } else {
            s->open_items += items;
        }
    }
    if (sync || s->open_items >= s->c.batch_items || s->open.len >= s->c.batch_bytes) full2 = seal_locked(s);
    else if (s->open_items) pthread_cond_signal(&s->cv); /* the sender keeps the linger time */
    pthread_mutex_unlock(&s->mu);
    spool_or_lose(s, full);
    spool_or_lose(s, full2);
    return rc;
}

/* Moves every queued batch to the spool (in order): while the server is
 * away, memory holds nothing that a crash could lose. */
static void queue_to_spool(ship *s)
{
    pthread_mutex_lock(&s->mu);
    batch *b = s->head;
    s->head = s->tail = NULL;
    s->queued = 0;
    pthread_mutex_unlock(&s->mu);
    while (b) {
        batch *n = b->next;
        spool_or_lose(s, b);
        b = n;
    }
}

static uint32_t backoff_wait(ship *s, int tries, long retry_after)
{
    if (retry_after >= 0) return (uint32_t)retry_after * 1000u;
    uint64_t w = (uint64_t)s->c.backoff_ms << (tries < 6 ? tries : 6);
    if (w > 60000) w = 60000;
    /* jitter: 75% .. 125% */
    uint64_t j = (uint64_t)(tally__mono_ns() / 1000) % (w / 2 + 1);
    return (uint32_t)(w * 3 / 4 + j);
}

/* Waits ms, or less when stopping.  Returns 1 when stop was asked. */
static int wait_ms(ship *s, uint32_t ms)
{
    struct timespec dl = tally__deadline((int64_t)ms * 1000000);
    pthread_mutex_lock(&s->mu);
    while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &dl) == 0) {
    }
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* ---- the sender thread -------------------------------------------------------------- */

static void *sender(void *arg)
{
    ship *s = arg;
    int tries = 0;
    int64_t linger = (int64_t)s->c.linger_ms * 1000000;
    int64_t next_tick = tally__mono_ns() + (int64_t)s->c.tick_ms * 1000000;
    int64_t stop_by = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int stop = s->stop;
        if (stop && !stop_by) stop_by = tally__mono_ns() + (int64_t)CLOSE_WAIT_MS * 1000000;
        batch *aged = NULL;
        if (s->open_items && (stop || tally__mono_ns() - s->open_since >= linger)) aged = seal_locked(s);
        int have_queue = s->head != NULL;
        pthread_mutex_unlock(&s->mu);
        spool_or_lose(s, aged);
        if (stop && tally__mono_ns() > stop_by) break;

        if (s->c.tick && tally__mono_ns() >= next_tick) {
            s->c.tick(s->c.ud, s);
            next_tick = tally__mono_ns() + (int64_t)s->c.tick_ms * 1000000;
        }

        char claimed[4300], orig[4300];
        batch *b = NULL;
        char *body = NULL;
        size_t len = 0;
        uint32_t items = 0;
        int from_spool = 0;
        if (spool_next(s, claimed, sizeof claimed, orig, sizeof orig)) {
            body = read_file(claimed, &len);
            const char *base = strrchr(orig, '/');
            items = items_of_name(base ? base + 1 : orig);
            from_spool = 1;
            if (!body) {
                lose(s, items);
                set_aside(s, claimed, base ? base + 1 : orig, NULL, "the spooled batch could not be read");
                continue;
            }
            /* what is queued is newer: it joins the spool behind */
            if (have_queue) queue_to_spool(s);
        } else if (have_queue) {
            pthread_mutex_lock(&s->mu);
            b = s->head;
            s->head = b->next;
            if (!s->head) s->tail = NULL;
            s->queued -= b->len;
            s->posting = 1;
            pthread_mutex_unlock(&s->mu);
            body = b->body;
            len = b->len;
            items = b->items;
        } else {
            pthread_mutex_lock(&s->mu);
            s->posting = 0;
            pthread_cond_broadcast(&s->idle_cv);
            if (stop) {
                pthread_mutex_unlock(&s->mu);
                break;
            }
            int64_t now = tally__mono_ns();
            int64_t until = s->c.tick ? next_tick : now + (int64_t)60000 * 1000000;
            if (s->open_items && s->open_since + linger < until) until = s->open_since + linger;
            if (until <= now) until = now + 1000000;
            if (!s->head && !s->stop) {
                struct timespec dl = tally__deadline(until - now);
                pthread_cond_timedwait(&s->cv, &s->mu, &dl);
            }
            pthread_mutex_unlock(&s->mu);
            continue;
        }

        long retry_after = -1;
        char reason[512] = "";
        int r = s->c.post(s->c.ud, s, body, len, items, &retry_after, reason, sizeof reason);
        if (r == SHIP_OK) {
            tries = 0;
            atomic_fetch_add(&s->sent, items);
            if (from_spool) unlink(claimed);
        } else if (r == SHIP_REJECT) {
            lose(s, items);
            if (from_spool) {
                const char *base = strrchr(orig, '/');
                set_aside(s, claimed, base ? base + 1 : orig, NULL, reason);
            } else if (s->spool) {
                set_aside(s, NULL, b->name, b, reason);
            }
        } else {
            if (from_spool) {
                rename(claimed, orig); /* back in line, first */
            } else if (spool_write(s, b) != 0) {
                /* no spool (or full): keep it in memory, first in line */
                pthread_mutex_lock(&s->mu);
                if (s->queued + b->len <= s->c.queue_bytes && !s->stop) {
                    b->next = s->head;
                    s->head = b;
                    if (!s->tail) s->tail = b;
                    s->queued += b->len;
                    b = NULL;
                }
                pthread_mutex_unlock(&s->mu);
                if (b) lose(s, items);
            }
            pthread_mutex_lock(&s->mu);
            if (!s->head) {
                /* what waits is on disk (or lost): a drain need not wait for the server */
                s->posting = 0;
                pthread_cond_broadcast(&s->idle_cv);
            }
            pthread_mutex_unlock(&s->mu);
            if (!stop) {
                uint32_t w = backoff_wait(s, tries++, retry_after);
                if (wait_ms(s, w) && s->spool) queue_to_spool(s); /* closing while the server is away */
            } else {
                if (s->spool) queue_to_spool(s);
                if (from_spool) free(body);
                else batch_free(b);
                break;
            }
        }
        if (from_spool) free(body);
        else batch_free(b);
    }
    /* Closing: what is still queued goes to the spool, else it is lost. */
    pthread_mutex_lock(&s->mu);
    batch *aged = seal_locked(s);
    pthread_mutex_unlock(&s->mu);
    spool_or_lose(s, aged);
    if (s->spool) queue_to_spool(s);
    pthread_mutex_lock(&s->mu);
    for (batch *b = s->head; b;) {
        batch *n = b->next;
        lose(s, b->items);
        batch_free(b);
        b = n;
    }
    s->head = s->tail = NULL;
    s->queued = 0;
    s->posting = 0;
    pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->c.tick) s->c.tick(s->c.ud, s);
    return NULL;
}

static void start_sender(ship *s)
{
    if (s->running) return;
    s->stop = 0;
    if (pthread_create(&s->thread, NULL, sender, s) == 0) s->running = 1;
    else ship_log(s, TALLY_LOG_ERROR, "%s: cannot start the thread that sends batches", s->c.what);
}

int ship_drain(ship *s, uint32_t ms)
{
    if (!s->running) start_sender(s);
    struct timespec dl = tally__deadline((int64_t)ms * 1000000);
    pthread_mutex_lock(&s->mu);
    batch *full = seal_locked(s);
    pthread_mutex_unlock(&s->mu);
    spool_or_lose(s, full);
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    int rc = 0;
    while ((s->head || s->posting || s->open_items) && s->running) {
        if (pthread_cond_timedwait(&s->idle_cv, &s->mu, &dl) != 0) {
            rc = -1;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

uint64_t ship_sent(const ship *s) { return atomic_load((_Atomic uint64_t *)&s->sent); }

void ship_after_fork(ship *s)
{
    s->curl = NULL; /* the parent's connection */
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    /* The parent's queue, open batch and sender stay with the parent. */
    s->head = s->tail = NULL;
    s->queued = 0;
    s->posting = 0;
    s->running = 0;
    s->stop = 0;
    buf_reset(&s->open);
    s->open_items = 0;
    s->seq = 0;
}

void ship_close(ship *s)
{
    if (!s) return;
    if (!s->running && (s->open_items || s->head)) start_sender(s);
    if (s->running) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        s->running = 0;
    }
    if (s->curl) curl_easy_cleanup(s->curl);
    buf_free(&s->open);
    free(s->spool);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->idle_cv);
    free(s);
}

const char *ship_spool_dir(const struct tally *h, const char *env_name, const char *configured, const char *suffix,
                           char *def, size_t n)
{
    const char *spool = getenv(env_name);
    if (!spool || !*spool) spool = configured;
    if ((!spool || !*spool) && (h->path || h->db_path)) {
        snprintf(def, n, "%s%s", h->path ? h->path : h->db_path, suffix);
        spool = def;
    }
    return spool;
}

ship *ship_open(const ship_conf *c)
{
    tally__curl_init();
    ship *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->c = *c;
    if (!s->c.what) s->c.what = "server";
    if (!s->c.queue_bytes) s->c.queue_bytes = (size_t)16 << 20;
    if (!s->c.batch_bytes) s->c.batch_bytes = (size_t)1 << 20;
    if (!s->c.batch_items) s->c.batch_items = 512;
    if (!s->c.linger_ms) s->c.linger_ms = 1000;
    if (!s->c.backoff_ms) s->c.backoff_ms = 1000;
    if (!s->c.tick_ms) s->c.tick_ms = 60000;
    s->lost = c->lost ? c->lost : &s->own_lost;
    s->gzip = !c->plain;
    if (c->spool && *c->spool) {
        if (tally__mkdir_p(c->spool, 0) == 0) s->spool = strdup(c->spool);
        if (!s->spool)
            ship_log(s, TALLY_LOG_WARN, "%s spool %s cannot be made (%s): batches wait in memory only", s->c.what,
                     c->spool, strerror(errno));
    }
    s->spool_cap = c->spool_max_bytes ? c->spool_max_bytes : (uint64_t)256 << 20;
    atomic_store(&s->spool_pending, s->spool != NULL); /* an earlier process's batches, if any */
    buf_init(&s->open, s->c.batch_bytes + ((size_t)4 << 20));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    /* At once, not at the first batch: a spool left by an earlier process
     * is replayed even by one that sends nothing. */
    start_sender(s);
    return s;
}
