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
    V(docker_container) (state, health, restarts, OOM kill, memory % of the limit, CPU %; a
    container or every container of a Compose service), V(logs) (lines of the logs of a container, of a
    Compose service or of the pods of a Deployment or label selector matching patterns, with a
    masked excerpt), V(pod) (the pods of a Deployment or a label
    selector - readiness, restarts, CrashLoopBackOff, OOM kills, memory against the limit), V(k8s_deployment) (replicas and the
    C(kubectl rollout status) rules), V(disk) (free space and inodes), V(memory) (used %),
    V(load) (load average per core), V(metrics) (a sample of a Prometheus text-exposition endpoint,
    or a quantile estimated from a histogram's buckets), V(prometheus) (an instant PromQL query),
    V(tls) (certificate expiry of the whole presented chain, verification, host name, protocol and
    cipher of any TCP endpoint, direct TLS or STARTTLS)."
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
requirements:
  - prometheus-client (Python, for V(metrics) checks only; the parser of the text format)
  - cryptography (Python, for V(tls) checks - host name matching and the subject and issuer of each certificate)
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
        Docker options (O(docker_host), ...) those of V(docker_container) and V(logs) checks.
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
            V(k8s_deployment), V(disk), V(memory), V(load), V(metrics), V(prometheus),
            V(tls), V(logs), V(pod). Required.
          - "Numeric measures per type (the first is the primary measure):
            V(http): time_ms, dns_ms, connect_ms, tls_ms, first_byte_ms, status_code, body_bytes, cert_days;
            with O(checks[].samples) > 1 also p50_ms, p95_ms, p99_ms, max_ms, min_ms, mean_ms,
            error_ratio, error_pct, errors, samples.
            V(tcp): time_ms, dns_ms, connect_ms.
            V(postgres): connections_pct, connect_ms, query_ms, connections, max_connections,
            long_queries, replication_lag_seconds (replicas only).
            V(redis): memory_pct (of maxmemory, or of system memory when maxmemory is 0), connect_ms,
            ping_ms, used_memory_bytes, maxmemory_bytes, connected_clients.
            V(docker_container): restart_count, running, oom_killed, exit_code (when not running);
            with O(checks[].resources) (or a threshold on one of them) memory_pct, memory_bytes,
            memory_limit_bytes, cpu_pct; containers (a Compose service with several containers).
            V(logs): matches, lines, containers (containers read; of pods, one per pod and container).
            V(pod): ready_pct, pods, ready_pods, restarts (all containers), max_restarts (one
            container), crashloop (containers waiting in CrashLoopBackOff), oom_killed (containers
            whose current or last termination was OOMKilled), memory_pct (the highest pod's usage
            from metrics-server against its containers' memory limits, when it answers and every
            container has a limit). No pod or no pod ready is V(CRITICAL), CrashLoopBackOff is
            V(CRITICAL), a pod not ready or an OOM kill is V(WARNING).
            V(k8s_deployment): available_pct, desired_replicas, updated_replicas, ready_replicas,
            available_replicas, unavailable_replicas, generation, observed_generation.
            V(disk): free_pct, used_pct, free_bytes, total_bytes, inodes_free_pct, inodes_free.
            V(memory): used_pct, available_bytes, total_bytes, swap_used_pct.
            V(load): load1_per_core, load5_per_core, load15_per_core, load1, load5, load15, cores.
            V(metrics) and V(prometheus): value, series, min, max, sum, avg, time_ms, status_code.
            V(tls): days_left (the smallest over the leaf and every certificate the server
            presented), leaf_days, chain_certs, verified, hostname_ok, tls_ms, connect_ms, dns_ms, time_ms."
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
          - V(metrics) - the URL of the text-exposition endpoint, for example C(http://app:9100/metrics).
          - V(prometheus) - the URL of the Prometheus server (with its path prefix, if any);
            C(/api/v1/query) is appended.
          - A user name and password in the URL (C(https://user:pass@host/)) are sent as HTTP basic
            authentication (unless O(checks[].headers) has C(Authorization)).
          - Check names, messages and errors never show the URL's user information or its query
            values (they read C(https://***@host/path?token=***)); the password and the values (6 characters or more) of
            query keys naming a token, key, secret, password or signature are also masked
            everywhere in the result, the returned C(invocation) included.
        type: str
      method:
        description:
          - V(http) - the request method. Default V(GET).
        type: str
      headers:
        description:
          - V(http), V(metrics), V(prometheus) - request headers.
          - Treated as secret (C(no_log)), since they carry tokens and cookies - their values are
            never logged or returned, and every occurrence of a header value anywhere in the result
            is masked. Keep values that are not secret out of headers when they are short common
            strings (C(1), C(json)), as they would be masked everywhere too.
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
      samples:
        description:
          - V(http) - send this many requests one after the other (1 to 10000, default 1) and
            report their latency percentiles and error ratio - C(p50_ms), C(p95_ms), C(p99_ms),
            C(max_ms), C(min_ms), C(mean_ms) (nearest-rank, over the requests that got an answer),
            C(errors), C(error_ratio) (0 to 1) and C(error_pct), C(samples) (requests sent).
            C(time_ms) is then the median; the other measures come from the last request.
          - A request is an error when it fails (refused, timeout, TLS) or its answer fails
            O(checks[].status_codes), O(checks[].body_contains) or O(checks[].json_conditions).
            Without a threshold on C(errors), C(error_ratio) or C(error_pct), one error makes the
            check V(CRITICAL); with one, the threshold judges the errors.
          - Each request gets O(checks[].timeout); the whole attempt stops at O(deadline).
          - Thresholds on these measures need O(checks[].samples) > 1.
        type: int
      sample_interval:
        description:
          - V(http) - seconds between two of the O(checks[].samples) requests, from 0 (default) to 604800.
          - Not O(checks[].interval), which is the pause between retries.
        type: float
      validate_certs:
        description:
          - V(http), V(metrics), V(prometheus), V(tls) - verify the server certificate and host name. Default V(true).
          - V(tls) - a chain that does not verify, or a certificate not valid for the name, is
            V(CRITICAL) with the reason, and its days are still measured (a second handshake
            without verification reads the chain). With V(false) only the thresholds judge.
          - With V(false), C(cert_days) in RV(checks[].measures) of a self-signed or expired certificate is
            still reported.
        type: bool
      ca_path:
        description:
          - V(http), V(metrics), V(prometheus), V(tls) - CA bundle to verify the server with; V(docker_container) - CA of the daemon.
        type: path
      client_cert:
        description:
          - V(http), V(metrics), V(prometheus), V(tls) - client certificate (PEM) for mutual TLS; V(docker_container) - for the daemon.
        type: path
      client_key:
        description:
          - V(http) - key of O(checks[].client_cert) if not in the same file; V(docker_container) - for the daemon.
        type: path
      host:
        description:
          - V(tcp), V(redis), V(postgres), V(tls) - server host name or address. Required for V(tcp) and V(tls);
            default V(127.0.0.1) for V(redis); for V(postgres) see O(host).
        type: str
        aliases: [login_host]
      port:
        description:
          - V(tcp), V(redis), V(postgres), V(tls) - server port. Required for V(tcp) and V(tls); default V(6379) for V(redis).
        type: int
      metric:
        description:
          - V(metrics) - the sample name to select, for example C(gitlab_api_rate_limit_remaining) or
            C(http_requests_total). With O(checks[].quantile), the name of a histogram or summary
            (C(http_request_duration_seconds) or its C(_bucket) series). Required for V(metrics).
        type: str
      labels:
        description:
          - 'V(metrics) - labels the selected samples must have (exact values), for example C({code: "500"}).'
        type: dict
      quantile:
        description:
          - V(metrics) - 0 to 1. For a histogram, the quantile estimated from the buckets of the
            selected series summed by C(le), as PromQL's C(histogram_quantile(q, sum by (le) (...)))
            does (linear within a bucket; the highest finite bound when it falls in C(+Inf)); for
            a summary, its sample with that C(quantile) label.
        type: float
      query:
        description:
          - V(prometheus) - an instant PromQL query, giving an instant vector or a scalar (a range
            vector or a string is V(UNKNOWN)). Required for V(prometheus).
          - 'For example C(histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m]))))
            or C(sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))).'
          - An answer that is not a query result (not JSON, C(status) not C(success), for example
            invalid PromQL) is V(UNKNOWN) with Prometheus' error; HTTP 401, 403 and 5xx are V(CRITICAL).
        type: str
      aggregate:
        description:
          - V(metrics), V(prometheus) - what to do with several series. V(none) (default) judges
            every series on its own; the check has the worst state, C(value) is the worst series'
            value and RV(checks[].details) lists the series (C(series), at most 20) with their
            states. V(sum), V(min), V(max), V(avg), V(count) combine them into C(value).
          - The measures C(min), C(max), C(sum), C(avg) and C(series) are always given. Series
            whose value is NaN are left out.
        type: str
        choices: [none, sum, min, max, avg, count]
      empty:
        description:
          - V(metrics), V(prometheus) - the state when no series matches (default V(unknown);
            V(ok) for queries that list problems, such as C(up == 0)).
        type: str
        choices: [ok, warning, critical, unknown]
      bearer_token:
        description:
          - 'V(metrics), V(prometheus) - sent as C(Authorization: Bearer ...). Never logged or returned.'
        type: str
      starttls:
        description:
          - V(tls) - V(none) (default) for direct TLS, or the protocol whose plain-text upgrade comes
            first - V(smtp) (EHLO, STARTTLS), V(imap) (STARTTLS), V(postgres) (the SSLRequest of
            the PostgreSQL protocol; a server with C(ssl=off) is V(CRITICAL)).
        type: str
        choices: [none, smtp, imap, postgres]
      server_name:
        description:
          - V(tls) - the name sent in SNI and verified against the certificate. Default O(checks[].host).
        type: str
      protocols:
        description:
          - V(tls) - accepted protocol versions, for example C([TLSv1.2, TLSv1.3]); another one is V(CRITICAL).
        type: list
        elements: str
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
          - V(postgres) - role to connect as; V(redis) - ACL user name (with O(checks[].password));
            V(metrics), V(prometheus) - user name of HTTP basic authentication.
        type: str
        aliases: [login_user]
      password:
        description:
          - V(postgres), V(redis) password; V(metrics), V(prometheus) - password of HTTP basic
            authentication. Never logged or returned.
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
          - V(docker_container), V(logs) - container name or id. This or O(checks[].compose_service) is required.
          - V(logs) of pods (O(checks[].deployment) or O(checks[].selector)) - the name of the container
            in each pod whose logs are read (C(kubectl logs -c)); default every container of the pods.
        type: str
      compose_service:
        description:
          - V(docker_container), V(logs) - every container of this Compose service (found by its
            C(com.docker.compose.service) label), stopped ones included. Several containers are
            judged together - every problem counts, each measure is the worst container's (the
            lowest C(running), the highest of the others), and RV(checks[].details) lists them
            in C(containers).
        type: str
      compose_project:
        description:
          - V(docker_container), V(logs) - the Compose project of O(checks[].compose_service)
            (its C(com.docker.compose.project) label). Default any project.
        type: str
      resources:
        description:
          - V(docker_container) - also measure memory and CPU from the stats API, for a running
            container (default V(false); on as soon as a threshold names C(memory_pct),
            C(memory_bytes), C(memory_limit_bytes) or C(cpu_pct)).
          - Memory is counted as C(docker stats) does (usage minus inactive file cache), as a
            percentage of the container's memory limit, or of the host memory without one
            (C(memory_limit) in RV(checks[].details) says which).
        type: bool
      cpu_window:
        description:
          - V(docker_container) - seconds between the two stats readings that C(cpu_pct) is
            measured over (0 to 60, default 1; 0 - no CPU measure). The daemon samples once a
            second, so the window is at least about one second. C(cpu_pct) is 100 for one busy
            core, as in C(docker stats).
        type: float
      patterns:
        description:
          - V(logs) - regular expressions (Python syntax); a line counts once in C(matches) when
            any of them matches. Default C(ERROR), C(FATAL), C(panic), C(Traceback). A bad
            expression is an error naming the check.
        type: list
        elements: str
      ignore_case:
        description:
          - V(logs) - match O(checks[].patterns) regardless of case. Default V(false).
        type: bool
      since:
        description:
          - V(logs) - only lines logged within this duration before now, for example C(15min),
            C(1h), C(2d) (units y, m (months), w, d, h, min, s) or a number of seconds. Default all.
        type: raw
      tail:
        description:
          - V(logs) - only the last N lines of each container's log (of each pod's container).
        type: int
      excerpt:
        description:
          - V(logs) - how many of the last matching lines to return in C(excerpt) in
            RV(checks[].details) (0 to 50, default 5; the last one is also in the message),
            each cut at 200 characters.
          - Secrets are masked (C(***)) in the excerpt - values of password, secret, token, key and
            credential fields, bearer and basic credentials, AWS access key ids, URL user
            information and query values, and what O(checks[].mask) matches.
        type: int
      mask:
        description:
          - V(logs) - more regular expressions whose matches are replaced by C(***) in the excerpt.
        type: list
        elements: str
      docker_host:
        description:
          - V(docker_container), V(logs) - Docker API URL; default O(docker_host).
        type: str
      tls:
        description:
          - V(docker_container), V(logs) - use TLS to the daemon; default O(tls).
        type: bool
      tls_verify:
        description:
          - V(docker_container), V(logs) - use TLS and verify the daemon; default O(tls_verify).
        type: bool
      docker_timeout:
        description:
          - V(docker_container), V(logs) - seconds for the Docker API; default the check's O(checks[].timeout).
        type: int
      namespace:
        description:
          - V(k8s_deployment), V(pod), V(logs) - namespace of the Deployment or the pods. Default V(default).
        type: str
      deployment:
        description:
          - V(k8s_deployment) - name of the Deployment. Required for V(k8s_deployment).
          - V(pod) - the Deployment whose pods (by its C(matchLabels)) are judged; this or O(checks[].selector).
          - V(logs) - the Deployment whose pods' logs are read, as C(kubectl logs deployment/NAME) reads
            them but from every pod (this or O(checks[].selector), instead of a container or Compose
            service); a container that has no log yet (waiting to start) is named in the message
            and counts no line.
        type: str
      selector:
        description:
          - V(pod), V(logs) - a label selector of the pods, for example C(app=web,tier=front).
        type: str
      kubeconfig:
        description:
          - V(k8s_deployment), V(pod), V(logs) of pods - kubeconfig file. Default E(KUBECONFIG), then C(~/.kube/config).
        type: path
      context:
        description:
          - V(k8s_deployment), V(pod), V(logs) of pods - kubeconfig context. Default the current context.
        type: str
      in_cluster:
        description:
          - V(k8s_deployment), V(pod), V(logs) of pods - use the service account of the pod the module runs in.
        type: bool
      path:
        description:
          - V(disk) - a path on the file system to measure. Default V(/).
        type: path
  concurrency:
    description:
      - How many checks run at the same time, 1 to 256.
      - The default, 256, runs up to 256 checks at once - a check waiting on the network costs
        little, and every wave of checks that waits for an earlier one adds the slowest probe's
        time to the task. Lower it to spare a server that many checks hit at the same moment.
      - When a run mixes V(http) checks with other types, the limit is shared between the two
        in proportion to their numbers (each side gets at least one).
    type: int
    default: 256
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
  summary:
    description:
      - Return only the verdict - RV(status), RV(counts), RV(summary), RV(duration_ms) - and, in
        RV(checks), the checks that are not V(OK); the returned C(invocation) then leaves out
        O(checks).
      - The result then grows with the number of failing checks, not of checks. Use it for long
        check lists under AWX or ansible-runner, which drop a task result larger than
        E(MAX_EVENT_RES) (700000 characters by default) from the job event.
    type: bool
    default: false
    version_added: 0.2.0
notes:
  - V(http) checks run on event loops (non-blocking sockets, TLS on them; one loop per CPU core,
    at most four, and one for a run of fewer than 32 http checks); every other type runs in its
    own thread. Each check measures its own latency; C(time_ms) of V(http) is from
    the start of the DNS lookup to the last body byte, C(first_byte_ms) until the status line and
    headers arrived. On an event loop a host name is resolved once per run and loop on a helper
    thread (the checks of the same host and port share it; their C(dns_ms) is the wait for it), and
    a lookup that outlasts a check's O(checks[].timeout) ends that check as timed out.
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
        samples: 20
        sample_interval: 0.05
        thresholds:
          p95_ms: {warning: 200, critical: 1000}    # API p95 < 200 ms over 20 requests
          error_pct: {warning: 1, critical: 5}      # error rate under 5 %
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
      - name: rate limit
        type: metrics
        url: http://gitlab-exporter.internal:9168/metrics
        metric: gitlab_api_rate_limit_remaining
        critical: "100:"                            # at least 100 requests left
      - name: api p95 from the app's histogram
        type: metrics
        url: http://api.internal:8080/metrics
        metric: http_request_duration_seconds
        quantile: 0.95
        warning: 0.2
      - name: error rate
        type: prometheus
        url: https://prometheus.internal:9090
        bearer_token: "{{ vault_prometheus_token }}"
        query: sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))
        warning: 0.01
        critical: 0.05
      - name: targets down
        type: prometheus
        url: https://prometheus.internal:9090
        user: monitor
        password: "{{ vault_prometheus_password }}"
        query: up == 0
        empty: ok                                   # no series: every target is up
        critical: "@0:"                             # any series: CRITICAL, one state per target
      - name: mail certificate chain
        type: tls
        host: mail.example.com
        port: 587
        starttls: smtp
        warning: "21:"                              # days left, leaf and intermediates
        critical: "7:"
      - {name: database certificate, type: tls, host: db1.internal, port: 5432, starttls: postgres, critical: "14:"}
      - name: api container
        type: docker_container
        compose_service: api
        compose_project: shop
        thresholds:
          memory_pct: {warning: 80, critical: 95}   # memory under 80 % of the limit
          cpu_pct: {warning: 70}                    # CPU under 70 %
          restart_count: {warning: 0, critical: 5}
          oom_killed: {critical: 0}
      - {name: web pods, type: pod, namespace: shop, deployment: web, thresholds: {memory_pct: {warning: 80}}}
      - {name: web pod errors, type: logs, namespace: shop, deployment: web, since: 15min, warning: 0, critical: 20}
      - name: api errors in the last 15 minutes
        type: logs
        compose_service: api
        since: 15min
        warning: 0
        critical: 20
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

- name: A thousand checks under AWX - return the verdict and only the checks that are not OK
  opskit.runbook.health_check:
    checks: "{{ fleet_checks }}"
    summary: true
    fail_on: never
  register: fleet
- ansible.builtin.debug:
    msg: "{{ fleet.counts }}: {{ fleet.checks | map(attribute='name') | list }}"
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
  description:
    - One result per check, in the order of O(checks).
    - With O(summary=true), only the checks that are not V(OK) (RV(counts) still counts all of them).
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
      contains:
        excerpt:
          description: V(logs) - the last matching lines (O(checks[].excerpt)), secrets masked.
          type: list
          elements: str
          returned: for logs checks
          sample: ["ERROR db failed password=*** token: ***"]
        containers:
          description:
            - V(docker_container) of a Compose service - each container's details, with its C(name).
            - V(logs) - the names of the containers whose logs were read (C(pod/container) for pods).
          type: list
          returned: for docker_container checks of several containers, and logs checks
        certificates:
          description:
            - V(tls) - the presented chain, leaf first, each with C(subject), C(issuer) (when the
              cryptography library is there), C(not_after) and C(days). Beside it C(protocol),
              C(cipher), C(names) (the leaf's DNS names and addresses) and C(verify_error).
          type: list
          elements: dict
          returned: for tls checks that completed a handshake
          sample: [{subject: CN=api.example.com, issuer: CN=R11, not_after: "2027-02-01T00:00:00Z", days: 62.4}]
        series:
          description:
            - V(metrics), V(prometheus) with O(checks[].aggregate=none) - the series (at most 20),
              worst first, each with C(labels), C(value) and C(status).
          type: list
          elements: dict
          returned: for metrics and prometheus checks with at least one series and aggregate none
          sample: [{labels: {api: github}, value: 50, status: CRITICAL}, {labels: {api: gitlab}, value: 150, status: OK}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._docker import DOCKER_ARGSPEC, docker_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._errors import OpsError
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import run_options, validate_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.engine import run_checks, summary_only
from ansible_collections.opskit.runbook.plugins.module_utils._health.params import convert_checks, secret_values
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import redact
from ansible_collections.opskit.runbook.plugins.module_utils._health.ranges import failing
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.connection import PG_ARGSPEC, pg_argspec


class _HealthModule(AnsibleModule):
    """AnsibleModule whose log line masks the secrets of the checks.

    ``checks`` has no ``options`` in the argument spec: params.convert_checks converts the
    sub-options a check sets (Ansible's validation visits all ~100 sub-options of every check:
    20 to 30 ms of CPU for 200 checks, 3 to 5 ms without), so Ansible does not know their no_log
    values by itself."""

    def _log_invocation(self):
        self.no_log_values.update(secret_values(self.params.get("checks")))
        super()._log_invocation()


def _invocation(params, checks):
    """``invocation.module_args`` with the ``checks`` as converted, without their unset (null)
    options, and without ``checks`` at all in summary mode (a result that stays small). Secrets are
    masked in it as usual (no_log values; URLs without userinfo and query values)."""
    args = {k: v for k, v in params.items() if v is not None and k != "checks"}
    if not params["summary"]:
        args["checks"] = [{k: redact(v) if k == "url" else v for k, v in check.items() if v is not None}
                          if isinstance(check, dict) else check for check in checks or ()]
    return {"module_args": args}


def main():
    argument_spec = pg_argspec(
        checks=dict(type="list", elements="dict", required=True),   # sub-options: CHECK_ARGSPEC, see _HealthModule
        concurrency=dict(type="int", default=256),
        deadline=dict(type="float", default=120.0),
        fail_on=dict(type="str", default="critical", choices=["critical", "warning", "never"]),
        summary=dict(type="bool", default=False),
    )
    argument_spec.update(docker_argspec())
    module = _HealthModule(argument_spec=argument_spec, supports_check_mode=True)
    module.no_log_values.update(secret_values(module.params["checks"]))   # also with a task's no_log

    def action():
        params = module.params
        defaults = {k: params[k] for k in list(PG_ARGSPEC) + list(DOCKER_ARGSPEC)}
        concurrency, deadline = run_options(params["concurrency"], params["deadline"])
        converted = convert_checks(params["checks"])
        module.no_log_values.update(secret_values(converted))
        checks = validate_checks(converted, defaults=defaults)
        report = run_checks(checks, concurrency=concurrency, deadline=deadline)
        if params["summary"]:
            report = summary_only(report)
        report["changed"] = False
        report["invocation"] = _invocation(params, converted)
        if failing(report["status"], params["fail_on"]):
            raise OpsError(report["summary"], **report)
        return report

    run_module(module, action)


if __name__ == "__main__":
    main()
