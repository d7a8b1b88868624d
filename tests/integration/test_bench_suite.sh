#!/usr/bin/env bash
# tests/integration/test_bench_suite.sh — `make bench` in its quick mode (bench/run.sh --quick):
# the whole comparison runs once (cmtpd, private redis-server and Postfix, redis-benchmark,
# bssl-tool), and the generated BENCHMARKS.md, BENCHMARKS.json and BENCHMARKS.png are checked
# for content and form, and every process the bench started for being gone. It proves that the
# bench works; the figures of a quick run are not checked against any target (never a timed test).
source "$(dirname "$0")/lib.sh"

# The bench is about the release binaries; a sanitizer build only makes it slower.
if ldd "$B/cmtpd" 2>/dev/null | grep -q 'lib[at]san'; then
  echo "skip: $B is a sanitizer build (the bench suite runs against the release build)"
  echo "0 passed, 0 failed"
  exit 0
fi

chmod 711 "$T" # the private Postfix's daemons (user postfix) must reach the work folder inside
OUT=$T/out
TMPDIR=$T timeout 300 bash "$TOP/bench/run.sh" --quick --keep --build "$B" --out "$OUT" \
  >"$T/run.out" 2>"$T/run.err"
RC=$?
check "bench/run.sh --quick exits 0 (stderr: $(tail -n 2 "$T/run.err" | tr '\n' ' '))" [ "$RC" -eq 0 ]
WORK=$(ls -d "$T"/cmtp-bench-run.* 2>/dev/null | head -n 1)
check "work folder kept under TMPDIR" [ -n "$WORK" ]

# Every process the bench started (pids.txt: pid and name) is gone.
left=
if [ -n "$WORK" ] && [ -f "$WORK/pids.txt" ]; then
  while read -r pid name; do
    c=$(cat "/proc/$pid/comm" 2>/dev/null)
    case "$name:$c" in
    cmtpd:cmtpd | redis-server:redis-server | postfix-master:master | lmtp-sink:python3) left="$left $name[$pid]" ;;
    esac
  done <"$WORK/pids.txt"
  check "pids.txt lists cmtpd and redis-server" \
    bash -c 'grep -q " cmtpd$" "$1" && grep -q " redis-server$" "$1"' _ "$WORK/pids.txt"
fi
check "no process left running:${left:- none}" [ -z "$left" ]

check "BENCHMARKS.md written" [ -s "$OUT/BENCHMARKS.md" ]
check "BENCHMARKS.md states machine and conditions" \
  bash -c 'grep -q "CPUs (" "$1" && grep -q "kernel $(uname -r)" "$1" &&
    grep -q "Loopback, VM, flush semantics of the virtual disk unknown" "$1" &&
    grep -q "load average" "$1" && grep -q "Quick mode" "$1"' _ "$OUT/BENCHMARKS.md"
# The results table: the header of BENCH.md plus target columns, 6 cells in every row, every
# metric present.
out=$(python3 - "$OUT/BENCHMARKS.md" <<'PY' 2>&1
import sys
text = open(sys.argv[1], encoding="utf-8").read()
lines = text.splitlines()
try:
    i = lines.index("| metric | ours | reference | ratio | target (issue 6) | met? |")
except ValueError:
    print("FAIL results table header"); sys.exit(0)
print("ok   results table header")
rows = []
for l in lines[i + 2:]:
    if not l.startswith("|"):
        break
    rows.append([c.strip() for c in l.strip().strip("|").split("|")])
print(("ok  " if rows and all(len(r) == 6 for r in rows) else "FAIL") + " every row has 6 cells (%d rows)" % len(rows))
want = ["full TLS 1.3 handshakes/s", "server CPU µs per full handshake", "durable msgs/s, 1 KiB, persistent",
        "durable msgs/s, 64 KiB", "durable msgs/s, 1 MiB", "ingest MiB/s, 1 MiB",
        "one connection per message", "open loop at 50 %", "open loop at 90 %",
        "RSS per idle TLS connection", "relay end to end"]
for w in want:
    print(("ok  " if any(w in r[0] for r in rows) else "FAIL") + " row: " + w)
hs = next((r for r in rows if "per full handshake" in r[0]), None)
print(("ok  " if hs and "crypto floor" in hs[2] and "×" in hs[3] and hs[4] == "≤ 1.30×" and hs[5] in ("yes", "**no**") else "FAIL")
      + " handshake row: floor, ratio, target and verdict")
# The relay row: a measured rate with its ratio and verdict, or "not measured" with no number.
rel = next((r for r in rows if "relay end to end" in r[0]), None)
print(("ok  " if rel and ((rel[1].startswith("not measured") and rel[3] == "—" and rel[5] == "n/a") or
                          ("msgs/s delivered" in rel[1] and "×" in rel[3] and rel[5] in ("yes", "**no**")))
       else "FAIL") + " relay row: measured with a verdict, or not measured without a number")
for h in ("### Server CPU per message", "### Scaling: cmtpd workers", "## What limits it", "![", "BENCHMARKS.png"):
    print(("ok  " if h in text else "FAIL") + " section: " + h)
PY
)
echo "$out"
PASS=$((PASS + $(grep -c '^ok ' <<<"$out")))
FAIL=$((FAIL + $(grep -c '^FAIL' <<<"$out")))

# The JSON summary parses and holds sane figures from real runs.
POSTFIX=0
source "$TOP/bench/postfix.sh"
pf_available && POSTFIX=1
out=$(python3 - "$OUT/BENCHMARKS.json" "$POSTFIX" <<'PY' 2>&1
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print("FAIL BENCHMARKS.json parses (%s)" % e); sys.exit(0)
print("ok   BENCHMARKS.json parses")
postfix = sys.argv[2] == "1"
def med(x):
    return x["median"] if x else None
checks = [
    ("crypto floor: three operations, 5..1000 µs in all",
     lambda: 5 < med(j["crypto_floor_us"]["total"]) < 1000 and all(med(j["crypto_floor_us"][k]) > 0 for k in ("x25519_keygen", "x25519_shared", "ed25519_sign"))),
    ("handshakes/s > 0, cmtpd CPU per handshake above the floor",
     lambda: med(j["handshakes"]["per_s"]) > 0 and med(j["handshakes"]["cmtpd_cpu_us"]) > 0 and j["handshakes"]["cpu_ratio_to_floor"] > 0.5),
    ("msgs/s > 0 for 1k, 64k, 1m with cmtpd and Redis CPU per message",
     lambda: all(med(j["messages"][s]["ours_msgs_per_s"]) > 0 and med(j["messages"][s]["cmtpd_cpu_us_per_msg"]) > 0 and med(j["messages"][s]["redis_cpu_us_per_msg"]) > 0 for s in ("1k", "64k", "1m"))),
    ("Redis SET rate > 0 at every size, ratio computed",
     lambda: all(med(j["messages"][s]["redis_set_per_s"]) > 0 and j["messages"][s]["ratio_redis"] > 0 for s in ("1k", "64k", "1m"))),
    ("1 MiB: ingest and Redis MiB/s, ratio",
     lambda: med(j["messages"]["1m"]["ours_mib_per_s"]) > 0 and med(j["messages"]["1m"]["redis_set_mib_per_s"]) > 0 and j["messages"]["1m"]["ratio_redis_mib"] > 0),
    ("one connection per message: cmtpd msgs/s > 0",
     lambda: med(j["per_conn"]["ours_msgs_per_s"]) > 0),
    ("latency at 50 % and 90 %: p50 <= p99, rates below the max",
     lambda: all(0 < med(j["latency"]["at_%d" % p]["sched_p50_ms"]) <= med(j["latency"]["at_%d" % p]["sched_p99_ms"]) and med(j["latency"]["at_%d" % p]["rate"]) < j["latency"]["max_msgs_per_s"] for p in (50, 90))),
    ("Redis latency reference (p50 <= p99)",
     lambda: 0 < med(j["latency"]["redis_32_clients_ms"]["p50"]) <= med(j["latency"]["redis_32_clients_ms"]["p99"])),
    ("idle: 500 connections open, KiB per connection in 0..1024",
     lambda: med(j["idle"]["open"]) == 500 and 0 < med(j["idle"]["kib_per_conn"]) < 1024),
    ("relay: measured (delivered > 0, ratio) or not measured, saying why",
     lambda: (j["relay"]["status"] == "measured" and med(j["relay"]["e2e_msgs_per_s"]) > 0 and j["relay"]["ratio_ingest"] > 0)
             or (j["relay"]["status"].startswith("not measured") and "e2e_msgs_per_s" not in j["relay"])),
    ("scaling: workers 1 and 2 measured",
     lambda: [s["workers"] for s in j["scaling"]] == [1, 2] and all(med(s["msgs_per_s"]) > 0 for s in j["scaling"])),
    ("targets: each has a verdict or none (relay)",
     lambda: set(j["targets"]) == {"hs_cpu", "k1_postfix", "k1_redis", "m1_redis", "p99_50", "rss_idle", "relay"} and (j["targets"]["relay"]["met"] is None) == (j["relay"]["status"] != "measured")),
    ("machine recorded", lambda: int(j["meta"]["nproc"]) > 0 and j["meta"]["kernel"] and j["meta"]["loadavg_start"]),
]
if postfix:
    checks += [
        ("Postfix msgs/s > 0 at every size and per connection, ratios computed",
         lambda: all(med(j["messages"][s]["postfix_msgs_per_s"]) > 0 and j["messages"][s]["ratio_postfix"] > 0 for s in ("1k", "64k", "1m")) and med(j["per_conn"]["postfix_msgs_per_s"]) > 0),
        ("Postfix used TLS 1.3 with an Ed25519 signature, like cmtpd",
         lambda: "TLSv1.3" in j["meta"]["tls_postfix"] and "ed25519" in j["meta"]["tls_postfix"].lower() and "ed25519" in j["meta"]["tls_cmtpd"].lower()),
    ]
for desc, f in checks:
    try:
        good = bool(f())
    except Exception as e:
        good = False
        desc += " (%r)" % e
    print(("ok  " if good else "FAIL") + " " + desc)
PY
)
echo "$out"
PASS=$((PASS + $(grep -c '^ok ' <<<"$out")))
FAIL=$((FAIL + $(grep -c '^FAIL' <<<"$out")))

# The plot: a PNG of a plausible size whose header gnuplot wrote (1400 x 560).
check "BENCHMARKS.png is a 1400x560 PNG" python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) > 10000, "not a PNG"
w, h = struct.unpack(">II", b[16:24])
assert (w, h) == (1400, 560), (w, h)' "$OUT/BENCHMARKS.png"
check "plot data: throughput rows for 3 sizes, latency histograms end at 1" \
  bash -c '[ $(grep -c "^\"" "$1/raw/throughput.dat") -eq 3 ] && tail -n 1 "$1/raw/lat50.dat" | grep -q " 1.000000$"' _ "$WORK"

# Usage errors are refused before anything starts.
bash "$TOP/bench/run.sh" --bogus >/dev/null 2>&1
check "unknown option: exit 2" [ $? -eq 2 ]

finish
