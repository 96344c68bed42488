# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's ``tls`` type through ansible-playbook.

Targets: TLS servers with chains generated here (root -> intermediate -> leaf): a good one whose
intermediate expires before its leaf, one whose intermediate expired, one whose leaf names another
host; an SMTP server with STARTTLS (aiosmtpd); IMAP servers (RFC 3501, written in the test)
with STARTTLS and refusing it; the harness's PostgreSQL with ssl=on (STARTTLS
through the SSLRequest of its protocol).
"""

from __future__ import annotations

from health_fixtures import PLAY_HEADER as HEADER, assert_no_crash, closed_port, expecter
from health_fixtures import pg_ssl, tls_targets  # noqa: F401  pylint: disable=unused-import


def test_tls_chains_starttls_and_names(run_playbook, tls_targets, pg_ssl):  # noqa: F811
    t = tls_targets
    play = HEADER + """
    - name: tls
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: good_warn, type: tls, host: 127.0.0.1, port: "{{ good }}", ca_path: "{{ good_ca }}",
             warning: "45:", critical: "7:"}
          - {name: good_ok, type: tls, host: localhost, port: "{{ good }}", ca_path: "{{ good_ca }}",
             warning: "30:", critical: "7:", thresholds: {leaf_days: {warning: "80:"}}}
          - {name: expired_intermediate, type: tls, host: 127.0.0.1, port: "{{ expired }}", ca_path: "{{ expired_ca }}",
             critical: "7:"}
          - {name: wrong_name, type: tls, host: 127.0.0.1, port: "{{ wrong }}", ca_path: "{{ wrong_ca }}"}
          - {name: right_sni, type: tls, host: 127.0.0.1, port: "{{ wrong }}", ca_path: "{{ wrong_ca }}",
             server_name: wrong.example}
          - {name: untrusted, type: tls, host: 127.0.0.1, port: "{{ good }}"}
          - {name: not_verified, type: tls, host: 127.0.0.1, port: "{{ expired }}", validate_certs: false, warning: "0:"}
          - {name: smtp, type: tls, host: 127.0.0.1, port: "{{ smtp }}", starttls: smtp, ca_path: "{{ good_ca }}",
             critical: "7:"}
          - {name: imap, type: tls, host: localhost, port: "{{ imap }}", starttls: imap, ca_path: "{{ good_ca }}",
             warning: "45:", critical: "7:"}
          - {name: imap_refused, type: tls, host: 127.0.0.1, port: "{{ imap_plain }}", starttls: imap, ca_path: "{{ good_ca }}"}
          - {name: imap_as_smtp, type: tls, host: 127.0.0.1, port: "{{ imap }}", starttls: smtp, ca_path: "{{ good_ca }}", timeout: 3}
          - {name: smtp_direct, type: tls, host: 127.0.0.1, port: "{{ smtp }}", ca_path: "{{ good_ca }}", timeout: 3}
          - {name: postgres, type: tls, host: 127.0.0.1, port: "{{ pg_port }}", starttls: postgres, ca_path: "{{ good_ca }}",
             critical: "7:"}
          - {name: not_postgres, type: tls, host: 127.0.0.1, port: "{{ smtp }}", starttls: postgres}
          - {name: protocol, type: tls, host: 127.0.0.1, port: "{{ good }}", ca_path: "{{ good_ca }}", protocols: [TLSv1.2]}
          - {name: refused, type: tls, host: 127.0.0.1, port: "{{ closed }}"}
      register: report
"""
    run = run_playbook(play, extra_vars={
        "good": t.good_port, "good_ca": t.good_ca, "expired": t.expired_port, "expired_ca": t.expired_ca,
        "wrong": t.wrong_port, "wrong_ca": t.wrong_ca, "smtp": t.smtp_port,
        "imap": t.imap_port, "imap_plain": t.imap_plain_port, "pg_port": pg_ssl.port,
        "closed": closed_port()})
    assert_no_crash(run)
    expect = expecter(run.task("tls")["checks"])

    warn = expect("good_warn", "WARNING", "2 certificate(s)", "days left (chain[1])", "days_left (", "< 45 (warning)")
    m = warn["measures"]
    assert 39 < m["days_left"] <= 40 and 89 < m["leaf_days"] <= 90 and m["chain_certs"] == 2      # the intermediate counts
    assert m["verified"] == 1 and m["hostname_ok"] == 1 and m["tls_ms"] > 0
    assert warn["details"]["protocol"] in ("TLSv1.2", "TLSv1.3") and warn["details"]["cipher"]
    assert [c["subject"] for c in warn["details"]["certificates"]] == ["CN=opskit leaf good", "CN=opskit intermediate good"]
    expect("good_ok", "OK")
    expired = expect("expired_intermediate", "CRITICAL", "certificate verification failed: certificate has expired",
                     "days_left (", "< 7 (critical)")
    assert -4 < expired["measures"]["days_left"] <= -3 and expired["measures"]["leaf_days"] > 89
    assert expired["measures"]["verified"] == 0
    wrong = expect("wrong_name", "CRITICAL", "certificate is not valid for 127.0.0.1 (it names wrong.example)")
    assert wrong["measures"]["verified"] == 1 and wrong["measures"]["hostname_ok"] == 0
    assert "verification failed" not in wrong["message"]
    expect("right_sni", "OK")
    expect("untrusted", "CRITICAL", "certificate verification failed: unable to get local issuer certificate")
    loose = expect("not_verified", "WARNING", "days_left (")
    assert "verified" not in loose["measures"] and loose["measures"]["days_left"] < 0
    smtp = expect("smtp", "OK", "days left")
    assert smtp["measures"]["chain_certs"] == 2
    expect("smtp_direct", "CRITICAL")
    imap = expect("imap", "WARNING", "days left (chain[1])", "< 45 (warning)")   # RFC 3501 STARTTLS, then the chain
    assert imap["measures"]["chain_certs"] == 2 and imap["measures"]["verified"] == 1 and imap["measures"]["hostname_ok"] == 1
    assert 39 < imap["measures"]["days_left"] <= 40 and t.imap.starttls_seen == ["a1"]
    refused = expect("imap_refused", "CRITICAL", "STARTTLS refused by the IMAP server: 'a1 NO STARTTLS is not available'")
    assert "days_left" not in refused["measures"]
    expect("imap_as_smtp", "CRITICAL", "STARTTLS refused")
    pgc = expect("postgres", "OK", "days left")
    assert pgc["measures"]["verified"] == 1 and pgc["measures"]["hostname_ok"] == 1
    expect("not_postgres", "CRITICAL", "PostgreSQL refused SSL (answered b'2' to SSLRequest")
    expect("protocol", "CRITICAL", "is not one of TLSv1.2")
    expect("refused", "CRITICAL", "refused")
