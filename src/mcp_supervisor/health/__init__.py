"""The health monitor: concurrent probes with their own timeouts, criticality, snapshots for /readyz and /health."""

from .probe import ProbeResult
from .probes import CheckOutcome, run_check

__all__ = ["CheckOutcome", "ProbeResult", "run_check"]
