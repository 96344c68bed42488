#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rollout
short_description: Upgrade a container, Compose service or Deployment behind a health gate, with automatic rollback
version_added: 0.1.0
description:
  - Replaces the image of a Docker container (O(target=docker_container)), of every container of
    a Compose service (O(target=compose_service)) or of one container of a Kubernetes Deployment
    (O(target=k8s_deployment)), then waits for it to pass a gate, and rolls back at once when it
    does not.
  - B(Record before change.) The last-known-good (image reference, resolved digest and the spec
    that re-creates it) is stored with the target before anything changes, and returned. Docker
    keeps it in the label C(opskit.runbook.last-known-good) of the new container (the
    container's create request, derived from C(inspect)); Kubernetes in the annotation
    C(opskit.runbook/last-known-good) of the Deployment (the pod template), written by a patch
    that touches no other annotation. A rollback restores exactly that, never "the previous
    revision".
  - B(Docker re-creation) keeps every setting of the container (environment, bind mounts, named
    and anonymous volumes (re-attached by name), published ports, networks with aliases and
    static addresses, labels, restart policy, resources, command, entrypoint, user, working
    directory, hostname, healthcheck). Settings equal to the old image's defaults (ENV, CMD,
    HEALTHCHECK, ...) are left to the new image. The old container is renamed and stopped, kept
    until the new one passed the gate (so a rollback is a rename and a start), then removed.
  - A container started with C(--rm) (C(HostConfig.AutoRemove)) is deleted by Docker as soon as
    its old copy stops, with its writable layer. Its rollback re-creates it from its own
    C(inspect) (every setting, the same image, its anonymous volumes re-attached by name, which
    are kept); files it wrote outside volumes are lost, as with any C(--rm) container.
  - B(Gate.) First the platform's readiness - Docker health status C(healthy), or running and
    not restarting for an image without a healthcheck; for Kubernetes the C(kubectl rollout
    status) rules - within O(timeout). Then O(health_checks) must pass, and everything must stay
    passing for O(monitor) seconds.
  - B(Fail fast.) An exited, restarting, OOM-killed or unhealthy container, a pod in
    CrashLoopBackOff, ImagePullBackOff, ErrImagePull or CreateContainerConfigError, an exceeded
    progress deadline or a missing image ends the gate at once, not at the deadline. This holds
    while O(health_checks) are still retrying, since the gate keeps watching the container (state,
    restart count, OOM kill) or the pods every 0.25 s while the checks run.
  - B(Rollback) restores the recorded spec and verifies it with the same gate within
    O(rollback_timeout). A rolled-back rollout fails the task unless O(fail_on_rollback=false);
    a failed rollback always fails it. A missing Docker image is found before anything is
    stopped; the result is then V(rolled_back) with C(changed=false).
  - O(state=rolled_back) rolls back by hand to the recorded last-known-good;
    O(state=restarted) restarts the target without changing its image (C(docker restart),
    C(kubectl rollout restart)) through the same gate.
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.docker
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports the from/to it would apply (and the outcome it would aim for) and changes nothing;
      a Docker image that is not present is not pulled, its digest is then null.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  target:
    description:
      - What to upgrade. V(docker_container) is the container O(name); V(compose_service) is every
        container of service O(name) of Compose project O(project) (found by the
        C(com.docker.compose.*) labels, replaced one after another); V(k8s_deployment) is the
        container O(container) of Deployment O(name) in O(namespace).
    type: str
    required: true
    choices: [docker_container, compose_service, k8s_deployment]
  name:
    description:
      - Container name (or id), Compose service name, or Deployment name.
    type: str
    required: true
  project:
    description:
      - Compose project name (label C(com.docker.compose.project)). Required for
        O(target=compose_service).
    type: str
  image:
    description:
      - The image to run, for example V(registry.example.com/api:2.4.1) or a reference by digest.
      - Required for O(state=deployed). When the target already runs this image (the same image
        id for Docker, the same reference for Kubernetes) nothing changes (V(unchanged)).
    type: str
  state:
    description:
      - V(deployed) upgrades to O(image); V(rolled_back) restores the recorded last-known-good
        (fails when none is recorded); V(restarted) restarts without changing the image.
      - V(stopped) stops the target (every container of a Compose service; a Deployment is scaled
        to 0 and its replica count kept in the annotation C(opskit.runbook/replicas-before-stop)),
        for example the writers of a database before a restore. It refuses before stopping
        anything when a container cannot be started again (C(--rm)), and waits until nothing
        runs, within O(timeout).
      - V(started) starts a stopped target again (a Deployment back to its recorded replicas) and
        runs the gate; a target that does not pass fails the task (nothing to roll back to).
      - V(scaled) brings a Compose service or a Deployment to O(replicas). New Compose containers
        are copies of the highest-numbered one (every setting, its image, the next container
        numbers and Compose's names), started and gated one after the other; when one fails, the
        copies of this run are removed and the task fails. Scaling down stops and removes the
        highest-numbered containers. A container that holds a host port cannot run twice, so
        scaling it up is refused before anything changes. A Deployment gets its C(spec.replicas)
        patched and is gated, and is patched back when the gate fails.
    type: str
    default: deployed
    choices: [deployed, rolled_back, restarted, stopped, started, scaled]
  replicas:
    description:
      - The number of containers or pods for O(state=scaled).
    type: int
  health_checks:
    description:
      - Probes that must pass after the platform reports ready and keep passing through the
        O(monitor) window; the same schema as the O(opskit.runbook.health_check#module:checks)
        option of M(opskit.runbook.health_check) (types V(http), V(tcp), V(postgres), V(redis),
        V(docker_container), V(k8s_deployment), ...).
      - A check counts as failed when it ends V(CRITICAL) or V(UNKNOWN). Its own C(retries) and
        C(interval) decide how long it may fail while the service starts (for example
        C(retries=10), C(interval=1)); they run within what is left of O(timeout).
      - Passwords (O(health_checks[].password)) are never logged and are masked in the returned
        C(invocation).
    type: list
    elements: dict
    suboptions: &health_check_suboptions
      name:
        description:
          - Name of the check in the report and in the rollout's reason.
        type: str
      type:
        description:
          - The probe, one of V(http), V(tcp), V(postgres), V(redis), V(docker_container), V(k8s_deployment),
            V(disk), V(memory), V(load), V(metrics), V(prometheus), V(tls), V(logs) or V(pod). Required.
        type: str
      timeout:
        description:
          - As O(opskit.runbook.health_check#module:checks[].timeout).
        type: float
        default: 10.0
      retries:
        description:
          - How many times the check may fail before it counts as failed (while the service starts).
        type: int
        default: 0
      interval:
        description:
          - Seconds between two attempts of the check.
        type: float
        default: 1.0
      consecutive:
        description:
          - As O(opskit.runbook.health_check#module:checks[].consecutive).
        type: int
        default: 1
      warning:
        description:
          - As O(opskit.runbook.health_check#module:checks[].warning).
        type: raw
      critical:
        description:
          - As O(opskit.runbook.health_check#module:checks[].critical).
        type: raw
      thresholds:
        description:
          - As O(opskit.runbook.health_check#module:checks[].thresholds).
        type: dict
      url:
        description:
          - As O(opskit.runbook.health_check#module:checks[].url) (type V(http)).
        type: str
      method:
        description:
          - As O(opskit.runbook.health_check#module:checks[].method) (type V(http)).
        type: str
      headers:
        description:
          - As O(opskit.runbook.health_check#module:checks[].headers) (type V(http)).
          - Treated as secrets (an C(Authorization) header, a token) - never logged, masked in
            C(invocation), and their values are masked wherever they would appear in the result.
        type: dict
      body:
        description:
          - As O(opskit.runbook.health_check#module:checks[].body) (type V(http)).
        type: raw
      status_codes:
        description:
          - As O(opskit.runbook.health_check#module:checks[].status_codes) (type V(http)).
        type: list
        elements: int
      body_contains:
        description:
          - As O(opskit.runbook.health_check#module:checks[].body_contains) (type V(http)).
        type: str
      json_conditions:
        description:
          - As O(opskit.runbook.health_check#module:checks[].json_conditions) (type V(http)).
        type: list
        elements: str
      validate_certs:
        description:
          - As O(opskit.runbook.health_check#module:checks[].validate_certs) (type V(http)).
        type: bool
      send:
        description:
          - As O(opskit.runbook.health_check#module:checks[].send) (type V(tcp)).
        type: str
      expect:
        description:
          - As O(opskit.runbook.health_check#module:checks[].expect) (type V(tcp)).
        type: str
      database:
        description:
          - As O(opskit.runbook.health_check#module:checks[].database) (type V(postgres)).
        type: str
      long_query_seconds:
        description:
          - As O(opskit.runbook.health_check#module:checks[].long_query_seconds) (type V(postgres)).
        type: float
      container:
        description:
          - As O(opskit.runbook.health_check#module:checks[].container) (type V(docker_container)).
        type: str
      namespace:
        description:
          - As O(opskit.runbook.health_check#module:checks[].namespace) (type V(k8s_deployment)).
        type: str
      deployment:
        description:
          - As O(opskit.runbook.health_check#module:checks[].deployment) (type V(k8s_deployment)).
        type: str
      kubeconfig:
        description:
          - As O(opskit.runbook.health_check#module:checks[].kubeconfig) (type V(k8s_deployment)).
        type: path
      context:
        description:
          - As O(opskit.runbook.health_check#module:checks[].context) (type V(k8s_deployment)).
        type: str
      in_cluster:
        description:
          - As O(opskit.runbook.health_check#module:checks[].in_cluster) (type V(k8s_deployment)).
        type: bool
      path:
        description:
          - As O(opskit.runbook.health_check#module:checks[].path) (type V(disk)).
        type: path
      host:
        description:
          - As O(opskit.runbook.health_check#module:checks[].host) (type V(tcp), V(postgres),
            V(redis)).
        type: str
        aliases: [login_host]
      port:
        description:
          - As O(opskit.runbook.health_check#module:checks[].port) (type V(tcp), V(postgres),
            V(redis)).
        type: int
      user:
        description:
          - As O(opskit.runbook.health_check#module:checks[].user) (type V(postgres), V(redis)).
        type: str
        aliases: [login_user]
      password:
        description:
          - Password of a V(postgres) or V(redis) check. Never logged, and masked in C(invocation) and in
            the journal.
        type: str
        aliases: [login_password]
      sslmode:
        description:
          - As O(opskit.runbook.health_check#module:checks[].sslmode) (type V(postgres)).
        type: str
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      sslrootcert:
        description:
          - As O(opskit.runbook.health_check#module:checks[].sslrootcert) (type V(postgres)).
        type: path
      sslcert:
        description:
          - As O(opskit.runbook.health_check#module:checks[].sslcert) (type V(postgres)).
        type: path
      sslkey:
        description:
          - As O(opskit.runbook.health_check#module:checks[].sslkey) (type V(postgres)).
        type: path
      docker_host:
        description:
          - As O(opskit.runbook.health_check#module:checks[].docker_host) (type V(docker_container)).
        type: str
      tls:
        description:
          - As O(opskit.runbook.health_check#module:checks[].tls) (type V(docker_container)).
        type: bool
      tls_verify:
        description:
          - As O(opskit.runbook.health_check#module:checks[].tls_verify) (type V(docker_container)).
        type: bool
      ca_path:
        description:
          - As O(opskit.runbook.health_check#module:checks[].ca_path) (type V(http),
            V(docker_container)).
        type: path
      client_cert:
        description:
          - As O(opskit.runbook.health_check#module:checks[].client_cert) (type V(http),
            V(docker_container)).
        type: path
      client_key:
        description:
          - As O(opskit.runbook.health_check#module:checks[].client_key) (type V(http),
            V(docker_container)).
        type: path
      docker_timeout:
        description:
          - As O(opskit.runbook.health_check#module:checks[].docker_timeout) (type
            V(docker_container)).
        type: int
      samples:
        description:
          - As O(opskit.runbook.health_check#module:checks[].samples) (type V(http)).
        type: int
      sample_interval:
        description:
          - As O(opskit.runbook.health_check#module:checks[].sample_interval) (type V(http)).
        type: float
      metric:
        description:
          - As O(opskit.runbook.health_check#module:checks[].metric) (type V(metrics)).
        type: str
      labels:
        description:
          - As O(opskit.runbook.health_check#module:checks[].labels) (type V(metrics)).
        type: dict
      quantile:
        description:
          - As O(opskit.runbook.health_check#module:checks[].quantile) (type V(metrics)).
        type: float
      query:
        description:
          - As O(opskit.runbook.health_check#module:checks[].query) (type V(prometheus)).
        type: str
      aggregate:
        description:
          - As O(opskit.runbook.health_check#module:checks[].aggregate) (type V(metrics), V(prometheus)).
        type: str
        choices: [none, sum, min, max, avg, count]
      empty:
        description:
          - As O(opskit.runbook.health_check#module:checks[].empty) (type V(metrics), V(prometheus)).
        type: str
        choices: [ok, warning, critical, unknown]
      bearer_token:
        description:
          - As O(opskit.runbook.health_check#module:checks[].bearer_token) (type V(metrics), V(prometheus)).
        type: str
      starttls:
        description:
          - As O(opskit.runbook.health_check#module:checks[].starttls) (type V(tls)).
        type: str
        choices: [none, smtp, imap, postgres]
      server_name:
        description:
          - As O(opskit.runbook.health_check#module:checks[].server_name) (type V(tls)).
        type: str
      protocols:
        description:
          - As O(opskit.runbook.health_check#module:checks[].protocols) (type V(tls)).
        type: list
        elements: str
      compose_service:
        description:
          - As O(opskit.runbook.health_check#module:checks[].compose_service) (type V(docker_container), V(logs)).
        type: str
      compose_project:
        description:
          - As O(opskit.runbook.health_check#module:checks[].compose_project) (type V(docker_container), V(logs)).
        type: str
      resources:
        description:
          - As O(opskit.runbook.health_check#module:checks[].resources) (type V(docker_container)).
        type: bool
      cpu_window:
        description:
          - As O(opskit.runbook.health_check#module:checks[].cpu_window) (type V(docker_container)).
        type: float
      patterns:
        description:
          - As O(opskit.runbook.health_check#module:checks[].patterns) (type V(logs)).
        type: list
        elements: str
      ignore_case:
        description:
          - As O(opskit.runbook.health_check#module:checks[].ignore_case) (type V(logs)).
        type: bool
      since:
        description:
          - As O(opskit.runbook.health_check#module:checks[].since) (type V(logs)).
        type: raw
      tail:
        description:
          - As O(opskit.runbook.health_check#module:checks[].tail) (type V(logs)).
        type: int
      excerpt:
        description:
          - As O(opskit.runbook.health_check#module:checks[].excerpt) (type V(logs)).
        type: int
      selector:
        description:
          - As O(opskit.runbook.health_check#module:checks[].selector) (type V(pod)).
        type: str
      mask:
        description:
          - As O(opskit.runbook.health_check#module:checks[].mask) (type V(logs)).
        type: list
        elements: str
  order:
    description:
      - Docker and Compose. V(stop-first) stops the old container, then starts the new one under
        its name, so the service is down while the new version starts (bench/RESULTS.md).
      - V(start-first) starts the new container next to the old one (as
        C(<name>_opskit_next_<ms>), on the same networks with the same aliases, so that a proxy
        that resolves the service name reaches both), gates it, runs O(proxy_checks), and only
        then stops and removes the old one and gives the new one its name. A rollback is then
        the removal of the new container, the old one never stopped. Both run at the same
        time, on the same volumes; choose it only for services that allow that (stateless web
        services behind a proxy), never for a database.
      - Where start-first is impossible (the container holds a host port, uses network mode
        C(host) or C(container:), or has a static address) the container is stopped first, and
        RV(order) and RV(order_notes) (also a warning) say so.
      - Kubernetes always rolls by the Deployment's own strategy (its surge); with
        V(start-first), a strategy that may stop pods first (C(Recreate), C(maxUnavailable) not
        0) is named in RV(order_notes). The Deployment is not changed.
    type: str
    default: stop-first
    choices: [stop-first, start-first]
  proxy_checks:
    description:
      - O(order=start-first) only. Checks through the reverse proxy in front of the service
        (same schema as O(health_checks)), run once the new container passed the gate, while
        the old one still runs; when they fail, the new container is removed (a rollback) and
        the old one never stopped.
      - Make it a check that only the new version passes (C(body_contains) its version, for
        example); it then proves that the proxy's upstream reaches the new container (a proxy
        that resolves the service name at most every few seconds, as nginx's C(resolver valid=),
        may not know it yet), so that the proxy has somewhere to send requests when the old one
        goes. Give it C(retries) to cover the proxy's resolver cache.
    type: list
    elements: dict
    suboptions: *health_check_suboptions
  compose_file:
    description:
      - O(target=compose_service) only. V(update) makes the Compose project say what runs, so
        that the next C(docker compose up -d) keeps it. The project's files are found from the
        containers' labels (C(com.docker.compose.project.config_files), C(.working_dir),
        C(.environment_file)); the last file that sets the service's C(image:) wins.
        A literal C(image) (C(repo:1.0)) is rewritten to the new image in that line; an image
        taken from a variable (C(${VAR}) or C(${VAR:-default})) gets C(VAR=<new image>) in the
        project's env file (C(.env) in the working directory by default). Only that line changes; the file is replaced through a
        temporary file and a rename, with its mode kept.
      - The edit is planned before anything changes, and the rollout is refused (nothing is
        touched) when the file names a third image, neither the one that runs nor the new one;
        the next C(docker compose up -d) would bring that one back otherwise. The file is written only
        once every container passed the gate; a rolled-back run leaves it as it was.
        O(state=rolled_back) writes the restored image back.
      - When the files cannot be found on the host the module runs on (no such labels, a
        remote O(docker_host), a service built from source without C(image:)), a warning says
        that the file cannot follow, and the rollout goes on.
      - V(ignore) leaves the project's files alone (the next C(docker compose up -d) brings back
        what they say).
    type: str
    default: update
    choices: [update, ignore]
  timeout:
    description:
      - Seconds the upgrade may take to become ready and pass O(health_checks) (the platform's
        readiness plus the checks), not counting O(monitor).
    type: float
    default: 300
  monitor:
    description:
      - Seconds the new version must stay ready (and O(health_checks) passing) after it first
        passed, Docker Swarm's C(monitor). Failing inside this window rolls back. V(0) disables it.
    type: float
    default: 10
  rollback_timeout:
    description:
      - Seconds the restored version may take to pass the gate again (a separate budget).
    type: float
    default: 120
  fail_on_rollback:
    description:
      - Fail the task when the rollout was rolled back. The full result is returned either way.
    type: bool
    default: true
  pull:
    description:
      - Docker only. V(missing) pulls O(image) when it is not present, V(always) pulls it every
        time, V(never) uses local images only.
    type: str
    default: missing
    choices: [missing, always, never]
  stop_timeout:
    description:
      - Docker only. Seconds to wait for the old container to stop before it is killed.
    type: int
    default: 10
  log_lines:
    description:
      - How many of the last log lines of a failed container (or failing pod) to return.
    type: int
    default: 20
  namespace:
    description:
      - Kubernetes namespace of the Deployment.
    type: str
    default: default
  container:
    description:
      - Kubernetes only. The container of the pod template whose image changes. Needed when the
        pod has more than one container.
    type: str
  kubeconfig:
    description:
      - Kubernetes only. Path to the kubeconfig file; default E(KUBECONFIG), then C(~/.kube/config).
    type: path
  context:
    description:
      - Kubernetes only. The kubeconfig context to use; default the current context.
    type: str
  in_cluster:
    description:
      - Kubernetes only. Use the service account of the pod the module runs in.
    type: bool
    default: false
notes:
  - Docker containers keep their name and published host ports, so by default the old container
    is stopped before the new one starts (Swarm's C(stop-first)); O(order=start-first) serves
    without a gap behind a proxy. bench/RESULTS.md has the measured unavailability window of both
    (behind nginx with a request every 20 ms - stop-first failed 12-22 requests, start-first none).
  - The Kubernetes digest is read from the pods' C(imageID) after the rollout; it is null until a
    pod runs the image.
  - B(Interrupted runs.) SIGTERM (an Ansible or AWX timeout, a cancelled job) while a unit is
    switched or gated reverts it like a failed gate before the module exits (the outcome is
    V(rolled_back), the reason says SIGTERM).
  - While a Docker upgrade is being gated, the old container exists, stopped, as
    C(<name>_opskit_prev_<milliseconds>). If the run is killed there (SIGKILL, a lost
    controller), the next run on that container or Compose service puts it back before anything
    else - the unverified new container is removed, the old one renamed back and started - and
    reports it in RV(repaired) and as a warning. A run that is still alive on the same host is
    left alone (the task fails, saying so); runs on different hosts cannot see each other.
  - Lost Docker answers (a request that times out after O(docker_timeout)) while switching or
    reverting are one-line errors, and what ran before is still put back.
  - B(How long a broken upgrade costs.) A crash is found within about a second. A service that
    answers but fails its checks (HTTP 500, a wrong port) looks like one that is still starting
    until the check gives up, after C(retries) x C(interval) plus the attempts' own time (each
    at most the check's C(timeout)). The old version serves again about 1-2 s later. For the
    10 s target of bench/RESULTS.md keep that budget at 8 s or less (for example C(retries=7),
    C(interval=1), C(timeout=1)); a check of C(retries=40), C(interval=0.5) takes over 20 s.
  - A target that is not healthy when the upgrade starts is not recorded as last-known-good;
    the record it carries (if any) is kept instead.
requirements:
  - docker (the Docker SDK for Python) >= 7.0, for the Docker targets
  - kubernetes (the official Python client), for O(target=k8s_deployment)
seealso:
  - module: opskit.runbook.health_check
"""

EXAMPLES = r"""
- name: Upgrade the api container, gate on its HTTP health endpoint, roll back on failure
  opskit.runbook.rollout:
    target: docker_container
    name: api
    image: registry.example.com/api:2.4.1
    health_checks:
      - name: api
        type: http
        url: http://127.0.0.1:8080/health
        status_codes: [200]
        retries: 7        # fails after about 8 s: the old version serves again within 10 s
        interval: 1
        timeout: 1
    monitor: 15
  register: upgrade

- name: Upgrade every container of the worker service of the shop Compose project
  opskit.runbook.rollout:
    target: compose_service
    project: shop
    name: worker
    image: registry.example.com/worker:7.1

- name: Upgrade a Deployment's app container; keep going when it was rolled back
  opskit.runbook.rollout:
    target: k8s_deployment
    namespace: payments
    name: checkout
    container: app
    image: registry.example.com/checkout:3.2.0
    timeout: 600
    fail_on_rollback: false
  register: checkout

- name: Tell the on-call channel why it was rolled back
  ansible.builtin.debug:
    msg: "{{ checkout.reason }} (last log lines: {{ checkout.logs[-3:] }})"
  when: checkout.outcome == 'rolled_back'

- name: Upgrade the web service behind nginx without dropping a request, the compose file follows
  opskit.runbook.rollout:
    target: compose_service
    project: shop
    name: web
    image: registry.example.com/shop/web:1.5
    order: start-first
    proxy_checks:
      - name: nginx reaches the new version
        type: http
        url: http://127.0.0.1/health
        body_contains: "1.5"
        retries: 20
        interval: 0.25
    compose_file: update   # the default: the next docker compose up -d keeps 1.5

- name: Stop the writers of the shop database before a restore (refused if one cannot be)
  opskit.runbook.rollout:
    target: compose_service
    project: shop
    name: worker
    state: stopped

- name: Roll back by hand to the recorded last-known-good
  opskit.runbook.rollout:
    target: docker_container
    name: api
    state: rolled_back

- name: The runbook's "docker-compose restart", checked by the same gate
  opskit.runbook.rollout:
    target: compose_service
    project: discovery
    name: discovery-agent
    state: restarted
"""

RETURN = r"""
outcome:
  description:
    - V(deployed), V(rolled_back), V(rollback_failed), V(unchanged), V(restarted), V(stopped),
      V(started) or V(scaled).
    - For O(state=rolled_back) a successful restore is V(rolled_back); when the restored version
      fails the gate, what ran before is put back and the outcome is V(rollback_failed).
    - In check mode, the outcome the run would aim for.
  returned: always
  type: str
  sample: rolled_back
reason:
  description: In words, why the outcome is what it is.
  returned: always
  type: str
  sample: "container api: check api CRITICAL: HTTP 503 on 3 attempts"
target:
  description: What was acted on (the first container for a Compose service).
  returned: always
  type: dict
  sample: {"kind": "docker_container", "name": "api", "id": "4f1c2a9b7d3e"}
from:
  description: The image that ran before, with its resolved digest (the image id for local Docker images).
  returned: always
  type: dict
  sample: {"image": "registry.example.com/api:2.4.0", "digest": "sha256:4b6f..."}
to:
  description: The image applied (or that would be), with its digest (null when not known yet).
  returned: always
  type: dict
  sample: {"image": "registry.example.com/api:2.4.1", "digest": "sha256:9a0c..."}
units:
  description: One entry (target, from, to) per replaced container (several for a Compose service).
  returned: always
  type: list
  elements: dict
last_known_good:
  description: The last-known-good recorded with the target (image, digest, recorded_at), or null.
  returned: always
  type: dict
  sample: {"image": "registry.example.com/api:2.4.0", "digest": "sha256:4b6f...",
           "recorded_at": "2026-11-23T10:00:00Z"}
timings:
  description:
    - Seconds per phase. C(upgrade) is the switch plus the gate of the new version, made of
      C(ready) (until the platform reported ready), C(checks) (first run of O(health_checks)) and
      C(monitor); C(rollback) is the restore until it passed readiness and checks, and
      C(rollback_monitor) its monitor window; C(total) is the whole run.
  returned: always
  type: dict
  sample: {"upgrade": 3.41, "ready": 0.21, "checks": null, "monitor": null, "rollback": 1.12,
           "rollback_monitor": 10.0, "total": 14.6}
logs:
  description: The last O(log_lines) log lines of the failed container or pod.
  returned: always
  type: list
  elements: str
  sample: ["fatal: cannot read config /etc/app.conf"]
health:
  description: The last report of O(health_checks) (the report of M(opskit.runbook.health_check)).
  returned: when health_checks ran
  type: dict
repaired:
  description:
    - What this run put back, before anything else, of an earlier Docker run that was killed
      while it gated (the old container renamed back and started, the unverified one removed,
      leftover copies removed), in words; also emitted as warnings. In check mode, what it would do.
  returned: always
  type: list
  elements: str
  sample: ["container api: an interrupted rollout had left the old container parked as
            api_opskit_prev_1764581234567; renamed it back and started it and removed the unverified
            container 3f2a1b4c5d6e (registry.example.com/api:2.4.1)"]
order:
  description:
    - How the containers were replaced, V(stop-first) or V(start-first); for Kubernetes the
      Deployment's strategy, for example C(rolling (maxSurge 1, maxUnavailable 0)).
  returned: always
  type: str
  sample: start-first
order_notes:
  description: Why start-first was not possible for a container (it then stopped first), or what a Deployment's strategy allows.
  returned: when there is something to say
  type: list
  elements: str
  sample: ["start-first is impossible for container api: it publishes host port 8080 (8080/tcp); stopped it first"]
proxy:
  description: The report of O(proxy_checks) (start-first).
  returned: when proxy_checks ran
  type: dict
compose_file:
  description:
    - The edit of the Compose project (O(compose_file=update)) - C(path) (the compose file or the
      env file), C(from) (what it said), C(to) (the image it says now) and C(changed) - or absent
      when it already said the right image.
  returned: for target=compose_service when the project's file had to follow
  type: dict
  sample: {"path": "/srv/shop/.env", "from": "registry.example.com/web:1.4", "to": "registry.example.com/web:1.5",
           "changed": true}
replicas:
  description: For O(state=scaled), the number of containers or replicas before (C(from)) and asked for (C(to)).
  returned: when state=scaled
  type: dict
  sample: {"from": 1, "to": 3}
healthy:
  description: For O(state=restarted) and O(state=started), whether the target came back and passed the gate.
  returned: when state=restarted or state=started
  type: bool
"""

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._docker import docker_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import CHECK_ARGSPEC
from ansible_collections.opskit.runbook.plugins.module_utils._errors import OpsError
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import redact, url_secrets
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._rollout.action import run


def _checks(params):
    return [c for c in (params.get("health_checks") or []) + (params.get("proxy_checks") or []) if isinstance(c, dict)]


def _invocation(params):
    """``invocation.module_args`` with every check URL redacted (userinfo and query values), so a
    token too short to be a no_log value (url_secrets) stays out of the result as well."""
    args = dict(params)
    for key in ("health_checks", "proxy_checks"):
        if params.get(key):
            args[key] = [dict(c, url=redact(c["url"])) if isinstance(c, dict) and c.get("url") else c
                         for c in params[key]]
    return {"module_args": args}


def main():
    module = AnsibleModule(
        argument_spec=docker_argspec(
            target=dict(type="str", required=True, choices=["docker_container", "compose_service", "k8s_deployment"]),
            name=dict(type="str", required=True),
            project=dict(type="str"),
            image=dict(type="str"),
            state=dict(type="str", default="deployed",
                       choices=["deployed", "rolled_back", "restarted", "stopped", "started", "scaled"]),
            replicas=dict(type="int"),
            health_checks=dict(type="list", elements="dict", options=copy.deepcopy(CHECK_ARGSPEC)),  # password and headers are no_log there
            proxy_checks=dict(type="list", elements="dict", options=copy.deepcopy(CHECK_ARGSPEC)),
            order=dict(type="str", default="stop-first", choices=["stop-first", "start-first"]),
            compose_file=dict(type="str", default="update", choices=["update", "ignore"]),
            timeout=dict(type="float", default=300.0),
            monitor=dict(type="float", default=10.0),
            rollback_timeout=dict(type="float", default=120.0),
            fail_on_rollback=dict(type="bool", default=True),
            pull=dict(type="str", default="missing", choices=["missing", "always", "never"]),
            stop_timeout=dict(type="int", default=10),
            log_lines=dict(type="int", default=20),
            namespace=dict(type="str", default="default"),
            container=dict(type="str"),
            kubeconfig=dict(type="path"),
            context=dict(type="str"),
            in_cluster=dict(type="bool", default=False),
        ),
        required_if=[("state", "deployed", ("image",)), ("target", "compose_service", ("project",))],
        supports_check_mode=True,
    )
    for check in _checks(module.params):  # URL userinfo and token query values: masked in the result
        module.no_log_values.update(url_secrets(check.get("url")))
    invocation = _invocation(module.params)

    def action():
        try:
            result = run(module.params, module.check_mode)
        except OpsError as exc:
            exc.result["invocation"] = invocation
            raise
        result["invocation"] = invocation
        return result

    run_module(module, action)


if __name__ == "__main__":
    main()
