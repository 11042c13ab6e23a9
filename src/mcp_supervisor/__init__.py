"""mcp-supervisor: Erlang/OTP supervision trees for Linux services."""

__version__ = "0.1.0"
