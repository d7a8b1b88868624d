#!/usr/bin/env python3
"""tests/integration/dns_server.py — a tiny authoritative DNS server for the integration tests
(Python standard library only): UDP and TCP on 127.0.0.1:PORT, answers from a zone file.

Usage: dns_server.py PORT ZONEFILE [--log FILE] [--ready FILE] [--no-compress]

Zone file: one record per line, `#` comments, blank lines ignored:

    NAME [TTL] TYPE DATA...

    _cmtp._tcp.b.test 60 SRV 10 5 4465 mx.b.test   priority weight port target ("." allowed)
    c.test MX 10 mx.c.test                          preference exchange ("." = null MX)
    mx.b.test A 127.0.0.2
    mx.b.test AAAA ::1
    f.test SERVFAIL                                 every query for the name: that rcode
    g.test REFUSED
    h.test DROP                                     never answered (a timeout)

Names are case-insensitive, written without the final dot. A name with records but none of the
type asked gets NOERROR with no answer (NODATA); an unknown name gets NXDOMAIN; both carry the
SOA of the zone "test" (TTL 30, MINIMUM 5) in the authority section, as RFC 2308 wants. Answers
over UDP larger than 512 octets are truncated (TC set, no records) so that the client retries over
TCP. Names in answers are compressed (RFC 1035 4.1.4) unless --no-compress. Each query is logged
as "PROTO NAME TYPE RCODE ANSWERS" to --log (flushed). The zone file is read again when it
changes, so a test can edit it while the server runs.
"""
import os
import socket
import socketserver
import struct
import sys
import threading

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {"SERVFAIL": 2, "NXDOMAIN": 3, "REFUSED": 5}
RCODE_NAMES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


class Zone:
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.records = {}  # name -> list of (type, ttl, data)
        self.special = {}  # name -> "SERVFAIL" | "REFUSED" | "DROP"
        self.lock = threading.Lock()
        self.reload()

    def reload(self):
        try:
            m = os.stat(self.path).st_mtime_ns
        except OSError:
            return
        if m == self.mtime:
            return
        records, special = {}, {}
        with open(self.path) as f:
            for n, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                name = parts[0].lower().rstrip(".")
                rest = parts[1:]
                ttl = 60
                if rest and rest[0].isdigit():
                    ttl = int(rest[0])
                    rest = rest[1:]
                if not rest:
                    raise SystemExit("%s:%d: no type" % (self.path, n))
                t = rest[0].upper()
                if t in ("SERVFAIL", "REFUSED", "DROP"):
                    special[name] = t
                    continue
                if t not in TYPES:
                    raise SystemExit("%s:%d: unknown type %s" % (self.path, n, t))
                records.setdefault(name, []).append((TYPES[t], ttl, rest[1:]))
        with self.lock:
            self.records, self.special, self.mtime = records, special, m

    def lookup(self, name):
        self.reload()
        with self.lock:
            return self.records.get(name), self.special.get(name)


class Encoder:
    """Builds one DNS message, compressing names when asked."""

    def __init__(self, compress):
        self.buf = bytearray()
        self.compress = compress
        self.names = {}

    def name(self, name):
        name = name.rstrip(".")
        labels = [l for l in name.split(".") if l] if name else []
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            if self.compress and suffix in self.names:
                self.buf += struct.pack("!H", 0xC000 | self.names[suffix])
                return
            if len(self.buf) < 0x3FFF:
                self.names.setdefault(suffix, len(self.buf))
            raw = labels[i].encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError("bad label in %r" % name)
            self.buf += bytes([len(raw)]) + raw
        self.buf += b"\0"

    def rr(self, owner, rtype, ttl, data):
        self.name(owner)
        self.buf += struct.pack("!HHI", rtype, 1, ttl)
        at = len(self.buf)
        self.buf += b"\0\0"
        if rtype == TYPES["A"]:
            self.buf += socket.inet_pton(socket.AF_INET, data[0])
        elif rtype == TYPES["AAAA"]:
            self.buf += socket.inet_pton(socket.AF_INET6, data[0])
        elif rtype == TYPES["MX"]:
            self.buf += struct.pack("!H", int(data[0]))
            self.name(data[1] if data[1] != "." else "")
        elif rtype == TYPES["SRV"]:
            self.buf += struct.pack("!HHH", int(data[0]), int(data[1]), int(data[2]))
            # RFC 2782: the target is not compressed.
            saved, self.compress = self.compress, False
            self.name(data[3] if data[3] != "." else "")
            self.compress = saved
        elif rtype in (TYPES["CNAME"], TYPES["NS"]):
            self.name(data[0])
        elif rtype == TYPES["TXT"]:
            raw = " ".join(data).encode()
            self.buf += bytes([len(raw)]) + raw
        elif rtype == TYPES["SOA"]:
            self.name(data[0])
            self.name(data[1])
            self.buf += struct.pack("!IIIII", *[int(x) for x in data[2:7]])
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)


def parse_query(msg):
    if len(msg) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if qd != 1 or flags & 0x8000:
        return None
    off, labels = 12, []
    while True:
        if off >= len(msg):
            return None
        l = msg[off]
        off += 1
        if l == 0:
            break
        if l & 0xC0:
            return None
        labels.append(msg[off:off + l].decode("ascii", "replace"))
        off += l
    if off + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
    return qid, flags, ".".join(labels), qtype, qclass, msg[12:off + 4]


def answer(zone, msg, compress, udp, log, proto):
    q = parse_query(msg)
    if q is None:
        return None
    qid, flags, qname, qtype, qclass, question = q
    name = qname.lower()
    records, special = zone.lookup(name)
    if special == "DROP":
        log("%s %s %s DROP 0" % (proto, name, TYPE_NAMES.get(qtype, qtype)))
        return None
    rcode, answers = 0, []
    if special:
        rcode = RCODES[special]
    elif records is None:
        rcode = RCODES["NXDOMAIN"]
    else:
        answers = [r for r in records if r[0] == qtype]
        if not answers and qtype != TYPES["CNAME"]:
            answers = [r for r in records if r[0] == TYPES["CNAME"]]
    e = Encoder(compress)
    hflags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    nsoa = 1 if rcode == 3 or (rcode == 0 and not answers) else 0
    e.buf += struct.pack("!HHHHHH", qid, hflags, 1, len(answers), nsoa, 0)
    # The question, with its name registered for compression (RFC 1035 4.1.4).
    e.name(qname)
    e.buf += question[-4:]
    for t, ttl, data in answers:
        e.rr(qname, t, ttl, data)
    if nsoa:
        e.rr("test", TYPES["SOA"], 30, ["ns.test", "hostmaster.test", "1", "3600", "600", "86400", "5"])
    out = bytes(e.buf)
    if udp and len(out) > 512:
        # Truncated: the header (TC) and the question only.
        e = Encoder(compress)
        e.buf += struct.pack("!HHHHHH", qid, hflags | 0x0200, 1, 0, 0, 0)
        e.name(qname)
        e.buf += question[-4:]
        out = bytes(e.buf)
    log("%s %s %s %s %d%s" % (proto, name, TYPE_NAMES.get(qtype, qtype), RCODE_NAMES.get(rcode, rcode),
                              len(answers), " TC" if udp and out[2] & 0x02 else ""))
    return out


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        raise SystemExit(__doc__)
    port, zpath = int(args[0]), args[1]
    logf = ready = None
    compress = True
    i = 2
    while i < len(args):
        if args[i] == "--log":
            logf = open(args[i + 1], "a", buffering=1)
            i += 2
        elif args[i] == "--ready":
            ready = args[i + 1]
            i += 2
        elif args[i] == "--no-compress":
            compress = False
            i += 1
        else:
            raise SystemExit("unknown argument %s" % args[i])
    zone = Zone(zpath)
    lock = threading.Lock()

    def log(line):
        if logf:
            with lock:
                logf.write(line + "\n")

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))

    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.settimeout(10)
            try:
                while True:
                    hdr = s.recv(2, socket.MSG_WAITALL)
                    if len(hdr) < 2:
                        return
                    (n,) = struct.unpack("!H", hdr)
                    msg = s.recv(n, socket.MSG_WAITALL)
                    if len(msg) < n:
                        return
                    out = answer(zone, msg, compress, False, log, "tcp")
                    if out is not None:
                        s.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return

    class TCPServer(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    tcp = TCPServer(("127.0.0.1", port), TCPHandler)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    if ready:
        open(ready, "w").close()
    while True:
        msg, peer = udp.recvfrom(4096)
        try:
            out = answer(zone, msg, compress, True, log, "udp")
        except Exception as ex:  # a bad zone line must not kill the server
            log("error %r" % ex)
            out = None
        if out is not None:
            udp.sendto(out, peer)


if __name__ == "__main__":
    main()
