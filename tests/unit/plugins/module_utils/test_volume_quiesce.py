# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which containers volume_backup stops, and that exactly those are started again."""

from __future__ import annotations

import pytest
from docker.errors import APIError

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, ServiceError
from ansible_collections.opskit.runbook.plugins.module_utils._volume.quiesce import (
    HELPER_LABEL, STOP_LABEL, Quiescer, container_view, normalize_selection, select_containers, start_stopped,
    uses)


def _c(name, running=True, volumes=(), binds=(), labels=None, cid=None):
    mounts = [{"Type": "volume", "Name": v, "Source": "/var/lib/docker/volumes/%s/_data" % v,
               "Destination": "/data"} for v in volumes]
    mounts += [{"Type": "bind", "Source": b, "Destination": "/cfg"} for b in binds]
    return container_view({"Id": cid or (name * 12)[:64].ljust(64, "0"), "Names": ["/" + name],
                           "State": "running" if running else "exited", "Labels": labels or {},
                           "Mounts": mounts, "ImageID": "sha256:img-" + name})


WEB = _c("web", volumes=["data"])
WORKER = _c("worker", volumes=["data"], labels={STOP_LABEL: "true"})
IDLE = _c("idle", running=False, volumes=["data"])
OTHER = _c("other", volumes=["logs"])
NGINX = _c("nginx", binds=["/etc/nginx"])
HELPER = _c("opskit-volume-data-1", running=True, volumes=["data"], labels={HELPER_LABEL: "volume_backup"})


def _names(containers):
    return [c["name"] for c in containers]


@pytest.mark.parametrize("value, expected", [
    (["auto"], ("auto", [])),
    ([" auto "], ("auto", [])),
    (["none"], ("none", [])),
    ([], ("none", [])),
    (None, ("none", [])),
    (["web", "db"], ("list", ["web", "db"])),
    (["web", ""], ("list", ["web"])),
])
def test_normalize_selection(value, expected):
    assert normalize_selection(value) == expected


@pytest.mark.parametrize("value", [["auto", "web"], ["none", "db"]])
def test_auto_and_none_do_not_mix_with_names(value):
    with pytest.raises(ConfigError, match="cannot be combined"):
        normalize_selection(value)


@pytest.mark.parametrize("containers, mode, names, volume, path, stop, considered", [
    # auto: every user of the volume, running ones stopped
    ([WEB, IDLE, OTHER], "auto", [], "data", None, ["web"], ["web", "idle"]),
    # auto: the label narrows the choice to the labelled users
    ([WEB, WORKER, IDLE, OTHER], "auto", [], "data", None, ["worker"], ["worker"]),
    # auto never touches the collection's helper containers
    ([HELPER, WEB], "auto", [], "data", None, ["web"], ["web"]),
    # auto with no user
    ([OTHER], "auto", [], "data", None, [], []),
    # none
    ([WEB, WORKER], "none", [], "data", None, [], []),
    # explicit list: exactly those, running ones stopped, in the given order
    ([WEB, WORKER, IDLE, OTHER], "list", ["other", "web", "idle"], "data", None, ["other", "web"],
     ["other", "web", "idle"]),
    # explicit list by id prefix, duplicates once
    ([WEB, OTHER], "list", ["web", WEB["id"][:12]], "data", None, ["web"], ["web"]),
    # a host path: bind mounts of the path, of a path inside it, or of a parent
    ([NGINX, WEB], "auto", [], None, "/etc/nginx", ["nginx"], ["nginx"]),
    ([NGINX], "auto", [], None, "/etc", ["nginx"], ["nginx"]),
    ([NGINX], "auto", [], None, "/etc/nginx/conf.d", ["nginx"], ["nginx"]),
    ([NGINX], "auto", [], None, "/etc/nginx2", [], []),
])
def test_select_containers(containers, mode, names, volume, path, stop, considered):
    to_stop, chosen = select_containers(containers, mode, names, volume=volume, path=path)
    assert _names(to_stop) == stop
    assert _names(chosen) == considered


def test_a_listed_container_must_exist():
    with pytest.raises(ConfigError, match="no such container: ghost, abc"):
        select_containers([WEB], "list", ["ghost", "web", "abc"], volume="data")


def test_a_short_id_prefix_is_not_matched():
    app = _c("app", cid="abcdef0123" + "0" * 54)
    assert _names(select_containers([app], "list", ["abcdef"], volume="data")[0]) == ["app"]
    with pytest.raises(ConfigError, match="no such container: abcde"):
        select_containers([app], "list", ["abcde"], volume="data")


@pytest.mark.parametrize("label, selected", [("true", True), ("True", True), (" true ", True),
                                             ("false", False), ("yes", False), ("", False)])
def test_label_values(label, selected):
    tagged = _c("tagged", volumes=["data"], labels={STOP_LABEL: label})
    to_stop, _chosen = select_containers([WEB, tagged], "auto", volume="data")
    assert _names(to_stop) == (["tagged"] if selected else ["web", "tagged"])


def test_container_view_of_an_inspect_result():
    view = container_view({"Id": "f" * 64, "Name": "/db", "State": {"Running": True},
                           "Config": {"Labels": {"a": "b"}}, "Image": "sha256:x",
                           "Mounts": [{"Type": "volume", "Name": "pg", "Destination": "/var/lib/pg"}]})
    assert view["name"] == "db" and view["running"] and view["labels"] == {"a": "b"}
    assert uses(view, volume="pg") and not uses(view, volume="other")


# ----------------------------------------------------------------------- Quiescer

class FakeDocker:
    """Records stop/start calls; containers listed in ``fail_start`` fail to start."""

    def __init__(self, fail_stop=(), fail_start=(), exits=()):
        self.calls = []
        self.fail_stop, self.fail_start, self.exits = set(fail_stop), set(fail_start), set(exits)
        self.down, self.starts = set(), {}

    def stop(self, cid, timeout=None):
        self.calls.append(("stop", cid, timeout))
        if cid in self.fail_stop:
            raise APIError("daemon says no")
        self.down.add(cid)

    def start(self, cid):
        self.calls.append(("start", cid))
        if cid in self.fail_start:
            raise APIError("bind source path does not exist")
        if cid not in self.exits:
            self.down.discard(cid)
            self.starts[cid] = self.starts.get(cid, 0) + 1

    def inspect_container(self, cid):
        if cid in self.down:
            return {"State": {"Running": False, "ExitCode": 3}}
        return {"State": {"Running": True, "StartedAt": self.starts.get(cid, 0)}}


class FakeGuardian:
    def __init__(self):
        self.events = []

    def note(self, event, cid):
        self.events.append((event, cid))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1.5
        return self.now


class FakeTime:
    """A clock that only advances when slept on."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


A, B, C = _c("a"), _c("b"), _c("c")


def test_stops_then_restarts_exactly_the_stopped_in_reverse_order():
    docker, guardian = FakeDocker(), FakeGuardian()
    q = Quiescer(docker, [A, B, C], stop_timeout=7, guardian=guardian, clock=Clock())
    q.stop()
    assert q.resume() == []
    assert q.resume() == []  # idempotent: nothing started twice
    assert docker.calls == [("stop", A["id"], 7), ("stop", B["id"], 7), ("stop", C["id"], 7),
                            ("start", C["id"]), ("start", B["id"]), ("start", A["id"])]
    assert guardian.events == [("stopped", A["id"]), ("stopped", B["id"]), ("stopped", C["id"]),
                               ("started", C["id"]), ("started", B["id"]), ("started", A["id"])]
    report = q.report()
    assert report["stopped"] == ["a", "b", "c"]
    assert sorted(report["restarted"]) == ["a", "b", "c"]
    assert report["downtime_seconds"] == 1.5  # first stop to the end of resume


def test_a_failed_stop_restarts_those_already_stopped_and_names_the_container():
    docker, waited = FakeDocker(fail_stop=[B["id"]]), FakeTime()
    q = Quiescer(docker, [A, B, C], stop_timeout=10, sleep=waited.sleep, wait_clock=waited)
    with pytest.raises(ServiceError, match="stopping container b"):
        q.stop()
    assert q.resume() == []
    started = [c[1] for c in docker.calls if c[0] == "start"]
    # b may be stopping: waited for (stop_timeout + 15 s), and still running it needs no start;
    # c was never touched
    assert started == [A["id"]] and 25 <= waited.now < 26
    assert q.report()["restarted"] == ["b", "a"]


def test_restart_failures_are_collected_not_raised():
    docker = FakeDocker(fail_start=[A["id"]], exits=[C["id"]])
    q = Quiescer(docker, [A, B, C], sleep=lambda _s: None)
    q.stop()
    failures = q.resume()
    assert [name for name, _msg in failures] == ["c", "a"]
    assert "exited at once with code 3" in failures[0][1]
    assert q.report()["restarted"] == ["b"]
    assert "container a failed to restart" in q.failure_message()


def test_nothing_to_stop_means_no_downtime():
    q = Quiescer(FakeDocker(), [])
    q.stop()
    q.resume()
    assert q.report() == {"stopped": [], "restarted": [], "downtime_seconds": 0.0}


class StoppingDocker:
    """One container's life as the daemon sees it: a stop that takes ``stopping`` inspections
    to complete (the container traps TERM), a start on a running container answers 304 (no-op,
    success for docker-py), ``interrupt`` makes the stop call itself fail as a SIGTERM of the
    module does while the daemon goes on stopping."""

    def __init__(self, stopping=3, interrupt=False, start_exits=0):
        self.running, self.stopping, self.interrupt = True, None, interrupt
        self.stopping_for, self.start_exits = stopping, start_exits
        self.started_at, self.starts = 1, 0

    def stop(self, cid, timeout=None):
        self.stopping = self.stopping_for
        if self.interrupt:
            raise ServiceError("interrupted by signal 15")
        self.running, self.stopping = False, None

    def inspect_container(self, cid):
        if self.stopping is not None:
            self.stopping -= 1
            if self.stopping < 0:
                self.running, self.stopping = False, None
        return {"State": {"Running": self.running, "StartedAt": self.started_at, "ExitCode": 1}}

    def start(self, cid):
        self.starts += 1
        if self.running:
            return  # 304 Not Modified: docker-py does not raise
        if self.start_exits:
            self.start_exits -= 1
            return
        self.running, self.started_at = True, self.started_at + 1


def test_a_container_still_stopping_is_started_once_it_has_stopped():
    """SIGTERM of the module during the stop: the daemon goes on stopping the container;
    resume waits for it to stop, then starts it (a start while it stops is a no-op)."""
    docker = StoppingDocker(stopping=4, interrupt=True)
    q = Quiescer(docker, [A], sleep=lambda _s: None)
    with pytest.raises(ServiceError, match="interrupted"):
        q.stop()
    assert q.resume() == []
    assert docker.running and docker.started_at == 2
    assert q.report()["restarted"] == ["a"]


def test_start_stopped_retries_a_start_that_did_not_take():
    docker = StoppingDocker(stopping=0, start_exits=1)
    docker.stop("x")
    start_stopped(docker, "x", sleep=lambda _s: None)
    assert docker.running and docker.starts == 2


def test_start_stopped_gives_up_after_the_attempts():
    docker = StoppingDocker(stopping=0, start_exits=5)
    docker.stop("x")
    with pytest.raises(ServiceError, match="exited at once with code 1"):
        start_stopped(docker, "x", attempts=3, sleep=lambda _s: None)
    assert docker.starts == 3


def test_held_containers_are_left_stopped_and_named():
    docker, guardian = FakeDocker(), FakeGuardian()
    q = Quiescer(docker, [A, B], guardian=guardian)
    q.stop()
    q.hold("volume v is half-restored")
    assert q.resume() == []
    assert [c for c in docker.calls if c[0] == "start"] == []
    assert q.report()["left_stopped"] == ["a", "b"] and q.report()["restarted"] == []
    assert q.failure_message() == ("containers a, b are LEFT STOPPED: volume v is half-restored;"
                                   " start them once it is repaired")
