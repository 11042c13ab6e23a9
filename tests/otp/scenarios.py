"""Random supervision scenarios for the differential test: a tree and a script of actions, as data.

A tree mixes every strategy, restart type, significant children with ``auto_shutdown``, nested and
``simple_one_for_one`` supervisors; an intensity of 0..3 in a period long enough that time never matters. Actions:
crash a worker (normal, shutdown, abnormal), make its next starts fail, and every runtime operation. The same data
is written as Erlang terms for ``otp_diff.erl`` and run on our core by ``core_side.py``.

Operations are generated only where both sides can express them: dynamic children are terminated by name (OTP
takes their pid, we take their id), and ``start_child`` gets a spec on static supervisors, arguments on dynamic
ones (OTP would crash the supervisor on the other combinations).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

PERIOD = 3600
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one")
RESTARTS = ("permanent", "transient", "temporary")


@dataclass(frozen=True)
class Atom:
    name: str


def worker(cid: str, restart: str, significant: bool = False) -> dict[str, Any]:
    return {"kind": "worker", "id": cid, "restart": restart, "significant": significant}


def sup(  # noqa: PLR0917
    cid: str, strategy: str, intensity: int, auto_shutdown: str, children: list[dict[str, Any]],
    restart: str = "permanent", significant: bool = False,
) -> dict[str, Any]:  # fmt: skip
    return {"kind": "sup", "id": cid, "restart": restart, "significant": significant, "children": children,
            "flags": {"strategy": strategy, "intensity": intensity, "period": PERIOD, "auto_shutdown": auto_shutdown}}  # fmt: skip


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.workers: list[str] = []  # static worker paths
        self.statics: list[tuple[str, list[str]]] = []  # static supervisor paths and their child ids
        self.dynamics: list[str] = []  # simple_one_for_one supervisor paths

    def tree(self, depth: int = 0, path: str = "", cid: str = "root", parent_auto: str = "never") -> dict[str, Any]:
        r = self.rng
        strategy = r.choice(STRATEGIES) if depth > 0 else r.choice(STRATEGIES[:3])
        auto = r.choice(("never", "never", "any_significant", "all_significant"))
        intensity = r.choice((0, 1, 1, 2, 3, 3))
        restart = r.choice(RESTARTS) if depth > 0 else "permanent"
        significant = restart != "permanent" and parent_auto != "never" and r.random() < 0.3
        if strategy == "simple_one_for_one":
            self.dynamics.append(path)
            tpl_restart = r.choice(RESTARTS)
            tpl = worker("tpl", tpl_restart, tpl_restart != "permanent" and auto != "never" and r.random() < 0.4)
            return sup(cid, strategy, intensity, auto, [tpl], restart, significant)
        children: list[dict[str, Any]] = []
        ids = [f"{chr(ord('a') + i)}{depth}" for i in range(r.randint(1, 4))]
        for i, child_id in enumerate(ids):
            child_path = f"{path}/{child_id}" if path else child_id
            if depth < 2 and i > 0 and r.random() < 0.3:
                children.append(self.tree(depth + 1, child_path, child_id, auto))
                continue
            c_restart = r.choice(RESTARTS)
            c_sig = c_restart != "permanent" and auto != "never" and r.random() < 0.4
            children.append(worker(child_id, c_restart, c_sig))
            self.workers.append(child_path)
        self.statics.append((path, ids))
        return sup(cid, strategy, intensity, auto, children, restart, significant)

    def actions(self, n: int) -> list[tuple[Any, ...]]:
        r = self.rng
        out: list[tuple[Any, ...]] = []
        names = ["j0"]  # dynamic children get fresh names; the others refer to names started before (or j0: none)
        for _ in range(n):
            kind = r.choices(
                ["crash", "fail_starts", "terminate_child", "restart_child", "delete_child", "start_child",
                 "start_dynamic", "terminate_dynamic", "count_children"],
                weights=[10, 3, 3, 3, 2, 2, 3, 2, 1],
            )[0]  # fmt: skip
            dyn_workers = [f"{d}/{n}" if d else n for d in self.dynamics for n in names]
            if kind == "crash" and (self.workers or dyn_workers):
                path = r.choice(self.workers + dyn_workers)
                out.append(("crash", path, Atom(r.choice(("abnormal", "abnormal", "normal", "shutdown")))))
            elif kind == "fail_starts" and (self.workers or dyn_workers):
                out.append(("fail_starts", r.choice(self.workers + dyn_workers), r.randint(1, 3)))
            elif kind in ("terminate_child", "restart_child", "delete_child"):
                sup_path, ids = r.choice(self.statics)
                out.append((kind, sup_path, r.choice([*ids, "zz"])))
            elif kind == "start_child":
                sup_path, ids = r.choice(self.statics)
                c_restart = r.choice(RESTARTS)
                out.append((kind, sup_path, worker(r.choice([*ids, "n1", "n2"]), c_restart)))
            elif kind == "start_dynamic" and self.dynamics:
                names.append(f"j{len(names)}")
                out.append((kind, r.choice(self.dynamics), names[-1]))
            elif kind == "terminate_dynamic" and self.dynamics:
                out.append((kind, r.choice(self.dynamics), r.choice(names)))
            elif kind == "count_children":
                out.append((kind, r.choice([s for s, _ in self.statics] + self.dynamics)))
        return out


def scenario(seed: int) -> dict[str, Any]:
    g = Generator(seed)
    tree = g.tree()
    fail = {}
    if g.workers and g.rng.random() < 0.1:
        fail[g.rng.choice(g.workers)] = g.rng.randint(1, 2)
    return {"n": seed, "tree": tree, "fail_initially": fail, "actions": g.actions(g.rng.randint(3, 12))}


# -- Erlang terms -------------------------------------------------------------------------------------------------
def erl(v: Any) -> str:
    if isinstance(v, Atom):
        return v.name
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '<<"' + v.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(v, tuple):
        return "{" + ", ".join(erl(x) for x in v) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(erl(x) for x in v) + "]"
    raise TypeError(type(v))


def erl_node(node: dict[str, Any]) -> tuple[Any, ...]:
    if node["kind"] == "worker":
        return (Atom("worker"), node["id"], Atom(node["restart"]), node["significant"])
    f = node["flags"]
    flags = Atom("#{" + ", ".join(f"{k} => {v}" for k, v in f.items()) + "}")
    return (Atom("sup"), node["id"], Atom(node["restart"]), node["significant"], flags,
            [erl_node(c) for c in node["children"]])  # fmt: skip


def erl_scenario(s: dict[str, Any]) -> str:
    actions = []
    for a in s["actions"]:
        if a[0] == "start_child":
            actions.append((Atom(a[0]), a[1], erl_node(a[2])))
        else:
            actions.append((Atom(a[0]), *a[1:]))
    fail = [(p, n) for p, n in s["fail_initially"].items()]
    return erl((Atom("scenario"), s["n"], erl_node(s["tree"]), fail, actions)) + ".\n"
