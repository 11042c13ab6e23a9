"""The cause of an end, crash-loop episodes and the diagnosis line, row by row (``core/forensics.py``)."""

from __future__ import annotations

import pytest

from mcp_supervisor.core import Cause, Certainty, ExitReason, ExitRecord
from mcp_supervisor.core.forensics import LOOP_COUNT, CrashLoops, OomEvidence, classify, diagnose, line_key

SIGKILL = ExitReason("abnormal", "killed by SIGKILL", signal="SIGKILL")
OWN_OOM = OomEvidence(kills=1, own_cgroup=True)
SHARED_OOM = OomEvidence(kills=1, own_cgroup=False)
NEAR = OomEvidence(near_limit=True)

# ready, reason, oom evidence -> cause, certainty
ROWS: list[tuple[bool, ExitReason, OomEvidence | None, Cause, Certainty | None]] = [
    (True, ExitReason("shutdown", "stopped by SIGTERM", signal="SIGTERM"), None, Cause.STOPPED, None),
    (False, ExitReason("shutdown"), None, Cause.STOPPED, None),  # stopped while it started
    (True, ExitReason("abnormal", "max_memory: ...", ended_by="max_memory"), None, Cause.LIMIT, Certainty.CERTAIN),
    (True, ExitReason("abnormal", "liveness: ...", ended_by="liveness"), None, Cause.LIVENESS, Certainty.CERTAIN),
    (True, SIGKILL, OWN_OOM, Cause.OOM_KILL, Certainty.CERTAIN),
    (True, SIGKILL, SHARED_OOM, Cause.OOM_KILL, Certainty.LIKELY),
    (True, SIGKILL, NEAR, Cause.OOM_KILL, Certainty.POSSIBLE),
    (False, SIGKILL, OWN_OOM, Cause.OOM_KILL, Certainty.CERTAIN),  # killed while it started: OOM says more
    (True, SIGKILL, OomEvidence(), Cause.KILLED, None),  # no evidence: someone's kill -9
    (True, SIGKILL, None, Cause.KILLED, None),  # an in-process worker has no cgroup
    (True, ExitReason("abnormal", "killed by SIGTERM", signal="SIGTERM"), OWN_OOM, Cause.KILLED, None),
    (True, ExitReason("abnormal", "killed by SIGXCPU", signal="SIGXCPU"), None, Cause.LIMIT, Certainty.CERTAIN),
    (
        True,
        ExitReason("abnormal", "killed by SIGSEGV (core dumped)", signal="SIGSEGV", core_dumped=True),
        None,
        Cause.CRASH,
        None,
    ),
    (True, ExitReason("abnormal", "killed by SIGABRT", signal="SIGABRT"), None, Cause.CRASH, None),
    (True, ExitReason("abnormal", "exit code 1", code=1), None, Cause.CRASH, None),
    (True, ExitReason("abnormal", "RuntimeError: boom"), None, Cause.CRASH, None),
    (False, ExitReason("abnormal", "exit code 1", code=1), None, Cause.START_FAILURE, None),
    (False, ExitReason("abnormal", "not ready within its start timeout of 1s"), None, Cause.START_FAILURE, None),
    (False, ExitReason("abnormal", "killed by SIGTERM", signal="SIGTERM"), None, Cause.START_FAILURE, None),
    (True, ExitReason("normal", code=0), None, Cause.EXITED, None),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[3]}-{r[1].detail or r[1].kind}" for r in ROWS])
def test_classify(row: tuple[bool, ExitReason, OomEvidence | None, Cause, Certainty | None]) -> None:
    ready, reason, oom, cause, certainty = row
    assert classify(ready, reason, oom) == (cause, certainty)


def record(at: float, cause: Cause = Cause.CRASH, line: str = "Error: connection refused to 10.0.0.7:5432",
           detail: str = "exit code 1", peak: int | None = None) -> ExitRecord:  # fmt: skip
    return ExitRecord(pid=100 + int(at), started_at=at - 1, ready_at=at - 0.5, ended_at=at,
                      reason=ExitReason("abnormal", detail), cause=cause, last_lines=(line,) if line else (),
                      peak_rss_bytes=peak)  # fmt: skip


def test_similar_failures_within_the_period_make_one_episode_until_it_stays_up() -> None:
    loops = CrashLoops()
    assert loops.ended(record(0.0), period=10) is None
    assert loops.ended(record(1.0, line="Error: connection refused to 10.0.0.9:5433"), period=10) is None
    episode = loops.ended(record(2.0), period=10)  # the third similar one (numbers and addresses do not count)
    assert episode is not None and episode.count == LOOP_COUNT and episode.since == 0.0
    assert episode.cause is Cause.CRASH and episode.line.startswith("Error: connection refused")
    assert loops.ended(record(3.0), period=10) is None  # the same episode goes on: no second start
    assert loops.episode is not None and loops.episode.count == 4
    ended = loops.stayed_up()
    assert ended is not None and ended.count == 4 and loops.episode is None
    assert loops.stayed_up() is None
    assert loops.ended(record(20.0), period=10) is None  # a new count starts from nothing


@pytest.mark.parametrize(
    "ends",
    [
        [record(0.0), record(5.0), record(11.0)],  # not within one period of 10 s
        [record(0.0), record(1.0, line="Error: disk full"), record(2.0)],  # not similar lines
        [record(0.0), record(1.0, cause=Cause.KILLED), record(2.0)],  # not the same cause
        [record(0.0), record(1.0, cause=Cause.STOPPED), record(2.0)],  # stops do not count
    ],
)
def test_what_is_not_a_crash_loop(ends: list[ExitRecord]) -> None:
    loops = CrashLoops()
    assert [loops.ended(r, period=10) for r in ends] == [None, None, None]


def test_line_keys_ignore_what_varies() -> None:
    assert line_key("pid 1234 at 0x7fff12 req 9f86d081884c7d65") == line_key("pid 99 at 0xdead req 0123456789abcdef")
    assert line_key("Error: a") != line_key("Error: b")


def test_diagnosis_lines() -> None:
    gib = 2**30
    ooms = [record(t, Cause.OOM_KILL, "allocating", "killed by SIGKILL", peak=int(1.9 * gib)) for t in (0, 60, 300)]
    line = diagnose(ooms, None, None, now=600)
    assert line == "oom-kill 3 times in 10 min; peak RSS 1.9 GiB; max_memory is not set; last line: allocating"
    guessed = [ExitRecord(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "certainty": Certainty.POSSIBLE})
               for r in ooms]  # fmt: skip
    assert "possible: a SIGKILL nobody here sent" in diagnose(guessed, None, 2 * gib, now=600)
    assert "max_memory is 2.0 GiB" in diagnose(guessed, None, 2 * gib, now=600)
    crashes = [record(t) for t in (0, 1, 2)]
    loops = CrashLoops()
    episode = [loops.ended(r, 10) for r in crashes][-1]
    line = diagnose(crashes, episode, None, now=3)
    assert line.startswith("crash-looping (3 similar failures): crash 3 times in 3 s; exit code 1; last line: Error")
    assert diagnose([], None, None, 0) == "no failures recorded"
    stopped = [record(1, Cause.STOPPED, "")]
    assert diagnose(stopped, None, None, 2) == "no failures recorded (1 stops or normal exits)"
