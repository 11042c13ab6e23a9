"""Every exit code the command line uses, defined once (documented in docs/operations.md).

``run``: 0 a clean stop, 1 the root supervisor gave up or failed to start, 78 an invalid config (EX_CONFIG, so
that systemd's ``RestartPreventExitStatus=78`` does not crash-loop on it). ``ctl``: 0 done, 1 the action or check
failed, 2 usage, 3 the daemon could not be reached, 4 unauthorized, 78 an invalid config. ``db``: 69 the database
could not be reached (EX_UNAVAILABLE).
"""

OK = 0
FAILED = 1  # run: the root gave up; ctl: the action or check failed
USAGE = 2
UNREACHABLE = 3
UNAUTHORIZED = 4
UNAVAILABLE = 69
CONFIG = 78
INTERRUPTED = 130  # Ctrl-C ended a follow or a watch
