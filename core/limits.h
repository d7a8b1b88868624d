/* core/limits.h — every protocol and resource limit of CMTP/1, declared in one place.
 * Not configuration parsing: config may lower (never raise past the hard maxima) these values. */
#ifndef CMTP_CORE_LIMITS_H
#define CMTP_CORE_LIMITS_H

#include <stddef.h>
#include <stdint.h>

/* CMTP_PORT is the default TCP port of CMTP/1. */
#define CMTP_PORT 4465

/* CMTP_ALPN is the mandatory ALPN protocol identifier. */
#define CMTP_ALPN "cmtp/1"

/* CMTP_LINE_MAX is the longest command or reply line, in octets, CRLF included. */
#define CMTP_LINE_MAX 4096
/* CMTP_LINE_MIN is the lowest line-max a server may advertise (a config may lower line-max to
 * it): room for a RCPT line with a 254-octet address and its parameters. */
#define CMTP_LINE_MIN 1024

/* CMTP_RCPT_MAX_DEFAULT is the default number of RCPT commands per transaction. */
#define CMTP_RCPT_MAX_DEFAULT 1000
/* CMTP_RCPT_MAX_HARD is the largest rcpt-max a config may set. */
#define CMTP_RCPT_MAX_HARD 100000

/* CMTP_SIZE_MAX_DEFAULT is the default largest body, in octets (64 MiB). */
#define CMTP_SIZE_MAX_DEFAULT (64ull * 1024 * 1024)
/* CMTP_SIZE_MAX_HARD is the largest size-max a config may set (4 GiB). */
#define CMTP_SIZE_MAX_HARD (4ull * 1024 * 1024 * 1024)

/* CMTP_CHUNK_MAX_DEFAULT is the default largest BODY chunk, in octets (1 MiB). */
#define CMTP_CHUNK_MAX_DEFAULT (1024u * 1024u)
/* CMTP_CHUNK_MAX_HARD is the largest chunk-max a config may set (16 MiB). */
#define CMTP_CHUNK_MAX_HARD (16u * 1024u * 1024u)

/* CMTP_TXN_MAX_DEFAULT is the default number of transactions per connection. */
#define CMTP_TXN_MAX_DEFAULT 1000

/* CMTP_TRACE_MAX is the largest number of TRACE records in one envelope. */
#define CMTP_TRACE_MAX 32

/* CMTP_HOPS_DEFAULT and CMTP_HOPS_MAX bound the HOPS envelope parameter. */
#define CMTP_HOPS_DEFAULT 8
#define CMTP_HOPS_MAX 32

/* CMTP_LOCAL_MAX is the longest local part, in octets of UTF-8. */
#define CMTP_LOCAL_MAX 128
/* CMTP_DOMAIN_MAX is the longest domain (A-label form), in octets. */
#define CMTP_DOMAIN_MAX 253
/* CMTP_LABEL_MAX is the longest single domain label (A-label form), in octets. */
#define CMTP_LABEL_MAX 63
/* CMTP_ADDR_MAX is the longest address inside the angle brackets, in octets. */
#define CMTP_ADDR_MAX 320

/* CMTP_TXID_MIN and CMTP_TXID_MAX bound the length of a transaction id. */
#define CMTP_TXID_MIN 16
#define CMTP_TXID_MAX 64

/* CMTP_QID_MAX is the longest queue id a server may return (in `id=`). */
#define CMTP_QID_MAX 64

/* CMTP_DIGEST_LEN is the size of a SHA-256 digest, in octets; CMTP_DIGEST_HEX_LEN in hex. */
#define CMTP_DIGEST_LEN 32
#define CMTP_DIGEST_HEX_LEN 64

/* CMTP_ERRORS_MAX is the number of failed commands in a row before the server closes. */
#define CMTP_ERRORS_MAX 10

/* CMTP_TEXT_MAX is the longest human-readable reply text a server emits. */
#define CMTP_TEXT_MAX 512

/* Server timeout defaults, milliseconds. */
#define CMTP_HANDSHAKE_TIMEOUT_MS 10000
#define CMTP_IDLE_TIMEOUT_MS 300000
#define CMTP_COMMAND_TIMEOUT_MS 30000
#define CMTP_CHUNK_TIMEOUT_MS 120000
#define CMTP_TXN_TIMEOUT_MS (30 * 60 * 1000)

#endif
