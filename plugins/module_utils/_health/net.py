# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network probes of the health engine: http, tcp, redis; JSON conditions; certificate expiry.

Only the standard library: socket / ssl / http.client give the per-phase timings (DNS, connect,
TLS handshake, first byte) and the peer certificate; redis is a minimal RESP client.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import io
import json
import re
import socket
from urllib.parse import unquote, urlsplit

from .._errors import ConfigError
from .aio import READ, WRITE, run_blocking
from .probe import ProbeFailed
from .sockets import Clock, connect_steps, io_steps, tls_steps
from .ranges import CRITICAL, UNKNOWN, format_number

MAX_BODY = 1024 * 1024  # bytes of an HTTP body kept for body_contains / json_conditions
USER_AGENT = "opskit.runbook-health_check"


# --------------------------------------------------------------------------- JSON conditions

_COND_RE = re.compile(r"^\s*(?P<path>[^\s=!<>]+)\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>.+?)\s*$")
_ORDERING = ("<", "<=", ">", ">=")
_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_path(path, what="path"):
    """``checks.db.status`` / ``items[0].name`` / ``items.0.name`` -> list of keys and indexes."""
    text = path[2:] if path.startswith("$.") else ("" if path == "$" else path)
    keys = []
    for part in filter(None, re.split(r"\.(?![^\[]*\])", text)) if text else ():
        match = re.match(r"^([^\[\]]*)((?:\[\d+\])*)$", part)
        if not match:
            raise ConfigError("%s: cannot parse path %r" % (what, path))
        if match.group(1):
            keys.append(match.group(1))
        keys.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return keys


def parse_condition(text, what="condition"):
    """Parse ``<path> <op> <JSON value>``; raises ConfigError naming ``what``."""
    match = _COND_RE.match(text or "")
    if not match:
        raise ConfigError("%s: cannot parse condition %r (use PATH OP VALUE, e.g. status == \"UP\";"
                          " OP is one of ==, !=, <, <=, >, >=)" % (what, text))
    try:
        value = json.loads(match.group("value"))
    except ValueError as exc:
        raise ConfigError("%s: the value in %r is not JSON (quote strings: \"UP\"; numbers, true, false, null)"
                          % (what, text)) from exc
    if isinstance(value, (dict, list)):
        raise ConfigError("%s: compare with a string, number, true, false or null, not %r" % (what, match.group("value")))
    if match.group("op") in _ORDERING and not _is_number(value):
        raise ConfigError("%s: %s needs a number on the right in %r" % (what, match.group("op"), text))
    return {"text": text.strip(), "path": match.group("path"), "keys": parse_path(match.group("path"), what),
            "op": match.group("op"), "value": value, "value_text": match.group("value")}


_MISSING = object()


def resolve(document, keys):
    node = document
    for key in keys:
        if isinstance(node, list) and str(key).isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and str(key) in node:
            node = node[str(key)]
        else:
            return _MISSING
    return node


def evaluate_condition(cond, document):
    """-> (passed: bool | None, text with the resolved value). None means UNKNOWN (cannot tell)."""
    actual = resolve(document, cond["keys"])
    shown = "missing" if actual is _MISSING else json.dumps(actual)[:80]
    text = "%s (%s) %s %s" % (cond["path"], shown, cond["op"], cond["value_text"])
    if actual is _MISSING:
        return None, text
    expected, op = cond["value"], cond["op"]
    if _is_number(expected):
        number = actual if _is_number(actual) else None
        if isinstance(actual, str):
            try:
                number = float(actual)
            except ValueError:
                number = None
        if number is None:
            return None, "%s: %s is not a number" % (text, shown)
        return _OPS[op](number, expected), text
    if isinstance(expected, str):
        left = actual if isinstance(actual, str) else json.dumps(actual)
        return _OPS[op](left, expected), text
    same = actual is expected  # true, false and null compare by identity (1 is not true)
    return (same if op == "==" else not same), text


# --------------------------------------------------------------------------- certificates

def _der(data, pos):
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, pos, pos + length


def cert_not_after(der):
    """notAfter of a DER X.509 certificate as an aware datetime (tiny DER walk, no dependency)."""
    _tag, start, _end = _der(der, 0)            # Certificate
    _tag, pos, _end = _der(der, start)          # tbsCertificate
    tag, _start, end = _der(der, pos)
    if tag == 0xA0:                             # [0] version
        pos = end
    for _skip in range(3):                      # serialNumber, signature, issuer
        _tag, _start, pos = _der(der, pos)
    _tag, validity, _end = _der(der, pos)
    _tag, _start, pos = _der(der, validity)     # notBefore
    tag, start, end = _der(der, pos)            # notAfter
    text = der[start:end].decode("ascii")
    if tag == 0x17:                             # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = ("20" if year < 50 else "19") + text
    return datetime.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)


def cert_days_left(der, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (cert_not_after(der) - now).total_seconds() / 86400.0


# --------------------------------------------------------------------------- sockets

_Clock = Clock   # the name tls.py and the tests know


def _connect(host, port, clock, obs):
    """Resolve and connect in this thread (DNS and connect timings in ``obs``) -> a socket with a timeout."""
    return run_blocking(connect_steps(host, port, clock, obs))


def _timed(clock, phase, func, *args):
    try:
        return func(*args)
    except socket.timeout as exc:
        raise ProbeFailed(CRITICAL, "timed out after %ss while %s"
                          % (format_number(round(clock.timeout, 3)), phase)) from exc


def tls_handshake(sock, check, host, port, clock, obs, server_hostname=None):
    """``sock`` wrapped in TLS in this thread (tls_ms in ``obs``); failures are ProbeFailed."""
    return run_blocking(tls_steps(sock, check, host, port, clock, obs, server_hostname))


# --------------------------------------------------------------------------- http

def _leaf_expiry(sock, obs):
    der = sock.getpeercert(binary_form=True)
    if der:
        try:
            obs.measure("cert_days", round(cert_days_left(der), 2), 2)
            obs.details["cert_not_after"] = cert_not_after(der).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (ValueError, IndexError):
            obs.details["cert_not_after"] = None


def probe_http(check, obs, timeout, ctx=None):
    run_blocking(probe_http_steps(check, obs, timeout, ctx))


def probe_http_steps(check, obs, timeout, ctx=None):
    """The steps of one request of an http check and its judgement (status, body, JSON conditions)."""
    response, data = yield from fetch_http_steps(check, obs, timeout, getattr(ctx, "resolver", None))
    _judge_http(check, obs, response, data)


def fetch_http(check, obs, timeout):
    """One request of ``check`` in this thread -> (response, body bytes); see fetch_http_steps."""
    response, data = run_blocking(fetch_http_steps(check, obs, timeout))  # pylint: disable=unpacking-non-sequence
    return response, data  # a pair that callers can unpack (pylint infers StopIteration.value as None)


def fetch_http_steps(check, obs, timeout, resolver=None):
    """The steps of one request of ``check`` (url, method, headers, body, TLS options) -> (response, body bytes).

    Timings (dns_ms, connect_ms, tls_ms, first_byte_ms, time_ms), status_code, body_bytes and the
    certificate expiry go into ``obs``; every failure is a ProbeFailed naming host and port."""
    url = urlsplit(check["url"])
    https = url.scheme == "https"
    host, port = url.hostname, url.port or (443 if https else 80)
    clock = Clock(timeout)
    sock = yield from connect_steps(host, port, clock, obs, resolver)
    try:
        if https:
            sock = yield from tls_steps(sock, check, host, port, clock, obs)
            _leaf_expiry(sock, obs)
        request = _request_bytes(check, url, host, port)
        phase = "sending the request"
        clock.left(phase)
        while request:
            sent = yield from io_steps(clock, phase, sock, WRITE, sock.send, request)
            request = request[sent:]
        raw, head = yield from _receive_steps(sock, check, clock, obs, "%s:%s" % (host, port))
    finally:
        sock.close()
    response, data = _parse_response(raw, head, check, clock, obs, "%s:%s" % (host, port))
    obs.measure("status_code", response.status)
    obs.measure("body_bytes", len(data))
    return response, data


class _Collector:
    """Stands for the socket of an HTTPConnection: keeps what http.client would send."""

    def __init__(self):
        self.parts = []

    def sendall(self, data):
        self.parts.append(bytes(data))


def _request_bytes(check, url, host, port):
    """The request as http.client formats it (request line, Host, Accept-Encoding, Content-Length...)."""
    conn = http.client.HTTPConnection(host, port)
    conn.sock = out = _Collector()
    body, headers = _request_body(check, url)
    hostport = ("[%s]" % host if ":" in host else host) + ("" if url.port is None else ":%d" % port)
    headers.setdefault("Host", hostport)
    headers.setdefault("User-Agent", USER_AGENT)
    headers.setdefault("Connection", "close")
    conn.request(check["method"], (url.path or "/") + ("?" + url.query if url.query else ""), body, headers)
    return b"".join(out.parts)


def _receive_steps(sock, check, clock, obs, where):
    """The bytes of the answer: until the server closes, or the message is complete (_complete)."""
    raw, head, phase = bytearray(), None, "waiting for the first byte"
    while True:
        try:
            chunk = yield from io_steps(clock, phase, sock, READ, sock.recv, 65536)
        except ConnectionError as exc:
            if head is None:
                raise ProbeFailed(CRITICAL, "no valid HTTP answer from %s: %s" % (where, exc)) from exc
            raise ProbeFailed(CRITICAL, "reading the body from %s failed: %s" % (where, exc)) from exc
        if not chunk:
            return bytes(raw), head
        raw += chunk
        if head is None:
            head = _head(raw)
            if head is not None:
                obs.measure("first_byte_ms", clock.ms())
                phase = "reading the body"
        if head is not None and _complete(raw, head, check["method"]):
            return bytes(raw), head


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(rb"HTTP/\d(?:\.\d)? +(\d{3})")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([2-5]\d\d)(?: [^\r\n]*)?$")


def _head(raw):
    """(start, end, status, {lower-case header: value}, simple) of the head of the final answer, or
    None while incomplete; ``100 Continue`` heads are skipped as http.client skips them. ``simple``:
    a CRLF head of well-formed fields that the fast path (_plain_answer) may read without http.client."""
    pos = 0
    while True:
        match = _HEAD_END.search(raw, pos)
        if match is None:
            return None
        status = _STATUS.match(raw, pos)
        code = int(status.group(1)) if status else 0
        if code != 100:
            text, fields = bytes(raw[pos:match.start()]), {}
            crlf = match.group() == b"\r\n\r\n" and b"\n" not in text.replace(b"\r\n", b"")
            lines = text.split(b"\r\n" if crlf else b"\n")
            simple = crlf and len(lines) <= 100 and bool(_STATUS_LINE.match(lines[0]))
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                simple = simple and bool(sep) and line[:1] not in (b" ", b"\t")
                fields.setdefault(name.strip().lower(), value.strip())
            return pos, match.end(), code, fields, simple
        pos = match.end()


def _chunked_done(body):
    pos, total = 0, 0
    while total < MAX_BODY:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(bytes(body[pos:eol]).split(b";")[0].strip(), 16)
        except ValueError:
            return True          # not chunked after all: http.client tells what is wrong
        if size == 0:
            return body.find(b"\r\n\r\n", eol) >= 0
        pos, total = eol + 2 + size + 2, total + size
        if pos > len(body):
            return False
    return True


def _complete(raw, head, method):
    """Whether ``raw`` holds the whole answer (or the MAX_BODY bytes that are read of it)."""
    _start, end, code, fields, _simple = head
    if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
        return True
    body = raw[end:]
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        return _chunked_done(body)
    length = fields.get(b"content-length")
    if length is not None and length.isdigit():
        return len(body) >= min(int(length), MAX_BODY)
    return len(body) >= MAX_BODY     # delimited by the close


class _Replay:
    """Stands for a socket holding ``data``, for http.client.HTTPResponse to parse."""

    def __init__(self, data):
        self.data = data

    def makefile(self, mode):
        return io.BytesIO(self.data)


class _Answer:
    """The status, reason and header fields of an answer read by the fast path."""

    def __init__(self, status, reason, fields):
        self.status, self.reason, self.fields = status, reason, fields


def _plain_answer(raw, head, method):
    """(answer, body) of a well-formed answer without transfer coding, read as http.client would
    read it (the first Content-Length, else up to the close; none for HEAD, 204, 304), or None:
    http.client reads the others (chunked, odd heads, short bodies) and reports their errors."""
    if head is None or not head[4] or b"transfer-encoding" in head[3]:
        return None
    start, end, code, fields, _simple = head
    reason = bytes(raw[start:raw.index(b"\r\n", start)]).partition(b" ")[2].partition(b" ")[2]
    answer = _Answer(code, reason.decode("iso-8859-1"), fields)
    if method == "HEAD" or code in (204, 304):
        return answer, b""
    length = fields.get(b"content-length")
    if length is None:
        return answer, raw[end:end + MAX_BODY]
    if not length.isdigit():
        return None
    want = min(int(length), MAX_BODY)
    return (answer, raw[end:end + want]) if len(raw) - end >= want else None


def _parse_response(raw, head, check, clock, obs, where):
    """The received bytes -> (response, body): the fast path, else http.client's parse, with the
    errors of a blocking read."""
    plain = _plain_answer(raw, head, check["method"])
    if plain is not None:
        obs.measure("time_ms", clock.ms())
        return plain
    response = http.client.HTTPResponse(_Replay(raw), method=check["method"])
    try:
        response.begin()
    except (http.client.HTTPException, ConnectionError) as exc:
        raise ProbeFailed(CRITICAL, "no valid HTTP answer from %s: %s" % (where, type(exc).__name__ if not str(exc) else exc)) from exc
    if "first_byte_ms" not in obs.measures:     # a head that only the close ended
        obs.measure("first_byte_ms", clock.ms())
    try:
        data = response.read(MAX_BODY)
    except (http.client.HTTPException, ConnectionError) as exc:
        raise ProbeFailed(CRITICAL, "reading the body from %s failed: %s" % (where, exc)) from exc
    obs.measure("time_ms", clock.ms())
    return response, data


def basic_auth(user, password):
    """The value of an ``Authorization`` header for HTTP basic authentication."""
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")


def _request_body(check, url):
    headers = {str(k): str(v) for k, v in (check.get("headers") or {}).items()}
    if url.username is not None and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = basic_auth(unquote(url.username), unquote(url.password or ""))
    body = check.get("body")
    if body is None:
        return None, headers
    if isinstance(body, (dict, list)):
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode("utf-8"), headers
    return str(body).encode("utf-8"), headers


def _judge_http(check, obs, response, data):
    status = response.status
    accepted = check.get("status_codes")
    obs.note("HTTP %d in %s ms" % (status, format_number(round(obs.measures["time_ms"], 1))))
    if (status not in accepted) if accepted else not 200 <= status <= 299:
        obs.problem(CRITICAL, "status (%d) not in %s" % (status, (
            ", ".join(str(c) for c in accepted)) if accepted else "200-299"))
    if check.get("body_contains") and check["body_contains"] not in data.decode("utf-8", "replace"):
        obs.problem(CRITICAL, "body does not contain %r" % check["body_contains"])
    conditions = check.get("_conditions") or ()
    if not conditions:
        return
    try:
        document = json.loads(data.decode("utf-8"))
    except ValueError:
        snippet = " ".join(data[:60].decode("utf-8", "replace").split())
        obs.problem(UNKNOWN, "body is not JSON (%r), cannot evaluate json_conditions" % snippet)
        return
    passed = 0
    for cond in conditions:
        ok, text = evaluate_condition(cond, document)
        if ok is None:
            obs.problem(UNKNOWN, text)
        elif not ok:
            obs.problem(CRITICAL, "condition failed: %s" % text)
        else:
            passed += 1
    if passed:
        obs.note("%d of %d conditions passed" % (passed, len(conditions)))


# --------------------------------------------------------------------------- tcp

def probe_tcp(check, obs, timeout, ctx=None):
    clock = _Clock(timeout)
    host, port = check["host"], check["port"]
    sock = _connect(host, port, clock, obs)
    try:
        if check.get("send"):
            sock.settimeout(clock.left("sending"))
            _timed(clock, "sending", sock.sendall, check["send"].encode("utf-8"))
        if check.get("expect"):
            expect, got = check["expect"].encode("utf-8"), b""
            while expect not in got and len(got) < 65536:
                sock.settimeout(clock.left("waiting for %r" % check["expect"]))
                chunk = _timed(clock, "waiting for %r (got %r)" % (check["expect"], got[:60].decode("utf-8", "replace")),
                               sock.recv, 4096)
                if not chunk:
                    break
                got += chunk
            if expect not in got:
                obs.problem(CRITICAL, "expected %r, got %r" % (check["expect"], got[:80].decode("utf-8", "replace")))
    finally:
        sock.close()
    obs.measure("time_ms", clock.ms())
    obs.note("%s:%s answered in %s ms" % (host, port, format_number(round(obs.measures["time_ms"], 1))))


# --------------------------------------------------------------------------- redis

class RespError(Exception):
    pass


def _resp_command(sock, reader, *args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        data = str(arg).encode("utf-8")
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    sock.sendall(out)
    return _resp_read(reader)


def _resp_read(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        raise RespError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2].decode("utf-8", "replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_resp_read(reader) for _i in range(size)]
    raise ConnectionError("not a Redis answer: %r" % line[:40])


def parse_info(text):
    info = {}
    for line in (text or "").splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def probe_redis(check, obs, timeout, ctx=None):
    clock = _Clock(timeout)
    host, port = check["host"], check["port"]
    sock = _connect(host, port, clock, obs)
    reader = sock.makefile("rb")
    try:
        sock.settimeout(clock.left("talking to redis"))
        try:
            if check.get("password"):
                args = ("AUTH", check["user"], check["password"]) if check.get("user") else ("AUTH", check["password"])
                _timed(clock, "authenticating", _resp_command, sock, reader, *args)
            mark = clock.ms()
            pong = _timed(clock, "waiting for PONG", _resp_command, sock, reader, "PING")
            obs.measure("ping_ms", clock.ms() - mark)
            info = parse_info(_timed(clock, "reading INFO", _resp_command, sock, reader, "INFO"))
        except RespError as exc:
            text = str(exc)
            if check.get("password"):
                text = text.replace(check["password"], "********")
            # from None: the server's error text may echo the password (masked above, not in the cause)
            raise ProbeFailed(CRITICAL, "redis %s:%s answered an error: %s" % (host, port, text)) from None
        except (ConnectionError, ValueError) as exc:
            raise ProbeFailed(CRITICAL, "redis %s:%s: %s" % (host, port, exc)) from exc
    finally:
        reader.close()
        sock.close()
    if pong != "PONG":
        obs.problem(CRITICAL, "PING answered %r instead of PONG" % (pong,))
    used, maxmem = _int(info.get("used_memory")), _int(info.get("maxmemory"))
    system = _int(info.get("total_system_memory"))
    obs.measure("used_memory_bytes", used)
    obs.measure("maxmemory_bytes", maxmem)
    obs.measure("connected_clients", _int(info.get("connected_clients")))
    limit = maxmem or system
    if used is not None and limit:
        obs.measure("memory_pct", 100.0 * used / limit, 3)
    obs.details.update({"redis_version": info.get("redis_version"), "role": info.get("role"),
                        "memory_limit": "maxmemory" if maxmem else ("system memory" if system else None)})
    obs.note("PONG in %s ms, %s clients, memory %s%% of %s" % (
        format_number(round(obs.measures.get("ping_ms", 0), 2)), info.get("connected_clients", "?"),
        format_number(round(obs.measures.get("memory_pct", 0), 1)), obs.details["memory_limit"] or "?"))


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = ["probe_http", "fetch_http", "basic_auth", "probe_tcp", "probe_redis", "parse_condition", "evaluate_condition",
           "cert_not_after", "cert_days_left", "parse_info"]
