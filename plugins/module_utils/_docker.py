# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Docker Engine connection: the shared option spec, one client factory and the SDK's errors.

The docker SDK is imported on first use (``DOCKER``): importing it costs ~0.5 s, and every
module that merely declares the Docker options (docker_argspec) would pay that on every run.
"""

from __future__ import annotations

import copy
import os
import sys

from ._errors import ConfigError, ServiceError
from ._imports import Library, fallback

DOCKER = Library("docker", "docker", "docker.errors", "docker.tls", "docker.types")

DOCKER_ARGSPEC = dict(
    docker_host=dict(type="str", fallback=fallback("DOCKER_HOST")),
    tls=dict(type="bool", default=False, fallback=fallback("DOCKER_TLS")),
    tls_verify=dict(type="bool", default=False, fallback=fallback("DOCKER_TLS_VERIFY")),
    ca_path=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    docker_timeout=dict(type="int", default=60, fallback=fallback("DOCKER_TIMEOUT")),
)
DOCKER_OPTION_NAMES = tuple(DOCKER_ARGSPEC)
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def docker_argspec(**extra):
    spec = copy.deepcopy(DOCKER_ARGSPEC)
    spec.update(extra)
    return spec


def docker_client(params):
    """A connected docker.APIClient for the connection options in ``params``.

    Raises ServiceError naming the daemon when it cannot be reached.
    """
    docker = DOCKER.load()
    host = params.get("docker_host") or DEFAULT_DOCKER_HOST
    tls_config = None
    if params.get("tls") or params.get("tls_verify"):
        cert_dir = os.environ.get("DOCKER_CERT_PATH", "")
        ca = params.get("ca_path") or (os.path.join(cert_dir, "ca.pem") if cert_dir else None)
        cert = params.get("client_cert") or (os.path.join(cert_dir, "cert.pem") if cert_dir else None)
        key = params.get("client_key") or (os.path.join(cert_dir, "key.pem") if cert_dir else None)
        try:
            tls_config = docker.tls.TLSConfig(
                client_cert=(cert, key) if cert and key else None,
                ca_cert=ca if params.get("tls_verify") else None,
                verify=bool(params.get("tls_verify")))
        except docker.errors.TLSParameterError as exc:
            raise ConfigError("docker TLS options: %s" % exc) from exc
    try:
        client = docker.APIClient(base_url=host, tls=tls_config, version="auto",
                                  timeout=params.get("docker_timeout") or 60)
    except docker.errors.DockerException as exc:
        raise ServiceError("cannot connect to the Docker daemon at %s: %s" % (host, _short(exc))) from exc
    return client


def docker_errors():
    """The errors a docker SDK call can raise: DockerException (APIError, NotFound, ...) and OSError
    (the connection and timeout errors of requests, which the SDK uses, are OSErrors)."""
    return (DOCKER.load().errors.DockerException, OSError)


def _short(exc):
    text = str(exc)
    for marker in ("Error while fetching server API version: ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return " ".join(text.split())[:300]


def docker_error(exc, what):
    """One-line ServiceError for a docker SDK / API exception."""
    errors = sys.modules.get("docker.errors")  # loaded if ``exc`` came from the SDK
    if errors is not None and isinstance(exc, errors.NotFound):
        return ServiceError("%s: not found (%s)" % (what, getattr(exc, "explanation", None) or _short(exc)))
    explanation = getattr(exc, "explanation", None)
    return ServiceError("%s: %s" % (what, " ".join(str(explanation or _short(exc)).split())))
