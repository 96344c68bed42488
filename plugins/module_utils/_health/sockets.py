# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Non-blocking sockets for the probes, as step generators (see aio.py): name lookup, connect,
TLS handshake, send and receive, each bounded by the probe's ``Clock``.

    Clock(timeout)                                   ms since the start, seconds left (or the timeout ProbeFailed)
    connect_steps(host, port, clock, obs, resolver)  dns_ms, connect_ms -> the socket
    tls_steps(sock, check, host, port, clock, obs)   tls_ms -> the SSLSocket
    io_steps(clock, phase, sock, events, func, ...)  func(...) retried until the socket is ready

``resolver`` is ``Loop.lookup`` on the event loop (names resolved on a thread, once per run, and
non-blocking sockets) or None (a thread: getaddrinfo in it, and blocking sockets with the time
left as their timeout, so that a call waits once in C with the GIL released, as the blocking
probes did). The messages are those of the blocking probes before them.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
import time

from .aio import READ, WRITE
from .probe import ProbeFailed
from .ranges import CRITICAL, UNKNOWN, format_number

_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY)


class Clock:
    """Milliseconds since the probe started and seconds left in its budget."""

    def __init__(self, timeout):
        self.start = time.perf_counter()
        self.end = self.start + timeout
        self.timeout = timeout

    def ms(self):
        return (time.perf_counter() - self.start) * 1000.0

    def left(self, phase):
        left = self.end - time.perf_counter()
        if left <= 0:
            raise _timed_out(self, phase)
        return left


def wait_steps(target, events, clock, phase):
    """Until ``target`` is ready (True from the driver); the timeout ProbeFailed when the clock runs out."""
    while True:
        clock.left(phase)
        if (yield target, events, clock.end):
            return


def _timed_out(clock, phase):
    return ProbeFailed(CRITICAL, "timed out after %ss while %s" % (format_number(round(clock.timeout, 3)), phase))


def io_steps(clock, phase, sock, events, func, *args):
    """``func(*args)`` on ``sock``: on a non-blocking socket (the event loop) retried with a wait
    for ``events`` (or what TLS wants) between tries; on a blocking one (a thread) called once,
    with the time left as the socket's timeout (one wait in C, the GIL released throughout)."""
    if sock.gettimeout() != 0.0:
        sock.settimeout(clock.left(phase))
        try:
            return func(*args)
        except socket.timeout as exc:
            raise _timed_out(clock, phase) from exc
    while True:
        try:
            return func(*args)
        except ssl.SSLWantReadError:
            want = READ
        except ssl.SSLWantWriteError:
            want = WRITE
        except BlockingIOError:
            want = events
        yield from wait_steps(sock, want, clock, phase)


def _resolve_steps(host, port, clock, resolver):
    if resolver is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    lookup = resolver(host, port)
    while not lookup.event.is_set():
        yield from wait_steps(lookup, 0, clock, "resolving %s" % host)
    if lookup.error is not None:
        raise lookup.error
    return lookup.infos


def _connect_one(sock, addr, clock, where, blocking):
    if blocking:
        yield from io_steps(clock, "connecting to %s" % where, sock, WRITE, sock.connect, addr)
        return
    err = sock.connect_ex(addr)
    if err in _IN_PROGRESS:
        yield from wait_steps(sock, WRITE, clock, "connecting to %s" % where)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))    # OSError(ECONNREFUSED, ...) is a ConnectionRefusedError


def connect_steps(host, port, clock, obs, resolver=None):
    """Resolve and connect (DNS and connect timings in ``obs``) -> the socket: non-blocking with a
    ``resolver`` (the event loop), else blocking with a timeout (a thread: the steps never wait)."""
    try:
        infos = yield from _resolve_steps(host, port, clock, resolver)
    except socket.gaierror as exc:
        raise ProbeFailed(CRITICAL, "DNS lookup of %s failed: %s" % (host, exc.strerror or exc)) from exc
    obs.measure("dns_ms", clock.ms())
    mark, error = clock.ms(), None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(0.0 if resolver is not None else clock.timeout)
        connected = False
        try:
            yield from _connect_one(sock, addr, clock, "%s:%s" % (host, port), resolver is None)
            connected = True
        except OSError as exc:
            error = exc
            continue
        finally:
            if not connected:  # refused, timed out, or the run ended under it
                sock.close()
        obs.measure("connect_ms", clock.ms() - mark)
        return sock
    if isinstance(error, ConnectionRefusedError):
        raise ProbeFailed(CRITICAL, "connection to %s:%s refused" % (host, port))
    reason = getattr(error, "strerror", None) or error or "resolving %s" % host
    raise ProbeFailed(CRITICAL, "cannot connect to %s:%s: %s" % (host, port, reason))


# --------------------------------------------------------------------------- TLS

_TLS_CONTEXTS, _TLS_LOCK = {}, threading.Lock()


def _file_stamp(path):
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return stat.st_mtime_ns, stat.st_size


def tls_context(check):
    """The SSLContext of the check's TLS options, built once per process and options: loading the
    system CA store costs tens of milliseconds of CPU, which 200 https checks would pay 200 times.
    The files' mtime and size are part of the key, so a replaced CA or client certificate is read."""
    options = (bool(check.get("validate_certs", True)), bool(check.get("_no_hostname")),
               check.get("ca_path") or None, check.get("client_cert") or None, check.get("client_key") or None)
    key = options + tuple(_file_stamp(path) for path in options[2:] if path)
    with _TLS_LOCK:
        ctx = _TLS_CONTEXTS.get(key)
        if ctx is None:
            ctx = _TLS_CONTEXTS[key] = _new_tls_context(check)
    return ctx


def _new_tls_context(check):
    if check.get("validate_certs", True):
        ctx = ssl.create_default_context(cafile=check.get("ca_path") or None)
        ctx.check_hostname = not check.get("_no_hostname")   # the tls probe matches the names itself
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if check.get("client_cert"):
        ctx.load_cert_chain(check["client_cert"], check.get("client_key") or None)
    return ctx


def tls_steps(sock, check, host, port, clock, obs, server_hostname=None):
    """``sock`` wrapped in TLS with the check's options (tls_ms in ``obs``); failures are ProbeFailed.
    The plain socket belongs to the TLS socket from the wrap on (closing either closes both); the
    handshake waits as the socket does (io_steps)."""
    mark = clock.ms()
    try:
        tls_ctx = tls_context(check)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailed(UNKNOWN, "cannot load the TLS client certificate or CA: %s"
                          % (getattr(exc, "strerror", None) or exc)) from exc
    phase = "in the TLS handshake"
    clock.left(phase)
    tls = tls_ctx.wrap_socket(sock, server_hostname=server_hostname or host, do_handshake_on_connect=False)
    shaken = False
    try:
        yield from io_steps(clock, phase, tls, READ, tls.do_handshake)
        shaken = True
    except ssl.SSLCertVerificationError as exc:
        raise ProbeFailed(CRITICAL, "TLS certificate verification failed for %s: %s"
                          % (server_hostname or host, exc.verify_message or exc.reason)) from exc
    except (ssl.SSLError, ConnectionError) as exc:
        raise ProbeFailed(CRITICAL, "TLS handshake with %s:%s failed: %s"
                          % (host, port, getattr(exc, "reason", None) or exc)) from exc
    finally:
        if not shaken:
            tls.close()
    obs.measure("tls_ms", clock.ms() - mark)
    return tls
