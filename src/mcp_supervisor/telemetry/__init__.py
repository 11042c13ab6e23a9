"""The edge that turns the core's and services' events into logs and metrics.

The only importer of structlog and prometheus_client (docs/architecture.md).
"""
