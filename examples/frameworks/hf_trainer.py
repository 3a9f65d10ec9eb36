"""A tiny, unmodified Hugging Face Trainer job: what a user's script looks like to trainwarden.

No trainwarden import: the daemon follows its log (``--progress hf`` reads the Trainer's tqdm
bar) and restarts it with ``TRAINWARDEN_RESUME_FROM`` naming the newest complete
``<output_dir>/checkpoint-N``, which goes to ``trainer.train(resume_from_checkpoint=...)``.
The model is a one-layer GPT-2 built from a local config and the data are random tokens, so it
runs on a CPU in seconds and never touches the Hub::

    HF_HUB_OFFLINE=1 python examples/frameworks/hf_trainer.py --output-dir /tmp/hf \\
        --steps 20 --save-steps 5

``HANG_AT_STEP=N`` makes it sleep for ever once step N is done (before that step's save), as
a job stuck in a collective would; it prints ``hanging at step N`` first, so a test knows.
With ``HANG_ONCE=FILE`` it hangs only if FILE does not exist yet (and creates it as it
hangs), so the restarted attempt of the same command runs through.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the Hub: the model comes from a config
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# after the offline switches, which transformers reads on import
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

VOCAB, SEQ = 64, 16


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Token sequences that depend only on (seed, index): a resumed run sees the same data."""

    def __init__(self, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (size, SEQ), generator=gen)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


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


class HangAt(TrainerCallback):
    """Stands in for an NCCL hang: at the end of step ``step`` the job stops making progress
    for ever (its log stops), without exiting."""

    def __init__(self, step: int, once: str | None) -> None:
        self.step, self.once = step, once

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # one line per attempt, so a test can tell a resume from a fresh start in the log
        print(f"hf_trainer: starting at global_step {state.global_step}", flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if hang_due(state.global_step, self.step, self.once):
            print(f"hf_trainer: hanging at step {self.step}", flush=True)
            while True:
                time.sleep(3600)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="where checkpoint-N folders go")
    p.add_argument("--steps", type=int, default=20, help="max_steps")
    p.add_argument("--save-steps", type=int, default=5, help="a checkpoint every N steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--step-sleep",
        type=float,
        default=float(os.environ.get("STEP_SLEEP", "0")),
        help="extra seconds per step (default $STEP_SLEEP or 0), for a watchable log",
    )
    return p.parse_args(argv)


class Pace(TrainerCallback):
    """Extra seconds per step, so the log shows a steady step time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def main(argv: list[str] | None = None, extra: Sequence[TrainerCallback] = ()) -> int:
    """Train; ``extra`` callbacks join the job's own (the tests add trainwarden's there, as a
    user adds it in one line: the job itself stays free of trainwarden)."""
    args = parse_args(argv)
    resume = os.environ.get("TRAINWARDEN_RESUME_FROM") or None
    print(f"hf_trainer: resume_from_checkpoint={resume}", flush=True)
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=SEQ)
    model = GPT2LMHeadModel(config)
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=False,  # the bar is what the daemon reads (by default off above WARN)
        dataloader_num_workers=0,
    )
    callbacks: list[TrainerCallback] = [
        HangAt(int(os.environ.get("HANG_AT_STEP", "0")), os.environ.get("HANG_ONCE") or None)
    ]
    if args.step_sleep > 0:
        callbacks.append(Pace(args.step_sleep))
    callbacks.extend(extra)
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=RandomTokens(args.steps * args.batch * 4, args.seed),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    print(f"hf_trainer: done at global_step {trainer.state.global_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
