"""Hugging Face Trainer: ``Trainer(..., callbacks=[trainwarden_callback()])``.

Every rank reports its optimizer steps (``on_step_end``: ``state.global_step``) through its
own :class:`~trainwarden.health.reporter.Reporter` (``Reporter.from_env()``: the run,
attempt and rank come from the job's environment), so the daemon sees per-rank step times
and can score stragglers. A ``checkpoint-now`` request (before a node is drained) becomes
``control.should_save = True`` on all ranks at once (they agree by one all-reduce), and the
Trainer's own save follows at that step; rank 0 then reports
``<output_dir>/checkpoint-<global_step>`` (``on_save``), which the daemon checks on disk
before it counts. Imports transformers only when a callback is made.
"""

from __future__ import annotations

import os
from typing import Any

from trainwarden.health.integrations.common import StepHooks, missing
from trainwarden.health.reporter import Reporter

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def callback_class(base: type[Any]) -> type[Any]:
    """The callback on ``base`` (``transformers.TrainerCallback``; a stand-in in tests)."""

    class TrainwardenCallback(base):  # type: ignore[misc]
        """Steps, checkpoints and checkpoint-now requests between the Trainer and trainwarden."""

        def __init__(self, hooks: StepHooks) -> None:
            super().__init__()
            self.hooks = hooks

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.hooks.step(int(state.global_step)):
                control.should_save = True
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.is_world_process_zero:
                path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}-{state.global_step}")
                self.hooks.saved(int(state.global_step), path)
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.hooks.close()
            return control

    return TrainwardenCallback


def trainwarden_callback(reporter: Reporter | None = None, *, sync_every: int = 1) -> Any:
    """A ``TrainerCallback`` reporting to trainwarden (``Reporter.from_env()`` by default;
    the checkpoint-now request is agreed on every ``sync_every`` steps)."""
    try:
        from transformers import TrainerCallback  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise missing("Hugging Face Trainer", "transformers", exc) from exc
    return callback_class(TrainerCallback)(StepHooks(reporter, sync_every=sync_every))
