/*
 * _tally -- the CPython extension module under the `tally` package: one
 * type, Handle, over a tally_t, plus the tally command itself (cli()).
 *
 * The recording methods hold the GIL for the whole call and never release
 * it: a call is a keyword walk and one libtally call (tens of
 * nanoseconds), far less than a GIL hand-over.  Everything that can wait
 * (flush, close, taking from the inbox) releases it.
 *
 * Keywords are the C structs' member names.  The request's come from the
 * field table (src/fields.h) plus the members with rules of their own, so
 * a field added there is a keyword here without a change to this file.
 *
 * The inbox: libtally calls the subscriber and the log function on its
 * own threads, which must never wait for the GIL (a caller that holds it
 * while flushing would deadlock, and at interpreter shutdown taking it
 * kills the thread).  So those functions only copy the line into a
 * bounded buffer; a Python thread of the package (tally/__init__.py)
 * takes the buffer and calls the user's functions.  A full inbox drops
 * lines and counts them (counters()["subscriber_dropped"]).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "fields.h"
#include "tally.h"

/* ---- the inbox -------------------------------------------------------- */

#define INBOX_CAP ((size_t)16 << 20)
enum { ITEM_EVENT = 0, ITEM_LOG = 1 };

typedef struct inbox {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf;              /* items: kind, level, u32 length, bytes */
    size_t len, cap;
    uint64_t dropped;
    int closed;
    struct inbox *next;     /* every inbox, for the fork handler */
} inbox;

static pthread_mutex_t inboxes_mu = PTHREAD_MUTEX_INITIALIZER;
static inbox *inboxes;

static void inbox_push(inbox *ib, int kind, int level, const char *s, size_t n)
{
    if (n > INBOX_CAP / 2) n = INBOX_CAP / 2;
    size_t need = 6 + n;
    pthread_mutex_lock(&ib->mu);
    if (ib->closed || ib->len + need > INBOX_CAP) {
        ib->dropped++;
        pthread_mutex_unlock(&ib->mu);
        return;
    }
    if (ib->len + need > ib->cap) {
        size_t cap = ib->cap ? ib->cap : 64 * 1024;
        while (cap < ib->len + need) cap *= 2;
        if (cap > INBOX_CAP) cap = INBOX_CAP;
        char *nb = realloc(ib->buf, cap);
        if (!nb) {
            ib->dropped++;
            pthread_mutex_unlock(&ib->mu);
            return;
        }
        ib->buf = nb;
        ib->cap = cap;
    }
    char *p = ib->buf + ib->len;
    uint32_t n32 = (uint32_t)n;
    p[0] = (char)kind;
    p[1] = (char)level;
    memcpy(p + 2, &n32, 4);
    memcpy(p + 6, s, n);
    ib->len += need;
    pthread_cond_signal(&ib->cv);
    pthread_mutex_unlock(&ib->mu);
}

static void inbox_event(void *ud, const char *line, size_t len) { inbox_push(ud, ITEM_EVENT, 0, line, len); }
static void inbox_log(void *ud, int level, const char *msg) { inbox_push(ud, ITEM_LOG, level, msg, strlen(msg)); }

static inbox *inbox_new(void)
{
    inbox *ib = calloc(1, sizeof *ib);
    if (!ib) return NULL;
    pthread_mutex_init(&ib->mu, NULL);
    pthread_cond_init(&ib->cv, NULL);
    pthread_mutex_lock(&inboxes_mu);
    ib->next = inboxes;
    inboxes = ib;
    pthread_mutex_unlock(&inboxes_mu);
    return ib;
}

static void inbox_free(inbox *ib)
{
    if (!ib) return;
    pthread_mutex_lock(&inboxes_mu);
    for (inbox **pp = &inboxes; *pp; pp = &(*pp)->next)
        if (*pp == ib) {
            *pp = ib->next;
            break;
        }
    pthread_mutex_unlock(&inboxes_mu);
    pthread_mutex_destroy(&ib->mu);
    pthread_cond_destroy(&ib->cv);
    free(ib->buf);
    free(ib);
}

/* In a forked child: the parent's writer may have held a lock, and what is
 * queued belongs to the parent (its delivery thread hands it over).  The
 * buffer is left behind, not freed: it may have been mid-realloc. */
static void inbox_after_fork_child(void)
{
    pthread_mutex_init(&inboxes_mu, NULL);
    for (inbox *ib = inboxes; ib; ib = ib->next) {
        pthread_mutex_init(&ib->mu, NULL);
        pthread_cond_init(&ib->cv, NULL);
        ib->buf = NULL;
        ib->len = ib->cap = 0;
        ib->dropped = 0;
        ib->closed = 0;
    }
}

/* ---- values ------------------------------------------------------------ */

static PyObject *json_dumps;    /* set by the package: tally._json_dumps */

static int type_error(const char *fn, const char *key, const char *want, PyObject *v)
{
    PyErr_Format(PyExc_TypeError, "%s(): %s must be %s, not %.100s", fn, key, want, Py_TYPE(v)->tp_name);
    return -1;
}

/* An integer: int (not bool), a float (rounded; NaN and infinities count
 * as absent: returns 1), or anything with __index__ (numpy integers). */
static int to_i64(const char *fn, const char *key, PyObject *v, int64_t *out)
{
    if (PyLong_Check(v) && !PyBool_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) x = overflow > 0 ? INT64_MAX : INT64_MIN;
        *out = x;
        return 0;
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        if (!isfinite(d)) return 1;
        *out = d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : (int64_t)llround(d);
        return 0;
    }
    if (!PyBool_Check(v) && PyIndex_Check(v)) {
        PyObject *i = PyNumber_Index(v);
        if (!i) return -1;
        int r = to_i64(fn, key, i, out);
        Py_DECREF(i);
        return r;
    }
    return type_error(fn, key, "an int", v);
}

/* A number: float, int, or anything with __float__ (numpy, a 0-d tensor). */
static int to_f64(const char *fn, const char *key, PyObject *v, double *out)
{
    if (PyFloat_Check(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    if (PyBool_Check(v)) return type_error(fn, key, "a number", v);
    if (PyLong_Check(v)) {
        *out = PyLong_AsDouble(v);
        if (*out == -1.0 && PyErr_Occurred()) {
            /* beyond a double: an infinity of its sign */
            PyErr_Clear();
            *out = PyObject_RichCompareBool(v, Py_False, Py_LT) == 1 ? -INFINITY : INFINITY;
        }
        return 0;
    }
    if (Py_TYPE(v)->tp_as_number && Py_TYPE(v)->tp_as_number->nb_float) {
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return type_error(fn, key, "a number", v);
        }
        *out = d;
        return 0;
    }
    return type_error(fn, key, "a number", v);
}

static int to_str(const char *fn, const char *key, PyObject *v, const char **out)
{
    if (!PyUnicode_Check(v)) return type_error(fn, key, "str", v);
    const char *s = PyUnicode_AsUTF8AndSize(v, NULL);
    if (!s) {
        /* lone surrogates: keep what can be kept rather than raise */
        PyErr_Clear();
        s = "\xef\xbf\xbd";
    }
    *out = s;
    return 0;
}

/* JSON: a str is given as it is (libtally checks it); anything else goes
 * through the package's encoder.  The new reference goes to *keep. */
static int to_json(const char *fn, const char *key, PyObject *v, const char **out, PyObject **keep)
{
    if (PyUnicode_Check(v)) return to_str(fn, key, v, out);
    if (!json_dumps) return type_error(fn, key, "a JSON string", v);
    PyObject *s = PyObject_CallOneArg(json_dumps, v);
    if (!s) {
        PyErr_Clear();
        return type_error(fn, key, "JSON-serialisable", v);
    }
    if (!PyUnicode_Check(s)) {
        Py_DECREF(s);
        return type_error(fn, key, "JSON-serialisable", v);
    }
    *keep = s;
    return to_str(fn, key, s, out);
}

/* ---- keywords ---------------------------------------------------------- */

/* What a keyword is: K_* of the member it sets. */
enum { K_STR = 1, K_I64, K_F64, K_JSON, K_INT, K_UINT, K_STAGES, K_BOOL, K_SIZE, K_U32, K_U64 };

typedef struct kw {
    const char *name;
    int type;
    size_t off;
    unsigned has;           /* request: the TALLY_HAS_* bit a given value sets */
    PyObject *interned;
} kw;

#define PRESENT_BIT(p) ((unsigned)(p) & 0xffffu)
#define REQ_LABEL(SLOT, name, flags) {#name, K_STR, offsetof(tally_request, name), 0, NULL},
#define REQ_NUMBER(key, api, rec, type, present, row, rowbit, flags) \
    {#api, (type) == FLD_I64 ? K_I64 : K_F64, offsetof(tally_request, api), PRESENT_BIT(present), NULL},

static kw request_kws[] = {
    TALLY_REQUEST_LABELS(REQ_LABEL) TALLY_REQUEST_NUMBERS(REQ_NUMBER)
    {"cost_input_nusd", K_I64, offsetof(tally_request, cost_input_nusd), TALLY_HAS_COST, NULL},
    {"cost_cached_nusd", K_I64, offsetof(tally_request, cost_cached_nusd), TALLY_HAS_COST, NULL},
    {"cost_cache_write_nusd", K_I64, offsetof(tally_request, cost_cache_write_nusd), TALLY_HAS_COST, NULL},
    {"cost_output_nusd", K_I64, offsetof(tally_request, cost_output_nusd), TALLY_HAS_COST, NULL},
    {"cost_reasoning_nusd", K_I64, offsetof(tally_request, cost_reasoning_nusd), TALLY_HAS_COST, NULL},
    {"error", K_STR, offsetof(tally_request, error), 0, NULL},
    {"degraded", K_STR, offsetof(tally_request, degraded), 0, NULL},
    {"flags", K_UINT, offsetof(tally_request, flags), 0, NULL},
    {"sampling_json", K_JSON, offsetof(tally_request, sampling_json), 0, NULL},
    {"text", K_STR, offsetof(tally_request, text), 0, NULL},
    {"extra_json", K_JSON, offsetof(tally_request, extra_json), 0, NULL},
    {"begin_token", K_I64, offsetof(tally_request, begin_token), 0, NULL},
    {"device", K_INT, offsetof(tally_request, device), 0, NULL},
    {"stages", K_STAGES, offsetof(tally_request, stages), 0, NULL},
};
#define N_REQUEST_KWS (sizeof request_kws / sizeof request_kws[0])

/* tally_config, except log / subscriber (the package's inbox). */
#define CFG(name, type) {#name, type, offsetof(tally_config, name), 0, NULL},
static kw config_kws[] = {
    CFG(path, K_STR) CFG(run_dir, K_STR) CFG(sqlite_path, K_STR) CFG(prices_path, K_STR)
    CFG(retention_max_age_s, K_I64) CFG(retention_max_rows, K_I64) CFG(energy, K_BOOL)
    CFG(energy_interval_ms, K_U32) CFG(flush_events, K_U32) CFG(flush_ms, K_U32) CFG(fsync_on_flush, K_BOOL)
    CFG(queue_bytes, K_SIZE) CFG(max_threads, K_U32) CFG(capture_text, K_BOOL) CFG(max_string, K_SIZE)
    CFG(run_id, K_STR) CFG(phase, K_STR) CFG(host, K_STR) CFG(backend, K_STR) CFG(backend_device, K_STR)
    CFG(model, K_STR) CFG(model_path, K_STR) CFG(config_json, K_JSON) CFG(git_sha, K_STR)
    CFG(git_branch, K_STR) CFG(git_dirty, K_BOOL) CFG(memory_sink, K_BOOL) CFG(memory_max_events, K_SIZE)
    CFG(metrics_listen, K_STR) CFG(metrics_series_cap, K_U32) CFG(otlp_endpoint, K_STR) CFG(otlp_spool_dir, K_STR)
    CFG(otlp_spool_max_bytes, K_U64) CFG(otlp_backoff_ms, K_U32) CFG(otlp_metrics_interval_ms, K_U32)
    CFG(clickhouse, K_STR) CFG(clickhouse_spool_dir, K_STR) CFG(clickhouse_spool_max_bytes, K_U64)
    CFG(clickhouse_backoff_ms, K_U32)
};
#define N_CONFIG_KWS (sizeof config_kws / sizeof config_kws[0])

static int intern_kws(kw *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        k[i].interned = PyUnicode_InternFromString(k[i].name);
        if (!k[i].interned) return -1;
    }
    return 0;
}

/* Keyword names from a call site are interned: a pointer compare finds
 * them; anything else is compared by value. */
static const kw *find_kw(const kw *k, size_t n, PyObject *name)
{
    for (size_t i = 0; i < n; i++)
        if (k[i].interned == name) return &k[i];
    for (size_t i = 0; i < n; i++)
        if (PyUnicode_Compare(k[i].interned, name) == 0) return &k[i];
    PyErr_Clear();
    return NULL;
}

#define MAX_STAGES 32
#define MAX_KEEP 48

typedef struct parsed {
    PyObject *keep[MAX_KEEP];
    int n_keep;
    tally_stage stages[MAX_STAGES];
} parsed;

static void parsed_release(parsed *p)
{
    for (int i = 0; i < p->n_keep; i++) Py_DECREF(p->keep[i]);
    p->n_keep = 0;
}

static int set_stages(const char *fn, PyObject *v, tally_request *rq, parsed *p)
{
    if (!PyDict_Check(v)) return type_error(fn, "stages", "a dict of name: microseconds", v);
    Py_ssize_t pos = 0, n = 0;
    PyObject *k, *val;
    while (PyDict_Next(v, &pos, &k, &val)) {
        if (n == MAX_STAGES) {
            PyErr_Format(PyExc_TypeError, "%s(): stages: at most %d", fn, MAX_STAGES);
            return -1;
        }
        if (to_str(fn, "stages' names", k, &p->stages[n].name)) return -1;
        if (to_i64(fn, "stages' values", val, &p->stages[n].us) < 0) return -1;
        n++;
    }
    rq->stages = p->stages;
    rq->n_stages = (size_t)n;
    return 0;
}

/* Sets one member of `base` from v.  Returns 0, or -1 with an exception. */
static int set_kw(const char *fn, const kw *k, PyObject *v, void *base, unsigned *flags, parsed *p)
{
    char *m = (char *)base + k->off;
    int r;
    switch (k->type) {
    case K_STR: return to_str(fn, k->name, v, (const char **)m);
    case K_JSON: {
        PyObject *keep = NULL;
        if (p->n_keep == MAX_KEEP) return type_error(fn, k->name, "given once", v);
        r = to_json(fn, k->name, v, (const char **)m, &keep);
        if (keep) p->keep[p->n_keep++] = keep;
        return r;
    }
    case K_I64:
        r = to_i64(fn, k->name, v, (int64_t *)m);
        if (r < 0) return -1;
        if (r == 0 && flags) *flags |= k->has;
        return 0;
    case K_F64:
        if (to_f64(fn, k->name, v, (double *)m)) return -1;
        if (flags && isfinite(*(double *)m)) *flags |= k->has;
        return 0;
    case K_INT:
    case K_UINT:
    case K_U32:
    case K_U64:
    case K_SIZE: {
        int64_t x = 0;
        if (PyFloat_Check(v)) return type_error(fn, k->name, "an int", v);
        r = to_i64(fn, k->name, v, &x);
        if (r < 0) return -1;
        if (k->type != K_INT && x < 0) {
            PyErr_Format(PyExc_ValueError, "%s(): %s must not be negative", fn, k->name);
            return -1;
        }
        if (k->type == K_INT) *(int *)m = x > INT32_MAX ? INT32_MAX : x < INT32_MIN ? INT32_MIN : (int)x;
        else if (k->type == K_UINT) *(unsigned *)m = x > (int64_t)UINT32_MAX ? UINT32_MAX : (unsigned)x;
        else if (k->type == K_U32) *(uint32_t *)m = x > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)x;
        else if (k->type == K_U64) *(uint64_t *)m = (uint64_t)x;
        else *(size_t *)m = (size_t)x;
        return 0;
    }
    case K_BOOL:
        *(int *)m = PyObject_IsTrue(v);
        return *(int *)m < 0 ? -1 : 0;
    case K_STAGES: return set_stages(fn, v, base, p);
    }
    return -1;
}

/* Keyword arguments (vectorcall form) onto `base`.  None means "not given". */
static int parse_kwargs(const char *fn, const kw *table, size_t n_table, PyObject *const *vals, PyObject *kwnames,
                        void *base, unsigned *flags, parsed *p)
{
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        const kw *k = find_kw(table, n_table, name);
        if (!k) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, name);
            return -1;
        }
        if (vals[i] == Py_None) continue;
        if (set_kw(fn, k, vals[i], base, flags, p)) return -1;
    }
    return 0;
}

/* ---- Handle -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tally_t *h;
    inbox *ib;
    int inflight;           /* calls that released the GIL holding h */
} Handle;

static int handle_init(Handle *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args)) {
        PyErr_SetString(PyExc_TypeError, "Tally() takes keyword arguments only");
        return -1;
    }
    if (self->h) {
        PyErr_SetString(PyExc_TypeError, "Tally() is already open");
        return -1;
    }
    tally_config cfg;
    tally_config_init(&cfg);
    parsed p = {0};
    int want_events = 0, want_log = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (kwargs && PyDict_Next(kwargs, &pos, &k, &v)) {
        if (PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, "_inbox_events") == 0) {
            want_events = PyObject_IsTrue(v) > 0;
            continue;
        }
        if (PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, "_inbox_log") == 0) {
            want_log = PyObject_IsTrue(v) > 0;
            continue;
        }
        const kw *c = find_kw(config_kws, N_CONFIG_KWS, k);
        if (!c) {
            PyErr_Format(PyExc_TypeError, "Tally() got an unexpected keyword argument '%S'", k);
            goto fail;
        }
        if (v == Py_None) continue;
        if (set_kw("Tally", c, v, &cfg, NULL, &p)) goto fail;
    }
    if (want_events || want_log) {
        self->ib = inbox_new();
        if (!self->ib) {
            PyErr_NoMemory();
            goto fail;
        }
        if (want_events) cfg.subscriber = inbox_event, cfg.subscriber_ud = self->ib;
        if (want_log) cfg.log = inbox_log, cfg.log_ud = self->ib;
    }
    /* Opening may create directories and a database: no GIL needed. */
    Py_BEGIN_ALLOW_THREADS
    self->h = tally_open(&cfg);
    Py_END_ALLOW_THREADS
    parsed_release(&p);
    if (!self->h) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
fail:
    parsed_release(&p);
    return -1;
}

/* Closes (once): waits for calls that released the GIL with the handle. */
static void handle_close_now(Handle *self, const char *reason, int with_code, int code)
{
    tally_t *h = self->h;
    if (!h) return;
    self->h = NULL;
    while (self->inflight) {
        struct timespec ts = {0, 1000000};
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&ts, NULL);
        Py_END_ALLOW_THREADS
    }
    Py_BEGIN_ALLOW_THREADS
    if (with_code) tally_close_with_code(h, reason, code);
    else tally_close(h, reason);
    Py_END_ALLOW_THREADS
}

static void handle_dealloc(Handle *self)
{
    if (self->h) handle_close_now(self, NULL, 0, 0);
    inbox_free(self->ib);
    self->ib = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *h_request(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "request() takes keyword arguments only");
        return NULL;
    }
    tally_request rq;
    memset(&rq, 0, sizeof rq);
    parsed p;
    p.n_keep = 0;
    unsigned has = 0;
    if (parse_kwargs("request", request_kws, N_REQUEST_KWS, args, kwnames, &rq, &has, &p)) {
        parsed_release(&p);
        return NULL;
    }
    rq.flags |= has;
    tally_request_record(self->h, &rq);
    parsed_release(&p);
    Py_RETURN_NONE;
}

/* check_request(**fields): the same checks as request(), recording nothing. */
static PyObject *h_check_request(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    (void)mod;
    (void)nargs;
    tally_request rq;
    memset(&rq, 0, sizeof rq);
    parsed p;
    p.n_keep = 0;
    unsigned has = 0;
    int r = parse_kwargs("request", request_kws, N_REQUEST_KWS, args, kwnames, &rq, &has, &p);
    parsed_release(&p);
    if (r) return NULL;
    Py_RETURN_NONE;
}

static PyObject *h_request_begin(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t dev = 0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "request_begin() takes at most 1 argument (device)");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None && to_i64("request_begin", "device", args[0], &dev) < 0) return NULL;
    return PyLong_FromLongLong(tally_request_begin(self->h, (int)dev));
}

static int one_int(const char *fn, const char *key, PyObject *const *args, Py_ssize_t nargs, int64_t *out)
{
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly one argument (%s)", fn, key);
        return -1;
    }
    if (PyFloat_Check(args[0])) return type_error(fn, key, "an int", args[0]);
    return to_i64(fn, key, args[0], out) < 0 ? -1 : 0;
}

static PyObject *h_step_begin(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t step;
    if (one_int("step_begin", "step", args, nargs, &step)) return NULL;
    tally_step_begin(self->h, step);
    Py_RETURN_NONE;
}

static PyObject *h_epoch_begin(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t epoch;
    if (one_int("epoch_begin", "epoch", args, nargs, &epoch)) return NULL;
    tally_epoch_begin(self->h, epoch);
    Py_RETURN_NONE;
}

static kw step_kws[] = {
    {"loss", K_F64, offsetof(tally_step_info, loss), TALLY_HAS_LOSS, NULL},
    {"lr", K_F64, offsetof(tally_step_info, lr), TALLY_HAS_LR, NULL},
    {"grad_norm", K_F64, offsetof(tally_step_info, grad_norm), TALLY_HAS_GRAD_NORM, NULL},
    {"tokens", K_I64, offsetof(tally_step_info, tokens), TALLY_HAS_TOKENS, NULL},
    {"metrics_json", K_JSON, offsetof(tally_step_info, metrics_json), 0, NULL},
};
#define N_STEP_KWS (sizeof step_kws / sizeof step_kws[0])

/* step_end(step, *, loss, lr, grad_norm, tokens, metrics_json) */
static PyObject *h_step_end(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int64_t step;
    if (one_int("step_end", "step", args, nargs, &step)) return NULL;
    tally_step_info info;
    tally_step_info_init(&info);
    parsed p;
    p.n_keep = 0;
    unsigned has = 0;
    if (parse_kwargs("step_end", step_kws, N_STEP_KWS, args + nargs, kwnames, &info, &has, &p)) {
        parsed_release(&p);
        return NULL;
    }
    /* A NaN or infinite loss is a diverged step: written as null. */
    if (isnan(info.loss) || isinf(info.loss)) has |= TALLY_HAS_LOSS;
    info.has = has;
    tally_step_end(self->h, step, &info);
    parsed_release(&p);
    Py_RETURN_NONE;
}

/* epoch_end(epoch, metrics_json=None) */
static PyObject *h_epoch_end(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t epoch;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "epoch_end() takes the epoch and optional metrics");
        return NULL;
    }
    if (one_int("epoch_end", "epoch", args, 1, &epoch)) return NULL;
    const char *metrics = NULL;
    PyObject *keep = NULL;
    if (nargs == 2 && args[1] != Py_None && to_json("epoch_end", "metrics", args[1], &metrics, &keep)) return NULL;
    tally_epoch_end(self->h, epoch, metrics);
    Py_XDECREF(keep);
    Py_RETURN_NONE;
}

/* eval(name, loss, ppl, samples, extra_json): None for what is absent. */
static PyObject *h_eval(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_eval() takes 5 arguments");
        return NULL;
    }
    const char *name = NULL, *extra = NULL;
    double loss = NAN, ppl = NAN;
    int64_t samples = -1;
    PyObject *keep = NULL;
    if (args[0] != Py_None && to_str("eval", "name", args[0], &name)) return NULL;
    if (args[1] != Py_None && to_f64("eval", "loss", args[1], &loss)) return NULL;
    if (args[2] != Py_None && to_f64("eval", "ppl", args[2], &ppl)) return NULL;
    if (args[3] != Py_None && to_i64("eval", "samples", args[3], &samples) < 0) return NULL;
    if (args[4] != Py_None && to_json("eval", "extra", args[4], &extra, &keep)) return NULL;
    tally_eval(self->h, name, loss, ppl, samples, extra);
    Py_XDECREF(keep);
    Py_RETURN_NONE;
}

/* _error(type, message, phase, step, request_id): None for what is absent. */
static PyObject *h_error(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_error() takes 5 arguments");
        return NULL;
    }
    const char *type = NULL, *msg = NULL, *phase = NULL, *rid = NULL;
    int64_t step = -1;
    if (args[0] != Py_None && to_str("error", "type", args[0], &type)) return NULL;
    if (args[1] != Py_None && to_str("error", "message", args[1], &msg)) return NULL;
    if (args[2] != Py_None && to_str("error", "phase", args[2], &phase)) return NULL;
    if (args[3] != Py_None && to_i64("error", "step", args[3], &step) < 0) return NULL;
    if (args[4] != Py_None && to_str("error", "request_id", args[4], &rid)) return NULL;
    tally_error_at(self->h, type, msg, phase, step, rid);
    Py_RETURN_NONE;
}

static PyObject *h_note(Handle *self, PyObject *arg)
{
    const char *text;
    if (to_str("note", "text", arg, &text)) return NULL;
    tally_note(self->h, text);
    Py_RETURN_NONE;
}

#define MAX_EVENT_FIELDS 64

/* event(kind, **fields): int, float, str, bool as themselves; anything
 * else (None, dict, list, ...) as JSON. */
static PyObject *h_event(Handle *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    const char *kind;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "event() takes the kind and keyword fields");
        return NULL;
    }
    if (to_str("event", "kind", args[0], &kind)) return NULL;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nk > MAX_EVENT_FIELDS) {
        PyErr_Format(PyExc_TypeError, "event(): at most %d fields", MAX_EVENT_FIELDS);
        return NULL;
    }
    tally_field f[MAX_EVENT_FIELDS];
    PyObject *keep[MAX_EVENT_FIELDS];
    int n_keep = 0;
    PyObject *r = NULL;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *v = args[1 + i];
        memset(&f[i], 0, sizeof f[i]);
        f[i].key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
        if (!f[i].key) goto out;
        if (PyBool_Check(v)) {
            f[i].type = TALLY_FIELD_BOOL;
            f[i].i = v == Py_True;
        } else if (PyLong_Check(v)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) {
                f[i].type = TALLY_FIELD_DOUBLE;
                f[i].d = PyLong_AsDouble(v);
                if (PyErr_Occurred()) {
                    PyErr_Clear();
                    f[i].d = NAN;
                }
            } else {
                f[i].type = TALLY_FIELD_INT;
                f[i].i = x;
            }
        } else if (PyFloat_Check(v)) {
            f[i].type = TALLY_FIELD_DOUBLE;
            f[i].d = PyFloat_AS_DOUBLE(v);
        } else if (PyUnicode_Check(v)) {
            f[i].type = TALLY_FIELD_STRING;
            if (to_str("event", f[i].key, v, &f[i].s)) goto out;
        } else {
            PyObject *k = NULL;
            f[i].type = TALLY_FIELD_JSON;
            if (to_json("event", f[i].key, v, &f[i].s, &k)) goto out;
            if (k) keep[n_keep++] = k;
        }
    }
    tally_event(self->h, kind, f, (size_t)nk);
    r = Py_None;
    Py_INCREF(r);
out:
    for (int i = 0; i < n_keep; i++) Py_DECREF(keep[i]);
    return r;
}

static PyObject *h_flush(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t ms = 0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "flush() takes at most 1 argument (timeout_ms)");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None && to_i64("flush", "timeout_ms", args[0], &ms) < 0) return NULL;
    if (ms < 0) ms = 0;
    if (ms > UINT32_MAX) ms = UINT32_MAX;
    tally_t *h = self->h;
    if (!h) Py_RETURN_TRUE;
    int r;
    self->inflight++;
    Py_BEGIN_ALLOW_THREADS
    r = tally_flush(h, (uint32_t)ms);
    Py_END_ALLOW_THREADS
    self->inflight--;
    return PyBool_FromLong(r == 0);
}

/* _close(reason, exit_code): None for either = not given. */
static PyObject *h_close(Handle *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *reason = NULL;
    int64_t code = 0;
    int with_code = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_close() takes 2 arguments");
        return NULL;
    }
    if (args[0] != Py_None && to_str("close", "reason", args[0], &reason)) return NULL;
    if (args[1] != Py_None) {
        if (to_i64("close", "exit_code", args[1], &code) < 0) return NULL;
        with_code = 1;
    }
    handle_close_now(self, reason, with_code, (int)code);
    Py_RETURN_NONE;
}

static int put_u64(PyObject *d, const char *k, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o) return -1;
    int r = PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
    return r;
}

static PyObject *h_counters(Handle *self, PyObject *unused)
{
    (void)unused;
    tally_counters c;
    tally_get_counters(self->h, &c);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
#define C(name) \
    if (put_u64(d, #name, c.name)) goto fail;
    C(offered) C(written) C(dropped) C(sink_failures) C(requests) C(errors) C(tokens_out) C(unpriced)
#undef C
    uint64_t ib_dropped = 0;
    if (self->ib) {
        pthread_mutex_lock(&self->ib->mu);
        ib_dropped = self->ib->dropped;
        pthread_mutex_unlock(&self->ib->mu);
    }
    if (put_u64(d, "subscriber_dropped", ib_dropped)) goto fail;
    tally_sink_stats s[8];
    size_t n = tally_get_sinks(self->h, s, 8);
    PyObject *sinks = PyDict_New();
    if (!sinks) goto fail;
    for (size_t i = 0; i < n && i < 8; i++)
        if (put_u64(sinks, s[i].name, s[i].lost)) {
            Py_DECREF(sinks);
            goto fail;
        }
    if (PyDict_SetItemString(d, "sinks_lost", sinks)) {
        Py_DECREF(sinks);
        goto fail;
    }
    Py_DECREF(sinks);
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static int collect_line(void *ud, const char *line, size_t len)
{
    PyObject *s = PyUnicode_DecodeUTF8(line, (Py_ssize_t)len, "replace");
    if (!s || PyList_Append(ud, s)) {
        Py_XDECREF(s);
        return 1;
    }
    Py_DECREF(s);
    return 0;
}

/* _lines(): the memory sink's lines, as str. */
static PyObject *h_lines(Handle *self, PyObject *unused)
{
    (void)unused;
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
    tally_memory_foreach(self->h, collect_line, l);
    if (PyErr_Occurred()) {
        Py_DECREF(l);
        return NULL;
    }
    return l;
}

/* _take(timeout_s): what the inbox holds, as a list of (kind, level, str);
 * [] after timeout_s with nothing; None once closed and empty. */
static PyObject *h_take(Handle *self, PyObject *arg)
{
    inbox *ib = self->ib;
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred()) return NULL;
    if (!ib) Py_RETURN_NONE;
    char *buf = NULL;
    size_t len = 0;
    int closed = 0;
    struct timespec until;
    Py_BEGIN_ALLOW_THREADS
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)t;
    until.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&ib->mu);
    while (ib->len == 0 && !ib->closed)
        if (pthread_cond_timedwait(&ib->cv, &ib->mu, &until)) break;
    buf = ib->buf;
    len = ib->len;
    closed = ib->closed;
    ib->buf = NULL;
    ib->len = ib->cap = 0;
    pthread_mutex_unlock(&ib->mu);
    Py_END_ALLOW_THREADS
    if (len == 0 && closed) {
        free(buf);
        Py_RETURN_NONE;
    }
    PyObject *l = PyList_New(0);
    for (size_t off = 0; l && off + 6 <= len;) {
        uint32_t n;
        memcpy(&n, buf + off + 2, 4);
        PyObject *item = Py_BuildValue("(iis#)", (int)buf[off], (int)buf[off + 1], buf + off + 6, (Py_ssize_t)n);
        if (!item) {
            /* undecodable bytes: keep the rest */
            PyErr_Clear();
            item = Py_BuildValue("(iiN)", (int)buf[off], (int)buf[off + 1],
                                 PyUnicode_DecodeUTF8(buf + off + 6, (Py_ssize_t)n, "replace"));
        }
        if (!item || PyList_Append(l, item)) Py_CLEAR(l);
        Py_XDECREF(item);
        off += 6 + n;
    }
    free(buf);
    return l;
}

/* _close_inbox(): no more lines will come; _take() returns None when empty. */
static PyObject *h_close_inbox(Handle *self, PyObject *unused)
{
    (void)unused;
    if (self->ib) {
        pthread_mutex_lock(&self->ib->mu);
        self->ib->closed = 1;
        pthread_cond_broadcast(&self->ib->cv);
        pthread_mutex_unlock(&self->ib->mu);
    }
    Py_RETURN_NONE;
}

static PyObject *h_get_run_id(Handle *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(tally_run_id(self->h));
}

static PyObject *h_get_enabled(Handle *self, void *c)
{
    (void)c;
    return PyBool_FromLong(tally_enabled(self->h));
}

static PyObject *h_get_metrics_port(Handle *self, void *c)
{
    (void)c;
    return PyLong_FromLong(tally_metrics_port(self->h));
}

static PyObject *h_get_closed(Handle *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->h == NULL);
}

static PyMethodDef handle_methods[] = {
    {"request", (PyCFunction)(void (*)(void))h_request, METH_FASTCALL | METH_KEYWORDS,
     "request(**fields): records one inference request; keywords are tally_request's members."},
    {"request_begin", (PyCFunction)(void (*)(void))h_request_begin, METH_FASTCALL,
     "request_begin(device=0) -> token: marks a request in flight for energy attribution."},
    {"step_begin", (PyCFunction)(void (*)(void))h_step_begin, METH_FASTCALL, "step_begin(step)"},
    {"step_end", (PyCFunction)(void (*)(void))h_step_end, METH_FASTCALL | METH_KEYWORDS,
     "step_end(step, *, loss, lr, grad_norm, tokens, metrics_json)"},
    {"epoch_begin", (PyCFunction)(void (*)(void))h_epoch_begin, METH_FASTCALL, "epoch_begin(epoch)"},
    {"epoch_end", (PyCFunction)(void (*)(void))h_epoch_end, METH_FASTCALL, "epoch_end(epoch, metrics=None)"},
    {"_eval", (PyCFunction)(void (*)(void))h_eval, METH_FASTCALL, NULL},
    {"_error", (PyCFunction)(void (*)(void))h_error, METH_FASTCALL, NULL},
    {"note", (PyCFunction)h_note, METH_O, "note(text)"},
    {"event", (PyCFunction)(void (*)(void))h_event, METH_FASTCALL | METH_KEYWORDS,
     "event(kind, **fields): a generic event"},
    {"flush", (PyCFunction)(void (*)(void))h_flush, METH_FASTCALL,
     "flush(timeout_ms=0) -> bool: writes everything queued (0 = 5 s); False on time-out"},
    {"_close", (PyCFunction)(void (*)(void))h_close, METH_FASTCALL, NULL},
    {"counters", (PyCFunction)h_counters, METH_NOARGS, "counters() -> dict"},
    {"_lines", (PyCFunction)h_lines, METH_NOARGS, NULL},
    {"_take", (PyCFunction)h_take, METH_O, NULL},
    {"_close_inbox", (PyCFunction)h_close_inbox, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
    {"run_id", (getter)h_get_run_id, NULL, "the run id in use", NULL},
    {"enabled", (getter)h_get_enabled, NULL, "whether events go anywhere", NULL},
    {"closed", (getter)h_get_closed, NULL, "whether close() has run", NULL},
    {"metrics_port", (getter)h_get_metrics_port, NULL, "the port /metrics is served on (0: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tally._tally.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A libtally handle (use tally.Tally).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)handle_init,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_methods = handle_methods,
    .tp_getset = handle_getset,
};

/* ---- module functions ---------------------------------------------------- */

static PyObject *m_set_json(PyObject *mod, PyObject *fn)
{
    (void)mod;
    Py_XDECREF(json_dumps);
    Py_INCREF(fn);
    json_dumps = fn;
    Py_RETURN_NONE;
}

/* cli(argv) -> exit status: the tally command, in this process. */
static PyObject *m_cli(PyObject *mod, PyObject *seq)
{
    (void)mod;
    PyObject *fast = PySequence_Fast(seq, "cli() takes a list of str");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    PyObject *bytes = PyList_New(0);
    char **argv = calloc((size_t)n + 1, sizeof *argv);
    PyObject *r = NULL;
    if (!bytes || !argv) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyUnicode_EncodeFSDefault(items[i]);
        if (!b || PyList_Append(bytes, b)) {
            Py_XDECREF(b);
            goto out;
        }
        argv[i] = PyBytes_AS_STRING(b);
        Py_DECREF(b);
    }
    /* The command behaves as the executable does: a closed pipe ends it
     * quietly (Python ignores SIGPIPE) and Ctrl-C stops it. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tally_cli_main((int)n, argv);
    fflush(stdout);
    fflush(stderr);
    Py_END_ALLOW_THREADS
    r = PyLong_FromLong(rc);
out:
    free(argv);
    Py_XDECREF(bytes);
    Py_DECREF(fast);
    return r;
}

static PyObject *names_tuple(const kw *k, size_t n)
{
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (!t) return NULL;
    for (size_t i = 0; i < n; i++) {
        Py_INCREF(k[i].interned);
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, k[i].interned);
    }
    return t;
}

static PyMethodDef module_methods[] = {
    {"_set_json", m_set_json, METH_O, NULL},
    {"cli", m_cli, METH_O, "cli(argv) -> exit status: runs the tally command"},
    {"check_request", (PyCFunction)(void (*)(void))h_check_request, METH_FASTCALL | METH_KEYWORDS,
     "check_request(**fields): raises TypeError as request() would; records nothing"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef tally_module = {
    PyModuleDef_HEAD_INIT, "_tally", "libtally for Python (use the tally package).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

static void fork_init_once(void) { pthread_atfork(NULL, NULL, inbox_after_fork_child); }

PyMODINIT_FUNC PyInit__tally(void);
PyMODINIT_FUNC PyInit__tally(void)
{
    static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
    if (intern_kws(request_kws, N_REQUEST_KWS) || intern_kws(config_kws, N_CONFIG_KWS) ||
        intern_kws(step_kws, N_STEP_KWS))
        return NULL;
    if (PyType_Ready(&HandleType) < 0) return NULL;
    PyObject *m = PyModule_Create(&tally_module);
    if (!m) return NULL;
    Py_INCREF(&HandleType);
    if (PyModule_AddObject(m, "Handle", (PyObject *)&HandleType) ||
        PyModule_AddObject(m, "REQUEST_FIELDS", names_tuple(request_kws, N_REQUEST_KWS)) ||
        PyModule_AddObject(m, "CONFIG_FIELDS", names_tuple(config_kws, N_CONFIG_KWS)) ||
        PyModule_AddStringConstant(m, "version", tally_version()) ||
        PyModule_AddIntConstant(m, "ESCALATED", TALLY_ESCALATED) ||
        PyModule_AddIntConstant(m, "FALLBACK", TALLY_FALLBACK) ||
        PyModule_AddIntConstant(m, "CACHE_HIT", TALLY_CACHE_HIT) ||
        PyModule_AddIntConstant(m, "CEILING_HIT", TALLY_CEILING_HIT) ||
        PyModule_AddIntConstant(m, "USER_CAP_HIT", TALLY_USER_CAP_HIT) ||
        PyModule_AddIntConstant(m, "FAILED", TALLY_FAILED)) {
        Py_DECREF(m);
        return NULL;
    }
    pthread_once(&fork_once, fork_init_once);
    return m;
}
