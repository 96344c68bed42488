# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared integration harness as pytest fixtures: thin wrappers over tests/integration/harness.py.

Fixtures (each service starts on first use, once per session, on 127.0.0.1 and a free port, in a
temporary directory, and stops at the end of the session, also on failure or Ctrl-C):

- ``pg``: a PostgreSQL 15 cluster (scram-sha-256) run as an unprivileged system user.
  Attributes: host, port, user ("postgres"), password, bin_dir, env (PG* variables for the
  tests' own psql/pg_dump calls), ``psql(sql, db="postgres")`` -> stdout, ``createdb(name)``.
- ``s3``: a moto S3 server. Attributes: endpoint_url, access_key, secret_key, region, client
  (boto3 S3 client), ``new_bucket()`` -> the name of a new, uniquely named bucket.
- ``docker_engine``: the Docker Engine (reused, or started and later stopped) and the locally
  built image. Attributes: docker_host, client (docker.DockerClient), busybox_image.
- ``api``: the engine's low-level client (``docker_engine.client.api``).
- ``prefix``: a unique name for the containers and networks of one test (``<module tag><8 hex>``);
  every container (with its anonymous volumes), network and volume whose name contains it is
  removed afterwards.
- ``redis``: a redis-server. Attributes: host, port.
- ``real_kubeconfig``: the kubeconfig of a reachable real cluster (skips without one).
- ``run_playbook(playbook, extra_vars=None, check=False, env=None, timeout=600, clock=None)``:
  runs ansible-playbook against localhost and returns a PlaybookRun (rc, stdout, stderr,
  results, task(name)).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from harness import COLLECTIONS, DockerEngine, Postgres, Redis, S3, cleanup, run_playbook_in

if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


def pytest_configure(config):  # pylint: disable=unused-argument
    """SIGTERM/SIGHUP end the session like Ctrl-C does, so the session teardown stops the services."""
    def interrupt(signum, frame):  # pylint: disable=unused-argument
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, interrupt)


# What a service's start() can raise when the service cannot run here (the SDKs' errors come
# wrapped in RuntimeError; KeyError: the PostgreSQL system user could not be created).
_START_ERRORS = (RuntimeError, OSError, KeyError, ImportError, subprocess.SubprocessError)


def _start_service(key, what, start):
    """start() the service; on failure stop what was started and fail the test with one message."""
    try:
        return start()
    except _START_ERRORS as exc:
        error = "%s: %s" % (what, exc)
    cleanup(key)
    pytest.fail(error, pytrace=False)
    return None


def _service_fixture(key, what, service):
    """A session fixture named ``key``: service().start() on first use, stopped at the end of the session."""
    def fixture():
        yield _start_service(key, what, service().start)
        cleanup(key)
    fixture.__doc__ = "%s: harness.%s, started once per session." % (what, service.__name__)
    return pytest.fixture(scope="session", name=key)(fixture)


pg = _service_fixture("pg", "PostgreSQL fixture", Postgres)
s3 = _service_fixture("s3", "S3 fixture", S3)
redis = _service_fixture("redis", "Redis fixture", Redis)


@pytest.fixture(scope="session")
def docker_engine():
    engine = _start_service("docker", "Docker Engine fixture: the engine cannot run here", DockerEngine().start)
    yield engine
    engine.client.close()
    cleanup("docker")


@pytest.fixture(scope="session")
def api(docker_engine):
    return docker_engine.client.api


@pytest.fixture
def prefix(api, request):
    tag = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")[:3]
    name = "%s%s" % (tag, uuid.uuid4().hex[:8])
    yield name
    for container in api.containers(all=True, filters={"name": name}):
        api.remove_container(container["Id"], force=True, v=True)
    for net in api.networks(filters={"name": name}):
        api.remove_network(net["Id"])
    for volume in (api.volumes(filters={"name": name}) or {}).get("Volumes") or []:
        api.remove_volume(volume["Name"], force=True)


def _cluster_error(path):
    """None when the kubeconfig at path reaches a Kubernetes cluster, else the error saying why not."""
    try:
        import urllib3  # pylint: disable=import-outside-toplevel
        import yaml  # pylint: disable=import-outside-toplevel
        from kubernetes import client, config  # pylint: disable=import-outside-toplevel
        from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel
        from kubernetes.config.config_exception import ConfigException  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return exc
    try:
        client.VersionApi(config.new_client_from_config(config_file=path)).get_code(_request_timeout=5)
    except (ApiException, ConfigException, urllib3.exceptions.HTTPError, yaml.YAMLError, OSError,
            ValueError) as exc:
        return exc
    return None


@pytest.fixture(scope="session")
def real_kubeconfig():
    """The kubeconfig path of a reachable real Kubernetes cluster (the first file of
    KUBECONFIG). No control plane can run on the build machines, so the tests that use this
    fixture are skipped, with the reason, unless KUBECONFIG reaches a cluster."""
    path = (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
    if not path:
        pytest.skip("KUBECONFIG is not set: no real Kubernetes cluster to test against")
    error = _cluster_error(path)
    if error is not None:
        pytest.skip("KUBECONFIG %s does not reach a cluster: %s" % (path, " ".join(str(error).split())[:200]))
    return path


@pytest.fixture(scope="session")
def run_playbook(tmp_path_factory):
    base_dir = str(tmp_path_factory.mktemp("playbooks"))

    def run(playbook, extra_vars=None, check=False, env=None, timeout=600, clock=None):
        return run_playbook_in(base_dir, playbook, extra_vars=extra_vars, check=check, env=env, timeout=timeout,
                               clock=clock)
    return run
