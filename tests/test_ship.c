/*
 * test_ship -- the delivery machinery shared by the OTLP exporter and the
 * ClickHouse sink (src/ship.c), against an HTTP server in this process
 * (libmicrohttpd) that refuses, fails and accepts on cue.  Run under
 * ThreadSanitizer in CI (label concurrency): rows are appended by one
 * thread while the sender seals, posts, spools and replays on its own.
 *
 *   - a server answering 503 at first: every row arrives once, in order;
 *   - no server at all, then one: the spool holds every batch and a new
 *     shipper on the same spool delivers them, once, in order;
 *   - a refusal (400): the batch is counted lost, set aside with the
 *     server's message, and not retried.
 */
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "ship.h"

typedef struct server {
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    char *got;                 /* every accepted body, in order */
    size_t got_len, got_cap;
    _Atomic int posts;
    int fail_first;            /* answer 503 to this many posts */
    int refuse_bad;            /* answer 400 to a body holding "BAD" */
} server;

typedef struct upload {
    char *p;
    size_t n;
} upload;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *size, void **state)
{
    (void)url;
    (void)method;
    (void)version;
    server *s = cls;
    upload *u = *state;
    if (!u) {
        *state = u = calloc(1, sizeof *u);
        return u ? MHD_YES : MHD_NO;
    }
    if (*size) {
        char *np = realloc(u->p, u->n + *size);
        if (!np) return MHD_NO;
        memcpy(np + u->n, data, *size);
        u->p = np;
        u->n += *size;
        *size = 0;
        return MHD_YES;
    }
    int n = atomic_fetch_add(&s->posts, 1);
    unsigned status = 200;
    const char *msg = "ok";
    if (n < s->fail_first) {
        status = 503;
        msg = "busy";
    } else if (s->refuse_bad && u->n >= 3 && memmem(u->p, u->n, "BAD", 3)) {
        status = 400;
        msg = "Code: 27, DB::Exception: Cannot parse input: BAD row";
    } else {
        pthread_mutex_lock(&s->mu);
        if (s->got_len + u->n > s->got_cap) {
            size_t cap = (s->got_len + u->n) * 2;
            char *g = realloc(s->got, cap);
            if (g) {
                s->got = g;
                s->got_cap = cap;
            }
        }
        if (s->got_len + u->n <= s->got_cap) {
            memcpy(s->got + s->got_len, u->p, u->n);
            s->got_len += u->n;
        }
        pthread_mutex_unlock(&s->mu);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(msg), (void *)msg, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static void on_done(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode t)
{
    (void)cls;
    (void)c;
    (void)t;
    upload *u = *state;
    if (u) free(u->p);
    free(u);
    *state = NULL;
}

static void server_start(server *s, int port)
{
    s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL,
                            on_request, s, MHD_OPTION_NOTIFY_COMPLETED, on_done, s, MHD_OPTION_END);
    assert_non_null(s->d);
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = i->port;
}

static void server_init(server *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
}

static void server_stop(server *s)
{
    if (s->d) MHD_stop_daemon(s->d);
    s->d = NULL;
}

static void server_free(server *s)
{
    server_stop(s);
    free(s->got);
    pthread_mutex_destroy(&s->mu);
}

typedef struct target {
    char url[64];
} target;

static int post(void *ud, ship *sh, const char *body, size_t len, uint32_t items, long *retry_after, char *reason,
                size_t reason_len)
{
    (void)items;
    target *t = ud;
    ship_resp r = {0};
    long st = ship_http(sh, t->url, NULL, NULL, NULL, body, len, &r);
    *retry_after = -1;
    int out = st == 200 ? SHIP_OK : st < 0 || st == 503 ? SHIP_RETRY : SHIP_REJECT;
    if (out == SHIP_REJECT) snprintf(reason, reason_len, "HTTP %ld: %s", st, r.body.len ? r.body.p : "");
    ship_resp_free(&r);
    return out;
}

static ship *open_ship(target *t, const char *spool, _Atomic uint64_t *lost)
{
    ship_conf c = {
        .what = "test server",
        .post = post,
        .ud = t,
        .spool = spool,
        .backoff_ms = 20,
        .batch_items = 5000,
        .batch_bytes = (size_t)1 << 20,
        .linger_ms = 50,
        .lost = lost,
        .plain = 1,
    };
    ship *s = ship_open(&c);
    assert_non_null(s);
    return s;
}

/* Rows "row N\n" from `from` to `to` (exclusive), appended in chunks. */
typedef struct feeder {
    ship *s;
    int from, to;
} feeder;

static void *feed(void *arg)
{
    feeder *f = arg;
    char chunk[64 * 1000];
    for (int i = f->from; i < f->to;) {
        size_t n = 0;
        uint32_t items = 0;
        for (; i < f->to && items < 1000; i++, items++)
            n += (size_t)snprintf(chunk + n, sizeof chunk - n, "row %d\n", i);
        ship_append(f->s, chunk, n, items, (i % 20000) == 0);
    }
    return NULL;
}

/* Every row from 0 to n-1, once, in order. */
static void assert_rows(const server *s, int n)
{
    char *p = s->got, *end = s->got + s->got_len;
    for (int i = 0; i < n; i++) {
        char want[32];
        int k = snprintf(want, sizeof want, "row %d\n", i);
        if (end - p < k || memcmp(p, want, (size_t)k)) fail_msg("row %d missing or out of order", i);
        p += k;
    }
    assert_true(p == end);
}

/* The server (s->fail_first / refuse_bad already set) started, and a
 * shipper sending to it with a spool of its own. */
static ship *start_both(server *s, target *t, char *spool, size_t n, const char *tag, _Atomic uint64_t *lost)
{
    server_start(s, 0);
    snprintf(t->url, sizeof t->url, "http://127.0.0.1:%d/", s->port);
    snprintf(spool, n, "%s/spool", th_tmpdir(tag));
    return open_ship(t, spool, lost);
}

static void test_retried_until_accepted_in_order(void **st)
{
    (void)st;
    server s;
    server_init(&s);
    s.fail_first = 5;
    target t;
    char spool[600];
    _Atomic uint64_t lost = 0;
    ship *sh = start_both(&s, &t, spool, sizeof spool, "ship-spool", &lost);
    feeder f = {sh, 0, 200000};
    pthread_t th;
    pthread_create(&th, NULL, feed, &f);
    pthread_join(th, NULL);
    assert_int_equal(ship_drain(sh, 30000), 0);
    for (int k = 0; k < 500 && ship_sent(sh) < 200000; k++) usleep(20000);
    ship_close(sh);
    assert_int_equal(atomic_load(&lost), 0);
    assert_true(atomic_load(&s.posts) > 5);
    server_stop(&s);
    assert_rows(&s, 200000);
    server_free(&s);
}

static void test_spool_replayed_by_the_next_shipper(void **st)
{
    (void)st;
    server s;
    server_init(&s);
    server_start(&s, 0); /* a free port, closed again: nothing listens there */
    int port = s.port;
    server_stop(&s);
    target t;
    snprintf(t.url, sizeof t.url, "http://127.0.0.1:%d/", port);
    char spool[600];
    snprintf(spool, sizeof spool, "%s/spool", th_tmpdir("ship-spool2"));
    _Atomic uint64_t lost = 0;
    ship *sh = open_ship(&t, spool, &lost);
    feeder f = {sh, 0, 30000};
    feed(&f);
    ship_close(sh);
    assert_int_equal(atomic_load(&lost), 0);
    char cmd[1300];
    snprintf(cmd, sizeof cmd, "test \"$(ls %s | grep -v rejected | wc -l)\" -ge 6", spool); /* 30 batches */
    assert_int_equal(system(cmd), 0);
    server_start(&s, port);
    sh = open_ship(&t, spool, &lost);
    feeder g = {sh, 30000, 31000};
    feed(&g);
    assert_int_equal(ship_drain(sh, 30000), 0);
    for (int k = 0; k < 500 && s.got_len < strlen("row 30999\n") * 31000 / 2; k++) usleep(20000);
    ship_close(sh);
    server_stop(&s);
    assert_int_equal(atomic_load(&lost), 0);
    assert_rows(&s, 31000); /* the spool first, in order, then the new rows */
    server_free(&s);
}

static void test_refused_batch_set_aside(void **st)
{
    (void)st;
    server s;
    server_init(&s);
    s.refuse_bad = 1;
    target t;
    char spool[600];
    _Atomic uint64_t lost = 0;
    ship *sh = start_both(&s, &t, spool, sizeof spool, "ship-spool3", &lost);
    ship_append(sh, "good 1\ngood 2\n", 14, 2, 1);
    assert_int_equal(ship_drain(sh, 10000), 0);
    ship_append(sh, "BAD 1\nBAD 2\nBAD 3\n", 18, 3, 1);
    assert_int_equal(ship_drain(sh, 10000), 0);
    ship_close(sh);
    server_stop(&s);
    assert_int_equal(atomic_load(&lost), 3);
    assert_int_equal(atomic_load(&s.posts), 2); /* the refusal was not retried */
    assert_int_equal(s.got_len, 14);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "test \"$(ls %s/rejected | wc -l)\" -eq 2 && grep -q 'Cannot parse input' %s/rejected/*.reason"
             " && cat %s/rejected/* | grep -c BAD | grep -q 4",
             spool, spool, spool);
    assert_int_equal(system(cmd), 0);
    server_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retried_until_accepted_in_order),
        cmocka_unit_test(test_spool_replayed_by_the_next_shipper),
        cmocka_unit_test(test_refused_batch_set_aside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
