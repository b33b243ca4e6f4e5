/* follow -- see follow.h. */
#include "follow.h"

#include <string.h>
#include <sys/stat.h>

int follow_open(follower *fw, const char *path, int from_end, size_t max_line)
{
    if (!fw->pending.max) buf_init(&fw->pending, max_line);
    fw->f = fopen(path, "rb");
    if (!fw->f) return -1;
    struct stat st;
    fstat(fileno(fw->f), &st);
    fw->dev = st.st_dev;
    fw->ino = st.st_ino;
    fw->pos = 0;
    if (from_end) {
        fseeko(fw->f, 0, SEEK_END);
        fw->pos = ftello(fw->f);
    }
    fw->line_at = fw->pos;
    buf_reset(&fw->pending);
    return 0;
}

void follow_drain(follower *fw, follow_fn fn, void *ud)
{
    char chunk[65536];
    size_t r;
    if (!fw->f) return;
    clearerr(fw->f);
    while ((r = fread(chunk, 1, sizeof chunk, fw->f)) > 0) {
        off_t base = fw->pos;
        fw->pos += (off_t)r;
        size_t start = 0;
        for (size_t i = 0; i < r; i++) {
            if (chunk[i] != '\n') continue;
            if (fw->pending.len) {
                buf_put(&fw->pending, chunk + start, i - start);
                if (!fw->pending.failed) fn(ud, fw->pending.p, fw->pending.len, fw->line_at);
                buf_reset(&fw->pending);
            } else if (i > start) {
                fn(ud, chunk + start, i - start, base + (off_t)start);
            }
            start = i + 1;
            fw->line_at = base + (off_t)start;
        }
        if (start < r) buf_put(&fw->pending, chunk + start, r - start);
    }
}

int follow_check(follower *fw, const char *path, follow_fn fn, void *ud)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (!fw->f || st.st_ino != fw->ino || st.st_dev != fw->dev) {
        /* Rotated: finish the old file, then read the new one from its start. */
        follow_drain(fw, fn, ud);
        if (fw->f) fclose(fw->f);
        fw->f = NULL;
        return follow_open(fw, path, 0, fw->pending.max) == 0;
    }
    if (st.st_size < fw->pos) {
        /* Truncated: start again. */
        fseeko(fw->f, 0, SEEK_SET);
        fw->pos = 0;
        fw->line_at = 0;
        buf_reset(&fw->pending);
        return 1;
    }
    return 0;
}

void follow_close(follower *fw)
{
    if (fw->f) fclose(fw->f);
    fw->f = NULL;
    buf_free(&fw->pending);
}
