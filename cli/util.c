/* util -- see util.h. */
#include "util.h"

#include "encode.h"
#include "hash.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "tally %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int parse_duration(const char *s, double *seconds)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || v != v) return -1;
    /* A unit is required: "30" could be seconds or days, and `trim
     * --older-than 30` read as seconds deletes nearly everything. */
    double mult;
    switch (*end) {
    case 's': mult = 1; break;
    case 'm': mult = 60; break;
    case 'h': mult = 3600; break;
    case 'd': mult = 86400; break;
    case 'w': mult = 7 * 86400; break;
    default: return -1;
    }
    if (end[1]) return -1;
    *seconds = v * mult;
    return 0;
}

/* ---- control characters on a terminal ------------------------------------------ */

/* C0 controls but newline, DEL, and C1 controls (U+0080..U+009F, written
 * C2 80..C2 9F in UTF-8): the bytes that can move a terminal's cursor,
 * change its title or colours when an event's text is printed raw. */
static int is_c1_second(unsigned char c) { return c >= 0x80 && c <= 0x9f; }

size_t cli_escape_ctl(const char *src, size_t n, char *dst, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;
    if (!cap) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        int c1 = c == 0xc2 && i + 1 < n && is_c1_second((unsigned char)src[i + 1]);
        if (c < 0x20 || c == 0x7f || c1) {
            unsigned char v = c1 ? (unsigned char)src[++i] : c;
            if (k + 4 >= cap) break;
            dst[k++] = '\\';
            dst[k++] = 'x';
            dst[k++] = hex[v >> 4];
            dst[k++] = hex[v & 15];
        } else {
            if (k + 1 >= cap) break;
            dst[k++] = (char)c;
        }
    }
    dst[k] = 0;
    return k;
}

/* A FILE over stdout that escapes control characters (newlines pass). */
static ssize_t safe_write(void *cookie, const char *p, size_t n)
{
    (void)cookie;
    char out[4 * 256 + 1];
    size_t i = 0;
    while (i < n) {
        size_t take = n - i < 256 ? n - i : 256;
        /* Keep a C2 with its next byte. */
        if (take < n - i && (unsigned char)p[i + take - 1] == 0xc2) take--;
        size_t start = i, end = i + take;
        while (start < end) {
            const char *nl = memchr(p + start, '\n', end - start);
            size_t seg = nl ? (size_t)(nl - (p + start)) : end - start;
            size_t k = cli_escape_ctl(p + start, seg, out, sizeof out);
            fwrite(out, 1, k, stdout);
            start += seg;
            if (nl) {
                fputc('\n', stdout);
                start++;
            }
        }
        i = end;
    }
    fflush(stdout);
    return (ssize_t)n;
}

FILE *cli_safe_stdout(void)
{
    if (!isatty(STDOUT_FILENO) && !getenv("TALLY_ESCAPE_CONTROLS")) return stdout;
    cookie_io_functions_t io = {NULL, safe_write, NULL, NULL};
    FILE *f = fopencookie(NULL, "w", io);
    return f ? f : stdout;
}

int parse_when(const char *s, double now, double *out)
{
    double d;
    if (parse_duration(s, &d) == 0) {
        *out = now - d;
        return 0;
    }
    return iso8601_parse(s, out);
}

int lr_open(line_reader *lr, const char *path, size_t max)
{
    memset(lr, 0, sizeof *lr);
    lr->max = max;
    lr->blk = malloc(LR_BLOCK);
    if (!lr->blk) return -1;
    if (!strcmp(path, "-")) {
        lr->f = stdin;
        return 0;
    }
    lr->f = fopen(path, "rb");
    if (!lr->f) {
        free(lr->blk);
        lr->blk = NULL;
        return -1;
    }
    lr->own = 1;
    return 0;
}

int lr_open_bytes(line_reader *lr, const char *path, uint64_t at, char *blk, size_t n, size_t cap, size_t max)
{
    memset(lr, 0, sizeof *lr);
    if (cap < LR_BLOCK || n > cap) return -1;
    lr->max = max;
    lr->f = fopen(path, "rb");
    if (!lr->f) return -1;
    lr->own = 1;
    if (fseeko(lr->f, (off_t)(at + n), SEEK_SET) != 0) {
        fclose(lr->f);
        lr->f = NULL;
        return -1;
    }
    lr->blk = blk;
    lr->lent = 1;
    lr->blen = n;
    lr->next = at;
    return 0;
}

static int lr_fill(line_reader *lr)
{
    if (lr->eof) return 0;
    lr->blen = fread(lr->blk, 1, LR_BLOCK, lr->f);
    lr->bpos = 0;
    if (lr->blen == 0) {
        lr->eof = 1;
        return ferror(lr->f) ? -1 : 0;
    }
    return 1;
}

/* Appends to the spill buffer, up to the cap. */
static void lr_spill(line_reader *lr, size_t *n, const char *p, size_t k, int *cut)
{
    if (*n + k + 1 > lr->max) {
        *cut = 1;
        k = *n + 1 < lr->max ? lr->max - *n - 1 : 0;
    }
    if (*n + k + 1 > lr->cap) {
        size_t nc = lr->cap ? lr->cap : 4096;
        while (nc < *n + k + 1) nc *= 2;
        if (nc > lr->max) nc = lr->max;
        char *nb = realloc(lr->buf, nc);
        if (!nb) {
            *cut = 1;
            return;
        }
        lr->buf = nb;
        lr->cap = nc;
    }
    memcpy(lr->buf + *n, p, k);
    *n += k;
}

int lr_next(line_reader *lr, char **line, size_t *len, int *complete, int *toolong)
{
    size_t n = 0;
    int cut = 0, spilled = 0;
    lr->offset = lr->next;
    for (;;) {
        if (lr->bpos >= lr->blen) {
            int r = lr_fill(lr);
            if (r < 0) return -1;
            if (r == 0) {
                if (!spilled) return 0;
                lr->buf[n] = 0;
                lr->lineno++;
                *line = lr->buf;
                *len = n;
                *complete = 0;
                *toolong = cut;
                return 1;
            }
        }
        char *start = lr->blk + lr->bpos;
        size_t avail = lr->blen - lr->bpos;
        char *nl = memchr(start, '\n', avail);
        size_t k = nl ? (size_t)(nl - start) : avail;
        lr->next += k + (nl ? 1 : 0);
        lr->bpos += k + (nl ? 1 : 0);
        if (nl && !spilled && k < lr->max) {
            /* The common case: the whole line is inside the block. */
            *nl = 0;
            lr->lineno++;
            *line = start;
            *len = k;
            *complete = 1;
            *toolong = 0;
            return 1;
        }
        spilled = 1;
        lr_spill(lr, &n, start, k, &cut);
        if (nl) {
            lr->buf[n] = 0;
            lr->lineno++;
            *line = lr->buf;
            *len = n;
            *complete = 1;
            *toolong = cut;
            return 1;
        }
    }
}

void lr_close(line_reader *lr)
{
    if (lr->own && lr->f) fclose(lr->f);
    free(lr->buf);
    if (!lr->lent) free(lr->blk);
    memset(lr, 0, sizeof *lr);
}

typedef struct list {
    char **v;
    size_t n, cap;
} list;

static int push(list *l, const char *s)
{
    if (l->n + 2 > l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        char **nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return -1;
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = strdup(s);
    l->v[l->n] = NULL;
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void walk(list *l, const char *dir, int depth)
{
    if (depth > 4) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    list here = {0};
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        push(&here, p);
    }
    closedir(d);
    if (here.n) qsort(here.v, here.n, sizeof *here.v, cmp_str);
    for (size_t i = 0; i < here.n; i++) {
        struct stat st;
        if (stat(here.v[i], &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) walk(l, here.v[i], depth + 1);
        else if (S_ISREG(st.st_mode) && ends_with(here.v[i], ".jsonl")) push(l, here.v[i]);
        free(here.v[i]);
    }
    free(here.v);
}

char **collect_jsonl(char **args, int nargs, size_t *n, char *err, size_t errlen)
{
    list l = {0};
    l.v = calloc(1, sizeof *l.v); /* an empty, NULL-ended list */
    l.cap = l.v ? 1 : 0;
    for (int i = 0; i < nargs; i++) {
        struct stat st;
        if (!strcmp(args[i], "-")) {
            push(&l, "-");
            continue;
        }
        if (stat(args[i], &st) != 0) {
            snprintf(err, errlen, "%s: %s", args[i], strerror(errno));
            free_list(l.v);
            return NULL;
        }
        if (S_ISDIR(st.st_mode)) walk(&l, args[i], 0);
        else push(&l, args[i]);
    }
    *n = l.n;
    return l.v;
}

void free_list(char **items)
{
    if (!items) return;
    for (char **p = items; *p; p++) free(*p);
    free(items);
}

void run_id_from_path(const char *path, char *out, size_t n)
{
    if (!strcmp(path, "-")) {
        snprintf(out, n, "stdin");
        return;
    }
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash && !strcmp(base, "events.jsonl")) {
        const char *p = slash;
        while (p > path && p[-1] != '/') p--;
        snprintf(out, n, "%.*s", (int)(slash - p), p);
    } else {
        snprintf(out, n, "%s", base);
    }
}

void hash_id(const char *a, size_t an, uint64_t b, const char *c, size_t cn, char out[34])
{
    uint64_t h1 = FNV_SEED, h2 = 0x84222325cbf29ce4ull;
    h1 = fnv1a(fnv1a(fnv1a(h1, a, an), &b, sizeof b), c, cn);
    h2 = fnv1a(fnv1a(fnv1a(h2, c, cn), &b, sizeof b), a, an);
    snprintf(out, 34, "x%016llx%015llx", (unsigned long long)h1, (unsigned long long)(h2 >> 4));
}

void cli_csv_field(FILE *out, const char *s)
{
    if (strpbrk(s, ",\"\n")) {
        putc('"', out);
        for (; *s; s++) {
            if (*s == '"') putc('"', out);
            putc(*s, out);
        }
        putc('"', out);
    } else {
        fputs(s, out);
    }
}

void cli_json_str(FILE *out, const char *s)
{
    if (!s) {
        fputs("null", out);
        return;
    }
    buf b;
    buf_init(&b, (size_t)1 << 20);
    enc_str(&b, s, strlen(s));
    if (!b.failed) fwrite(b.p, 1, b.len, out);
    else fputs("null", out);
    buf_free(&b);
}

void cli_fmt_usd(double v, int plus, char *out, size_t n)
{
    int digits = v >= 100 ? 2 : 4;
    while (v > 0 && digits < 12 && v < 0.1 * pow(10.0, -(digits - 2))) digits++;
    snprintf(out, n, "%.*f%s", digits, v, plus ? "+" : "");
}

int cli_threads(const char *cmd, const char *val, int *threads)
{
    char *end;
    long n = val ? strtol(val, &end, 10) : 0;
    if (!val || *end || n < 1 || n > 256) {
        cli_error(cmd, "--threads needs a number of threads from 1 to 256");
        return -1;
    }
    *threads = (int)n;
    return 0;
}
