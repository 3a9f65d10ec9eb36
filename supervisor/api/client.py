"""A small synchronous client of the daemon's operator API, for the ``trainwarden`` CLI.

stdlib ``urllib`` with a timeout on every request: the CLI is a short-lived process and
needs no event loop. Replies are validated into the same row models the server sends.
A daemon that cannot be reached, or a request it refuses, becomes one
:class:`~trainwarden.supervisor.errors.SupervisorError` whose sentence the CLI prints as is.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from trainwarden.supervisor.api.contract import (
    DEFAULT_API,
    ActionRow,
    EventRow,
    Explanation,
    IncidentRow,
    NodeRow,
    RunRow,
    RunSpecIn,
)
from trainwarden.supervisor.errors import SupervisorError

__all__ = [
    "API_ENV",
    "ApiError",
    "ApiUnreachableError",
    "OperatorClient",
    "add_api_arguments",
    "client_for",
    "default_who",
    "resolve_api",
]

API_ENV = "TRAINWARDEN_API"
DEFAULT_TIMEOUT_S = 10.0
M = TypeVar("M", bound=BaseModel)
# The daemon is on the login node: never send operator requests through an HTTP proxy
# that $http_proxy may name for the cluster's outbound traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ApiUnreachableError(SupervisorError):
    """The daemon did not answer (not running, wrong address, timed out)."""


class ApiError(SupervisorError):
    """The daemon answered with an error; the message is the daemon's own sentence."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def resolve_api(api: str | None) -> str:
    """The API base URL: ``api`` if given, else ``$TRAINWARDEN_API``, else the default."""
    url = api or os.environ.get(API_ENV) or DEFAULT_API
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SupervisorError(f"invalid API URL {url!r}: expected http://HOST:PORT")
    return url.rstrip("/")


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every API command takes."""
    parser.add_argument(
        "--api",
        metavar="URL",
        default=None,
        help=f"daemon API URL (default: ${API_ENV} or {DEFAULT_API})",
    )


def client_for(args: argparse.Namespace) -> OperatorClient:
    """The client for a parsed command line (``--api``)."""
    return OperatorClient(resolve_api(getattr(args, "api", None)))


def default_who() -> str:
    """Who the operator is: the invoking user behind sudo, else the current user."""
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(var)
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class OperatorClient:
    """One method per API endpoint; each returns validated rows or raises SupervisorError."""

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    # --- transport -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON reply."""
        url = self.base_url + path
        if query:
            pairs = {k: str(v) for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(_error_message(exc), status=exc.code) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                text = f"no answer within {self.timeout_s:g} s"
            else:
                text = (reason.strerror if isinstance(reason, OSError) else None) or str(reason)
            raise ApiUnreachableError(
                f"cannot reach the trainwarden daemon at {self.base_url}: {text}"
            ) from None
        except TimeoutError:
            raise ApiUnreachableError(
                f"cannot reach the trainwarden daemon at {self.base_url}: "
                f"no answer within {self.timeout_s:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ApiUnreachableError(
                f"cannot reach the trainwarden daemon at {self.base_url}: {exc}"
            ) from None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(
                f"the daemon at {self.base_url} sent a reply that is not JSON", status=200
            ) from None

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

    def drain(self, node: str, reason: str, who: str) -> ActionRow:
        body = {"reason": reason, "who": who}
        return self._one(
            ActionRow, self.request("POST", f"/api/v1/nodes/{_seg(node)}/drain", body=body)
        )

    def undrain(self, node: str, reason: str | None, who: str) -> ActionRow:
        body: dict[str, Any] = {"who": who}
        if reason:
            body["reason"] = reason
        return self._one(
            ActionRow, self.request("POST", f"/api/v1/nodes/{_seg(node)}/undrain", body=body)
        )

    def runs(self) -> list[RunRow]:
        return self._many(RunRow, self.request("GET", "/api/v1/runs"))

    def add_run(self, spec: RunSpecIn, who: str) -> RunRow:
        body = {**spec.model_dump(mode="json"), "who": who}
        return self._one(RunRow, self.request("POST", "/api/v1/runs", body=body))

    def restart_run(self, run: str, reason: str, who: str) -> ActionRow:
        body = {"reason": reason, "who": who}
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

    def actions(self, *, status: str | None = None, limit: int | None = None) -> list[ActionRow]:
        query = {"status": status, "limit": limit}
        return self._many(ActionRow, self.request("GET", "/api/v1/actions", query=query))

    def incidents(self, *, open_only: bool = False) -> list[IncidentRow]:
        query = {"open": "1" if open_only else None}
        return self._many(IncidentRow, self.request("GET", "/api/v1/incidents", query=query))

    def close_incident(self, ident: str, reason: str, who: str) -> IncidentRow:
        path = f"/api/v1/incidents/{urllib.parse.quote(ident, safe='')}/close"
        reply = self.request("POST", path, body={"reason": reason, "who": who})
        return self._one(IncidentRow, reply)

    def explain(self, ident: int, what: Literal["event", "action"]) -> Explanation:
        reply = self.request("GET", f"/api/v1/{what}s/{int(ident)}/explain")
        return self._one(Explanation, reply)

    def approve(self, action_id: int, who: str) -> ActionRow:
        reply = self.request("POST", f"/api/v1/actions/{int(action_id)}/approve", body={"who": who})
        return self._one(ActionRow, reply)

    def reject(self, action_id: int, reason: str, who: str) -> ActionRow:
        reply = self.request(
            "POST", f"/api/v1/actions/{int(action_id)}/reject", body={"reason": reason, "who": who}
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


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read())
    except (OSError, ValueError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return f"the daemon answered HTTP {exc.code} {exc.reason}"
