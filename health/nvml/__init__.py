"""NVML behind a small interface: the real one (pynvml) and the simulated one share it."""

from __future__ import annotations

from trainwarden.health.nvml.backend import GpuSample, NvmlBackend, NvmlError, NvmlGpuLost, XidEvent

__all__ = ["GpuSample", "NvmlBackend", "NvmlError", "NvmlGpuLost", "XidEvent"]
