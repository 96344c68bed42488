# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retries with jittered exponential backoff, in one place (amazon.aws AWSRetry is the model).

What is retried is decided on the error's type: botocore's ClientError by its code and HTTP
status (throttling, 5xx), botocore's connection and streaming errors, and the OS-level
ConnectionError and TimeoutError. botocore is imported on first use, where it is installed.
"""

from __future__ import annotations

import random
import time

from ._imports import Library

BOTOCORE = Library("botocore", "botocore", "botocore.exceptions")

RETRYABLE_S3_CODES = frozenset((
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
))


def _botocore_exceptions():
    """botocore.exceptions, or None where botocore is not installed (none of its errors can occur)."""
    return BOTOCORE.load().exceptions if BOTOCORE.available else None


def retry_errors():
    """The exception types call_with_retry looks at (is_retryable decides among them)."""
    exceptions = _botocore_exceptions()
    if exceptions is None:
        return (OSError,)
    return (OSError, exceptions.ClientError, exceptions.BotoCoreError)


def is_retryable(exc):
    """True for throttling, 5xx and connection errors (botocore or plain OS errors)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    exceptions = _botocore_exceptions()
    if exceptions is None:
        return False
    if isinstance(exc, exceptions.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0
        return err.get("Code") in RETRYABLE_S3_CODES or int(status) >= 500 or int(status) == 429
    return isinstance(exc, (exceptions.EndpointConnectionError, exceptions.ConnectionClosedError,
                            exceptions.ReadTimeoutError, exceptions.ConnectTimeoutError,
                            exceptions.ResponseStreamingError, exceptions.IncompleteReadError))


def call_with_retry(func, *args, attempts=5, base_delay=0.2, max_delay=8.0,
                    retryable=is_retryable, sleep=time.sleep, **kwargs):
    """Call ``func`` and retry it on retryable errors with full-jitter backoff."""
    errors = retry_errors()   # a tuple built at run time (botocore is imported lazily)
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except errors as exc:  # pylint: disable=catching-non-exception
            if attempt >= attempts or not retryable(exc):
                raise
            sleep(random.uniform(0, min(max_delay, base_delay * (2 ** (attempt - 1)))))
    raise AssertionError("unreachable")  # pragma: no cover
