"""The daemon's HTTP face: the operator API under ``/api/v1`` (and ``/healthz``), served on a
Unix socket and, for remote operators, on TCP with TLS; ``/metrics`` and ``/healthz`` on a
listener of their own that reads only.

A thin layer: it learns who asks (:mod:`supervisor.api.auth`), checks the role the endpoint
needs, parses and validates requests, calls :class:`OperatorService` with the caller as
``who`` and turns rows into JSON. Every error leaves as ``{"error": "<sentence>"}`` with a
fitting status: 401 when the caller is unknown, 403 when its role is too low (or a write
comes from a web page), 415 for a write that is not JSON, 404 for an unknown node, run,
event or action; 400 for a request the daemon refuses (malformed JSON, a missing field, an
invalid name); 502/503 when the scheduler or the store failed. A traceback never reaches
the client; an unexpected exception is logged with its traceback and answered 500 with
its type and message only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainwarden.health.errors import TrainwardenError
from trainwarden.health.report import check_name
from trainwarden.supervisor.api.auth import (
    DEFAULT_API_SOCKET,
    Authenticator,
    Forbidden,
    Principal,
    Role,
    Unauthenticated,
)
from trainwarden.supervisor.api.contract import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    OperatorService,
    RunSpecIn,
)
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.errors import NotFoundError, SchedulerError, StoreError, SupervisorError
from trainwarden.supervisor.store.records import ActionStatus

__all__ = [
    "DEFAULT_API_SOCKET",
    "DEFAULT_METRICS_HOST",
    "DEFAULT_METRICS_PORT",
    "ApiServer",
    "Endpoint",
    "create_app",
    "create_metrics_app",
    "create_standby_app",
]

log = logging.getLogger("trainwarden.api")

PREFIX = "/api/v1"
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
MAX_BODY_BYTES = 1024 * 1024

# the read-only listener: where Prometheus scraped the daemon before the API had a socket
DEFAULT_METRICS_HOST = DEFAULT_API_HOST
DEFAULT_METRICS_PORT = DEFAULT_API_PORT
# the longest path a Unix socket may have (sun_path is 108 bytes with its NUL)
MAX_SOCKET_PATH = 107

SERVICE_KEY = web.AppKey("service", OperatorService)
METRICS_KEY = web.AppKey("metrics", Metrics)
AUTH_KEY = web.AppKey("auth", Authenticator)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AsCaller = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


class ApiInputError(SupervisorError):
    """A request the API refuses before it reaches the service (answered 400)."""


class UnsupportedMediaError(SupervisorError):
    """A write whose body is not declared JSON (answered 415)."""


# --- request bodies -------------------------------------------------------------------------

Text = Field(min_length=1, max_length=2000)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class DrainIn(_Body):
    reason: str = Text


class UndrainIn(_Body):
    reason: str = Field(default="returned to service by an operator", max_length=2000)


class RestartIn(_Body):
    reason: str = Text


class ApproveIn(_Body):
    pass


class RejectIn(_Body):
    reason: str = Text


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "(body)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        else:
            parts.append(f"{loc}: {msg}")
    more = err.error_count() - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


M = TypeVar("M", bound=BaseModel)


async def _body(request: web.Request, model: type[M], caller: Principal) -> M:
    raw = await request.read()
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiInputError(f"request body must be a JSON object, not {type(data).__name__}")
    if "who" in data:
        raise ApiInputError(
            f"'who' is not accepted: the daemon records the authenticated caller "
            f"({caller.who}) as who acted; leave the field out"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiInputError(f"invalid request: {_describe(exc)}") from None


# --- query and path parameters ----------------------------------------------------------------


def _int(value: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ApiInputError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        bound = f"between {minimum}{upper}" if maximum is not None else f"at least {minimum}"
        raise ApiInputError(f"{what} must be {bound}, got {number}")
    return number


def _opt_name(query: Mapping[str, str], key: str) -> str | None:
    value = query.get(key)
    if value is None or value == "":
        return None
    return check_name(key, value)


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    return DEFAULT_LIMIT if raw in (None, "") else _int(raw, "limit", minimum=1, maximum=MAX_LIMIT)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


def _rows(rows: Sequence[BaseModel]) -> web.Response:
    return _json([r.model_dump(mode="json") for r in rows])


def _row(row: BaseModel, status: int = 200) -> web.Response:
    return _json(row.model_dump(mode="json"), status)


def _service(request: web.Request) -> OperatorService:
    return request.app[SERVICE_KEY]


def _caller(request: web.Request) -> Principal:
    """Who asks: set by the ``_authorize`` middleware before any handler of the API runs."""
    caller = request.get(CALLER)
    if not isinstance(caller, Principal):  # a route outside the API's guard: never acts
        raise Unauthenticated("the caller is not known on this endpoint")
    return caller


# --- handlers ---------------------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    return _rows(await _service(request).list_nodes())


async def node_detail(request: web.Request) -> web.Response:
    node = check_name("node", request.match_info["name"])
    return _row(await _service(request).node_detail(node))


async def list_unknown_reporters(request: web.Request) -> web.Response:
    return _rows(await _service(request).list_unknown_reporters())


async def drain(request: web.Request) -> web.Response:
    node = check_name("node", request.match_info["name"])
    caller = _caller(request)
    body = await _body(request, DrainIn, caller)
    return _row(await _service(request).drain(node, body.reason, caller.who))


async def undrain(request: web.Request) -> web.Response:
    node = check_name("node", request.match_info["name"])
    caller = _caller(request)
    body = await _body(request, UndrainIn, caller)
    return _row(await _service(request).undrain(node, body.reason, caller.who))


async def list_runs(request: web.Request) -> web.Response:
    return _rows(await _service(request).list_runs())


async def add_run(request: web.Request) -> web.Response:
    caller = _caller(request)
    spec = await _body(request, RunSpecIn, caller)
    return _row(await _service(request).add_run(spec, caller.who), status=201)


async def run_goodput(request: web.Request) -> web.Response:
    run = check_name("run", request.match_info["name"])
    return _row(await _service(request).goodput(run))


async def restart_run(request: web.Request) -> web.Response:
    run = check_name("run", request.match_info["name"])
    caller = _caller(request)
    body = await _body(request, RestartIn, caller)
    return _row(await _service(request).restart_run(run, body.reason, caller.who))


async def list_events(request: web.Request) -> web.Response:
    q = request.query
    since = q.get("since_id")
    kind = q.get("kind") or None
    if kind is not None and len(kind) > 64:
        raise ApiInputError("kind must be at most 64 characters")
    order = q.get("order") or "newest"
    if order not in ("newest", "oldest"):
        raise ApiInputError(f"order must be newest or oldest, not {order[:20]!r}")
    rows = await _service(request).list_events(
        limit=_limit(q),
        node=_opt_name(q, "node"),
        run=_opt_name(q, "run"),
        kind=kind,
        since_id=None if since in (None, "") else _int(since, "since_id"),
        oldest_first=order == "oldest",
    )
    return _rows(rows)


async def list_actions(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in {s.value for s in ActionStatus}:
        allowed = ", ".join(s.value for s in ActionStatus)
        raise ApiInputError(f"unknown action status {status!r}; use one of: {allowed}")
    rows = await _service(request).list_actions(status=status, limit=_limit(request.query))
    return _rows(rows)


async def list_incidents(request: web.Request) -> web.Response:
    flag = request.query.get("open", "")
    if flag not in ("", "0", "1", "true", "false"):
        raise ApiInputError(f"open must be 1 or 0, not {flag!r}")
    rows = await _service(request).list_incidents(open_only=flag in ("1", "true"))
    return _rows(rows)


async def close_incident(request: web.Request) -> web.Response:
    caller = _caller(request)
    body = await _body(request, RejectIn, caller)
    ident = request.match_info["id"]
    return _row(await _service(request).close_incident(ident, body.reason, caller.who))


def _explain(what: Literal["event", "action"]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        ident = _int(request.match_info["id"], f"{what} id")
        return _row(await _service(request).explain(ident, what))

    return handler


async def approve(request: web.Request) -> web.Response:
    ident = _int(request.match_info["id"], "action id")
    caller = _caller(request)
    await _body(request, ApproveIn, caller)
    return _row(await _service(request).approve(ident, caller.who))


async def reject(request: web.Request) -> web.Response:
    ident = _int(request.match_info["id"], "action id")
    caller = _caller(request)
    body = await _body(request, RejectIn, caller)
    return _row(await _service(request).reject(ident, body.reason, caller.who))


async def serve_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return _health(request.app[SERVICE_KEY].status)


def _health(status_of: Callable[[], Mapping[str, Any]]) -> web.Response:
    try:
        status = dict(status_of())
    except Exception as exc:  # a status probe that fails is itself the answer
        log.exception("status() failed")
        return _json({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 503)
    ok = status.get("ok") is not False
    return _json(status, 200 if ok else 503)


# --- who may do what ----------------------------------------------------------------------------

CALLER = web.RequestKey("caller", Principal)
READING = (Role.VIEWER, "reading the daemon's state")
# every write the API knows, with the role it needs; a write route missing here needs admin
WRITES: dict[str, tuple[Role, str]] = {
    f"{PREFIX}/nodes/{{name}}/drain": (Role.OPERATOR, "draining a node"),
    f"{PREFIX}/nodes/{{name}}/undrain": (Role.OPERATOR, "returning a node to service"),
    f"{PREFIX}/runs/{{name}}/restart": (Role.OPERATOR, "restarting a run"),
    f"{PREFIX}/incidents/{{id}}/close": (Role.OPERATOR, "closing an incident"),
    f"{PREFIX}/actions/{{id}}/approve": (Role.OPERATOR, "approving an action"),
    f"{PREFIX}/actions/{{id}}/reject": (Role.OPERATOR, "rejecting an action"),
    # a run carries the command, working directory and environment the daemon submits
    f"{PREFIX}/runs": (Role.ADMIN, "adding a run (its command runs as submitted)"),
}


def _needs(request: web.Request) -> tuple[Role, str]:
    route = request.match_info.route.resource
    path = route.canonical if route is not None else request.path
    if request.method in ("GET", "HEAD"):
        return READING
    return WRITES.get(path, (Role.ADMIN, f"{request.method} {path}"))


def _check_write(request: web.Request) -> None:
    """A write must be a JSON request from a program, never a page in a browser: a form or
    a text/plain POST (which a web page may send anywhere without asking) cannot act."""
    origin = request.headers.get("Origin")
    if origin is not None:
        raise Forbidden(
            f"a write from a web page (Origin {origin[:100]!r}) is refused: the daemon takes "
            "writes only from programs such as the trainwarden CLI"
        )
    if request.content_type != "application/json":
        raise UnsupportedMediaError(
            f"a write needs Content-Type: application/json, not {request.content_type!r}"
        )


@web.middleware
async def _authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Know the caller and check its role before any ``/api/v1`` handler runs."""
    if not request.path.startswith(PREFIX + "/") or request.match_info.http_exception:
        return await handler(request)
    caller = await request.app[AUTH_KEY].identify(
        request.transport.get_extra_info("socket") if request.transport else None,
        request.headers.get("Authorization"),
    )
    need, doing = _needs(request)
    if caller.role < need:
        raise Forbidden(caller.refusal(need, doing))
    if request.method not in ("GET", "HEAD"):
        _check_write(request)
    request[CALLER] = caller
    return await handler(request)


# --- errors and instrumentation ----------------------------------------------------------------


def _status_for(exc: TrainwardenError) -> int:
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, UnsupportedMediaError):
        return 415
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, SchedulerError):
        return 502
    if isinstance(exc, StoreError):
        return 503
    return 400


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "(unmatched)"
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except TrainwardenError as exc:
        code = _status_for(exc)
        if code >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        elif code in (401, 403):  # who was refused what, for the daemon's log
            log.info("refused %s %s: %s", request.method, request.path, exc)
        response = _json({"error": str(exc)}, code)
        if code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="trainwarden"'
        return response
    except web.HTTPException as exc:
        code = exc.status
        if exc.empty_body:
            raise
        return _json({"error": _http_text(request, exc)}, code)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)
    finally:
        method = request.method if request.method in _METHODS else "other"
        request.app[METRICS_KEY].api_request(
            method, route_name, code, time.perf_counter() - started
        )


def _http_text(request: web.Request, exc: web.HTTPException) -> str:
    """A sentence for an error aiohttp raised itself (no route, wrong method, body too big)."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path} (use {allowed})"
    if isinstance(exc, web.HTTPNotFound):
        return f"no such endpoint: {request.method} {request.path}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"request body is larger than the {MAX_BODY_BYTES}-byte limit"
    return exc.reason


def create_app(
    service: OperatorService, metrics: Metrics, auth: Authenticator | None = None
) -> web.Application:
    """The operator API over ``service``: every ``/api/v1`` request is the caller's, known by
    ``auth`` (default: the default roles, no tokens), and needs the role of its endpoint."""
    app = web.Application(middlewares=[_errors, _authorize], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics
    app[AUTH_KEY] = auth or Authenticator()
    p = PREFIX
    app.router.add_get(f"{p}/nodes", list_nodes)
    app.router.add_get(f"{p}/nodes/{{name}}", node_detail)
    app.router.add_get(f"{p}/reporters/unknown", list_unknown_reporters)
    app.router.add_post(f"{p}/nodes/{{name}}/drain", drain)
    app.router.add_post(f"{p}/nodes/{{name}}/undrain", undrain)
    app.router.add_get(f"{p}/runs", list_runs)
    app.router.add_post(f"{p}/runs", add_run)
    app.router.add_post(f"{p}/runs/{{name}}/restart", restart_run)
    app.router.add_get(f"{p}/runs/{{name}}/goodput", run_goodput)
    app.router.add_get(f"{p}/events", list_events)
    app.router.add_get(f"{p}/events/{{id}}/explain", _explain("event"))
    app.router.add_get(f"{p}/incidents", list_incidents)
    app.router.add_post(f"{p}/incidents/{{id}}/close", close_incident)
    app.router.add_get(f"{p}/actions", list_actions)
    app.router.add_get(f"{p}/actions/{{id}}/explain", _explain("action"))
    app.router.add_post(f"{p}/actions/{{id}}/approve", approve)
    app.router.add_post(f"{p}/actions/{{id}}/reject", reject)
    app.router.add_get("/healthz", healthz)
    return app


def create_metrics_app(
    metrics: Metrics, status: Callable[[], Mapping[str, Any]]
) -> web.Application:
    """The read-only listener: ``/metrics`` and ``/healthz`` for Prometheus and probes,
    without credentials, and nothing else (every other path is 404), so it may be bound
    where the operator API must never be."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[METRICS_KEY] = metrics

    async def health(_: web.Request) -> web.Response:
        return _health(status)

    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", health)
    return app


def create_standby_app(metrics: Metrics, status: Callable[[], dict[str, Any]]) -> web.Application:
    """What a standby daemon serves on the API's socket: its health, and 503 naming the
    leader for the operator API (its metrics, ``trainwarden_leader 0``, are on the metrics
    listener, :func:`create_metrics_app`)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[METRICS_KEY] = metrics

    async def standby_health(_: web.Request) -> web.Response:
        return _json(status(), 200)

    async def standby_api(_: web.Request) -> web.Response:
        leader = status().get("leader_holder") or "another daemon"
        return _json({"error": f"this daemon stands by; {leader} leads: use the leader's API"}, 503)

    app.router.add_get("/healthz", standby_health)
    app.router.add_route("*", PREFIX + "/{tail:.*}", standby_api)
    return app


@dataclass(frozen=True)
class Endpoint:
    """One address to serve on: a Unix socket ``path``, or TCP ``host:port`` (port 0 picks a
    free one), with TLS when ``ssl`` is set."""

    host: str = DEFAULT_METRICS_HOST
    port: int = DEFAULT_METRICS_PORT
    path: str | None = None
    ssl: ssl.SSLContext | None = None

    def name(self, port: int | None = None) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port if port is None else port}"


class ApiServer:
    """Serves an application on its endpoints (one TCP ``host:port`` when given none); for
    the daemon and tests."""

    def __init__(
        self,
        app: web.Application,
        host: str = DEFAULT_METRICS_HOST,
        port: int = DEFAULT_METRICS_PORT,
        *,
        endpoints: Sequence[Endpoint] | None = None,
        access_log: bool = False,
    ) -> None:
        self._app = app
        self._endpoints = tuple(endpoints) if endpoints else (Endpoint(host, port),)
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self._sockets: list[tuple[str, int]] = []  # (path, inode) of the Unix sockets bound
        self.port: int | None = None  # the first TCP port bound
        self.urls: list[str] = []

    @property
    def url(self) -> str:
        """The first endpoint: ``unix:PATH`` or ``http(s)://HOST:PORT``."""
        if not self.urls:
            raise RuntimeError("the API server is not started")
        return self.urls[0]

    async def start(self) -> int | None:
        """Bind and serve every endpoint; returns the first TCP port bound (None: none)."""
        runner = web.AppRunner(
            self._app, access_log=log if self._access_log else None, handle_signals=False
        )
        await runner.setup()
        try:
            for ep in self._endpoints:
                await self._serve(runner, ep)
        except BaseException:
            await runner.cleanup()
            self._unlink()
            self.urls = []
            raise
        self._runner = runner
        log.info("serving %s", ", ".join(self.urls))
        return self.port

    async def _serve(self, runner: web.AppRunner, ep: Endpoint) -> None:
        if ep.path is not None:
            sock = _bind_unix(ep.path)
            self._sockets.append((ep.path, os.lstat(ep.path).st_ino))
            await web.SockSite(runner, sock).start()
            self.urls.append(ep.name())
            return
        try:
            family = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((ep.host, ep.port), family=family)
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve on {ep.host}:{ep.port}: {exc.strerror or exc}"
            ) from exc
        bound = int(sock.getsockname()[1])  # the port actually bound, for port 0
        await web.SockSite(runner, sock, ssl_context=ep.ssl).start()
        if self.port is None:
            self.port = bound
        self.urls.append(ep.name(bound))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._unlink()

    def _unlink(self) -> None:
        """Remove the socket files this server made (not one another daemon made since)."""
        for path, inode in self._sockets:
            try:
                if os.lstat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._sockets = []

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0666: every local user may connect, and
    the caller's role (from its uid) decides what it may do, not the file's mode. A socket
    file left by a daemon that died is replaced; one a live daemon serves is not."""
    where = f"cannot serve the API on the socket {path}"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SupervisorError(
            f"{where}: the path is longer than the {MAX_SOCKET_PATH} bytes a Unix socket "
            "may have; choose a shorter one"
        )
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise SupervisorError(f"{where}: {path} exists and is not a socket")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                try:
                    probe.connect(path)
                except (ConnectionRefusedError, FileNotFoundError):
                    os.unlink(path)  # nobody listens: left by a daemon that died
                else:
                    raise SupervisorError(f"{where}: another process (a daemon?) serves on it")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o666)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise SupervisorError(f"{where}: {exc.strerror or exc}") from exc
    return sock
