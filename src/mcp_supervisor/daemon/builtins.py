"""The worker names a config may use without a module path (``worker = "postgres"``): each is imported only when a
config names it, so a base install without the service extras runs every other config."""

BUILTIN_WORKERS: dict[str, str] = {
    "postgres": "mcp_supervisor.services.postgres:factory",
    "redis": "mcp_supervisor.services.redis:factory",
    "s3": "mcp_supervisor.services.s3:factory",
    "vault": "mcp_supervisor.services.vault:factory",
    "health": "mcp_supervisor.health.monitor:factory",
    "telemetry": "mcp_supervisor.telemetry.sink:factory",
}
