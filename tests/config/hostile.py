"""Hypothesis strategies for hostile configs: the documented keys of the tree and of every built-in worker, with
values TOML allows but our settings cannot hold (inf, nan, -0, 2**70, huge strings, unicode ids, deep tables,
``${VAR}`` edge cases) and a planted secret that must never be echoed."""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from mcp_supervisor.config.settings import is_secret_key
from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS

SECRET = "S3cr3t-Planted-C0FFEE-42"
ENV = {"SET": "5", "EMPTY": "", "SECRET_VAR": SECRET, "HOME": "/root"}

WORKER_KEYS: dict[str, list[str]] = {
    name: sorted(importlib.import_module(target.partition(":")[0]).SETTINGS_KEYS)
    for name, target in BUILTIN_WORKERS.items()
}
FLAG_KEYS = ["strategy", "intensity", "period", "auto_shutdown"]
COMMON_KEYS = ["restart", "shutdown", "significant", "backoff"]
DAEMON_KEYS = ["admin", "admin_token_file", "allow_remote_admin", "log_format", "log_level"]


@dataclass(frozen=True)
class Deep:
    """An inline table nested ``depth`` levels: ``{ a = { a = ... 1 } }``."""

    depth: int


EDGE_TEXT = [
    "", " ", "${UNSET}", "${", "${}", "${SET", "${SET:-}", "${EMPTY:-7}", "$${SET}", "${1A}", "${A-B}",
    "${SET:-${SET}}", "$", "$$", "x${SET}y", "\x00", "\u202e", "é", "日本", "🙂", "a/b", " id ",
    "\n", "a\tb", "/dev/zero", "/proc/self/mem", "/nonexistent/file", "127.0.0.1:0", "127.0.0.1:65536",
    "[::1]:80", "unix:relative", "unix:/" + "p" * 200, "0.0.0.0:1", "redis://:pw@h/0", "http://x",
]  # fmt: skip
EDGE_NUMBERS = [
    math.inf, -math.inf, math.nan, -0.0, 0, 1, -1, 2**63, 2**70, -(2**70), 1e308, 5e-324, 0.5, 1.5, 65535, 65536,
    70000, True, False,
]  # fmt: skip

scalars: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.sampled_from(EDGE_TEXT),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=20),
    st.just("x" * 70_000),
)
# the planted secret goes where the config says a secret lives: keys that name one, and child env values
secrets: st.SearchStrategy[Any] = st.one_of(
    st.just(SECRET), st.just("${SECRET_VAR}"), st.just(f"redis://u:{SECRET}@h/0")
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=6,
)
anything: st.SearchStrategy[Any] = st.one_of(values, values, values, st.integers(1, 3000).map(Deep))
ids = st.one_of(st.sampled_from(["a", "b", "c"]), st.sampled_from(EDGE_TEXT), st.text(max_size=12), scalars)


@st.composite
def _table(draw: st.DrawFn, keys: list[str]) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from([*keys, "bogus"]), max_size=4, unique=True))
    return {k: draw(st.one_of(secrets, anything) if is_secret_key(k) else anything) for k in names}


@st.composite
def worker(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from([*sorted(WORKER_KEYS), "nope", "json:loads", "math:pi", "tests.nowhere:f"]))
    child: dict[str, Any] = {"id": draw(ids), "worker": name}
    child["config"] = draw(st.one_of(_table(WORKER_KEYS.get(name, ["x"])), anything))
    child.update(draw(_table([*COMMON_KEYS, "start_timeout"])))
    return child


@st.composite
def process(draw: st.DrawFn) -> dict[str, Any]:
    child: dict[str, Any] = {"id": draw(ids), "command": draw(st.one_of(st.lists(scalars, max_size=3), anything))}
    child["env"] = draw(
        st.one_of(
            st.dictionaries(st.sampled_from(["API_KEY", "RETRIES", "", "A=B", "é"]), scalars, max_size=3), anything
        )
    )
    ready = st.dictionaries(st.sampled_from(["tcp", "command", "timeout", "interval", "bogus"]), anything, max_size=3)
    child.update(draw(_table([*COMMON_KEYS, "cwd", "inherit_env", "instances", "reload", "user", "group", "umask",
                              "stop_signal", "max_memory", "memory_check", "sockets"])))  # fmt: skip
    if draw(st.booleans()):
        child["ready"] = draw(st.one_of(ready, anything))
    if draw(st.booleans()):
        live = st.dictionaries(st.sampled_from(["http", "tcp", "command", "every", "timeout", "failures", "bogus"]),
                               anything, max_size=3)  # fmt: skip
        child["live"] = draw(st.one_of(live, anything))
    if draw(st.booleans()):
        limits = st.dictionaries(st.sampled_from(["nofile", "memory", "core", "cpu_seconds", "bogus"]), anything,
                                 max_size=3)  # fmt: skip
        child["limits"] = draw(st.one_of(limits, anything))
    return child


def supervisor(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    kid = st.one_of(worker(), process()) if depth <= 0 else st.one_of(worker(), process(), supervisor(depth - 1))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        child: dict[str, Any] = {"id": draw(ids), "children": draw(st.lists(kid, max_size=2))}
        child.update(draw(_table([*FLAG_KEYS, *COMMON_KEYS])))
        return child

    return build()


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["daemon"] = draw(_table(DAEMON_KEYS))
        if draw(st.booleans()):
            socket = st.dictionaries(st.sampled_from(["name", "listen", "backlog", "mode", "bogus"]), anything,
                                     max_size=4)  # fmt: skip
            doc["daemon"]["sockets"] = draw(st.one_of(st.lists(socket, max_size=2), anything))
    tree: dict[str, Any] = draw(_table([*FLAG_KEYS, "id"]))
    tree["children"] = draw(st.lists(st.one_of(worker(), process(), supervisor(1)), max_size=3))
    doc["tree"] = tree
    return doc


# -- TOML rendering ----------------------------------------------------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key(k: str) -> str:
    return k if _BARE.fullmatch(k) else string(k)


_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def string(s: str) -> str:
    return '"' + _ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", s) + '"'


def value(v: Any) -> str:
    if isinstance(v, Deep):
        return "{ a = " * v.depth + "1" + " }" * v.depth
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return string(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def render(doc: dict[str, Any]) -> str:
    """The document as TOML: ``[daemon]``, ``[tree]``, then one ``[[tree.children]]`` block per child."""
    lines: list[str] = []
    if "daemon" in doc:
        lines.append("[daemon]")
        lines += [f"{key(k)} = {value(v)}" for k, v in doc["daemon"].items()]
    tree = dict(doc["tree"])
    children = tree.pop("children", [])
    lines.append("[tree]")
    lines += [f"{key(k)} = {value(v)}" for k, v in tree.items()]
    for child in children:
        lines.append("[[tree.children]]")
        lines += [f"{key(k)} = {value(v)}" for k, v in child.items()]
    return "\n".join(lines) + "\n"
