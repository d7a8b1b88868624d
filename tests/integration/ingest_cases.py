"""tests/integration/ingest_cases.py — ingest tests against a running cmtpd and its Redis:
durable accept, byte-exact storage, dedup, limits, split input, concurrency, Redis failures.
Usage: ingest_cases.py PORT CA_FILE REDIS_SOCKET PREFIX [GROUP...]; prints ok/FAIL lines."""

from concurrent.futures import ThreadPoolExecutor
import os
import random
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import cmtpclient as cc  # noqa: E402

PORT = int(sys.argv[1])
CA = sys.argv[2]
RSOCK = sys.argv[3]
PREFIX = sys.argv[4]
GROUPS = sys.argv[5:] or ["basic"]
results = {"pass": 0, "fail": 0}


def ok(name):
    print("ok   " + name, flush=True)
    results["pass"] += 1


def bad(name, why=""):
    print("FAIL %s %s" % (name, why), flush=True)
    results["fail"] += 1


def check(name, cond, why=""):
    ok(name) if cond else bad(name, why)


def conn():
    c = cc.Conn(PORT, CA)
    g = c.read_greeting()
    return c, g


def accepted_fields(line):
    parts = dict(p.split("=", 1) for p in line.split()[2:] if "=" in p)
    return parts


def stored_body(qid):
    shard = qid.rsplit("-", 1)[1]
    r = cc.Resp(RSOCK)
    chunks = r.cmd("LRANGE", "%s:{s%s}:body:%s" % (PREFIX, shard, qid), 0, -1)
    env = r.cmd("GET", "%s:{s%s}:env:%s" % (PREFIX, shard, qid))
    return b"".join(chunks or []), env


def basic():
    c, g = conn()
    check("greeting", g.startswith("220 ready proto=cmtp/1 host=mx.b.test "), g)
    body = b"Subject: t\r\n\r\nline\r\n.\r\nafter dot\n.\nbare\rCR\x00NUL\r\nEND\r\nMAIL FROM:<x@y.z>\r\n"
    mail, rr, end = cc.send_message(c, "alice@a.test", ["bob@b.test"], body)
    check("mail accepted", mail.startswith("250 ok txn="), mail)
    check("rcpt final", rr == ["250 final"], rr)
    check("end accepted", end is not None and end.startswith("250 accepted "), end)
    if end and end.startswith("250 accepted"):
        f = accepted_fields(end)
        got, env = stored_body(f["id"])
        check("body byte-exact in redis", got == body, "%r" % got[:80])
        check("envelope record in redis", env is not None and env.startswith(b"CMTQ"))
        check("envelope names originator", env is not None and b"alice" in env and b"a.test" in env)
        check("no Received: header added", b"Received:" not in got)
    # Many transactions on one connection, with a binary body each.
    ids = set()
    good = True
    for i in range(20):
        b = os.urandom(random.randint(1, 70000))
        _, _, end = cc.send_message(c, "alice@a.test", ["bob@b.test", "carol@b.test"], b,
                                    chunk=random.randint(1, 20000))
        if not (end and end.startswith("250 accepted") and "rcpts=2" in end):
            good = False
            break
        qid = accepted_fields(end)["id"]
        ids.add(qid)
        if stored_body(qid)[0] != b:
            good = False
            break
    check("20 transactions on one connection, byte-exact", good and len(ids) == 20)
    check("NOOP", c.cmd("NOOP") == "250 ok")
    check("QUIT", c.cmd("QUIT") == "221 bye")
    c.close()


def dedup():
    c, _ = conn()
    body = b"dedup body\r\n"
    txid = cc.new_txid()
    _, _, e1 = cc.send_message(c, "a@a.test", ["b@b.test"], body, txid=txid)
    _, _, e2 = cc.send_message(c, "a@a.test", ["b@b.test"], body, txid=txid)
    f1, f2 = accepted_fields(e1 or "x x"), accepted_fields(e2 or "x x")
    check("first accept not dup", e1 is not None and "dup=1" not in e1, e1)
    check("retransmission returns first result with dup=1",
          e2 is not None and "dup=1" in e2 and f1.get("id") == f2.get("id"), "%s / %s" % (e1, e2))
    _, _, e3 = cc.send_message(c, "a@a.test", ["b@b.test"], b"other body", txid=txid)
    check("same txid, other digest: txn-conflict", e3 == "554 txn-conflict" or
          (e3 or "").startswith("554 txn-conflict"), e3)
    c.close()
    # The same txid on another connection (another worker, maybe) is still a duplicate.
    c, _ = conn()
    _, _, e4 = cc.send_message(c, "a@a.test", ["b@b.test"], body, txid=txid)
    check("dup across connections", e4 is not None and "dup=1" in e4, e4)
    c.close()


def limits():
    c, g = conn()
    size_max = int(dict(p.split("=") for p in g.split()[2:] if "=" in p)["size-max"])
    txid = cc.new_txid()
    r = c.cmd("MAIL FROM:<a@a.test> TXN=%s SIZE=%d DIGEST=%s" % (txid, size_max + 1, "0" * 64))
    check("SIZE over the limit refused at MAIL (552)", r.startswith("552 too-big"), r)
    for n in ["0", "2147483648", "4294967295", "9223372036854775808", "18446744073709551616",
              "-1", "01"]:
        r = c.cmd("MAIL FROM:<a@a.test> TXN=%s SIZE=%s DIGEST=%s" % (cc.new_txid(), n, "0" * 64))
        check("MAIL SIZE=%s refused" % n, r[0] in "45", r)
    # Hostile addresses inside a transaction: refused with 501 (or 600 for a bare CR), or
    # accepted as inert data (RELIABILITY case 15: `backticks` and ${...} are legal local-part
    # characters in CMTP/1 and are never interpreted).
    c.cmd("MAIL FROM:<a@a.test> TXN=%s SIZE=10 DIGEST=%s" % (cc.new_txid(), "0" * 64))
    for addr, want in [("a\rb@x.test", "600"), ("a;b@x.test", "501"), ("$(reboot)@x.test", "501"),
                       ("`id`@b.test", "250"), ("${run{/bin/true}}@b.test", "250"),
                       ("a b@x.test", "501"), ("x" * 129 + "@x.test", "501"),
                       ("a@x.test\x00", "600"), ("a@[127.0.0.1]", "501")]:
        try:
            r = c.cmd("RCPT TO:<%s>" % addr)
        except ConnectionError as e:
            r = str(e)
        check("hostile address %r -> %s" % (addr[:20], want), r.startswith(want), r)
        if r.startswith("6") or not r[:1].isdigit():
            c.close()
            c, _ = conn()
            c.cmd("MAIL FROM:<a@a.test> TXN=%s SIZE=10 DIGEST=%s" % (cc.new_txid(), "0" * 64))
    c.close()
    # Over-long line: 600 and close.
    c, _ = conn()
    c.send("NOOP " + "x" * 5000 + "\r\n")
    r = c.read_line()
    check("line too long: 600 and close", r.startswith("600 line-too-long"), r)
    try:
        more = c.s.recv(10)
    except (OSError, ssl.SSLError):
        more = b""
    check("connection closed after 600", more == b"")
    c.close()
    # A chunk beyond the declared size: 602 and close; nothing stored.
    c, _ = conn()
    body = b"12345"
    c.send("MAIL FROM:<a@a.test> TXN=%s SIZE=5 DIGEST=%s\r\nRCPT TO:<b@b.test>\r\n"
           % (cc.new_txid(), cc.digest(body)))
    c.read_line()
    c.read_line()
    c.send(b"BODY 6\r\n123456")
    r = c.read_line()
    check("chunk past SIZE: 602", r.startswith("602"), r)
    c.close()
    # Digest mismatch.
    c, _ = conn()
    c.send("MAIL FROM:<a@a.test> TXN=%s SIZE=5 DIGEST=%s\r\nRCPT TO:<b@b.test>\r\n"
           % (cc.new_txid(), "ab" * 32))
    c.read_line()
    c.read_line()
    c.send(b"BODY 5\r\n12345END\r\n")
    r = c.read_line()
    check("digest mismatch: 554", r.startswith("554 digest-mismatch"), r)
    c.close()


def split():
    # The whole session, one plaintext byte per TLS record.
    c = cc.Conn(PORT, CA)
    body = b"split\r\n.\r\nbody\x00"
    txid = cc.new_txid()
    data = ("".join(l + "\r\n" for l in cc.envelope_lines("a@a.test", ["b@b.test"], body,
                                                          txid))).encode()
    for i in range(len(data)):
        c.s.sendall(data[i:i + 1])
    g = c.read_line()
    mail, rcpt = c.read_line(), c.read_line()
    rest = cc.body_bytes(body, 4) + b"END\r\n"
    for i in range(len(rest)):
        c.s.sendall(rest[i:i + 1])
    end = c.read_line()
    check("input split at every byte: accepted", g.startswith("220") and mail.startswith("250")
          and rcpt == "250 final" and end.startswith("250 accepted"), "%s %s %s" % (mail, rcpt, end))
    if end.startswith("250 accepted"):
        check("split body byte-exact", stored_body(accepted_fields(end)["id"])[0] == body)
    c.close()


def concurrent():
    n = int(os.environ.get("CMTP_IT_CONNS", "1000"))
    conns = []
    errors = 0
    for i in range(n):
        try:
            c = cc.Conn(PORT, CA, timeout=30)
            conns.append(c)
        except OSError as e:
            errors += 1
            if errors < 3:
                print("connect error: %r" % e)
    greet = 0
    for c in conns:
        try:
            if c.read_greeting().startswith("220"):
                greet += 1
        except OSError:
            pass
    check("%d concurrent TLS connections greeted" % n, greet == n, "%d greeted, %d errors"
          % (greet, errors))

    def one(c):
        try:
            _, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], os.urandom(1024))
            return end is not None and end.startswith("250 accepted")
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=64) as ex:
        good = sum(ex.map(one, conns))
    check("a message on each of %d concurrent connections accepted" % n, good == n,
          "%d of %d" % (good, n))
    for c in conns:
        c.close()


def redis_down():
    # Called while Redis is stopped: MAIL or END must get a 4xx, never an accept.
    try:
        c, _ = conn()
    except OSError as e:
        bad("connect while redis down", repr(e))
        return
    body = b"while redis is down"
    mail, rr, end = cc.send_message(c, "a@a.test", ["b@b.test"], body)
    check("redis down: temporary failure, no accept",
          (mail.startswith("451") or (end or "").startswith("451")) and
          not (end or "").startswith("250"), "%s / %s" % (mail, end))
    c.close()


def redis_up():
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            c, _ = conn()
            _, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], b"after recovery")
            c.close()
            if end and end.startswith("250 accepted"):
                ok("recovery when redis returns")
                return
        except OSError:
            pass
        time.sleep(0.3)
    bad("recovery when redis returns")


for g in GROUPS:
    {"basic": basic, "dedup": dedup, "limits": limits, "split": split,
     "concurrent": concurrent, "redis_down": redis_down, "redis_up": redis_up}[g]()
print("%d passed, %d failed" % (results["pass"], results["fail"]))
sys.exit(1 if results["fail"] else 0)
