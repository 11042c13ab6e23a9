"""mcp-supervisor: Erlang/OTP supervision trees for Linux services (docs/architecture.md)."""

from importlib import metadata

try:
    __version__ = metadata.version("mcp-supervisor-otp")  # one source: the installed distribution's
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+source"
