"""tests/integration/promcheck.py — a strict checker of the Prometheus text exposition format
0.0.4 for cmtpd's metrics: every line a HELP, a TYPE or a sample; names and labels valid; every
family declared once, before its samples; counters non-negative; histogram buckets cumulative,
ending with le="+Inf" equal to _count. Reads stdin; prints the first error and exits 1."""
import math
import re
import sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(\{(%s(,%s)*)?\})? (\S+)$" % (NAME, LABEL, LABEL))
types, helps, seen_samples = {}, set(), set()
hist = {}
current = None
for n, line in enumerate(sys.stdin.read().split("\n"), 1):
    if line == "":
        continue
    m = re.match(r"^# HELP (%s) (.*)$" % NAME, line)
    if m:
        if m.group(1) in helps:
            sys.exit("line %d: second HELP for %s" % (n, m.group(1)))
        helps.add(m.group(1))
        continue
    m = re.match(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % NAME, line)
    if m:
        if m.group(1) in types:
            sys.exit("line %d: second TYPE for %s" % (n, m.group(1)))
        types[m.group(1)] = m.group(2)
        current = m.group(1)
        continue
    if line.startswith("#"):
        sys.exit("line %d: bad comment %r" % (n, line))
    m = SAMPLE.match(line)
    if not m:
        sys.exit("line %d: not a sample: %r" % (n, line))
    name, labels, value = m.group(1), m.group(3) or "", m.group(5)
    try:
        v = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
    except ValueError:
        sys.exit("line %d: bad value %r" % (n, value))
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    fam = name if name in types else base
    if fam != current:
        sys.exit("line %d: sample %s outside its family (current %s)" % (n, name, current))
    if types[fam] == "counter" and (v < 0 or math.isnan(v)):
        sys.exit("line %d: negative counter" % n)
    if types[fam] == "histogram":
        key = (fam, re.sub(r',?le="[^"]*"', "", labels))
        h = hist.setdefault(key, {"buckets": [], "count": None})
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]*)"', labels).group(1)
            h["buckets"].append((float(le.replace("+Inf", "inf")), v))
        elif name.endswith("_count"):
            h["count"] = v
    seen_samples.add(fam)
for (fam, _), h in hist.items():
    b = h["buckets"]
    if not b or b[-1][0] != math.inf:
        sys.exit("%s: last bucket is not +Inf" % fam)
    if any(b[i][1] > b[i + 1][1] or b[i][0] >= b[i + 1][0] for i in range(len(b) - 1)):
        sys.exit("%s: buckets not cumulative / increasing" % fam)
    if h["count"] != b[-1][1]:
        sys.exit("%s: _count differs from the +Inf bucket" % fam)
missing = set(types) - seen_samples
if missing:
    sys.exit("families without samples: %s" % sorted(missing))
print("ok: %d families" % len(types))
