"""The vocabulary of faults shared by probes, detectors and policies, and the XID catalogue.

The XID catalogue (``health/data/xid_catalog.csv``) is copied from
``shared/data/xid/xid_catalog.csv``: NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors)
as generated in leptonai/gpud (Apache-2.0), with the classifications of facebookresearch/gcm
(MIT) and NVIDIA/k8s-device-plugin (Apache-2.0). Operators override any code per site
(hard-coded XID policies are a recurring complaint about other tools).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from trainwarden.health.errors import HealthError
from trainwarden.health.probes.base import Action, Severity

# Fault kinds. Probes emit them, simulated hardware injects them by these names,
# detectors and policies match on them.
XID = "xid"
GPU_LOST = "gpu-lost"
GPU_MISSING = "gpu-missing"
ECC_DBE = "ecc-dbe"
ROW_REMAP_FAILURE = "row-remap-failure"
ROW_REMAP_PENDING = "row-remap-pending"
NVLINK_DOWN = "nvlink-down"
PCIE_DEGRADED = "pcie-degraded"
THERMAL_THROTTLE = "thermal-throttle"
POWER_THROTTLE = "power-throttle"
GPU_MEM_HELD = "gpu-mem-held"
NVML_UNAVAILABLE = "nvml-unavailable"
IB_LINK_DOWN = "ib-link-down"
IB_LINK_FLAP = "ib-link-flap"
IB_ERRORS = "ib-errors"
CXI_LINK_DOWN = "cxi-link-down"
ETH_LINK_DOWN = "eth-link-down"
STORAGE_HANG = "storage-hang"
STORAGE_SLOW = "storage-slow"
STORAGE_FULL = "storage-full"
STORAGE_UNMOUNTED = "storage-unmounted"
# the storage probe has no directory it may write in (a setup fault, not a broken mount)
STORAGE_PROBE_SETUP = "storage-probe-setup"
HOST_OOM = "host-oom"
HOST_MCE = "host-mce"
HOST_MEMORY_LOW = "host-memory-low"
HOST_D_STATE = "host-d-state"


@dataclass(frozen=True)
class XidClass:
    """What one XID code means for the node and the job."""

    code: int
    mnemonic: str
    name: str
    severity: Severity
    action: Action
    nvidia_action: str


# supervisor_class_derived column -> (severity, suggested action)
_CLASS_MAP: dict[str, tuple[Severity, Action]] = {
    "NODE_FAULT_WORKFLOW": (Severity.FATAL, Action.DRAIN),
    "NODE_FAULT_RESET_GPU": (Severity.FATAL, Action.RESET_GPU),
    "NODE_FAULT_REBOOT_NODE": (Severity.FATAL, Action.REBOOT),
    "OTHER:CHECK_MECHANICALS": (Severity.FATAL, Action.DRAIN),
    "JOB_RESTART_ONLY": (Severity.DEGRADED, Action.RESTART_JOB),
    "INFO_NO_ACTION": (Severity.INFO, Action.NONE),
    "UNUSED": (Severity.INFO, Action.NONE),
}
_DEFAULT_CLASS = (Severity.DEGRADED, Action.INSPECT)


@lru_cache(maxsize=1)
def _catalog_rows() -> tuple[dict[str, str], ...]:
    text = resources.files("trainwarden.health").joinpath("data/xid_catalog.csv").read_text()
    return tuple(csv.DictReader(text.splitlines()))


class XidCatalog:
    """XID code -> :class:`XidClass`, from the shipped catalogue plus operator overrides.

    ``overrides`` maps a code to a severity name (``fatal``/``degraded``/``info``) or to
    ``"severity:action"`` (e.g. ``{"94": "fatal:drain"}``).
    """

    def __init__(self, overrides: Mapping[int | str, str] | None = None) -> None:
        self._classes: dict[int, XidClass] = {}
        for row in _catalog_rows():
            code = int(row["xid"])
            severity, action = _CLASS_MAP.get(row["supervisor_class_derived"], _DEFAULT_CLASS)
            self._classes[code] = XidClass(
                code,
                row["mnemonic"],
                row["name"],
                severity,
                action,
                row["nvidia_immediate_action"],
            )
        for raw_code, spec in (overrides or {}).items():
            self._apply_override(raw_code, spec)

    def _apply_override(self, raw_code: int | str, spec: str) -> None:
        try:
            code = int(raw_code)
        except ValueError:
            raise HealthError(f"XID override key {raw_code!r} is not an integer code") from None
        sev_name, _, act_name = spec.partition(":")
        try:
            severity = Severity(sev_name.strip())
            action = Action(act_name.strip()) if act_name else None
        except ValueError:
            raise HealthError(
                f"XID override for {code}: {spec!r} is not 'severity[:action]' with severity in "
                f"{[s.value for s in Severity]} and action in {[a.value for a in Action]}"
            ) from None
        base = self.classify(code)
        if action is None:
            action = Action.DRAIN if severity is Severity.FATAL else base.action
        self._classes[code] = XidClass(
            code, base.mnemonic, base.name, severity, action, base.nvidia_action
        )

    def classify(self, code: int) -> XidClass:
        known = self._classes.get(code)
        if known is not None:
            return known
        return XidClass(code, "UNKNOWN", f"XID {code} (not in catalogue)", *_DEFAULT_CLASS, "")

    def codes(self) -> list[int]:
        return sorted(self._classes)
