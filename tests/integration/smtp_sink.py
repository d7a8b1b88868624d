#!/usr/bin/env python3
"""tests/integration/smtp_sink.py PORT DIR [options] — a small ESMTP server (RFC 5321) with
STARTTLS (RFC 3207) for the SMTP delivery tests.

It speaks EHLO/HELO (PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES and STARTTLS
when it has a certificate), STARTTLS, MAIL, RCPT, DATA with dot-unstuffing and one reply after
the final dot, RSET, NOOP, QUIT. Lines must end with CRLF (a bare LF ends the session and is
logged). Each accepted message is written to DIR/msg-<n>-<rcpt> (the unstuffed octets, one file
per recipient) and described in DIR/meta-<n>-<rcpt> (JSON: mail, rcpts, tls version/cipher or
null, the EHLO name); DIR/log gets one line per event. The recipient's local part selects a
behaviour:

  perm-*      RCPT is refused: 550 5.1.1
  temp1-*     the first transaction with it gets 451 4.3.0 after the data, later ones 250
  bad-*       554 5.6.0 after the data

Options:
  --cert FILE --key FILE   offer STARTTLS with this certificate chain and key
  --no-starttls            do not offer STARTTLS even with a certificate
  --inject                 answer STARTTLS with "220" and a second reply in the same write
                           (a command injection a client must refuse)
  --tls12                  allow at most TLS 1.2
DIR/ready is created once it listens.
"""
import argparse
import asyncio
import json
import os
import ssl

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("dir")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--no-starttls", action="store_true")
ap.add_argument("--inject", action="store_true")
ap.add_argument("--tls12", action="store_true")
A = ap.parse_args()
DIR = A.dir
seen = {}
count = 0

CTX = None
if A.cert:
    CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CTX.load_cert_chain(A.cert, A.key)
    if A.tls12:
        CTX.maximum_version = ssl.TLSVersion.TLSv1_2


def log(line):
    with open(os.path.join(DIR, "log"), "a") as f:
        f.write(line + "\n")


async def session(reader, writer):
    global count
    writer.write(b"220 sink.test ESMTP ready\r\n")
    tls = None
    helo = None
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
            if verb == "EHLO":
                helo = cmd[5:]
                ext = [b"sink.test", b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"SIZE 10485760",
                       b"ENHANCEDSTATUSCODES"]
                if CTX is not None and tls is None and not A.no_starttls:
                    ext.append(b"STARTTLS")
                writer.write(b"".join((b"250-" if i < len(ext) - 1 else b"250 ") + e + b"\r\n"
                                      for i, e in enumerate(ext)))
            elif verb == "HELO":
                helo = cmd[5:]
                writer.write(b"250 sink.test\r\n")
            elif verb == "STARTTLS":
                if CTX is None or tls is not None or A.no_starttls:
                    writer.write(b"454 4.7.0 TLS not available\r\n")
                    await writer.drain()
                    continue
                if A.inject:
                    log("starttls injected")
                    writer.write(b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n")
                    await writer.drain()
                    continue
                writer.write(b"220 2.0.0 go ahead\r\n")
                await writer.drain()
                try:
                    await writer.start_tls(CTX)
                except (ssl.SSLError, ConnectionError) as e:
                    log("starttls failed %s" % e)
                    return
                so = writer.get_extra_info("ssl_object")
                tls = (so.version(), so.cipher()[0])
                log("starttls %s %s" % tls)
                helo = None
                mail = None
                rcpts = []
                continue
            elif verb == "MAIL":
                if helo is None:
                    writer.write(b"503 5.5.1 EHLO first\r\n")
                else:
                    mail = cmd
                    rcpts = []
                    log("mail " + cmd)
                    writer.write(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                addr = cmd[cmd.index("<") + 1:cmd.index(">")]
                if mail is None:
                    writer.write(b"503 5.5.1 MAIL first\r\n")
                elif addr.startswith("perm-"):
                    log("rcpt-refused " + addr)
                    writer.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(addr)
                    writer.write(b"250 2.1.5 ok\r\n")
            elif verb == "DATA":
                if mail is None or not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    await writer.drain()
                    continue
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return
                    if not l.endswith(b"\r\n"):
                        log("bare line ending in data %r" % l[:40])
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    body += l
                first = False
                for r in rcpts:
                    n = seen.get(r, 0)
                    seen[r] = n + 1
                    if r.startswith("temp1-") and n == 0:
                        first = True
                if first:
                    log("tempfail " + ",".join(rcpts))
                    writer.write(b"451 4.3.0 try again later\r\n")
                elif any(r.startswith("bad-") for r in rcpts):
                    log("datafail " + ",".join(rcpts))
                    writer.write(b"554 5.6.0 message refused\r\n")
                else:
                    count += 1
                    for r in rcpts:
                        with open(os.path.join(DIR, "msg-%d-%s" % (count, r)), "wb") as f:
                            f.write(body)
                        with open(os.path.join(DIR, "meta-%d-%s" % (count, r)), "w") as f:
                            json.dump({"mail": mail, "rcpts": rcpts, "helo": helo,
                                       "tls": list(tls) if tls else None}, f)
                        log("delivered %s %d tls=%s" % (r, len(body), tls[0] if tls else "none"))
                    writer.write(b"250 2.0.0 Ok: queued as %d\r\n" % count)
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
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        return
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", A.port)
    open(os.path.join(DIR, "ready"), "w").close()
    async with server:
        await server.serve_forever()


asyncio.run(main())
