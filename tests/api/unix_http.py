"""The API on a real Unix socket, as the daemon serves it: the kernel tells the server who
connects (this test process, so root or the daemon's own user: an admin)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from trainwarden.supervisor.api.server import ApiServer, Endpoint


@contextmanager
def short_dir() -> Iterator[Path]:
    """A private directory short enough for a socket path (pytest's tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def on_socket(app: object, path: Path) -> ApiServer:
    """An ApiServer for ``app`` on the socket ``path``."""
    return ApiServer(app, endpoints=[Endpoint(path=str(path))])  # type: ignore[arg-type]


def session(server_or_path: ApiServer | Path | str) -> aiohttp.ClientSession:
    """An aiohttp session whose every request goes to the socket."""
    if isinstance(server_or_path, ApiServer):
        path = server_or_path.url.removeprefix("unix:")
    else:
        path = str(server_or_path)
    return aiohttp.ClientSession(
        base_url="http://localhost",
        connector=aiohttp.UnixConnector(path=path),
        timeout=aiohttp.ClientTimeout(total=10),
    )
