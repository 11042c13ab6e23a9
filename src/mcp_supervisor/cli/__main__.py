"""``python -m mcp_supervisor.cli``: the ``mcp-supervisor`` command."""

import sys

from .main import main

sys.exit(main())
