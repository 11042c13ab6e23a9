"""The benchmark scripts keep working as the code changes: each runs in a few-iterations smoke mode (figures are
not asserted here; they are printed by the scripts themselves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: float = 300) -> str:
    """The script's output in its shortest mode; it must exit 0."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("script", "mode", "expected"),
    [
        ("core.py", "--smoke", "inproc_restart_latency_median[asyncio]"),
        ("streams.py", "--quick", "restart_latency_median_32_streams"),
        ("rolling.py", "--quick", '"errors_rolling": 0'),
        ("alerts.py", "--quick", "alert_per_restart_dead_receivers"),
        ("isolation.py", "--quick", "crash_to_ready_isolated_subtree_forked_median"),
    ],
)
def test_the_benchmark_runs(script: str, mode: str, expected: str) -> None:
    assert expected in run(script, mode, "--json")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_at_least_imports_and_shows_its_help(script: str) -> None:
    assert "usage" in run(script, "--help", timeout=120)


def test_the_otp_benchmark_runs_when_erlang_is_installed() -> None:
    import shutil

    if shutil.which("erlc") is None:
        pytest.skip("Erlang/OTP is not installed")
    assert '"name": "restart_rare_median"' in run("vs_otp.py", "--quick", "--json")
