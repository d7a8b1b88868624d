# bench/postfix.sh — a private Postfix instance for the bench and its tests (sourced, not run):
# own main.cf/master.cf, queue and data directories, port on 127.0.0.1, STARTTLS (TLS 1.3 only)
# with the caller's certificate, every message delivered to discard:. It is not a Postfix
# tuning guide: apart from in_flow_delay and the smtpd process limit, Postfix keeps its defaults
# (queue files fsync'ed before the 250, as Debian ships it).
#
# Use:
#   source bench/postfix.sh
#   pf_available || echo "no postfix"       # root, /usr/sbin/postfix, a postfix user
#   pf_setup "$DIR" "$PORT" server.crt server.key [MAXPROC]
#   pf_start "$DIR"                          # in the background (postfix-script takes seconds)
#   ...                                      # other work meanwhile
#   pf_wait "$DIR" "$PORT" || echo "failed: $(pf_log_tail "$DIR")"
#   ... "$PF_MASTER" ...                     # the master's pid (--server-tree for cmtp-bench)
#   pf_stop "$DIR"                           # by the master's pid; its children follow
#
# Postfix's daemons run as the postfix user and must reach DIR: pf_setup makes DIR's parent
# (a mktemp -d folder, mode 0700) searchable (0711). Nothing outside DIR is written.

# pf_available: true when a private Postfix can run here (root for the master, Debian's postfix
# and its postfix user).
pf_available() {
  [ "$(id -u)" -eq 0 ] && [ -x /usr/sbin/postfix ] && id postfix >/dev/null 2>&1
}

# pf_setup DIR PORT CERT KEY [MAXPROC]: writes DIR/conf/{main,master}.cf, DIR/queue, DIR/data and
# copies CERT and KEY (PEM, any key type OpenSSL takes: Ed25519, ECDSA) into DIR. smtpd listens
# on 127.0.0.1:PORT with at most MAXPROC (default 100) processes. PF_MAIN_EXTRA, when set, is
# merged into main.cf, its keys replacing the defaults above (the tests use it to relay to
# cmtpd's SMTP ingress instead of discarding). Returns non-zero on failure.
pf_setup() {
  local dir=$1 port=$2 cert=$3 key=$4 maxproc=${5:-100}
  local parent
  parent=$(dirname "$dir")
  chmod 711 "$parent" || return 1
  mkdir -p "$dir/conf" "$dir/queue" "$dir/data" || return 1
  chown postfix "$dir/data" || return 1
  cp "$cert" "$dir/server.crt" && cp "$key" "$dir/server.key" || return 1
  chmod 644 "$dir/server.crt" "$dir/server.key" # read by smtpd after it dropped to postfix
  cat >"$dir/conf/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.bench.example
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = bench.example
default_transport = discard
relay_transport = discard
local_transport = discard
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = may
smtpd_tls_chain_files = $dir/server.key, $dir/server.crt
smtpd_tls_protocols = >=TLSv1.3
# No 1 s pause per message when arrivals outrun deliveries: Postfix at its best ingest rate.
in_flow_delay = 0s
default_process_limit = $maxproc
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
biff = no
CONF
  if [ -n "${PF_MAIN_EXTRA:-}" ]; then
    # Each extra "key = value" replaces the default line of the same key (no duplicates).
    printf '%s\n' "$PF_MAIN_EXTRA" >"$dir/conf/extra.cf"
    awk -F' *= *' 'NR == FNR { if (NF > 1) x[$1] = 1; next } !($1 in x)' \
      "$dir/conf/extra.cf" "$dir/conf/main.cf" >"$dir/conf/main.tmp" &&
      cat "$dir/conf/extra.cf" >>"$dir/conf/main.tmp" &&
      mv "$dir/conf/main.tmp" "$dir/conf/main.cf" || return 1
  fi
  cat >"$dir/conf/master.cf" <<CONF
127.0.0.1:$port inet n - n - $maxproc smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
smtp      unix  - - n -  - smtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
CONF
}

# pf_start DIR: `postfix start` in the background; its pid is kept in PF_START_PID for pf_wait.
pf_start() {
  local dir=$1
  /usr/sbin/postfix -c "$dir/conf" start >"$dir/start.out" 2>&1 &
  PF_START_PID=$!
}

# pf_wait DIR PORT: waits for `postfix start` to end and for 127.0.0.1:PORT to accept (up to
# 20 s); sets PF_MASTER to the master's pid. Returns non-zero when Postfix did not come up.
pf_wait() {
  local dir=$1 port=$2 i
  PF_MASTER=
  if [ -n "${PF_START_PID:-}" ]; then
    wait "$PF_START_PID" 2>/dev/null
    PF_START_PID=
  fi
  for i in $(seq 1 200); do
    PF_MASTER=$(tr -d ' ' <"$dir/queue/pid/master.pid" 2>/dev/null)
    if [ -n "$PF_MASTER" ] && kill -0 "$PF_MASTER" 2>/dev/null &&
      python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" \
        >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  PF_MASTER=
  return 1
}

# pf_stop DIR: stops the private master by its pid (SIGTERM; its children follow) and waits up
# to 5 s for it to go. Safe to call when nothing was started.
pf_stop() {
  local dir=$1 m i
  if [ -n "${PF_START_PID:-}" ]; then
    wait "$PF_START_PID" 2>/dev/null
    PF_START_PID=
  fi
  m=$(tr -d ' ' <"$dir/queue/pid/master.pid" 2>/dev/null)
  [ -n "$m" ] || return 0
  kill "$m" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$m" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$m" 2>/dev/null
  return 0
}

# pf_log_tail DIR: the last lines of the instance's log and start output, on one line.
pf_log_tail() {
  local dir=$1
  tail -n 3 "$dir/maillog" "$dir/start.out" 2>/dev/null | tr '\n' ' '
}
