"""What real configs get wrong, or need changed to run under a supervisor: programs that daemonize themselves
(then nothing is supervised), and commands written for a shell."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable

_OPERATOR_CHARS = set("&|;<>()")
_ASSIGNS = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|\"[^\"]*\"|\S*)\s+)+")
_CONTROL = re.compile(r"&&|\|\||[|;&`]|\$\(")

# program name -> (the flag or setting that keeps it in the foreground, how to tell it is there)
_FOREGROUND: dict[str, tuple[str, Callable[[str], bool]]] = {
    "nginx": ("-g 'daemon off;'", lambda a: "daemon off" in a),
    "php-fpm": ("-F (--nodaemonize)", lambda a: bool(re.search(r"(^|\s)(-F|--nodaemonize)(\s|$)", a))),
    "httpd": ("-DFOREGROUND", lambda a: "-DFOREGROUND" in a),
    "apache2": ("-DFOREGROUND", lambda a: "-DFOREGROUND" in a),
    "apachectl": ("-DFOREGROUND", lambda a: "-DFOREGROUND" in a),
    "redis-server": ("--daemonize no", lambda a: not re.search(r"--daemonize\s+yes", a)),
    "memcached": ("(no -d)", lambda a: not re.search(r"(^|\s)-d(\s|$)", a)),
    "sshd": ("-D", lambda a: bool(re.search(r"(^|\s)-D(\s|$)", a))),
    "crond": ("-f", lambda a: bool(re.search(r"(^|\s)-f(\s|$)", a))),
    "cron": ("-f", lambda a: bool(re.search(r"(^|\s)-f(\s|$)", a))),
    "rsyslogd": ("-n", lambda a: bool(re.search(r"(^|\s)-n(\s|$)", a))),
    "dockerd": ("(runs in the foreground)", lambda a: True),
}


def daemonizes(command: list[str]) -> str | None:
    """A warning when ``command`` starts a program that forks into the background and exits (then a supervisor
    sees it exit and restarts it over and over, or supervises nothing), with the fix; else None."""
    if not command:
        return None
    words = command
    if os.path.basename(words[0]) in ("sh", "bash", "dash") and len(words) >= 3 and words[1] == "-c":
        words = words[2].split()
    if not words:
        return None
    name = os.path.basename(words[0])
    name = re.sub(r"\d+(\.\d+)*$", "", name) if name.startswith("php-fpm") else name  # php-fpm8.2
    rest = " ".join(words[1:])
    if name == "postfix" and "start" in words[1:]:
        return (
            "`postfix start` daemonizes and exits: run `postfix start-fg` instead (or give pidfile = "
            '"/var/spool/postfix/pid/master.pid")'
        )
    if name in ("service", "systemctl") or (name.endswith(("ctl",)) and "start" in words[1:] and name != "apachectl"):
        return f"`{' '.join(words[:3])}` starts a service in the background and exits: run the program itself"
    fix = _FOREGROUND.get(name)
    if fix is not None and not fix[1](rest):
        return (
            f"{name} daemonizes itself unless told not to: add {fix[0]} so the program stays in the foreground "
            '(or, if it must fork, give pidfile = "..." so the process its pidfile names is supervised)'
        )
    return None


def needs_shell(command: str, dollar: bool = False) -> bool:
    """Shell syntax outside quotes: operators (``&&``, ``|``, ``;``, ``>``, ...), a leading ``cd``/``export``/
    ``source``, and with ``dollar`` (a Procfile: a shell always runs it) any ``$``."""
    if dollar and "$" in command:
        return True
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return True
    if tokens and tokens[0] in ("cd", "export", "source", ".", "exec"):
        return True
    return any(t and set(t) <= _OPERATOR_CHARS for t in tokens) or "`" in command or "$(" in command


def shell_command(command: str) -> list[str]:
    """``sh -c`` with ``exec`` in front of a simple command (the program keeps the shell's pid; stop signals reach
    it); a chain or a pipeline runs as the shell's children (stopped with its process group)."""
    if _CONTROL.search(command):
        return ["sh", "-c", command]
    assigns = _ASSIGNS.match(command)  # `VAR=1 exec cmd`: the assignments reach the program
    head = assigns.group(0) if assigns else ""
    return ["sh", "-c", f"{head}exec {command[len(head) :]}"]
