"""Megatron-LM checkpoints: ``<save>/iter_<7-digit iteration>/`` and the tracker file.

From ``megatron/training/checkpointing.py`` (``get_checkpoint_name``, ``save_checkpoint``,
``read_metadata``) and ``megatron/core/dist_checkpointing/serialization.py`` (``save``):

- ``latest_checkpointed_iteration.txt`` holds the iteration (or ``release``) that
  ``--load`` resumes from. Rank 0 writes it in ``iter_finalize_fn`` after every rank has
  saved: after a barrier for a synchronous save, as the last finalize step of an async one.
  So an iteration newer than the tracker never finished saving and is refused here, and
  Megatron would not load it anyway.
- ``torch_dist`` (``--ckpt-format torch_dist``): DCP shards ``__R_N.distcp`` and DCP's
  ``.metadata`` (written by the coordinator once all shards are written), then
  ``metadata.json`` (``{"sharded_backend": "torch_dist", ...}``, written by
  ``metadata_finalize_fn``: for an async save only once the checkpoint is complete). Rank 0
  also writes ``common.pt`` (the non-tensor entries) first; ``load`` fails without it, so it
  is required when ``metadata.json``'s ``common_backend`` is ``torch`` (its default).
- legacy (``--ckpt-format torch``): every model-parallel rank ``torch.save``s
  ``mp_rank_<tp:02d>[_<pp:03d>][_<ep:03d>]/model_optim_rng.pt`` (and, with the
  distributed optimizer, ``distrib_optim.pt`` beside it); each must be a complete torch zip
  and the ranks must form a full tensor x pipeline (x expert) grid.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainwarden.supervisor.checkpoints.base import (
    CheckpointInfo,
    Contract,
    Judged,
    Layout,
    TrackerRewrite,
    Validation,
    scan_dirs,
)
from trainwarden.supervisor.checkpoints.dcp import METADATA_FILE, has_dcp_files, validate_dcp
from trainwarden.supervisor.checkpoints.files import check_torch_zip, read_json

TRACKER = "latest_checkpointed_iteration.txt"
ITER_DIR_RE = re.compile(r"^iter_(\d{7,12})$")
CONFIG_FILE = "metadata.json"  # dist_checkpointing's CheckpointingConfig
COMMON_FILE = "common.pt"
MODEL_FILE = "model_optim_rng.pt"
DISTRIB_OPTIM_FILE = "distrib_optim.pt"
_RANK_DIR_RE = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")
_MAX_TRACKER_BYTES = 4096


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


@dataclass(frozen=True)
class Tracker:
    """What the tracker file says: ``iteration`` when it names one."""

    raw: str | None  # None: no tracker file
    iteration: int | None
    release: bool = False

    @property
    def problem(self) -> str | None:
        if self.raw is None:
            return f"no {TRACKER}"
        if self.iteration is None and not self.release:
            return f"{TRACKER} is unreadable: {self.raw[:40]!r}"
        return None


def read_tracker(root: Path) -> Tracker:
    try:
        with (root / TRACKER).open("rb") as f:
            raw = f.read(_MAX_TRACKER_BYTES).decode("utf-8", "replace")
    except OSError:
        return Tracker(None, None)
    text = raw.strip()
    if text == "release":
        return Tracker(raw, None, release=True)
    try:
        value = int(text)
    except ValueError:
        return Tracker(raw, None)
    return Tracker(raw, value) if value >= 0 else Tracker(raw, None)


class MegatronLayout(Layout):
    name = "megatron"
    title = "Megatron-LM (iter_N)"

    def evidence(self, names: Mapping[str, bool]) -> int:
        count = sum(1 for n, is_dir in names.items() if is_dir and ITER_DIR_RE.match(n))
        return count + (2 if TRACKER in names else 0)

    def step_of(self, name: str) -> int | None:
        match = ITER_DIR_RE.match(name)
        return int(match.group(1)) if match else None

    def discover(self, root: Path) -> list[CheckpointInfo]:
        return scan_dirs(root, ITER_DIR_RE)

    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        try:
            if not path.is_dir():
                return Validation(False, f"{path} is not a directory")
            if (path / CONFIG_FILE).exists() or has_dcp_files(path):
                return _validate_dist(path, use_torch)
            return _validate_legacy(path)
        except OSError as exc:
            return Validation(False, f"cannot read {path}: {exc.strerror or exc}")

    def judge(
        self, root: Path, found: list[CheckpointInfo], *, exhaustive: bool, use_torch: bool | None
    ) -> tuple[list[Judged], list[str]]:
        tracker = read_tracker(root)
        notes: list[str] = []
        if tracker.problem is not None:
            notes.append(f"{tracker.problem}: iterations are judged by their files alone")
        elif tracker.release:
            notes.append(f"{TRACKER} names the release checkpoint; iterations judged by files")
        else:
            notes.append(f"{TRACKER} names iteration {tracker.iteration}")
            if tracker.iteration not in {i.step for i in found}:
                notes.append(f"iteration {tracker.iteration} named by {TRACKER} has no folder")
        out: list[Judged] = []
        have_valid = False
        for info in found:
            if have_valid and not exhaustive:
                break
            verdict = self.validate(Path(info.path), use_torch=use_torch)
            bound = tracker.iteration
            if verdict.valid and bound is not None and info.step > bound:
                verdict = Validation(
                    False,
                    f"newer than iteration {bound} in {TRACKER}: Megatron-LM writes the tracker "
                    "only after every rank finished a save, so this one did not finish",
                )
            if not verdict.valid and bound is not None and info.step == bound:
                notes[0] = (
                    f"{TRACKER} names iteration {bound}, which is not valid "
                    f"({verdict.reason}): falling back to an older iteration"
                )
            out.append(Judged(info, verdict))
            have_valid = have_valid or verdict.valid
        return out, notes

    def contract(self, root: Path, chosen: CheckpointInfo, *, now: float) -> Contract:
        """Megatron-LM resumes from what the tracker names (``--load`` is the root), so the
        tracker must name the chosen iteration: rewritten when it names another one."""
        tracker = read_tracker(root)
        if tracker.iteration == chosen.step:
            return Contract()
        if tracker.release:
            return Contract(notes=(f"{TRACKER} names the release checkpoint: left as it is",))
        try:
            rewrite = point_tracker(root, chosen.step, now=now, old=tracker.raw)
        except OSError as exc:
            return Contract(
                notes=(
                    f"could not point {TRACKER} at iteration {chosen.step}: "
                    f"{exc.strerror or exc}; Megatron-LM will load what it names",
                )
            )
        said = "was missing" if tracker.raw is None else f"named {tracker.raw.strip()!r}"
        return Contract(
            tracker=rewrite,
            notes=(f"{TRACKER} {said}; now names iteration {chosen.step}",),
        )


def point_tracker(root: Path, iteration: int, *, now: float, old: str | None) -> TrackerRewrite:
    """Atomically make the tracker name ``iteration``; the old content, if any, is kept
    beside it as ``<tracker>.trainwarden-<UTC time>`` first, so it is never lost."""
    tracker = root / TRACKER
    kept_at: Path | None = None
    if old is not None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        kept_at = root / f"{TRACKER}.trainwarden-{stamp}"
        n = 1
        while kept_at.exists():
            kept_at = root / f"{TRACKER}.trainwarden-{stamp}-{n}"
            n += 1
        _write_atomic(kept_at, old)
    _write_atomic(tracker, str(iteration))
    return TrackerRewrite(str(tracker), old, str(iteration), str(kept_at) if kept_at else None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.trainwarden-tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _validate_dist(path: Path, use_torch: bool | None) -> Validation:
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        has_meta = (path / METADATA_FILE).exists()
        what = (
            f"{METADATA_FILE} but no {CONFIG_FILE}"
            if has_meta
            else (f"shards but no {METADATA_FILE} or {CONFIG_FILE}")
        )
        return Validation(
            False,
            f"torch_dist save not finished: {what} (Megatron-LM writes {CONFIG_FILE} after "
            "the shards, in the finalize step of an async save)",
        )
    config, why = read_json(config_path)
    if why is not None:
        return Validation(False, why)
    backend = config.get("sharded_backend") if isinstance(config, dict) else None
    if backend != "torch_dist":
        return Validation(False, f"{CONFIG_FILE}: sharded_backend {backend!r} is not supported")
    verdict = validate_dcp(path, use_torch=use_torch)
    if not verdict.valid:
        return verdict
    if config.get("common_backend", "torch") == "torch" or (path / COMMON_FILE).exists():
        common = check_torch_zip(path / COMMON_FILE)
        if not common.valid:
            return common
    return Validation(True, f"torch_dist: {verdict.reason}")


def _validate_legacy(path: Path) -> Validation:
    ranks: dict[tuple[int, int, int], Path] = {}
    has_pp = has_ep = False
    for entry in os.scandir(path):
        match = _RANK_DIR_RE.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        tp, pp, ep = match.group(1), match.group(2), match.group(3)
        has_pp, has_ep = has_pp or pp is not None, has_ep or ep is not None
        ranks[(int(tp), int(pp or 0), int(ep or 0))] = Path(entry.path)
    if not ranks:
        return Validation(
            False, f"no mp_rank_*/{MODEL_FILE} and no {CONFIG_FILE}: nothing was saved here"
        )
    sizes = [max(k[i] for k in ranks) + 1 for i in range(3)]
    missing = [
        (t, p, e)
        for t in range(sizes[0])
        for p in range(sizes[1])
        for e in range(sizes[2])
        if (t, p, e) not in ranks
    ]
    if missing:
        t, p, e = missing[0]
        name = (
            f"mp_rank_{t:02d}" + (f"_{p:03d}" if has_pp else "") + (f"_{e:03d}" if has_ep else "")
        )
        return Validation(
            False, f"{len(missing)} model-parallel rank folder(s) missing, first {name}"
        )
    distrib = any((d / DISTRIB_OPTIM_FILE).exists() for d in ranks.values())
    for d in sorted(ranks.values()):
        files = [MODEL_FILE, DISTRIB_OPTIM_FILE] if distrib else [MODEL_FILE]
        for fname in files:
            verdict = check_torch_zip(d / fname, label=f"{d.name}/{fname}")
            if not verdict.valid:
                return verdict
    return Validation(
        True, f"legacy: {len(ranks)} model-parallel rank(s), every {MODEL_FILE} complete"
    )
