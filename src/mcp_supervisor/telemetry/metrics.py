"""Prometheus metrics through one registry; tree state is collected on scrape (client_python custom collectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .. import __version__
from ..core import LAG_BUCKETS, Key, LoopWatch, NodeStatus, State

# The classic text format, which every Prometheus version accepts (3.0 rejects a scrape without a valid type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` twin beside every counter (Prometheus reads them as separate series)


METRICS_REGISTRY: Key[CollectorRegistry] = Key("metrics_registry")
"""The daemon's one Prometheus registry, shared with the telemetry worker (``ctx.extension(METRICS_REGISTRY)``)."""


class TreeCollector(Collector):
    """Per child: up, state (one-hot), restarts, ends by cause, crash looping, and what an OS child uses — read
    from the tree's status at scrape time."""

    def __init__(self, status: Callable[[], NodeStatus | None]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mcp_child_up", "1 when the child is running", labels=["child", "kind"])
        state = GaugeMetricFamily("mcp_child_state", "The child's state (one-hot)", labels=["child", "state"])
        restarts = CounterMetricFamily("mcp_child_restarts", "Restarts of the child", labels=["child"])
        exits = CounterMetricFamily("mcp_child_exits", "Ends of the child's incarnations by cause",
                                    labels=["child", "cause"])  # fmt: skip
        last = GaugeMetricFamily("mcp_child_last_exit_timestamp_seconds", "When the child last ended",
                                 labels=["child"])  # fmt: skip
        looping = GaugeMetricFamily("mcp_child_crash_looping", "1 while the child is crash-looping", labels=["child"])
        cpu = CounterMetricFamily("mcp_child_cpu_seconds", "CPU seconds (user+system) of the OS child's processes "
                                  "in this incarnation", labels=["child"])  # fmt: skip
        rss = GaugeMetricFamily("mcp_child_resident_memory_bytes", "Resident memory of the OS child's processes",
                                labels=["child"])  # fmt: skip
        fds = GaugeMetricFamily("mcp_child_open_fds", "Open file descriptors of the OS child's processes",
                                labels=["child"])  # fmt: skip
        threads = GaugeMetricFamily("mcp_child_threads", "Threads of the OS child's processes", labels=["child"])
        tree = self._status()
        if tree is not None:
            for node in tree.walk():
                child = node.path or "/"
                up.add_metric([child, node.kind], 1.0 if node.state is State.RUNNING else 0.0)
                for s in State:
                    state.add_metric([child, s.value], 1.0 if node.state is s else 0.0)
                restarts.add_metric([child], float(node.restarts))
                if not node.path:
                    continue
                for cause, n in node.exits.items():
                    exits.add_metric([child, cause], float(n))
                if node.last_exit is not None and node.last_exit.at is not None:
                    last.add_metric([child], node.last_exit.at)
                looping.add_metric([child], 1.0 if node.crash_loop is not None else 0.0)
                res = node.resources
                if res is not None:
                    cpu.add_metric([child], res.cpu_s)
                    rss.add_metric([child], float(res.rss_bytes))
                    threads.add_metric([child], float(res.threads))
                    if res.fds is not None:
                        fds.add_metric([child], float(res.fds))
        yield from (up, state, restarts, exits, last, looping, cpu, rss, fds, threads)


@dataclass(frozen=True, slots=True)
class FleetSample:
    """The fleet as this node last read it, as the metrics show it."""

    live: int
    down: int
    holders: tuple[tuple[str, str], ...]  # (singleton path, node holding its lease)
    renew_failures: int
    singletons: tuple[SingletonSample, ...] = ()


@dataclass(frozen=True, slots=True)
class SingletonSample:
    """One singleton as this node's last heartbeat saw the fleet."""

    path: str
    holders: int  # live nodes that say they hold it
    unheld_s: float  # seconds without any (0 while held)
    lease_age_s: float | None  # since its current holder took the lease (None: nobody holds it)


class ClusterCollector(Collector):
    """The fleet as this node last read it: nodes by liveness, singleton holders, lease renewal failures."""

    def __init__(self, sample: Callable[[], FleetSample | None]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        got = self._sample()
        if got is None:
            return
        nodes = GaugeMetricFamily("mcp_cluster_nodes", "Nodes of the fleet by state", labels=["state"])
        nodes.add_metric(["live"], float(got.live))
        nodes.add_metric(["down"], float(got.down))
        holder = GaugeMetricFamily("mcp_singleton_holder", "1 for the node holding a singleton's lease",
                                   labels=["path", "node"])  # fmt: skip
        for path, node in got.holders:
            holder.add_metric([path, node], 1.0)
        renew = CounterMetricFamily("mcp_lease_renew_failures", "Heartbeats or lease renewals that failed here")
        renew.add_metric([], float(got.renew_failures))
        count = GaugeMetricFamily("mcp_singleton_holders", "Live nodes that say they hold a singleton (alarm: 0 for "
                                  "longer than the failover bound, or more than 1)", labels=["path"])  # fmt: skip
        unheld = GaugeMetricFamily("mcp_singleton_unheld_seconds", "Seconds a singleton has had no holder, as this "
                                   "node saw it (0 while held)", labels=["path"])  # fmt: skip
        age = GaugeMetricFamily("mcp_lease_age_seconds", "Seconds since a singleton's current holder took its lease",
                                labels=["path"])  # fmt: skip
        for one in got.singletons:
            count.add_metric([one.path], float(one.holders))
            unheld.add_metric([one.path], one.unheld_s)
            if one.lease_age_s is not None:
                age.add_metric([one.path], one.lease_age_s)
        yield nodes
        yield holder
        yield renew
        yield count
        yield unheld
        yield age


class DropsCollector(Collector):
    """What was dropped to keep the tree fast, as counters: events a slow subscriber missed, log lines a slow stdout
    missed (both are monotonic counts kept elsewhere, read at scrape time)."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        events, lines = self._counts()
        dropped_events = CounterMetricFamily("mcp_events_dropped", "Events a slow subscriber of the tree missed")
        dropped_events.add_metric([], float(events))
        dropped_lines = CounterMetricFamily("mcp_log_lines_dropped", "Log lines dropped: stdout was read too slowly")
        dropped_lines.add_metric([], float(lines))
        yield dropped_events
        yield dropped_lines


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSample:
    """One alert receiver's counts, as the metrics show them."""

    name: str
    receiver: str  # its scheme and host, or the command (never a webhook's path: a secret)
    sent: int
    failed: int  # gave up on after its retries
    dropped: int  # over the rate limit, or its queue was full
    up: bool | None  # the last attempt's outcome; None: none yet
    queued: int


class AlertsCollector(Collector):
    """Each ``[[daemon.alerts]]`` receiver: alerts by outcome, whether its last attempt went through, its queue."""

    def __init__(self, samples: Callable[[], list[AlertSample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily("mcp_alerts", "Alerts by receiver and outcome (sent, failed, dropped)",
                                    labels=["alert", "outcome"])  # fmt: skip
        up = GaugeMetricFamily("mcp_alert_receiver_up", "1 if the receiver took the last alert, 0 if not, "
                               "absent before the first", labels=["alert", "receiver"])  # fmt: skip
        queued = GaugeMetricFamily("mcp_alerts_queued", "Alerts waiting for their receiver", labels=["alert"])
        for s in self._samples():
            for outcome, n in (("sent", s.sent), ("failed", s.failed), ("dropped", s.dropped)):
                total.add_metric([s.name, outcome], float(n))
            if s.up is not None:
                up.add_metric([s.name, s.receiver], 1.0 if s.up else 0.0)
            queued.add_metric([s.name], float(s.queued))
        yield total
        yield up
        yield queued


class LoopCollector(Collector):
    """The event loop: how late its beats fired (a histogram), and the seconds each child blocked it."""

    def __init__(self, watch: Callable[[], LoopWatch | None]) -> None:
        self._watch = watch

    def collect(self) -> Iterator[Metric]:
        w = self._watch()
        if w is None:
            return
        buckets, total = [], 0
        for bound, n in zip((*LAG_BUCKETS, float("inf")), w.lag_counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        lag = HistogramMetricFamily("mcp_event_loop_lag_seconds", "How late the event loop's beats fired")
        lag.add_metric([], buckets, sum_value=w.lag_sum)
        yield lag
        blocked = CounterMetricFamily("mcp_loop_blocked_seconds", "Seconds a child's code blocked the event loop",
                                      labels=["child"])  # fmt: skip
        for path, record in list(w.by_path.items()):
            blocked.add_metric([path], record.total_s)
        yield blocked


class DaemonMetrics:
    """The daemon's registry: tree state, reloads, watchdog, event drops, build info, process metrics."""

    def __init__(
        self,
        status: Callable[[], NodeStatus | None],
        cluster: Callable[[], FleetSample | None] | None = None,
        drops: Callable[[], tuple[int, int]] = lambda: (0, 0),
        alerts: Callable[[], list[AlertSample]] = list,
        loop: Callable[[], LoopWatch | None] = lambda: None,
    ) -> None:
        """``drops``: (events, log lines) dropped so far, read at scrape time."""
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(TreeCollector(status))
        self.registry.register(DropsCollector(drops))
        self.registry.register(AlertsCollector(alerts))
        self.registry.register(LoopCollector(loop))
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
        self.admin_requests = Counter(
            "mcp_admin_mutations",
            "Mutating admin requests by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )

    def reload_result(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_ts.set_to_current_time()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE
