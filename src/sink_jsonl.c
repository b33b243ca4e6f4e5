/*
 * sink_jsonl -- the toy/v1 JSON Lines file.
 *
 * The file is opened O_APPEND and each commit is one write(2) of whole
 * lines, so several processes (prefork workers, separate programs) can
 * share one file without their lines interleaving.  A missing directory is
 * created; a new file is 0600 when request text is captured, else 0644;
 * under a run directory, a symbolic link in the file's place is refused.  A file that cannot be opened is retried at most every 5 s; the
 * events meanwhile are counted as lost and the problem is logged once.  A
 * write that stops part-way (disk full, RLIMIT_FSIZE) leaves at most one
 * torn line, and the next write starts with a newline so that the torn
 * piece never glues onto a good line -- also when the torn line was left
 * by an earlier process that crashed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define JSONL_BATCH_MAX ((size_t)4 << 20)   /* write early past this */
#define JSONL_BUF_CAP ((size_t)16 << 20)

typedef struct jsonl {
    char *path;
    int fd;
    int nofollow;         /* O_NOFOLLOW: a path tally named itself */
    int torn;             /* the last write stopped mid-line */
    int warned_open, warned_write;
    int64_t last_try_ns;
    buf out;
    uint64_t pending;     /* events in `out` */
    uint64_t lost;        /* events lost since the last commit */
} jsonl;

static void try_open(struct tally *h, jsonl *j)
{
    if (!sink_retry_due(&j->last_try_ns, tally__mono_ns())) return;
    tally__mkdir_p(j->path, 1);
    j->fd = open(j->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (j->nofollow ? O_NOFOLLOW : 0),
                 tally__file_mode(h));
    if (j->fd >= 0) {
        /* A file left with a torn last line (a crash): start on a new line. */
        struct stat st;
        char last;
        int rfd = open(j->path, O_RDONLY | O_CLOEXEC);
        if (rfd >= 0 && fstat(rfd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
            pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n')
            j->torn = 1;
        if (rfd >= 0) close(rfd);
    }
    if (j->fd < 0)
        tally__warn_once(h, &j->warned_open, "cannot open %s: %s (events are counted as lost)", j->path,
                         strerror(errno));
}

/* Writes out[0..len); returns the number of bytes written. */
static size_t write_all(int fd, const char *p, size_t len, int *err)
{
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            *err = errno;
            break;
        }
        if (w == 0) {
            *err = ENOSPC;
            break;
        }
        done += (size_t)w;
    }
    return done;
}

static void jsonl_flush(sink *s)
{
    jsonl *j = s->state;
    if (!j->out.len) return;
    if (j->fd < 0) try_open(s->h, j);
    if (j->fd < 0) {
        j->lost += j->pending;
    } else {
        int err = 0;
        if (j->torn) {
            /* Close the torn line first; if even this fails, keep trying. */
            if (write_all(j->fd, "\n", 1, &err) == 1) j->torn = 0;
        }
        size_t w = j->torn ? 0 : write_all(j->fd, j->out.p, j->out.len, &err);
        if (w < j->out.len) {
            /* Lines wholly written are kept; the rest are lost. */
            uint64_t kept = 0;
            for (size_t i = 0; i < w; i++)
                if (j->out.p[i] == '\n') kept++;
            j->lost += j->pending - kept;
            if (w > 0 && j->out.p[w - 1] != '\n') j->torn = 1;
            tally__warn_once(s->h, &j->warned_write, "cannot write %s: %s (events are counted as lost)", j->path,
                             strerror(err ? err : EIO));
        } else if (s->h->fsync_on_flush) {
            fdatasync(j->fd);
        }
    }
    buf_reset(&j->out);
    j->pending = 0;
}

static int jsonl_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)r;
    (void)ev;
    jsonl *j = s->state;
    if (j->out.len + len + 1 > JSONL_BATCH_MAX) jsonl_flush(s);
    buf_put(&j->out, line, len);
    buf_putc(&j->out, '\n');
    if (j->out.failed) {
        /* Cannot happen below the cap unless memory is exhausted. */
        j->out.failed = 0;
        return -1;
    }
    j->pending++;
    return 0;
}

static uint64_t jsonl_commit(sink *s, int sync)
{
    (void)sync; /* every commit is one write(2) already */
    jsonl *j = s->state;
    jsonl_flush(s);
    uint64_t lost = j->lost;
    j->lost = 0;
    return lost;
}

static void jsonl_after_fork(sink *s)
{
    jsonl *j = s->state;
    buf_reset(&j->out); /* the parent's batch: the parent writes it */
    j->pending = 0;
    j->lost = 0;
}

static void jsonl_close(sink *s)
{
    jsonl *j = s->state;
    if (j->fd >= 0) close(j->fd);
    buf_free(&j->out);
    free(j->path);
    free(j);
    s->state = NULL;
}

static const sink_ops jsonl_ops = {"jsonl", 0, jsonl_write, jsonl_commit, jsonl_after_fork, jsonl_close};

int sink_jsonl_open(struct tally *h, sink *s, const char *path, int named_by_tally)
{
    jsonl *j = calloc(1, sizeof *j);
    s->ops = &jsonl_ops;
    s->h = h;
    s->state = j;
    if (!j) return -1;
    j->path = strdup(path);
    j->fd = -1;
    j->nofollow = named_by_tally;
    buf_init(&j->out, JSONL_BUF_CAP);
    try_open(h, j);
    return j->fd >= 0 ? 0 : -1;
}
