"""tests/integration/cmtpclient.py — an independent CMTP/1 test peer in Python (the system
OpenSSL through the ssl module, not our BoringSSL code) and a minimal RESP reader, for the
integration tests. Not a product client: it speaks the wire format by hand so tests can send
exactly the bytes they mean, including malformed ones."""

import hashlib
import os
import socket
import ssl
import time


def tls_context(ca_file, alpn=("cmtp/1",), min_version=ssl.TLSVersion.TLSv1_3,
                max_version=ssl.TLSVersion.TLSv1_3, check_hostname=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    ctx.load_verify_locations(ca_file)
    ctx.check_hostname = check_hostname
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class Conn:
    """One CMTP session over TLS. Lines are read with a deadline."""

    def __init__(self, port, ca_file, host="127.0.0.1", server_name="localhost", timeout=10.0,
                 ctx=None):
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ctx = ctx or tls_context(ca_file)
        self.s = self.ctx.wrap_socket(raw, server_hostname=server_name)
        self.s.settimeout(timeout)
        self.buf = b""
        self.greeting = None

    def read_line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server; partial: %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8")

    def read_greeting(self):
        self.greeting = self.read_line()
        return self.greeting

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.s.sendall(data)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.read_line()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def digest(body):
    return hashlib.sha256(body).hexdigest()


def new_txid():
    return "t" + os.urandom(12).hex()


def envelope_lines(sender, rcpts, body, txid, extra=""):
    lines = ["MAIL FROM:<%s> TXN=%s SIZE=%d DIGEST=%s%s" % (sender, txid, len(body),
                                                          digest(body), extra)]
    lines += ["RCPT TO:<%s>" % r for r in rcpts]
    return lines


def body_bytes(body, chunk=65536):
    out = b""
    for i in range(0, len(body), chunk):
        part = body[i:i + chunk]
        out += b"BODY %d\r\n" % len(part) + part
    return out


def send_message(c, sender, rcpts, body, txid=None, chunk=65536, extra=""):
    """Runs one transaction; returns (mail reply, [rcpt replies], end reply)."""
    txid = txid or new_txid()
    lines = envelope_lines(sender, rcpts, body, txid, extra)
    c.send("".join(l + "\r\n" for l in lines))
    mail = c.read_line()
    rr = [c.read_line() for _ in rcpts]
    if not mail.startswith("250") or not any(r.startswith("25") for r in rr):
        if mail.startswith("250"):
            c.send("RSET\r\n")
            c.read_line()
        return mail, rr, None
    c.send(body_bytes(body, chunk) + b"END\r\n")
    return mail, rr, c.read_line()


class Resp:
    """Minimal RESP2 client over a Unix socket for binary-exact reads."""

    def __init__(self, path, timeout=5.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("redis closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            d = self.s.recv(max(65536, n))
            if not d:
                raise ConnectionError("redis closed")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n + 2:]
        return out

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("bad RESP %r" % line)

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self._reply()


def wait_port(port, host="127.0.0.1", timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False
