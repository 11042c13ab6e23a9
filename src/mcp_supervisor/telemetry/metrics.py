"""Prometheus metrics through one registry; tree state is collected on scrape (client_python custom collectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .. import __version__
from ..core import Key, NodeStatus, State

# The classic text format, which every Prometheus version accepts (3.0 rejects a scrape without a valid type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


METRICS_REGISTRY: Key[CollectorRegistry] = Key("metrics_registry")
"""The daemon's one Prometheus registry, shared with the telemetry worker (``ctx.extension(METRICS_REGISTRY)``)."""


class TreeCollector(Collector):
    """Per-child up, state (one-hot) and restarts, read from the tree's status at scrape time."""

    def __init__(self, status: Callable[[], NodeStatus | None]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mcp_child_up", "1 when the child is running", labels=["child", "kind"])
        state = GaugeMetricFamily("mcp_child_state", "The child's state (one-hot)", labels=["child", "state"])
        restarts = CounterMetricFamily("mcp_child_restarts", "Restarts of the child", labels=["child"])
        tree = self._status()
        if tree is not None:
            for node in tree.walk():
                child = node.path or "/"
                up.add_metric([child, node.kind], 1.0 if node.state is State.RUNNING else 0.0)
                for s in State:
                    state.add_metric([child, s.value], 1.0 if node.state is s else 0.0)
                restarts.add_metric([child], float(node.restarts))
        yield up
        yield state
        yield restarts


class ClusterCollector(Collector):
    """The fleet as this node last read it: nodes by liveness, singleton holders, lease renewal failures."""

    def __init__(self, view: Callable[[], tuple[dict[str, Any], int] | None]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        got = self._view()
        if got is None:
            return
        view, failures = got
        nodes = GaugeMetricFamily("mcp_cluster_nodes", "Nodes of the fleet by state", labels=["state"])
        live = [n for n in view.get("nodes", []) if isinstance(n, dict) and n.get("live")]
        total = len(view.get("nodes", []))
        nodes.add_metric(["live"], float(len(live)))
        nodes.add_metric(["down"], float(total - len(live)))
        holder = GaugeMetricFamily("mcp_singleton_holder", "1 for the node holding a singleton's lease",
                                   labels=["path", "node"])  # fmt: skip
        for single in view.get("singletons", []):
            if single.get("holder"):
                holder.add_metric([single["path"], single["holder"]], 1.0)
        renew = CounterMetricFamily("mcp_lease_renew_failures", "Heartbeats or lease renewals that failed here")
        renew.add_metric([], float(failures))
        yield nodes
        yield holder
        yield renew


class DaemonMetrics:
    """The daemon's registry: tree state, reloads, watchdog, event drops, build info, process metrics."""

    def __init__(
        self,
        status: Callable[[], NodeStatus | None],
        cluster: Callable[[], tuple[dict[str, Any], int] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(TreeCollector(status))
        if cluster is not None:
            self.registry.register(ClusterCollector(cluster))
        Info("mcp_build", "mcp-supervisor build", registry=self.registry).info({"version": __version__})
        self.reloads = Counter("mcp_config_reloads", "Config reloads by result", ["result"], registry=self.registry)
        self.last_reload_ok = Gauge(
            "mcp_config_last_reload_successful", "1 if the last reload succeeded", registry=self.registry
        )
        self.last_reload_ok.set(1)
        self.last_reload_ts = Gauge(
            "mcp_config_last_reload_success_timestamp_seconds", "Time of the last good load", registry=self.registry
        )
        self.last_reload_ts.set_to_current_time()
        self.watchdog_pings = Counter("mcp_watchdog_pings", "sd_notify WATCHDOG=1 sent", registry=self.registry)
        self.events_dropped = Gauge(
            "mcp_events_dropped", "Events the log subscriber dropped (it was too slow)", registry=self.registry
        )
        self.log_lines_dropped = Gauge(
            "mcp_log_lines_dropped", "Log lines dropped because stdout was read too slowly", registry=self.registry
        )
        self.admin_requests = Counter(
            "mcp_admin_mutations", "Mutating admin requests by outcome", ["outcome"], registry=self.registry
        )

    def reload_result(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_ts.set_to_current_time()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE
