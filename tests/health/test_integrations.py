"""The Hugging Face and Lightning callbacks. Neither transformers nor lightning is installed
here (no heavy dependency for a test): where the real class is absent the callbacks' logic
runs on a minimal stand-in base class, and the one-line constructor's ImportError sentence is
checked; with the framework installed, the real class is used."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest

from trainwarden.health.integrations import hf, lightning
from trainwarden.health.integrations.common import StepHooks

HAVE_HF = importlib.util.find_spec("transformers") is not None
HAVE_PL = any(importlib.util.find_spec(m) is not None for m in ("lightning", "pytorch_lightning"))


class FakeReporter:
    """What the callbacks call of trainwarden.health.reporter.Reporter."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.saved: list[tuple[int, str]] = []
        self.requests = 0
        self.closed = False

    def step_done(self, step: int, step_s: float | None = None) -> None:
        self.steps.append(step)

    def checkpoint_saved(self, step: int, path: str) -> None:
        self.saved.append((step, path))

    def checkpoint_requested(self) -> bool:
        if self.requests:
            self.requests -= 1
            return True
        return False

    def close(self) -> None:
        self.closed = True


class StandIn:
    """Where the framework's own callback base class is absent."""


def hooks(rep: FakeReporter, **kw: Any) -> StepHooks:
    return StepHooks(rep, **kw)  # type: ignore[arg-type]


@pytest.mark.skipif(HAVE_HF, reason="transformers is installed")
def test_hf_without_transformers_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="needs the 'transformers' package") as err:
        hf.trainwarden_callback(FakeReporter())  # type: ignore[arg-type]
    assert err.value.name == "transformers"


@pytest.mark.skipif(HAVE_PL, reason="lightning is installed")
def test_lightning_without_lightning_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="needs the 'lightning' package"):
        lightning.trainwarden_callback(FakeReporter())  # type: ignore[arg-type]


def test_hf_callback_reports_steps_and_saves_when_asked() -> None:
    rep = FakeReporter()
    agreed: list[bool] = []

    def agree(flag: bool) -> bool:
        agreed.append(flag)
        return flag

    cb = hf.callback_class(StandIn)(hooks(rep, agree=agree, sync_every=2))
    args = SimpleNamespace(output_dir="/ck/run")
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    control = SimpleNamespace(should_save=False)
    rep.requests = 1
    for step in (1, 1, 2, 3):  # a repeated global_step is reported once
        state.global_step = step
        cb.on_step_end(args, state, control)
    assert rep.steps == [1, 2, 3]
    assert agreed == [True]  # asked on even steps only: the request seen at step 2
    assert control.should_save is True
    cb.on_save(args, state, control)
    assert rep.saved == [(3, "/ck/run/checkpoint-3")]
    cb.on_save(args, SimpleNamespace(global_step=3, is_world_process_zero=False), control)
    assert len(rep.saved) == 1  # rank 0 reports the save, once
    cb.on_train_end(args, state, control)
    assert rep.closed


def test_lightning_callback_saves_on_request_and_reports_model_checkpoint_saves() -> None:
    rep = FakeReporter()
    cb = lightning.callback_class(StandIn)(hooks(rep, agree=lambda flag: flag))
    saves: list[str] = []
    ck = SimpleNamespace(dirpath="/ck/run", last_model_path="", best_model_path="")
    trainer = SimpleNamespace(
        global_step=0,
        is_global_zero=True,
        default_root_dir="/root",
        checkpoint_callback=ck,
        save_checkpoint=saves.append,
    )
    for step in (1, 1, 2):  # accumulation: two batches of step 1
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, 0)
    assert rep.steps == [1, 2]
    rep.requests = 1
    trainer.global_step = 3
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert saves == ["/ck/run/trainwarden-step=3.ckpt"]
    assert rep.saved == [(3, "/ck/run/trainwarden-step=3.ckpt")]
    # ModelCheckpoint: the step from the checkpoint being built, the path once written
    cb.on_save_checkpoint(trainer, None, {"global_step": 3})
    ck.last_model_path = "/ck/run/epoch=0-step=3.ckpt"
    cb.on_train_epoch_end(trainer, None)
    cb.on_train_epoch_end(trainer, None)
    assert rep.saved[1:] == [(3, "/ck/run/epoch=0-step=3.ckpt")]
    trainer.checkpoint_callback = None
    assert lightning.checkpoint_dir(trainer) == "/root/checkpoints"
    cb.on_fit_end(trainer, None)
    assert rep.closed


def test_without_torch_distributed_a_rank_agrees_with_itself() -> None:
    rep = FakeReporter()
    h = StepHooks(rep)  # type: ignore[arg-type]
    rep.requests = 1
    assert h.step(1) is True and h.step(2) is False
