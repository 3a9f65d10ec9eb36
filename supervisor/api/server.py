"""The daemon's HTTP face: the operator API under ``/api/v1``, ``/metrics`` and ``/healthz``.

A thin layer: it parses and validates requests, calls :class:`OperatorService` and turns
rows into JSON. Every error leaves as ``{"error": "<sentence>"}`` with a fitting status:
404 for an unknown node, run, event or action; 400 for a request the daemon refuses
(malformed JSON, a missing field, an invalid name); 502/503 when the scheduler or the
store failed. A traceback never reaches the client; an unexpected exception is logged
here with its traceback and answered 500 with its type and message only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainwarden.health.errors import TrainwardenError
from trainwarden.health.report import check_name
from trainwarden.supervisor.api.contract import (
    DEFAULT_API,
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    OperatorService,
    RunSpecIn,
)
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.errors import NotFoundError, SchedulerError, StoreError, SupervisorError
from trainwarden.supervisor.store.records import ActionStatus

__all__ = ["DEFAULT_API", "DEFAULT_API_HOST", "DEFAULT_API_PORT", "ApiServer", "create_app"]

log = logging.getLogger("trainwarden.api")

PREFIX = "/api/v1"
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
MAX_BODY_BYTES = 1024 * 1024

SERVICE_KEY = web.AppKey("service", OperatorService)
METRICS_KEY = web.AppKey("metrics", Metrics)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiInputError(SupervisorError):
    """A request the API refuses before it reaches the service (answered 400)."""


# --- request bodies -------------------------------------------------------------------------

Text = Field(min_length=1, max_length=2000)
Who = Field(min_length=1, max_length=128)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class DrainIn(_Body):
    reason: str = Text
    who: str = Who


class UndrainIn(_Body):
    reason: str = Field(default="returned to service by an operator", max_length=2000)
    who: str = Who


class RestartIn(_Body):
    reason: str = Text
    who: str = Who


class ApproveIn(_Body):
    who: str = Who


class RejectIn(_Body):
    reason: str = Text
    who: str = Who


class AddRunIn(RunSpecIn):
    """A run spec plus who asks for it."""

    who: str = Field(min_length=1, max_length=128)

    def spec(self) -> RunSpecIn:
        return RunSpecIn.model_validate(self.model_dump(exclude={"who"}))


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


async def _body(request: web.Request, model: type[M]) -> M:
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


# --- handlers ---------------------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    return _rows(await _service(request).list_nodes())


async def drain(request: web.Request) -> web.Response:
    node = check_name("node", request.match_info["name"])
    body = await _body(request, DrainIn)
    return _row(await _service(request).drain(node, body.reason, body.who))


async def undrain(request: web.Request) -> web.Response:
    node = check_name("node", request.match_info["name"])
    body = await _body(request, UndrainIn)
    return _row(await _service(request).undrain(node, body.reason, body.who))


async def list_runs(request: web.Request) -> web.Response:
    return _rows(await _service(request).list_runs())


async def add_run(request: web.Request) -> web.Response:
    body = await _body(request, AddRunIn)
    return _row(await _service(request).add_run(body.spec(), body.who), status=201)


async def restart_run(request: web.Request) -> web.Response:
    run = check_name("run", request.match_info["name"])
    body = await _body(request, RestartIn)
    return _row(await _service(request).restart_run(run, body.reason, body.who))


async def list_events(request: web.Request) -> web.Response:
    q = request.query
    since = q.get("since_id")
    kind = q.get("kind") or None
    if kind is not None and len(kind) > 64:
        raise ApiInputError("kind must be at most 64 characters")
    rows = await _service(request).list_events(
        limit=_limit(q),
        node=_opt_name(q, "node"),
        run=_opt_name(q, "run"),
        kind=kind,
        since_id=None if since in (None, "") else _int(since, "since_id"),
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
    body = await _body(request, RejectIn)
    ident = request.match_info["id"]
    return _row(await _service(request).close_incident(ident, body.reason, body.who))


def _explain(what: Literal["event", "action"]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        ident = _int(request.match_info["id"], f"{what} id")
        return _row(await _service(request).explain(ident, what))

    return handler


async def approve(request: web.Request) -> web.Response:
    ident = _int(request.match_info["id"], "action id")
    body = await _body(request, ApproveIn)
    return _row(await _service(request).approve(ident, body.who))


async def reject(request: web.Request) -> web.Response:
    ident = _int(request.match_info["id"], "action id")
    body = await _body(request, RejectIn)
    return _row(await _service(request).reject(ident, body.reason, body.who))


async def serve_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    try:
        status = dict(request.app[SERVICE_KEY].status())
    except Exception as exc:  # a status probe that fails is itself the answer
        log.exception("status() failed")
        return _json({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 503)
    ok = status.get("ok") is not False
    return _json(status, 200 if ok else 503)


# --- errors and instrumentation ----------------------------------------------------------------


def _status_for(exc: TrainwardenError) -> int:
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
        return _json({"error": str(exc)}, code)
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


def create_app(service: OperatorService, metrics: Metrics) -> web.Application:
    """The aiohttp application serving ``service`` and ``metrics``."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics
    p = PREFIX
    app.router.add_get(f"{p}/nodes", list_nodes)
    app.router.add_post(f"{p}/nodes/{{name}}/drain", drain)
    app.router.add_post(f"{p}/nodes/{{name}}/undrain", undrain)
    app.router.add_get(f"{p}/runs", list_runs)
    app.router.add_post(f"{p}/runs", add_run)
    app.router.add_post(f"{p}/runs/{{name}}/restart", restart_run)
    app.router.add_get(f"{p}/events", list_events)
    app.router.add_get(f"{p}/events/{{id}}/explain", _explain("event"))
    app.router.add_get(f"{p}/incidents", list_incidents)
    app.router.add_post(f"{p}/incidents/{{id}}/close", close_incident)
    app.router.add_get(f"{p}/actions", list_actions)
    app.router.add_get(f"{p}/actions/{{id}}/explain", _explain("action"))
    app.router.add_post(f"{p}/actions/{{id}}/approve", approve)
    app.router.add_post(f"{p}/actions/{{id}}/reject", reject)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    return app


def create_standby_app(metrics: Metrics, status: Callable[[], dict[str, Any]]) -> web.Application:
    """What a standby daemon serves: its metrics (``trainwarden_leader 0``) and health, so
    Prometheus and systemd see it; the operator API answers 503 naming the leader."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[METRICS_KEY] = metrics

    async def standby_health(_: web.Request) -> web.Response:
        return _json(status(), 200)

    async def standby_api(_: web.Request) -> web.Response:
        leader = status().get("leader_holder") or "another daemon"
        return _json({"error": f"this daemon stands by; {leader} leads: use the leader's API"}, 503)

    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", standby_health)
    app.router.add_route("*", PREFIX + "/{tail:.*}", standby_api)
    return app


class ApiServer:
    """Runs an application on ``host:port`` (port 0 picks a free one); for the daemon and tests."""

    def __init__(
        self,
        app: web.Application,
        host: str = DEFAULT_API_HOST,
        port: int = DEFAULT_API_PORT,
        *,
        access_log: bool = False,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the API server is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Bind and serve; returns the port actually bound."""
        runner = web.AppRunner(
            self._app, access_log=log if self._access_log else None, handle_signals=False
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SupervisorError(
                f"cannot serve the API on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("operator API listening on %s", self.url)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
