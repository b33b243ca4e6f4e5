/* helpers -- see helpers.h. */
#include "helpers.h"

#include <dirent.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

const char *th_tmpdir(const char *tag)
{
    static char path[512];
    const char *base = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/tally-test-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(path)) fail_msg("mkdtemp failed");
    return path;
}

void th_rmrf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            th_rmrf(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void push(th_lines *l, const char *s, size_t n)
{
    l->line = realloc(l->line, (l->n + 1) * sizeof *l->line);
    l->line[l->n] = malloc(n + 1);
    memcpy(l->line[l->n], s, n);
    l->line[l->n][n] = 0;
    l->n++;
}

int th_read_lines(const char *path, th_lines *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char *data = NULL;
    size_t len = 0, cap = 0;
    char chunk[65536];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + r > cap) {
            cap = (len + r) * 2;
            data = realloc(data, cap);
        }
        memcpy(data + len, chunk, r);
        len += r;
    }
    fclose(f);
    size_t start = 0;
    for (size_t i = 0; i < len; i++)
        if (data[i] == '\n') {
            push(out, data + start, i - start);
            start = i + 1;
        }
    if (start < len) {
        push(out, data + start, len - start);
        out->torn_last = 1;
    }
    free(data);
    return 0;
}

void th_lines_free(th_lines *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->line[i]);
    free(l->line);
    memset(l, 0, sizeof *l);
}

static int mem_cb(void *ud, const char *line, size_t len)
{
    push(ud, line, len);
    return 0;
}

void th_memory_lines(tally_t *h, th_lines *out)
{
    memset(out, 0, sizeof *out);
    tally_memory_foreach(h, mem_cb, out);
}

const jv *th_parse(json_arena *a, const char *line)
{
    json_error err;
    const jv *v = json_parse(a, line, strlen(line), &err);
    if (!v) fail_msg("line does not parse (%s at %zu): %s", err.what, err.offset, line);
    return v;
}

const jv *th_get(const jv *v, const char *path)
{
    char part[128];
    while (v && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof part) return NULL;
        memcpy(part, path, n);
        part[n] = 0;
        v = jv_get(v, part);
        path += n + (dot ? 1 : 0);
    }
    return v;
}

int th_run_cli(const char *args, char *out, size_t outlen)
{
    const char *cli = getenv("TALLY_CLI");
    if (!cli) fail_msg("TALLY_CLI is not set (run through ctest)");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", cli, args);
    FILE *p = popen(cmd, "r");
    if (!p) fail_msg("cannot run %s", cmd);
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void th_on_log(void *ud, int level, const char *msg)
{
    (void)level;
    th_logs *l = ud;
    l->n++;
    snprintf(l->last, sizeof l->last, "%s", msg);
}
