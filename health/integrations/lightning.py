"""Lightning: ``Trainer(..., callbacks=[trainwarden_callback()])``.

Every rank reports each new optimizer step (``trainer.global_step``, read at the end of each
training batch, so gradient accumulation counts once) through its own
:class:`~trainwarden.health.reporter.Reporter` (``Reporter.from_env()``). A ``checkpoint-now``
request is agreed on by all ranks (one all-reduce) and becomes
``trainer.save_checkpoint(<dir>/trainwarden-step=<N>.ckpt)`` on all of them (a collective
save; ``<dir>`` is the ModelCheckpoint's ``dirpath``, else ``<default_root_dir>/checkpoints``);
rank 0 reports it when it returns. Saves of the ``ModelCheckpoint`` callback are reported
too, once its ``last_model_path``/``best_model_path`` shows the new file. Imports
``lightning`` (or the older ``pytorch_lightning``) only when a callback is made.
"""

from __future__ import annotations

import os
from typing import Any

from trainwarden.health.integrations.common import StepHooks, missing
from trainwarden.health.reporter import Reporter


def _saved_path(trainer: Any) -> str:
    ck = getattr(trainer, "checkpoint_callback", None)
    if ck is None:
        return ""
    return str(getattr(ck, "last_model_path", "") or getattr(ck, "best_model_path", "") or "")


def checkpoint_dir(trainer: Any) -> str:
    ck = getattr(trainer, "checkpoint_callback", None)
    dirpath = getattr(ck, "dirpath", None) if ck is not None else None
    return str(dirpath or os.path.join(trainer.default_root_dir, "checkpoints"))


def callback_class(base: type[Any]) -> type[Any]:
    """The callback on ``base`` (``lightning.pytorch.Callback``; a stand-in in tests)."""

    class TrainwardenCallback(base):  # type: ignore[misc]
        """Steps, checkpoints and checkpoint-now requests between Lightning and trainwarden."""

        def __init__(self, hooks: StepHooks) -> None:
            super().__init__()
            self.hooks = hooks
            self._seen_path = ""
            self._pending_step: int | None = None  # the step of the save being written

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
            # called as the checkpoint is built, before it is written: remember its step
            self._pending_step = int(checkpoint.get("global_step", trainer.global_step))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self._report_saved(trainer)
            step = int(trainer.global_step)
            if self.hooks.step(step):
                path = os.path.join(checkpoint_dir(trainer), f"trainwarden-step={step}.ckpt")
                trainer.save_checkpoint(path)
                if trainer.is_global_zero:
                    self.hooks.saved(step, path)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._report_saved(trainer)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self._report_saved(trainer)
            self.hooks.close()

        def _report_saved(self, trainer: Any) -> None:
            path = _saved_path(trainer)
            if not path or path == self._seen_path:
                return
            self._seen_path = path
            if trainer.is_global_zero and self._pending_step is not None:
                self.hooks.saved(self._pending_step, path)

    return TrainwardenCallback


def trainwarden_callback(reporter: Reporter | None = None, *, sync_every: int = 1) -> Any:
    """A Lightning ``Callback`` reporting to trainwarden (``Reporter.from_env()`` by default;
    the checkpoint-now request is agreed on every ``sync_every`` steps)."""
    try:
        from lightning.pytorch import Callback  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        try:
            # the same class under its older package name (a distinct type to mypy)
            from pytorch_lightning import (  # type: ignore[assignment, import-not-found, unused-ignore]
                Callback,
            )
        except ImportError as exc:
            raise missing("Lightning", "lightning", exc) from exc
    return callback_class(Callback)(StepHooks(reporter, sync_every=sync_every))
