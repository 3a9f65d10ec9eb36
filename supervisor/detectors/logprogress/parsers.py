"""Step progress from the lines a training framework prints: one parser per framework.

Pure: a parser sees one line at a time (ANSI colour codes already stripped, ``\\r``-separated
progress-bar redraws already split) and returns the step it shows, or None. Where each format
comes from (format strings in the frameworks' own source):

- ``megatron``: Megatron-LM ``training_log`` (megatron/training/training.py):
  ``' iteration {:8d}/{:8d} |'``, ``' consumed samples: {:12d} |'``,
  ``' elapsed time per iteration (ms): {:.1f} |'`` -- printed every ``--log-interval``.
- ``torchtitan``: torchtitan's ``MetricsProcessor.log`` (torchtitan/components/metrics.py):
  ``f"{color.red}step: {step:2}  {color.green}loss: {loss:7.4f}  ..."``, under the logger
  format ``[titan] %(asctime)s - %(name)s - %(levelname)s - %(message)s``; some versions add
  ``step_time: X`` or ``elapsed_time_per_step: Xs``.
- ``hf``: the Hugging Face Trainer's ``ProgressCallback``: a plain ``tqdm(total=max_steps)``
  bar, no description: `` 10%|█         | 50/500 [00:25<03:45,  2.00it/s]`` (``s/it`` when
  slow). Its ``{'loss': ..., 'epoch': ...}`` dicts carry no step number and are not used;
  evaluation bars look the same, so only the bar with the largest total counts.
- ``lightning``: Lightning's ``TQDMProgressBar`` (``set_description(f"Epoch
  {trainer.current_epoch}")``, bar format ``... {n_fmt}/{total_fmt} [{elapsed}<{remaining},
  {rate_noinv_fmt}{postfix}]``): ``Epoch 3:  45%|████▌     | 45/100 [00:10<00:12,
  4.50it/s, v_num=0]``; the ``RichProgressBar`` form ``Epoch 3/9 ━━━ 45/100 0:00:10 • ...``
  too. N counts batches within the epoch: the step is ``epoch x total + N``.
- ``regex:PATTERN``: the user's own, with a named group ``step`` (and optionally ``step_s``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
NAMED = ("megatron", "torchtitan", "hf", "lightning")
CHOICES = ("auto", "reporter", *NAMED)  # plus "regex:PATTERN"
AUTO_ORDER = ("megatron", "torchtitan", "lightning", "hf")  # most specific first


@dataclass(frozen=True)
class LogStep:
    """A step a line shows; ``step_s`` the seconds per step the line states, if it does."""

    step: int
    step_s: float | None = None


class LineParser(Protocol):
    name: str

    def parse(self, line: str) -> LogStep | None: ...


def strip_ansi(line: str) -> str:
    return ANSI.sub("", line)


def _rate_s(text: str) -> float | None:
    """Seconds per step from a tqdm rate (``2.00it/s`` or ``1.50s/it``)."""
    m = re.search(r"([0-9]*\.?[0-9]+)\s*(it/s|s/it)", text)
    if m is None:
        return None
    value = float(m.group(1))
    if m.group(2) == "s/it":
        return value
    return 1.0 / value if value > 0 else None


class MegatronParser:
    name = "megatron"
    _ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*\d+\s*\|")
    _MS = re.compile(r"elapsed time per iteration \(ms\):\s*([0-9]*\.?[0-9]+)")

    def parse(self, line: str) -> LogStep | None:
        m = self._ITER.search(line)
        if m is None:
            return None
        ms = self._MS.search(line)
        return LogStep(int(m.group(1)), float(ms.group(1)) / 1000.0 if ms else None)


class TorchtitanParser:
    name = "torchtitan"
    _STEP = re.compile(r"\bstep:\s*(\d+)\s+loss:\s*")
    _TIME = re.compile(r"\b(?:step_time|elapsed_time_per_step):\s*([0-9]*\.?[0-9]+)")

    def parse(self, line: str) -> LogStep | None:
        m = self._STEP.search(line)
        if m is None:
            return None
        t = self._TIME.search(line)
        return LogStep(int(m.group(1)), float(t.group(1)) if t else None)


class HfParser:
    """The Trainer's bar; evaluation bars (smaller totals) are ignored."""

    name = "hf"
    _BAR = re.compile(r"^\s*\d{1,3}%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]")

    def __init__(self) -> None:
        self.total = 0

    def parse(self, line: str) -> LogStep | None:
        m = self._BAR.match(line)
        if m is None:
            return None
        total = int(m.group(2))
        if total < self.total:
            return None  # an evaluation or prediction bar
        self.total = total
        return LogStep(int(m.group(1)), _rate_s(m.group(3)))


class LightningParser:
    name = "lightning"
    _EPOCH = re.compile(r"^\s*Epoch\s+(\d+)(?:/\d+)?:?\s(.*)$")
    # an attempt resumed mid-epoch keeps the bar's first description until the next epoch
    # (Lightning 2.6: on_train_epoch_start is skipped when restarted mid-epoch)
    _RESUMED = re.compile(r"^\s*Training:?\s(.*)$")
    _COUNT = re.compile(r"(?:^|[\s|])(\d+)/(\d+|\?)(?=\s|$)")

    def __init__(self) -> None:
        self._epoch = -1
        self._epoch_max = 0
        self._offset = 0  # batches of earlier epochs, when the total is unknown ("?")

    def parse(self, line: str) -> LogStep | None:
        m = self._EPOCH.match(line)
        if m is not None:
            epoch, rest = int(m.group(1)), m.group(2)
        else:
            r = self._RESUMED.match(line)
            if r is None:
                return None
            epoch, rest = max(self._epoch, 0), r.group(1)  # the epoch it resumed in
        c = self._COUNT.search(rest)
        if c is None:
            return None
        n = int(c.group(1))
        if epoch > self._epoch:
            if self._epoch >= 0:
                self._offset += self._epoch_max
            self._epoch, self._epoch_max = epoch, 0
        elif epoch < self._epoch:
            return None
        self._epoch_max = max(self._epoch_max, n)
        total = c.group(2)
        step = epoch * int(total) + n if total != "?" else self._offset + n
        return LogStep(step, _rate_s(rest))


class RegexParser:
    name = "regex"

    def __init__(self, pattern: str) -> None:
        self.pattern = compile_user_regex(pattern)

    def parse(self, line: str) -> LogStep | None:
        m = self.pattern.search(line)
        if m is None:
            return None
        try:
            step = int(m.group("step"))
            raw = m.groupdict().get("step_s")
            return LogStep(step, float(raw) if raw else None)
        except (TypeError, ValueError):
            return None


def compile_user_regex(pattern: str) -> re.Pattern[str]:
    """The user's pattern, compiled; ValueError with a sentence when it cannot serve."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"progress regex {pattern!r} does not compile: {exc}") from None
    if "step" not in rx.groupindex:
        raise ValueError(
            f"progress regex {pattern!r} has no named group 'step' (write (?P<step>\\d+))"
        )
    return rx


def check_progress(value: str) -> str:
    """``value`` if it names a progress source (see :data:`CHOICES`, or ``regex:PATTERN``);
    ValueError with a sentence otherwise."""
    if value.startswith("regex:"):
        compile_user_regex(value[len("regex:") :])
        return value
    if value not in CHOICES:
        raise ValueError(f"progress {value!r} is not one of {', '.join(CHOICES)} or regex:PATTERN")
    return value


def make_parser(name: str) -> LineParser:
    """A fresh parser for a named framework or ``regex:PATTERN`` (parsers keep state)."""
    if name.startswith("regex:"):
        return RegexParser(name[len("regex:") :])
    parsers: dict[str, type[LineParser]] = {
        "megatron": MegatronParser,
        "torchtitan": TorchtitanParser,
        "hf": HfParser,
        "lightning": LightningParser,
    }
    if name not in parsers:
        raise ValueError(f"no log parser for progress {name!r}")
    return parsers[name]()


class AutoParser:
    """Tries every framework's parser until one reads a step; then that one alone."""

    name = "auto"

    def __init__(self) -> None:
        self._candidates = [make_parser(n) for n in AUTO_ORDER]
        self.chosen: LineParser | None = None
        self.evidence = ""  # the line it was chosen on

    def parse(self, line: str) -> LogStep | None:
        if self.chosen is not None:
            return self.chosen.parse(line)
        for p in self._candidates:
            got = p.parse(line)
            if got is not None:
                self.chosen, self.evidence = p, line.strip()[:200]
                return got
        return None
