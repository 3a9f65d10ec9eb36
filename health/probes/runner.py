"""Runs probes concurrently, each bounded by a timeout, and never lets one spoil the report.

Each ``check`` runs in its own daemon thread (not the default executor: a read stuck in
the kernel on a hung Lustre mount never returns, and would exhaust a shared pool). A
probe whose previous run is still stuck is not started again; its verdict is given at
once. Exceptions become ``unknown``; a timeout becomes ``unknown`` too, except for
probes whose hang is the symptom (:class:`HangSymptom`), which say what it means.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Sequence

from trainwarden.health.clock import Clock, SystemClock
from trainwarden.health.probes.base import Action, CheckResult, HangSymptom, Health, Probe

# id(probe) -> the thread still running its last check (a hung probe keeps its thread).
_stuck: dict[int, threading.Thread] = {}
_stuck_lock = threading.Lock()


def _probe_name(probe: Probe) -> str:
    try:
        return str(probe.name)
    except Exception:
        return type(probe).__name__


def _error_result(probe: Probe, exc: BaseException) -> CheckResult:
    return CheckResult(
        _probe_name(probe),
        Health.UNKNOWN,
        f"probe failed: {type(exc).__name__}: {exc}",
        Action.INSPECT,
    )


def _timeout_result(probe: Probe, timeout_s: float, still: bool = False) -> CheckResult:
    if isinstance(probe, HangSymptom):
        try:
            return probe.on_hang(timeout_s)
        except Exception as exc:
            return _error_result(probe, exc)
    what = "is still stuck from an earlier run" if still else f"timed out after {timeout_s:g} s"
    return CheckResult(
        _probe_name(probe),
        Health.UNKNOWN,
        f"probe {what}",
        Action.INSPECT,
        {"timeout_s": timeout_s},
    )


def _start(
    probe: Probe, loop: asyncio.AbstractEventLoop, clock: Clock
) -> asyncio.Future[CheckResult]:
    fut: asyncio.Future[CheckResult] = loop.create_future()

    def deliver(result: CheckResult) -> None:
        if not fut.done():
            fut.set_result(result)

    def work() -> None:
        start = clock.monotonic()
        try:
            result = probe.check()
            if not isinstance(result, CheckResult):
                raise TypeError(f"check() returned {type(result).__name__}, not CheckResult")
            result = dataclasses.replace(result, duration_s=clock.monotonic() - start)
        except BaseException as exc:
            result = _error_result(probe, exc)
        finally:
            with _stuck_lock:
                if _stuck.get(id(probe)) is threading.current_thread():
                    del _stuck[id(probe)]
        # The loop may have closed while we were stuck: then nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, result)

    thread = threading.Thread(target=work, name=f"probe-{_probe_name(probe)}", daemon=True)
    with _stuck_lock:
        _stuck[id(probe)] = thread
    thread.start()
    return fut


async def run_probes(
    probes: Sequence[Probe], timeout_s: float, clock: Clock | None = None
) -> list[CheckResult]:
    """Run every probe at once; results in the order of ``probes``, always one per probe."""
    clock = clock or SystemClock()
    loop = asyncio.get_running_loop()
    slots: list[asyncio.Future[CheckResult] | CheckResult] = []
    for probe in probes:
        with _stuck_lock:
            previous = _stuck.get(id(probe))
        if previous is not None and previous.is_alive():
            slots.append(_timeout_result(probe, timeout_s, still=True))
        else:
            slots.append(_start(probe, loop, clock))
    pending = [s for s in slots if isinstance(s, asyncio.Future)]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    results = []
    for probe, slot in zip(probes, slots, strict=True):
        if isinstance(slot, CheckResult):
            results.append(slot)
        elif slot.done():
            results.append(slot.result())
        else:
            slot.cancel()
            results.append(_timeout_result(probe, timeout_s))
    return results
