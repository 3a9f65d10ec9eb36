"""Simulated hardware: a real-looking sysfs/procfs tree, kernel log and NVML, with faults
injectable by name (in process or from another process through the state directory)."""

from __future__ import annotations

from trainwarden.health.sim.hardware import SimulatedHardware, fault_names, inject_into

__all__ = ["SimulatedHardware", "fault_names", "inject_into"]
