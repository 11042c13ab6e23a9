"""What a user installs with pip (no uv): the base install is the supervisor alone, and it works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_LIBRARIES = {"asyncpg", "redis", "aiobotocore", "botocore", "moto"}

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(300)]  # pip builds and installs


def test_a_base_pip_install_is_the_supervisor_alone(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # a non-editable install from the source tree, as `pip install .` (or from the registry) does
    done = subprocess.run([*pip, "install", "-q", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True, timeout=60, check=True)
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.split()}
    print(f"base install: {len(installed)} packages: {sorted(installed)}")
    assert installed & SERVICE_LIBRARIES == set()
    assert {"mcp-supervisor-otp", "aiohttp", "structlog", "prometheus-client", "uvloop"} <= installed
    exe = venv / "bin" / "mcp-supervisor"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "0." in version.stdout, version
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tree]\n[[tree.children]]\nid = "sleeper"\ncommand = ["sleep", "60"]\n')
    ok = subprocess.run([str(exe), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    cfg.write_text('[tree]\n[[tree.children]]\nid = "db"\nworker = "postgres"\n')
    missing = subprocess.run([str(exe), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 78
    assert "pip install 'mcp-supervisor-otp[postgres]'" in missing.stderr
