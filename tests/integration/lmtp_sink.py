#!/usr/bin/env python3
"""tests/integration/lmtp_sink.py PORT DIR [OPTIONS] — a small LMTP server (RFC 2033) for the
delivery tests.

It speaks LHLO (PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES), MAIL, RCPT, DATA with dot-unstuffing
and one reply per accepted recipient, RSET, NOOP, QUIT; with --chunking also CHUNKING and
BINARYMIME (RFC 3030: BDAT n [LAST], the replies to LAST one per accepted recipient). Each
delivered message is written to DIR/msg-<n>-<rcpt> (the unstuffed or chunked octets); DIR/log gets
one line per event ("data", "bdat N" or "bdat N last" per body command). The recipient's local
part selects a behaviour, so that one server covers every case of the test:

  perm-*    RCPT is refused: 550 5.1.1
  temp1-*   the first delivery attempt gets 451 4.2.0 after the data, later ones 250
  stall-*   the first attempt gets no reply after the data (the connection is held open);
            DIR/stalled is created then
  r421-*    the data gets 421 4.3.2 (the connection is left open: the client must drop it)
  anything  250 2.0.0 after the data

Options (for the connection reuse test, tests/integration/test_conn_reuse.sh):

  --conn-log      DIR/conns gets one line per connection event: "open N", "lhlo N",
                  "deliver N" (one per recipient), "r421 N", "drop N", "idle-close N",
                  "quit N", "close N" (N numbers the connections from 1)
  --idle-close S  a connection idle for S seconds gets 421 4.4.2 and is closed
  --idle-drop S   a command on a connection that was idle for more than S seconds is not
                  answered: the connection is closed at once (to the client, a stale one)
  --chunking      advertise CHUNKING and BINARYMIME and take BDAT
"""
import argparse
import asyncio
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("dir")
ap.add_argument("--conn-log", action="store_true")
ap.add_argument("--idle-close", type=float, default=0)
ap.add_argument("--idle-drop", type=float, default=0)
ap.add_argument("--chunking", action="store_true")
ARGS = ap.parse_args()
PORT = ARGS.port
DIR = ARGS.dir
seen = {}
count = 0
conns = 0


def log(line):
    with open(os.path.join(DIR, "log"), "a") as f:
        f.write(line + "\n")


def clog(n, what):
    if ARGS.conn_log:
        with open(os.path.join(DIR, "conns"), "a") as f:
            f.write("%s %d\n" % (what, n))


async def deliver(cid, writer, rcpts, body):
    """deliver answers the end of a message's data for each recipient; False: the connection
    is to be dropped (a stalled delivery)."""
    global count
    stall = False
    for r in rcpts:
        n = seen.get(r, 0)
        seen[r] = n + 1
        if r.startswith("stall-") and n == 0:
            stall = True
    if stall:
        log("stalled %s" % ",".join(rcpts))
        open(os.path.join(DIR, "stalled"), "w").close()
        await writer.drain()
        await asyncio.sleep(3600)
        return False
    for r in rcpts:
        if r.startswith("r421-"):
            log("421 " + r)
            clog(cid, "r421")
            writer.write(b"421 4.3.2 sink.test shutting down\r\n")
            continue
        if r.startswith("temp1-") and seen[r] == 1:
            log("tempfail " + r)
            writer.write(b"451 4.2.0 try again later\r\n")
            continue
        count += 1
        with open(os.path.join(DIR, "msg-%d-%s" % (count, r)), "wb") as f:
            f.write(body)
        log("delivered %s %d" % (r, len(body)))
        clog(cid, "deliver")
        writer.write(b"250 2.0.0 saved\r\n")
    return True


async def session(reader, writer):
    global count, conns
    conns += 1
    cid = conns
    clog(cid, "open")
    try:
        await session_run(cid, reader, writer)
    finally:
        clog(cid, "close")


async def session_run(cid, reader, writer):
    global count
    writer.write(b"220 sink.test LMTP ready\r\n")
    mail = None
    rcpts = []
    chunks = None
    last = time.monotonic()
    try:
        while True:
            if ARGS.idle_close > 0:
                try:
                    line = await asyncio.wait_for(reader.readline(), ARGS.idle_close)
                except asyncio.TimeoutError:
                    clog(cid, "idle-close")
                    writer.write(b"421 4.4.2 sink.test idle for too long\r\n")
                    await writer.drain()
                    return
            else:
                line = await reader.readline()
            if not line:
                return
            if ARGS.idle_drop > 0 and time.monotonic() - last > ARGS.idle_drop:
                clog(cid, "drop")
                return
            last = time.monotonic()
            if not line.endswith(b"\r\n"):
                log("bare line ending %r" % line[:40])
                return
            cmd = line[:-2].decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "LHLO":
                clog(cid, "lhlo")
                writer.write(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n" +
                             (b"250-CHUNKING\r\n250-BINARYMIME\r\n" if ARGS.chunking else b"") +
                             b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "MAIL":
                mail = cmd
                rcpts = []
                log("mail " + cmd)
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                addr = cmd[cmd.index("<") + 1:cmd.index(">")]
                if addr.startswith("perm-"):
                    log("rcpt-refused " + addr)
                    writer.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(addr)
                    writer.write(b"250 2.1.5 ok\r\n")
            elif verb == "BDAT" and ARGS.chunking:
                parts = cmd.split(" ")
                n = int(parts[1])
                lastc = len(parts) > 2 and parts[2].upper() == "LAST"
                data = await reader.readexactly(n)
                log("bdat %d%s" % (n, " last" if lastc else ""))
                if mail is None or not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    await writer.drain()
                    continue
                chunks = (chunks or bytearray()) + data
                if not lastc:
                    writer.write(b"250 2.0.0 %d octets\r\n" % n)
                    await writer.drain()
                    continue
                body, chunks = chunks, None
                if not await deliver(cid, writer, rcpts, body):
                    return
                mail = None
                rcpts = []
            elif verb == "DATA":
                if mail is None or not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                log("data")
                body = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    body += l
                if not await deliver(cid, writer, rcpts, body):
                    return
                mail = None
                rcpts = []
            elif verb == "RSET":
                mail = None
                rcpts = []
                chunks = None
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == "NOOP":
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                clog(cid, "quit")
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"500 5.5.2 unknown command\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", PORT)
    open(os.path.join(DIR, "ready"), "w").close()
    async with server:
        await server.serve_forever()


asyncio.run(main())
