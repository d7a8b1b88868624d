#!/usr/bin/env python3
# bench/report.py — turns the raw outputs of bench/run.sh (cmtp-bench JSON, redis-benchmark CSV,
# bssl-tool speed lines, perf reports) into BENCHMARKS.md, BENCHMARKS.json and the gnuplot data
# files of bench/plot.gp. It measures nothing and starts nothing; standard library only.
"""usage: report.py --raw DIR --out DIR"""

import argparse
import csv
import glob
import json
import os
import re
import statistics
import sys

# Targets of issue 6: (key, description, comparison, bound).
TARGETS = {
    "hs_cpu": ("server CPU per full TLS 1.3 handshake", "<=", 1.3),
    "k1_postfix": ("durable msgs/s at 1 KiB vs Postfix+STARTTLS", ">=", 10.0),
    "k1_redis": ("durable msgs/s at 1 KiB vs Redis' durable SET rate", ">=", 0.5),
    "m1_redis": ("1 MiB ingest MiB/s vs Redis' durable write MiB/s", ">=", 0.7),
    "p99_50": ("p99 latency to durable ack at 50 % of our max vs Redis' p99", "<=", 3.0),
    "rss_idle": ("RSS per idle TLS connection at 10k connections (KiB)", "<=", 16.0),
    "relay": ("relay end to end vs ingest only", ">=", 0.8),
}
SIZES = [("1k", "1 KiB", 1024), ("64k", "64 KiB", 65536), ("1m", "1 MiB", 1048576)]


# --- small statistics --------------------------------------------------------------------------

class Stat:
    """Median and spread of the values of several runs (None values are failed runs)."""

    def __init__(self, values):
        self.all = list(values)  # per repetition, None where the run failed
        self.values = [v for v in values if v is not None]
        self.failed = len(values) - len(self.values)

    @property
    def ok(self):
        return bool(self.values)

    @property
    def med(self):
        return statistics.median(self.values) if self.values else None

    def fmt(self, digits=None, unit=""):
        if not self.values:
            return "not measured"
        f = lambda v: num(v, digits)
        s = f(self.med) + unit
        if len(self.values) > 1:
            s += " (%s..%s)" % (f(min(self.values)), f(max(self.values)))
        if self.failed:
            s += " [%d run(s) failed]" % self.failed
        return s

    def js(self):
        if not self.values:
            return None
        return {"median": self.med, "min": min(self.values), "max": max(self.values),
                "runs": self.values, "failed_runs": self.failed}


def num(v, digits=None):
    """A figure with sensible precision: 3 significant digits below 100, integers above."""
    if v is None:
        return "—"
    if digits is not None:
        return "%.*f" % (digits, v)
    a = abs(v)
    if a >= 100:
        return "%d" % round(v)
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.3f" % v


def ratio_stat(ours, ref, pairs=None):
    """The median of the per-repetition ratios (repetition k of ours against repetition k of
    the reference, both successful), with their spread; the ratio of the medians when no
    repetition pairs up."""
    if pairs is None:
        pairs = list(zip(ours.all, ref.all))
    rs = [a / b for a, b in pairs if a is not None and b]
    if rs:
        spread = " (%s..%s)" % (num(min(rs)), num(max(rs))) if len(rs) > 1 else ""
        return statistics.median(rs), spread
    if ours.med is None or ref.med is None or ref.med == 0:
        return None, ""
    return ours.med / ref.med, ""


def met(key, value):
    if value is None:
        return "n/a"
    _, op, bound = TARGETS[key]
    good = value <= bound if op == "<=" else value >= bound
    return "yes" if good else "**no**"


def target_text(key):
    _, op, bound = TARGETS[key]
    return "%s %s" % ("≤" if op == "<=" else "≥", num(bound)) + ("" if key == "rss_idle" else "×")


# --- raw inputs --------------------------------------------------------------------------------

class Raw:
    def __init__(self, d):
        self.d = d
        self.meta = {}
        p = os.path.join(d, "meta.tsv")
        if os.path.exists(p):
            for line in open(p, encoding="utf-8"):
                k, _, v = line.rstrip("\n").partition("\t")
                self.meta[k] = v
        self.runs = int(self.meta.get("runs", "1") or 1)

    def path(self, name):
        return os.path.join(self.d, name)

    def bench(self, name, k):
        """A cmtp-bench JSON result, or None when the run failed (exit status, errors)."""
        p = self.path("%s.%d.json" % (name, k))
        try:
            j = json.load(open(p))
        except Exception:
            return None
        rc = read_int(p + ".rc")
        if rc != 0 or j.get("errors", {}).get("total", 1) != 0:
            return None
        return j

    def bench_any(self, name, k):
        """The JSON even of a failed run (for its first error)."""
        try:
            return json.load(open(self.path("%s.%d.json" % (name, k))))
        except Exception:
            return None

    def series(self, name, fn):
        out = []
        for k in range(1, self.runs + 1):
            j = self.bench(name, k)
            try:
                out.append(fn(j) if j is not None else None)
            except (KeyError, TypeError, IndexError):
                out.append(None)
        return out

    def failure(self, name):
        """First error text of the failed runs of a measurement, if any."""
        for k in range(1, self.runs + 1):
            j = self.bench_any(name, k)
            if j is not None and j.get("first_error"):
                return j["first_error"]
            if j is None and os.path.exists(self.path("%s.%d.json.err" % (name, k))):
                t = open(self.path("%s.%d.json.err" % (name, k)), errors="replace").read().strip()
                if t:
                    return t.splitlines()[-1][:200]
        return ""

    def redis(self, name, k):
        """redis-benchmark CSV of one run: dict with rps, p50, p99 (ms) and cpu_us_per_op."""
        p = self.path("%s.%d.csv" % (name, k))
        if read_int(p + ".rc") != 0:
            return None
        try:
            rows = list(csv.DictReader(open(p)))
        except Exception:
            return None
        row = next((r for r in rows if r.get("test", "").upper().startswith("SET")), None)
        if row is None:
            return None
        out = {"rps": float(row["rps"])}
        for key in ("p50_latency_ms", "p99_latency_ms", "avg_latency_ms", "max_latency_ms"):
            if key in row:
                out[key] = float(row[key])
        try:
            cpu, n = open(p + ".cpu").read().split()
            out["cpu_us_per_op"] = float(cpu) / float(n)
        except Exception:
            pass
        return out

    def redis_series(self, name, fn):
        out = []
        for k in range(1, self.runs + 1):
            r = self.redis(name, k)
            out.append(fn(r) if r is not None and (fn(r) is not None) else None)
        return out


def read_int(p):
    try:
        return int(open(p).read().strip())
    except Exception:
        return None


def server(j, name):
    """The entry of j["servers"] for process NAME (cmtpd, redis-server, or a tree)."""
    for s in j.get("servers", []):
        if s.get("name", "").startswith(name):
            return s
    return None


def cpu_of(j, name):
    s = server(j, name)
    return s["cpu_us_per_op"] if s and s.get("cpu_ok") else None


# --- measurements ------------------------------------------------------------------------------

def floor(raw):
    """CPU µs per operation of the three crypto operations of a server-side full handshake.
    bssl-tool prints wall time; each run's figures are scaled by the tool's CPU time over the
    sum of its measured intervals (at most 1), so that a busy machine does not inflate them."""
    ops = {"x25519_keygen": r"Curve25519 base-point multiplication",
           "x25519_shared": r"Curve25519 arbitrary point multiplication",
           "ed25519_sign": r"Ed25519 signing"}
    per = {k: [] for k in ops}
    factors = []
    for k in range(1, raw.runs + 1):
        p = raw.path("floor.%d.txt" % k)
        text = open(p).read() if os.path.exists(p) else ""
        wall = sum(int(t) for t in re.findall(r"Did \d+ .+? operations in (\d+)us", text))
        m = re.search(r"^cpu_us (\d+)$", text, re.M)
        f = min(1.0, int(m.group(1)) / wall) if m and wall else None
        factors.append(f)
        for key, name in ops.items():
            m = re.search(r"Did (\d+) %s operations in (\d+)us \(([\d.]+) ops/sec\)" % name, text)
            per[key].append(int(m.group(2)) / int(m.group(1)) * f if m and f else None)
    total = [None if None in t else sum(t) for t in zip(*per.values())]
    return {k: Stat(v) for k, v in per.items()}, Stat(total), Stat(factors)


def profile_summary(raw, name, comm):
    """Shares (% of COMM's samples) by shared object from `perf report --sort comm,dso`, and the
    share of libcrypto samples inside curve25519.c's address range."""
    p = raw.path("profile_%s.dso" % name)
    if not os.path.exists(p):
        return None
    shares = {}
    for line in open(p, errors="replace"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(.+?)\s*$", line)
        if m and m.group(2) == comm:
            shares[m.group(3)] = shares.get(m.group(3), 0.0) + float(m.group(1))
    total = sum(shares.values())
    if total <= 0:
        return None
    out = {"dso": {k: 100.0 * v / total for k, v in shares.items()}}
    rng = raw.path("curve25519.range")
    symp = raw.path("profile_%s.sym" % name)
    if os.path.exists(rng) and os.path.exists(symp):
        try:
            lo, hi = (int(x, 16) for x in open(rng).read().split())
        except ValueError:
            lo = hi = None
        if lo is not None:
            names = ("X25519", "ED25519", "x25519", "ed25519", "fe_", "ge_")
            c = 0.0
            for line in open(symp, errors="replace"):
                m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[.\]\s+(\S+)", line)
                if not m or m.group(2) != comm or "libcrypto" not in m.group(3):
                    continue
                sym = m.group(4)
                inside = sym.startswith(names)
                if sym.startswith("0x"):
                    inside = lo <= int(sym, 16) < hi
                if inside:
                    c += float(m.group(1))
            out["curve25519"] = 100.0 * c / total
    top = []
    if os.path.exists(symp):
        for line in open(symp, errors="replace"):
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$", line)
            if m and m.group(2) == comm and not m.group(5).startswith("0x"):
                top.append((100.0 * float(m.group(1)) / total, m.group(3), m.group(5)))
    out["top"] = top[:6]
    return out


def dso_text(prof):
    items = sorted(prof["dso"].items(), key=lambda kv: -kv[1])
    parts = []
    for dso, pct in items[:6]:
        label = {"[kernel.kallsyms]": "kernel", "[unknown]": "unknown"}.get(dso, dso)
        if label.startswith("redis-"):
            label = "redis binary"  # Debian's redis-server is a link to redis-check-rdb
        parts.append("%s %.0f %%" % (label, pct))
    return ", ".join(parts)


def cpu_split(raw, name):
    """The machine's CPU time over the runs of |name| (from /proc/stat before and after each),
    as Stats of percentages: busy (user, system, irq, softirq), iowait (idle while a disk
    request, here Redis' fsync, is outstanding) and idle."""
    busy, iow, idle = [], [], []
    for k in range(1, raw.runs + 1):
        try:
            a = [int(x) for x in open(raw.path("%s.%d.json.stat0" % (name, k))).read().split()[1:]]
            b = [int(x) for x in open(raw.path("%s.%d.json.stat1" % (name, k))).read().split()[1:]]
        except (OSError, ValueError):
            continue
        d = [y - x for x, y in zip(a, b)]
        t = sum(d[:8])
        if len(d) < 8 or t <= 0:
            continue
        busy.append(100.0 * (d[0] + d[1] + d[2] + d[5] + d[6]) / t)
        iow.append(100.0 * d[4] / t)
        idle.append(100.0 * d[3] / t)
    return {"busy": Stat(busy), "iowait": Stat(iow), "idle": Stat(idle)}


def cpu_split_text(cs):
    return "%s %% busy, %s %% waiting for the disk (iowait), %s %% idle" % (
        cs["busy"].fmt(0), cs["iowait"].fmt(0), cs["idle"].fmt(0))


def cmdstats(raw, size):
    p = raw.path("cmdstats_%s.txt" % size)
    if not os.path.exists(p):
        return None
    msgs = aof = body = None
    cmds = {}
    for line in open(p):
        line = line.strip()
        if line.startswith("msgs "):
            msgs = int(line.split()[1])
        elif line.startswith("aof_bytes "):
            aof = int(line.split()[1])
        elif line.startswith("body_bytes "):
            body = int(line.split()[1])
        m = re.match(r"cmdstat_(\S+?):calls=(\d+),usec=(\d+)", line)
        if m:
            cmds[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    if not msgs:
        return None
    ignore = {"config", "info", "ping", "command", "client", "hello", "select", "auth"}
    per = {c: (n / msgs, us / msgs) for c, (n, us) in cmds.items() if c.split("|")[0] not in ignore}
    return {"msgs": msgs, "per_msg": per, "aof_per_msg": aof / msgs if aof else None,
            "body_per_msg": body / msgs if body else None}


def cmdstats_text(cs):
    items = sorted(cs["per_msg"].items(), key=lambda kv: -kv[1][0])
    calls = sum(v[0] for v in cs["per_msg"].values())
    usec = sum(v[1] for v in cs["per_msg"].values())
    s = "%.1f Redis commands per message (%s), %.0f µs of command time per message" % (
        calls, ", ".join("%s %.1f" % (c, v[0]) for c, v in items[:6]), usec)
    if cs.get("aof_per_msg"):
        s += "; the Redis data folder (AOF) grew %s octets per message of %s body octets" % (
            num(cs["aof_per_msg"]), num(cs["body_per_msg"]))
    return s


def relay(raw):
    """End-to-end rate of the relay runs: messages the LMTP sink received during the measured
    interval of the load (start + warm-up .. + duration) over its length. Returns a dict of
    Stats (e2e, ingest during the run, sink CPU share) or None, and a reason."""
    p = raw.path("relay.status")
    st = open(p).read().strip() if os.path.exists(p) else ""
    if st != "measured":
        return None, st or "not measured"
    e2e, ingest, sink_cpu, backlog, cost = [], [], [], [], []
    for k in range(1, raw.runs + 1):
        j = raw.bench("relay", k)
        try:
            t0, warm, dur, t1, cpu_us = (float(x) for x in open(raw.path("relay.%d.times" % k)).read().split())
            series = [tuple(float(x) for x in l.split()) for l in open(raw.path("relay.%d.count" % k))
                      if len(l.split()) == 2]
        except (OSError, ValueError):
            series = []
        if j is None or len(series) < 2:
            e2e.append(None)
            ingest.append(None)
            continue

        def at(t):
            """Delivered count at wall time t, interpolated between the sink's samples."""
            prev = series[0]
            for cur in series:
                if cur[0] >= t:
                    if cur[0] == prev[0]:
                        return cur[1]
                    return prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / (cur[0] - prev[0])
                prev = cur
            return series[-1][1]
        a, b = t0 + warm, t0 + warm + dur
        delivered = at(b) - at(a)
        e2e.append(delivered / dur if delivered > 0 else None)
        ingest.append(j["msgs_per_s"])
        sink_cpu.append(100.0 * cpu_us / 1e6 / max(t1 - t0, 1e-3))
        backlog.append(j["msgs"] - delivered)
        # server CPU over the measured interval, with what was ingested and delivered in it
        sv = {n: server(j, n) for n in ("cmtpd", "redis-server")}
        if delivered > 0 and all(v and v.get("cpu_ok") for v in sv.values()):
            cost.append((sv["cmtpd"]["cpu_us"], sv["redis-server"]["cpu_us"], j["msgs"], delivered))
    s = Stat(e2e)
    if not s.ok:
        return None, "not measured: no message reached the LMTP sink during the measured interval"
    return {"e2e": s, "ingest": Stat(ingest), "sink_cpu_pct": Stat(sink_cpu),
            "backlog": Stat(backlog), "cost": cost}, ""


def failed_runs(raw):
    """One line per run that failed (exit status or errors) and was left out of the medians."""
    out = []
    for p in sorted(glob.glob(os.path.join(raw.d, "*.json"))):
        base = os.path.basename(p)
        m = re.match(r"(.+)\.(\d+)\.json$", base)
        if not m:
            continue
        rc = read_int(p + ".rc")
        try:
            j = json.load(open(p))
        except Exception:
            j = None
        if j is None:
            err = ""
            if os.path.exists(p + ".err"):
                err = open(p + ".err", errors="replace").read().strip().splitlines()[-1:] or [""]
                err = err[0][:200]
            out.append("%s, run %s: no result (exit status %s) %s" % (m.group(1), m.group(2), rc, err))
            continue
        e = j.get("errors", {})
        if rc != 0 or e.get("total", 0):
            classes = ", ".join("%s %d" % (k, v) for k, v in e.items() if k != "total" and v)
            out.append("%s, run %s: %d of %d operations failed (%s), first: `%s`" % (
                m.group(1), m.group(2), e.get("total", 0), e.get("total", 0) + j.get("msgs", 0)
                + (j.get("handshakes", 0) if j.get("mode") == "handshakes" else 0),
                classes or "exit status %s" % rc, j.get("first_error", "")))
    for p in sorted(glob.glob(os.path.join(raw.d, "*.csv"))):
        rc = read_int(p + ".rc")
        if rc not in (0, None):
            out.append("%s: redis-benchmark exit status %s" % (os.path.basename(p), rc))
    return out


# --- the report --------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    raw = Raw(a.raw)
    M = raw.meta
    conns_by = dict(x.split(":") for x in M.get("conns", "").split() if ":" in x)
    c1k = conns_by.get("1k", "?")
    quick = M.get("mode") == "quick"
    res = {"meta": M, "targets": {}}
    rows = []      # (metric, ours, reference, ratio, target, met)
    notes = []     # "what limits it" paragraphs (data only)
    plot = {}

    def target(key, value, ours_txt=""):
        res["targets"][key] = {"what": TARGETS[key][0], "value": value,
                               "bound": TARGETS[key][2], "op": TARGETS[key][1],
                               "met": None if value is None else met(key, value) == "yes"}
        return target_text(key), met(key, value)

    # 1-2. crypto floor and handshakes
    fl_parts, fl, fl_factor = floor(raw)
    hs_rate = Stat(raw.series("hs", lambda j: j["handshakes_per_s"]))
    hs_cpu = Stat(raw.series("hs", lambda j: cpu_of(j, "cmtpd")))
    hs_client = Stat(raw.series("hs", lambda j: j["bench_cpu_us_per_op"]))
    res["crypto_floor_us"] = {k: v.js() for k, v in fl_parts.items()}
    res["crypto_floor_us"]["total"] = fl.js()
    res["crypto_floor_us"]["cpu_over_wall"] = fl_factor.js()
    res["handshakes"] = {"per_s": hs_rate.js(), "cmtpd_cpu_us": hs_cpu.js(),
                         "client_cpu_us": hs_client.js()}
    rows.append(("full TLS 1.3 handshakes/s (%s concurrent)" % M.get("hs_conns", "?"),
                 hs_rate.fmt(), "—", "—", "—", "—"))
    r, sp = ratio_stat(hs_cpu, fl)
    floor_txt = "crypto floor %s µs (X25519 keygen %s + X25519 shared %s + Ed25519 sign %s)" % (
        fl.fmt(1), num(fl_parts["x25519_keygen"].med, 1), num(fl_parts["x25519_shared"].med, 1),
        num(fl_parts["ed25519_sign"].med, 1)) if fl.ok else "crypto floor not measured"
    t, m = target("hs_cpu", r)
    rows.append(("server CPU µs per full handshake (cmtpd)", hs_cpu.fmt(1), floor_txt,
                 (num(r) + "×" + sp) if r else "—", t, m))
    res["handshakes"]["cpu_ratio_to_floor"] = r
    if r is not None and met("hs_cpu", r) != "yes":
        n = ("**Handshake CPU.** cmtpd used %s µs of CPU per full handshake, %s× the %s µs that "
             "the three curve operations take in `bssl-tool speed`." % (
                 num(hs_cpu.med, 1), num(r), num(fl.med, 1)))
        prof = profile_summary(raw, "hs", "cmtpd")
        if prof:
            n += (" A perf profile of cmtpd during an extra handshake run (cpu-clock samples) "
                  "splits its CPU time as: %s." % dso_text(prof))
            kern = prof["dso"].get("[kernel.kallsyms]")
            if kern:
                n += (" The kernel's share is about %s µs per handshake (the floor has no "
                      "system calls)." % num(kern / 100 * hs_cpu.med, 1))
            if "curve25519" in prof:
                lc = prof["dso"].get("libcrypto.so.0", 0.0)
                n += (" Samples in libcrypto's curve25519 code (the address range from its first "
                      "exported ED25519_/X25519 symbol to the next exported symbol, since the "
                      "library has no debug symbols) are %.0f %% of cmtpd's time, about %s µs "
                      "per handshake; the other libcrypto samples (%.0f %%, about %s µs) lie "
                      "outside that range." % (
                          prof["curve25519"], num(prof["curve25519"] / 100 * hs_cpu.med, 1),
                          lc - prof["curve25519"], num((lc - prof["curve25519"]) / 100 * hs_cpu.med, 1)))
        if hs_client.ok:
            n += (" The load generator itself used %s µs per handshake on the same %s CPUs." % (
                num(hs_client.med, 1), M.get("nproc", "?")))
        notes.append(n)

    # 3. durable messages, persistent sessions
    res["messages"] = {}
    pfname = "master"
    for size, label, nbytes in SIZES:
        ours = Stat(raw.series("msg_cmtp_" + size, lambda j: j["msgs_per_s"]))
        ours_mib = Stat(raw.series("msg_cmtp_" + size, lambda j: j["body_mib_per_s"]))
        c_cpu = Stat(raw.series("msg_cmtp_" + size, lambda j: cpu_of(j, "cmtpd")))
        r_cpu = Stat(raw.series("msg_cmtp_" + size, lambda j: cpu_of(j, "redis-server")))
        pf = Stat(raw.series("msg_smtp_" + size, lambda j: j["msgs_per_s"]))
        pf_cpu = Stat(raw.series("msg_smtp_" + size, lambda j: j["server_cpu_us_per_op"]))
        rd = Stat(raw.redis_series("redis_" + size, lambda r: r["rps"]))
        rd_cpu = Stat(raw.redis_series("redis_" + size, lambda r: r.get("cpu_us_per_op")))
        rd_mib = Stat([None if v is None else v * nbytes / 1048576 for v in
                       raw.redis_series("redis_" + size, lambda r: r["rps"])])
        rp, rp_sp = ratio_stat(ours, pf)
        rr, rr_sp = ratio_stat(ours, rd)
        res["messages"][size] = {
            "ours_msgs_per_s": ours.js(), "ours_mib_per_s": ours_mib.js(),
            "cmtpd_cpu_us_per_msg": c_cpu.js(), "redis_cpu_us_per_msg": r_cpu.js(),
            "postfix_msgs_per_s": pf.js(), "postfix_cpu_us_per_msg": pf_cpu.js(),
            "redis_set_per_s": rd.js(), "redis_set_mib_per_s": rd_mib.js(),
            "redis_cpu_us_per_set": rd_cpu.js(),
            "ratio_postfix": rp, "ratio_redis": rr}
        plot[size] = (ours, pf, rd)
        pf_txt = "Postfix+STARTTLS %s" % pf.fmt() if pf.ok else (
            "Postfix not measured" + (" (%s)" % raw.failure("msg_smtp_" + size)
                                      if raw.failure("msg_smtp_" + size) else ""))
        ours_txt = ours.fmt() if ours.ok or not raw.failure("msg_cmtp_" + size) else \
            "failed: " + raw.failure("msg_cmtp_" + size)
        conns = conns_by.get(size, "?")
        metric = "durable msgs/s, %s, persistent sessions (%s)" % (label, conns)
        if size == "1k":
            t, m = target("k1_postfix", rp)
            rows.append((metric, ours_txt, pf_txt, (num(rp) + "×" + rp_sp) if rp else "—", t, m))
            t, m = target("k1_redis", rr)
            rows.append((metric, ours_txt, "Redis SET %s" % rd.fmt(),
                         (num(rr) + "×" + rr_sp) if rr else "—", t, m))
        else:
            rows.append((metric, ours_txt, pf_txt, (num(rp) + "×" + rp_sp) if rp else "—", "—", "—"))
            rows.append((metric, ours_txt, "Redis SET %s" % rd.fmt(),
                         (num(rr) + "×" + rr_sp) if rr else "—", "—", "—"))
        if size == "1m":
            rm, rm_sp = ratio_stat(ours_mib, rd_mib)
            t, m = target("m1_redis", rm)
            rows.append(("ingest MiB/s, 1 MiB bodies", ours_mib.fmt(),
                         "Redis SET %s MiB/s" % rd_mib.fmt(),
                         (num(rm) + "×" + rm_sp) if rm else "—", t, m))
            res["messages"][size]["ratio_redis_mib"] = rm
        # Notes for the missed targets at this size.
        miss = []
        if size == "1k":
            if rp is not None and met("k1_postfix", rp) != "yes":
                miss.append("%s× Postfix (target ≥ 10×)" % num(rp))
            if rr is not None and met("k1_redis", rr) != "yes":
                miss.append("%s× Redis' SET rate (target ≥ 0.5×)" % num(rr))
        if size == "1m":
            rm = res["messages"][size].get("ratio_redis_mib")
            if rm is not None and met("m1_redis", rm) != "yes":
                miss.append("%s× Redis' MiB/s (target ≥ 0.7×)" % num(rm))
        if miss:
            n = "**%s messages: %s.** Server CPU per message: cmtpd %s µs, redis-server %s µs; " \
                "redis-server per plain SET of the same size: %s µs." % (
                    label, "; ".join(miss), num(c_cpu.med), num(r_cpu.med), num(rd_cpu.med))
            cs = cmdstats(raw, size)
            if cs:
                n += (" In a run of exactly %d messages, Redis executed (ingest only: the "
                      "delivery engine claims nothing in these runs) " % cs["msgs"] +
                      cmdstats_text(cs) + ".")
            rw_ours = Stat([read_int(raw.path("msg_cmtp_%s.%d.json.rewrites" % (size, k)))
                            for k in range(1, raw.runs + 1)])
            rw_ref = Stat([read_int(raw.path("redis_%s.%d.csv.rewrites" % (size, k)))
                           for k in range(1, raw.runs + 1)])
            if rw_ours.ok and rw_ref.ok:
                n += (" Automatic AOF rewrites (the appliance's Redis configuration keeps them) "
                      "started during a run: %s with cmtpd, %s with redis-benchmark." % (
                          rw_ours.fmt(0), rw_ref.fmt(0)))
            if size in ("1k", "1m"):
                for comm in ("cmtpd", "redis-server"):
                    prof = profile_summary(raw, "msg" + size, comm)
                    if prof:
                        n += " perf on %s during an extra %s run: %s" % (comm, label, dso_text(prof))
                        if prof["top"]:
                            n += "; top symbols: " + ", ".join(
                                "%s %.0f %%" % (sym, pct) for pct, _, sym in prof["top"][:4])
                        n += "."
            notes.append(n)

    # 4. one connection per message
    pc = Stat(raw.series("pc_cmtp", lambda j: j["msgs_per_s"]))
    pcp = Stat(raw.series("pc_smtp", lambda j: j["msgs_per_s"]))
    r, sp = ratio_stat(pc, pcp)
    rows.append(("durable msgs/s, 1 KiB, one connection per message (%s)" % M.get("pc_conns", "?"),
                 pc.fmt(), "Postfix+STARTTLS %s" % pcp.fmt() if pcp.ok else "Postfix not measured",
                 (num(r) + "×" + sp) if r else "—", "—", "—"))
    res["per_conn"] = {"ours_msgs_per_s": pc.js(), "postfix_msgs_per_s": pcp.js(), "ratio_postfix": r,
                       "cmtpd_cpu_us_per_msg": Stat(raw.series("pc_cmtp", lambda j: cpu_of(j, "cmtpd"))).js(),
                       "postfix_cpu_us_per_msg": Stat(raw.series("pc_smtp", lambda j: j["server_cpu_us_per_op"])).js()}

    # 5. latency
    rd50 = Stat(raw.redis_series("redis_1k", lambda r: r.get("p50_latency_ms")))
    rd99 = Stat(raw.redis_series("redis_1k", lambda r: r.get("p99_latency_ms")))
    rd1_50 = Stat(raw.redis_series("redis1_1k", lambda r: r.get("p50_latency_ms")))
    rd1_99 = Stat(raw.redis_series("redis1_1k", lambda r: r.get("p99_latency_ms")))
    res["latency"] = {"max_msgs_per_s": float(M["max_1k"]) if M.get("max_1k") else None,
                      "redis_32_clients_ms": {"p50": rd50.js(), "p99": rd99.js()},
                      "redis_1_client_ms": {"p50": rd1_50.js(), "p99": rd1_99.js()}}
    for pct in (50, 90):
        name = "lat%d" % pct
        s50 = Stat(raw.series(name, lambda j: j["latency_us"]["sched"]["p50"] / 1000))
        s99 = Stat(raw.series(name, lambda j: j["latency_us"]["sched"]["p99"] / 1000))
        a99 = Stat(raw.series(name, lambda j: j["latency_us"]["ack"]["p99"] / 1000))
        rate = Stat(raw.series(name, lambda j: j["rate"]))
        r, sp = ratio_stat(s99, rd99)
        res["latency"]["at_%d" % pct] = {"rate": rate.js(), "sched_p50_ms": s50.js(),
                                          "sched_p99_ms": s99.js(), "ack_p99_ms": a99.js(),
                                          "ratio_p99_redis": r}
        ours_txt = "p50 %s / p99 %s ms" % (s50.fmt(), s99.fmt()) if s50.ok else \
            "not measured" + (" (%s)" % raw.failure(name) if raw.failure(name) else "")
        ref = "Redis SET 1 KiB (%s clients) p50 %s / p99 %s ms" % (c1k, rd50.fmt(), rd99.fmt())
        metric = "latency to durable ack, 1 KiB, open loop at %d %% of our max (%s msg/s)" % (
            pct, num(rate.med) if rate.ok else "?")
        if pct == 50:
            t, m = target("p99_50", r)
        else:
            t, m = "—", "—"
        rows.append((metric, ours_txt, ref, ("p99 " + num(r) + "×" + sp) if r else "—", t, m))
        if pct == 50 and r is not None and met("p99_50", r) != "yes":
            notes.append("**Latency at 50 %%.** Our p99 from scheduled arrival to the durable ack "
                         "was %s ms (END-to-ack part alone: %s ms) against Redis' %s ms with %s "
                         "clients and %s ms with one client." % (
                             num(s99.med), num(a99.med), num(rd99.med), c1k, num(rd1_99.med)))
        k_hist = next((k for k in range(1, raw.runs + 1)
                       if os.path.exists(raw.path("%s.%d.hist" % (name, k)))
                       and raw.bench(name, k) is not None), None)
        plot["hist%d" % pct] = raw.path("%s.%d.hist" % (name, k_hist)) if k_hist else None

    # 6. idle connections
    idle = Stat(raw.series("idle", lambda j: server(j, "cmtpd")["rss_kib_per_conn"]
                           if server(j, "cmtpd").get("rss_ok") else None))
    idle_open = Stat(raw.series("idle", lambda j: j["idle_open"]))
    t, m = target("rss_idle", idle.med)
    rows.append(("RSS per idle TLS connection at %s connections (cmtpd)" % M.get("idle_n", "?"),
                 idle.fmt(1, " KiB") if idle.ok else "not measured" +
                 (" (%s)" % raw.failure("idle") if raw.failure("idle") else ""),
                 "—", "—", t, m))
    res["idle"] = {"kib_per_conn": idle.js(), "open": idle_open.js()}
    if idle.ok and met("rss_idle", idle.med) != "yes":
        notes.append("**Idle memory.** %s KiB per idle TLS connection (cmtpd's VmRSS growth "
                     "over %s connections)." % (num(idle.med, 1), M.get("idle_n")))

    # 7. relay
    rel, why = relay(raw)
    metric = "relay end to end (ingest → delivery over LMTP to a sink), 1 KiB"
    if rel is None:
        t, m = target("relay", None)
        rows.append((metric, why, "ingest only", "—", t, "n/a"))
        res["relay"] = {"status": why}
    else:
        k1 = Stat(raw.series("msg_cmtp_1k", lambda j: j["msgs_per_s"]))
        r = rel["e2e"].med / k1.med if k1.med else None
        t, m = target("relay", r)
        rows.append((metric, "%s msgs/s delivered" % rel["e2e"].fmt(),
                     "ingest only %s msgs/s" % k1.fmt(), (num(r) + "×") if r else "—", t, m))
        res["relay"] = {"status": "measured", "e2e_msgs_per_s": rel["e2e"].js(),
                        "ingest_during_relay_msgs_per_s": rel["ingest"].js(),
                        "sink_cpu_pct": rel["sink_cpu_pct"].js(), "ratio_ingest": r}
        if r is not None and met("relay", r) != "yes":
            notes.append("**Relay end to end.** While the closed loop ingested %s msgs/s, cmtpd "
                         "delivered %s msgs/s to the LMTP sink (%s× the ingest-only median); "
                         "%s messages accepted in a run were not yet delivered at its end. The "
                         "sink used %s %% of one CPU over the run. On this machine cmtpd, Redis "
                         "and the sink share two cores: every delivered message costs cmtpd "
                         "its claim (the script that leases the new message with its record and "
                         "first body chunk, the split that leases its work items at once, the "
                         "script that closes the split), the LMTP transaction on a pooled "
                         "connection and the completion (record update, then lease release), "
                         "each Redis write waiting for an fsync, on top of its "
                         "ingest, so relay cannot reach 0.8× of an ingest that has both cores; "
                         "the scaling runs show where more cores go." % (
                             rel["ingest"].fmt(), rel["e2e"].fmt(), num(r),
                             rel["backlog"].fmt(0), rel["sink_cpu_pct"].fmt(0)))
            ci, cr = cpu_split(raw, "msg_cmtp_1k"), cpu_split(raw, "relay")
            if ci["busy"].ok and cr["busy"].ok:
                notes[-1] += (" The machine's two CPUs over the 1 KiB ingest-only runs: %s; over "
                              "the relay runs: %s. Time in iowait is Redis' `appendfsync always` "
                              "fdatasync of each event-loop iteration: every write script of the "
                              "delivery side (claim, split, record update, lease finish) adds to "
                              "what each fsync carries, and the closed loop waits for it." % (
                                  cpu_split_text(ci), cpu_split_text(cr)))
            # What delivering a message costs the two server processes, from the relay runs'
            # CPU less what the messages ingested meanwhile cost at the ingest-only rate per
            # message; with the CPUs the limit, relay / ingest cannot exceed X / (X + D).
            xc = Stat(raw.series("msg_cmtp_1k", lambda j: cpu_of(j, "cmtpd")))
            xr = Stat(raw.series("msg_cmtp_1k", lambda j: cpu_of(j, "redis-server")))
            if xc.ok and xr.ok and rel["cost"]:
                dc = Stat([(c - xc.med * n) / d for c, r, n, d in rel["cost"]])
                dr = Stat([(r - xr.med * n) / d for c, r, n, d in rel["cost"]])
                x = xc.med + xr.med
                dd = dc.med + dr.med
                if dd > 0:
                    notes[-1] += (" Delivering a message cost the server processes %s µs of CPU "
                                  "(cmtpd %s, its redis-server %s: the relay runs' CPU less "
                                  "what the messages ingested meanwhile cost at the ingest-only "
                                  "%s µs per message), %.1f× an ingest. On the same two CPUs "
                                  "that puts relay near %s / (%s + %s) = %.2f of an ingest that "
                                  "has them to itself (measured: %s; the ingest-only runs also "
                                  "wait for fsync, so the measured ratio may sit above this "
                                  "estimate)." % (
                                      num(dd), dc.fmt(), dr.fmt(), num(x), dd / x, num(x),
                                      num(x), num(dd), x / (x + dd), num(r)))
                if rel["sink_cpu_pct"].ok and rel["e2e"].med:
                    sink_us = rel["sink_cpu_pct"].med * 1e4 / rel["e2e"].med
                    notes[-1] += (" For 0.8× on the same two CPUs, delivering a message, the "
                                  "store's work included, could cost at most a quarter of an "
                                  "ingest, %s µs; the LMTP sink alone (a C loop that discards "
                                  "the body) used %s µs of CPU per delivered message." % (
                                      num(x / 4), num(sink_us)))
            cs = cmdstats(raw, "relay")
            if cs:
                notes[-1] += (" In a relay run of exactly %d messages (ingested and delivered), "
                              "Redis executed " % cs["msgs"] + cmdstats_text(cs) +
                              "; the ingest alone is the 1 KiB figure above.")

    # 8. scaling
    scale = []
    for w in (M.get("workers_list") or "").split():
        name = "scale_w" + w
        s = Stat(raw.series(name, lambda j: j["msgs_per_s"]))
        c = Stat(raw.series(name, lambda j: cpu_of(j, "cmtpd")))
        rc = Stat(raw.series(name, lambda j: cpu_of(j, "redis-server")))
        scale.append((w, s, c, rc))
    res["scaling"] = [{"workers": int(w), "msgs_per_s": s.js(), "cmtpd_cpu_us_per_msg": c.js(),
                       "redis_cpu_us_per_msg": rc.js()} for w, s, c, rc in scale]

    # --- write -----------------------------------------------------------------------------------
    os.makedirs(a.out, exist_ok=True)
    L = []
    L.append("# CMTP appliance benchmarks")
    L.append("")
    L.append("Generated by `make bench` (bench/run.sh, bench/report.py); do not edit by hand. "
             "Method: shared/design/BENCH.md — cmtpd and its references (Postfix+STARTTLS, "
             "Redis' own durable SET rate, the crypto floor) measured side by side in the same "
             "run; only the ratios carry over to another machine.")
    L.append("")
    if quick:
        L.append("> **Quick mode**: one short run of each measurement, to prove that the bench "
                 "works. These numbers are not worth quoting; `make bench` makes the real ones.")
        L.append("")
    L.append("- **Machine**: %s CPUs (%s), %s RAM, kernel %s. **Loopback, VM, flush semantics "
             "of the virtual disk unknown**; data on %s." % (
                 M.get("nproc", "?"), M.get("cpu", "?"), M.get("mem", "?"),
                 M.get("kernel", "?"), M.get("fs", "?")))
    L.append("- **When**: %s, commit %s; run took %s s." % (
        M.get("date", "?"), M.get("commit", "?"), M.get("runtime_s", "?")))
    try:
        busy = float(M.get("loadavg_start", "0").split()[0]) >= 0.5
    except ValueError:
        busy = False
    L.append("- **Load**: load average %s at the start, %s at the end%s. Ratios come from "
             "interleaved runs; absolute figures move with the load." % (
                 M.get("loadavg_start", "?"), M.get("loadavg_end", "?"),
                 " — other processes were running on this machine during the bench, so the "
                 "figures are noisy" if busy else ""))
    L.append("- **Runs**: every figure is the median of %s run(s) of %s s (after %s s warm-up) "
             "with the spread (min..max) in parentheses; a ratio is the median of the "
             "per-repetition ratios (each repetition measures ours and the reference back to "
             "back; failed runs left out), with their spread." % (M.get("runs"), M.get("duration_s"), M.get("warmup_s")))
    L.append("- **cmtpd**: release build, %s workers, Redis on a Unix socket with the appliance's "
             "configuration (AOF, `appendfsync always`, no RDB), a fresh redis-server for each "
             "run; log level info to a file. TLS: %s." % (
                 M.get("workers_default"), M.get("tls_cmtpd") or "?"))
    L.append("- **Relay runs**: cmtpd delivers over LMTP to `cmtp-lmtp-sink` (bench/lmtp_sink.c, a "
             "C sink that discards, offering CHUNKING as Dovecot's LMTP does: the bodies go in "
             "BDAT chunks) with `[delivery] concurrency_per_dest = %s` for the local "
             "store and pooled LMTP connections." % M.get("relay_concurrency", "?"))
    L.append("- **Delivery during the ingest runs**: the ingest-only runs set `[delivery] "
             "enabled = no` (an ingest-only node: its delivery engine claims nothing, so accepted "
             "messages stay queued in Redis); only the relay runs deliver. cmtpd's log over the "
             "whole bench: %s accepted, %s delivered (relay runs), %s deferred." % (
                 M.get("log_accepted", "?"), M.get("log_delivered", "?"),
                 M.get("log_deferred", "?")))
    L.append("- **Postfix**: %s" % (
        ("Postfix %s, private instance (own main.cf, queue on the same filesystem), smtpd "
         "with STARTTLS, TLS 1.3 only, the same Ed25519 certificate, delivery to `discard:`, "
         "`in_flow_delay = 0s`, queue files fsync'ed before the 250 (Postfix's default). "
         "TLS: %s. Its CPU is the whole process tree (master, smtpd, cleanup, qmgr, discard...)."
         % (M.get("postfix_version"), M.get("tls_postfix") or "?"))
        if not M.get("postfix_missing") else "not measured: " + M["postfix_missing"]))
    L.append("- **Redis**: redis-benchmark %s, `-t set -P 1 -r 1000000000` (a new key per SET, so "
             "that Redis keeps every value as cmtpd keeps every message, and pays the same "
             "automatic AOF rewrites), the same value sizes and the same number of clients as "
             "our sessions, against a fresh redis-server with the same configuration; `-n` sized "
             "to run about as long as our run." % M.get("redis_version", "?"))
    L.append("- **Concurrency**: closed-loop sessions by body size, the same for cmtpd, Postfix and "
             "redis-benchmark: %s; %s for one connection per message; %s concurrent handshake "
             "loops; 64 sessions in the open loop." % (
                 ", ".join("%s %s" % kv for kv in conns_by.items()), M.get("pc_conns", "?"),
                 M.get("hs_conns", "?")))
    L.append("- **Crypto floor**: `bssl-tool speed` (%s), CPU µs per X25519 base-point "
             "multiplication (key share) + X25519 arbitrary point multiplication (shared "
             "secret) + Ed25519 sign: the server-side CPU of one full TLS 1.3 handshake that no "
             "implementation goes below. bssl-tool reports wall time; it is scaled by the tool's "
             "CPU time over that wall time (%s), so that the floor, like cmtpd's figure, is CPU "
             "time." % (M.get("boringssl", "?"), fl_factor.fmt(3)))
    L.append("- **Load generator**: build/cmtp-bench (bench/README.md), 1 thread, on the same "
             "machine; latency is from scheduled arrival to the durable ack in the open loop "
             "(no coordinated omission); server CPU from /proc/PID/stat over the measured "
             "interval.")
    L.append("")
    L.append("## Results")
    L.append("")
    L.append("| metric | ours | reference | ratio | target (issue 6) | met? |")
    L.append("|---|---|---|---|---|---|")
    for row in rows:
        L.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    L.append("")
    L.append("![msgs/s by size and latency CDF](BENCHMARKS.png)")
    L.append("")
    L.append("### Server CPU per message (µs)")
    L.append("")
    L.append("| body | cmtpd | its redis-server | cmtpd + Redis | Postfix (all processes) | "
             "redis-server per plain SET | AOF rewrites in a run: cmtpd's Redis / redis-benchmark |")
    L.append("|---|---|---|---|---|---|---|")
    for size, label, _ in SIZES:
        d = res["messages"][size]
        sumv = None
        if d["cmtpd_cpu_us_per_msg"] and d["redis_cpu_us_per_msg"]:
            sumv = d["cmtpd_cpu_us_per_msg"]["median"] + d["redis_cpu_us_per_msg"]["median"]
        rw = lambda pat: Stat([read_int(raw.path(pat % k)) for k in range(1, raw.runs + 1)]).fmt(0)
        L.append("| %s | %s | %s | %s | %s | %s | %s / %s |" % (
            label, Stat(raw.series("msg_cmtp_" + size, lambda j: cpu_of(j, "cmtpd"))).fmt(),
            Stat(raw.series("msg_cmtp_" + size, lambda j: cpu_of(j, "redis-server"))).fmt(),
            num(sumv), Stat(raw.series("msg_smtp_" + size, lambda j: j["server_cpu_us_per_op"])).fmt(),
            Stat(raw.redis_series("redis_" + size, lambda r: r.get("cpu_us_per_op"))).fmt(),
            rw("msg_cmtp_" + size + ".%d.json.rewrites"), rw("redis_" + size + ".%d.csv.rewrites")))
    pcc = Stat(raw.series("pc_cmtp", lambda j: cpu_of(j, "cmtpd")))
    pcpc = Stat(raw.series("pc_smtp", lambda j: j["server_cpu_us_per_op"]))
    L.append("| 1 KiB, one connection per message | %s | %s | — | %s | — | — |" % (
        pcc.fmt(), Stat(raw.series("pc_cmtp", lambda j: cpu_of(j, "redis-server"))).fmt(), pcpc.fmt()))
    L.append("")
    L.append("Redis with one client (no other write shares its fsync), SET 1 KiB: p50 %s ms, "
             "p99 %s ms." % (rd1_50.fmt(), rd1_99.fmt()))
    L.append("")
    cs1 = cmdstats(raw, "1k")
    if cs1:
        L.append("Redis work per 1 KiB message (a run of exactly %d messages, ingest only): %s." % (
            cs1["msgs"], cmdstats_text(cs1)))
        L.append("")
    ci = cpu_split(raw, "msg_cmtp_1k")
    if ci["busy"].ok:
        L.append("The machine's two CPUs during the 1 KiB cmtpd runs: %s." % cpu_split_text(ci))
        L.append("")
    L.append("### Scaling: cmtpd workers (1 KiB, persistent sessions)")
    L.append("")
    L.append("Run with `bash bench/run.sh --workers \"1 2 4 8 16\"` on a larger machine to extend "
             "the curve.")
    L.append("")
    L.append("| workers | msgs/s | cmtpd CPU µs/msg | redis-server CPU µs/msg |")
    L.append("|---|---|---|---|")
    for w, s, c, rc in scale:
        L.append("| %s | %s | %s | %s |" % (w, s.fmt(), c.fmt(), rc.fmt()))
    L.append("")
    L.append("## What limits it (where a target is missed)")
    L.append("")
    if notes:
        for n in notes:
            L.append("- " + n)
    else:
        L.append("Every measured target is met.")
    if rel is None:
        L.append("- **Relay end to end**: %s (`measure_relay` in bench/run.sh)." % why)
    L.append("")
    fails = failed_runs(raw)
    res["failed_runs"] = fails
    if fails:
        L.append("## Runs with errors (left out of the medians)")
        L.append("")
        for line in fails:
            L.append("- " + line)
        L.append("")
    with open(os.path.join(a.out, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L))
    with open(os.path.join(a.out, "BENCHMARKS.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write("\n")

    # gnuplot data: msgs/s by size (median, min, max) for ours, Postfix, Redis; latency CDFs.
    with open(os.path.join(a.raw, "throughput.dat"), "w") as f:
        f.write("# size ours lo hi postfix lo hi redis lo hi\n")
        for size, label, _ in SIZES:
            cols = []
            for s in plot.get(size, (Stat([]),) * 3):
                if s.ok:
                    cols += ["%g" % s.med, "%g" % min(s.values), "%g" % max(s.values)]
                else:
                    cols += ["?", "?", "?"]
            f.write('"%s" %s\n' % (label, " ".join(cols)))
    for pct in (50, 90):
        dst = os.path.join(a.raw, "lat%d.dat" % pct)
        src = plot.get("hist%d" % pct)
        with open(dst, "w") as f:
            if src and os.path.exists(src):
                f.write(open(src).read())
            else:
                f.write("1 0 0\n")
    with open(os.path.join(a.raw, "redislat.dat"), "w") as f:
        if rd50.ok and rd99.ok:
            f.write("%g 0.5\n%g 0.99\n" % (rd50.med * 1000, rd99.med * 1000))
        else:
            f.write("? ?\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
