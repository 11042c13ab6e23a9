"""One redaction step for everything the daemon writes: log lines, admin responses, ``STATUS=``.

What is removed:

- every value the config marks or names as secret (:attr:`Config.secrets`: ``password``, ``token``,
  ``secret_key``, ``url``/``dsn`` passwords, the contents of ``*_file`` secrets, children's ``env`` values unless
  listed in ``public_env``) and the admin token;
- ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` header values, ``Bearer``/``Basic``
  credentials, ``X-Vault-Token`` values, and the password in a URL's userinfo (``redis://user:pw@host``), whatever
  their values.

A secret is matched where it stands on its own — not glued to letters or digits on either side — so that a value
such as ``information`` does not blank out ``misinformation``. Only what can be a secret is matched
(:func:`could_be_secret`): never a value shorter than :data:`MIN_SECRET` characters, a number, a boolean or a
filesystem path (a data directory, the config file's own name) — masking those would garble the daemon's own
messages (``config/[REDACTED].toml``, ``port=[REDACTED]``) and protect nothing; ``check-config`` warns about a
secret-named value too short to be one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

MIN_SECRET = 8
MASK = "[REDACTED]"
STRUCTURAL = frozenset({
    "level", "ts", "logger", "id", "path", "child", "kind", "state", "strategy", "pid", "restarts", "uptime_s",
    "stream", "reason", "status", "componentId", "componentType", "observedUnit", "serviceId", "change",
})  # fmt: skip
"""Keys whose values the daemon itself controls (names, states, numbers): never redacted, so that a secret equal to
a child's id or to ``info`` cannot blank out the structure. Free text — messages, details, output lines, errors —
always is."""

_HEADERS = re.compile(  # a value that is a placeholder ("Bearer <token>", in a hint) is left as it is
    r"(?i)((?:proxy-)?authorization|cookie|set-cookie|x-vault-token)(\s*[:=]\s*|'\s*:\s*'|\"\s*:\s*\")"
    r"(?!\s*(?:bearer\s+)?<)([^\r\n'\"]*)"
)
_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):([^@\s/'\"]+)@")


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PATH = re.compile(r"(?:~|\.{1,2})?/?[\w.@+~-]+(?:/[\w.@+~-]*)+")


def could_be_secret(value: str) -> bool:
    """False for what cannot be a secret however it is named: shorter than :data:`MIN_SECRET`, a number, a
    boolean, or a path (``./x``, ``~/x``, or a path whose first directory exists: ``/srv/...``, ``config/...``)."""
    if len(value) < MIN_SECRET or _NUMBER.fullmatch(value) or value.lower() in ("true", "false", "yes", "no"):
        return False
    if _PATH.fullmatch(value):
        if value.startswith(("./", "../", "~/")):
            return False
        first = value.split("/", 2)[1] if value.startswith("/") else value.split("/", 1)[0]
        return not os.path.isdir(("/" if value.startswith("/") else "") + first)
    return True


class Redactor:
    """Holds the current secrets; :meth:`redact` returns text with every one of them (and the patterns) masked."""

    __slots__ = ("_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.update(secrets)

    @property
    def secrets(self) -> frozenset[str]:
        return self._secrets

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set (a reload keeps the previous set too: pass both while old children may still speak)."""
        kept = frozenset(s for s in secrets if isinstance(s, str) and could_be_secret(s))
        self._secrets = kept
        if not kept:
            self._pattern = None
            return
        alternatives = "|".join(re.escape(s) for s in sorted(kept, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")

    def add(self, *secrets: str) -> None:
        self.update(self._secrets | set(secrets))

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        if ":" in text or "=" in text:
            text = _HEADERS.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
            text = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
        if "earer" in text or "asic" in text:
            text = _CREDENTIALS.sub(lambda m: f"{m.group(1)} {MASK}", text)
        return text

    def redact_value(self, value: Any, keep: frozenset[str] = STRUCTURAL) -> Any:
        """``value`` with every string inside it redacted, except plain values under the ``keep`` keys of a dict
        (a container under such a key — an exit ``reason`` with its ``detail`` — is redacted inside)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                k: v if k in keep and not isinstance(v, dict | list | tuple) else self.redact_value(v, keep)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_value(v, keep) for v in value]
        return value
