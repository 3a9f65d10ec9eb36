"""What the framework integrations share: the reporter they use, and a request to save that
all ranks agree on (a save is collective; a rank that saves alone waits for ever)."""

from __future__ import annotations

from collections.abc import Callable

from trainwarden.health.reporter import Reporter


def agree_any(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: a MAX all-reduce of one element under
    torch.distributed (on the current CUDA device for NCCL); the flag itself otherwise."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return flag
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cpu"
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StepHooks:
    """The framework-free part: report each new optimizer step, say when to save now.

    ``agree`` makes the ranks' answers one (default :func:`agree_any`); it runs every
    ``sync_every`` steps, so a checkpoint request is seen within that many steps.
    """

    def __init__(
        self,
        reporter: Reporter | None = None,
        *,
        sync_every: int = 1,
        agree: Callable[[bool], bool] = agree_any,
    ) -> None:
        self.reporter = reporter if reporter is not None else Reporter.from_env()
        self.sync_every = max(1, sync_every)
        self.agree = agree
        self.last_step: int | None = None

    def step(self, step: int) -> bool:
        """Report ``step`` if it is new; whether all ranks should save a checkpoint now."""
        if self.last_step is not None and step <= self.last_step:
            return False
        self.last_step = step
        self.reporter.step_done(step)
        if step % self.sync_every:
            return False
        return self.agree(self.reporter.checkpoint_requested())

    def saved(self, step: int, path: str) -> None:
        self.reporter.checkpoint_saved(step, path)

    def close(self) -> None:
        self.reporter.close()


def missing(framework: str, package: str, exc: ImportError) -> ImportError:
    """The ImportError an integration raises when its framework is not installed."""
    err = ImportError(
        f"trainwarden's {framework} integration needs the {package!r} package, which is not "
        f"installed in this Python ({exc}); install it, or report steps with "
        "trainwarden.health.reporter.Reporter directly"
    )
    err.name = package
    return err
