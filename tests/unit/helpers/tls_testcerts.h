/* tests/unit/helpers/tls_testcerts.h — test PKI for the TLS tests, made at test start with the
 * openssl command-line tool in a fresh mkdtemp directory. Not part of any module; libc only. */
#ifndef CMTP_TESTS_TLS_TESTCERTS_H
#define CMTP_TESTS_TLS_TESTCERTS_H

#include <stddef.h>

/* TLS_TESTCERTS_DIR_MAX is the size of the buffer tls_testcerts_make fills with the directory. */
#define TLS_TESTCERTS_DIR_MAX 256

/* tls_testcerts_make creates a temporary directory, writes its path into |dir| (|dirlen|
 * octets), and fills it with (PEM, keys unencrypted):
 *   ca.pem/.key            Ed25519 root "CMTP Test Root" (the trusted CA)
 *   inter.pem/.key         P-256 intermediate under ca
 *   ca2.pem/.key           P-256 root "Untrusted Root" (never trusted by the tests)
 *   srv-ed25519.pem/.key   Ed25519 server, SAN mx.example.org + *.example.net, by ca
 *   srv-p256.pem/.key      P-256 server, SAN mx.example.org, by inter (file: leaf + inter)
 *   srv-untrusted.pem/.key P-256 server, SAN mx.example.org, by ca2
 *   srv-expired.pem/.key   P-256 server, SAN mx.example.org, by ca, expired in 2020
 *   p384.pem/.key          P-384 self-signed server (a key type CMTP refuses)
 *   cli.pem/.key           P-256 client, SAN Relay.Example.COM + second.example.com, clientAuth
 *   cli-ed25519.pem/.key   Ed25519 client, SAN *.wild.example.com + Edge.Example.NET
 *   cli-expired.pem/.key   P-256 client, clientAuth, expired in 2020
 *   cli-noeku.pem/.key     P-256 client whose extendedKeyUsage is serverAuth only
 *   cli-untrusted.pem/.key P-256 client, clientAuth, by ca2
 * Returns 0, or -1 after printing the failing step on stderr (the openssl output is kept in
 * |dir|/openssl.log). */
int tls_testcerts_make(char *dir, size_t dirlen);

/* tls_testcerts_path writes "|dir|/|name|" into |out| and returns |out| (asserts on overflow by
 * aborting: tests only). */
const char *tls_testcerts_path(char *out, size_t outlen, const char *dir, const char *name);

/* tls_testcerts_write creates or replaces |dir|/|name| with |content|. Returns 0 or -1. */
int tls_testcerts_write(const char *dir, const char *name, const char *content);

/* tls_testcerts_remove deletes |dir| and everything in it. */
void tls_testcerts_remove(const char *dir);

#endif
