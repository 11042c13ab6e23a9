"""The benchmark scripts keep working as the code changes: each runs in a few-iterations smoke mode (figures are
not asserted here; they are printed by the scripts themselves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[1]


def test_the_core_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/core.py"), "--smoke", "--json"], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inproc_restart_latency_median[asyncio]" in done.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_at_least_imports_and_shows_its_help(script: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage" in done.stdout


def test_the_streams_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/streams.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restart_latency_median_32_streams" in done.stdout


def test_the_otp_benchmark_runs_when_erlang_is_installed() -> None:
    import shutil

    if shutil.which("erlc") is None:
        pytest.skip("Erlang/OTP is not installed")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/vs_otp.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"name": "restart_rare_median"' in done.stdout


def test_the_rolling_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/rolling.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"errors_rolling": 0' in done.stdout
