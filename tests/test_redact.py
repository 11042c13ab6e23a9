"""The redaction step: planted secrets, credential headers and URL passwords masked; structure kept."""

from __future__ import annotations

import io
import json
from functools import partial

import pytest

from mcp_supervisor.config import parse_config as _parse_config
from mcp_supervisor.config.redact import MASK, Redactor
from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS
from mcp_supervisor.telemetry import logs

parse_config = partial(_parse_config, workers=BUILTIN_WORKERS)  # the daemon's built-in worker names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer tok-123456", f"Bearer {MASK}"),
        ("b'Authorization: Bearer other\\x00'", f"b'Authorization: {MASK}'"),
        ("x Cookie: a=b; c=d", f"x Cookie: {MASK}"),
        ('{"Authorization": "Basic dXNlcjpw"}', f'{{"Authorization": "{MASK}"}}'),
        ("X-Vault-Token: s.abcdef", f"X-Vault-Token: {MASK}"),
        ("redis://u:hunter22@h:6379/0", f"redis://u:{MASK}@h:6379/0"),
        ("postgres://user@host/db", "postgres://user@host/db"),
        ("API_KEY=p4ss-word\nX", f"API_KEY={MASK}\nX"),
        ("the p4ss-word, quoted 'p4ss-word'", f"the {MASK}, quoted '{MASK}'"),
        ("informant informants", f"{MASK} informants"),  # a secret equal to a word only where it stands alone
        ("missing Authorization: Bearer <token>", "missing Authorization: Bearer <token>"),  # a hint, not a value
        ("Authorization: <the token>", "Authorization: <the token>"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert Redactor(["p4ss-word", "informant", "abc"]).redact(text) == expected


@pytest.mark.parametrize(
    "value",
    ["local", "16379", "8080", "3.5", "true", "no", "./var/redis", "/tmp", "config/local.toml", "/tmp/not-yet-made"],
)
def test_what_cannot_be_a_secret_is_never_masked(value: str) -> None:
    r = Redactor([value])
    assert r.secrets == frozenset()
    assert r.redact(f"at {value}: ok") == f"at {value}: ok"


@pytest.mark.parametrize("value", ["hunter2-hunter2", "/no/such/dir/at/all/x9", "tok_8a7sd6f5", "12345678a"])
def test_what_can_be_a_secret_is_masked_wherever_it_stands(value: str) -> None:
    r = Redactor([value])
    assert (
        r.redact(f"x={value} and https://u:{value}@h/ and {value}.") == f"x={MASK} and https://u:{MASK}@h/ and {MASK}."
    )


def test_short_values_are_not_matched_and_structure_is_kept() -> None:
    r = Redactor(["abc", "first-secret"])
    assert r.redact("abc abc") == "abc abc"  # shorter than MIN_SECRET: check-config warns instead
    doc = {"id": "first-secret", "path": "a/first-secret", "state": "running",
           "last_exit": {"reason": "abnormal", "detail": "boom first-secret"}}  # fmt: skip
    assert r.redact_value(doc) == {"id": "first-secret", "path": "a/first-secret", "state": "running",
                                   "last_exit": {"reason": "abnormal", "detail": f"boom {MASK}"}}  # fmt: skip


def test_the_config_collects_its_secrets_and_warns_about_short_ones(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "pw").write_text("from-a-file-secret\n")
    cfg = parse_config(
        f"""
[tree]
[[tree.children]]
id = "db"
worker = "postgres"
config = {{ password = "inline-pass", host = "h" }}
[[tree.children]]
id = "cache"
worker = "redis"
config = {{ password_file = "{tmp_path / "pw"}", url = "redis://u:url-pass@h/0" }}
[[tree.children]]
id = "v"
worker = "vault"
config = {{ token = "abc" }}
[[tree.children]]
id = "p"
command = ["true"]
env = {{ API_KEY = "env-secret", PORT = "8080" }}
public_env = ["PORT"]
""",
        "f.toml",
        env={},
    )
    assert cfg.secrets == {"inline-pass", "from-a-file-secret", "url-pass", "env-secret"}
    assert cfg.warnings == (
        "tree.children[2].config.token: shorter than 8 characters, so it is not redacted from logs (a value that "
        "short is not a secret); use a real secret",
    )


def test_library_records_go_through_the_pipeline_in_the_configured_format() -> None:
    import logging

    out = io.StringIO()
    r = Redactor(["lib-secret-1234"])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure("info", "json", stream=out, redactor=r, stdlib=True)
        logging.getLogger("asyncpg.pool").warning("lost %s", "lib-secret-1234")
        try:
            raise RuntimeError("with lib-secret-1234 inside")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logs.configure("info", "json")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger"], e["level"], e["event"]) for e in lines] == [
        ("asyncpg.pool", "warning", f"lost {MASK}"),
        ("aiohttp.server", "error", "Error handling request"),
    ]
    assert "lib-secret-1234" not in out.getvalue() and f"RuntimeError: with {MASK} inside" in lines[1]["exception"]
