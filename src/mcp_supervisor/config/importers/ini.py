"""supervisord's INI dialect, read line by line so that every key keeps its file and line: ``;``/``#`` comments
(inline ones after whitespace), ``key = value`` or ``key: value``, values continued on indented lines, and the
mistakes real files make (a header missing its ``]``, a key before any section) reported, not guessed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADER = re.compile(r"\[([^\]]*)\]\s*$")
_INLINE_COMMENT = re.compile(r"\s[;#].*$")


@dataclass(slots=True)
class Value:
    text: str
    line: int


@dataclass(slots=True)
class Section:
    name: str
    file: str
    line: int
    keys: dict[str, Value] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        line = self.keys[key].line if key is not None and key in self.keys else self.line
        return f"{self.file}:{line}"

    def get(self, key: str) -> str | None:
        v = self.keys.get(key)
        return v.text if v is not None else None


@dataclass(slots=True)
class Problem:
    where: str
    text: str


def parse_ini(text: str, file: str) -> tuple[list[Section], list[Problem]]:
    """Sections in file order (a repeated section's keys merge into the first, as supervisord's parser does)."""
    sections: list[Section] = []
    by_name: dict[str, Section] = {}
    problems: list[Problem] = []
    current: Section | None = None
    last: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith((";", "#")):
            continue
        if raw[0] in " \t" and current is not None and last is not None:  # a continuation line
            more = _INLINE_COMMENT.sub("", raw).strip()
            if more:
                v = current.keys[last]
                current.keys[last] = Value(f"{v.text}\n{more}" if v.text else more, v.line)
            continue
        line = raw.strip()
        if line.startswith("["):
            m = _HEADER.match(line)
            if m is None:
                problems.append(Problem(f"{file}:{n}", f"the section header {line[:60]!r} is missing its ']': "
                                        "supervisord refuses the file; its keys are skipped here"))  # fmt: skip
                current, last = None, None
                continue
            name = m.group(1).strip()
            current = by_name.get(name)
            if current is None:
                current = by_name[name] = Section(name, file, n)
                sections.append(current)
            last = None
            continue
        key, sep, value = _split(line)
        if not sep:
            problems.append(Problem(f"{file}:{n}", f"{line[:60]!r} is neither a section header nor key = value"))
            continue
        if current is None:
            problems.append(Problem(f"{file}:{n}", f"{key!r} comes before any [section]: skipped"))
            continue
        current.keys[key.lower()] = Value(_INLINE_COMMENT.sub("", value).strip(), n)
        last = key.lower()
    return sections, problems


def _split(line: str) -> tuple[str, str, str]:
    eq, colon = line.find("="), line.find(":")
    cut = min(i for i in (eq, colon) if i >= 0) if eq >= 0 or colon >= 0 else -1
    if cut < 0:
        return line, "", ""
    return line[:cut].strip(), line[cut], line[cut + 1 :]
