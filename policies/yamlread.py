"""Reading YAML with positions: values are checked in place; errors name file:line:col.

PyYAML's composed node tree keeps each value's start mark; :class:`Reader` walks it with
typed accessors (``mapping``, ``integer``, ``duration``...) that record a problem instead of
raising, so one run reports every mistake in a file. Used for policy files and simulator
scenarios.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from trainwarden.policies.errors import PolicyError

E = TypeVar("E", bound=StrEnum)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Reader:
    """Typed, position-aware access to one YAML document; collects problems."""

    def __init__(self, text: str, source: str, line_offset: int = 0, col_offset: int = 0) -> None:
        self.source = source
        self._offset = (line_offset, col_offset)  # where an embedded document starts
        self.text = text
        self.problems: list[str] = []
        self._marks: dict[str, tuple[int, int]] = {}
        self._loader: yaml.SafeLoader | None = None

    # -- document -------------------------------------------------------------------------
    def root(self) -> Node | None:
        try:
            self._loader = yaml.SafeLoader(self.text)
            node = self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = (
                f"{self.source}:{mark.line + 1 + self._offset[0]}:"
                f"{mark.column + 1 + self._offset[1]}"
                if mark
                else self.source
            )
            self.problems.append(f"{where}: not valid YAML: {exc.problem or exc.context}")
            return None
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.source}: not valid YAML: {exc}")
            return None
        if node is None:
            self.problems.append(f"{self.source}: the file is empty")
        return node

    def raise_if_errors(self, what: str) -> None:
        if self.problems:
            n = len(self.problems)
            head = f"{self.source}: invalid {what} ({n} problem{'s' if n > 1 else ''}):"
            raise PolicyError("\n  ".join([head, *self.problems]), tuple(self.problems))

    # -- problems -------------------------------------------------------------------------
    def _mark(self, path: str, node: Node | None) -> None:
        if node is not None:
            m = node.start_mark
            self._marks[path] = (m.line + 1 + self._offset[0], m.column + 1 + self._offset[1])

    def error(self, path: str, message: str) -> None:
        probe = path
        while probe and probe not in self._marks:
            probe = (
                re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe) if re.search(r"[.\[]", probe) else ""
            )
        line, col = self._marks.get(probe, (0, 0))
        where = f"{self.source}:{line}:{col}" if line else self.source
        self.problems.append(f"{where}: {path or '<top level>'}: {message}")

    # -- accessors (None in -> None out; a wrong value records a problem and gives None) --
    def mapping(
        self,
        node: Node | None,
        path: str,
        *,
        required: set[str] | None = None,
        allowed: set[str] | None = None,
    ) -> dict[str, Node] | None:
        if node is None:
            return None
        self._mark(path, node)
        if not isinstance(node, MappingNode):
            self.error(path, f"expected a mapping (key: value), got {_kind(node)}")
            return None
        out: dict[str, Node] = {}
        for knode, vnode in node.value:
            key = str(knode.value) if isinstance(knode, ScalarNode) else "?"
            sub = f"{path}.{key}" if path else key
            self._mark(sub, knode)
            if key in out:
                self.error(sub, f"duplicate key {key!r}")
                continue
            if allowed is not None and key not in allowed:
                self.error(sub, f"unknown key {key!r}; expected one of {sorted(allowed)}")
                continue
            out[key] = vnode
        for key in sorted((required or set()) - set(out)):
            self.error(path, f"missing required key {key!r}")
        return out

    def sequence(
        self, node: Node | None, path: str, *, nonempty: bool = False
    ) -> list[Node] | None:
        if node is None:
            return None
        self._mark(path, node)
        if not isinstance(node, SequenceNode):
            self.error(path, f"expected a list, got {_kind(node)}")
            return None
        if nonempty and not node.value:
            self.error(path, "must not be empty")
        for i, item in enumerate(node.value):
            self._mark(f"{path}[{i}]", item)
        return list(node.value)

    def scalar(self, node: Node | None, path: str) -> Any:
        if node is None:
            return None
        self._mark(path, node)
        if not isinstance(node, ScalarNode):
            self.error(path, f"expected a single value, got {_kind(node)}")
            return None
        assert self._loader is not None
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(path, f"cannot read value: {exc}")
            return None

    def string(self, node: Node | None, path: str) -> str | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            self.error(path, f"expected a non-empty string, got {v!r}")
            return None
        return v

    def boolean(self, node: Node | None, path: str) -> bool | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        if not isinstance(v, bool):
            self.error(path, f"expected true or false, got {v!r}")
            return None
        return v

    def _in_range(self, v: float, lo: float | None, hi: float | None, path: str) -> bool:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.error(
                path,
                f"{v} is out of range [{lo if lo is not None else '-inf'}, "
                f"{hi if hi is not None else 'inf'}]",
            )
            return False
        return True

    def integer(
        self, node: Node | None, path: str, *, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.error(path, f"expected a whole number, got {v!r}")
            return None
        if not self._in_range(v, lo, hi, path):
            return None
        return v

    def number(
        self, node: Node | None, path: str, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            self.error(path, f"expected a number, got {v!r}")
            return None
        if not self._in_range(v, lo, hi, path):
            return None
        return float(v)

    def fraction(self, node: Node | None, path: str) -> float | None:
        """A number in [0, 1], or a percentage string like ``'20%'``."""
        v = self.scalar(node, path)
        if isinstance(v, str) and v.strip().endswith("%"):
            try:
                f = float(v.strip()[:-1]) / 100.0
            except ValueError:
                f = -1.0
            if not 0.0 <= f <= 1.0:
                self.error(path, f"{v!r} is not a percentage between 0% and 100%")
                return None
            return f
        return self.number(node, path, lo=0.0, hi=1.0)

    def duration(self, node: Node | None, path: str) -> float | None:
        """Seconds: a number, or a string like ``'90s'``, ``'10m'``, ``'1.5h'``, ``'30d'``."""
        v = self.scalar(node, path)
        if v is None:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool):
            seconds = float(v)
        else:
            m = _DURATION.match(str(v))
            if not m:
                self.error(path, f"expected a duration like 30s, 10m, 2h or 1d, got {v!r}")
                return None
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds < 0 or math.isnan(seconds):
            self.error(path, f"a duration cannot be negative, got {v!r}")
            return None
        return seconds

    def enum(self, node: Node | None, path: str, kind: type[E]) -> E | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        try:
            return kind(str(v))
        except ValueError:
            self.error(path, f"{v!r} is not one of {[k.value for k in kind]}")
            return None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"{node.value!r}"
