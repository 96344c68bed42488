#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: health_check
short_description: Run many health probes concurrently and judge them with Nagios-style thresholds
version_added: 0.1.0
description:
  - Runs every probe of O(checks) concurrently (at most O(concurrency) at once), each with its own
    timeout, all under the overall O(deadline), and returns one structured report.
  - "Probe types: V(http) (status, body, JSON conditions, per-phase timings, certificate expiry),
    V(tcp) (connect, optional send/expect), V(postgres) (connect, C(SELECT 1) latency, connection
    usage, long-running queries, replication lag), V(redis) (PING latency, memory, clients),
    V(docker_container) (state, health, restarts, OOM kill), V(k8s_deployment) (replicas and the
    C(kubectl rollout status) rules), V(disk) (free space and inodes), V(memory) (used %),
    V(load) (load average per core)."
  - Each check ends V(OK), V(WARNING), V(CRITICAL) or V(UNKNOWN) (the Nagios plugin states;
    V(UNKNOWN) means the probe could not tell, for example an unparsable answer). The overall
    status is the worst check, in the order V(OK) < V(WARNING) < V(UNKNOWN) < V(CRITICAL).
  - Connection refused, DNS failure, TLS failure and timeouts are results (V(CRITICAL) with a
    message), never a module crash, so C(until) loops work.
  - Every numeric measure can be judged by Nagios ranges (C(10), C(10:), C(~:10), C(10:20),
    C(@10:20)) with O(checks[].warning)/O(checks[].critical) (the type's primary measure) or
    O(checks[].thresholds) (any measure). Without thresholds only hard failures count.
  - The probes run where the module runs (the managed host); V(disk), V(memory) and V(load)
    describe that host.
  - Never changes anything.
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.postgres
  - opskit.runbook.docker
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The probes only read, so they run in check mode too and return the full report.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  checks:
    description:
      - The probes to run. Module-level PostgreSQL options (O(host), O(port), O(user),
        O(password), ...) fill in the unset connection options of V(postgres) checks; module-level
        Docker options (O(docker_host), ...) those of V(docker_container) checks.
      - An option that does not apply to a check's type is an error naming the check.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the check in the report; unique. Default is the type and target, for example
            C(http https://app/health).
        type: str
      type:
        description:
          - The probe, one of V(http), V(tcp), V(postgres), V(redis), V(docker_container),
            V(k8s_deployment), V(disk), V(memory), V(load). Required.
          - "Numeric measures per type (the first is the primary measure):
            V(http): time_ms, dns_ms, connect_ms, tls_ms, first_byte_ms, status_code, body_bytes, cert_days.
            V(tcp): time_ms, dns_ms, connect_ms.
            V(postgres): connections_pct, connect_ms, query_ms, connections, max_connections,
            long_queries, replication_lag_seconds (replicas only).
            V(redis): memory_pct (of maxmemory, or of system memory when maxmemory is 0), connect_ms,
            ping_ms, used_memory_bytes, maxmemory_bytes, connected_clients.
            V(docker_container): restart_count, running, oom_killed, exit_code (when not running).
            V(k8s_deployment): available_pct, desired_replicas, updated_replicas, ready_replicas,
            available_replicas, unavailable_replicas, generation, observed_generation.
            V(disk): free_pct, used_pct, free_bytes, total_bytes, inodes_free_pct, inodes_free.
            V(memory): used_pct, available_bytes, total_bytes, swap_used_pct.
            V(load): load1_per_core, load5_per_core, load15_per_core, load1, load5, load15, cores."
        type: str
      timeout:
        description:
          - Seconds one attempt of this check may take (clipped to what is left of O(deadline)).
          - At least 0.001 and at most 604800 (7 days); NaN and infinities are refused.
        type: float
        default: 10.0
      retries:
        description:
          - How many non-OK attempts are tolerated before the check's state is final (Nagios soft
            states); attempts are O(checks[].interval) apart. At most 10000.
        type: int
        default: 0
      interval:
        description:
          - Seconds between attempts, from 0 to 604800 (7 days).
        type: float
        default: 1.0
      consecutive:
        description:
          - OK results needed in a row before the check is OK (for flapping services). A non-OK
            result resets the streak and uses up one of O(checks[].retries). 1 to 10000.
        type: int
        default: 1
      warning:
        description:
          - Nagios range for the type's primary measure (see O(checks[].type)); outside it
            (inside with C(@)) the check is at least V(WARNING). A string or a number.
        type: raw
      critical:
        description:
          - Nagios range for the type's primary measure; evaluated before O(checks[].warning).
        type: raw
      thresholds:
        description:
          - 'Ranges for any measure, as a mapping of measure name to C({warning, critical}), for
            example C({time_ms: {warning: 200, critical: 1000}, cert_days: {warning: "14:", critical: "7:"}}).'
          - A thresholded measure that a successful probe could not measure makes the check V(UNKNOWN).
        type: dict
      url:
        description:
          - V(http) - the V(http://) or V(https://) URL. Required for V(http).
        type: str
      method:
        description:
          - V(http) - the request method. Default V(GET).
        type: str
      headers:
        description:
          - V(http) - request headers. Set C(no_log) on the task when they carry credentials.
        type: dict
      body:
        description:
          - V(http) - request body; a mapping or list is sent as JSON.
        type: raw
      status_codes:
        description:
          - V(http) - accepted status codes. Default any V(2xx). Another status is V(CRITICAL).
        type: list
        elements: int
      body_contains:
        description:
          - V(http) - text the body (its first MiB) must contain; otherwise V(CRITICAL).
        type: str
      json_conditions:
        description:
          - V(http) - conditions on the JSON body, C(PATH OP VALUE), for example
            C(status == "UP"), C(checks.db.status == "ok"), C(items[0].lag < 5).
          - PATH is dotted keys with C([n]) or C(.n) list indexes; OP is one of C(==), C(!=), C(<),
            C(<=), C(>), C(>=); VALUE is JSON (quote strings). A false condition is V(CRITICAL); a
            missing path, a body that is not JSON, or a value that is not a number where a number
            is compared makes the check V(UNKNOWN). Messages show the resolved values.
        type: list
        elements: str
      validate_certs:
        description:
          - V(http) - verify the server certificate and host name. Default V(true).
          - With V(false), C(cert_days) in RV(checks[].measures) of a self-signed or expired certificate is
            still reported.
        type: bool
      ca_path:
        description:
          - V(http) - CA bundle to verify the server with; V(docker_container) - CA of the daemon.
        type: path
      client_cert:
        description:
          - V(http) - client certificate (PEM) for mutual TLS; V(docker_container) - for the daemon.
        type: path
      client_key:
        description:
          - V(http) - key of O(checks[].client_cert) if not in the same file; V(docker_container) - for the daemon.
        type: path
      host:
        description:
          - V(tcp), V(redis), V(postgres) - server host name or address. Required for V(tcp);
            default V(127.0.0.1) for V(redis); for V(postgres) see O(host).
        type: str
        aliases: [login_host]
      port:
        description:
          - V(tcp), V(redis), V(postgres) - server port. Required for V(tcp); default V(6379) for V(redis).
        type: int
      send:
        description:
          - V(tcp) - text sent after connecting.
        type: str
      expect:
        description:
          - V(tcp) - text the server must send (within the timeout); otherwise V(CRITICAL).
        type: str
      user:
        description:
          - V(postgres) - role to connect as; V(redis) - ACL user name (with O(checks[].password)).
        type: str
        aliases: [login_user]
      password:
        description:
          - V(postgres) or V(redis) password. Never logged or returned.
        type: str
        aliases: [login_password]
      sslmode:
        description:
          - V(postgres) - libpq C(sslmode).
        type: str
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      sslrootcert:
        description:
          - V(postgres) - CA certificate to verify the server with.
        type: path
      sslcert:
        description:
          - V(postgres) - client certificate.
        type: path
      sslkey:
        description:
          - V(postgres) - client key.
        type: path
      database:
        description:
          - V(postgres) - database to connect to. Default V(postgres).
        type: str
      long_query_seconds:
        description:
          - V(postgres) - a non-idle query running longer than this counts in
            C(long_queries) in RV(checks[].measures). Default V(60).
        type: float
      container:
        description:
          - V(docker_container) - container name or id. Required for V(docker_container).
        type: str
      docker_host:
        description:
          - V(docker_container) - Docker API URL; default O(docker_host).
        type: str
      tls:
        description:
          - V(docker_container) - use TLS to the daemon; default O(tls).
        type: bool
      tls_verify:
        description:
          - V(docker_container) - use TLS and verify the daemon; default O(tls_verify).
        type: bool
      docker_timeout:
        description:
          - V(docker_container) - seconds for the Docker API; default the check's O(checks[].timeout).
        type: int
      namespace:
        description:
          - V(k8s_deployment) - namespace of the Deployment. Default V(default).
        type: str
      deployment:
        description:
          - V(k8s_deployment) - name of the Deployment. Required for V(k8s_deployment).
        type: str
      kubeconfig:
        description:
          - V(k8s_deployment) - kubeconfig file. Default E(KUBECONFIG), then C(~/.kube/config).
        type: path
      context:
        description:
          - V(k8s_deployment) - kubeconfig context. Default the current context.
        type: str
      in_cluster:
        description:
          - V(k8s_deployment) - use the service account of the pod the module runs in.
        type: bool
      path:
        description:
          - V(disk) - a path on the file system to measure. Default V(/).
        type: path
  concurrency:
    description:
      - How many checks run at the same time (threads), 1 to 256.
    type: int
    default: 32
  deadline:
    description:
      - Seconds the whole run may take, retries included. A check still running at the deadline is
        V(CRITICAL); a check that never started is V(UNKNOWN).
      - More than 0 and at most 604800 (7 days); NaN and infinities are refused.
    type: float
    default: 120.0
  fail_on:
    description:
      - When the task fails. V(critical) fails when any check is V(CRITICAL) or V(UNKNOWN) (the
        service is down, or nobody can tell); V(warning) fails on anything but V(OK); V(never)
        only reports.
      - A failed task still returns the whole report.
    type: str
    choices: [critical, warning, never]
    default: critical
notes:
  - Each check runs in its own thread and measures its own latency; C(time_ms) of V(http) is from
    the start of the DNS lookup to the last body byte, C(first_byte_ms) until the status line and
    headers arrived.
  - HTTP redirects are not followed (accept V(3xx) in O(checks[].status_codes) if wanted) and proxy
    variables are ignored; redis and tcp checks speak plain TCP (no TLS).
  - Perfdata follows the Nagios format C('label'=value[UOM];warn;crit;min;max).
seealso:
  - name: Nagios plugin development guidelines (threshold ranges)
    description: The range syntax of O(checks[].warning), O(checks[].critical) and O(checks[].thresholds).
    link: https://nagios-plugins.org/doc/guidelines.html#THRESHOLDFORMAT
"""

EXAMPLES = r"""
- name: Daily checks of the runbook
  opskit.runbook.health_check:
    checks:
      - name: api
        type: http
        url: https://api.example.com/health/full
        json_conditions:
          - status == "UP"
          - checks.db.status == "ok"
        thresholds:
          time_ms: {warning: 200, critical: 1000}   # API p95 < 200 ms
          cert_days: {warning: "21:", critical: "7:"}
      - name: database
        type: postgres
        host: db1.internal
        password: "{{ vault_pg_password }}"
        warning: 80                                 # connection pool < 80 %
        thresholds:
          long_queries: {warning: 0, critical: 5}
      - {name: cache, type: redis, host: cache1.internal, warning: 80, critical: 95}
      - {name: root fs, type: disk, path: /, warning: "20:", critical: "10:"}
      - {name: memory, type: memory, warning: 80, critical: 95}
      - {name: load, type: load, warning: 0.7, critical: 1.5}
  register: health

- name: Wait until the new release answers, tolerating a flapping start
  opskit.runbook.health_check:
    checks:
      - type: http
        url: http://127.0.0.1:8080/health
        retries: 30
        interval: 2
        consecutive: 3
      - type: docker_container
        container: app
      - type: k8s_deployment
        namespace: shop
        deployment: web
    deadline: 180

- name: Report only, never fail; show what is not OK
  opskit.runbook.health_check:
    checks: "{{ runbook_checks }}"
    fail_on: never
  register: health
- ansible.builtin.debug:
    msg: "{{ health.checks | rejectattr('status', 'eq', 'OK') | map(attribute='message') | list }}"
"""

RETURN = r"""
status:
  description: Overall status, the worst check (V(OK) < V(WARNING) < V(UNKNOWN) < V(CRITICAL)).
  returned: always
  type: str
  sample: WARNING
counts:
  description: Number of checks per status.
  returned: always
  type: dict
  sample: {OK: 5, WARNING: 1, CRITICAL: 0, UNKNOWN: 0}
summary:
  description: One line with the counts and the messages of the checks that are not OK.
  returned: always
  type: str
  sample: "WARNING: 6 checks, 5 OK, 1 WARNING; WARNING api: HTTP 200 in 260 ms; time_ms (260) > 200 (warning)"
duration_ms:
  description: Wall time of the whole run.
  returned: always
  type: float
  sample: 412.5
checks:
  description: One result per check, in the order of O(checks).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The check's name.
      type: str
      returned: always
      sample: api
    type:
      description: The probe type.
      type: str
      returned: always
      sample: http
    status:
      description: V(OK), V(WARNING), V(CRITICAL) or V(UNKNOWN).
      type: str
      returned: always
      sample: CRITICAL
    message:
      description: What was seen, with the resolved values of failed conditions and thresholds.
      type: str
      returned: always
      sample: 'HTTP 503 in 12.4 ms; status (503) not in 200-299; condition failed: status ("DOWN") == "UP"'
    duration_ms:
      description: Time spent on the check, all attempts and intervals included (null if it never finished).
      type: float
      returned: always
      sample: 12.9
    measures:
      description: Numeric measures of the last attempt (see O(checks[].type) for the names per type).
      type: dict
      returned: always
      sample: {dns_ms: 0.3, connect_ms: 0.4, tls_ms: 6.1, first_byte_ms: 11.9, time_ms: 12.4, status_code: 503, cert_days: 12.5}
    perfdata:
      description: The measures in Nagios perfdata format.
      type: str
      returned: always
      sample: "'time_ms'=12.4ms;200;1000;0 'status_code'=503"
    attempts:
      description: How many probe attempts ran.
      type: int
      returned: always
      sample: 1
    history:
      description: The status of every attempt, in order.
      type: list
      elements: str
      returned: always
      sample: [CRITICAL, OK, OK, OK]
    details:
      description: Non-numeric facts of the last attempt (server version, container status, certificate
        expiry date, rollout state, ...) and C(probe_ms).
      type: dict
      returned: always
      sample: {server_version: "15.10", role: primary, probe_ms: 8.2}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._docker import DOCKER_ARGSPEC, docker_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._errors import OpsError
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import CHECK_ARGSPEC, run_options, validate_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.engine import run_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.ranges import failing
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.connection import PG_ARGSPEC, pg_argspec


def main():
    argument_spec = pg_argspec(
        checks=dict(type="list", elements="dict", required=True, options=CHECK_ARGSPEC),
        concurrency=dict(type="int", default=32),
        deadline=dict(type="float", default=120.0),
        fail_on=dict(type="str", default="critical", choices=["critical", "warning", "never"]),
    )
    argument_spec.update(docker_argspec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    def action():
        params = module.params
        defaults = {k: params[k] for k in list(PG_ARGSPEC) + list(DOCKER_ARGSPEC)}
        concurrency, deadline = run_options(params["concurrency"], params["deadline"])
        checks = validate_checks(params["checks"], defaults=defaults)
        report = run_checks(checks, concurrency=concurrency, deadline=deadline)
        report["changed"] = False
        if failing(report["status"], params["fail_on"]):
            raise OpsError(report["summary"], **report)
        return report

    run_module(module, action)


if __name__ == "__main__":
    main()
