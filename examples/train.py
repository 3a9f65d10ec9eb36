"""A small, real, deterministic PyTorch training job that trainwarden can supervise.

Launch with torchrun (CPU, gloo), one or more processes per "node":

    torchrun --nproc-per-node 2 examples/train.py --steps 100 --ckpt-every 10 --ckpt-dir /tmp/ck
    # or one process per node, as trainwarden's local scheduler starts it:
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 1 --master-addr 127.0.0.1 \
        --master-port 29500 examples/train.py ...

What it shows:
- DCP checkpoints (torch.distributed.checkpoint) every K steps into
  ``DIR/step-<8-digit step>/``; resume from ``TRAINWARDEN_RESUME_FROM`` (a step
  directory) restores parameters, optimizer state and the step counter. Data is a
  function of (seed, step, rank), so a resumed run computes exactly what an
  uninterrupted one does.
- Progress reporting through ``trainwarden.health.reporter``: every step (with the compute
  section marked: forward + backward, outside the gradient all-reduce), and every
  checkpoint, announced by rank 0 once all ranks finished saving.
- ``checkpoint-now`` requests from the daemon are honoured at the next step boundary
  (all ranks agree through a tiny all-reduce).
- One line per step in ``DIR/progress-rank<R>.log`` (with the attempt), so tests can
  prove no step was skipped and none repeated beyond the checkpoint resumed from.

Exit codes: 0 at the final step, 2 on bad arguments or an unusable resume directory.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

try:
    from trainwarden.health.reporter import Reporter
except ImportError:  # run from a source checkout without trainwarden installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from trainwarden.health.reporter import Reporter

IN_FEATURES = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, required=True, help="final step number")
    p.add_argument("--ckpt-every", type=int, required=True, help="checkpoint every K steps")
    p.add_argument("--ckpt-dir", required=True, help="checkpoint and progress-log directory")
    p.add_argument(
        "--step-time",
        type=float,
        default=0.0,
        help="extra seconds of 'compute' per step, so demos are watchable",
    )
    p.add_argument(
        "--slow-factor",
        type=float,
        default=float(os.environ.get("EXAMPLE_SLOW_FACTOR", "1.0")),
        help="multiply this process's --step-time (a simulated straggler; "
        "default $EXAMPLE_SLOW_FACTOR or 1)",
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args(argv)
    if args.steps < 1 or args.ckpt_every < 1:
        p.error("--steps and --ckpt-every must be at least 1")
    if args.step_time < 0 or args.slow_factor <= 0:
        p.error("--step-time must be >= 0 and --slow-factor > 0")
    return args


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)  # identical initial parameters on every rank
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, args.hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(args.hidden, 1),
    )


def batch_for(args: argparse.Namespace, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic regression data that depends only on (seed, step, rank)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
    teacher = torch.Generator().manual_seed(args.seed)
    w = torch.randn(IN_FEATURES, 1, generator=teacher)
    x = torch.randn(args.batch, IN_FEATURES, generator=g)
    y = torch.sin(x @ w) + 0.05 * torch.randn(args.batch, 1, generator=g)
    return x, y


def state_of(
    model: torch.nn.Module, opt: torch.optim.Optimizer, progress: torch.Tensor
) -> dict[str, object]:
    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd, "progress": progress}


def save(
    step: int,
    ckpt_dir: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rank: int,
    reporter: Reporter,
    log: ProgressLog,
) -> None:
    path = ckpt_dir / f"step-{step:08d}"
    dcp_save(state_of(model, opt, torch.tensor([step], dtype=torch.int64)), checkpoint_id=str(path))
    dist.barrier()  # every rank has finished writing; rank 0's .metadata is in place
    log.write(f"ckpt step={step}")
    if rank == 0:
        reporter.checkpoint_saved(step, str(path))


def resume(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load the checkpoint in ``path`` into model and optimizer; return its step."""
    if not (Path(path) / ".metadata").is_file():
        raise SystemExit(
            f"train.py: error: TRAINWARDEN_RESUME_FROM={path} is not a complete "
            "DCP checkpoint (no .metadata)"
        )
    progress = torch.zeros(1, dtype=torch.int64)
    state = state_of(model, opt, progress)
    dcp_load(state, checkpoint_id=path)
    set_state_dict(
        model,
        opt,
        model_state_dict=state["model"],  # type: ignore[arg-type]
        optim_state_dict=state["optim"],  # type: ignore[arg-type]
    )
    return int(progress.item())


class ProgressLog:
    """``progress-rank<R>.log``: one line per event, flushed at once (the job may be killed)."""

    def __init__(self, ckpt_dir: Path, rank: int, attempt: int) -> None:
        self._f = open(ckpt_dir / f"progress-rank{rank}.log", "a", buffering=1)  # noqa: SIM115
        self._attempt = attempt

    def write(self, text: str) -> None:
        self._f.write(f"attempt={self._attempt} {text} ts={time.time():.3f}\n")

    def close(self) -> None:
        self._f.close()


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def init_distributed() -> tuple[int, int]:
    if "RANK" not in os.environ:  # plain `python train.py`: a world of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def simulated_compute(seconds: float, slice_s: float = 0.005) -> None:
    """Stand-in for GPU work that advances only while the process runs: sleep in thin
    slices, so a throttled (periodically stopped) rank takes longer, as a slow GPU does."""
    for _ in range(max(1, round(seconds / slice_s))):
        time.sleep(slice_s)


def train_step(
    args: argparse.Namespace,
    step: int,
    rank: int,
    world: int,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    reporter: Reporter,
    loss_sum: torch.Tensor,
) -> float:
    """One step: forward + backward (the reported compute section), the gradient
    all-reduce, the optimizer step; returns the loss averaged over all ranks."""
    x, y = batch_for(args, step, rank)
    with reporter.compute():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        if args.step_time:
            simulated_compute(args.step_time * args.slow_factor)
    for p in model.parameters():  # gradient all-reduce: the communication part
        assert p.grad is not None
        dist.all_reduce(p.grad)
        p.grad /= world
    opt.step()
    loss_sum.fill_(loss.item())
    dist.all_reduce(loss_sum)
    return loss_sum.item() / world


def checkpoint_requested_anywhere(reporter: Reporter, flag: torch.Tensor) -> bool:
    """Whether any rank got a ``checkpoint-now``: every rank must take part (all-reduce)."""
    flag.fill_(1.0 if reporter.checkpoint_requested() else 0.0)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rank, world = init_distributed()
    attempt = int(os.environ.get("TRAINWARDEN_ATTEMPT", "0"))
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    reporter = Reporter.from_env()
    log = ProgressLog(ckpt_dir, rank, attempt)
    if os.environ.get("TRAINWARDEN_LOG_TIMINGS"):  # when the process group formed (bench)
        log.write(f"joined world={world}")
    model = build_model(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    resume_from = os.environ.get("TRAINWARDEN_RESUME_FROM")
    if resume_from:
        step = resume(resume_from, model, opt)
        log.write(f"resume step={step} from={resume_from}")
    if rank == 0:
        print(
            f"train: rank 0 of {world}, attempt {attempt}, starting after step {step}, "
            f"final step {args.steps}",
            flush=True,
        )
    flag = torch.zeros(1)
    loss_sum = torch.zeros(1)
    mean_loss = float("nan")
    try:
        while step < args.steps:
            step += 1
            mean_loss = train_step(args, step, rank, world, model, opt, reporter, loss_sum)
            log.write(f"step={step} loss={mean_loss!r}")
            reporter.step_done(step)
            requested = checkpoint_requested_anywhere(reporter, flag)
            if step % args.ckpt_every == 0 or step == args.steps or requested:
                save(step, ckpt_dir, model, opt, rank, reporter, log)
        digest = params_digest(model)
        log.write(f"done step={step} loss={mean_loss!r} params={digest}")
        if rank == 0:
            print(f"train: finished step {step} loss {mean_loss!r} params {digest}", flush=True)
    finally:
        reporter.close()
        log.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
