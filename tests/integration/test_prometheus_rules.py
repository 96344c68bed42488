# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Prometheus alert rules shipped in roles/report/files/prometheus (issue 15, item 2):
promtool checks and unit-tests them here. check_rules_against_exported() checks them against
the metric files of a real run (backup, health and report roles): every metric and label the
rules use exists there, and the rules fire on those very series. It runs on the metrics of the
daily.yml run of test_alerts.py (one real daily run checks the alerts and the rules)."""

from __future__ import annotations

from alert_fixtures import promtool


def test_promtool_checks_and_unit_tests_the_rules():
    checked = promtool("check", "rules", "opskit-alerts.rules.yml")
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "opskit-alerts.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
