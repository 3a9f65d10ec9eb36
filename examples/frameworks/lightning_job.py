"""A tiny, unmodified Lightning job: what a user's script looks like to trainwarden.

No trainwarden import: the daemon follows its log (``--progress lightning`` reads the
``TQDMProgressBar``) and restarts it with ``TRAINWARDEN_RESUME_FROM`` naming the newest
complete ``.ckpt``, which goes to ``trainer.fit(..., ckpt_path=...)``. A linear model on random
data, so it runs on a CPU in seconds::

    python examples/frameworks/lightning_job.py --ckpt-dir /tmp/pl --steps 20 --save-steps 5

``ModelCheckpoint`` keeps every save as ``<ckpt-dir>/epoch=E-step=N.ckpt``. ``HANG_AT_STEP=N``
makes it sleep for ever once step N is done (before that step's save), as a job stuck in a
collective would, after printing ``hanging at step N``; with ``HANG_ONCE=FILE`` only if FILE
does not exist yet (it is created as the job hangs), so a restarted attempt runs through.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 8


class Tiny(L.LightningModule):
    """One linear layer regressing random targets."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(FEATURES, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def hang_due(step: int, at: int, once: str | None) -> bool:
    """Whether to hang now: at step ``at``, and (with ``once``) only the first time."""
    if at <= 0 or step != at:
        return False
    if once:
        try:
            with open(once, "x", encoding="utf-8") as f:  # exclusive: the first time only
                f.write(f"{step}\n")
        except FileExistsError:
            return False
    return True


class HangAt(L.Callback):
    """Stands in for an NCCL hang: after step ``step`` no progress, no exit."""

    def __init__(self, step: int, once: str | None, pace_s: float) -> None:
        self.step, self.once, self.pace_s = step, once, pace_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # one line per attempt, so a test can tell a resume from a fresh start in the log
        print(f"lightning_job: starting at global_step {trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.pace_s > 0:
            time.sleep(self.pace_s)
        if hang_due(trainer.global_step, self.step, self.once):
            print(f"lightning_job: hanging at step {self.step}", flush=True)
            while True:
                time.sleep(3600)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt-dir", required=True, help="where the .ckpt files go")
    p.add_argument("--steps", type=int, default=20, help="max_steps")
    p.add_argument("--save-steps", type=int, default=5, help="a checkpoint every N steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--step-sleep",
        type=float,
        default=float(os.environ.get("STEP_SLEEP", "0")),
        help="extra seconds per step (default $STEP_SLEEP or 0), for a watchable log",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, extra: Sequence[L.Callback] = ()) -> int:
    """Train; ``extra`` callbacks join the job's own (the tests add trainwarden's there, as a
    user adds it in one line: the job itself stays free of trainwarden)."""
    args = parse_args(argv)
    resume = os.environ.get("TRAINWARDEN_RESUME_FROM") or None
    print(f"lightning_job: ckpt_path={resume}", flush=True)
    L.seed_everything(args.seed, verbose=False)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.steps * 16, FEATURES, generator=gen)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))
    saves = ModelCheckpoint(
        dirpath=args.ckpt_dir, every_n_train_steps=args.save_steps, save_top_k=-1
    )
    hang = HangAt(
        int(os.environ.get("HANG_AT_STEP", "0")), os.environ.get("HANG_ONCE"), args.step_sleep
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        # the tqdm bar, not the Rich one Lightning picks when rich is installed: Rich draws
        # nothing into a file until the end, so a log would show no step until then
        callbacks=[hang, *extra, saves, TQDMProgressBar()],
        logger=False,
        enable_model_summary=False,
        default_root_dir=args.ckpt_dir,
    )
    trainer.fit(Tiny(), DataLoader(data, batch_size=4), ckpt_path=resume)
    print(f"lightning_job: done at global_step {trainer.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
