/*
 * hash -- the one hash function tally uses for its tables and ids: 64-bit
 * FNV-1a.  Chain calls to hash several pieces: h = fnv1a(fnv1a(FNV_SEED,
 * a, an), b, bn).  Not for anything an attacker must not collide: keys
 * here come from the user's own files.
 */
#ifndef TALLY_HASH_H
#define TALLY_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FNV_SEED 0xcbf29ce484222325ull

static inline uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#endif
