"""Find the line of a key path like ``tree.children[1].children[0].shutdown`` in TOML text (best effort).

``tomllib`` keeps no positions, so this scans headers (``[a.b]``, ``[[a.b]]``) and ``key = value`` lines, giving
every array-of-tables element its index, and falls back to the nearest enclosing key it can find.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in dotted.split(".")]


def index_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    arrays: set[str] = set()
    current = ""
    depth = 0  # inside a multi-line array or inline table: not a key line
    for no, raw in enumerate(text.splitlines(), start=1):
        line = _STRINGS.sub('""', raw).split("#", 1)[0]  # brackets and '#' inside strings are not structure
        if depth == 0 and (m := _HEADER.match(raw)):
            is_array = m.group(1) == "[["
            canon = ""
            parts = _split(m.group(2))
            for i, seg in enumerate(parts):
                canon = f"{canon}.{seg}" if canon else seg
                last = i == len(parts) - 1
                if last and is_array:
                    counts[canon] = counts.get(canon, -1) + 1
                    arrays.add(canon)
                    canon = f"{canon}[{counts[canon]}]"
                elif canon in arrays:
                    canon = f"{canon}[{counts[canon]}]"
            current = canon
            lines.setdefault(current, no)
            continue
        if depth == 0 and (m := _KEY.match(raw)):
            key = ".".join(_split(m.group(1)))
            full = f"{current}.{key}" if current else key
            lines.setdefault(full, no)
        depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
        depth = max(depth, 0)
    return lines


def locate(text: str, key: str) -> int | None:
    """The line defining ``key`` or the nearest enclosing key, or None."""
    if not key:
        return None
    lines = index_lines(text)
    probe = key
    while probe:
        if probe in lines:
            return lines[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return None


# what can hide a bracket: strings (multi-line ones first) and comments; then brackets and newlines themselves
_TOKENS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*"""'  # multi-line basic string
    r"|'''.*?'''"  # multi-line literal string
    r'|"(?:[^"\\\n]|\\.)*"'  # basic string
    r"|'[^'\n]*'"  # literal string
    r"|#[^\n]*"  # comment
    r"|[\[\]{}\n]",
    re.DOTALL,
)


def too_deep(text: str, limit: int) -> int | None:
    """The line where brackets and braces (outside strings and comments) first nest deeper than ``limit``.

    Checked before parsing: ``tomllib`` recurses per level, so a hostile file could exhaust the stack.
    """
    depth = 0
    line = 1
    for m in _TOKENS.finditer(text):
        tok = m.group()
        c = tok[0]
        if c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == "\n":
            line += 1
        else:
            line += tok.count("\n")  # a multi-line string
    return None
