/*
 * sink_metrics -- the Prometheus endpoint: a sink that adds every event to
 * the shared series table (metrics.h) on the writer thread, and an HTTP
 * server (libmicrohttpd, its own thread) that renders the table at
 * /metrics in the text format 0.0.4.
 *
 * The table is shared with forked workers, so the opener's endpoint shows
 * the whole run.  Each process adds its own health counters (events
 * offered / written / dropped, each sink's losses) as deltas at every
 * commit, so those are sums over the run too.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "energy.h"
#include "internal.h"
#include "metrics.h"
#include "row.h"

/* The HTTP server: a table, and what to do before each scrape. */
struct metrics_http {
    metrics *m;
    struct MHD_Daemon *httpd;
    int listen_fd;
    int port;
    void (*before)(void *ud);
    void *ud;
};

typedef struct msink {
    metrics *m;
    metrics_http *http;
    /* What this process has added to the health counters so far. */
    uint64_t offered, written, dropped;
    uint64_t lost[TALLY_MAX_SINKS];
} msink;

int metrics_listen_parse(const char *spec, struct sockaddr_storage *out, socklen_t *out_len, char *err,
                         size_t errlen)
{
    char host[128] = "127.0.0.1";
    const char *port_s = spec;
    const char *colon = strrchr(spec, ':');
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host) goto bad;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = 0;
        port_s = close + 2;
    } else if (colon) {
        size_t n = (size_t)(colon - spec);
        if (n >= sizeof host) goto bad;
        if (n) {
            memcpy(host, spec, n);
            host[n] = 0;
        }
        port_s = colon + 1;
    }
    char *end;
    long port = strtol(port_s, &end, 10);
    if (!*port_s || *end || port < 0 || port > 65535) goto bad;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl = 0;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        sl = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        sl = sizeof *a6;
    } else {
        goto bad;
    }
    *out = ss;
    *out_len = sl;
    return 0;
bad:
    snprintf(err, errlen, "metrics endpoint '%s': expected HOST:PORT (127.0.0.1:9464)", spec);
    return -1;
}

/* A listening socket on spec, or -1 (err). */
static int listen_on(const char *spec, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (metrics_listen_parse(spec, &ss, &sl, err, errlen) != 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "metrics endpoint %s: socket: %s", spec, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "metrics endpoint %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Device energy comes from the sampler of the process that serves. */
static void add_device_energy(void *ud)
{
    sink *s = ud;
    msink *ms = s->state;
    if (!s->h->energy) return;
    energy_device_total d[16];
    int n = energy_devices(s->h->energy, d, 16);
    for (int i = 0; i < n && i < 16; i++) {
        const char *v[1] = {d[i].name};
        metrics_set(ms->m, MXF_ENERGY, v, d[i].total_j);
    }
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    metrics_http *mh = cls;
    struct MHD_Response *r;
    unsigned status;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char msg[] = "only GET\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") != 0) {
        static const char msg[] = "tally serves /metrics\n";
        r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    } else {
        if (mh->before) mh->before(mh->ud);
        buf b;
        buf_init(&b, (size_t)64 << 20);
        metrics_render(mh->m, &b);
        if (b.failed) {
            buf_free(&b);
            static const char msg[] = "too many series\n";
            r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        } else {
            r = MHD_create_response_from_buffer(b.len, b.p, MHD_RESPMEM_MUST_FREE);
            if (!r) buf_free(&b);
            else MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            status = MHD_HTTP_OK;
        }
    }
    if (!r) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static int ms_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)ev;
    (void)line;
    (void)len;
    msink *ms = s->state;
    metrics_observe(ms->m, r);
    return 0;
}

static void add_delta(msink *ms, mx_family_id f, const char *const *v, uint64_t now, uint64_t *seen)
{
    if (now > *seen) metrics_add(ms->m, f, v, (double)(now - *seen));
    *seen = now;
}

static uint64_t ms_commit(sink *s, int sync)
{
    (void)sync;
    msink *ms = s->state;
    tally_counters c;
    tally_get_counters(s->h, &c);
    add_delta(ms, MXF_OFFERED, NULL, c.offered, &ms->offered);
    add_delta(ms, MXF_WRITTEN, NULL, c.written, &ms->written);
    add_delta(ms, MXF_DROPPED, NULL, c.dropped, &ms->dropped);
    for (int i = 0; i < s->h->n_sinks && i < TALLY_MAX_SINKS; i++) {
        const char *v[1] = {s->h->sinks[i].ops->name};
        add_delta(ms, MXF_SINK_LOST, v, atomic_load(&s->h->sinks[i].lost), &ms->lost[i]);
    }
    return 0;
}

/* A forked worker adds to the same table; it does not serve (the server's
 * thread is the opener's) and its health counters start from here.
 * Called with h->mu held. */
static void ms_after_fork(sink *s)
{
    msink *ms = s->state;
    metrics_http_forget(ms->http);
    ms->http = NULL;
    counts c; /* the caller holds h->mu: count directly */
    tally__count(s->h, &c);
    ms->offered = c.offered;
    ms->written = atomic_load(&s->h->written);
    ms->dropped = c.dropped;
    for (int i = 0; i < s->h->n_sinks && i < TALLY_MAX_SINKS; i++) ms->lost[i] = atomic_load(&s->h->sinks[i].lost);
}

static void ms_close(sink *s)
{
    msink *ms = s->state;
    if (!ms) return;
    metrics_http_stop(ms->http);
    metrics_free(ms->m);
    free(ms);
    s->state = NULL;
}

static const sink_ops ms_ops = {"metrics", 1, ms_write, ms_commit, ms_after_fork, ms_close};

metrics_http *metrics_http_start(metrics *m, const char *listen, void (*before)(void *), void *ud, char *err,
                                size_t errlen)
{
    metrics_http *mh = calloc(1, sizeof *mh);
    if (!mh) {
        snprintf(err, errlen, "metrics endpoint %s: out of memory", listen);
        return NULL;
    }
    mh->m = m;
    mh->before = before;
    mh->ud = ud;
    mh->listen_fd = listen_on(listen, err, errlen);
    if (mh->listen_fd < 0) {
        free(mh);
        return NULL;
    }
    mh->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, answer, mh,
                                 MHD_OPTION_LISTEN_SOCKET, (MHD_socket)mh->listen_fd, MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned)32, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!mh->httpd) {
        snprintf(err, errlen, "metrics endpoint %s: cannot start the HTTP server", listen);
        close(mh->listen_fd);
        free(mh);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(mh->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        mh->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                  : ((struct sockaddr_in *)&ss)->sin_port);
    return mh;
}

int metrics_http_port(const metrics_http *mh) { return mh ? mh->port : 0; }

void metrics_http_stop(metrics_http *mh)
{
    if (!mh) return;
    MHD_stop_daemon(mh->httpd); /* closes the socket it was given */
    free(mh);
}

/* In a forked child: the server's thread is the parent's; the child only
 * lets go of the socket. */
void metrics_http_forget(metrics_http *mh)
{
    if (mh) close(mh->listen_fd);
}

int sink_metrics_open(struct tally *h, sink *s, const char *listen, uint32_t series_cap)
{
    s->ops = &ms_ops;
    s->h = h;
    s->state = NULL;
    msink *ms = calloc(1, sizeof *ms);
    if (!ms) return -1;
    ms->m = metrics_new(0, series_cap);
    if (!ms->m) {
        free(ms);
        tally__log(h, TALLY_LOG_WARN, "metrics endpoint: no shared memory for the series");
        return -1;
    }
    s->state = ms;
    if (listen) {
        char err[256];
        ms->http = metrics_http_start(ms->m, listen, add_device_energy, s, err, sizeof err);
        if (!ms->http) tally__log(h, TALLY_LOG_WARN, "%s; no /metrics", err);
    }
    return 0;
}

int sink_metrics_port(const sink *s) { return s && s->state ? metrics_http_port(((const msink *)s->state)->http) : 0; }

metrics *sink_metrics_table(const sink *s) { return s && s->state ? ((const msink *)s->state)->m : NULL; }
