"""A small synchronous client of the daemon's operator API, for the ``trainwarden`` CLI.

stdlib ``http.client`` with a timeout on every request: the CLI is a short-lived process and
needs no event loop. On the login node it talks to the daemon's Unix socket, where the
daemon knows the caller by its uid; from elsewhere it talks https with a bearer token read
from a file only the caller may read. Replies are validated into the same row models the
server sends. A daemon that cannot be reached, or a request it refuses, becomes one
:class:`~trainwarden.supervisor.errors.SupervisorError` whose sentence the CLI prints as is.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from trainwarden.health import config
from trainwarden.supervisor.api.auth import DEFAULT_API_SOCKET, private_file
from trainwarden.supervisor.api.contract import (
    ActionRow,
    EventRow,
    Explanation,
    GoodputRow,
    IncidentRow,
    NodeDetail,
    NodeRow,
    RunRow,
    RunSpecIn,
    UnknownReporterRow,
)
from trainwarden.supervisor.errors import SupervisorError

__all__ = [
    "API_CA_ENV",
    "API_ENV",
    "TOKEN_FILE_ENV",
    "ApiError",
    "ApiUnreachableError",
    "OperatorClient",
    "add_api_arguments",
    "cli_config",
    "cli_settings",
    "client_for",
    "read_token_file",
    "resolve_api",
]

API_ENV = "TRAINWARDEN_API"
TOKEN_FILE_ENV = "TRAINWARDEN_TOKEN_FILE"
API_CA_ENV = "TRAINWARDEN_API_CA"
DEFAULT_TIMEOUT_S = 10.0
M = TypeVar("M", bound=BaseModel)


class ApiUnreachableError(SupervisorError):
    """The daemon did not answer (not running, wrong address, timed out)."""


class ApiError(SupervisorError):
    """The daemon answered with an error; the message is the daemon's own sentence."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def resolve_api(api: str | None) -> str:
    """Where the daemon is: ``api`` if given, else ``$TRAINWARDEN_API``, else ``api`` of the
    configuration file's ``[cli]``, else the default socket. A socket path
    (``/run/trainwarden/api.sock`` or ``unix:PATH``) comes back as ``unix:/absolute/path``, an
    https URL without its trailing '/'."""
    text = api or str(cli_config()["api"].value)
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        path = "/" + path.lstrip("/") if path.startswith("//") else path
        return f"unix:{os.path.abspath(path)}" if path else _invalid(text)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme == "https" and parsed.hostname:
        return text.rstrip("/")
    if parsed.scheme == "http":
        raise SupervisorError(
            f"the daemon's API is not served over plain http ({text}): on the login node use "
            f"its socket ({DEFAULT_API_SOCKET}), from elsewhere https://HOST:PORT with a token"
        )
    if "/" in text and not parsed.scheme:
        return f"unix:{os.path.abspath(text)}"
    return _invalid(text)


def _invalid(text: str) -> str:
    raise SupervisorError(
        f"invalid API address {text!r}: give the daemon's socket path "
        f"(default {DEFAULT_API_SOCKET}) or https://HOST:PORT"
    )


class _WhoIsGone(argparse.Action):
    """``--who`` is refused with a sentence: the daemon records the authenticated caller."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "--who is no longer accepted: the daemon records who you are from your login "
            "(the Unix socket) or your token, never from a name you give"
        )


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every API command takes."""
    api = parser.add_argument(
        "--api",
        metavar="ADDRESS",
        default=None,
        help=f"the daemon's socket path or https://HOST:PORT (default: ${API_ENV}, [cli] api "
        f"of the configuration file, or {DEFAULT_API_SOCKET})",
    )
    token_file = parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help=f"https only: the file holding your bearer token, mode 0600 "
        f"(default: ${TOKEN_FILE_ENV}, or [cli] token_file)",
    )
    api_ca = parser.add_argument(
        "--api-ca",
        metavar="FILE",
        default=None,
        help=f"https only: the CA (or the certificate) that signed the daemon's certificate "
        f"(default: ${API_CA_ENV}, [cli] api_ca, else the system's CAs)",
    )
    config.env(api, API_ENV)
    config.env(token_file, TOKEN_FILE_ENV)
    config.env(api_ca, API_CA_ENV)
    parser.add_argument("--who", action=_WhoIsGone, help=argparse.SUPPRESS)


@functools.cache
def cli_settings() -> config.Settings:
    """The ``[cli]`` settings, from the options every API command takes."""
    parser = argparse.ArgumentParser(prog="trainwarden", add_help=False)
    add_api_arguments(parser)
    parser.set_defaults(api=DEFAULT_API_SOCKET)
    return config.layered(parser, "cli")


def cli_config(
    args: argparse.Namespace | None = None,
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, config.Value]:
    """The CLI's API address, token file and CA: flag (``args``) > ``$TRAINWARDEN_API`` and
    the like > ``[cli]`` of the configuration file (``config_path``, ``$TRAINWARDEN_CONFIG``
    or the default file) > default."""
    e = os.environ if env is None else env
    settings = cli_settings()
    given = {
        s.key: getattr(args, s.key)
        for s in settings.items
        if getattr(args, s.key, None) is not None
    }
    return settings.resolve(given, config.ConfigFile.load(config_path, e), e)


def client_for(args: argparse.Namespace) -> OperatorClient:
    """The client for a parsed command line (``--api``, ``--token-file``, ``--api-ca``)."""
    settings = cli_config(args)
    target = resolve_api(settings["api"].value)
    if target.startswith("unix:"):  # the daemon knows the caller by its uid
        return OperatorClient(target)
    token_file = settings["token_file"].value
    ca_file = settings["api_ca"].value
    token = read_token_file(token_file) if token_file else None
    return OperatorClient(target, token=token, ca_file=ca_file or None)


def read_token_file(path: str) -> str:
    """The token in ``path``: refused when others may read or write the file, or when it is
    not the caller's own (a token is a password)."""
    private_file(path, "the token file", owners={os.getuid()})
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SupervisorError(f"cannot read the token file {path}: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise SupervisorError(f"the token file {path} must hold one token on one line")
    return token


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class OperatorClient:
    """One method per API endpoint; each returns validated rows or raises SupervisorError.

    ``base_url``: ``unix:PATH`` (or a bare path) or ``https://HOST:PORT``; ``token`` is sent
    over https only, ``ca_file`` verifies the daemon's certificate."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.base_url = resolve_api(base_url)
        self.timeout_s = timeout_s
        self.token = token
        self.ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None

    # --- transport -----------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self.base_url.startswith("unix:"):
            return _UnixConnection(self.base_url.removeprefix("unix:"), self.timeout_s)
        parsed = urllib.parse.urlsplit(self.base_url)
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise SupervisorError(
                    f"cannot use {self.ca_file} as the daemon's CA: {exc}"
                ) from None
        return http.client.HTTPSConnection(
            parsed.hostname or "", parsed.port or 443, timeout=self.timeout_s, context=self._ssl
        )

    def _unreachable(self, text: str) -> ApiUnreachableError:
        where = self.base_url.removeprefix("unix:")
        return ApiUnreachableError(f"cannot reach the trainwarden daemon at {where}: {text}")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON reply."""
        target = path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None and self.base_url.startswith("https://"):
            headers["Authorization"] = f"Bearer {self.token}"
        status, raw = self._exchange(method, target, data, headers)
        if status >= 400:
            raise ApiError(_error_message(status, raw), status=status)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(
                f"the daemon at {self.base_url} sent a reply that is not JSON", status=status
            ) from None

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One request and its reply; every way of not getting one is ApiUnreachableError."""
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except ssl.SSLCertVerificationError as exc:
            raise self._unreachable(
                f"its certificate was not accepted ({exc.verify_message}); name the CA that "
                f"signed it with --api-ca or ${API_CA_ENV}"
            ) from None
        except FileNotFoundError:
            raise self._unreachable(
                f"no such socket (is the daemon running here? elsewhere: --api or ${API_ENV})"
            ) from None
        except PermissionError:
            raise self._unreachable("permission denied on the socket or its directory") from None
        except TimeoutError:
            raise self._unreachable(f"no answer within {self.timeout_s:g} s") from None
        except ConnectionRefusedError:
            raise self._unreachable("Connection refused") from None
        except (http.client.HTTPException, ssl.SSLError, OSError) as exc:
            text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise self._unreachable(text or type(exc).__name__) from None
        finally:
            conn.close()

    def _one(self, model: type[M], reply: Any) -> M:
        try:
            return model.model_validate(reply)
        except ValidationError as exc:
            raise ApiError(
                f"unexpected reply from the daemon ({model.__name__}): {exc.errors()[0]['msg']}",
                status=200,
            ) from None

    def _many(self, model: type[M], reply: Any) -> list[M]:
        try:
            return TypeAdapter(list[model]).validate_python(reply)  # type: ignore[valid-type]
        except ValidationError as exc:
            raise ApiError(
                f"unexpected reply from the daemon (list of {model.__name__}): "
                f"{exc.errors()[0]['msg']}",
                status=200,
            ) from None

    # --- endpoints -----------------------------------------------------------------------------

    def nodes(self) -> list[NodeRow]:
        return self._many(NodeRow, self.request("GET", "/api/v1/nodes"))

    def node(self, name: str) -> NodeDetail:
        """One node in detail: conditions, drain, and its newest events and actions."""
        return self._one(NodeDetail, self.request("GET", f"/api/v1/nodes/{_seg(name)}"))

    def unknown_reporters(self) -> list[UnknownReporterRow]:
        """Names that published as nodes but are no node of the scheduler's."""
        reply = self.request("GET", "/api/v1/reporters/unknown")
        return self._many(UnknownReporterRow, reply)

    def drain(self, node: str, reason: str) -> ActionRow:
        body = {"reason": reason}
        return self._one(
            ActionRow, self.request("POST", f"/api/v1/nodes/{_seg(node)}/drain", body=body)
        )

    def undrain(self, node: str, reason: str | None) -> ActionRow:
        body: dict[str, Any] = {}
        if reason:
            body["reason"] = reason
        return self._one(
            ActionRow, self.request("POST", f"/api/v1/nodes/{_seg(node)}/undrain", body=body)
        )

    def goodput(self, run: str) -> GoodputRow:
        """Where ``run``'s wall time went, and the checkpoint-interval advice."""
        return self._one(GoodputRow, self.request("GET", f"/api/v1/runs/{_seg(run)}/goodput"))

    def runs(self) -> list[RunRow]:
        return self._many(RunRow, self.request("GET", "/api/v1/runs"))

    def add_run(self, spec: RunSpecIn) -> RunRow:
        body = spec.model_dump(mode="json")
        return self._one(RunRow, self.request("POST", "/api/v1/runs", body=body))

    def restart_run(self, run: str, reason: str) -> ActionRow:
        body = {"reason": reason}
        return self._one(
            ActionRow, self.request("POST", f"/api/v1/runs/{_seg(run)}/restart", body=body)
        )

    def events(
        self,
        *,
        limit: int | None = None,
        node: str | None = None,
        run: str | None = None,
        kind: str | None = None,
        since_id: int | None = None,
    ) -> list[EventRow]:
        query = {"limit": limit, "node": node, "run": run, "kind": kind, "since_id": since_id}
        return self._many(EventRow, self.request("GET", "/api/v1/events", query=query))

    def events_after(
        self,
        since_id: int,
        *,
        limit: int | None = None,
        node: str | None = None,
        run: str | None = None,
        kind: str | None = None,
    ) -> list[EventRow]:
        """The oldest ``limit`` events after ``since_id``, oldest first: reading forward, as
        ``events --follow`` does, never skips events however many arrived meanwhile."""
        query = {
            "limit": limit,
            "node": node,
            "run": run,
            "kind": kind,
            "since_id": since_id,
            "order": "oldest",
        }
        return self._many(EventRow, self.request("GET", "/api/v1/events", query=query))

    def actions(self, *, status: str | None = None, limit: int | None = None) -> list[ActionRow]:
        query = {"status": status, "limit": limit}
        return self._many(ActionRow, self.request("GET", "/api/v1/actions", query=query))

    def incidents(self, *, open_only: bool = False) -> list[IncidentRow]:
        query = {"open": "1" if open_only else None}
        return self._many(IncidentRow, self.request("GET", "/api/v1/incidents", query=query))

    def close_incident(self, ident: str, reason: str) -> IncidentRow:
        path = f"/api/v1/incidents/{urllib.parse.quote(ident, safe='')}/close"
        reply = self.request("POST", path, body={"reason": reason})
        return self._one(IncidentRow, reply)

    def explain(self, ident: int, what: Literal["event", "action"]) -> Explanation:
        reply = self.request("GET", f"/api/v1/{what}s/{int(ident)}/explain")
        return self._one(Explanation, reply)

    def approve(self, action_id: int) -> ActionRow:
        reply = self.request("POST", f"/api/v1/actions/{int(action_id)}/approve", body={})
        return self._one(ActionRow, reply)

    def reject(self, action_id: int, reason: str) -> ActionRow:
        reply = self.request(
            "POST", f"/api/v1/actions/{int(action_id)}/reject", body={"reason": reason}
        )
        return self._one(ActionRow, reply)

    def healthz(self) -> dict[str, Any]:
        try:
            reply = self.request("GET", "/healthz")
        except ApiError as exc:
            if exc.status != 503:
                raise
            return {"ok": False, "error": str(exc)}
        return dict(reply) if isinstance(reply, dict) else {"ok": False}


def _seg(name: str) -> str:
    """One path segment, quoted so a stray '/' cannot change the route."""
    return urllib.parse.quote(name, safe="")


def _error_message(status: int, raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    reason = http.client.responses.get(status, "")
    return f"the daemon answered HTTP {status} {reason}".rstrip()
