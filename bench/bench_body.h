/* bench/bench_body.h — the load generator's message bodies and random numbers: size
 * specifications (fixed or a realistic mix), a pool of distinct bodies with their SHA-256
 * digest and SMTP dot-stuffed form computed once each. Not MIME: the text is filler. */
#ifndef CMTP_BENCH_BENCH_BODY_H
#define CMTP_BENCH_BENCH_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/limits.h"

/* BENCH_BODY_LINE is the length of a filler line, CRLF included. */
#define BENCH_BODY_LINE 64u

/* BENCH_BODY_SIZE_MAX is the largest fixed body size accepted (the protocol's hard maximum would
 * be far too much memory for a load generator). */
#define BENCH_BODY_SIZE_MAX (256ull * 1024 * 1024)

/* BENCH_MIX_POOL is the number of distinct bodies drawn for the mix distribution. */
#define BENCH_MIX_POOL 256u

/* The mix distribution (sizes in octets, uniform within each band):
 *   70 %  2 KiB .. 8 KiB      (plain text mail)
 *   25 %  16 KiB .. 128 KiB   (HTML mail, small attachments)
 *    5 %  256 KiB .. 2 MiB    (attachments)
 * rounded to whole filler lines. */
#define BENCH_MIX_MAX (2u * 1024u * 1024u)

/* bench_rng is a xoshiro256** generator: fast, seedable, not cryptographic. All-zero is not a
 * valid state: seed it with bench_rng_seed. */
struct bench_rng {
    uint64_t s[4];
};

/* bench_rng_seed sets |r| from |seed| (splitmix64 expansion; any seed is fine). */
void bench_rng_seed(struct bench_rng *r, uint64_t seed);

/* bench_rng_next returns the next 64 random bits. */
uint64_t bench_rng_next(struct bench_rng *r);

/* bench_rng_range returns a uniform value in [|lo|, |hi|] (|lo| <= |hi|). */
uint64_t bench_rng_range(struct bench_rng *r, uint64_t lo, uint64_t hi);

/* bench_size_spec is a parsed --size: a fixed size, or the mix distribution. */
struct bench_size_spec {
    bool mix;
    uint64_t size; /* octets, when not |mix| */
};

/* bench_size_parse parses "1k", "64k", "1m", "mix" or a number of octets with an optional
 * k/m suffix (KiB, MiB; either case) into |out|. Returns 0, or -EINVAL for anything else, 0
 * octets, or more than BENCH_BODY_SIZE_MAX. */
int bench_size_parse(const char *s, struct bench_size_spec *out);

/* bench_size_name writes a short label of |spec| ("1k", "64k", "1m", "mix", or the octets)
 * into |out| (|out_size| octets, NUL-terminated). */
void bench_size_name(const struct bench_size_spec *spec, char *out, size_t out_size);

/* bench_body is one distinct body. Its pointers belong to the bench_bodies pool it came from
 * and stay valid and unchanged until bench_bodies_free; it may be read by any thread. */
struct bench_body {
    const uint8_t *data;
    size_t len;
    uint8_t digest[CMTP_DIGEST_LEN]; /* SHA-256 of data */
    /* smtp is the DATA form (dot-stuffed; the same pointer as |data| when no line starts with
     * a dot), and smtp_tail the terminator to send after it: ".\r\n" when the body ends with
     * CRLF, "\r\n.\r\n" otherwise. */
    const uint8_t *smtp;
    size_t smtp_len;
    const char *smtp_tail;
};

/* bench_bodies is an immutable pool of distinct bodies. */
struct bench_bodies;

/* bench_bodies_new builds the pool for |spec|: one body for a fixed size, BENCH_MIX_POOL
 * bodies drawn from the mix distribution with a generator seeded with |seed|. The text is
 * CRLF-terminated lines of printable ASCII with a few header lines in front, the same octets
 * for CMTP and SMTP. Each digest is computed here, once. Returns NULL when out of memory or
 * |spec| is invalid. */
struct bench_bodies *bench_bodies_new(const struct bench_size_spec *spec, uint64_t seed);

/* bench_bodies_free releases |b| and every body of it. NULL is a no-op. */
void bench_bodies_free(struct bench_bodies *b);

/* bench_bodies_count returns the number of distinct bodies in |b| (>= 1). */
size_t bench_bodies_count(const struct bench_bodies *b);

/* bench_bodies_get returns body |i| (< bench_bodies_count) of |b|. */
const struct bench_body *bench_bodies_get(const struct bench_bodies *b, size_t i);

/* bench_bodies_pick returns a body chosen uniformly with |r| (the pool already follows the
 * distribution). */
const struct bench_body *bench_bodies_pick(const struct bench_bodies *b, struct bench_rng *r);

/* bench_bodies_mean returns the mean body length of the pool, in octets. */
double bench_bodies_mean(const struct bench_bodies *b);

/* bench_body_fill writes |len| octets of filler text into |out|: lines of at most
 * BENCH_BODY_LINE octets ending in CRLF (when |len| >= 2 the text ends with CRLF), printable
 * ASCII from |r|, never a line that starts with '.'. Lines are exactly BENCH_BODY_LINE octets
 * except in the last 2 * BENCH_BODY_LINE octets. */
void bench_body_fill(uint8_t *out, size_t len, struct bench_rng *r);

/* bench_dot_stuff returns the SMTP DATA form of |len| octets at |in| — a '.' doubled at the
 * start of every line — in a new buffer (|*out_len| octets) the caller frees, or NULL with
 * |*out_len| = |len| when no line starts with '.' (send |in| as it is) or when out of memory
 * (|*out_len| = 0 then). */
uint8_t *bench_dot_stuff(const uint8_t *in, size_t len, size_t *out_len);

#endif
