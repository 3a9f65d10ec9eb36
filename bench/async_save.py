"""What a checkpoint costs training, synchronous against asynchronous, measured the way the
daemon measures it.

    .venv/bin/python bench/async_save.py --json                  # ~1 min on 2 idle CPU cores
    .venv/bin/python bench/async_save.py --json --device cuda --size-mb 4000 --process

A real training loop (torch: an MLP with Adam, sized by ``--size-mb`` of parameters, on the
CPU or a GPU) runs three phases in one process: ``baseline`` (no saves), ``sync``
(``torch.distributed.checkpoint.save`` every ``--every`` steps) and ``async``
(``dcp.async_save``, the checkpoint reported when its future completes, as
examples/README.md asks). Every step's end time goes to the daemon's own
``GoodputLedger`` as the reporter would send it, every checkpoint report too, and the figures
are what the ledger makes of them (``save_stalls``, ``background``): the stall of a
synchronous save; an asynchronous save's stall (the copy to host memory), its background write
and the training time that write cost (steps slower than the median while it ran) -- the three
figures the checkpoint-interval advice uses, and the one ``trainwarden sim llama3-16k`` can
only bound from published figures (``async_write_loss_s``). ``raw`` gives the same from the
loop's own clocks, to check the ledger against.

On this machine's 2 CPU cores the background write competes with training for the cores, so
the slowdown is far larger than on a GPU node (where training runs on the GPU); the figure
that matters comes from ``--device cuda`` on the hardware of the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict_saver import (
    AsyncCheckpointerType,
    AsyncSaveResponse,
    async_save,
    save,
)

from trainwarden.health.report import StepSample
from trainwarden.supervisor.daemon.goodput import PERSIST_MIN_S, GoodputLedger

RUN = "bench"


def model_of(size_mb: float, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """An MLP of about ``size_mb`` MB of fp32 parameters (Adam doubles the saved state)."""
    width = 1024
    per_layer = width * width + width
    layers = max(1, round(size_mb * 1e6 / 4 / per_layer))
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)
    return net, torch.optim.Adam(net.parameters(), lr=1e-4), width


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = net(x).square().mean()
    loss.backward()
    opt.step()


def state_of(net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": net.state_dict(), "optim": opt.state_dict()}


class Saver:
    """The phase's saves: how long each stopped training, when each was written (reported)."""

    def __init__(self, kind: str, root: Path, *, process: bool) -> None:
        self.kind, self.root = kind, root
        self.how = AsyncCheckpointerType.PROCESS if process else AsyncCheckpointerType.THREAD
        self.pending: list[Future[Any]] = []
        self.stalls: list[float] = []
        self.written: list[float] = []
        self.reports: list[tuple[int, float]] = []

    def save(self, step: int, state: dict[str, Any]) -> None:
        where = str(self.root / self.kind / f"step-{step:08d}")
        t = time.perf_counter()
        if self.kind == "sync":
            save(state, checkpoint_id=where)
            self.stalls.append(time.perf_counter() - t)
            self.reports.append((step, time.time()))
            return
        self.drain()  # the previous write first, as DCP users must
        res = async_save(state, checkpoint_id=where, async_checkpointer_type=self.how)
        fut = res.upload_completion if isinstance(res, AsyncSaveResponse) else res
        self.stalls.append(time.perf_counter() - t)
        began = time.time()

        def done(_: Future[Any]) -> None:
            at = time.time()
            self.written.append(at - began)
            self.reports.append((step, at))

        fut.add_done_callback(done)
        self.pending.append(fut)

    def drain(self) -> None:
        for fut in self.pending:
            fut.result()
        self.pending.clear()


def run_phase(
    kind: str,
    steps: int,
    every: int,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    root: Path,
    sync: Callable[[], None],
    *,
    process: bool,
    persist_min_s: float,
) -> dict[str, Any]:
    """One phase; its step ends and checkpoint reports go to a fresh ledger."""
    ledger = GoodputLedger(persist_min_s=persist_min_s)
    saver = Saver(kind, root, process=process)
    step_s: list[float] = []
    for k in range(1, steps + 1):
        t0 = time.perf_counter()
        train_step(net, opt, x)
        sync()
        took = time.perf_counter() - t0
        step_s.append(took)
        ledger.steps(RUN, 1, [StepSample(step=k, step_s=took, ts=time.time())])
        if kind != "baseline" and k % every == 0:
            saver.save(k, state_of(net, opt))
    saver.drain()
    for step, at in sorted(saver.reports):
        ledger.checkpoint(RUN, 1, step, at)
    out: dict[str, Any] = {"steps": steps, "median_step_s": round(statistics.median(step_s), 4)}
    raw_stall = round(statistics.median(saver.stalls), 4) if saver.stalls else None
    if kind == "sync":
        measured = ledger.save_stalls(RUN, {s for s, _ in saver.reports})
        out["stall_s"] = round(statistics.median(d for _, d in measured), 4) if measured else None
        out["raw"] = {"stall_s": raw_stall}
    elif kind == "async":
        persist, lost, stall = ledger.background(RUN)
        out |= {"stall_s": round(stall, 4), "persist_s": round(persist, 4)}
        out["write_loss_s"] = round(lost, 4)
        wrote = round(statistics.median(saver.written), 4) if saver.written else None
        out["raw"] = {"stall_s": raw_stall, "persist_s": wrote}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    ap.add_argument("--steps", type=int, default=30, help="steps per phase")
    ap.add_argument("--every", type=int, default=10, help="a save every this many steps")
    ap.add_argument("--size-mb", type=float, default=100.0, help="fp32 parameters, in MB")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is present")
    ap.add_argument("--process", action="store_true", help="process-based async_save")
    ap.add_argument(
        "--persist-min-s",
        type=float,
        default=PERSIST_MIN_S,
        help="a write shorter than this counts as a synchronous save (the daemon's default)",
    )
    ap.add_argument("--dir", help="where to write checkpoints (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda: no GPU visible to torch"}))
        return 2
    if args.steps < 2 * args.every:
        print(json.dumps({"error": "--steps must be at least twice --every"}))
        return 2
    torch.manual_seed(0)
    net, opt, width = model_of(args.size_mb, args.device)
    x = torch.randn(args.batch, width, device=args.device)
    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tw-async-save-"))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            for _ in range(3):  # warm-up: allocator, Adam state
                train_step(net, opt, x)
            sync()
            phases = {
                kind: run_phase(
                    kind,
                    args.steps,
                    args.every,
                    net,
                    opt,
                    x,
                    root,
                    sync,
                    process=args.process,
                    persist_min_s=args.persist_min_s,
                )
                for kind in ("baseline", "sync", "async")
            }
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    params = sum(p.numel() for p in net.parameters())
    doc = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "parameters": params,
        "saved_mb": round(params * 4 * 3 / 1e6, 1),  # weights + Adam's two moments
        "every": args.every,
        "async_checkpointer": "process" if args.process else "thread",
        **phases,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
