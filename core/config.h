/* core/config.h — the daemon's configuration: one INI file (libinih), every setting with a
 * documented default, range-checked values and cross-field checks. Not the daemon's reload logic.
 */
#ifndef CMTP_CORE_CONFIG_H
#define CMTP_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/envelope.h"
#include "core/limits.h"
#include "core/log.h"
#include "core/smtp_client.h"

/* Bounds of the list settings (docs/CONFIG.md). */
#define CMTP_CONFIG_LISTEN_MAX 16         /* [server] listen, [smtp_ingress] listen */
#define CMTP_CONFIG_LOCAL_DOMAINS_MAX 256 /* [delivery] local_domains */
#define CMTP_CONFIG_RELAY_DOMAINS_MAX 256 /* [delivery] relay_domains */
#define CMTP_CONFIG_NETWORKS_MAX 64       /* [smtp_ingress] trusted_networks */
#define CMTP_CONFIG_DNS_SERVERS_MAX 8     /* [delivery] dns_servers */
#define CMTP_CONFIG_SENDER_POLICY_MAX 256 /* [smtp_ingress] sender_policy */

/* CMTP_CONFIG_PATH_MAX is the longest file path value, in octets (NUL excluded). */
#define CMTP_CONFIG_PATH_MAX 255
/* CMTP_CONFIG_UNIX_PATH_MAX is the longest Unix socket path (sun_path holds 108 with the NUL). */
#define CMTP_CONFIG_UNIX_PATH_MAX 107
/* CMTP_CONFIG_NAME_MAX is the longest user or group name. */
#define CMTP_CONFIG_NAME_MAX 32
/* CMTP_CONFIG_SECRET_MAX is the longest [redis] password. */
#define CMTP_CONFIG_SECRET_MAX 128
/* CMTP_CONFIG_PREFIX_MAX is the longest [redis] key_prefix. */
#define CMTP_CONFIG_PREFIX_MAX 32
/* CMTP_CONFIG_FILE_MAX is the largest config file read, in octets. */
#define CMTP_CONFIG_FILE_MAX (1024 * 1024)
/* CMTP_CONFIG_ERR_LEN is a size for error buffers that holds every message whole. */
#define CMTP_CONFIG_ERR_LEN 512

/* Default values that are not protocol limits (those are in core/limits.h). */
#define CMTP_CONFIG_LISTEN_DEFAULT "0.0.0.0:4465"
#define CMTP_CONFIG_CONN_MAX_DEFAULT 10000
#define CMTP_CONFIG_CONN_PER_IP_MAX_DEFAULT 64
#define CMTP_CONFIG_STATE_DIR_DEFAULT "./state"
#define CMTP_CONFIG_REDIS_PREFIX_DEFAULT "cmtp"
#define CMTP_CONFIG_REDIS_SERVER_DEFAULT "redis-server"
#define CMTP_CONFIG_REDIS_WAIT_TIMEOUT_MS_DEFAULT 1000
#define CMTP_CONFIG_REDIS_INFLIGHT_MAX_DEFAULT 1024
#define CMTP_CONFIG_MAILDIR_DEFAULT "./state/maildir"
#define CMTP_CONFIG_CONCURRENCY_PER_DEST_DEFAULT 20
#define CMTP_CONFIG_RETRY_BASE_MS_DEFAULT (60ull * 1000)
#define CMTP_CONFIG_RETRY_MAX_MS_DEFAULT (3600ull * 1000)
#define CMTP_CONFIG_LIFETIME_MS_DEFAULT (5ull * 24 * 3600 * 1000)
#define CMTP_CONFIG_ATTEMPTS_CRASH_MAX_DEFAULT 5
#define CMTP_CONFIG_LEASE_MS_DEFAULT (5ull * 60 * 1000)
#define CMTP_CONFIG_DNS_TIMEOUT_MS_DEFAULT 5000
#define CMTP_CONFIG_DNS_PORT 53 /* the port of a dns_servers entry without one */
#define CMTP_CONFIG_SMTP_PORT_DEFAULT 25
#define CMTP_CONFIG_ADMIN_SOCKET_DEFAULT "./state/cmtpd.sock"
#define CMTP_CONFIG_ADMIN_MODE_DEFAULT 0600
#define CMTP_CONFIG_TRUSTED_NETWORKS_DEFAULT "127.0.0.0/8,::1/128"

/* cmtp_config_host_kind says what the host of an endpoint is. */
enum cmtp_config_host_kind {
    CMTP_CONFIG_HOST_NAME = 0, /* a host name, lower case, to be resolved by the daemon */
    CMTP_CONFIG_HOST_IPV4,     /* |ip|[0..3] holds the address */
    CMTP_CONFIG_HOST_IPV6,     /* |ip|[0..15] holds the address */
};

/* cmtp_config_endpoint is a TCP endpoint `host:port` or `[v6]:port`. |host| is the host as
 * text (IP literals without brackets, names lower-cased); for literals |ip| holds the address in
 * network order, so the daemon needs no parsing of its own. */
struct cmtp_config_endpoint {
    char host[CMTP_DOMAIN_MAX + 1];
    enum cmtp_config_host_kind kind;
    uint8_t ip[16];
    uint16_t port;
};

/* cmtp_config_socket_kind says where a "unix:PATH or host:port" setting points. */
enum cmtp_config_socket_kind {
    CMTP_CONFIG_SOCKET_NONE = 0, /* empty value */
    CMTP_CONFIG_SOCKET_UNIX,     /* |path| */
    CMTP_CONFIG_SOCKET_TCP,      /* |tcp| */
};

/* cmtp_config_socket is a setting that names a Unix socket or a TCP endpoint. */
struct cmtp_config_socket {
    enum cmtp_config_socket_kind kind;
    char path[CMTP_CONFIG_UNIX_PATH_MAX + 1];
    struct cmtp_config_endpoint tcp;
};

/* cmtp_config_cidr is one network `addr/prefix` of [smtp_ingress] trusted_networks. |family|
 * is 4 or 6; bits of |addr| past |prefix| are zero (a value with host bits set is refused). */
struct cmtp_config_cidr {
    uint8_t family;
    uint8_t prefix;
    uint8_t addr[16];
};

/* cmtp_config_relay_domain is one `domain=nexthop[:port]` entry of [delivery] relay_domains:
 * mail for |domain| (lower-case A-labels) is relayed to |nexthop| (port CMTP_PORT when none was
 * given). */
struct cmtp_config_relay_domain {
    char domain[CMTP_DOMAIN_MAX + 1];
    struct cmtp_config_endpoint nexthop;
};

/* cmtp_config_sender_policy is one entry of [smtp_ingress] sender_policy: the CMTP policy of
 * mail from |domain| (lower-case A-labels) arriving over SMTP. |set| holds the
 * CMTP_POLICY_SET_* bits (core/envelope.h) of the members the entry names; the others come from
 * policy_relay, policy_fallback and policy_hops. */
struct cmtp_config_sender_policy {
    char domain[CMTP_DOMAIN_MAX + 1];
    struct cmtp_policy policy;
    unsigned set;
};

/* cmtp_delivery_mode is how mail this appliance is final for leaves it ([delivery] mode). */
enum cmtp_delivery_mode {
    CMTP_DELIVERY_MAILDIR = 0, /* into the Maildir at [delivery] maildir */
    CMTP_DELIVERY_LMTP,        /* over LMTP to [delivery] lmtp */
    CMTP_DELIVERY_SMTP,        /* over SMTP to [delivery] smtp (an internal mail host) */
    CMTP_DELIVERY_CMTP,        /* over CMTP to [delivery] cmtp (an internal CMTP mail store) */
};

/* cmtp_log_target is where the daemon sends log lines ([log] target). */
enum cmtp_log_target {
    CMTP_LOG_TARGET_STDERR = 0,
    CMTP_LOG_TARGET_SYSLOG,
};

/* cmtp_config is every setting of the daemon. It holds no pointers: all strings live in
 * fixed buffers inside it (NUL-terminated), so a copy is a plain assignment and nothing needs to
 * be freed. It is large (a few hundred KiB): allocate it, do not put it on a thread's stack.
 * Durations are in milliseconds (suffix _ms), sizes in octets. Defaults: cmtp_config_init and
 * docs/CONFIG.md. */
struct cmtp_config {
    struct {
        char hostname[CMTP_DOMAIN_MAX + 1]; /* "" = the daemon asks the system */
        struct cmtp_config_endpoint listen[CMTP_CONFIG_LISTEN_MAX];
        size_t listen_count;
        unsigned workers; /* 0 = one per core */
        unsigned conn_max;
        unsigned conn_per_ip_max; /* 0 = no per-IP limit */
        char state_dir[CMTP_CONFIG_PATH_MAX + 1];
        char user[CMTP_CONFIG_NAME_MAX + 1]; /* "" = do not change user */
        bool proxy_protocol;
    } server;
    struct {
        char cert[CMTP_CONFIG_PATH_MAX + 1]; /* "" = self-signed pair under state_dir */
        char key[CMTP_CONFIG_PATH_MAX + 1];
        char ca[CMTP_CONFIG_PATH_MAX + 1]; /* client CA for mutual TLS, "" = none */
        bool require_client_cert;
        char ticket_key_file[CMTP_CONFIG_PATH_MAX + 1]; /* "" = per-process random keys */
        bool session_tickets;
    } tls;
    struct {
        uint64_t size_max;
        unsigned rcpt_max;
        uint64_t chunk_max;
        unsigned txn_max;
        unsigned line_max;
    } limits;
    struct {
        uint64_t handshake_ms;
        uint64_t idle_ms;
        uint64_t command_ms;
        uint64_t chunk_ms;
        uint64_t transaction_ms;
    } timeouts;
    struct {
        struct cmtp_config_socket address; /* NONE = start the embedded redis-server */
        char password[CMTP_CONFIG_SECRET_MAX + 1];
        char key_prefix[CMTP_CONFIG_PREFIX_MAX + 1];
        unsigned wait_replicas;
        uint64_t wait_timeout_ms;
        char redis_server[CMTP_CONFIG_PATH_MAX + 1];
        unsigned inflight_max; /* commands in flight per worker */
    } redis;
    struct {
        enum cmtp_delivery_mode mode;
        char maildir[CMTP_CONFIG_PATH_MAX + 1];
        struct cmtp_config_socket lmtp;
        struct cmtp_config_socket smtp; /* mode smtp: the internal SMTP host */
        /* mode cmtp: the internal CMTP mail store (|domain| unused), when |cmtp_set| */
        struct cmtp_config_relay_domain cmtp;
        bool cmtp_set;
        enum cmtp_smtpc_tls smtp_starttls; /* none, may (default) or require */
        bool smtp_tls_verify;              /* verify the host's certificate when TLS is used */
        char smtp_tls_name[CMTP_DOMAIN_MAX + 1]; /* its reference identity; "" = the host of smtp */
        bool chunking; /* BDAT (RFC 3030) to LMTP/SMTP servers that offer CHUNKING (default) */
        char local_domains[CMTP_CONFIG_LOCAL_DOMAINS_MAX][CMTP_DOMAIN_MAX + 1];
        size_t local_domains_count; /* 0 = final for every domain */
        struct cmtp_config_relay_domain relay_domains[CMTP_CONFIG_RELAY_DOMAINS_MAX];
        size_t relay_domains_count;
        unsigned concurrency_per_dest;
        uint64_t retry_base_ms;
        uint64_t retry_max_ms;
        uint64_t lifetime_ms;
        unsigned attempts_crash_max;
        bool enabled;      /* no: this node only ingests (no claims, no reports) */
        uint64_t lease_ms; /* how long a claimed item is held before another node takes it over */
        /* Routing by DNS (docs/CONFIG.md): resolvers (IP addresses; none = /etc/resolv.conf),
         * the wait for one resolver's answer, the CMTP port of MX hosts and of a domain's own
         * address, and the port of SMTP fallback. */
        struct cmtp_config_endpoint dns_servers[CMTP_CONFIG_DNS_SERVERS_MAX];
        size_t dns_servers_count;
        uint64_t dns_timeout_ms;
        unsigned cmtp_port;
        unsigned smtp_port;
    } delivery;
    struct {
        char socket[CMTP_CONFIG_UNIX_PATH_MAX + 1];
        unsigned mode; /* permission bits of the socket */
        char group[CMTP_CONFIG_NAME_MAX + 1];
        bool metrics_enabled; /* false when metrics_listen is "" */
        struct cmtp_config_endpoint metrics_listen;
    } admin;
    struct {
        enum cmtp_log_level level;
        enum cmtp_log_format format;
        enum cmtp_log_target target;
    } log;
    struct {
        struct cmtp_config_endpoint listen[CMTP_CONFIG_LISTEN_MAX];
        size_t listen_count; /* 0 = no SMTP ingress */
        struct cmtp_config_cidr trusted_networks[CMTP_CONFIG_NETWORKS_MAX];
        size_t trusted_networks_count;
        enum cmtp_relay policy_relay;
        enum cmtp_fallback policy_fallback;
        unsigned policy_hops;
        struct cmtp_config_sender_policy sender_policy[CMTP_CONFIG_SENDER_POLICY_MAX];
        size_t sender_policy_count;
        bool starttls;       /* offer STARTTLS (with the [tls] certificate) */
        bool tls_required;   /* refuse MAIL before STARTTLS */
        bool policy_header;  /* honour a CMTP-Policy: header field of the message */
        bool bare_lf_reject; /* refuse DATA with a bare LF instead of keeping it */
    } smtp_ingress;
};

/* cmtp_config_init sets every field of |c| to its documented default. It performs no I/O
 * (server.hostname stays "", meaning the daemon asks the system). */
void cmtp_config_init(struct cmtp_config *c);

/* cmtp_config_load_string applies the INI text at |text| (|len| octets) on top of |c| and then
 * runs cmtp_config_check. Keys present replace the value in |c|; a list key replaces the list
 * the first time it appears and appends for its continuation lines and repeats. |name| names
 * the text in messages (NULL: "<string>"). Returns 0; or -EINVAL with |c| unchanged and a
 * message `NAME:LINE: ...` (naming the key) in |err| (|errlen| octets, may be 0). */
int cmtp_config_load_string(struct cmtp_config *c, const char *text, size_t len, const char *name,
                            char *err, size_t errlen);

/* cmtp_config_load_file reads the file at |path| (at most CMTP_CONFIG_FILE_MAX octets) and
 * applies it as cmtp_config_load_string does, naming |path| in messages. Returns 0, -EINVAL
 * for a bad file, or the negative errno of a failed read (-ENOENT, -EACCES, -EFBIG ...); on any
 * failure |c| is unchanged and |err| says why. */
int cmtp_config_load_file(struct cmtp_config *c, const char *path, char *err, size_t errlen);

/* cmtp_config_check validates the rules that span fields (for example chunk_max <= size_max,
 * cert and key set together, require_client_cert needs a ca). The loaders call it; call it
 * after changing a config by hand. Returns 0, or -EINVAL with the reason in |err|. */
int cmtp_config_check(const struct cmtp_config *c, char *err, size_t errlen);

/* cmtp_config_free releases nothing (a config owns no heap memory) but wipes |c|, which holds
 * the Redis password. |c| may be NULL. */
void cmtp_config_free(struct cmtp_config *c);

/* cmtp_delivery_mode_name returns "maildir", "lmtp", "smtp" or "cmtp", or NULL. */
const char *cmtp_delivery_mode_name(enum cmtp_delivery_mode m);

/* cmtp_log_target_name returns "stderr" or "syslog", or NULL. */
const char *cmtp_log_target_name(enum cmtp_log_target t);

/* cmtp_config_domain_is_local reports whether this appliance is final for |domain| (lower-case
 * A-labels): false when |domain| is a relay_domains entry; otherwise true when local_domains is
 * empty or lists |domain| exactly (subdomains are not included). */
bool cmtp_config_domain_is_local(const struct cmtp_config *c, const char *domain);

/* cmtp_config_relay_for returns the relay_domains entry whose domain equals |domain|, or NULL. */
const struct cmtp_config_relay_domain *cmtp_config_relay_for(const struct cmtp_config *c,
                                                             const char *domain);

/* cmtp_config_sender_policy_for returns the sender_policy entry for |domain| (lower-case
 * A-labels): an exact match, else the entry of the nearest parent domain (an entry for a.test
 * covers x.a.test), else NULL. */
const struct cmtp_config_sender_policy *cmtp_config_sender_policy_for(const struct cmtp_config *c,
                                                                      const char *domain);

/* cmtp_config_cidr_match reports whether the address |ip| (4 octets when |family| is 4, 16 when
 * 6) lies in network |n|. */
bool cmtp_config_cidr_match(const struct cmtp_config_cidr *n, int family, const uint8_t *ip);

#endif
