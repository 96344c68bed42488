#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout on a real Docker Engine, side by side with the runbooks' recreate-and-wait.

Two measurements, each repeated ``--runs`` times, for both variants:

1. Broken upgrade (restart policy unless-stopped). Detection = from the start of the upgrade
   until the failure is known; restore = from then until the previous version answers
   GET /version again (seen by a poller asking every 50 ms). rollout runs with its DEFAULT
   settings (timeout 300, monitor 10, rollback_timeout 120); its total also contains the 10 s
   monitor window of the restored version. The broken kinds:
     exit    exits at start (no health checks)
     late    "ready" at once, exits after 1 s, restarts: a crash while the health check retries
     503     serves, but its health endpoint answers 503
     port    listens on the wrong port (the published port never answers)
   late, 503 and port are gated by one HTTP check with ``--check-retries`` (default 7) and
   ``--check-interval`` (default 1 s): the check's failure budget, retries x interval plus the
   attempts' own time, is what a service that answers but is broken costs (the gate cannot
   tell it from one that is still starting); a crash ends the gate at once.
     rollout         opskit.runbook.rollout's code (the module's ``run``), fail fast + recorded rollback
     recreate+wait   the runbooks' procedure as community.docker's docker_container does it:
                     remove the old container, run the new one with the same settings, then the
                     runbooks' verify step (an ``uri`` until-loop: GET /cgi-bin/health every 1 s
                     until 200 or ``--deadline``, default 60 s), then re-run the old image with
                     the same settings ("pull the old tag, restart")

2. Healthy upgrade of a container with a published port (v1 -> v2, both with a HEALTHCHECK):
   GET /version every 50 ms during the upgrade; unavailability window = the longest stretch
   without a 200 answer, from the last 200 before to the first 200 after.
     rollout         (monitor 2 s; the window closes when the new container answers)
     recreate+wait   stop + remove old, create + start new

3. (``--proxy``) Healthy upgrade of a Compose service behind nginx (seed 004: no published port,
   nginx on loopback resolving the service name through a stand-in of Docker's DNS), GET through
   nginx every 20 ms, v1 -> v2 -> v1 ... ``--runs`` times per order:
     start-first     the new container next to the old one, gated, a proxy check that only the
                     new version passes, then the old one stopped and removed
     stop-first      the old container stopped, then the new one started (the default)

Usage: .venv/bin/python bench/rollout.py [--runs 5] [--deadline 60] [--check-retries 7] [--check-interval 1]
       [--out bench/results/rollout.md]
       .venv/bin/python bench/rollout.py --proxy [--runs 5] [--out bench/results/rollout_proxy.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from collect import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import docker  # noqa: E402

from harness import Poller, free_port, http_get  # noqa: E402
from rollout_fixtures import BASE_IMAGE, build_images, run_web, wait_http  # noqa: E402
from stack_fixtures import ComposeStack, ServiceDNS, nginx_proxy  # noqa: E402

LINK = os.path.join(ROOT, ".build", "collections", "ansible_collections", "opskit", "runbook")
if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)

from ansible_collections.opskit.runbook.plugins.module_utils._rollout import action as _rollout  # noqa: E402


def _remove(api, name):
    try:
        api.remove_container(name, force=True)
    except docker.errors.NotFound:
        pass


def _recreate(api, name, image, port):
    """docker_container-style: remove the old container, run the new image with the same settings."""
    _remove(api, name)
    return run_web(api, name, image, port)


def _wait_http_ok(port, deadline, delay=1.0):
    """The runbooks' verify step, an ``uri`` until-loop: GET /cgi-bin/health until 200 or the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if http_get("http://127.0.0.1:%d/cgi-bin/health" % port, timeout=1)[0] == 200:
            return True
        time.sleep(delay)
    return False


@contextlib.contextmanager
def _serving(api, name, image, port, body):
    """The container ``name`` running ``image`` and answering ``body`` on ``port``, watched by a Poller."""
    run_web(api, name, image, port)
    url = "http://127.0.0.1:%d/version" % port
    wait_http(url, body)
    with Poller(url) as poller:
        yield poller


def _check(port, retries, interval):
    return {"name": "web", "type": "http", "url": "http://127.0.0.1:%d/cgi-bin/health" % port, "status_codes": [200],
            "retries": retries, "interval": interval, "timeout": 1}


def broken_rollout(api, images, name, port, kind="exit", checks=None):
    with _serving(api, name, images["plain"], port, "plain") as poller:
        t0 = time.monotonic()
        res = _rollout.run(dict(target="docker_container", name=name, image=images[kind], pull="never",
                                timeout=300.0, monitor=10.0, rollback_timeout=120.0, stop_timeout=10,
                                fail_on_rollback=False, log_lines=20, health_checks=checks), False)
        t_end = time.monotonic()
    assert res["outcome"] == "rolled_back", res
    detected = t0 + res["timings"]["upgrade"]
    served = poller.first_serving_after(detected, "plain")
    return {"detect": res["timings"]["upgrade"], "restore": served - detected if served else None,
            "serving_again": served - t0 if served else None, "total": t_end - t0,
            "module_rollback": res["timings"]["rollback"], "reason": res["reason"]}


def broken_recreate(api, images, name, port, deadline):
    with _serving(api, name, images["plain"], port, "plain") as poller:
        t0 = time.monotonic()
        _recreate(api, name, images["exit"], port)
        ok = _wait_http_ok(port, deadline)
        detected = time.monotonic()
        assert not ok
        _recreate(api, name, images["plain"], port)  # the manual rollback: run the old tag again
        _wait_http_ok(port, 60, delay=0.1)
        t_end = time.monotonic()
        time.sleep(0.3)
    served = poller.first_serving_after(detected, "plain")
    return {"detect": detected - t0, "restore": served - detected if served else None,
            "serving_again": served - t0 if served else None, "total": t_end - t0}


def healthy_rollout(api, images, name, port):
    with _serving(api, name, images["v1"], port, "v1") as poller:
        time.sleep(0.5)
        t0 = time.monotonic()
        res = _rollout.run(dict(target="docker_container", name=name, image=images["v2"], pull="never",
                                timeout=60.0, monitor=2.0, rollback_timeout=60.0, stop_timeout=10), False)
        t_end = time.monotonic()
        time.sleep(0.5)
    assert res["outcome"] == "deployed", res
    gap, failed = poller.longest_gap()
    return {"gap": gap, "failed_requests": failed, "total": t_end - t0}


def healthy_recreate(api, images, name, port):
    with _serving(api, name, images["v1"], port, "v1") as poller:
        time.sleep(0.5)
        t0 = time.monotonic()
        api.stop(name, timeout=10)
        _recreate(api, name, images["v2"], port)
        _wait_http_ok(port, 60, delay=0.1)
        t_end = time.monotonic()
        time.sleep(0.5)
    gap, failed = poller.longest_gap()
    return {"gap": gap, "failed_requests": failed, "total": t_end - t0}


def _proxied_run(api, proxy, project, order, image, tag):
    checks = [{"name": "through nginx", "type": "http", "url": proxy + "/cgi-bin/health", "status_codes": [200],
               "body_contains": "ok " + tag, "retries": 20, "interval": 0.25, "timeout": 2}]
    with Poller(proxy + "/version", every=0.02, timeout=3) as poller:
        time.sleep(0.3)
        t0 = time.monotonic()
        res = _rollout.run(dict(target="compose_service", project=project, name="web", image=image, pull="never",
                                order=order, proxy_checks=checks if order == "start-first" else None,
                                compose_file="ignore", timeout=60.0, monitor=2.0, rollback_timeout=60.0,
                                stop_timeout=10), False)
        total = time.monotonic() - t0
        time.sleep(1.0)
    assert res["outcome"] == "deployed" and res["order"] == order, res
    gap, _failed = poller.longest_gap()
    bad = sum(1 for _t, status, _body in poller.samples if status != 200)
    return {"requests": len(poller.samples), "failed_requests": bad, "gap": gap, "total": total}


def proxied(api, images, runs):
    """Start-first vs stop-first of a Compose service behind nginx; {order: [run, ...]}."""
    rows = {"start-first": [], "stop-first": []}
    for order in rows:
        project = "rltproxy%s" % uuid.uuid4().hex[:6]
        workdir = tempfile.mkdtemp(prefix="opskit-bench-")
        stack = ComposeStack(api, project, workdir)
        stack.write(images["v1"])
        stack.up(images["v1"])
        dns = ServiceDNS(api, stack.network)
        try:
            with nginx_proxy(dns.port, "web", os.path.join(workdir, "nginx")) as proxy:
                wait_http(proxy + "/version", "v1")
                for i in range(runs):
                    tag = ("v2", "v1")[i % 2]
                    rows[order].append(_proxied_run(api, proxy, project, order, images[tag], tag))
                    print(order, i, rows[order][-1], flush=True)
        finally:
            dns.close()
            for c in api.containers(all=True, filters={"label": "com.docker.compose.project=" + project}):
                api.remove_container(c["Id"], force=True, v=True)
            api.remove_network(project)
    return rows


def proxied_report(api, rows, runs):
    load = os.getloadavg()
    lines = [
        "# rollout behind a proxy: start-first vs stop-first (issue 16, item 3)",
        "",
        "Command: `.venv/bin/python bench/rollout.py --proxy --runs %d`" % runs,
        "",
        "Machine: %s, %d cores, Python %s, Docker Engine %s, %s; load average at the end %.1f / %.1f / %.1f."
        % (platform.machine(), os.cpu_count(), platform.python_version(), api.version()["Version"],
           subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip(), *load),
        "A Compose service without a published port (busybox httpd, v1 <-> v2, a HEALTHCHECK) behind",
        "nginx on loopback (`resolver valid=1s`, `proxy_next_upstream error timeout http_502`, connect",
        "timeout 1 s), GET /version through nginx every 20 ms from 0.3 s before the upgrade until 1 s",
        "after it. rollout driven through the module's `run()`, monitor 2 s. Median and max of %d runs." % runs,
        "",
        "| order | requests median | failed requests median | failed requests max | longest gap median (s) "
        "| longest gap max (s) | task total median (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for order in ("start-first", "stop-first"):
        r = rows[order]
        q, f, g, t = (_stats([x[k] for x in r]) for k in ("requests", "failed_requests", "gap", "total"))
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (order, q[0], f[0], f[1], g[0], g[1], t[0]))
    lines += [
        "",
        "failed: any answer but 200 (nginx's 502 while no container listens, or no answer within 3 s).",
        "longest gap: the longest time from a 200 answer to the next one (20 ms when nothing failed;",
        "more when nginx waited for a vanished address before it tried the other one).",
        "start-first keeps the old container serving until the new one passed the gate and nginx",
        "reached it (the proxy check asks for the new version's answer); stop-first has nothing to",
        "serve from the stop of the old container until the new one listens.",
        "",
    ]
    return "\n".join(lines)


BROKEN = ("broken/rollout", "broken late/rollout", "broken 503/rollout", "broken port/rollout")
LABELS = {"broken/rollout": "rollout (exit)", "broken late/rollout": "rollout + check (late)",
          "broken 503/rollout": "rollout + check (503)", "broken port/rollout": "rollout + check (port)",
          "broken/recreate+wait": "recreate+wait (exit)"}


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a", "n/a"
    return "%.2f" % statistics.median(values), "%.2f" % max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--check-retries", type=int, default=7)
    parser.add_argument("--check-interval", type=float, default=1.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--proxy", action="store_true", help="only the start-first vs stop-first comparison behind nginx")
    args = parser.parse_args()
    args.out = args.out or os.path.join(HERE, "results", "rollout_proxy.md" if args.proxy else "rollout.md")

    api = docker.APIClient(version="auto")
    try:
        api.inspect_image(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([os.path.join(ROOT, "scripts", "docker-engine.sh"), "image"], check=True)
    images = build_images(api, tags=("v1", "v2", "plain", "exit", "late", "503", "port"))
    if args.proxy:
        text = proxied_report(api, proxied(api, images, args.runs), args.runs)
        write_results(args.out, text)
        print(text)
        return
    prefix = "rltbench%s" % uuid.uuid4().hex[:6]
    rows = {k: [] for k in BROKEN + ("broken/recreate+wait", "healthy/rollout", "healthy/recreate+wait")}

    def checked(kind):
        return lambda n, p: broken_rollout(api, images, n, p, kind, [_check(p, args.check_retries, args.check_interval)])
    try:
        for i in range(args.runs):
            for key, func in (("broken/rollout", lambda n, p: broken_rollout(api, images, n, p)),
                              ("broken late/rollout", checked("late")),
                              ("broken 503/rollout", checked("503")),
                              ("broken port/rollout", checked("port")),
                              ("broken/recreate+wait", lambda n, p: broken_recreate(api, images, n, p, args.deadline)),
                              ("healthy/rollout", lambda n, p: healthy_rollout(api, images, n, p)),
                              ("healthy/recreate+wait", lambda n, p: healthy_recreate(api, images, n, p))):
                name = "%s-%s-%d" % (prefix, key.replace("/", "-").replace("+", "").replace(" ", "-"), i)
                try:
                    rows[key].append(func(name, free_port()))
                finally:
                    for c in api.containers(all=True, filters={"name": name}):
                        api.remove_container(c["Id"], force=True, v=True)
                print(key, i, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[key][-1].items()},
                      flush=True)
    finally:
        for c in api.containers(all=True, filters={"name": prefix}):
            api.remove_container(c["Id"], force=True, v=True)

    load = os.getloadavg()
    lines = [
        "# rollout: broken and healthy upgrades of a Docker container",
        "",
        "Command: `.venv/bin/python bench/rollout.py --runs %d --deadline %g`" % (args.runs, args.deadline),
        "",
        "Machine: %s, %d cores, Python %s, Docker Engine %s; load average at the end %.1f / %.1f / %.1f."
        % (platform.machine(), os.cpu_count(), platform.python_version(), api.version()["Version"], *load),
        "rollout is driven through the module's `run()` (the code path of the module minus Ansible's",
        "own task start-up). Times in seconds, median and max of %d runs." % args.runs,
        "",
        "## Broken upgrades, rollout with default settings",
        "",
        "| variant (broken kind) | detect median | detect max | restore median | restore max "
        "| serving again after (median) | serving again max | task total median |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in BROKEN + ("broken/recreate+wait",):
        r = rows[key]
        d, r_, s, t = (_stats([x[k] for x in r]) for k in ("detect", "restore", "serving_again", "total"))
        cells = (LABELS[key], d[0], d[1], r_[0], r_[1], s[0], s[1], t[0])
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % cells)
    lines += [
        "",
        "detect: upgrade start until the failure is known (rollout: the switch plus its fail-fast gate;",
        "recreate+wait: the %g s deadline of the verify loop). restore: from detection until the previous version answers" % args.deadline,
        "GET /version again (50 ms poller). rollout's task total also holds the 10 s monitor window that",
        "verifies the restored version. Target: previous version serving again within 10 s.",
        "",
        "A crash (exit, late) ends the gate at once, also while a health check still retries. A service",
        "that answers but is broken (503) or never answers (port) fails only when its check gives up:",
        "after retries x interval (here %d x %g s) plus the attempts' own time (at most their timeout, 1 s)."
        % (args.check_retries, args.check_interval),
        "The gate cannot tell such a service from one that is still starting, so that budget is the",
        "operator's: serving again takes that budget plus the restore (about 1-2 s); keep it at 8 s or",
        "less to meet the 10 s target (the module's example uses retries 7, interval 1).",
        "",
        "## Healthy upgrade v1 -> v2, published port, GET every 50 ms",
        "",
        "| variant | unavailability median | unavailability max | failed requests median | task total median |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in ("healthy/rollout", "healthy/recreate+wait"):
        r = rows[key]
        g, f, t = (_stats([x[k] for x in r]) for k in ("gap", "failed_requests", "total"))
        lines.append("| %s | %s | %s | %s | %s |" % (key.split("/")[1], g[0], g[1], f[0], t[0]))
    lines += [
        "",
        "Unavailability: the longest stretch from a 200 answer to the next one. Both variants stop the old",
        "container before the new one starts (same name, same host port: Swarm's stop-first); rollout",
        "renames and creates first, so only stop + start separate the two.",
        "",
    ]
    text = "\n".join(lines)
    write_results(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
