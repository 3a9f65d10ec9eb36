"""DeepSpeed checkpoints: ``<save_dir>/global_step<N>/`` (the default tag) and ``latest``.

From ``deepspeed/runtime/engine.py`` (``save_checkpoint``, ``_save_checkpoint``,
``_save_zero_checkpoint``, ``_get_ckpt_name``, ``_get_rank_zero_ckpt_name``):

- every rank first writes the model states: ``mp_rank_<mp:02d>_model_states.pt`` (by data
  parallel rank 0), or under ZeRO-3 ``zero_pp_rank_<dp>_mp_rank_<mp:02d>_model_states.pt``
  for every data parallel rank; they record ``dp_world_size`` and ``mp_world_size``, and
  ``param_shapes`` is set exactly when the optimizer state is saved apart (ZeRO or the bf16
  optimizer);
- then, with ZeRO or bf16, every data parallel rank writes
  ``[bf16_]zero_pp_rank_<dp>_mp_rank_<mp:02d>_optim_states.pt``;
- then rank 0 writes the tag into ``latest`` and all ranks meet at a barrier. Rank 0
  writes ``latest`` after *its own* files, before that barrier, so ``latest`` is no proof
  that the other ranks finished (and it is absent with ``save_latest=False``): a tag is
  judged by its files, ``latest`` is only reported.

Files are ``torch.save`` zips, checked structurally; the world sizes are read from the model
states' ``data.pkl`` by scanning it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from trainwarden.supervisor.checkpoints.base import (
    CheckpointInfo,
    Contract,
    Judged,
    Layout,
    Validation,
    scan_dirs,
)
from trainwarden.supervisor.checkpoints.files import (
    OTHER,
    check_torch_zip,
    pickle_fields,
    torch_pickle,
)

LATEST = "latest"
TAG_DIR_RE = re.compile(r"^global_step(\d{1,12})$")
_MODEL_RE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")
_ZERO3_MODEL_RE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d{2})_model_states\.pt$")
_OPTIM_RE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d{2})_optim_states\.pt$")
_MAX_LATEST_BYTES = 4096


def read_latest(root: Path) -> str | None:
    try:
        with (root / LATEST).open("rb") as f:
            return f.read(_MAX_LATEST_BYTES).decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def validate_tag(path: Path) -> Validation:
    """Whether the DeepSpeed tag folder ``path`` holds every rank's files, complete."""
    try:
        if not path.is_dir():
            return Validation(False, f"{path} is not a directory")
        names = [e.name for e in os.scandir(path) if e.is_file()]
    except OSError as exc:
        return Validation(False, f"cannot read {path}: {exc.strerror or exc}")
    model = {(0, int(m.group(1))): n for n in names if (m := _MODEL_RE.match(n))}
    zero3 = {
        (int(m.group(1)), int(m.group(2))): n for n in names if (m := _ZERO3_MODEL_RE.match(n))
    }
    optim = {(int(m.group(2)), int(m.group(3))): n for n in names if (m := _OPTIM_RE.match(n))}
    if zero3:
        model = zero3  # ZeRO-3: every dp rank has its own model states
    if not model:
        what = f"{len(optim)} optimizer state file(s) but " if optim else ""
        return Validation(False, f"{what}no *_model_states.pt: nothing usable was saved here")
    first = model.get((0, 0))
    if first is None:
        return Validation(False, "the model states of model-parallel rank 0 are missing")
    verdict = check_torch_zip(path / first)
    if not verdict.valid:
        return verdict
    fields = pickle_fields(
        torch_pickle(path / first) or b"", ("dp_world_size", "mp_world_size", "param_shapes")
    )
    mp_size = _size(fields.get("mp_world_size"), {k[1] for k in model})
    dp_size = _size(fields.get("dp_world_size"), {k[0] for k in (*zero3, *optim)})
    model_dp = dp_size if zero3 else 1
    # param_shapes is saved only when the optimizer state lives in separate shard files
    split_optim = bool(optim) or fields.get("param_shapes") is OTHER
    for files, dps, what, why in (
        (model, model_dp, "model states", "not every rank finished this save"),
        (
            optim if split_optim else {},
            dp_size if split_optim else 0,
            "ZeRO optimizer states",
            "DeepSpeed writes them after the model states, so this save did not finish",
        ),
    ):
        absent = [(d, t) for t in range(mp_size) for d in range(dps) if (d, t) not in files]
        if absent:
            r, mp_rank = absent[0]
            return Validation(
                False,
                f"{what} missing for {len(absent)} of {dps * mp_size} rank(s) (first: dp rank "
                f"{r}, mp rank {mp_rank:02d}): {why}",
            )
        for key in sorted(files):
            verdict = check_torch_zip(path / files[key])
            if not verdict.valid:
                return verdict
    optim_note = f", ZeRO optimizer states of {dp_size} dp rank(s)" if split_optim else ""
    return Validation(True, f"complete: model states of {mp_size} mp rank(s){optim_note}")


def _size(recorded: object, seen: set[int]) -> int:
    """A world size as the model states record it, else as the files present suggest."""
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return max(seen) + 1 if seen else 1


class DeepSpeedLayout(Layout):
    name = "deepspeed"
    title = "DeepSpeed (global_stepN)"

    def evidence(self, names: Mapping[str, bool]) -> int:
        count = sum(1 for n, is_dir in names.items() if is_dir and TAG_DIR_RE.match(n))
        return count + (1 if names.get(LATEST) is False else 0)

    def step_of(self, name: str) -> int | None:
        match = TAG_DIR_RE.match(name)
        return int(match.group(1)) if match else None

    def discover(self, root: Path) -> list[CheckpointInfo]:
        return scan_dirs(root, TAG_DIR_RE)

    def validate(self, path: Path, *, use_torch: bool | None = None) -> Validation:
        return validate_tag(path)

    def judge(
        self, root: Path, found: list[CheckpointInfo], *, exhaustive: bool, use_torch: bool | None
    ) -> tuple[list[Judged], list[str]]:
        out, _ = super().judge(root, found, exhaustive=exhaustive, use_torch=use_torch)
        latest = read_latest(root)
        notes = [f"{LATEST} names {latest}" if latest else f"no {LATEST} file"]
        return out, notes

    def contract(self, root: Path, chosen: CheckpointInfo, *, now: float) -> Contract:
        """DeepSpeed loads ``load_checkpoint(load_dir, tag)``: the tag is passed, so
        ``latest`` (which may name a newer, unfinished tag) is not needed and left alone."""
        tag = Path(chosen.path).name
        latest = read_latest(root)
        notes = () if latest in (None, tag) else (f"{LATEST} names {latest}: load tag {tag}",)
        return Contract(env={"TRAINWARDEN_RESUME_TAG": tag}, notes=notes)
