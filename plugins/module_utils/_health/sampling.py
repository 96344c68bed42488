# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The http probe with ``samples: N``: N requests in a row, their latency percentiles and error ratio.

    probe_http_sampled(check, obs, timeout, ctx)   one request (samples 1) or N of them, in this thread
    probe_http_sampled_steps(...)                  the same as steps, for the event loop (aio.Loop)
    percentile(values, fraction)                   nearest-rank percentile of a non-empty list

Each request is one ``net.probe_http_steps`` with its own Observation; a request is an error when it
raised (refused, timeout, TLS, no HTTP) or its answer failed the check's status, body or JSON
conditions. The latency measures (p50_ms, p95_ms, p99_ms, max_ms, min_ms, mean_ms) are over the
requests that got an answer; ``time_ms`` is their median. Without a threshold on ``error_ratio``,
``error_pct`` or ``errors``, a failed request makes the check CRITICAL as a single request would.
"""

from __future__ import annotations

import math

from .aio import run_blocking, sleep
from .net import probe_http_steps
from .outcome import PROBE_ERRORS, exception_state
from .probe import Observation
from .ranges import CRITICAL, SEVERITY, format_number

SAMPLE_MEASURES = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "min_ms", "mean_ms", "error_ratio", "error_pct", "errors", "samples")
ERROR_MEASURES = ("error_ratio", "error_pct", "errors")


def percentile(values, fraction):
    """The nearest-rank percentile: the smallest value with at least ``fraction`` of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, int(math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[min(rank, len(ordered)) - 1]


def _one(check, timeout, ctx):
    """The steps of one request -> (Observation, failure message or None)."""
    obs = Observation()
    try:
        yield from probe_http_steps(check, obs, timeout, ctx)
    except PROBE_ERRORS as exc:
        return obs, exception_state(exc, timeout)
    if obs.problems:
        worst = max(obs.problems, key=lambda problem: SEVERITY[problem[0]])
        return obs, (worst[0], "; ".join(msg for _state, msg in obs.problems))
    return obs, None


def probe_http_sampled(check, obs, timeout, ctx=None):
    run_blocking(probe_http_sampled_steps(check, obs, timeout, ctx))


def probe_http_sampled_steps(check, obs, timeout, ctx=None):
    """The steps of an http check: one request (samples 1) or N of them in a row."""
    count = check.get("samples") or 1
    if count == 1:
        yield from probe_http_steps(check, obs, timeout, ctx)
        return
    times, failures, last = [], [], None
    for number in range(count):
        left = ctx.remaining() if ctx is not None else float("inf")
        if number and left <= 0:
            break
        last, failure = yield from _one(check, max(0.001, min(timeout, left)), ctx)
        if "time_ms" in last.measures:
            times.append(last.measures["time_ms"])
        if failure:
            failures.append(failure)
        pause = min(check.get("sample_interval") or 0.0, left)
        if pause > 0 and number + 1 < count:
            yield from sleep(pause)
    _measure_samples(obs, last, times, failures, number + 1)
    _judge_samples(check, obs, times, failures, number + 1, count)


def _measure_samples(obs, last, times, failures, done):
    for name, value in last.measures.items():   # per-phase timings, status, certificate of the last request
        if name != "time_ms":
            obs.measure(name, value)
    obs.details.update(last.details)
    obs.measure("samples", done)
    obs.measure("errors", len(failures))
    obs.measure("error_ratio", len(failures) / done, 4)
    obs.measure("error_pct", 100.0 * len(failures) / done, 2)
    if times:
        obs.measure("time_ms", percentile(times, 0.5))
        for label, fraction in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            obs.measure(label, percentile(times, fraction))
        obs.measure("max_ms", max(times))
        obs.measure("min_ms", min(times))
        obs.measure("mean_ms", sum(times) / len(times))


def _judge_samples(check, obs, times, failures, done, count):
    m = obs.measures
    if times:
        obs.note("%d samples: p50 %s ms, p95 %s ms, p99 %s ms, max %s ms" % (
            done, *(format_number(round(m[k], 1)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))))
    else:
        obs.note("%d samples, none answered" % done)
    if done < count:
        obs.note("only %d of %d samples before the deadline" % (done, count))
    if not failures:
        obs.note("0 errors")
        return
    first = "%d of %d failed (%s%%), first: %s" % (len(failures), done, format_number(round(m["error_pct"], 2)), failures[0][1])
    judged = any(name in check["_ranges"] for name in ERROR_MEASURES)
    if judged and times:
        obs.note(first)            # the error thresholds judge the failures
    else:
        state = max((f[0] for f in failures), key=SEVERITY.__getitem__) if len(failures) == done else CRITICAL
        obs.problem(state, first)
