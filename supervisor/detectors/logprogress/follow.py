"""Following a job's log file cheaply: bounded reads, rotation, truncation, absence.

A follower never reads a file whole: it starts near the end (the last ``start_tail`` bytes,
so the newest step is seen at once, also after a daemon restart) or at a saved offset, reads
at most ``max_read`` bytes a poll, and when it falls more than ``max_behind`` bytes behind it
jumps to the newest ``max_read`` bytes (the newest step is what the hang detector needs). A
new inode at the path is a rotation (the new file is read from its start), a file shorter
than the offset was truncated (read again from 0). A missing or unreadable file is a held
problem with a reason, reported on change only, never an exception. An unfinished last line
waits for the rest; ``\\r`` ends a line too (progress bars redraw with it).

Synchronous I/O (the daemon calls :meth:`LogFollower.poll` in a thread); no clock of its own:
``now`` is passed in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from trainwarden.health.report import INT32_MAX, StepSample
from trainwarden.supervisor.detectors.logprogress.parsers import (
    AutoParser,
    LineParser,
    make_parser,
    strip_ansi,
)

KIB = 1024
MAX_READ = 256 * KIB  # per poll (a poll every ~0.5 s: 512 KiB/s of log is followed in full)
START_TAIL = 64 * KIB
MAX_BEHIND = 16 * MAX_READ
MAX_LINE = 64 * KIB  # a longer unfinished line is dropped, not kept growing
MAX_INTERVAL_S = 86_400.0  # what a step sample may state
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass
class TailRead:
    """What one read of the file gave: complete lines, and what happened on the way."""

    lines: list[str] = field(default_factory=list)
    bytes_read: int = 0
    problem: str | None = None  # the file cannot be read now
    notes: list[str] = field(default_factory=list)  # rotated, truncated, skipped ahead


class LogTail:
    """The unread end of one file path, read in bounded chunks."""

    def __init__(
        self,
        path: str,
        *,
        offset: int | None = None,
        max_read: int = MAX_READ,
        start_tail: int = START_TAIL,
        max_behind: int = MAX_BEHIND,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self.offset = offset
        self.max_read, self.start_tail = max_read, start_tail
        self.max_behind, self.max_line = max(max_behind, max_read), max_line
        self.inode: int | None = None
        self.bytes_read = 0  # in all
        self._partial = b""
        self._skip_first = False  # the first piece starts mid-line

    def read(self) -> TailRead:
        out = TailRead()
        try:
            st = os.stat(self.path)
            if self.inode is None or self.offset is None:
                self._open_at(st.st_size)
            elif st.st_ino != self.inode:
                out.notes.append(f"{self.path} was replaced (rotated): reading the new file")
                self._restart()
            elif st.st_size < self.offset:
                out.notes.append(f"{self.path} was truncated: reading it again from its start")
                self._restart()
            self.inode = st.st_ino
            assert self.offset is not None
            behind = st.st_size - self.offset
            if behind > self.max_behind:
                out.notes.append(f"{behind} bytes behind in {self.path}: skipped to its end")
                self.offset, self._partial = st.st_size - self.max_read, b""
                self._skip_first = True
            if st.st_size <= self.offset:
                return out
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(self.max_read, st.st_size - self.offset))
        except OSError as exc:
            out.problem = f"cannot read {self.path}: {exc.strerror or exc}"
            return out
        self.offset += len(data)
        self.bytes_read += len(data)
        out.bytes_read = len(data)
        pieces = _EOL.split(self._partial + data)
        self._partial = pieces.pop()
        if self._skip_first and pieces:
            pieces.pop(0)
            self._skip_first = False
        if len(self._partial) > self.max_line:
            self._partial, self._skip_first = b"", True  # the rest of that line is no line
        out.lines = [p.decode("utf-8", errors="replace") for p in pieces if p]
        return out

    def _open_at(self, size: int) -> None:
        if self.offset is not None and self.offset <= size:
            return  # a saved offset: go on from there
        self.offset = max(0, size - self.start_tail)
        self._skip_first = self.offset > 0

    def _restart(self) -> None:
        self.offset, self._partial, self._skip_first = 0, b"", False


@dataclass
class FollowResult:
    """One poll: the new steps, as samples for the progress tracker, and what changed."""

    samples: list[StepSample] = field(default_factory=list)
    detected: str | None = None  # ``auto`` chose this parser in this poll
    evidence: str = ""  # the line it was chosen on
    problem: str | None = None  # the file became unreadable in this poll (held until back)
    recovered: bool = False  # readable again after a problem
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0


class LogFollower:
    """A log file and the parser of its framework: steps out, with the time between them.

    A sample's ``step_s`` is the time from the previous step line to this one (its stated
    time per step x the steps it advanced, or the wall time between polls that saw them): a
    framework logs every N steps, and the hang detector's threshold (k x median step time)
    must be counted in those lines, not in single steps.
    """

    def __init__(self, tail: LogTail, progress: str) -> None:
        self.tail = tail
        self.progress = progress
        self.parser: LineParser = AutoParser() if progress == "auto" else make_parser(progress)
        self.problem: str | None = None
        self.last_step: int | None = None
        self._last_at: float | None = None

    @property
    def source(self) -> str:
        """The parser in use (``auto`` until it has chosen)."""
        if isinstance(self.parser, AutoParser):
            return self.parser.chosen.name if self.parser.chosen is not None else "auto"
        return self.parser.name

    def poll(self, now: float) -> FollowResult:
        read = self.tail.read()
        out = FollowResult(notes=read.notes, bytes_read=read.bytes_read)
        if read.problem is not None:
            if self.problem is None:
                out.problem = read.problem
            self.problem = read.problem
            return out
        if self.problem is not None:
            self.problem, out.recovered = None, True
        auto = self.parser if isinstance(self.parser, AutoParser) else None
        undecided = auto is not None and auto.chosen is None
        for line in read.lines:
            got = self.parser.parse(strip_ansi(line))
            if got is None or got.step > INT32_MAX:
                continue
            if self.last_step is not None and got.step <= self.last_step:
                continue  # a redraw of the same step, or an older attempt's line
            interval = 0.0
            if self.last_step is not None and got.step_s is not None:
                interval = got.step_s * (got.step - self.last_step)
            elif self._last_at is not None and now > self._last_at:
                interval = now - self._last_at  # the first step line since the last poll's
            interval = min(max(interval, 0.0), MAX_INTERVAL_S)
            out.samples.append(StepSample(step=got.step, step_s=interval, ts=max(now, 0.0)))
            self.last_step, self._last_at = got.step, now
        if undecided and auto is not None and auto.chosen is not None:
            out.detected, out.evidence = auto.chosen.name, auto.evidence
        return out
