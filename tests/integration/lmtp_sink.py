#!/usr/bin/env python3
"""tests/integration/lmtp_sink.py PORT DIR — a small LMTP server (RFC 2033) for the delivery tests.

It speaks LHLO (PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES), MAIL, RCPT, DATA with dot-unstuffing
and one reply per accepted recipient, RSET, NOOP, QUIT. Each delivered message is written to
DIR/msg-<n>-<rcpt> (the unstuffed octets); DIR/log gets one line per event. The recipient's local
part selects a behaviour, so that one server covers every case of the test:

  perm-*    RCPT is refused: 550 5.1.1
  temp1-*   the first delivery attempt gets 451 4.2.0 after the data, later ones 250
  stall-*   the first attempt gets no reply after the data (the connection is held open);
            DIR/stalled is created then
  anything  250 2.0.0 after the data
"""
import asyncio
import os
import sys

PORT = int(sys.argv[1])
DIR = sys.argv[2]
seen = {}
count = 0


def log(line):
    with open(os.path.join(DIR, "log"), "a") as f:
        f.write(line + "\n")


async def session(reader, writer):
    global count
    writer.write(b"220 sink.test LMTP ready\r\n")
    mail = None
    rcpts = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if not line.endswith(b"\r\n"):
                log("bare line ending %r" % line[:40])
                return
            cmd = line[:-2].decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "LHLO":
                writer.write(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
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
            elif verb == "DATA":
                if mail is None or not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
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
                    return
                for r in rcpts:
                    if r.startswith("temp1-") and seen[r] == 1:
                        log("tempfail " + r)
                        writer.write(b"451 4.2.0 try again later\r\n")
                        continue
                    count += 1
                    with open(os.path.join(DIR, "msg-%d-%s" % (count, r)), "wb") as f:
                        f.write(body)
                    log("delivered %s %d" % (r, len(body)))
                    writer.write(b"250 2.0.0 saved\r\n")
                mail = None
                rcpts = []
            elif verb == "RSET":
                mail = None
                rcpts = []
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == "NOOP":
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
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
