"""``python -m mcp_supervisor``: the same as the ``mcp-supervisor`` command."""

import sys

from .cli.main import main

sys.exit(main())
