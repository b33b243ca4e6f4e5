/* clickhouse -- see clickhouse.h and docs/clickhouse.md. */
#include "clickhouse.h"

#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "encode.h"
#include "fields.h"
#include "util.h"

#define PASSWORD_MAX 4096
#define RESPONSE_MAX ((size_t)256 << 20)

int ch_is_url(const char *s)
{
    return s && (!strncmp(s, "clickhouse://", 13) || !strncmp(s, "clickhouses://", 14));
}

static int name_ok(const char *s, size_t n)
{
    if (!n || n >= 128) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_'))
            return 0;
    return 1;
}

static char *read_password_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read TALLY_CLICKHOUSE_PASSWORD_FILE %s", path);
        return NULL;
    }
    char *p = calloc(1, PASSWORD_MAX + 1);
    size_t n = p ? fread(p, 1, PASSWORD_MAX, f) : 0;
    fclose(f);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r')) p[--n] = 0; /* a file ends with a newline */
    return p;
}

int ch_target_init(ch_target *t, const char *url, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    int tls = !strncmp(url, "clickhouses://", 14);
    const char *hp = url + (tls ? 14 : 13);
    const char *slash = strchr(hp, '/');
    if (!ch_is_url(url) || !slash || slash == hp || strchr(hp, '@') || strchr(hp, '?')) {
        snprintf(err, errlen, "a ClickHouse target is clickhouse://HOST:PORT/DATABASE (credentials go in "
                              "TALLY_CLICKHOUSE_USER and TALLY_CLICKHOUSE_PASSWORD[_FILE], never in the URL)");
        return -1;
    }
    const char *db = slash + 1;
    size_t dblen = strlen(db);
    if (dblen && db[dblen - 1] == '/') dblen--;
    if (!name_ok(db, dblen)) {
        snprintf(err, errlen, "ClickHouse database name '%.*s': letters, digits and _ only", (int)(dblen < 64 ? dblen : 64), db);
        return -1;
    }
    snprintf(t->base, sizeof t->base, "%s://%.*s/", tls ? "https" : "http", (int)(slash - hp), hp);
    snprintf(t->db, sizeof t->db, "%.*s", (int)dblen, db);
    const char *user = getenv("TALLY_CLICKHOUSE_USER");
    snprintf(t->user, sizeof t->user, "%s", user && *user ? user : "default");
    const char *pw = getenv("TALLY_CLICKHOUSE_PASSWORD");
    const char *pwfile = getenv("TALLY_CLICKHOUSE_PASSWORD_FILE");
    if (pwfile && *pwfile) {
        t->password = read_password_file(pwfile, err, errlen);
        if (!t->password) return -1;
    } else if (pw) {
        t->password = strdup(pw);
        if (!t->password) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

void ch_target_free(ch_target *t)
{
    if (t->password) {
        memset(t->password, 0, strlen(t->password));
        free(t->password);
    }
    t->password = NULL;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    buf *b = ud;
    if (!b) return size * n;
    buf_put(b, p, size * n);
    return b->failed ? 0 : size * n; /* over the cap: the transfer stops */
}

typedef size_t (*write_fn)(char *p, size_t size, size_t n, void *ud);

/* One POST: with a body, the query goes in the URL; without, the query is
 * the body.  Returns the HTTP status or -1 (err says why). */
static long perform(const ch_target *t, const char *sql, const char *body, size_t len, write_fn wf, void *wud,
                    const buf *errbody, char *err, size_t errlen)
{
    tally__curl_init();
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "cannot start an HTTP client");
        return -1;
    }
    /* Queries name their tables in full (DATABASE.events): the database may
     * not exist yet. */
    buf url;
    buf_init(&url, (size_t)1 << 20);
    buf_puts(&url, t->base);
    if (body) {
        char *q = curl_easy_escape(c, sql, 0);
        buf_puts(&url, "?query=");
        buf_puts(&url, q ? q : "");
        curl_free(q);
    }
    buf_putc(&url, 0);
    long status = -1;
    if (url.failed) {
        snprintf(err, errlen, "query too long");
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url.p);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : sql);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : strlen(sql)));
    curl_easy_setopt(c, CURLOPT_USERNAME, t->user);
    if (t->password) curl_easy_setopt(c, CURLOPT_PASSWORD, t->password);
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, wf);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, wud);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 600000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK && status == 200) status = -1;
    if (status < 0 || status == 0) {
        snprintf(err, errlen, "ClickHouse at %s: %s", t->base, curl_easy_strerror(rc));
        status = -1;
    } else if (status != 200) {
        /* The server's message: its first line. */
        const char *msg = errbody && errbody->len ? errbody->p : "";
        size_t n = errbody ? strcspn(msg, "\n") : 0;
        if (errbody && n > errbody->len) n = errbody->len;
        snprintf(err, errlen, "ClickHouse at %s answered %ld: %.*s", t->base, status, (int)(n < 400 ? n : 400), msg);
    }
out:
    buf_free(&url);
    curl_easy_cleanup(c);
    return status;
}

long ch_request(const ch_target *t, const char *sql, const char *body, size_t len, buf *out, char *err,
                size_t errlen)
{
    buf mine;
    buf_init(&mine, (size_t)1 << 20);
    buf *b = out ? out : &mine;
    long st = perform(t, sql, body, len, on_body, b, b, err, errlen);
    buf_free(&mine);
    return st;
}

/* Lines of a streamed answer, handed on as they complete. */
typedef struct liner {
    buf part;                 /* the line being received */
    buf head;                 /* the answer's first bytes: the message when it is an error */
    ch_line_fn fn;
    void *ud;
    int stopped, exception;
} liner;

static size_t on_lines(char *p, size_t size, size_t n, void *arg)
{
    liner *l = arg;
    size_t len = size * n;
    if (l->head.len < 400) buf_put(&l->head, p, len < 400 - l->head.len ? len : 400 - l->head.len);
    for (size_t i = 0; i < len && !l->stopped;) {
        char *nl = memchr(p + i, '\n', len - i);
        size_t take = nl ? (size_t)(nl - (p + i)) : len - i;
        buf_put(&l->part, p + i, take);
        if (l->part.failed) return 0;
        i += take;
        if (nl) {
            i++;
            buf_putc(&l->part, 0);
            /* The server's exception (at the start, or cutting the answer
             * short): not a line of data. */
            if (!strncmp(l->part.p, "Code: ", 6) && strstr(l->part.p, "DB::Exception")) {
                l->exception = 1;
                l->stopped = 1;
                buf_reset(&l->head);
                buf_put(&l->head, l->part.p, l->part.len - 1 < 400 ? l->part.len - 1 : 400);
            } else if (l->fn(l->ud, l->part.p, l->part.len - 1)) {
                l->stopped = 1;
            }
            buf_reset(&l->part);
        }
    }
    return l->stopped ? 0 : len;
}

long ch_query_lines(const ch_target *t, const char *sql, ch_line_fn fn, void *ud, char *err, size_t errlen)
{
    liner l = {{0}, {0}, fn, ud, 0, 0};
    buf_init(&l.part, (size_t)64 << 20);
    buf_init(&l.head, 512);
    long st = perform(t, sql, NULL, 0, on_lines, &l, &l.head, err, errlen);
    if (l.exception) {
        snprintf(err, errlen, "ClickHouse at %s: %.*s", t->base, (int)l.head.len, l.head.p ? l.head.p : "");
        st = 500;
    } else if (l.stopped) {
        st = 200;
    }
    buf_free(&l.part);
    buf_free(&l.head);
    return st;
}

/* ---- the tables ---------------------------------------------------------------------- */

/* A request's named fields are String ('' when absent: the sort key cannot
 * hold a Nullable in ClickHouse 18.16); numbers Nullable.  Time is Float64
 * seconds (DateTime64 is not in 18.16) and `date` for the monthly
 * partitions. */
static const char *const fixed_head[] = {"id String", "run_id String", "kind String", "phase String",
                                         "name String", "ts Float64", "date Date", "ok Nullable(UInt8)",
                                         "error String", "degraded String"};
static const char *const fixed_tail[] = {"step Nullable(Int64)",        "loss Nullable(Float64)",
                                         "wall_us Nullable(Float64)",   "step_tokens Nullable(Int64)",
                                         "lr Nullable(Float64)",        "json String"};

static void column_defs(buf *b, int names_only)
{
    for (size_t i = 0; i < sizeof fixed_head / sizeof fixed_head[0]; i++) {
        if (i) buf_puts(b, ", ");
        const char *d = fixed_head[i];
        if (names_only) buf_put(b, d, strcspn(d, " "));
        else buf_puts(b, d);
    }
#define CH_LABEL(SLOT, name, flags)                                                                                \
    buf_puts(b, ", " #name);                                                                                       \
    if (!names_only) buf_puts(b, " String");
    TALLY_REQUEST_LABELS(CH_LABEL)
#undef CH_LABEL
#define CH_NUMBER(key, api, rec, type, present, rowm, rowbit, fl)                                                  \
    buf_puts(b, ", " #key);                                                                                        \
    if (!names_only) buf_puts(b, (type) == FLD_I64 ? " Nullable(Int64)" : " Nullable(Float64)");
    TALLY_REQUEST_NUMBERS(CH_NUMBER)
#undef CH_NUMBER
    for (size_t i = 0; i < sizeof fixed_tail / sizeof fixed_tail[0]; i++) {
        buf_puts(b, ", ");
        const char *d = fixed_tail[i];
        if (names_only) buf_put(b, d, strcspn(d, " "));
        else buf_puts(b, d);
    }
}

static char column_names[2048];

static void column_names_init(void)
{
    buf b;
    buf_init(&b, sizeof column_names - 1);
    column_defs(&b, 1);
    snprintf(column_names, sizeof column_names, "%.*s", (int)b.len, b.p ? b.p : "");
    buf_free(&b);
}

const char *ch_columns(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, column_names_init);
    return column_names;
}

static int exec(const ch_target *t, const char *sql, buf *out, char *err, size_t errlen)
{
    long st = ch_request(t, sql, NULL, 0, out, err, errlen);
    return st == 200 ? 0 : -1;
}

int ch_create_schema(const ch_target *t, char *err, size_t errlen)
{
    buf sql, out;
    buf_init(&sql, (size_t)1 << 20);
    buf_init(&out, (size_t)1 << 20);
    int rc = -1;
    char q[512];
    snprintf(q, sizeof q, "CREATE DATABASE IF NOT EXISTS %s", t->db);
    if (exec(t, q, NULL, err, errlen)) goto out;
    snprintf(q, sizeof q, "CREATE TABLE IF NOT EXISTS %s.tally_schema (version UInt32) ENGINE = TinyLog", t->db);
    if (exec(t, q, NULL, err, errlen)) goto out;
    snprintf(q, sizeof q, "SELECT max(version) FROM %s.tally_schema", t->db);
    if (exec(t, q, &out, err, errlen)) goto out;
    buf_putc(&out, 0);
    long have = strtol(out.p ? out.p : "0", NULL, 10);
    if (have > CH_SCHEMA_VERSION) {
        snprintf(err, errlen, "ClickHouse database %s has tally's schema version %ld; this tally knows %d: upgrade tally",
                 t->db, have, CH_SCHEMA_VERSION);
        goto out;
    }
    buf_puts(&sql, "CREATE TABLE IF NOT EXISTS ");
    buf_puts(&sql, t->db);
    buf_puts(&sql, ".events (");
    column_defs(&sql, 0);
    buf_puts(&sql, ") ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(date) ORDER BY (kind, model, engine, ts, id)");
    buf_putc(&sql, 0);
    if (sql.failed || exec(t, sql.p, NULL, err, errlen)) goto out;
    if (have < CH_SCHEMA_VERSION) {
        snprintf(q, sizeof q, "INSERT INTO %s.tally_schema VALUES (%d)", t->db, CH_SCHEMA_VERSION);
        if (exec(t, q, NULL, err, errlen)) goto out;
    }
    rc = 0;
out:
    buf_free(&sql);
    buf_free(&out);
    return rc;
}

/* Whether the events table may hold two rows of one event: not when every
 * partition is a single part that came out of a merge (a merge keeps one
 * row per key; one event's rows share a partition, as its date comes from
 * its time).  Then reading without FINAL gives the same rows, many times
 * faster (ClickHouse 18.16 merges FINAL on one thread). */
static int part_line(void *ud, char *line, size_t len)
{
    int *seen = ud; /* partitions seen, and whether one may hold duplicates */
    char *tab = memchr(line, '\t', len);
    if (!tab) return 0;
    long parts = strtol(line, NULL, 10), level = strtol(tab + 1, NULL, 10);
    seen[0]++;
    if (parts != 1 || level < 1) seen[1] = 1;
    return 0;
}

const char *ch_final(const ch_target *t)
{
    char sql[512], err[300];
    snprintf(sql, sizeof sql,
             "SELECT count(), min(level) FROM system.parts WHERE database = '%s' AND table = 'events' AND active "
             "GROUP BY partition FORMAT TabSeparated",
             t->db);
    /* No parts here: an empty table, or one whose rows live elsewhere (a
     * Distributed table over shards) -- FINAL, which the shards apply. */
    int seen[2] = {0, 0};
    if (ch_query_lines(t, sql, part_line, seen, err, sizeof err) != 200) return " FINAL";
    return !seen[0] || seen[1] ? " FINAL" : "";
}

/* ---- rows ----------------------------------------------------------------------------- */

/* TabSeparated: a string with ClickHouse's escapes (backslash, tab, line
 * ends, NUL); absent numbers are \N.  The server parses this format at
 * about twice the speed of JSONEachRow, which bounds how fast rows go in. */
void ch_tsv_str(buf *b, sv v)
{
    buf_putc(b, '\t');
    const char *p = v.p ? v.p : "";
    size_t n = v.p ? v.n : 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i], e = 0;
        switch (c) {
        case '\\': e = '\\'; break;
        case '\t': e = 't'; break;
        case '\n': e = 'n'; break;
        case '\r': e = 'r'; break;
        case '\0': e = '0'; break;
        case '\b': e = 'b'; break;
        case '\f': e = 'f'; break;
        default: continue;
        }
        buf_put(b, p + run, i - run);
        buf_putc(b, '\\');
        buf_putc(b, e);
        run = i + 1;
    }
    buf_put(b, p + run, n - run);
}

static void tsv_opt(buf *b, int has, double v, int integer)
{
    buf_putc(b, '\t');
    if (!has || !isfinite(v)) buf_puts(b, "\\N");
    else if (integer) enc_i64(b, (int64_t)llround(v));
    else enc_double(b, v);
}

int ch_tsv_split(char *line, size_t len, char **f, size_t *fl, int max)
{
    int n = 0;
    size_t i = 0;
    while (n < max) {
        char *o = line + i;
        size_t w = 0;
        f[n] = o;
        while (i < len && line[i] != '\t') {
            char c = line[i++];
            if (c == '\\' && i < len) {
                char e = line[i++];
                switch (e) {
                case 't': c = '\t'; break;
                case 'n': c = '\n'; break;
                case 'r': c = '\r'; break;
                case '0': c = '\0'; break;
                case 'b': c = '\b'; break;
                case 'f': c = '\f'; break;
                case 'N': o[w++] = '\\'; c = 'N'; break; /* NULL: kept as \N */
                default: c = e; break;
                }
            }
            o[w++] = c;
        }
        fl[n++] = w;
        if (i >= len) break;
        i++; /* the tab */
    }
    return n;
}

void ch_row_tsv(buf *b, const row *r)
{
    size_t start = b->len;
    ch_tsv_str(b, r->id);
    if (!b->failed) {
        /* the first column has no tab before it */
        memmove(b->p + start, b->p + start + 1, b->len - start - 1);
        b->len--;
    }
    ch_tsv_str(b, r->run_id);
    ch_tsv_str(b, r->kind);
    ch_tsv_str(b, r->phase);
    ch_tsv_str(b, r->name);
    double ts = (r->has & ROW_TS) ? r->ts : 0;
    buf_putc(b, '\t');
    enc_double(b, ts);
    char day[16];
    time_t sec = (time_t)floor(ts);
    struct tm tm;
    gmtime_r(&sec, &tm);
    strftime(day, sizeof day, "%Y-%m-%d", &tm);
    buf_putc(b, '\t');
    buf_puts(b, day);
    buf_puts(b, (r->has & ROW_OK) ? (r->ok ? "\t1" : "\t0") : "\t\\N");
    ch_tsv_str(b, r->error);
    ch_tsv_str(b, r->degraded);
#define CH_LABEL(SLOT, name, flags) ch_tsv_str(b, r->name);
    TALLY_REQUEST_LABELS(CH_LABEL)
#undef CH_LABEL
#define CH_NUMBER(key, api, rec, type, present, rowm, rowbit, fl)                                                  \
    tsv_opt(b, (r->has & (rowbit)) != 0, (double)r->rowm, (type) == FLD_I64);
    TALLY_REQUEST_NUMBERS(CH_NUMBER)
#undef CH_NUMBER
    tsv_opt(b, (r->has & ROW_STEP) != 0, (double)r->step, 1);
    tsv_opt(b, (r->has & ROW_LOSS) != 0, r->loss, 0);
    tsv_opt(b, (r->has & ROW_WALL) != 0, r->wall_us, 0);
    tsv_opt(b, (r->has & ROW_STEP_TOKENS) != 0, (double)r->step_tokens, 1);
    tsv_opt(b, (r->has & ROW_LR) != 0, r->lr, 0);
    sv json = r->json;
    while (json.n && (json.p[json.n - 1] == '\n' || json.p[json.n - 1] == '\r')) json.n--;
    ch_tsv_str(b, json);
    buf_putc(b, '\n');
}
