# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metric probes of the health engine: ``metrics`` (a Prometheus text-exposition endpoint) and
``prometheus`` (an instant PromQL query against a Prometheus server).

    probe_metrics(check, obs, timeout, ctx)      scrape, select samples by name and labels, judge
    probe_prometheus(check, obs, timeout, ctx)   GET /api/v1/query, judge the scalar or vector
    histogram_quantile(fraction, buckets)        quantile from cumulative (upper bound, count) pairs
    judge_series(check, obs, series, what)       one value per series -> measures, state per series

Both fetch through net.fetch_http (timings, TLS options, headers, basic auth from ``user`` and
``password`` or the URL, bearer tokens), and both end in ``judge_series``: with ``aggregate: none``
every series is judged on its own (the ``value`` measure is the worst series' value), otherwise
the series are combined (sum, min, max, avg, count) into ``value``. No series at all ends in the
state of ``empty``. The text format is parsed by prometheus_client's parser.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlencode, urlsplit, urlunsplit

from .._imports import Library
from .net import basic_auth, fetch_http
from .probe import ProbeFailed, one_line
from .ranges import CRITICAL, OK, SEVERITY, UNKNOWN, evaluate, format_number

PROMETHEUS_PARSER = Library("prometheus_client", "prometheus_client.parser")
MAX_SHOWN_SERIES = 20  # series listed in details.series and named in the message


def _auth_check(check, url):
    """``check`` for one GET of ``url``, with basic or bearer authentication in its headers."""
    headers = dict(check.get("headers") or {})
    if check.get("bearer_token"):
        headers.setdefault("Authorization", "Bearer %s" % check["bearer_token"])
    elif check.get("user") is not None or check.get("password") is not None:
        headers.setdefault("Authorization", basic_auth(check.get("user") or "", check.get("password") or ""))
    return dict(check, url=url, method="GET", body=None, headers=headers)


def _labels_text(labels):
    return "{%s}" % ", ".join('%s="%s"' % item for item in sorted(labels.items()))


def _aggregate(kind, values):
    if kind == "sum":
        return sum(values)
    if kind == "min":
        return min(values)
    if kind == "max":
        return max(values)
    if kind == "avg":
        return sum(values) / len(values)
    return len(values)


def judge_series(check, obs, series, what):
    """Measures and problems from ``series`` (list of (labels, value)); ``what`` names the source."""
    series = list(series)
    nan = [labels for labels, value in series if math.isnan(value)]
    series = [(labels, value) for labels, value in series if not math.isnan(value)]
    obs.measure("series", len(series))
    if nan:
        obs.note("%d series with value NaN left out" % len(nan))
    if not series:
        state = (check.get("empty") or "unknown").upper()
        obs.note("%s: no %s" % (what, "series with a number" if nan else "series"))
        if state != OK:
            obs.problem(state, "%s returned no series (empty: %s)" % (what, check.get("empty") or "unknown"))
        return
    values = [value for _labels, value in series]
    for kind in ("min", "max", "sum", "avg"):
        obs.measure(kind, _aggregate(kind, values), 6)
    aggregate = check.get("aggregate") or "none"
    if aggregate != "none":
        obs.measure("value", _aggregate(aggregate, values), 6)
        obs.note("%s: %s of %d series = %s" % (what, aggregate, len(series), format_number(round(obs.measures["value"], 6))))
        return
    warn, crit = (check.get("_ranges") or {}).get("value", (None, None))
    judged = [(labels, value, evaluate(value, warn, crit)) for labels, value in series]
    judged.sort(key=lambda item: -SEVERITY[item[2]])
    worst_labels, worst_value, _state = judged[0]
    obs.measure("value", worst_value, 6)
    obs.details["series"] = [{"labels": labels, "value": value, "status": state}
                             for labels, value, state in judged[:MAX_SHOWN_SERIES]]
    if len(series) == 1:
        obs.note("%s%s = %s" % (what, _labels_text(worst_labels) if worst_labels else "", format_number(round(worst_value, 6))))
        return
    bad = [item for item in judged if item[2] != OK]
    obs.note("%s: %d series, %d not OK%s" % (what, len(series), len(bad), "; worst %s = %s" % (
        _labels_text(worst_labels), format_number(round(worst_value, 6))) if bad else ""))
    if len(bad) > 1:
        obs.note("also " + ", ".join("%s %s = %s" % (state, _labels_text(labels), format_number(round(value, 6)))
                                     for labels, value, state in bad[1:MAX_SHOWN_SERIES]))
    obs.details["worst_series"] = worst_labels


# --------------------------------------------------------------------------- metrics (text exposition)

def histogram_quantile(fraction, buckets):
    """The ``fraction`` quantile of cumulative ``buckets`` [(upper bound, count)], as PromQL's
    histogram_quantile: linear within the bucket, the highest finite bound if it falls in +Inf;
    NaN without observations or without a finite bucket."""
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return math.nan
    rank = fraction * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            start = previous_bound if (previous_bound or bound > 0) else bound
            return start + (bound - start) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def _matches(sample_labels, wanted):
    return all(sample_labels.get(str(key)) == str(value) for key, value in wanted.items())


def _histogram_series(family, check):
    """One quantile over the matching buckets of a histogram family, summed by ``le``."""
    sums = {}
    for sample in family.samples:
        if sample.name == family.name + "_bucket" and _matches(sample.labels, check.get("labels") or {}):
            bound = float(sample.labels.get("le", "nan"))
            sums[bound] = sums.get(bound, 0.0) + sample.value
    if not sums:
        return []
    value = histogram_quantile(check["quantile"], list(sums.items()))
    return [({"quantile": format_number(check["quantile"])}, value)]


def select_samples(families, check):
    """(labels, value) of the samples ``check`` selects: by sample name and labels, or a quantile
    of a histogram (estimated from its buckets) or of a summary (its quantile sample)."""
    name, wanted = check["metric"], check.get("labels") or {}
    if check.get("quantile") is not None:
        for family in families:
            if family.name == name or family.name + "_bucket" == name:
                if family.type == "histogram":
                    return _histogram_series(family, check)
                if family.type == "summary":
                    q = check["quantile"]
                    return [(dict(s.labels), s.value) for s in family.samples
                            if s.name == family.name and _matches(s.labels, wanted)
                            and float(s.labels.get("quantile", "nan")) == q]
                raise ProbeFailed(UNKNOWN, "metric %s is a %s, quantile needs a histogram or a summary" % (name, family.type))
        return []
    return [(dict(s.labels), s.value) for family in families for s in family.samples
            if s.name == name and _matches(s.labels, wanted)]


def probe_metrics(check, obs, timeout, ctx=None):
    parser = PROMETHEUS_PARSER.load()  # MissingLibraryError (UNKNOWN) without prometheus_client
    response, data = fetch_http(_auth_check(check, check["url"]), obs, timeout)
    where = "%s:%s" % (urlsplit(check["url"]).hostname, urlsplit(check["url"]).port or "")
    if response.status != 200:
        raise ProbeFailed(CRITICAL, "metrics endpoint %s answered HTTP %d" % (where.rstrip(":"), response.status))
    try:
        families = list(parser.text_string_to_metric_families(data.decode("utf-8")))
    except (ValueError, TypeError, IndexError, KeyError, UnicodeError) as exc:
        raise ProbeFailed(UNKNOWN, "cannot parse the metrics of %s: %s" % (where.rstrip(":"), one_line(exc, 120))) from None
    obs.details["families"] = len(families)
    what = check["metric"] + ("" if check.get("quantile") is None else " q%s" % format_number(check["quantile"]))
    judge_series(check, obs, select_samples(families, check), what)


# --------------------------------------------------------------------------- prometheus (PromQL)

def query_url(base, query):
    """``base`` (the server URL, maybe with a path prefix) + ``/api/v1/query?query=...``."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/api/v1/query"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode({"query": query}), ""))


def parse_query_answer(status, data):
    """[(labels, value)] of an instant query answer; ProbeFailed (UNKNOWN) for what is not one."""
    try:
        answer = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeError):
        state = UNKNOWN if status < 500 else CRITICAL
        raise ProbeFailed(state, "Prometheus answered HTTP %d with no JSON (%r)" % (status, one_line(data[:60].decode("utf-8", "replace")))) from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else None
        kind = answer.get("errorType") if isinstance(answer, dict) else None
        state = CRITICAL if status >= 500 or status in (401, 403) else UNKNOWN
        raise ProbeFailed(state, "Prometheus query failed (HTTP %d%s): %s" % (
            status, ", %s" % kind if kind else "", one_line(error or "no status success in the answer", 200)))
    data = answer.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "vector":
            return [(dict(item.get("metric") or {}), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [({}, float(result[1]))]
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise ProbeFailed(UNKNOWN, "Prometheus answered a %s that does not parse: %s" % (kind, one_line(exc, 100))) from None
    raise ProbeFailed(UNKNOWN, "Prometheus answered a %s; the query must give an instant vector or a scalar" % kind)


def probe_prometheus(check, obs, timeout, ctx=None):
    response, data = fetch_http(_auth_check(check, query_url(check["url"], check["query"])), obs, timeout)
    series = parse_query_answer(response.status, data)
    judge_series(check, obs, series, "query")
