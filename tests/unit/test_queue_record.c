/* tests/unit/test_queue_record.c — the envelope record: round trips, limits, and every corruption
 * class the consumer must quarantine. Pure: no Redis. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/record.h"

static void set_addr(struct cmtp_addr *a, const char *local, const char *domain)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->local, sizeof(a->local), "%s", local);
    snprintf(a->domain, sizeof(a->domain), "%s", domain);
    a->local_len = strlen(a->local);
    a->domain_len = strlen(a->domain);
}

/* sample fills a representative envelope, 3 recipients and meta. */
static void sample(struct cmtp_envelope *env, struct queue_rcpt *r, struct queue_txn_meta *m)
{
    memset(env, 0, sizeof(*env));
    set_addr(&env->from, "j\xc3\xbcrgen", "xn--mnchen-3ya.example");
    snprintf(env->txid, sizeof(env->txid), "TXN0123456789abcdef");
    env->size = 123456789012ull;
    for (int i = 0; i < CMTP_DIGEST_LEN; i++)
        env->digest[i] = (uint8_t)(i * 7 + 1);
    env->policy.relay = CMTP_RELAY_DOMAIN;
    env->policy.fallback = CMTP_FALLBACK_SMTP_VERIFIED;
    env->policy.hops = 7;
    snprintf(env->report_txid, sizeof(env->report_txid), "REPORT-0000000001");
    env->trace_count = 2;
    for (unsigned i = 0; i < 2; i++) {
        struct cmtp_trace *t = &env->trace[i];
        t->hop = i + 1;
        snprintf(t->by, sizeof(t->by), "mx%u.example.org", i);
        snprintf(t->from, sizeof(t->from), "%s", i ? "relay.example.net" : "-");
        t->at = 1780000000 + i;
        snprintf(t->tls, sizeof(t->tls), "TLSv1.3/TLS_AES_128_GCM_SHA256");
        snprintf(t->peer_id, sizeof(t->peer_id), "-");
        t->role = i ? CMTP_ROLE_FINAL : CMTP_ROLE_RELAY;
    }
    memset(r, 0, 3 * sizeof(*r));
    set_addr(&r[0].addr, "alice", "example.org");
    r[0].role = CMTP_ROLE_FINAL;
    set_addr(&r[1].addr, "bob.smith", "example.org");
    r[1].role = CMTP_ROLE_RELAY;
    snprintf(r[1].next_hop, sizeof(r[1].next_hop), "mx.example.org");
    set_addr(&r[2].addr, "carol", "sub.example.net");
    r[2].status = QUEUE_RCPT_DELIVERED;
    memset(m, 0, sizeof(*m));
    snprintf(m->peer_ip, sizeof(m->peer_ip), "2001:db8::1");
    snprintf(m->tls_version, sizeof(m->tls_version), "TLSv1.3");
    snprintf(m->tls_cipher, sizeof(m->tls_cipher), "TLS_AES_256_GCM_SHA384");
    snprintf(m->peer_id, sizeof(m->peer_id), "client.example.com");
    m->received_ms = 1780000000123;
    snprintf(m->listener, sizeof(m->listener), "public");
}

struct enc {
    uint8_t *buf;
    size_t len;
};

static struct enc encode_sample(void)
{
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct queue_rcpt r[3];
    struct queue_txn_meta m;
    struct enc e = {0};

    assert_non_null(env);
    sample(env, r, &m);
    struct queue_record_in in = {
        .qid = "01J00000000ABCDEFGHJKM-3",
        .node = "node-a:w1",
        .created_ms = 1780000000999,
        .attempts = 4,
        .env = env,
        .meta = &m,
        .rcpts = r,
        .n_rcpts = 3,
    };
    assert_int_equal(queue_record_encode(&in, &e.buf, &e.len), 0);
    free(env);
    return e;
}

static void fix_crc(uint8_t *b, size_t len)
{
    uint32_t c = queue_crc32c(0, b, len - 4);
    b[len - 4] = (uint8_t)(c >> 24);
    b[len - 3] = (uint8_t)(c >> 16);
    b[len - 2] = (uint8_t)(c >> 8);
    b[len - 1] = (uint8_t)c;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* find_field returns the offset of the first field with |tag| (its head), or 0. */
static size_t find_field(const uint8_t *b, size_t len, unsigned tag)
{
    size_t off = QUEUE_RECORD_HEADER_LEN;
    while (off + 6 <= len - 4) {
        unsigned t = (unsigned)b[off] << 8 | b[off + 1];
        uint32_t fl = rd32(b + off + 2);
        if (t == tag)
            return off;
        off += 6 + fl;
    }
    return 0;
}

/* splice returns a new record: |b| with |del| octets at |at| replaced by |ins| (|ins_len|),
 * total length and checksum fixed. */
static struct enc splice(const struct enc *e, size_t at, size_t del, const uint8_t *ins,
                         size_t ins_len)
{
    struct enc o;
    o.len = e->len - del + ins_len;
    o.buf = malloc(o.len);
    assert_non_null(o.buf);
    memcpy(o.buf, e->buf, at);
    if (ins_len > 0)
        memcpy(o.buf + at, ins, ins_len);
    memcpy(o.buf + at + ins_len, e->buf + at + del, e->len - at - del);
    wr32(o.buf + 8, (uint32_t)o.len);
    fix_crc(o.buf, o.len);
    return o;
}

static enum queue_record_err decode(const uint8_t *b, size_t len)
{
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_non_null(rec);
    enum queue_record_err err = queue_record_decode(rec, b, len);
    if (err == QUEUE_RECORD_OK)
        queue_record_cleanup(rec);
    free(rec);
    return err;
}

static void test_crc32c_vector(void **state)
{
    (void)state;
    /* The standard check value of CRC-32C (Castagnoli). */
    assert_int_equal(queue_crc32c(0, (const uint8_t *)"123456789", 9), 0xe3069283u);
    assert_int_equal(queue_crc32c(0, NULL, 0), 0);
    /* Incremental == one shot. */
    uint32_t c = queue_crc32c(0, (const uint8_t *)"1234", 4);
    assert_int_equal(queue_crc32c(c, (const uint8_t *)"56789", 5), 0xe3069283u);
    assert_int_equal(queue_crc32c_portable(0, (const uint8_t *)"123456789", 9), 0xe3069283u);
    /* The instruction path and the table agree at every length, alignment and split. */
    uint8_t buf[600];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof(buf); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len + off <= sizeof(buf); len += 1 + len / 16) {
            uint32_t want = queue_crc32c_portable(0, buf + off, len);
            assert_int_equal(queue_crc32c(0, buf + off, len), want);
            size_t cut = len / 3;
            assert_int_equal(
                queue_crc32c(queue_crc32c(0, buf + off, cut), buf + off + cut, len - cut), want);
        }
}

static void test_round_trip(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    struct queue_record *rec = malloc(sizeof(*rec));
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct queue_rcpt r[3];
    struct queue_txn_meta m;

    assert_non_null(rec);
    assert_non_null(env);
    sample(env, r, &m);
    assert_memory_equal(e.buf, "CMTQ", 4);
    assert_int_equal(rd32(e.buf + 8), e.len);
    assert_int_equal(queue_record_decode(rec, e.buf, e.len), QUEUE_RECORD_OK);
    assert_string_equal(rec->qid, "01J00000000ABCDEFGHJKM-3");
    assert_string_equal(rec->node, "node-a:w1");
    assert_int_equal(rec->created_ms, 1780000000999);
    assert_int_equal(rec->attempts, 4);
    assert_string_equal(rec->env.from.local, env->from.local);
    assert_int_equal(rec->env.from.local_len, env->from.local_len);
    assert_string_equal(rec->env.from.domain, env->from.domain);
    assert_false(rec->env.from.is_null);
    assert_string_equal(rec->env.txid, env->txid);
    assert_true(rec->env.size == env->size);
    assert_memory_equal(rec->env.digest, env->digest, CMTP_DIGEST_LEN);
    assert_int_equal(rec->env.policy.relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(rec->env.policy.fallback, CMTP_FALLBACK_SMTP_VERIFIED);
    assert_int_equal(rec->env.policy.hops, 7);
    assert_string_equal(rec->env.report_txid, env->report_txid);
    assert_int_equal(rec->env.trace_count, 2);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(rec->env.trace[i].hop, env->trace[i].hop);
        assert_string_equal(rec->env.trace[i].by, env->trace[i].by);
        assert_string_equal(rec->env.trace[i].from, env->trace[i].from);
        assert_int_equal(rec->env.trace[i].at, env->trace[i].at);
        assert_string_equal(rec->env.trace[i].tls, env->trace[i].tls);
        assert_string_equal(rec->env.trace[i].peer_id, env->trace[i].peer_id);
        assert_int_equal(rec->env.trace[i].role, env->trace[i].role);
    }
    assert_int_equal(rec->n_rcpts, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_string_equal(rec->rcpts[i].addr.local, r[i].addr.local);
        assert_string_equal(rec->rcpts[i].addr.domain, r[i].addr.domain);
        assert_int_equal(rec->rcpts[i].role, r[i].role);
        assert_int_equal(rec->rcpts[i].status, r[i].status);
        assert_string_equal(rec->rcpts[i].next_hop, r[i].next_hop);
    }
    assert_string_equal(rec->meta.peer_ip, m.peer_ip);
    assert_string_equal(rec->meta.tls_version, m.tls_version);
    assert_string_equal(rec->meta.tls_cipher, m.tls_cipher);
    assert_string_equal(rec->meta.peer_id, m.peer_id);
    assert_int_equal(rec->meta.received_ms, m.received_ms);
    assert_string_equal(rec->meta.listener, m.listener);

    /* Re-encoding the decoded record gives the same octets. */
    struct queue_record_in in;
    uint8_t *b2;
    size_t l2;
    queue_record_in_from(&in, rec);
    assert_int_equal(queue_record_encode(&in, &b2, &l2), 0);
    assert_int_equal(l2, e.len);
    assert_memory_equal(b2, e.buf, e.len);
    free(b2);
    queue_record_cleanup(rec);
    assert_null(rec->rcpts);
    free(rec);
    free(env);
    free(e.buf);
}

static void test_null_sender_and_no_report(void **state)
{
    (void)state;
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct queue_record *rec = malloc(sizeof(*rec));
    struct queue_rcpt r[3];
    struct queue_txn_meta m;
    uint8_t *b;
    size_t l;

    sample(env, r, &m);
    memset(&env->from, 0, sizeof(env->from));
    env->from.is_null = true;
    env->report_txid[0] = '\0';
    env->trace_count = 0;
    struct queue_record_in in = {
        .qid = "Q-1", .node = "n", .env = env, .meta = &m, .rcpts = r, .n_rcpts = 1};
    assert_int_equal(queue_record_encode(&in, &b, &l), 0);
    assert_int_equal(queue_record_decode(rec, b, l), QUEUE_RECORD_OK);
    assert_true(rec->env.from.is_null);
    assert_string_equal(rec->env.from.local, "");
    assert_string_equal(rec->env.report_txid, "");
    assert_int_equal(rec->env.trace_count, 0);
    assert_int_equal(rec->n_rcpts, 1);
    queue_record_cleanup(rec);
    free(b);
    free(rec);
    free(env);
}

static void test_many_rcpts(void **state)
{
    (void)state;
    const size_t n = CMTP_RCPT_MAX_DEFAULT;
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct queue_rcpt *r = calloc(n, sizeof(*r));
    struct queue_record *rec = malloc(sizeof(*rec));
    struct queue_rcpt r3[3];
    struct queue_txn_meta m;
    uint8_t *b;
    size_t l;

    sample(env, r3, &m);
    for (size_t i = 0; i < n; i++) {
        char local[32];
        snprintf(local, sizeof(local), "user%zu", i);
        set_addr(&r[i].addr, local, i % 2 ? "example.org" : "example.net");
    }
    struct queue_record_in in = {
        .qid = "Q-1", .node = "n", .env = env, .meta = &m, .rcpts = r, .n_rcpts = n};
    assert_int_equal(queue_record_encode(&in, &b, &l), 0);
    assert_int_equal(queue_record_decode(rec, b, l), QUEUE_RECORD_OK);
    assert_int_equal(rec->n_rcpts, n);
    assert_string_equal(rec->rcpts[n - 1].addr.local, "user999");
    queue_record_cleanup(rec);
    free(b);
    free(r);
    free(rec);
    free(env);
}

static void test_encode_refuses(void **state)
{
    (void)state;
    struct cmtp_envelope *env = calloc(1, sizeof(*env));
    struct queue_rcpt r[3];
    struct queue_txn_meta m;
    uint8_t *b = (uint8_t *)"x";
    size_t l = 1;

    sample(env, r, &m);
    struct queue_record_in in = {
        .qid = "Q-1", .node = "n", .env = env, .meta = &m, .rcpts = r, .n_rcpts = 3};
    in.n_rcpts = 0;
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    assert_null(b);
    in.n_rcpts = 3;
    env->trace_count = CMTP_TRACE_MAX + 1;
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    env->trace_count = 0;
    memset(env->txid, 'a', sizeof(env->txid)); /* no NUL within the limit */
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    snprintf(env->txid, sizeof(env->txid), "TXN0123456789abcdef");
    r[1].role = (enum cmtp_role)7;
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    r[1].role = CMTP_ROLE_FINAL;
    env->policy.hops = CMTP_HOPS_MAX + 1;
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    env->policy.hops = 1;
    in.qid = "";
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    in.qid = "Q";
    memset(m.listener, 'x', sizeof(m.listener)); /* unterminated */
    assert_int_equal(queue_record_encode(&in, &b, &l), -EINVAL);
    assert_null(b);
    free(env);
}

static void test_truncated(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    assert_int_equal(decode(e.buf, 0), QUEUE_RECORD_ERR_TRUNCATED);
    assert_int_equal(decode(NULL, 10), QUEUE_RECORD_ERR_TRUNCATED);
    assert_int_equal(decode(e.buf, 3), QUEUE_RECORD_ERR_TRUNCATED);
    assert_int_equal(decode(e.buf, QUEUE_RECORD_HEADER_LEN), QUEUE_RECORD_ERR_TRUNCATED);
    assert_int_equal(decode(e.buf, e.len - 1), QUEUE_RECORD_ERR_TRUNCATED);
    /* Every shorter prefix fails (never OK, never a crash). */
    for (size_t n = 0; n < e.len; n++)
        assert_int_not_equal(decode(e.buf, n), QUEUE_RECORD_OK);
    free(e.buf);
}

static void test_bad_magic_version_length(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    uint8_t *b = malloc(e.len + 8);
    memcpy(b, e.buf, e.len);

    b[0] = 'X';
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_MAGIC);
    b[0] = 'C';
    b[5] = 2; /* version 2 */
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_VERSION);
    b[5] = 1;
    b[4] = 1; /* version 257 */
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_VERSION);
    b[4] = 0;
    /* Length field larger than the data: truncated. */
    wr32(b + 8, (uint32_t)e.len + 1);
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_TRUNCATED);
    /* Length field below the minimum, or absurdly large. */
    wr32(b + 8, 10);
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_LENGTH);
    wr32(b + 8, 0xffffffffu);
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_ERR_LENGTH);
    wr32(b + 8, (uint32_t)e.len);
    /* Trailing octets after a valid record. */
    memset(b + e.len, 0, 8);
    assert_int_equal(decode(b, e.len + 8), QUEUE_RECORD_ERR_LENGTH);
    assert_int_equal(decode(b, e.len), QUEUE_RECORD_OK);
    free(b);
    free(e.buf);
}

static void test_bad_checksum(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    /* Any single flipped bit after the length field is caught by the CRC. */
    for (size_t i = 12; i < e.len; i++) {
        e.buf[i] ^= 0x10;
        assert_int_equal(decode(e.buf, e.len), QUEUE_RECORD_ERR_CHECKSUM);
        e.buf[i] ^= 0x10;
    }
    assert_int_equal(decode(e.buf, e.len), QUEUE_RECORD_OK);
    free(e.buf);
}

static void test_corrupt_with_valid_checksum(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    struct enc o;
    size_t off;

    /* Flags must be zero in version 1. */
    o = splice(&e, 7, 1, (const uint8_t *)"\x01", 1);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A field length running past the end. */
    off = find_field(e.buf, e.len, 1);
    assert_int_not_equal(off, 0);
    o = splice(&e, off + 2, 4, (const uint8_t *)"\x00\x01\x00\x00", 4);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A string length longer than its field. */
    o = splice(&e, off + 6, 2, (const uint8_t *)"\x00\x30", 2);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A missing required field (QID). */
    uint32_t fl = rd32(e.buf + off + 2);
    o = splice(&e, off, 6 + fl, NULL, 0);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A duplicated non-repeatable field. */
    o = splice(&e, off, 0, e.buf + off, 6 + fl);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A NUL inside a string (the qid's first octet). */
    o = splice(&e, off + 8, 1, (const uint8_t *)"\x00", 1);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A recipient role out of range: RCPT value = addr(1+2+5+2+11) role status... */
    off = find_field(e.buf, e.len, 10);
    assert_int_not_equal(off, 0);
    size_t role_at = off + 6 + 1 + 2 + 5 + 2 + 11;
    o = splice(&e, role_at, 1, (const uint8_t *)"\x05", 1);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);
    o = splice(&e, role_at + 1, 1, (const uint8_t *)"\x09", 1); /* status */
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);
    o = splice(&e, off + 6, 1, (const uint8_t *)"\x01", 1); /* null address with a local part */
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* No recipient at all. */
    struct enc cur = {malloc(e.len), e.len};
    memcpy(cur.buf, e.buf, e.len);
    while ((off = find_field(cur.buf, cur.len, 10)) != 0) {
        struct enc n = splice(&cur, off, 6 + rd32(cur.buf + off + 2), NULL, 0);
        free(cur.buf);
        cur = n;
    }
    assert_int_equal(decode(cur.buf, cur.len), QUEUE_RECORD_ERR_CORRUPT);
    free(cur.buf);

    /* Policy out of range (hops 33). */
    off = find_field(e.buf, e.len, 7);
    o = splice(&e, off + 8, 1, (const uint8_t *)"\x21", 1);
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);

    /* A field value with extra octets. */
    off = find_field(e.buf, e.len, 5);
    o = splice(&e, off + 2, 4, (const uint8_t *)"\x00\x00\x00\x09", 4);
    struct enc o2 = splice(&o, off + 6 + 8, 0, (const uint8_t *)"\x00", 1);
    assert_int_equal(decode(o2.buf, o2.len), QUEUE_RECORD_ERR_CORRUPT);
    free(o.buf);
    free(o2.buf);

    /* An unknown tag is skipped: a later writer may add fields. */
    const uint8_t unk[] = {0x00, 0xc8, 0x00, 0x00, 0x00, 0x03, 'x', 'y', 'z'};
    o = splice(&e, QUEUE_RECORD_HEADER_LEN, 0, unk, sizeof(unk));
    assert_int_equal(decode(o.buf, o.len), QUEUE_RECORD_OK);
    free(o.buf);
    free(e.buf);
}

static void test_too_many_traces(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    size_t off = find_field(e.buf, e.len, 9);
    uint32_t fl = rd32(e.buf + off + 2);
    struct enc cur = {malloc(e.len), e.len};
    memcpy(cur.buf, e.buf, e.len);
    /* 2 traces + 31 copies = 33 > CMTP_TRACE_MAX. */
    for (int i = 0; i < 31; i++) {
        struct enc n = splice(&cur, off, 0, e.buf + off, 6 + fl);
        free(cur.buf);
        cur = n;
    }
    assert_int_equal(decode(cur.buf, cur.len), QUEUE_RECORD_ERR_CORRUPT);
    /* 32 decode. */
    struct enc back = splice(&cur, off, 6 + fl, NULL, 0);
    assert_int_equal(decode(back.buf, back.len), QUEUE_RECORD_OK);
    free(back.buf);
    free(cur.buf);
    free(e.buf);
}

static void test_set_created(void **state)
{
    (void)state;
    struct enc e = encode_sample();
    struct queue_record *rec = malloc(sizeof(*rec));
    assert_int_equal(queue_record_set_created(e.buf, e.len, 42), 0);
    assert_int_equal(queue_record_decode(rec, e.buf, e.len), QUEUE_RECORD_OK);
    assert_int_equal(rec->created_ms, 42);
    queue_record_cleanup(rec);
    assert_int_equal(queue_record_set_created(e.buf, e.len - 1, 42), -EINVAL);
    assert_int_equal(queue_record_set_created(NULL, 0, 42), -EINVAL);
    free(rec);
    free(e.buf);
}

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(queue_record_strerror(QUEUE_RECORD_ERR_CHECKSUM), "bad-checksum");
    assert_string_equal(queue_record_strerror(QUEUE_RECORD_ERR_VERSION), "bad-version");
    assert_string_equal(queue_record_strerror(QUEUE_RECORD_ERR_TRUNCATED), "truncated");
    assert_string_equal(queue_record_strerror((enum queue_record_err)99), "unknown");
    queue_record_cleanup(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vector),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_null_sender_and_no_report),
        cmocka_unit_test(test_many_rcpts),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_bad_magic_version_length),
        cmocka_unit_test(test_bad_checksum),
        cmocka_unit_test(test_corrupt_with_valid_checksum),
        cmocka_unit_test(test_too_many_traces),
        cmocka_unit_test(test_set_created),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
