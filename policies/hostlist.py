"""Slurm hostlist expressions: ``nid[000000-019999]`` <-> the names it stands for.

Where it lives: in ``policies/``, the lowest layer that reasons about *sets* of nodes (which
nodes an action touches, which a restart keeps out). The login side (``supervisor/``: the CLI,
the daemon's configuration, the Slurm adapter, the simulator) imports it from here without an
upward import; the node side (``health/``) is told its own single name and has no use for it.
The module imports nothing of the project, so it can move down should ``health/`` need it.

:func:`expand` reads what ``scontrol show hostnames EXPR`` reads (Slurm's ``hostlist.c``):

- items separated by commas (or whitespace) at the top level: ``n1,n2 n3``;
- a bracket holds comma-separated numbers and ``lo-hi`` ranges: ``nid[000001-000004,000010]``;
- zero padding comes from the width of each range's lower bound, as in Slurm: ``n[01-10]`` is
  ``n01 .. n10``, ``n[1-10]`` is ``n1 .. n10``, ``n[001-5]`` is ``n001 .. n005``;
- several bracket groups in one name are their cartesian product in Slurm's order: the last
  group varies fastest, and the groups before it are nested from right to left, as Slurm's
  recursion over the prefix does. ``rack[1-2]-node[01-02]`` is ``rack1-node01 rack1-node02
  rack2-node01 rack2-node02``; ``a[1-2]b[1-2]c[1-2]`` is ``a1b1c1 a1b1c2 a2b1c1 a2b1c2 a1b2c1
  ...`` (``c`` fastest, then ``a``, ``b`` slowest) -- checked against ``scontrol`` 22.05;
- names without brackets are taken as they are.

Duplicates: ``scontrol show hostnames`` keeps them (``n[1-2],n2`` prints ``n2`` twice: it only
creates the list and shifts names off it, without ``hostlist_uniq``). Every caller here names a
*set* of nodes, so :func:`expand` drops repeats by default, keeping each name's first place;
``unique=False`` gives exactly Slurm's sequence.

Where this is stricter or looser than Slurm (22.05, checked), on purpose: an empty item
(``n1,,n2``), a bound without its other half (``n[1-]``, Slurm: ``n1``) and an unbalanced
bracket (``n[1-3``, Slurm: ``n]``; ``n1-3]``, Slurm: ``n1-3]``) are errors here where Slurm
skips or guesses; text after the last bracket (``nid[01-02]-ib``) is accepted (Slurm refuses
it); and one expression may stand for at most :data:`MAX_NAMES` names (Slurm: 64k per range),
checked before anything is allocated, so a typo cannot ask for gigabytes. Every error is a
:class:`ValueError` that quotes the expression and says what is wrong.

:func:`compress` is the inverse, as ``scontrol show hostlistsorted`` prints a set (plain
``scontrol show hostlist`` keeps the input order): names sorted (prefixes in natural order,
then by number), consecutive numbers of one prefix and one zero-padding width merged into
ranges, one bracket per prefix: ``login1,nid[000001-000003,000007]``. Unlike Slurm it drops
duplicates (``hostlistsorted`` prints ``n[1,1]``), and names of one prefix but different
widths (``n9,n09,n010``) are ordered by value here, where Slurm puts the wider ones last.
``expand(compress(names))`` is the sorted set of ``names`` (sorted by :func:`natural_key`).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable

__all__ = ["MAX_NAMES", "compress", "expand", "natural_key"]

MAX_NAMES = 1_000_000
"""The most names one expression may stand for (before duplicates are dropped)."""

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_TRAILING_DIGITS = re.compile(r"(\d+)$")
_CHUNKS = re.compile(r"(\d+)")
_SEPARATORS = frozenset(" \t\n")
_FORBIDDEN_IN_NAME = frozenset("[],") | _SEPARATORS

# one bracket's ranges: (lo, hi, width)
_Group = list[tuple[int, int, int]]


def expand(text: str, *, unique: bool = True) -> tuple[str, ...]:
    """The names a hostlist expression stands for, in Slurm's order.

    ``unique`` (default): each name once, where it first appears; ``False``: repeats kept,
    exactly as ``scontrol show hostnames`` prints them. Blank text is no names. Raises
    :class:`ValueError` naming what is wrong (unbalanced bracket, descending or non-numeric
    range, empty item, more than :data:`MAX_NAMES` names).
    """
    items = _split_top_level(text)
    parsed = [_parse_item(item, text) for item in items]
    total = 0
    for _, groups in parsed:
        count = 1
        for group in groups:
            count *= sum(hi - lo + 1 for lo, hi, _ in group)
        total += count
        if total > MAX_NAMES:
            raise ValueError(
                f"hostlist {_show(text)} stands for more than {MAX_NAMES:,} names "
                "(a typo in a range?)"
            )
    names: list[str] = []
    for literals, groups in parsed:
        if not groups:
            names.append(literals[0])
        elif len(groups) == 1:
            head, tail = literals
            for lo, hi, width in groups[0]:
                names.extend(f"{head}{n:0{width}d}{tail}" for n in range(lo, hi + 1))
        else:
            # Slurm's nesting: the brackets before the last one from right to left (the one
            # just before the last varies slowest), the last bracket innermost
            order = [*range(len(groups) - 2, -1, -1), len(groups) - 1]
            choices = [
                [f"{n:0{width}d}" for lo, hi, width in groups[g] for n in range(lo, hi + 1)]
                for g in order
            ]
            numbers = [""] * len(groups)
            for combo in itertools.product(*choices):
                for g, number in zip(order, combo, strict=True):
                    numbers[g] = number
                parts = [literals[0]]
                for number, literal in zip(numbers, literals[1:], strict=True):
                    parts += (number, literal)
                names.append("".join(parts))
    return tuple(dict.fromkeys(names)) if unique else tuple(names)


def compress(names: Iterable[str]) -> str:
    """The shortest Slurm hostlist of ``names`` as ``scontrol show hostlistsorted`` writes it.

    Sorted by :func:`natural_key`, duplicates dropped; names sharing a prefix and a zero-padding
    width merge into ranges (``n9,n10`` -> ``n[9-10]``; ``n09,n10`` -> ``n[09-10]``; ``n9,n010``
    stay apart). Raises :class:`ValueError` for an empty name or one with ``[ ] ,`` or
    whitespace, which no hostlist can carry.
    """
    unique = set(names)
    for name in unique:
        if not name or any(ch in _FORBIDDEN_IN_NAME for ch in name):
            raise ValueError(f"{name!r} cannot be written in a hostlist")
    out: list[str] = []
    for prefix, runs in _runs(sorted(unique, key=natural_key)):
        if prefix is None:  # a name without a numeric suffix, as it is
            out.append(runs[0][0])
            continue
        parts = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in runs]
        if len(parts) == 1 and runs[0][0] == runs[0][1]:
            out.append(prefix + parts[0])
        else:
            out.append(f"{prefix}[{','.join(parts)}]")
    return ",".join(out)


def natural_key(name: str) -> tuple[object, ...]:
    """The order :func:`compress` writes names in: prefix in natural order (``rack2`` before
    ``rack10``), a name without a numeric suffix first, then the suffix by value and width."""
    m = _TRAILING_DIGITS.search(name)
    if m is None:
        return (_prefix_key(name), False, 0, 0, name)
    digits = m.group(1)
    return (_prefix_key(name[: m.start()]), True, int(digits), len(digits), name)


@functools.lru_cache(maxsize=4096)
def _prefix_key(prefix: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((1, int(c), c) if c.isdigit() else (0, 0, c) for c in _CHUNKS.split(prefix) if c)


# --- parsing ---------------------------------------------------------------------------------


def _show(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _split_top_level(text: str) -> list[str]:
    """Items at bracket depth 0, split at commas and whitespace; brackets must balance."""
    if not text.strip():
        return []
    pieces: list[list[str]] = [[]]  # comma-separated pieces, each its whitespace-split words
    word: list[str] = []
    depth = 0

    def end_word() -> None:
        if word:
            pieces[-1].append("".join(word))
            word.clear()

    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise ValueError(
                    f"nested '[' at position {i} in hostlist {_show(text)}: brackets do not nest"
                )
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"unbalanced ']' at position {i} in hostlist {_show(text)}")
            depth = 0
        elif depth == 0 and ch == ",":
            end_word()
            pieces.append([])
            continue
        elif depth == 0 and ch in _SEPARATORS:
            end_word()
            continue
        word.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {_show(text)}: a ']' is missing")
    end_word()
    for k, words in enumerate(pieces):
        if not words:
            where = (
                "a leading comma"
                if k == 0
                else "a trailing comma"
                if k == len(pieces) - 1
                else "two commas in a row"
            )
            raise ValueError(f"empty item in hostlist {_show(text)} ({where}?)")
    return [w for words in pieces for w in words]


def _parse_item(item: str, whole: str) -> tuple[list[str], list[_Group]]:
    """``rack[1-2]-node[01-03]`` -> literals ``['rack', '-node', '']`` and the two groups."""
    literals: list[str] = []
    groups: list[_Group] = []
    pos = 0
    while True:
        open_at = item.find("[", pos)
        if open_at < 0:
            literals.append(item[pos:])
            return literals, groups
        close_at = item.index("]", open_at)  # balanced: checked by _split_top_level
        literals.append(item[pos:open_at])
        groups.append(_parse_group(item[open_at + 1 : close_at], item, whole))
        pos = close_at + 1


def _parse_group(body: str, item: str, whole: str) -> _Group:
    if not body.strip():
        raise ValueError(f"empty brackets in {item!r} of hostlist {_show(whole)}")
    group: _Group = []
    for part in body.split(","):
        if not part:
            raise ValueError(f"empty range in {item!r} of hostlist {_show(whole)}")
        m = _RANGE.fullmatch(part)
        if m is None:
            raise ValueError(
                f"cannot read range {part!r} in {item!r} of hostlist {_show(whole)}: "
                "expected a number or LO-HI"
            )
        lo_text, hi_text = m.group(1), m.group(2)
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if hi < lo:
            raise ValueError(
                f"descending range {part!r} in {item!r} of hostlist {_show(whole)}: "
                "write the lower bound first"
            )
        group.append((lo, hi, len(lo_text)))
    return group


# --- compressing -----------------------------------------------------------------------------


def _runs(ordered: list[str]) -> list[tuple[str | None, list[tuple[str, str]]]]:
    """Sorted names -> per prefix (``None``: a name without digits) its runs as (lo, hi) text.

    A run is consecutive numbers that one zero-padding width writes: a suffix with a leading
    zero needs exactly its own width; one without fits any width up to its length.
    """
    out: list[tuple[str | None, list[tuple[str, str]]]] = []
    # the open run: prefix, first number, last number, allowed width [wlo, whi]
    run: tuple[str, int, int, int, int] | None = None

    def close() -> None:
        if run is None:
            return
        prefix, lo, hi, wlo, _ = run
        text = (f"{lo:0{wlo}d}", f"{hi:0{wlo}d}")
        if out and out[-1][0] == prefix:
            out[-1][1].append(text)
        else:
            out.append((prefix, [text]))

    for name in ordered:
        m = _TRAILING_DIGITS.search(name)
        if m is None:
            close()
            run = None
            out.append((None, [(name, name)]))
            continue
        prefix, digits = name[: m.start()], m.group(1)
        n = int(digits)
        padded = len(digits) > 1 and digits[0] == "0"
        wlo, whi = (len(digits), len(digits)) if padded else (1, len(digits))
        if run is not None and run[0] == prefix and n == run[2] + 1:
            lo_w, hi_w = max(run[3], wlo), min(run[4], whi)
            if lo_w <= hi_w:
                run = (prefix, run[1], n, lo_w, hi_w)
                continue
        close()
        run = (prefix, n, n, wlo, whi)
    close()
    return out
