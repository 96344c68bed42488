# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retries with jittered exponential backoff, in one place (amazon.aws AWSRetry is the model)."""

from __future__ import annotations

import random
import time

RETRYABLE_S3_CODES = frozenset((
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
))


def is_retryable(exc):
    """True for throttling, 5xx and connection errors (botocore or plain OS errors)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {}) or {}
        status = (response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0
        return err.get("Code") in RETRYABLE_S3_CODES or int(status) >= 500 or int(status) == 429
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError"):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def call_with_retry(func, *args, attempts=5, base_delay=0.2, max_delay=8.0,
                    retryable=is_retryable, sleep=time.sleep, **kwargs):
    """Call ``func`` and retry it on retryable errors with full-jitter backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            if attempt >= attempts or not retryable(exc):
                raise
            sleep(random.uniform(0, min(max_delay, base_delay * (2 ** (attempt - 1)))))
    raise AssertionError("unreachable")  # pragma: no cover
