/* tests/unit/test_core_config.c — the config file: defaults, every key, units, lists, bad values
 * with file:line and key in the message, cross-field checks, the example etc/cmtpd.conf. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

/* Each test gets a fresh, default config on the heap (it is large). */
static int setup(void **state)
{
    struct cmtp_config *c = malloc(sizeof(*c));
    if (c == NULL)
        return -1;
    cmtp_config_init(c);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    cmtp_config_free(*state);
    free(*state);
    return 0;
}

static int load(struct cmtp_config *c, const char *text, char *err)
{
    return cmtp_config_load_string(c, text, strlen(text), "t.conf", err, CMTP_CONFIG_ERR_LEN);
}

static void expect_ok(struct cmtp_config *c, const char *text)
{
    char err[CMTP_CONFIG_ERR_LEN];
    int r = load(c, text, err);
    if (r != 0)
        print_error("refused: %s\n", err);
    assert_int_equal(r, 0);
    assert_string_equal(err, "");
}

/* expect_bad loads |text| into a default config, expects -EINVAL, the config unchanged, and an
 * error message containing every one of the NULL-terminated |parts|. */
static void expect_bad(const char *text, ...)
{
    struct cmtp_config *c = malloc(sizeof(*c)), *d = malloc(sizeof(*d));
    char err[CMTP_CONFIG_ERR_LEN];
    assert_non_null(c);
    assert_non_null(d);
    cmtp_config_init(c);
    cmtp_config_init(d);
    int r = load(c, text, err);
    if (r != -EINVAL)
        print_error("accepted: %s\n", text);
    assert_int_equal(r, -EINVAL);
    assert_memory_equal(c, d, sizeof(*c));
    va_list ap;
    va_start(ap, text);
    for (const char *p = va_arg(ap, const char *); p != NULL; p = va_arg(ap, const char *)) {
        if (strstr(err, p) == NULL)
            print_error("message \"%s\" lacks \"%s\"\n", err, p);
        assert_non_null(strstr(err, p));
    }
    va_end(ap);
    /* Messages never carry raw control characters. */
    for (const char *p = err; *p; p++)
        assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);
    free(c);
    free(d);
}

static void test_defaults(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    assert_string_equal(c->server.hostname, "");
    assert_int_equal(c->server.listen_count, 1);
    assert_string_equal(c->server.listen[0].host, "0.0.0.0");
    assert_int_equal(c->server.listen[0].kind, CMTP_CONFIG_HOST_IPV4);
    assert_int_equal(c->server.listen[0].port, 4465);
    assert_int_equal(c->server.workers, 0);
    assert_int_equal(c->server.conn_max, 10000);
    assert_int_equal(c->server.conn_per_ip_max, 64);
    assert_string_equal(c->server.state_dir, "./state");
    assert_string_equal(c->server.user, "");
    assert_false(c->server.proxy_protocol);
    assert_string_equal(c->tls.cert, "");
    assert_string_equal(c->tls.key, "");
    assert_string_equal(c->tls.ca, "");
    assert_false(c->tls.require_client_cert);
    assert_string_equal(c->tls.ticket_key_file, "");
    assert_true(c->tls.session_tickets);
    assert_int_equal(c->limits.size_max, 64ull << 20);
    assert_int_equal(c->limits.rcpt_max, 1000);
    assert_int_equal(c->limits.chunk_max, 1u << 20);
    assert_int_equal(c->limits.txn_max, 1000);
    assert_int_equal(c->limits.line_max, 4096);
    assert_int_equal(c->timeouts.handshake_ms, 10000);
    assert_int_equal(c->timeouts.idle_ms, 300000);
    assert_int_equal(c->timeouts.command_ms, 30000);
    assert_int_equal(c->timeouts.chunk_ms, 120000);
    assert_int_equal(c->timeouts.transaction_ms, 1800000);
    assert_int_equal(c->redis.address.kind, CMTP_CONFIG_SOCKET_NONE);
    assert_string_equal(c->redis.password, "");
    assert_string_equal(c->redis.key_prefix, "cmtp");
    assert_int_equal(c->redis.wait_replicas, 0);
    assert_int_equal(c->redis.wait_timeout_ms, 1000);
    assert_string_equal(c->redis.redis_server, "redis-server");
    assert_int_equal(c->redis.inflight_max, 1024);
    assert_int_equal(c->delivery.mode, CMTP_DELIVERY_MAILDIR);
    assert_string_equal(c->delivery.maildir, "./state/maildir");
    assert_int_equal(c->delivery.lmtp.kind, CMTP_CONFIG_SOCKET_NONE);
    assert_int_equal(c->delivery.local_domains_count, 0);
    assert_int_equal(c->delivery.relay_domains_count, 0);
    assert_int_equal(c->delivery.concurrency_per_dest, 20);
    assert_int_equal(c->delivery.retry_base_ms, 60000);
    assert_int_equal(c->delivery.retry_max_ms, 3600000);
    assert_int_equal(c->delivery.lifetime_ms, 5ull * 86400000);
    assert_int_equal(c->delivery.attempts_crash_max, 5);
    assert_true(c->delivery.enabled);
    assert_int_equal(c->delivery.lease_ms, 300000);
    assert_string_equal(c->admin.socket, "./state/cmtpd.sock");
    assert_int_equal(c->admin.mode, 0600);
    assert_string_equal(c->admin.group, "");
    assert_false(c->admin.metrics_enabled);
    assert_int_equal(c->log.level, CMTP_LOG_INFO);
    assert_int_equal(c->log.format, CMTP_LOG_FORMAT_KV);
    assert_int_equal(c->log.target, CMTP_LOG_TARGET_STDERR);
    assert_int_equal(c->smtp_ingress.listen_count, 0);
    assert_int_equal(c->smtp_ingress.trusted_networks_count, 2);
    assert_int_equal(c->smtp_ingress.trusted_networks[0].family, 4);
    assert_int_equal(c->smtp_ingress.trusted_networks[0].prefix, 8);
    assert_int_equal(c->smtp_ingress.trusted_networks[1].family, 6);
    assert_int_equal(c->smtp_ingress.trusted_networks[1].prefix, 128);
    assert_int_equal(c->smtp_ingress.policy_relay, CMTP_RELAY_NONE);
    assert_int_equal(c->smtp_ingress.policy_fallback, CMTP_FALLBACK_NONE);
    assert_int_equal(c->smtp_ingress.policy_hops, 8);
    assert_int_equal(cmtp_config_check(c, err, sizeof(err)), 0);
    /* Empty text: still the defaults. */
    expect_ok(c, "");
    expect_ok(c, "# only a comment\n\n; another\n");
}

static const char all_keys[] =
    "[server]\n"
    "hostname = MX.B\xc3\xbc"
    "cher.example\n"
    "listen = 192.0.2.1:4465, [2001:db8::1]:4466 ,mail.example.net:4467\n"
    "workers = 8\n"
    "conn_max = 20000\n"
    "conn_per_ip_max = 0\n"
    "state_dir = /var/lib/cmtpd\n"
    "user = cmtpd\n"
    "proxy_protocol = yes\n"
    "\n"
    "[tls]\n"
    "cert = /etc/cmtpd/cert.pem\n"
    "key = /etc/cmtpd/key.pem ; inline comment\n"
    "ca = /etc/cmtpd/clients.pem\n"
    "require_client_cert = on\n"
    "ticket_key_file = /etc/cmtpd/tickets.key\n"
    "session_tickets = false\n"
    "[limits]\n"
    "size_max = 1g\n"
    "rcpt_max = 5000\n"
    "chunk_max = 256k\n"
    "txn_max = 50\n"
    "line_max = 2048\n"
    "[timeouts]\n"
    "handshake = 5s\n"
    "idle = 2m\n"
    "command = 1500ms\n"
    "chunk = 1h\n"
    "transaction = 1d\n"
    "[redis]\n"
    "address = unix:/run/redis/redis.sock\n"
    "password = s3cr=t:x\n"
    "key_prefix = cmtp:eu-1\n"
    "wait_replicas = 2\n"
    "wait_timeout = 250ms\n"
    "redis_server = /usr/bin/redis-server\n"
    "inflight_max = 4096\n"
    "[delivery]\n"
    "mode = LMTP\n"
    "maildir =\n"
    "lmtp = [::1]:24\n"
    "local_domains = Example.COM, b\xc3\xbc"
    "cher.example,\n"
    "    example.net\n"
    "relay_domains = example.org=mx.example.org:2525, example.info=192.0.2.9\n"
    "concurrency_per_dest = 5\n"
    "retry_base = 30s\n"
    "retry_max = 2h\n"
    "lifetime = 3d\n"
    "attempts_crash_max = 3\n"
    "enabled = no\n"
    "lease = 2s\n"
    "[admin]\n"
    "socket = /run/cmtpd/admin.sock\n"
    "mode = 0660\n"
    "group = mailadm\n"
    "metrics_listen = 127.0.0.1:9465\n"
    "[log]\n"
    "level = debug\n"
    "format = json\n"
    "target = syslog\n"
    "[smtp_ingress]\n"
    "listen = 127.0.0.1:10025\n"
    "trusted_networks = 10.0.0.0/8, 192.168.1.0/24, fd00::/8, 2001:db8::1\n"
    "policy_relay = domain\n"
    "policy_fallback = smtp-verified\n"
    "policy_hops = 4\n";

static void test_every_key(void **state)
{
    struct cmtp_config *c = *state;
    expect_ok(c, all_keys);
    assert_string_equal(c->server.hostname, "mx.xn--bcher-kva.example");
    assert_int_equal(c->server.listen_count, 3);
    assert_int_equal(c->server.listen[0].kind, CMTP_CONFIG_HOST_IPV4);
    assert_memory_equal(c->server.listen[0].ip, "\xc0\x00\x02\x01", 4);
    assert_int_equal(c->server.listen[0].port, 4465);
    assert_int_equal(c->server.listen[1].kind, CMTP_CONFIG_HOST_IPV6);
    assert_string_equal(c->server.listen[1].host, "2001:db8::1");
    assert_memory_equal(c->server.listen[1].ip,
                        "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01", 16);
    assert_int_equal(c->server.listen[1].port, 4466);
    assert_int_equal(c->server.listen[2].kind, CMTP_CONFIG_HOST_NAME);
    assert_string_equal(c->server.listen[2].host, "mail.example.net");
    assert_int_equal(c->server.workers, 8);
    assert_int_equal(c->server.conn_max, 20000);
    assert_int_equal(c->server.conn_per_ip_max, 0);
    assert_string_equal(c->server.state_dir, "/var/lib/cmtpd");
    assert_string_equal(c->server.user, "cmtpd");
    assert_true(c->server.proxy_protocol);
    assert_string_equal(c->tls.cert, "/etc/cmtpd/cert.pem");
    assert_string_equal(c->tls.key, "/etc/cmtpd/key.pem");
    assert_string_equal(c->tls.ca, "/etc/cmtpd/clients.pem");
    assert_true(c->tls.require_client_cert);
    assert_string_equal(c->tls.ticket_key_file, "/etc/cmtpd/tickets.key");
    assert_false(c->tls.session_tickets);
    assert_int_equal(c->limits.size_max, 1ull << 30);
    assert_int_equal(c->limits.rcpt_max, 5000);
    assert_int_equal(c->limits.chunk_max, 256 * 1024);
    assert_int_equal(c->limits.txn_max, 50);
    assert_int_equal(c->limits.line_max, 2048);
    assert_int_equal(c->timeouts.handshake_ms, 5000);
    assert_int_equal(c->timeouts.idle_ms, 120000);
    assert_int_equal(c->timeouts.command_ms, 1500);
    assert_int_equal(c->timeouts.chunk_ms, 3600000);
    assert_int_equal(c->timeouts.transaction_ms, 86400000);
    assert_int_equal(c->redis.address.kind, CMTP_CONFIG_SOCKET_UNIX);
    assert_string_equal(c->redis.address.path, "/run/redis/redis.sock");
    assert_string_equal(c->redis.password, "s3cr=t:x");
    assert_string_equal(c->redis.key_prefix, "cmtp:eu-1");
    assert_int_equal(c->redis.wait_replicas, 2);
    assert_int_equal(c->redis.wait_timeout_ms, 250);
    assert_string_equal(c->redis.redis_server, "/usr/bin/redis-server");
    assert_int_equal(c->redis.inflight_max, 4096);
    assert_int_equal(c->delivery.mode, CMTP_DELIVERY_LMTP);
    assert_string_equal(c->delivery.maildir, "");
    assert_int_equal(c->delivery.lmtp.kind, CMTP_CONFIG_SOCKET_TCP);
    assert_int_equal(c->delivery.lmtp.tcp.kind, CMTP_CONFIG_HOST_IPV6);
    assert_int_equal(c->delivery.lmtp.tcp.port, 24);
    assert_int_equal(c->delivery.local_domains_count, 3);
    assert_string_equal(c->delivery.local_domains[0], "example.com");
    assert_string_equal(c->delivery.local_domains[1], "xn--bcher-kva.example");
    assert_string_equal(c->delivery.local_domains[2], "example.net");
    assert_int_equal(c->delivery.relay_domains_count, 2);
    assert_string_equal(c->delivery.relay_domains[0].domain, "example.org");
    assert_string_equal(c->delivery.relay_domains[0].nexthop.host, "mx.example.org");
    assert_int_equal(c->delivery.relay_domains[0].nexthop.port, 2525);
    assert_string_equal(c->delivery.relay_domains[1].domain, "example.info");
    assert_int_equal(c->delivery.relay_domains[1].nexthop.kind, CMTP_CONFIG_HOST_IPV4);
    assert_int_equal(c->delivery.relay_domains[1].nexthop.port, CMTP_PORT);
    assert_int_equal(c->delivery.concurrency_per_dest, 5);
    assert_int_equal(c->delivery.retry_base_ms, 30000);
    assert_int_equal(c->delivery.retry_max_ms, 7200000);
    assert_int_equal(c->delivery.lifetime_ms, 3ull * 86400000);
    assert_int_equal(c->delivery.attempts_crash_max, 3);
    assert_false(c->delivery.enabled);
    assert_int_equal(c->delivery.lease_ms, 2000);
    assert_string_equal(c->admin.socket, "/run/cmtpd/admin.sock");
    assert_int_equal(c->admin.mode, 0660);
    assert_string_equal(c->admin.group, "mailadm");
    assert_true(c->admin.metrics_enabled);
    assert_int_equal(c->admin.metrics_listen.port, 9465);
    assert_int_equal(c->log.level, CMTP_LOG_DEBUG);
    assert_int_equal(c->log.format, CMTP_LOG_FORMAT_JSON);
    assert_int_equal(c->log.target, CMTP_LOG_TARGET_SYSLOG);
    assert_int_equal(c->smtp_ingress.listen_count, 1);
    assert_int_equal(c->smtp_ingress.listen[0].port, 10025);
    assert_int_equal(c->smtp_ingress.trusted_networks_count, 4);
    assert_int_equal(c->smtp_ingress.trusted_networks[3].prefix, 128);
    assert_int_equal(c->smtp_ingress.policy_relay, CMTP_RELAY_DOMAIN);
    assert_int_equal(c->smtp_ingress.policy_fallback, CMTP_FALLBACK_SMTP_VERIFIED);
    assert_int_equal(c->smtp_ingress.policy_hops, 4);

    /* The lookup helpers. */
    assert_true(cmtp_config_domain_is_local(c, "example.com"));
    assert_true(cmtp_config_domain_is_local(c, "xn--bcher-kva.example"));
    assert_false(cmtp_config_domain_is_local(c, "sub.example.com"));
    assert_false(cmtp_config_domain_is_local(c, "example.org"));
    assert_non_null(cmtp_config_relay_for(c, "example.org"));
    assert_null(cmtp_config_relay_for(c, "example.com"));
    const uint8_t in4[4] = {192, 168, 1, 77}, out4[4] = {192, 168, 2, 1};
    const uint8_t in6[16] = {0xfd, 0x12}, out6[16] = {0xfe, 0x80};
    bool hit4 = false, miss4 = false, hit6 = false, miss6 = false;
    for (size_t i = 0; i < c->smtp_ingress.trusted_networks_count; i++) {
        hit4 |= cmtp_config_cidr_match(&c->smtp_ingress.trusted_networks[i], 4, in4);
        miss4 |= cmtp_config_cidr_match(&c->smtp_ingress.trusted_networks[i], 4, out4);
        hit6 |= cmtp_config_cidr_match(&c->smtp_ingress.trusted_networks[i], 6, in6);
        miss6 |= cmtp_config_cidr_match(&c->smtp_ingress.trusted_networks[i], 6, out6);
    }
    assert_true(hit4);
    assert_false(miss4);
    assert_true(hit6);
    assert_false(miss6);
}

static void test_units(void **state)
{
    struct cmtp_config *c = *state;
    expect_ok(c, "[limits]\nsize_max = 4096\nchunk_max = 1K\n");
    assert_int_equal(c->limits.size_max, 4096);
    assert_int_equal(c->limits.chunk_max, 1024);
    expect_ok(c, "[limits]\nsize_max = 2M\n");
    assert_int_equal(c->limits.size_max, 2u << 20);
    expect_ok(c, "[limits]\nsize_max = 4g\n"); /* exactly the hard maximum */
    assert_int_equal(c->limits.size_max, CMTP_SIZE_MAX_HARD);
    expect_ok(c, "[timeouts]\nidle = 500ms\nhandshake = 10S\ncommand = 1M\n");
    assert_int_equal(c->timeouts.idle_ms, 500);
    assert_int_equal(c->timeouts.handshake_ms, 10000);
    assert_int_equal(c->timeouts.command_ms, 60000);
    expect_ok(c, "[delivery]\nlifetime = 5s\nretry_base = 1s\nretry_max = 2s\n");
    assert_int_equal(c->delivery.lifetime_ms, 5000);
    expect_bad("[delivery]\nlifetime = 4s\nretry_base = 1s\nretry_max = 2s\n",
               "t.conf:2:", "lifetime", NULL);
    expect_ok(c, "[delivery]\nlifetime = 60d\nretry_max = 30d\n");
    assert_int_equal(c->delivery.lifetime_ms, 60ull * 86400000);

    expect_bad("[limits]\nsize_max = 64x\n", "t.conf:2:", "[limits] size_max", "\"64x\"", NULL);
    expect_bad("[limits]\nsize_max = 1kb\n", "t.conf:2:", "size_max", NULL);
    expect_bad("[limits]\nsize_max = 1.5m\n", "t.conf:2:", "size_max", NULL);
    expect_bad("[limits]\nsize_max = -1\n", "t.conf:2:", "size_max", NULL);
    expect_bad("[limits]\nsize_max =\n", "t.conf:2:", "size_max", NULL);
    expect_bad("[limits]\nsize_max = 0\n", "t.conf:2:", "out of range", NULL);
    expect_bad("[limits]\nsize_max = 99999999999999999999999g\n", "size_max", NULL);
    expect_bad("[limits]\nsize_max = 18446744073709551615g\n", "size_max", NULL);
    expect_bad("[timeouts]\nidle = 10\n", "t.conf:2:", "[timeouts] idle", "duration", NULL);
    expect_bad("[timeouts]\nidle = 10x\n", "t.conf:2:", "idle", NULL);
    expect_bad("[timeouts]\nidle = s\n", "t.conf:2:", "idle", NULL);
    expect_bad("[timeouts]\nidle = 5ms\n", "out of range 10ms..1d", NULL);
    expect_bad("[timeouts]\nidle = 2d\n", "out of range", NULL);
    expect_bad("[timeouts]\nhandshake = 99999999999999999d\n", "handshake", NULL);
    expect_bad("[delivery]\nlease = 999ms\n", "[delivery] lease", "out of range 1s..1h", NULL);
    expect_bad("[delivery]\nlease = 2h\n", "lease", "out of range", NULL);
    expect_bad("[delivery]\nenabled = maybe\n", "[delivery] enabled", NULL);
    expect_ok(c, "[delivery]\nlease = 1s\nenabled = yes\n");
    assert_int_equal(c->delivery.lease_ms, 1000);
    assert_true(c->delivery.enabled);
}

static void test_hard_limits(void **state)
{
    (void)state;
    expect_bad("[limits]\nsize_max = 5g\n", "t.conf:2:", "size_max", "out of range 1..4g", NULL);
    expect_bad("[limits]\nsize_max = 4294967297\n", "size_max", NULL);
    expect_bad("[limits]\nchunk_max = 17m\n", "chunk_max", "16m", NULL);
    expect_bad("[limits]\nrcpt_max = 100001\n", "rcpt_max", "100000", NULL);
    expect_bad("[limits]\nrcpt_max = 0\n", "rcpt_max", NULL);
    expect_bad("[limits]\nline_max = 4097\n", "line_max", "1024..4096", NULL);
    expect_bad("[limits]\nline_max = 1023\n", "line_max", NULL);
    expect_bad("[smtp_ingress]\npolicy_hops = 33\n", "policy_hops", "0..32", NULL);
    expect_bad("[server]\nworkers = 1025\n", "workers", NULL);
    expect_bad("[server]\nworkers = -1\n", "workers", NULL);
    expect_bad("[server]\nworkers = 4 cores\n", "workers", NULL);
    expect_bad("[redis]\nwait_replicas = 17\n", "wait_replicas", NULL);
    expect_bad("[admin]\nmode = 0800\n", "[admin] mode", "octal", NULL);
    expect_bad("[admin]\nmode = 01777\n", "[admin] mode", NULL);
}

static void test_unknown_and_syntax(void **state)
{
    (void)state;
    expect_bad("[server]\nworkers = 1\nfoo = 1\n", "t.conf:3:", "unknown key 'foo' in [server]",
               NULL);
    expect_bad("[server]\n\n\n[srever]\n", "t.conf:4:", "unknown section [srever]", NULL);
    expect_bad("[srever]\nworkers = 1\n", "t.conf:1:", "unknown section [srever]", NULL);
    expect_bad("workers = 1\n", "t.conf:1:", "outside any [section]", NULL);
    expect_bad("[server]\nthis is not a key line\n", "t.conf:2:", "syntax error", NULL);
    expect_bad("[server\nworkers = 1\n", "t.conf:1:", "syntax error", NULL);
    /* A syntax error before a value error is the one reported. */
    expect_bad("[server]\nnonsense\nworkers = x\n", "t.conf:2:", "syntax", NULL);
    /* A value error before a syntax error is the one reported. */
    expect_bad("[server]\nworkers = x\nnonsense\n", "t.conf:2:", "workers", NULL);
    /* Given twice; an indented line after a scalar key. */
    expect_bad("[server]\nworkers = 1\nworkers = 2\n", "t.conf:3:", "workers", "twice", NULL);
    expect_bad("[server]\nworkers = 1\n  conn_max = 5\n", "t.conf:3:", "workers", NULL);
    /* Keys are case-sensitive. */
    expect_bad("[server]\nWorkers = 1\n", "t.conf:2:", "unknown key 'Workers'", NULL);
    /* NUL octet and an over-long line are refused, not split. */
    static const char nul[] = "[server]\nuser = a\0b\n";
    struct cmtp_config *c = malloc(sizeof(*c));
    char err[CMTP_CONFIG_ERR_LEN];
    cmtp_config_init(c);
    assert_int_equal(cmtp_config_load_string(c, nul, sizeof(nul) - 1, "n.conf", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "n.conf:2: NUL"));
    char longline[400];
    snprintf(longline, sizeof(longline), "[tls]\ncert = /%0250d\n", 0);
    expect_bad(longline, "t.conf:2:", "longer than 199 octets", NULL);
    /* A line of exactly 199 octets is fine. */
    char ok199[300];
    snprintf(ok199, sizeof(ok199), "[tls]\ncert = /%0191d\nkey = /k\n", 0);
    assert_int_equal(strlen(strchr(ok199, '\n') + 1) - strlen("\nkey = /k\n"), 199);
    assert_int_equal(load(c, ok199, err), 0);
    /* Control characters in a key are not echoed raw. */
    expect_bad("[server]\nwo\x01rkers = 1\n", "t.conf:2:", "unknown key 'wo?rkers'", NULL);
    /* Error buffer may be absent or tiny. */
    assert_int_equal(cmtp_config_load_string(c, "[x]\n", 4, NULL, NULL, 0), -EINVAL);
    char tiny[8];
    assert_int_equal(cmtp_config_load_string(c, "[x]\n", 4, NULL, tiny, sizeof(tiny)), -EINVAL);
    assert_string_equal(tiny, "<string");
    cmtp_config_free(c);
    free(c);
}

static void test_values(void **state)
{
    struct cmtp_config *c = *state;
    expect_bad("[server]\nproxy_protocol = maybe\n", "t.conf:2:", "proxy_protocol", "boolean",
               NULL);
    expect_bad("[server]\nhostname = localhost\n", "hostname", NULL);
    expect_bad("[server]\nhostname = a..b\n", "hostname", NULL);
    expect_bad("[server]\nuser = -root\n", "user", NULL);
    expect_bad("[server]\nuser = a b\n", "user", NULL);
    expect_bad("[server]\nstate_dir =\n", "state_dir", "empty", NULL);
    expect_bad("[tls]\ncert = a\x01"
               "b\n",
               "cert", "control", NULL);
    expect_bad("[redis]\nkey_prefix = {cmtp}\n", "key_prefix", NULL);
    expect_bad("[redis]\nkey_prefix =\n", "key_prefix", NULL);
    expect_bad("[redis]\naddress = unix:\n", "address", NULL);
    expect_bad("[redis]\naddress = localhost\n", "address", "port", NULL);
    expect_bad("[redis]\naddress = 127.0.0.1:0\n", "address", "1..65535", NULL);
    expect_bad("[redis]\naddress = 127.0.0.1:65536\n", "address", NULL);
    expect_bad("[redis]\naddress = 256.0.0.1:6379\n", "address", NULL);
    expect_bad("[redis]\naddress = 01.2.3.4:6379\n", "address", NULL);
    expect_bad("[redis]\naddress = ::1:6379\n", "address", "[addr]:port", NULL);
    expect_bad("[redis]\naddress = [::1:6379\n", "address", "']'", NULL);
    expect_bad("[redis]\naddress = [::1]6379\n", "address", NULL);
    expect_bad("[redis]\naddress = [1:2:3:4:5:6:7:8:9]:1\n", "IPv6", NULL);
    expect_bad("[redis]\naddress = [1::2::3]:1\n", "IPv6", NULL);
    expect_bad("[redis]\naddress = [12345::]:1\n", "IPv6", NULL);
    expect_bad("[redis]\naddress = [fe80::1%eth0]:1\n", "IPv6", NULL);
    char longpath[200];
    snprintf(longpath, sizeof(longpath), "[redis]\naddress = unix:/%0107d\n", 0);
    expect_bad(longpath, "address", "1..107", NULL);
    expect_bad("[delivery]\nmode = mbox\n", "[delivery] mode", "maildir, lmtp, smtp or cmtp", NULL);
    expect_bad("[log]\nlevel = verbose\n", "[log] level", NULL);
    expect_bad("[log]\nformat = xml\n", "[log] format", NULL);
    expect_bad("[log]\ntarget = file\n", "[log] target", NULL);
    expect_bad("[smtp_ingress]\npolicy_relay = all\n", "policy_relay", NULL);
    expect_bad("[smtp_ingress]\npolicy_fallback = yes\n", "policy_fallback", NULL);

    /* IPv6 forms that are fine. */
    expect_ok(c, "[redis]\naddress = [::]:1\n");
    assert_int_equal(c->redis.address.tcp.kind, CMTP_CONFIG_HOST_IPV6);
    expect_ok(c, "[redis]\naddress = [::ffff:192.0.2.1]:6379\n");
    assert_memory_equal(c->redis.address.tcp.ip + 10, "\xff\xff\xc0\x00\x02\x01", 6);
    expect_ok(c, "[redis]\naddress = [1:2:3:4:5:6:7::]:6379\n");
    assert_int_equal(c->redis.address.tcp.ip[13], 7);
    expect_ok(c, "[redis]\naddress = [FE80::1]:6379\n");
    assert_string_equal(c->redis.address.tcp.host, "fe80::1");
    expect_ok(c, "[redis]\naddress = Redis.Internal:6380\n");
    assert_string_equal(c->redis.address.tcp.host, "redis.internal");
    expect_ok(c, "[redis]\naddress =\n");
    assert_int_equal(c->redis.address.kind, CMTP_CONFIG_SOCKET_NONE);
    /* Booleans in every spelling. */
    static const char *const yes[] = {"true", "YES", "On", "1"};
    static const char *const no[] = {"false", "no", "OFF", "0"};
    char text[64];
    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof(text), "[server]\nproxy_protocol = %s\n", yes[i]);
        expect_ok(c, text);
        assert_true(c->server.proxy_protocol);
        snprintf(text, sizeof(text), "[server]\nproxy_protocol = %s\n", no[i]);
        expect_ok(c, text);
        assert_false(c->server.proxy_protocol);
    }
}

static void test_lists(void **state)
{
    struct cmtp_config *c = *state;
    /* The first appearance replaces the default, continuation lines and repeats append. */
    expect_ok(c, "[smtp_ingress]\ntrusted_networks = 10.1.0.0/16\n"
                 "trusted_networks = 10.2.0.0/16,\n  10.3.0.0/16\n");
    assert_int_equal(c->smtp_ingress.trusted_networks_count, 3);
    /* A later load replaces the list again. */
    expect_ok(c, "[smtp_ingress]\ntrusted_networks = 0.0.0.0/0\n");
    assert_int_equal(c->smtp_ingress.trusted_networks_count, 1);
    assert_int_equal(c->smtp_ingress.trusted_networks[0].prefix, 0);
    /* Empty list, empty items. */
    expect_ok(c, "[smtp_ingress]\ntrusted_networks =\n");
    assert_int_equal(c->smtp_ingress.trusted_networks_count, 0);
    expect_ok(c, "[delivery]\nlocal_domains = a.example,, b.example ,\n");
    assert_int_equal(c->delivery.local_domains_count, 2);

    expect_bad("[smtp_ingress]\ntrusted_networks = 10.0.0.1/8\n", "t.conf:2:", "trusted_networks",
               "bits set past the prefix", NULL);
    expect_bad("[smtp_ingress]\ntrusted_networks = 10.0.0.0/33\n", "prefix must be 0..32", NULL);
    expect_bad("[smtp_ingress]\ntrusted_networks = ::/129\n", "0..128", NULL);
    expect_bad("[smtp_ingress]\ntrusted_networks = 10.0.0.0/\n", "trusted_networks", NULL);
    expect_bad("[smtp_ingress]\ntrusted_networks = example.com\n", "bad address", NULL);
    expect_bad("[smtp_ingress]\ntrusted_networks = 10.0.0.0/8, 10.0.0.0/8\n", "twice", NULL);
    expect_bad("[server]\nlisten =\n", "[server] listen", "at least one", NULL);
    expect_bad("[server]\nlisten = 0.0.0.0\n", "t.conf:2:", "listen", "missing :port", NULL);
    expect_bad("[server]\nlisten = 127.0.0.1:1, 127.0.0.1:1\n", "overlaps", NULL);
    expect_bad("[server]\nlisten = 0.0.0.0:1, 127.0.0.1:1\n", "overlaps", NULL);
    expect_bad("[server]\nlisten = a b:1\n", "listen", NULL);
    expect_bad("[delivery]\nlocal_domains = a.example, a.EXAMPLE\n", "t.conf:2:", "twice", NULL);
    expect_bad("[delivery]\nlocal_domains = localhost\n", "local_domains", "bad-domain-length",
               NULL);
    expect_bad("[delivery]\nlocal_domains = a.example b.example\n", "local_domains", NULL);
    expect_bad("[delivery]\nrelay_domains = example.org\n", "domain=nexthop", NULL);
    expect_bad("[delivery]\nrelay_domains = example.org=\n", "relay_domains", NULL);
    expect_bad("[delivery]\nrelay_domains = =mx.example.org\n", "relay_domains", NULL);
    expect_bad("[delivery]\nrelay_domains = a.example=mx.a.example, a.example=mx2.a.example\n",
               "twice", NULL);

    /* Capacity: 16 listeners fit, 17 do not (continuation lines carry the long list). */
    char text[4096] = "[server]\nlisten = 127.0.0.1:1";
    for (int i = 2; i <= 16; i++) {
        char item[40];
        snprintf(item, sizeof(item), ",\n  127.0.0.1:%d", i);
        strcat(text, item);
    }
    strcat(text, "\n");
    expect_ok(c, text);
    assert_int_equal(c->server.listen_count, 16);
    text[strlen(text) - 1] = '\0';
    strcat(text, ", 127.0.0.1:17\n");
    expect_bad(text, "t.conf:17:", "more than 16 entries", NULL);

    /* 256 local domains fit, 257 do not. */
    size_t cap = 300 * 40;
    char *big = malloc(cap);
    assert_non_null(big);
    strcpy(big, "[delivery]\nlocal_domains = d0.example");
    for (int i = 1; i < 256; i++) {
        char item[40];
        snprintf(item, sizeof(item), ",\n  d%d.example", i);
        strcat(big, item);
    }
    strcat(big, "\n");
    expect_ok(c, big);
    assert_int_equal(c->delivery.local_domains_count, 256);
    strcat(big, "  d256.example\n");
    expect_bad(big, "more than 256 entries", NULL);
    free(big);
}

static void test_cross_field(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    expect_bad("[tls]\ncert = /c.pem\n", "t.conf: [tls] cert and key", NULL);
    expect_bad("[tls]\nkey = /k.pem\n", "cert and key", NULL);
    expect_bad("[tls]\nrequire_client_cert = true\n", "require_client_cert needs ca", NULL);
    expect_bad("[limits]\nsize_max = 512k\nchunk_max = 1m\n", "chunk_max must not exceed", NULL);
    expect_bad("[server]\nconn_max = 10\n", "conn_per_ip_max must not exceed conn_max", NULL);
    expect_bad("[delivery]\nretry_base = 2h\n", "retry_base must not exceed retry_max", NULL);
    expect_bad("[delivery]\nlifetime = 30m\n", "retry_max must not exceed lifetime", NULL);
    expect_bad("[delivery]\nmode = lmtp\n", "mode = lmtp needs lmtp", NULL);
    expect_bad("[delivery]\nmaildir =\n", "mode = maildir needs maildir", NULL);
    expect_bad("[delivery]\nlocal_domains = example.org\nrelay_domains = example.org=mx.x.net\n",
               "example.org is in both", NULL);
    expect_bad("[redis]\nwait_replicas = 1\n", "wait_replicas needs an external redis", NULL);
    expect_bad("[admin]\nmode = 0666\n", "[admin] mode must not give others", NULL);
    expect_bad("[admin]\nmode = 0400\n", "owner read and write", NULL);
    expect_bad("[smtp_ingress]\nlisten = 127.0.0.1:4465\n", "overlaps a [server] listen", NULL);
    expect_bad("[admin]\nmetrics_listen = 0.0.0.0:4465\n", "metrics_listen overlaps", NULL);
    /* Fixed up, the same settings pass. */
    expect_ok(c, "[tls]\ncert = /c.pem\nkey = /k.pem\nrequire_client_cert = true\nca = /ca.pem\n"
                 "[delivery]\nmode = lmtp\nlmtp = unix:/run/lmtp\n"
                 "[smtp_ingress]\nlisten = 127.0.0.1:10025\n"
                 "[redis]\naddress = 10.0.0.5:6379\nwait_replicas = 1\n");
    /* A hand-made config is checked too. */
    c->limits.size_max = 1000;
    assert_int_equal(cmtp_config_check(c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "chunk_max"));
    cmtp_config_init(c);
    c->server.listen_count = CMTP_CONFIG_LISTEN_MAX + 1;
    assert_int_equal(cmtp_config_check(c, err, sizeof(err)), -EINVAL);
    cmtp_config_init(c);
    c->limits.line_max = 8192;
    assert_int_equal(cmtp_config_check(c, err, sizeof(err)), -EINVAL);
}

static void test_failure_leaves_config(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    expect_ok(c, "[server]\nworkers = 3\n[redis]\npassword = old\n");
    struct cmtp_config *before = malloc(sizeof(*before));
    assert_non_null(before);
    memcpy(before, c, sizeof(*c));
    /* Several good keys, then a bad one: nothing is applied. */
    assert_int_equal(
        load(c, "[server]\nworkers = 5\n[redis]\npassword = new\n[log]\nlevel = x\n", err),
        -EINVAL);
    assert_memory_equal(c, before, sizeof(*c));
    assert_int_equal(c->server.workers, 3);
    assert_string_equal(c->redis.password, "old");
    free(before);
}

/* write_file writes |text| to a fresh temporary file; the caller unlinks |path|. */
static void write_file(char *path, const char *text, size_t len)
{
    strcpy(path, "/tmp/cmtp-config-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static void test_load_file(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    char path[64];
    const char text[] = "[server]\nworkers = 6\n[limits]\nsize_max = 2g\n";
    write_file(path, text, sizeof(text) - 1);
    assert_int_equal(cmtp_config_load_file(c, path, err, sizeof(err)), 0);
    assert_int_equal(c->server.workers, 6);
    assert_int_equal(c->limits.size_max, 2ull << 30);
    unlink(path);

    const char bad[] = "[server]\nworkers = 6\n\n[limits]\nrcpt_max = lots\n";
    write_file(path, bad, sizeof(bad) - 1);
    assert_int_equal(cmtp_config_load_file(c, path, err, sizeof(err)), -EINVAL);
    char want[128];
    snprintf(want, sizeof(want), "%s:5: [limits] rcpt_max", path);
    assert_non_null(strstr(err, want));
    unlink(path);

    assert_int_equal(cmtp_config_load_file(c, "/nonexistent/cmtpd.conf", err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/cmtpd.conf: cannot open"));
    assert_int_equal(cmtp_config_load_file(c, "/tmp", err, sizeof(err)), -EISDIR);

    /* Larger than 1 MiB: refused whole. */
    size_t n = CMTP_CONFIG_FILE_MAX + 1;
    char *huge = malloc(n);
    assert_non_null(huge);
    memset(huge, '\n', n);
    write_file(path, huge, n);
    assert_int_equal(cmtp_config_load_file(c, path, err, sizeof(err)), -EFBIG);
    unlink(path);
    free(huge);
}

/* etc/cmtpd.conf documents every key with its default: loading it, and loading it with every
 * `#key = value` line uncommented, both give exactly the defaults. */
static void test_example_config(void **state)
{
    struct cmtp_config *c = *state;
    char err[CMTP_CONFIG_ERR_LEN];
    struct cmtp_config *def = malloc(sizeof(*def));
    assert_non_null(def);
    cmtp_config_init(def);

    FILE *f = fopen("etc/cmtpd.conf", "r");
    if (f == NULL)
        print_error("run from the repository root: etc/cmtpd.conf not found\n");
    assert_non_null(f);
    assert_int_equal(cmtp_config_load_file(c, "etc/cmtpd.conf", err, sizeof(err)), 0);
    assert_memory_equal(c, def, sizeof(*c));

    char *text = calloc(1, 65536);
    assert_non_null(text);
    char line[512];
    size_t keys = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line;
        if (line[0] == '#' && line[1] >= 'a' && line[1] <= 'z' && strstr(line, " =") != NULL) {
            p = line + 1;
            keys++;
        }
        strcat(text, p);
    }
    fclose(f);
    /* Every key of docs/CONFIG.md appears. */
    assert_int_equal(keys, 69);
    assert_int_equal(
        cmtp_config_load_string(c, text, strlen(text), "uncommented", err, sizeof(err)), 0);
    assert_memory_equal(c, def, sizeof(*c));
    free(text);
    free(def);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_units, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hard_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_syntax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cross_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_leaves_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_example_config, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
