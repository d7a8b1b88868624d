/* queue/record.c — encoder and validating decoder of the envelope record (see queue/record.h and
 * docs/QUEUE.md for the layout). Pure: no I/O, no Redis, no allocation before the checks. */
#include "queue/record.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* Field tags of record version 1. Unknown tags are skipped (a later writer may add fields). */
enum {
    TAG_QID = 1,
    TAG_NODE = 2,
    TAG_FROM = 3,
    TAG_TXID = 4,
    TAG_SIZE = 5,
    TAG_DIGEST = 6,
    TAG_POLICY = 7,
    TAG_REPORT = 8,
    TAG_TRACE = 9,
    TAG_RCPT = 10,
    TAG_META = 11,
    TAG_LAST_KNOWN = TAG_META,
};

/* FIELD_HEAD_LEN is a field's tag (2) and value length (4). */
#define FIELD_HEAD_LEN 6u

/* RCPT_MIN_LEN is the smallest encoded recipient value: an address (1 + 2 + 2), role, status and
 * an empty next hop (2). It bounds the recipient array before it is allocated. */
#define RCPT_MIN_LEN 9u

static const uint32_t crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu, 0x26a1e7e8u,
    0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu, 0x4d43cfd0u, 0xbf284cd3u,
    0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu, 0xf165b798u, 0x030e349bu, 0xd7c45070u,
    0x25afd373u, 0x36ff2087u, 0xc494a384u, 0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u,
    0x5d1d08bfu, 0xaf768bbcu, 0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u,
    0x33ed7d2au, 0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau, 0x30e349b1u,
    0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu, 0x1642ae59u, 0xe4292d5au,
    0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au, 0x7da08661u, 0x8fcb0562u, 0x9c9bf696u,
    0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu, 0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u,
    0x67dafa54u, 0x95b17957u, 0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu,
    0xfe53516fu, 0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu, 0x3ac7f2ebu,
    0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u, 0x61c69362u, 0x93ad1061u,
    0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu, 0x4767748au, 0xb50cf789u, 0xeb1fcbadu,
    0x197448aeu, 0x0a24bb5au, 0xf84f3859u, 0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u,
    0x7198540du, 0x83f3d70eu, 0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u,
    0xa55230e6u, 0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu, 0x456cac67u,
    0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u, 0xe9141340u, 0x1b7f9043u,
    0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu, 0x92a8fc17u, 0x60c37f14u, 0x73938ce0u,
    0x81f80fe3u, 0x55326b08u, 0xa759e80bu, 0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu,
    0xf94ad42fu, 0x0b21572cu, 0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u,
    0x502036a5u, 0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u, 0x0e330a81u,
    0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du, 0x758fe5d6u, 0x87e466d5u,
    0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u, 0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u,
    0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu, 0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u,
    0x0417b1dbu, 0xf67c32d8u, 0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu,
    0x5a048dffu, 0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u, 0x590ab964u,
    0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u, 0x7fab5e8cu, 0x8dc0dd8fu,
    0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu, 0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u,
    0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u, 0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u,
    0x4f48173du, 0xbd23943eu, 0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au,
    0xc69f7b69u, 0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

/* crc32c_sw is the table-driven update (one octet per step), for CPUs without the instruction. */
static uint32_t crc32c_sw(uint32_t crc, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ data[i]) & 0xffu] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
/* crc32c_hw is the same update with SSE4.2's CRC32 instruction (the Castagnoli polynomial),
 * eight octets per step: records are checksummed at every commit, read and rewrite. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *data,
                                                            size_t len)
{
    uint64_t c = crc;
    for (; len >= 8; data += 8, len -= 8) {
        uint64_t v;
        memcpy(&v, data, 8);
        c = _mm_crc32_u64(c, v);
    }
    crc = (uint32_t)c;
    for (; len > 0; data++, len--)
        crc = _mm_crc32_u8(crc, *data);
    return crc;
}
#endif

uint32_t queue_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
    if (len == 0)
        return crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc32c_hw(~crc, data, len);
#endif
    return ~crc32c_sw(~crc, data, len);
}

uint32_t queue_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len)
{
    return len == 0 ? crc : ~crc32c_sw(~crc, data, len);
}

/* ---- big-endian helpers ---- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* ---- writer: a growable buffer that remembers its first error ---- */

struct wbuf {
    uint8_t *b;
    size_t len;
    size_t cap;
    int err; /* 0 or a negative errno */
};

static uint8_t *w_room(struct wbuf *w, size_t n)
{
    if (w->err)
        return NULL;
    if (n > QUEUE_RECORD_MAX || w->len > QUEUE_RECORD_MAX - n) {
        w->err = -E2BIG;
        return NULL;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *nb = realloc(w->b, cap);
        if (nb == NULL) {
            w->err = -ENOMEM;
            return NULL;
        }
        w->b = nb;
        w->cap = cap;
    }
    uint8_t *p = w->b + w->len;
    w->len += n;
    return p;
}

static void w_u8(struct wbuf *w, unsigned v)
{
    uint8_t *p = w_room(w, 1);
    if (p)
        *p = (uint8_t)v;
}

static void w_u16(struct wbuf *w, uint16_t v)
{
    uint8_t *p = w_room(w, 2);
    if (p)
        put16(p, v);
}

static void w_u32(struct wbuf *w, uint32_t v)
{
    uint8_t *p = w_room(w, 4);
    if (p)
        put32(p, v);
}

static void w_u64(struct wbuf *w, uint64_t v)
{
    uint8_t *p = w_room(w, 8);
    if (p)
        put64(p, v);
}

static void w_bytes(struct wbuf *w, const void *data, size_t n)
{
    uint8_t *p = w_room(w, n);
    if (p && n)
        memcpy(p, data, n);
}

/* w_str writes a NUL-terminated string of at most |max| octets as u16 length + octets. */
static void w_str(struct wbuf *w, const char *s, size_t max)
{
    if (s == NULL)
        s = "";
    size_t n = strnlen(s, max + 1);
    if (n > max || n > UINT16_MAX) {
        if (!w->err)
            w->err = -EINVAL;
        return;
    }
    w_u16(w, (uint16_t)n);
    w_bytes(w, s, n);
}

/* w_field_begin writes a field head with a length to be patched by w_field_end. */
static size_t w_field_begin(struct wbuf *w, unsigned tag)
{
    w_u16(w, (uint16_t)tag);
    w_u32(w, 0);
    return w->len;
}

static void w_field_end(struct wbuf *w, size_t start)
{
    if (w->err)
        return;
    put32(w->b + start - 4, (uint32_t)(w->len - start));
}

static void w_addr(struct wbuf *w, const struct cmtp_addr *a)
{
    if (a->is_null) {
        w_u8(w, 1);
        w_str(w, "", 0);
        w_str(w, "", 0);
        return;
    }
    w_u8(w, 0);
    w_str(w, a->local, CMTP_LOCAL_MAX);
    w_str(w, a->domain, CMTP_DOMAIN_MAX);
}

static void w_str_field(struct wbuf *w, unsigned tag, const char *s, size_t max)
{
    size_t f = w_field_begin(w, tag);
    w_str(w, s, max);
    w_field_end(w, f);
}

static int check_in(const struct queue_record_in *in)
{
    if (in == NULL || in->qid == NULL || in->env == NULL || in->meta == NULL)
        return -EINVAL;
    if (in->n_rcpts == 0 || in->n_rcpts > CMTP_RCPT_MAX_HARD || in->rcpts == NULL)
        return -EINVAL;
    const struct cmtp_envelope *e = in->env;
    if (e->trace_count > CMTP_TRACE_MAX || e->policy.hops > CMTP_HOPS_MAX)
        return -EINVAL;
    if ((unsigned)e->policy.relay > CMTP_RELAY_ANY ||
        (unsigned)e->policy.fallback > CMTP_FALLBACK_SMTP)
        return -EINVAL;
    size_t qlen = strnlen(in->qid, CMTP_QID_MAX + 1);
    size_t tlen = strnlen(e->txid, CMTP_TXID_MAX + 1);
    if (qlen == 0 || qlen > CMTP_QID_MAX || tlen == 0 || tlen > CMTP_TXID_MAX)
        return -EINVAL;
    for (unsigned i = 0; i < e->trace_count; i++)
        if ((unsigned)e->trace[i].role > CMTP_ROLE_RELAY)
            return -EINVAL;
    for (size_t i = 0; i < in->n_rcpts; i++) {
        if ((unsigned)in->rcpts[i].role > CMTP_ROLE_RELAY ||
            (unsigned)in->rcpts[i].status > QUEUE_RCPT_STATUS_LAST)
            return -EINVAL;
    }
    return 0;
}

int queue_record_encode(const struct queue_record_in *in, uint8_t **out, size_t *out_len)
{
    struct wbuf w = {0};
    int rc;

    *out = NULL;
    *out_len = 0;
    rc = check_in(in);
    if (rc < 0)
        return rc;
    const struct cmtp_envelope *e = in->env;
    const struct queue_txn_meta *m = in->meta;

    /* Header; the total length is patched at the end. */
    w_bytes(&w, QUEUE_RECORD_MAGIC, 4);
    w_u16(&w, QUEUE_RECORD_VERSION);
    w_u16(&w, 0);
    w_u32(&w, 0);
    w_u64(&w, (uint64_t)in->created_ms);
    w_u32(&w, in->attempts);

    w_str_field(&w, TAG_QID, in->qid, CMTP_QID_MAX);
    w_str_field(&w, TAG_NODE, in->node, QUEUE_NODE_MAX);
    size_t f = w_field_begin(&w, TAG_FROM);
    w_addr(&w, &e->from);
    w_field_end(&w, f);
    w_str_field(&w, TAG_TXID, e->txid, CMTP_TXID_MAX);
    f = w_field_begin(&w, TAG_SIZE);
    w_u64(&w, e->size);
    w_field_end(&w, f);
    f = w_field_begin(&w, TAG_DIGEST);
    w_bytes(&w, e->digest, CMTP_DIGEST_LEN);
    w_field_end(&w, f);
    f = w_field_begin(&w, TAG_POLICY);
    w_u8(&w, (unsigned)e->policy.relay);
    w_u8(&w, (unsigned)e->policy.fallback);
    w_u8(&w, e->policy.hops);
    w_field_end(&w, f);
    if (e->report_txid[0] != '\0')
        w_str_field(&w, TAG_REPORT, e->report_txid, CMTP_TXID_MAX);
    for (unsigned i = 0; i < e->trace_count; i++) {
        const struct cmtp_trace *t = &e->trace[i];
        f = w_field_begin(&w, TAG_TRACE);
        w_u32(&w, t->hop);
        w_str(&w, t->by, CMTP_DOMAIN_MAX);
        w_str(&w, t->from, CMTP_DOMAIN_MAX);
        w_u64(&w, (uint64_t)t->at);
        w_str(&w, t->tls, sizeof(t->tls) - 1);
        w_str(&w, t->peer_id, CMTP_DOMAIN_MAX);
        w_u8(&w, (unsigned)t->role);
        w_field_end(&w, f);
    }
    for (size_t i = 0; i < in->n_rcpts; i++) {
        const struct queue_rcpt *r = &in->rcpts[i];
        f = w_field_begin(&w, TAG_RCPT);
        w_addr(&w, &r->addr);
        w_u8(&w, (unsigned)r->role);
        w_u8(&w, (unsigned)r->status);
        w_str(&w, r->next_hop, CMTP_DOMAIN_MAX);
        w_field_end(&w, f);
    }
    f = w_field_begin(&w, TAG_META);
    w_str(&w, m->peer_ip, QUEUE_IP_MAX);
    w_str(&w, m->tls_version, QUEUE_TLS_VERSION_MAX);
    w_str(&w, m->tls_cipher, QUEUE_TLS_CIPHER_MAX);
    w_str(&w, m->peer_id, CMTP_DOMAIN_MAX);
    w_u64(&w, (uint64_t)m->received_ms);
    w_str(&w, m->listener, QUEUE_LISTENER_MAX);
    w_field_end(&w, f);

    w_room(&w, QUEUE_RECORD_TRAILER_LEN);
    if (w.err) {
        rc = w.err;
        goto err;
    }
    put32(w.b + 8, (uint32_t)w.len);
    put32(w.b + w.len - 4, queue_crc32c(0, w.b, w.len - 4));
    *out = w.b;
    *out_len = w.len;
    return 0;
err:
    free(w.b);
    return rc;
}

int queue_record_set_created(uint8_t *buf, size_t len, int64_t created_ms)
{
    if (buf == NULL || len < QUEUE_RECORD_HEADER_LEN + QUEUE_RECORD_TRAILER_LEN ||
        memcmp(buf, QUEUE_RECORD_MAGIC, 4) != 0 || get32(buf + 8) != len)
        return -EINVAL;
    put64(buf + 12, (uint64_t)created_ms);
    put32(buf + len - 4, queue_crc32c(0, buf, len - 4));
    return 0;
}

/* ---- reader: a cursor that never reads past its end ---- */

struct rbuf {
    const uint8_t *p;
    size_t left;
    bool bad;
};

static const uint8_t *r_take(struct rbuf *r, size_t n)
{
    if (r->bad || n > r->left) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static unsigned r_u8(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 1);
    return p ? *p : 0;
}

static uint16_t r_u16(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 2);
    return p ? get16(p) : 0;
}

static uint32_t r_u32(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 4);
    return p ? get32(p) : 0;
}

static uint64_t r_u64(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 8);
    return p ? get64(p) : 0;
}

/* r_str reads a u16-framed string of at most |max| octets without NUL into |dst| (|max| + 1
 * octets), NUL-terminated; returns its length. */
static size_t r_str(struct rbuf *r, char *dst, size_t max)
{
    uint16_t n = r_u16(r);
    const uint8_t *p;

    if (r->bad)
        return 0;
    if (n > max) {
        r->bad = true;
        return 0;
    }
    p = r_take(r, n);
    if (p == NULL)
        return 0;
    if (memchr(p, '\0', n) != NULL) {
        r->bad = true;
        return 0;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
    return n;
}

static void r_addr(struct rbuf *r, struct cmtp_addr *a)
{
    unsigned is_null = r_u8(r);
    a->local_len = r_str(r, a->local, CMTP_LOCAL_MAX);
    a->domain_len = r_str(r, a->domain, CMTP_DOMAIN_MAX);
    if (is_null > 1)
        r->bad = true;
    a->is_null = is_null == 1;
    if (a->is_null && (a->local_len != 0 || a->domain_len != 0))
        r->bad = true;
}

/* r_done requires the field value to be consumed exactly. */
static bool r_done(const struct rbuf *r)
{
    return !r->bad && r->left == 0;
}

static bool parse_trace(struct rbuf *r, struct cmtp_trace *t)
{
    memset(t, 0, sizeof(*t)); /* queue_record_decode leaves the trace array to this */
    t->hop = r_u32(r);
    r_str(r, t->by, CMTP_DOMAIN_MAX);
    r_str(r, t->from, CMTP_DOMAIN_MAX);
    t->at = (int64_t)r_u64(r);
    r_str(r, t->tls, sizeof(t->tls) - 1);
    r_str(r, t->peer_id, CMTP_DOMAIN_MAX);
    unsigned role = r_u8(r);
    if (role > CMTP_ROLE_RELAY)
        return false;
    t->role = (enum cmtp_role)role;
    return r_done(r);
}

static bool parse_rcpt(struct rbuf *r, struct queue_rcpt *q)
{
    r_addr(r, &q->addr);
    unsigned role = r_u8(r);
    unsigned status = r_u8(r);
    r_str(r, q->next_hop, CMTP_DOMAIN_MAX);
    if (role > CMTP_ROLE_RELAY || status > QUEUE_RCPT_STATUS_LAST)
        return false;
    q->role = (enum cmtp_role)role;
    q->status = (enum queue_rcpt_status)status;
    return r_done(r);
}

static bool parse_meta(struct rbuf *r, struct queue_txn_meta *m)
{
    r_str(r, m->peer_ip, QUEUE_IP_MAX);
    r_str(r, m->tls_version, QUEUE_TLS_VERSION_MAX);
    r_str(r, m->tls_cipher, QUEUE_TLS_CIPHER_MAX);
    r_str(r, m->peer_id, CMTP_DOMAIN_MAX);
    m->received_ms = (int64_t)r_u64(r);
    r_str(r, m->listener, QUEUE_LISTENER_MAX);
    return r_done(r);
}

/* parse_fields walks the field section |r|. With |rec| NULL it only checks the framing and
 * counts recipients into |*n_rcpts|; otherwise it decodes into |rec| (whose rcpts array holds
 * |*n_rcpts| entries). Returns false on any malformed field. */
static bool parse_fields(struct rbuf fields, struct queue_record *rec, size_t *n_rcpts)
{
    uint32_t seen = 0;
    size_t nr = 0;
    unsigned nt = 0;

    while (fields.left > 0) {
        uint16_t tag = r_u16(&fields);
        uint32_t flen = r_u32(&fields);
        const uint8_t *v = r_take(&fields, flen);
        if (v == NULL)
            return false;
        struct rbuf r = {.p = v, .left = flen, .bad = false};
        bool repeatable = tag == TAG_TRACE || tag == TAG_RCPT;
        if (tag >= 1 && tag <= TAG_LAST_KNOWN && !repeatable) {
            if (seen & (1u << tag))
                return false;
            seen |= 1u << tag;
        }
        if (tag == TAG_RCPT) {
            if (flen < RCPT_MIN_LEN || nr >= CMTP_RCPT_MAX_HARD)
                return false;
            if (rec != NULL && !parse_rcpt(&r, &rec->rcpts[nr]))
                return false;
            nr++;
            continue;
        }
        if (tag == TAG_TRACE) {
            if (nt >= CMTP_TRACE_MAX)
                return false;
            if (rec != NULL && !parse_trace(&r, &rec->env.trace[nt]))
                return false;
            nt++;
            continue;
        }
        if (rec == NULL)
            continue;
        bool ok = true;
        switch (tag) {
        case TAG_QID:
            ok = r_str(&r, rec->qid, CMTP_QID_MAX) > 0 && r_done(&r);
            break;
        case TAG_NODE:
            r_str(&r, rec->node, QUEUE_NODE_MAX);
            ok = r_done(&r);
            break;
        case TAG_FROM:
            r_addr(&r, &rec->env.from);
            ok = r_done(&r);
            break;
        case TAG_TXID:
            ok = r_str(&r, rec->env.txid, CMTP_TXID_MAX) > 0 && r_done(&r);
            break;
        case TAG_SIZE:
            rec->env.size = r_u64(&r);
            ok = r_done(&r);
            break;
        case TAG_DIGEST: {
            const uint8_t *d = r_take(&r, CMTP_DIGEST_LEN);
            if (d != NULL)
                memcpy(rec->env.digest, d, CMTP_DIGEST_LEN);
            ok = r_done(&r);
            break;
        }
        case TAG_POLICY: {
            unsigned relay = r_u8(&r), fallback = r_u8(&r), hops = r_u8(&r);
            ok = r_done(&r) && relay <= CMTP_RELAY_ANY && fallback <= CMTP_FALLBACK_SMTP &&
                 hops <= CMTP_HOPS_MAX;
            rec->env.policy.relay = (enum cmtp_relay)relay;
            rec->env.policy.fallback = (enum cmtp_fallback)fallback;
            rec->env.policy.hops = hops;
            break;
        }
        case TAG_REPORT:
            r_str(&r, rec->env.report_txid, CMTP_TXID_MAX);
            ok = r_done(&r);
            break;
        case TAG_META:
            ok = parse_meta(&r, &rec->meta);
            break;
        default:
            break; /* unknown tag: skipped */
        }
        if (!ok)
            return false;
    }
    if (fields.bad)
        return false;
    const uint32_t required = 1u << TAG_QID | 1u << TAG_NODE | 1u << TAG_FROM | 1u << TAG_TXID |
                              1u << TAG_SIZE | 1u << TAG_DIGEST | 1u << TAG_POLICY | 1u << TAG_META;
    if ((seen & required) != required || nr == 0)
        return false;
    if (rec == NULL)
        *n_rcpts = nr;
    else
        rec->env.trace_count = nt;
    return true;
}

enum queue_record_err queue_record_decode(struct queue_record *rec, const uint8_t *buf, size_t len)
{
    const size_t min = QUEUE_RECORD_HEADER_LEN + QUEUE_RECORD_TRAILER_LEN;
    size_t n_rcpts = 0;

    /* Everything but the trace array is zeroed here; each trace record decoded is zeroed before
     * it is filled, and those past trace_count are never read (cmtp_envelope's contract). The
     * array is 32 records, 27 KiB: zeroing it was most of a decode's cost (7 % of cmtpd's CPU
     * in the relay bench, one decode per lease). */
    memset(rec, 0, offsetof(struct queue_record, env.trace));
    memset(&rec->env.trace_count, 0, sizeof(*rec) - offsetof(struct queue_record, env.trace_count));
    if (buf == NULL || len < 8)
        return QUEUE_RECORD_ERR_TRUNCATED;
    if (memcmp(buf, QUEUE_RECORD_MAGIC, 4) != 0)
        return QUEUE_RECORD_ERR_MAGIC;
    if (get16(buf + 4) != QUEUE_RECORD_VERSION)
        return QUEUE_RECORD_ERR_VERSION;
    if (len < min)
        return QUEUE_RECORD_ERR_TRUNCATED;
    uint32_t total = get32(buf + 8);
    if (total < min || total > QUEUE_RECORD_MAX)
        return QUEUE_RECORD_ERR_LENGTH;
    if (total > len)
        return QUEUE_RECORD_ERR_TRUNCATED;
    if (total < len)
        return QUEUE_RECORD_ERR_LENGTH;
    if (get32(buf + total - 4) != queue_crc32c(0, buf, total - 4))
        return QUEUE_RECORD_ERR_CHECKSUM;
    if (get16(buf + 6) != 0)
        return QUEUE_RECORD_ERR_CORRUPT;

    struct rbuf fields = {.p = buf + QUEUE_RECORD_HEADER_LEN, .left = total - min, .bad = false};
    /* Pass 1: framing and recipient count, so that the array is sized by what the record
     * actually holds (each recipient field is at least RCPT_MIN_LEN octets). */
    if (!parse_fields(fields, NULL, &n_rcpts))
        return QUEUE_RECORD_ERR_CORRUPT;
    rec->rcpts = calloc(n_rcpts, sizeof(*rec->rcpts));
    if (rec->rcpts == NULL)
        return QUEUE_RECORD_ERR_NOMEM;
    rec->n_rcpts = n_rcpts;
    rec->created_ms = (int64_t)get64(buf + 12);
    rec->attempts = get32(buf + 20);
    if (!parse_fields(fields, rec, &n_rcpts)) {
        queue_record_cleanup(rec);
        return QUEUE_RECORD_ERR_CORRUPT;
    }
    return QUEUE_RECORD_OK;
}

bool queue_record_wants_dsn(const struct queue_record *rec)
{
    return strncmp(rec->meta.listener, "smtp", 4) == 0;
}

void queue_record_cleanup(struct queue_record *rec)
{
    if (rec == NULL)
        return;
    free(rec->rcpts);
    rec->rcpts = NULL;
    rec->n_rcpts = 0;
}

void queue_record_in_from(struct queue_record_in *in, const struct queue_record *rec)
{
    in->qid = rec->qid;
    in->node = rec->node;
    in->created_ms = rec->created_ms;
    in->attempts = rec->attempts;
    in->env = &rec->env;
    in->meta = &rec->meta;
    in->rcpts = rec->rcpts;
    in->n_rcpts = rec->n_rcpts;
}

const char *queue_record_strerror(enum queue_record_err err)
{
    switch (err) {
    case QUEUE_RECORD_OK:
        return "ok";
    case QUEUE_RECORD_ERR_TRUNCATED:
        return "truncated";
    case QUEUE_RECORD_ERR_MAGIC:
        return "bad-magic";
    case QUEUE_RECORD_ERR_VERSION:
        return "bad-version";
    case QUEUE_RECORD_ERR_LENGTH:
        return "bad-length";
    case QUEUE_RECORD_ERR_CHECKSUM:
        return "bad-checksum";
    case QUEUE_RECORD_ERR_CORRUPT:
        return "corrupt";
    case QUEUE_RECORD_ERR_NOMEM:
        return "no-memory";
    }
    return "unknown";
}
