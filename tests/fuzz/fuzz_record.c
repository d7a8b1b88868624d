/* tests/fuzz/fuzz_record.c — libFuzzer target for the queue record decoder: arbitrary octets must
 * decode or be refused without a crash; what decodes re-encodes to a canonical fixed point.
 * queue/record.c is pure (no Redis), so it is compiled into the target directly.
 * Input: one mode octet, then the record. Mode bit 0 set: the length field and the CRC32C are
 * fixed up before decoding, so that mutations reach the field parser instead of stopping at the
 * checksum; clear: the octets are decoded as they are (length and checksum checks). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/record.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check aborts with a message when |ok| is false (libFuzzer then records the input). */
#define check(ok)                                                                                  \
    do {                                                                                           \
        if (!(ok)) {                                                                               \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #ok, __FILE__, __LINE__);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_same(const struct queue_record *a, const struct queue_record *b)
{
    check(strcmp(a->qid, b->qid) == 0);
    check(strcmp(a->node, b->node) == 0);
    check(a->created_ms == b->created_ms);
    check(a->attempts == b->attempts);
    /* The envelope field by field up to the trace array, then the trace records in use (those
     * past trace_count are left as they were by the decoder). */
    check(memcmp(&a->env, &b->env, offsetof(struct cmtp_envelope, trace)) == 0);
    check(a->env.trace_count == b->env.trace_count);
    check(memcmp(a->env.trace, b->env.trace, a->env.trace_count * sizeof(a->env.trace[0])) == 0);
    check(memcmp(&a->meta, &b->meta, sizeof(a->meta)) == 0);
    check(a->n_rcpts == b->n_rcpts);
    check(memcmp(a->rcpts, b->rcpts, a->n_rcpts * sizeof(*a->rcpts)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct queue_record *a = malloc(sizeof(*a));
    struct queue_record *b = malloc(sizeof(*b));
    struct queue_record_in in;
    uint8_t *enc1 = NULL, *enc2 = NULL;
    size_t len1 = 0, len2 = 0;

    check(a != NULL && b != NULL);
    if (size == 0)
        goto out;
    bool fixup = data[0] & 1;
    data++;
    size--;
    uint8_t *copy = malloc(size ? size : 1);
    check(copy != NULL);
    if (size)
        memcpy(copy, data, size);
    if (fixup && size >= QUEUE_RECORD_HEADER_LEN + QUEUE_RECORD_TRAILER_LEN &&
        size <= QUEUE_RECORD_MAX) {
        put32(copy + 8, (uint32_t)size);
        put32(copy + size - 4, queue_crc32c(0, copy, size - 4));
    }
    enum queue_record_err err = queue_record_decode(a, copy, size);
    free(copy);
    check(queue_record_strerror(err) != NULL);
    if (err != QUEUE_RECORD_OK) {
        check(err >= QUEUE_RECORD_ERR_TRUNCATED && err <= QUEUE_RECORD_ERR_NOMEM);
        goto out;
    }
    /* Invariants of a decoded record. */
    check(a->n_rcpts >= 1 && a->n_rcpts <= CMTP_RCPT_MAX_HARD);
    check(a->env.trace_count <= CMTP_TRACE_MAX);
    check(a->qid[0] != '\0' && a->env.txid[0] != '\0');
    check(strlen(a->env.from.local) == a->env.from.local_len);
    check(strlen(a->env.from.domain) == a->env.from.domain_len);
    check(a->env.policy.hops <= CMTP_HOPS_MAX);

    /* Round trip: encode, decode again, same record; the encoding is a fixed point. */
    queue_record_in_from(&in, a);
    check(queue_record_encode(&in, &enc1, &len1) == 0);
    check(queue_record_decode(b, enc1, len1) == QUEUE_RECORD_OK);
    check_same(a, b);
    queue_record_in_from(&in, b);
    check(queue_record_encode(&in, &enc2, &len2) == 0);
    check(len1 == len2 && memcmp(enc1, enc2, len1) == 0);
    queue_record_cleanup(b);

    /* Patching the created time keeps it valid. */
    check(queue_record_set_created(enc1, len1, 12345) == 0);
    check(queue_record_decode(b, enc1, len1) == QUEUE_RECORD_OK);
    check(b->created_ms == 12345);
    queue_record_cleanup(b);
    queue_record_cleanup(a);
out:
    free(enc1);
    free(enc2);
    free(a);
    free(b);
    return 0;
}
