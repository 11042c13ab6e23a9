"""The Prometheus alerting rules docs/fleet.md offers are valid and fire when they should: ``promtool check rules``
and ``promtool test rules`` (Prometheus' own tool, installed by scripts/bootstrap.sh) on series shaped like the ones
every node exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "docs" / "fleet-alerts.rules.yml"

TESTS = """
rule_files: [{rules}]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      # node a held it, then lost it at 10 s; node b never held it; node c took it at 60 s
      - series: 'mcp_singleton_holders{{path="writer",instance="a"}}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'mcp_singleton_holders{{path="writer",instance="b"}}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0 1 1 1 1 2 2'
      - series: 'mcp_lease_renew_failures_total{{instance="a"}}'
        values: '0+1x17'
    alert_rule_test:
      - eval_time: 20s
        alertname: SingletonUnheld
        exp_alerts: []
      - eval_time: 30s
        alertname: SingletonUnheld
        exp_alerts:
          - exp_labels: {{severity: critical, path: writer}}
            exp_annotations:
              summary: "singleton writer runs on no node"
              description: "No live node has held writer for longer than the failover bound: see `mcp-supervisor ctl cluster status`."
      - eval_time: 65s
        alertname: SingletonUnheld
        exp_alerts: []
      - eval_time: 65s
        alertname: SingletonOverlap
        exp_alerts: []
      - eval_time: 80s
        alertname: SingletonOverlap
        exp_alerts:
          - exp_labels: {{severity: critical, path: writer}}
            exp_annotations:
              summary: "singleton writer runs on 2 nodes"
              description: "More than one live node says it holds writer: its fencing token is what protects your data now."
      - eval_time: 80s
        alertname: LeaseRenewalsFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a}}
            exp_annotations:
              summary: "a fails to renew its leases"
              description: "16 failed heartbeats or renewals in 5 minutes: the node's link to the cluster database is unreliable."
"""


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (scripts/bootstrap.sh installs Debian's prometheus)")
    return found


def test_the_rules_are_valid(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def test_the_rules_fire_on_no_holder_two_holders_and_failing_renewals(promtool: str, tmp_path: Path) -> None:
    spec = tmp_path / "fleet.test.yml"
    spec.write_text(TESTS.format(rules=RULES))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
