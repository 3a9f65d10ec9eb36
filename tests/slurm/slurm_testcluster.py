"""The test Slurm cluster as tests see it (a plain module so test files can import it; the
session fixture that starts it is in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "infra" / "slurm"


@dataclass(frozen=True)
class SlurmCluster:
    state_dir: Path
    conf: str
    nodes: tuple[str, ...]
    start_s: float

    def script(
        self, name: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, TW_SLURM_DIR=str(self.state_dir))
        return subprocess.run(
            [str(SCRIPTS / name), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def kill_node(self, node: str) -> None:
        self.script("kill-node.sh", node)

    def restart_missing(self) -> None:
        self.script("start.sh")

    async def command(self, *args: str) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=dict(os.environ, SLURM_CONF=self.conf),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        return out.decode()
