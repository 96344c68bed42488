# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an error escaping a probe means: ``PROBE_ERRORS`` and ``exception_state(exc, timeout)``.

Used by the engine for every attempt, and by the sampling http probe for each of its requests.
"""

from __future__ import annotations

import http.client
import socket
import ssl

from .._errors import MissingLibraryError, OpsError, ServiceError
from .probe import ProbeFailed, one_line
from .ranges import CRITICAL, UNKNOWN, format_number

# What a probe can raise besides ProbeFailed: socket, DNS, TLS and file errors (OSError: socket.timeout,
# socket.gaierror, ssl.SSLError are OSErrors), an HTTP answer that is no HTTP, a value that does not
# parse (ValueError, UnicodeError), and the OpsErrors of the shared clients (docker, kubernetes,
# PostgreSQL connections; the probes translate the SDKs' own errors into these or into ProbeFailed).
PROBE_ERRORS = (ProbeFailed, OpsError, OSError, http.client.HTTPException, ValueError)


def exception_state(exc, timeout):
    """(state, message) for an exception escaping a probe; never raises."""
    if isinstance(exc, ProbeFailed):
        return exc.state, exc.msg
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return CRITICAL, "timed out after %ss" % format_number(round(timeout, 3))
    if isinstance(exc, socket.gaierror):
        return CRITICAL, "DNS lookup failed: %s" % (exc.strerror or exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CRITICAL, "TLS certificate verification failed: %s" % (exc.verify_message or exc.reason or exc)
    if isinstance(exc, ssl.SSLError):
        return CRITICAL, "TLS error: %s" % (exc.reason or exc)
    if isinstance(exc, ConnectionRefusedError):
        return CRITICAL, "connection refused"
    if isinstance(exc, OSError):
        return CRITICAL, "%s" % (exc.strerror or exc or type(exc).__name__)
    if isinstance(exc, MissingLibraryError):
        return UNKNOWN, exc.msg
    if isinstance(exc, ServiceError):
        return CRITICAL, exc.msg
    if isinstance(exc, OpsError):
        return UNKNOWN, exc.msg
    return UNKNOWN, unexpected("probe error", exc)


def unexpected(what, exc):
    return "%s: %s: %s" % (what, type(exc).__name__, one_line(exc, 300))
