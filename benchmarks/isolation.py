"""What ``isolation = "process"`` costs at a restart: an isolated subtree of one worker restarted by the operator
(``POST /children/iso/restart``, which answers once the new process is ready), next to the same worker restarted
in-process (``POST /children/inproc/w/restart``), and to a fresh interpreter importing what the isolated process
imports (``python -c "import mcp_supervisor.daemon.isolated"``) — the floor an isolated restart cannot go below
without a fork server.

    python benchmarks/isolation.py [--json] [--quick] [--restarts N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import print_rows
from mcp_supervisor.testing.daemon import Daemon

WORKER = """
import asyncio

def steady(config):
    async def run(ctx):
        ctx.started()
        await asyncio.Event().wait()
    return run
"""

TREE = """
[tree]
intensity = 1000
[[tree.children]]
id = "inproc"
[[tree.children.children]]
id = "w"
worker = "benchworker:steady"
[[tree.children]]
id = "iso"
isolation = "process"
shutdown = 5
[[tree.children.children]]
id = "w"
worker = "benchworker:steady"
"""


def timed_restarts(d: Daemon, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, body, _ = d.request("POST", f"/children/{path}/restart")
        out.append(time.perf_counter() - t0)
        assert code == 200, body
    return out


def fresh_imports(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mcp_supervisor.daemon.isolated"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 restarts of each")
    ap.add_argument("--restarts", type=int, default=20)
    args = ap.parse_args()
    n = 3 if args.quick else args.restarts
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        (where / "benchworker.py").write_text(WORKER)
        d = Daemon(where, TREE, env={"PYTHONPATH": os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])})
        try:
            d.wait_ready()
            inproc = statistics.median(timed_restarts(d, "inproc/w", n))
            iso = statistics.median(timed_restarts(d, "iso", n))
        finally:
            d.stop()
    fresh = statistics.median(fresh_imports(n))
    rows = [
        {"name": "restart_in_process_worker_median", "value": round(inproc * 1000, 2), "unit": "ms"},
        {"name": "restart_isolated_subtree_median", "value": round(iso * 1000, 2), "unit": "ms",
         "ratio": round(iso / inproc, 1)},
        {"name": "fresh_interpreter_with_its_imports_median", "value": round(fresh * 1000, 2), "unit": "ms",
         "ratio": round(fresh / inproc, 1)},
    ]  # fmt: skip
    print_rows(rows, args.json, "the in-process restart")


if __name__ == "__main__":
    main()
