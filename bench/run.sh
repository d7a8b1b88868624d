#!/usr/bin/env bash
# bench/run.sh — `make bench` (and `make bench-quick` with --quick): the side-by-side benchmark
# of shared/design/BENCH.md. Starts a private redis-server, cmtpd and a private Postfix, measures
# cmtpd and the references in the same run (the crypto floor from bssl-tool, Postfix+STARTTLS
# with cmtp-bench, Redis' durable SET rate with redis-benchmark), then writes BENCHMARKS.md,
# BENCHMARKS.json and BENCHMARKS.png (bench/report.py, bench/plot.gp).
# It builds nothing (`make bench` depends on `all`) and is never a timed test: only its --quick
# mode runs in `make test` (tests/integration/test_bench_suite.sh), to prove that it works.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP" || exit 3

usage() {
  cat <<'USAGE'
usage: bash bench/run.sh [--quick] [--runs N] [--out DIR] [--workers "1 2 ..."] [--build DIR]
                         [--conns N] [--idle N] [--duration S] [--no-relay] [--only relay]
                         [--no-profile] [--keep]

  --quick        1 run of each measurement, about 1 s each, smaller sets (500 idle
                 connections); proves the bench works, numbers not worth quoting.
                 Output goes to build/bench-quick unless --out is given.
  --runs N       repetitions of each measurement (default 3; medians and min..max reported)
  --out DIR      where BENCHMARKS.md, BENCHMARKS.json and BENCHMARKS.png go (default: the
                 repository root)
  --workers LIST cmtpd worker counts of the scaling run (default "1 2", capped at nproc);
                 an explicit list runs as given, e.g. "1 2 4 8 16" on a larger machine
  --build DIR    where cmtpd and cmtp-bench are (default $CMTP_BUILD or build)
  --conns N      concurrent sessions (cmtpd, Postfix) and clients (redis-benchmark) of every
                 closed-loop run (default by body size: 1k 32, 64k 8, 1m 8)
  --idle N       idle TLS connections of the memory run (default 10000; --quick 500)
  --duration S   measured seconds of each load run (default 4; --quick 1)
  --no-relay     skip the relay end-to-end measurement (cmtpd delivering over LMTP to a
                 sink; see measure_relay)
  --only relay   measure only the relay end to end and, in the same run, the ingest-only rate
                 it is compared with (1 KiB, persistent sessions); no Postfix, no Redis
                 reference, no report file: the figures are printed (and kept with --keep)
  --no-profile   skip the perf profiles of cmtpd (made in full runs when perf works)
  --keep         keep the work folder (raw outputs of every run, pids.txt: every process
                 started, all stopped at exit); made under $TMPDIR (default /tmp)
USAGE
}

QUICK=0
RUNS=
OUT=
WORKERS=
BUILD_DIR=${CMTP_BUILD:-build}
CONNS=
IDLE_N=
DUR=
RELAY=1
ONLY=
PROFILE=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
  --quick) QUICK=1 ;;
  --runs) RUNS=$2; shift ;;
  --out) OUT=$2; shift ;;
  --workers) WORKERS=$2; shift ;;
  --build) BUILD_DIR=$2; shift ;;
  --conns) CONNS=$2; shift ;;
  --idle) IDLE_N=$2; shift ;;
  --duration) DUR=$2; shift ;;
  --no-relay) RELAY=0 ;;
  --only)
    ONLY=$2
    shift
    [ "$ONLY" = relay ] || { echo "bench/run.sh: --only takes: relay" >&2; exit 2; }
    ;;
  --no-profile) PROFILE=0 ;;
  --keep) KEEP=1 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "bench/run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$BUILD_DIR" in /*) B=$BUILD_DIR ;; *) B=$TOP/$BUILD_DIR ;; esac
for p in cmtpd cmtp-bench; do
  [ -x "$B/$p" ] || { echo "bench/run.sh: $B/$p missing (run make all first)" >&2; exit 3; }
done
for p in redis-server redis-cli redis-benchmark bssl-tool openssl python3; do
  command -v "$p" >/dev/null || { echo "bench/run.sh: $p not found" >&2; exit 3; }
done

NPROC=$(nproc)
if [ "$QUICK" -eq 1 ]; then
  RUNS=${RUNS:-1}; DUR=${DUR:-1}; WARM=0.2; IDLE_N=${IDLE_N:-500}; IDLE_HOLD=0.5
  FLOOR_S=1; PROFILE=0; OUT=${OUT:-$TOP/build/bench-quick}
else
  RUNS=${RUNS:-3}; DUR=${DUR:-4}; WARM=1; IDLE_N=${IDLE_N:-10000}; IDLE_HOLD=2
  FLOOR_S=1; OUT=${OUT:-$TOP}
fi
if [ -z "$WORKERS" ]; then
  WORKERS=
  for w in 1 2; do [ "$w" -le "$NPROC" ] && WORKERS="$WORKERS $w"; done
fi
SIZES="1k 64k 1m"
# conns_for SIZE: sessions of the closed loop for SIZE, the same for cmtpd, Postfix and Redis.
# Large bodies use fewer: the measured interval counts the operations that start and end
# inside it, so the edge loss is about (sessions / rate) / duration; and each server gets the
# same concurrency.
conns_for() {
  if [ -n "$CONNS" ]; then echo "$CONNS"; return; fi
  case "$1" in 1k) echo 32 ;; *) echo 8 ;; esac
}
PC_CONNS=16 # sessions of the one-connection-per-message runs
HS_CONNS=8  # concurrent handshake loops
mkdir -p "$OUT" || exit 3
OUT=$(cd "$OUT" && pwd)

T0=$(date +%s)
W=$(mktemp -d "${TMPDIR:-/tmp}/cmtp-bench-run.XXXXXX") || exit 3
R=$W/raw
mkdir -p "$R"
ulimit -n "$(ulimit -Hn)" 2>/dev/null # cmtpd holds --idle connections; cmtp-bench raises its own

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
# meta KEY VALUE: one line of the run's description for the report.
meta() { printf '%s\t%s\n' "$1" "$2" >>"$R/meta.tsv"; }

# --- processes ---------------------------------------------------------------------------------
REDIS_PID=
CMTPD_PID=
REDIS_N=0
PF=$W/pf
PF_ON=0
source "$TOP/bench/postfix.sh"

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL; reaps it.
stop_pid() {
  local p=$1 i
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  return 0
}

cleanup() {
  [ -z "${PERF_PID:-}" ] || stop_pid "$PERF_PID"
  [ -z "${SINK_PID:-}" ] || stop_pid "$SINK_PID"
  stop_pid "$CMTPD_PID"
  stop_pid "$REDIS_PID"
  [ "$PF_ON" -eq 0 ] || pf_stop "$PF"
  if [ "$KEEP" -eq 1 ]; then echo "bench/run.sh: work folder kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# tcp_up PORT: true when 127.0.0.1:PORT accepts a connection.
tcp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cpu_ticks PID: utime+stime of PID (all threads) in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

# start_redis: a fresh private redis-server (new data folder) with the appliance's configuration
# (queue/redis_embed.c): Unix socket, AOF, appendfsync always, no RDB snapshots, noeviction.
start_redis() {
  REDIS_N=$((REDIS_N + 1))
  REDIS_DIR=$W/redis.$REDIS_N
  REDIS_SOCK=$W/redis.sock
  rm -f "$REDIS_SOCK"
  mkdir -p "$REDIS_DIR"
  redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 --dir "$REDIS_DIR" \
    --appendonly yes --appendfsync always --save '' --daemonize no --supervised no \
    --maxmemory-policy noeviction --logfile "$REDIS_DIR/redis.log" &
  REDIS_PID=$!
  echo "$REDIS_PID redis-server" >>"$W/pids.txt"
  local i
  for i in $(seq 1 100); do
    redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench/run.sh: redis-server did not start: $(tail -n 3 "$REDIS_DIR/redis.log")" >&2
  return 1
}

stop_redis() {
  stop_pid "$REDIS_PID"
  REDIS_PID=
  [ -z "${REDIS_DIR:-}" ] || rm -rf "$REDIS_DIR"
}

rcli() { redis-cli -s "$REDIS_SOCK" "$@"; }

# INGEST_DELIVERY: the [delivery] lines of the ingest-only runs: `enabled = no`, an ingest-only
# node (what operators run to split ingest and delivery nodes): its delivery engine claims nothing
# and takes no report items, so accepted messages stay queued in Redis and nothing but ingest
# runs. The report counts the log's delivery events over the whole bench (only the relay runs
# deliver).
INGEST_DELIVERY="enabled = no"

# write_cmtpd_conf WORKERS [DELIVERY]: the generated configuration (workers, no per-IP limit,
# 20000 connections, our Ed25519 certificate, the private Redis, the bench's recipient domain
# local). DELIVERY holds the [delivery] mode lines (default INGEST_DELIVERY).
write_cmtpd_conf() {
  local workers=$1 delivery=${2:-$INGEST_DELIVERY}
  cat >"$W/cmtpd.conf" <<CONF
[server]
hostname = mx.bench.example
listen = 127.0.0.1:$CMTP_PORT
state_dir = $W/state
workers = $workers
conn_max = 20000
conn_per_ip_max = 0
[tls]
cert = $W/tls/server.crt
key = $W/tls/server.key
[redis]
address = unix:$REDIS_SOCK
[admin]
socket = $W/cmtpd.sock
[delivery]
local_domains = bench.example
maildir = $W/maildir
$delivery
CONF
}

# start_cmtpd WORKERS [DELIVERY]: cmtpd (release build) with the generated configuration.
start_cmtpd() {
  write_cmtpd_conf "$@"
  "$B/cmtpd" -c "$W/cmtpd.conf" 2>>"$W/cmtpd.log" &
  CMTPD_PID=$!
  echo "$CMTPD_PID cmtpd" >>"$W/pids.txt"
  local i
  for i in $(seq 1 200); do
    tcp_up "$CMTP_PORT" && return 0
    kill -0 "$CMTPD_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench/run.sh: cmtpd did not start: $(tail -n 3 "$W/cmtpd.log")" >&2
  return 1
}

stop_cmtpd() {
  stop_pid "$CMTPD_PID"
  CMTPD_PID=
}

# restart_stack WORKERS [DELIVERY]: fresh Redis (empty data, so no run inherits another's AOF or
# memory) and a fresh cmtpd.
restart_stack() {
  stop_cmtpd
  stop_redis
  start_redis && start_cmtpd "$@"
}

# --- measurement helpers -------------------------------------------------------------------------

# cb FILE ARGS...: cmtp-bench against cmtpd, JSON in FILE (stderr in FILE.err); cmtpd and its
# redis-server measured. Never fails the script: a failed run is reported as such.
cb() {
  local f=$1; shift
  mkdir -p "$(dirname "$f")"
  head -n 1 /proc/stat >"$f.stat0" # the machine's CPU split over the run (iowait: fsync)
  timeout 300 "$B/cmtp-bench" --ca "$W/tls/ca.crt" -s "127.0.0.1:$CMTP_PORT" --json -q \
    -p "$CMTPD_PID" -p "$REDIS_PID" "$@" >"$f" 2>"$f.err"
  echo $? >"$f.rc"
  head -n 1 /proc/stat >"$f.stat1"
}

# sb FILE ARGS...: cmtp-bench over SMTP+STARTTLS against the private Postfix (whole process tree).
sb() {
  local f=$1; shift
  mkdir -p "$(dirname "$f")"
  timeout 300 "$B/cmtp-bench" --proto smtp --ca "$W/tls/ca.crt" -s "127.0.0.1:$PF_PORT" --json -q \
    --server-tree "$PF_MASTER" "$@" >"$f" 2>"$f.err"
  echo $? >"$f.rc"
}

# rewrites FILE: the AOF rewrites the current redis-server started so far, into FILE.rewrites
# (the appliance's configuration keeps Redis' automatic rewrite: a run that writes a lot pays
# for forks that rewrite the whole data set).
rewrites() {
  grep -c 'Background append only file rewriting started' "$REDIS_DIR/redis.log" >"$1.rewrites" 2>/dev/null
}

# rb FILE SIZE N CLIENTS: redis-benchmark durable SET of SIZE-octet values against the same
# private redis-server configuration (fresh instance), random keys (-r), so that Redis keeps
# every value as cmtpd keeps every message; CSV in FILE, and FILE.cpu holds the redis-server
# CPU time (µs) over the run and N.
rb() {
  local f=$1 size=$2 n=$3 c=$4 t0 t1
  mkdir -p "$(dirname "$f")"
  t0=$(cpu_ticks "$REDIS_PID")
  timeout 300 redis-benchmark -s "$REDIS_SOCK" -t set -d "$size" -n "$n" -c "$c" -P 1 \
    -r 1000000000 --csv >"$f" 2>"$f.err"
  echo $? >"$f.rc"
  t1=$(cpu_ticks "$REDIS_PID")
  echo "$(((t1 - t0) * 1000000 / CLK_TCK)) $n" >"$f.cpu"
  rewrites "$f"
}

# jget FILE EXPR: a value from a cmtp-bench JSON file (python expression over j), or empty.
jget() {
  python3 -c 'import json,sys
try:
    j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))
except Exception:
    pass' "$1" "$2" 2>/dev/null
}

# median_of FILES... with EXPR in $JEXPR: the median of a value over several cmtp-bench runs.
median_of() {
  python3 -c 'import json,sys,statistics
vals = []
for p in sys.argv[2:]:
    try:
        j = json.load(open(p)); v = eval(sys.argv[1])
        if v: vals.append(float(v))
    except Exception:
        pass
print(statistics.median(vals) if vals else "")' "$JEXPR" "$@"
}

bytes_of() {
  case "$1" in
  *k) echo $((${1%k} * 1024)) ;;
  *m) echo $((${1%m} * 1048576)) ;;
  *) echo "$1" ;;
  esac
}

# perf_profile NAME SECONDS PIDS: cpu-clock samples of the comma-separated PIDS for SECONDS, in
# the background (PERF_PID); perf_report NAME writes the breakdowns the report quotes.
HAVE_PERF=0
if [ "$PROFILE" -eq 1 ] && command -v perf >/dev/null &&
  perf record -e cpu-clock -o "$W/perf.probe" -- true >/dev/null 2>&1; then
  HAVE_PERF=1
fi
perf_profile() {
  perf record -e cpu-clock -F 1999 -p "$3" -o "$R/profile_$1.data" -- sleep "$2" \
    >/dev/null 2>&1 &
  PERF_PID=$!
}
perf_report() {
  wait "$PERF_PID" 2>/dev/null
  PERF_PID=
  perf report -i "$R/profile_$1.data" --stdio --no-children --sort comm,dso -q \
    >"$R/profile_$1.dso" 2>/dev/null
  perf report -i "$R/profile_$1.data" --stdio --no-children --sort comm,dso,sym -q \
    2>/dev/null | head -n 400 >"$R/profile_$1.sym"
  rm -f "$R/profile_$1.data"
}

# --- setup -------------------------------------------------------------------------------------
log "work folder $W, output $OUT, $RUNS run(s) of each measurement"
meta mode "$([ "$QUICK" -eq 1 ] && echo quick || echo full)"
meta runs "$RUNS"
meta duration_s "$DUR"
meta warmup_s "$WARM"
meta conns "$(for s in $SIZES; do printf '%s:%s ' "$s" "$(conns_for "$s")"; done)"
meta pc_conns "$PC_CONNS"
meta hs_conns "$HS_CONNS"
meta idle_n "$IDLE_N"
meta idle_hold_s "$IDLE_HOLD"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta nproc "$NPROC"
meta kernel "$(uname -r)"
meta cpu "$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//')"
meta mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta commit "$(git -C "$TOP" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$TOP" status --porcelain 2>/dev/null | grep -q . && echo ' (working tree with changes)')"
meta redis_version "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
meta postfix_version "$(postconf -d -h mail_version 2>/dev/null || echo none)"
meta boringssl "$(dpkg-query -W -f '${Package} ${Version}' android-libboringssl 2>/dev/null || echo unknown)"
meta fs "$(df -T "$W" | awk 'NR == 2 {print $1 " (" $2 ")"}')"
meta workers_default "$NPROC"
meta workers_list "$(echo $WORKERS)"

bash "$TOP/scripts/gen-certs.sh" "$W/tls" localhost >/dev/null || exit 3
CMTP_PORT=$(free_port)
PF_PORT=$(free_port)
meta cert "Ed25519 leaf (scripts/gen-certs.sh), same certificate and key for cmtpd and Postfix"

# The private Postfix starts in the background (postfix-script takes several seconds).
if [ -n "$ONLY" ]; then
  meta postfix_missing "not started (--only $ONLY)"
elif pf_available; then
  if pf_setup "$PF" "$PF_PORT" "$W/tls/server.crt" "$W/tls/server.key" 100; then
    pf_start "$PF"
    PF_ON=1
  fi
else
  meta postfix_missing "needs root, /usr/sbin/postfix and a postfix user"
fi

start_redis || exit 3
start_cmtpd "$NPROC" || exit 3

# The negotiated TLS parameters, as a stock OpenSSL client sees them (key exchange, signature).
tls_params() {
  timeout 10 openssl s_client -connect "127.0.0.1:$1" -servername localhost -CAfile "$W/tls/ca.crt" \
    -tls1_3 "${@:2}" </dev/null 2>&1 |
    awk -F': ' '/^Peer signature type/ {s=$2} /^(Server|Negotiated TLS1.3 group|Peer) Temp Key/ {k=$2}
      /^New, / {c=$0} END {sub(/^New, /, "", c); print c "; key exchange " k "; signature " s}'
}
meta tls_cmtpd "$(tls_params "$CMTP_PORT" -alpn cmtp/1)"

# Sections 1-6 are skipped with --only relay (section 7 measures the ingest-only reference
# itself then).
if [ -z "$ONLY" ]; then

# --- 1-2. the crypto floor and full TLS 1.3 handshakes, interleaved ------------------------------
# bssl-tool reports wall time; its own CPU time (cpu_us, from getrusage) is kept too, so that the
# report can take the floor in CPU time, like the server's CPU per handshake, on a shared box.
# Debian's bssl-tool runs its Ed25519 and Curve25519 groups together for any filter naming 25519.
log "crypto floor (bssl-tool speed) and full TLS 1.3 handshakes"
for k in $(seq 1 "$RUNS"); do
  python3 -c 'import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.stdout, end="")
print("cpu_us %d" % ((r.ru_utime + r.ru_stime) * 1e6))' \
    bssl-tool speed -filter 25519 -timeout "$FLOOR_S" >"$R/floor.$k.txt" 2>&1
  cb "$R/hs.$k.json" --handshakes -c "$HS_CONNS" -d "$DUR"
done
if [ "$HAVE_PERF" -eq 1 ]; then
  log "profile: cmtpd during handshakes"
  perf_profile hs "$DUR" "$CMTPD_PID"
  cb "$R/prof_hs_run.json" --handshakes -c "$HS_CONNS" -d "$DUR"
  perf_report hs
fi

if [ "$PF_ON" -eq 1 ]; then
  if pf_wait "$PF" "$PF_PORT"; then
    echo "$PF_MASTER postfix-master" >>"$W/pids.txt"
    meta tls_postfix "$(tls_params "$PF_PORT" -starttls smtp)"
  else
    meta postfix_missing "private Postfix did not start: $(pf_log_tail "$PF")"
    pf_stop "$PF"
    PF_ON=0
  fi
fi

# --- 3. durable messages over persistent sessions, by body size ---------------------------------
# Per repetition, interleaved: cmtpd (fresh Redis), Postfix, then redis-benchmark (fresh Redis)
# sized from cmtpd's rate so that it runs about as long.
for size in $SIZES; do
  bytes=$(bytes_of "$size")
  c=$(conns_for "$size")
  log "durable messages, $size, persistent sessions"
  for k in $(seq 1 "$RUNS"); do
    restart_stack "$NPROC" || continue
    cb "$R/msg_cmtp_$size.$k.json" -c "$c" -w "$WARM" -d "$DUR" --size "$size"
    rewrites "$R/msg_cmtp_$size.$k.json"
    [ "$PF_ON" -eq 0 ] || sb "$R/msg_smtp_$size.$k.json" -c "$c" -w "$WARM" -d "$DUR" --size "$size"
    rate=$(jget "$R/msg_cmtp_$size.$k.json" 'j["msgs_per_s"]')
    # About as many SETs as our run's messages (at least 1 s worth for a fast Redis).
    n=$(python3 -c "import sys; r=float(sys.argv[1] or 0); print(max(int(r * $DUR * 1.5), {'1k': 2000, '64k': 1000}.get('$size', 200)))" "${rate:-0}")
    restart_stack "$NPROC" || continue
    rb "$R/redis_$size.$k.csv" "$bytes" "$n" "$c"
    if [ "$size" = 1k ]; then
      # Redis with one client: no other write shares its fsync (the unloaded latency).
      rb "$R/redis1_$size.$k.csv" "$bytes" "$([ "$QUICK" -eq 1 ] && echo 200 || echo 1000)" 1
    fi
  done
  # Redis commands per message: an exact number of messages after RESETSTAT.
  restart_stack "$NPROC" && {
    case "$size" in 1k) m=50 ;; 64k) m=25 ;; *) m=10 ;; esac
    rcli config resetstat >/dev/null
    cb "$R/cmdstats_run_$size.json" -c 4 -m "$m" --size "$size"
    echo "msgs $((4 * m))" >"$R/cmdstats_$size.txt"
    echo "aof_bytes $(du -sb "$REDIS_DIR" | cut -f1)" >>"$R/cmdstats_$size.txt"
    echo "body_bytes $((4 * m * bytes))" >>"$R/cmdstats_$size.txt"
    rcli info commandstats >>"$R/cmdstats_$size.txt"
  }
done
if [ "$HAVE_PERF" -eq 1 ]; then
  for size in 1k 1m; do
    log "profile: cmtpd and redis-server, $size messages"
    restart_stack "$NPROC" && {
      perf_profile "msg$size" "$DUR" "$CMTPD_PID,$REDIS_PID"
      cb "$R/prof_msg${size}_run.json" -c "$(conns_for "$size")" -d "$DUR" --size "$size"
      perf_report "msg$size"
    }
  done
fi

# --- 4. one connection per message -------------------------------------------------------------
log "one connection per message, 1k"
for k in $(seq 1 "$RUNS"); do
  restart_stack "$NPROC" || continue
  cb "$R/pc_cmtp.$k.json" --per-conn -c "$PC_CONNS" -w "$WARM" -d "$DUR" --size 1k
  [ "$PF_ON" -eq 0 ] || sb "$R/pc_smtp.$k.json" --per-conn -c "$PC_CONNS" -w "$WARM" -d "$DUR" --size 1k
done

# --- 5. latency to the durable ack at 50 % and 90 % of our measured maximum (open loop) --------
JEXPR='j["msgs_per_s"] if j["errors"]["total"] == 0 else 0'
MAX=$(median_of "$R"/msg_cmtp_1k.*.json)
meta max_1k "$MAX"
if [ -n "$MAX" ]; then
  log "latency, open loop at 50 % and 90 % of $MAX msg/s"
  for k in $(seq 1 "$RUNS"); do
    for pct in 50 90; do
      rate=$(python3 -c "print(max(1, round($MAX * $pct / 100)))")
      restart_stack "$NPROC" || continue
      # --timeout 5: an open-loop run whose last arrivals found no free session otherwise waits
      # the default 30 s step limit before it ends; every reply here takes milliseconds.
      cb "$R/lat$pct.$k.json" --rate "$rate" -c 64 -w "$WARM" -d "$DUR" --size 1k --timeout 5 \
        --hist "$R/lat$pct.$k.hist"
    done
  done
fi

# --- 6. RSS per idle TLS connection --------------------------------------------------------------
log "idle TLS connections: $IDLE_N"
for k in $(seq 1 "$RUNS"); do
  restart_stack "$NPROC" || continue
  cb "$R/idle.$k.json" --idle "$IDLE_N" --idle-hold "$IDLE_HOLD"
done

fi # [ -z "$ONLY" ]

# --- 7. relay end to end vs ingest only ---------------------------------------------------------
# measure_relay: ingest -> delivery over LMTP to a sink on 127.0.0.1, compared with ingest alone
# (1 KiB, persistent sessions). The sink (cmtp-lmtp-sink, bench/lmtp_sink_main.c: one thread,
# epoll; the Python one below only when that program is missing) answers every recipient 250 and
# writes "wall-time delivered-count" every 0.1 s; cmtpd runs with [delivery] mode = lmtp towards
# it; the closed loop ingests for DUR seconds after the warm-up while cmtpd delivers. The end-to-end rate
# is the number of messages the sink received during the measured interval over its length: what
# flows through while ingest runs (when delivery is slower, the backlog grows and the end-to-end
# rate is the delivery rate). report.py divides it by the ingest-only median (target >= 0.8). A
# run where nothing reached the sink reports "not measured", never a number. The sink's CPU is
# kept (relay.K.times): if it is near one core, the sink limits.
RELAY_CONC=${CMTP_BENCH_RELAY_CONCURRENCY:-128}
meta relay_concurrency "$RELAY_CONC"
measure_relay() {
  if [ "$RELAY" -ne 1 ]; then
    echo "not measured (--no-relay)" >"$R/relay.status"
    return 0
  fi
  local k i t0 t1 port s0
  for k in $(seq 1 "$RUNS"); do
    if [ -n "$ONLY" ]; then
      # The ingest-only reference, measured just before each relay run ([delivery] enabled =
      # no: nothing is claimed or delivered).
      restart_stack "$NPROC" &&
        cb "$R/msg_cmtp_1k.$k.json" -c "$(conns_for 1k)" -w "$WARM" -d "$DUR" --size 1k
    fi
    port=$(free_port)
    if [ -x "$B/cmtp-lmtp-sink" ]; then
      "$B/cmtp-lmtp-sink" -p "$port" -o "$R/relay.$k.count" 2>"$R/relay.$k.sink.err" &
    else
      [ "$k" -gt 1 ] || log "note: $B/cmtp-lmtp-sink missing: the Python LMTP sink is used"
      python3 - "$port" "$R/relay.$k.count" <<'PY' &
import asyncio, os, signal, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
count = 0
async def session(r, w):
    global count
    w.write(b"220 sink LMTP\r\n")
    rcpts = 0
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            cmd = line[:4].upper()
            if cmd == b"LHLO":
                w.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif cmd == b"MAIL":
                rcpts = 0
                w.write(b"250 2.1.0 ok\r\n")
            elif cmd == b"RCPT":
                rcpts += 1
                w.write(b"250 2.1.5 ok\r\n")
            elif cmd == b"DATA":
                w.write(b"354 go\r\n")
                await w.drain()
                while (await r.readline()) not in (b".\r\n", b""):
                    pass
                count += 1
                w.write(b"250 2.0.0 delivered\r\n" * max(rcpts, 1))
            elif cmd == b"QUIT":
                w.write(b"221 2.0.0 bye\r\n")
                await w.drain()
                break
            else:
                w.write(b"250 2.0.0 ok\r\n")
            await w.drain()
    except ConnectionError:
        pass
    w.close()
async def dump():
    with open(out, "w", buffering=1) as f:
        while True:
            f.write("%.3f %d\n" % (time.time(), count))
            await asyncio.sleep(0.1)
async def main():
    srv = await asyncio.start_server(session, "127.0.0.1", port, backlog=256)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: os._exit(0))
    await asyncio.gather(srv.serve_forever(), dump())
asyncio.run(main())
PY
    fi
    SINK_PID=$!
    echo "$SINK_PID lmtp-sink" >>"$W/pids.txt"
    for i in $(seq 1 100); do tcp_up "$port" && break; sleep 0.05; done
    # The provider's store is one destination: a local LMTP store is configured with a higher
    # per-destination concurrency than the polite default of 20 meant for remote next hops (as
    # Postfix operators raise lmtp_destination_concurrency_limit). The value is in the report.
    if ! restart_stack "$NPROC" "mode = lmtp
lmtp = 127.0.0.1:$port
concurrency_per_dest = $RELAY_CONC"; then
      stop_pid "$SINK_PID"
      SINK_PID=
      continue
    fi
    s0=$(cpu_ticks "$SINK_PID")
    t0=$(date +%s.%N)
    cb "$R/relay.$k.json" -c "$(conns_for 1k)" -w "$WARM" -d "$DUR" --size 1k
    t1=$(date +%s.%N)
    sleep 0.2
    # start of the bench, its warm-up and duration, its end, the sink's CPU (µs) meanwhile
    echo "$t0 $WARM $DUR $t1 $((($(cpu_ticks "$SINK_PID") - s0) * 1000000 / CLK_TCK))" >"$R/relay.$k.times"
    stop_pid "$SINK_PID"
    SINK_PID=
  done
  relay_cmdstats
  echo "measured" >"$R/relay.status"
}

# relay_cmdstats: Redis commands per relayed message: exactly 200 messages ingested and
# delivered to the sink after RESETSTAT (ingest and delivery together), as for the ingest runs.
relay_cmdstats() {
  local port i n
  [ -x "$B/cmtp-lmtp-sink" ] || return 0
  port=$(free_port)
  "$B/cmtp-lmtp-sink" -p "$port" -o "$R/relay_cmdstats.count" 2>"$R/relay_cmdstats.sink.err" &
  SINK_PID=$!
  echo "$SINK_PID lmtp-sink" >>"$W/pids.txt"
  for i in $(seq 1 100); do tcp_up "$port" && break; sleep 0.05; done
  if restart_stack "$NPROC" "mode = lmtp
lmtp = 127.0.0.1:$port
concurrency_per_dest = $RELAY_CONC"; then
    rcli config resetstat >/dev/null
    cb "$R/relay_cmdstats_run.json" -c 4 -m 50 --size 1k
    n=0
    for i in $(seq 1 100); do
      n=$(tail -n 1 "$R/relay_cmdstats.count" 2>/dev/null | awk '{print $2}')
      [ "${n:-0}" -ge 200 ] && break
      sleep 0.1
    done
    sleep 0.5 # the completions after the sink's replies
    if [ "${n:-0}" -ge 200 ]; then
      {
        echo "msgs 200"
        echo "aof_bytes $(du -sb "$REDIS_DIR" | cut -f1)"
        echo "body_bytes $((200 * 1024))"
        rcli info commandstats
      } >"$R/cmdstats_relay.txt"
    fi
  fi
  stop_pid "$SINK_PID"
  SINK_PID=
}
log "relay end to end: ingest and delivery over LMTP to a sink"
measure_relay
if [ -n "$ONLY" ]; then
  stop_cmtpd
  stop_redis
  # The figures report.py would quote, from the same raw files.
  python3 -c 'import sys
sys.path.insert(0, sys.argv[1])
import report
raw = report.Raw(sys.argv[2])
rel, why = report.relay(raw)
k1 = report.Stat(raw.series("msg_cmtp_1k", lambda j: j["msgs_per_s"]))
if rel is None:
    print("relay end to end: %s; ingest only %s msgs/s" % (why, k1.fmt()))
    sys.exit(1)
r = rel["e2e"].med / k1.med if k1.med else None
print("ingest only:              %s msgs/s (median and spread of %d runs)" % (k1.fmt(), raw.runs))
print("relay end to end:         %s msgs/s delivered to the LMTP sink" % rel["e2e"].fmt())
print("ingest during relay runs: %s msgs/s" % rel["ingest"].fmt())
print("sink CPU:                 %s %% of one core" % rel["sink_cpu_pct"].fmt(0))
print("backlog at the end:       %s messages" % rel["backlog"].fmt(0))
print("ratio relay / ingest:     %s (target >= 0.8)" % (report.num(r) if r else "-"))' \
    "$TOP/bench" "$R"
  exit $?
fi

# --- 8. scaling: cmtpd workers --------------------------------------------------------------------
log "scaling: workers $(echo $WORKERS), 1k"
for w in $WORKERS; do
  [ "$w" -le "$NPROC" ] || log "note: $w workers on $NPROC CPUs"
done
for k in $(seq 1 "$RUNS"); do
  for w in $WORKERS; do
    restart_stack "$w" || continue
    cb "$R/scale_w$w.$k.json" -c "$(conns_for 1k)" -w "$WARM" -d "$DUR" --size 1k
  done
done

stop_cmtpd
stop_redis
[ "$PF_ON" -eq 0 ] || { pf_stop "$PF"; PF_ON=0; }
# What cmtpd's delivery engine did in all runs (the relay runs deliver; the others should not).
meta log_delivered "$(grep -c ' event=delivered ' "$W/cmtpd.log")"
meta log_deferred "$(grep -c ' event=deferred ' "$W/cmtpd.log")"
meta log_accepted "$(grep -c ' event=accepted ' "$W/cmtpd.log")"
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta runtime_s "$(($(date +%s) - T0))"
if [ "$HAVE_PERF" -eq 1 ]; then
  # The address range of BoringSSL's curve25519.c in libcrypto (from its first exported
  # ED25519_/X25519 symbol to the next exported symbol): samples there are X25519 and Ed25519.
  lib=$(ldd "$B/cmtpd" | awk '/libcrypto/ {print $3}')
  [ -n "$lib" ] && nm -D --defined-only "$lib" | sort |
    awk '/ (ED25519_|X25519)/ {if (lo == "") lo = $1; hi = NR} {a[NR] = $1} END {print lo, a[hi + 1]}' \
      >"$R/curve25519.range"
  meta libcrypto "$lib"
fi

# --- report ------------------------------------------------------------------------------------
log "report"
python3 "$TOP/bench/report.py" --raw "$R" --out "$OUT" || exit 1
if command -v gnuplot >/dev/null; then
  gnuplot -e "datadir='$R'; outfile='$OUT/BENCHMARKS.png'" "$TOP/bench/plot.gp" 2>"$W/gnuplot.err" ||
    { echo "bench/run.sh: gnuplot failed: $(head -n 5 "$W/gnuplot.err")" >&2; exit 1; }
fi
log "done: $OUT/BENCHMARKS.md ($(($(date +%s) - T0)) s)"
