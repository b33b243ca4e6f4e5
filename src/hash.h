/*
 * hash -- the hash function tally uses for its tables and ids: 64-bit
 * FNV-1a.  Chain calls to hash several pieces: h = fnv1a(fnv1a(FNV_SEED,
 * a, an), b, bn).  Not for anything an attacker must not collide: keys
 * here come from the user's own files.
 *
 * hash_mem: for tables that live in memory only (never stored, so free to
 * change): eight bytes per step instead of one, for hot paths such as an
 * import's set of ids.
 */
#ifndef TALLY_HASH_H
#define TALLY_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

static inline uint64_t hash_mem(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

#endif
