/*
 * json -- tally's JSON reader: a strict RFC 8259 parser into a small tree.
 *
 * Strict: every valid document is accepted and every invalid one rejected
 * (bad UTF-8, lone surrogates in \u escapes, leading zeros, trailing
 * commas, control characters in strings, trailing garbage).  Nesting depth
 * is capped (JSON_MAX_DEPTH).  All memory comes from an arena with a hard
 * cap, reset per document, so a hostile line cannot make the reader grow
 * without bound.
 *
 * Lenience (skipping bad lines, integer `t`, TelemetryLogger tags) belongs to the
 * callers, not here.
 */
#ifndef TALLY_JSON_H
#define TALLY_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define JSON_MAX_DEPTH 64

typedef enum { JV_NULL, JV_FALSE, JV_TRUE, JV_NUM, JV_STR, JV_ARR, JV_OBJ } jv_type;

/* 48 bytes: a line of some 40 values is parsed into 2 KiB.  Numbers keep
 * their text and are converted when asked (jv_num, jv_int): most members a
 * reader skips are never converted. */
typedef struct jv {
    uint8_t type;         /* jv_type */
    uint8_t is_int;       /* NUM written without fraction or exponent */
    uint32_t keylen;      /* member key length (inside an object) */
    uint32_t n;           /* STR: length of s; NUM: length of its text */
    uint32_t count;       /* ARR / OBJ: number of elements */
    const char *s;        /* STR: unescaped bytes (NUL-terminated); NUM: raw text */
    const char *key;      /* member key when inside an object (NUL-terminated) */
    struct jv *child;     /* ARR / OBJ: first element */
    struct jv *next;      /* next sibling */
} jv;

typedef struct json_arena {
    char *blocks;         /* singly linked list of blocks */
    char *cur;
    size_t used, size;    /* in the current block */
    size_t total, max;    /* bytes allocated, cap */
} json_arena;

void json_arena_init(json_arena *a, size_t max);
void json_arena_reset(json_arena *a);  /* keeps the first block */
void json_arena_free(json_arena *a);

typedef struct json_error {
    size_t offset;        /* byte offset of the problem */
    const char *what;     /* static message */
} json_error;

/* Parses exactly one JSON value (surrounding whitespace allowed).  NULL on
 * error, with `err` filled when given. */
jv *json_parse(json_arena *a, const char *s, size_t n, json_error *err);

/* The same on a writable buffer: strings without escapes are terminated
 * in place (their closing quote is overwritten) instead of copied, so the
 * buffer no longer holds the original text.  For readers that only need
 * the values. */
jv *json_parse_inplace(json_arena *a, char *s, size_t n, json_error *err);

/* Which members json_parse_keep builds.  want() is asked about each
 * member of an object at `depth` (1: the document's own object) that is
 * inside kept members only; `pslot` is the slot of the nearest kept member
 * around it (0 at depth 1).  It returns a slot (> 0) to build the member,
 * 0 to only check it; got() is then given each built member (its strings
 * are terminated by the time json_parse_keep returns).  Elements of a kept
 * array are all built.  reset() forgets every member got() was given: the
 * parser may start the document again (see json_parse_keep). */
typedef struct json_keyset json_keyset;
typedef struct json_keep {
    int (*want)(void *ud, int depth, int pslot, const char *key, size_t keylen);
    void (*got)(void *ud, int slot, const jv *v);
    void (*reset)(void *ud);
    void *ud;
    int copy;  /* kept strings and keys are copied into the arena: the input is left as it was */
    /* Optional, the same answers without a call per member (the fast
     * path's): keys wanted by kind of object, where() the kind of an
     * object (once per object; -1: nothing in it is wanted), and slots[]
     * the members got() would be given (a slot already filled is not
     * wanted again: the first wins).  want/got must answer alike. */
    const json_keyset *keys;
    int (*where)(int depth, int pslot);
    const jv **slots;
} json_keep;

/* Keys by kind of object (`where`, below 256) -> slot (1-255): an open
 * hash table of fixed size, a key compared as words. */
#define JSON_KEYSET_SIZE 512
typedef struct json_keyent {
    uint64_t head, mid, tail;
    uint16_t n;                /* 0: empty */
    uint8_t where, slot;
    const char *key;
} json_keyent;
struct json_keyset {
    json_keyent e[JSON_KEYSET_SIZE];
};
/* Adds key (NUL-terminated, kept by the caller) at `where`: 0, or -1 when
 * the table is full (at most half of its size is used). */
int json_keyset_add(json_keyset *ks, int where, const char *key, int slot);
/* The slot of key k[0..n) at `where`, or 0. */
int json_keyset_find(const json_keyset *ks, int where, const char *k, size_t n);

/* json_parse_inplace that builds only the members keep wants: the rest
 * are checked as strictly (the same documents accepted, the same errors)
 * but cost no memory -- so, unlike a whole tree, a huge member that is
 * not kept never makes a document "too large".  For readers that need a
 * few keys of each line.  Documents as tally writes them (plain ASCII
 * keys, no kept arrays) take a fast path; any other, and any error, is
 * read again from its start by the general parser, after keep->reset(). */
jv *json_parse_keep(json_arena *a, char *s, size_t n, const json_keep *keep, json_error *err);

/* Member of an object by key, or NULL. */
const jv *jv_get(const jv *obj, const char *key);
const jv *jv_getn(const jv *obj, const char *key, size_t keylen);
/* jv_get with a literal key: its length known at compile time. */
#define JV_GET(obj, lit) jv_getn((obj), "" lit, sizeof(lit) - 1)
/* A number's value as int64 / double (the double strtod would give); def
 * when absent or not a number.  jv_int of a non-integer truncates. */
int64_t jv_int(const jv *v, int64_t def);
double jv_num(const jv *v, double def);
/* A number written as an integer (no fraction, no exponent). */
static inline int jv_is_int(const jv *v) { return v && v->type == JV_NUM && v->is_int; }
/* String value or NULL. */
const char *jv_str(const jv *v);

/* Writes v as compact JSON (strings re-escaped by encode). */
void jv_write(buf *b, const jv *v);

#endif
