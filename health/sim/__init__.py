"""Simulated hardware: a real-looking sysfs/procfs tree, kernel log and NVML, with faults
injectable by name (in process or from another process through the state directory).

``hardware.SimulatedHardware`` is the entry point; ``state`` is the shared state file."""

from __future__ import annotations
