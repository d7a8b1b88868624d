"""tests/integration/crash_cases.py — the client side of the crash tests (RELIABILITY.md cases
1-3). Usage: crash_cases.py PORT CA STEP ARGS...; prints ok/FAIL lines and key=value results."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))
import cmtpclient as cc  # noqa: E402

PORT, CA, STEP = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ARGS = sys.argv[4:]


def conn():
    c = cc.Conn(PORT, CA)
    c.read_greeting()
    return c


if STEP == "mid-body":
    # Send the envelope and half the body, then SIGKILL cmtpd (pid in ARGS[0]).
    pid, txid = int(ARGS[0]), ARGS[1]
    body = bytes(range(256)) * 400
    c = conn()
    c.send("".join(l + "\r\n" for l in cc.envelope_lines("a@a.test", ["b@b.test"], body, txid)))
    print("mail=" + c.read_line())
    print("rcpt=" + c.read_line())
    c.send(b"BODY %d\r\n" % 50000 + body[:50000])
    os.kill(pid, signal.SIGKILL)
    try:
        c.send(b"BODY %d\r\n" % (len(body) - 50000) + body[50000:] + b"END\r\n")
        r = c.read_line()
    except (OSError, ConnectionError) as e:
        r = "reset:" + type(e).__name__
    print("end=" + r)
elif STEP == "send":
    # Send one message with a given txid; print the END reply.
    txid = ARGS[0]
    body = bytes(range(256)) * 400
    c = conn()
    _, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], body, txid=txid)
    print("end=%s" % end)
elif STEP == "send-then-kill":
    pid, txid = int(ARGS[0]), ARGS[1]
    body = bytes(range(256)) * 400
    c = conn()
    _, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], body, txid=txid)
    os.kill(pid, signal.SIGKILL)
    print("end=%s" % end)
elif STEP == "many":
    # Send N messages; print each accepted qid.
    n = int(ARGS[0])
    c = conn()
    for i in range(n):
        _, _, end = cc.send_message(c, "a@a.test", ["b@b.test"], os.urandom(2000))
        if end and end.startswith("250 accepted"):
            print("qid=" + dict(p.split("=", 1) for p in end.split()[2:])["id"])
        else:
            print("failed=%s" % end)
