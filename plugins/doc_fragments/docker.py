# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Docker Engine connection options, shared by the Docker-facing modules.
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker Engine API to talk to, for example V(unix:///var/run/docker.sock) or
        V(tcp://docker.example.com:2376).
      - Falls back to E(DOCKER_HOST), then V(unix:///var/run/docker.sock).
    type: str
  tls:
    description:
      - Use TLS to talk to the daemon (implied by O(tls_verify)).
      - Falls back to E(DOCKER_TLS).
    type: bool
    default: false
  tls_verify:
    description:
      - Use TLS and verify the daemon's certificate. Falls back to E(DOCKER_TLS_VERIFY).
    type: bool
    default: false
  ca_path:
    description:
      - CA certificate to verify the daemon with. Defaults to C(ca.pem) in E(DOCKER_CERT_PATH).
    type: path
  client_cert:
    description:
      - Client certificate for TLS. Defaults to C(cert.pem) in E(DOCKER_CERT_PATH).
    type: path
  client_key:
    description:
      - Client key for TLS. Defaults to C(key.pem) in E(DOCKER_CERT_PATH).
    type: path
  docker_timeout:
    description:
      - Seconds to wait for an answer of the Docker API. Falls back to E(DOCKER_TIMEOUT).
    type: int
    default: 60
requirements:
  - docker (the Docker SDK for Python) >= 7.0
"""
