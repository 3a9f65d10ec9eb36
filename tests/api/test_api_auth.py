"""Who may do what through the operator API: the caller's uid over the Unix socket (a real
second local user runs the real CLI), bearer tokens over TLS, a 403 that names the missing
role, a 401 for an unknown caller, and writes that a web page cannot make."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from memory_service import MemoryService, seeded
from prometheus_client import CollectorRegistry
from unix_http import on_socket, session, short_dir

from trainwarden.cli import build_parser, main
from trainwarden.supervisor.api.auth import (
    Authenticator,
    Principal,
    Role,
    RoleMap,
    Tokens,
    hash_token,
    parse_members,
    peer_uid,
    token_line,
)
from trainwarden.supervisor.api.client import ApiError, OperatorClient, read_token_file
from trainwarden.supervisor.api.server import ApiServer, Endpoint, create_app, create_metrics_app
from trainwarden.supervisor.cli.daemon import api_socket
from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.daemon.process import DaemonConfig, build_auth
from trainwarden.supervisor.errors import ConfigError, SupervisorError

BIN = str(Path(sys.executable).parent / "trainwarden")
ME = pwd.getpwuid(os.getuid()).pw_name
DRAIN_NEEDS = "draining a node needs role operator (trainwarden daemon --operators)"


# --- a real second local user -------------------------------------------------------------------


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int
    group: str  # a group of its own, for --operators @group
    runs_bin: bool  # whether it may run this venv's trainwarden (its Python may be under /root)


@pytest.fixture(scope="module")
def other_user() -> Iterator[LocalUser]:
    """A throwaway local user (no home) in a throwaway group; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    tag = secrets.token_hex(3)
    name, group = f"tw-test-{tag}", f"tw-grp-{tag}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(
            ["useradd", "-M", "-N", "-G", group, "-s", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(name)
            probe = subprocess.run(
                ["runuser", "-u", name, "--", BIN, "--version"],
                capture_output=True,
                check=False,
                cwd="/",
                timeout=60,
            )
            yield LocalUser(name, entry.pw_uid, entry.pw_gid, group, probe.returncode == 0)
        finally:
            subprocess.run(["userdel", name], check=False, capture_output=True)
    finally:
        subprocess.run(["groupdel", group], check=False, capture_output=True)


async def cli_as(user: LocalUser, sock: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real ``trainwarden`` CLI run as ``user`` (runuser: its own groups, no root's).
    Where the user may not run this venv's Python (it lives under a 0700 /root), the CLI's
    ``main`` runs in a forked child that became the user: the same code, the same uid on
    the socket."""
    if not user.runs_bin:
        return await asyncio.to_thread(_forked_cli, user, sock, argv)
    proc = await asyncio.create_subprocess_exec(
        "runuser",
        "-u",
        user.name,
        "--",
        "env",
        f"TRAINWARDEN_API={sock}",
        "PYTHONDONTWRITEBYTECODE=1",
        BIN,
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(argv, proc.returncode or 0, out.decode(), err.decode())


def _forked_cli(
    user: LocalUser, sock: Path, argv: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    build_parser(("nodes", "drain", "runs", "actions"))  # imported now: the child may not
    # read the stdlib under /root
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, run the CLI, never return into pytest
        code = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setgroups(os.getgrouplist(user.name, user.gid))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.environ["TRAINWARDEN_API"] = str(sock)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with open(out_r, encoding="utf-8") as out, open(err_r, encoding="utf-8") as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), stdout, stderr)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A socket directory other users can reach (the daemon's is /run/trainwarden, 0755)."""
    with short_dir() as path:
        path.chmod(0o755)
        yield path


@pytest.fixture
def service() -> MemoryService:
    return seeded()


async def _serve(service: MemoryService, sock: Path, roles: RoleMap) -> ApiServer:
    app = create_app(service, Metrics(CollectorRegistry()), Authenticator(roles))
    server = on_socket(app, sock)
    await server.start()
    return server


def _drains(service: MemoryService) -> list[Any]:
    return [c for c in service.calls if c[0] in ("drain", "add_run")]


async def test_a_viewer_cannot_drain_and_nothing_changes(
    other_user: LocalUser, service: MemoryService, public_dir: Path
) -> None:
    sock = public_dir / "api.sock"
    server = await _serve(service, sock, RoleMap())
    try:
        listed = await cli_as(other_user, sock, "nodes", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["name"] for r in json.loads(listed.stdout)][:2] == ["nid001", "nid002"]
        refused = await cli_as(other_user, sock, "drain", "nid001", "--reason", "x")
    finally:
        await server.stop()
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        f"trainwarden: error: user {other_user.name} (uid {other_user.uid}) has role viewer; "
        f"{DRAIN_NEEDS}\n"
    )
    assert _drains(service) == [] and service.nodes["nid001"].state == "healthy"
    assert len(service.actions) == 1  # the seeded one: no action row was added


@pytest.mark.parametrize("member", ["name", "@group"])
async def test_an_operator_drains_and_is_recorded_as_itself(
    other_user: LocalUser, service: MemoryService, public_dir: Path, member: str
) -> None:
    entry = other_user.name if member == "name" else f"@{other_user.group}"
    sock = public_dir / "api.sock"
    server = await _serve(service, sock, RoleMap(operators=(entry,)))
    try:
        done = await cli_as(other_user, sock, "drain", "nid001", "--reason", "fan", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["who"] == other_user.name
        assert service.calls[-1] == (
            "drain",
            {"node": "nid001", "reason": "fan", "who": other_user.name},
        )
        # an operator may not add a run: its command would run as the daemon submits it
        added = await cli_as(
            other_user,
            sock,
            *("runs", "add", "x1", "--scheduler", "local", "--nodes", "1"),
            *("--checkpoint-dir", "/tmp/x1", "--", "/bin/true"),
        )
        assert added.returncode == 2
        assert added.stderr == (
            f"trainwarden: error: user {other_user.name} (uid {other_user.uid}) has role "
            "operator; adding a run (its command runs as submitted) needs role admin "
            "(trainwarden daemon --admins)\n"
        )
        assert "x1" not in service.runs
        # --who is refused by the CLI before anything is sent
        named = await cli_as(other_user, sock, "undrain", "nid001", "--who", "root")
        assert named.returncode == 2 and "--who is no longer accepted" in named.stderr
        assert "Traceback" not in named.stderr
        assert service.nodes["nid001"].state == "drained"
    finally:
        await server.stop()


async def test_a_user_without_a_role_reads_nothing(
    other_user: LocalUser, service: MemoryService, public_dir: Path
) -> None:
    sock = public_dir / "api.sock"
    server = await _serve(service, sock, RoleMap(viewers=()))
    try:
        refused = await cli_as(other_user, sock, "nodes")
    finally:
        await server.stop()
    assert refused.returncode == 2
    assert refused.stderr == (
        f"trainwarden: error: user {other_user.name} (uid {other_user.uid}) has no role; "
        "reading the daemon's state needs role viewer (trainwarden daemon --viewers)\n"
    )


def test_roles_resolve_users_groups_and_the_rest(other_user: LocalUser) -> None:
    uid = other_user.uid
    assert RoleMap().principal_for_uid(uid) == Principal(
        other_user.name, Role.VIEWER, f"unix uid {uid}"
    )
    by_group = RoleMap(admins=(f"@{other_user.group}",)).principal_for_uid(uid)
    assert by_group.role is Role.ADMIN
    assert RoleMap(viewers=()).principal_for_uid(uid).role is Role.NONE
    assert RoleMap(viewers=()).principal_for_uid(0).role is Role.ADMIN  # root, always
    nobody = RoleMap().principal_for_uid(987_654)  # no passwd entry
    assert (nobody.name, nobody.who, nobody.role) == ("uid:987654", "uid:987654", Role.VIEWER)
    RoleMap(operators=(other_user.name, f"@{other_user.group}", "*")).validate()


def test_unknown_role_members_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="--operators: there is no user 'no-such-user-x9'"):
        RoleMap(operators=("no-such-user-x9",)).validate()
    with pytest.raises(ConfigError, match="--admins: there is no group 'no-such-grp-x9'"):
        RoleMap(admins=("@no-such-grp-x9",)).validate()
    with pytest.raises(ConfigError, match="--viewers: 'a b' is not a user, @group or"):
        parse_members("alice, a b", "--viewers")
    assert parse_members(" alice,@ops,,alice,* ", "--viewers") == ("alice", "@ops", "*")
    with pytest.raises(ConfigError, match="no user 'no-such-user-x9'"):
        build_auth(DaemonConfig(db_url="sqlite://", roles=RoleMap(admins=("no-such-user-x9",))))


# --- what a write must look like -------------------------------------------------------------


@pytest.fixture
async def root_http(service: MemoryService) -> AsyncIterator[aiohttp.ClientSession]:
    """This process (root or the daemon's own user: an admin) on the socket."""
    with short_dir() as d:
        server = await _serve(service, d / "api.sock", RoleMap())
        try:
            async with session(server) as http:
                yield http
        finally:
            await server.stop()


async def test_who_in_the_body_is_refused(
    root_http: aiohttp.ClientSession, service: MemoryService
) -> None:
    resp = await root_http.post("/api/v1/nodes/nid001/drain", json={"reason": "x", "who": "bob"})
    assert resp.status == 400
    assert (await resp.json())["error"] == (
        f"'who' is not accepted: the daemon records the authenticated caller ({ME}) as who "
        "acted; leave the field out"
    )
    resp = await root_http.post("/api/v1/runs", json={"name": "r", "who": "bob"})
    assert resp.status == 400 and "'who' is not accepted" in (await resp.json())["error"]
    assert _drains(service) == []


async def test_writes_must_be_json_from_a_program(
    root_http: aiohttp.ClientSession, service: MemoryService
) -> None:
    body = json.dumps({"reason": "x"})
    plain = await root_http.post(
        "/api/v1/nodes/nid001/drain", data=body, headers={"Content-Type": "text/plain"}
    )
    assert plain.status == 415
    assert (await plain.json())["error"] == (
        "a write needs Content-Type: application/json, not 'text/plain'"
    )
    form = await root_http.post("/api/v1/nodes/nid001/drain", data={"reason": "x"})
    assert form.status == 415
    cross = await root_http.post(
        "/api/v1/nodes/nid001/drain",
        json={"reason": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status == 403
    assert (
        "a write from a web page (Origin 'https://evil.example') is refused"
        in (await cross.json())["error"]
    )
    assert _drains(service) == [] and service.nodes["nid001"].state == "healthy"
    # a read from anywhere is fine (it changes nothing)
    assert (await root_http.get("/api/v1/nodes", headers={"Origin": "https://x"})).status == 200


# --- remote operators: TLS and bearer tokens ---------------------------------------------------


@dataclass
class Tls:
    cert: Path
    key: Path
    tokens: Path
    viewer: str
    operator: str


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "api.crt", d / "api.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    viewer, operator = "tw_" + secrets.token_urlsafe(32), "tw_" + secrets.token_urlsafe(32)
    tokens = d / "tokens"
    tokens.write_text(
        "# name role hash\n"
        f"{token_line('alice', Role.VIEWER, viewer)}\n"
        f"{token_line('bob', Role.OPERATOR, operator)}  # on call\n"
    )
    tokens.chmod(0o600)
    return Tls(cert, key, tokens, viewer, operator)


@pytest.fixture
async def tcp_api(service: MemoryService, tls: Tls) -> AsyncIterator[str]:
    """The API on 127.0.0.1 over TLS with the tokens; its https URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    auth = Authenticator(RoleMap(), Tokens.load(str(tls.tokens)))
    app = create_app(service, Metrics(CollectorRegistry()), auth)
    server = ApiServer(app, endpoints=[Endpoint("127.0.0.1", 0, ssl=context)])
    async with server:
        assert server.url.startswith("https://127.0.0.1:")
        yield server.url


def _client(url: str, tls: Tls, token: str | None) -> OperatorClient:
    return OperatorClient(url, token=token, ca_file=str(tls.cert))


async def _status(call: Any) -> tuple[int, str]:
    try:
        await asyncio.to_thread(call)
    except ApiError as exc:
        return exc.status, str(exc)
    return 200, ""


async def test_tcp_needs_a_valid_token_and_its_role(
    tcp_api: str, tls: Tls, service: MemoryService
) -> None:
    no_token = await _status(lambda: _client(tcp_api, tls, None).drain("nid001", "x"))
    assert no_token[0] == 401 and no_token[1].startswith("no credentials: over TCP")
    bad = await _status(lambda: _client(tcp_api, tls, "tw_guess").drain("nid001", "x"))
    assert bad == (
        401,
        "the bearer token is not in the daemon's tokens file (mistyped, or revoked)",
    )
    assert await _status(lambda: _client(tcp_api, tls, tls.viewer).nodes()) == (200, "")
    viewer = await _status(lambda: _client(tcp_api, tls, tls.viewer).drain("nid001", "x"))
    assert viewer == (
        403,
        "token alice has role viewer; draining a node needs role operator (the role of a "
        "token is set in the daemon's tokens file)",
    )
    assert _drains(service) == []
    row = await asyncio.to_thread(_client(tcp_api, tls, tls.operator).drain, "nid001", "fan")
    assert (row.who, row.node, row.status) == ("bob (token)", "nid001", "succeeded")


async def test_tcp_refuses_an_unverified_certificate_and_plain_http(tcp_api: str, tls: Tls) -> None:
    with pytest.raises(SupervisorError, match="name the CA that signed it with --api-ca"):
        await asyncio.to_thread(OperatorClient(tcp_api, token=tls.operator).nodes)
    with pytest.raises(SupervisorError, match="not served over plain http"):
        OperatorClient(tcp_api.replace("https://", "http://"), token=tls.operator)


async def test_tcp_without_tokens_knows_nobody(service: MemoryService, tls: Tls) -> None:
    server = ApiServer(create_app(service, Metrics(CollectorRegistry())), "127.0.0.1", 0)
    async with server, aiohttp.ClientSession(base_url=server.url) as http:
        resp = await http.get("/api/v1/nodes")
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "use the daemon's Unix socket" in (await resp.json())["error"]


def test_the_client_refuses_a_token_file_others_can_read(
    tls: Tls, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    path.write_text(tls.operator + "\n")
    path.chmod(0o644)
    with pytest.raises(SupervisorError, match="mode 0644\\): chmod 600"):
        read_token_file(str(path))
    code = main(["nodes", "--api", "https://127.0.0.1:1", "--token-file", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "the token file" in err and "readable or writable by group" in err
    path.chmod(0o600)
    assert read_token_file(str(path)) == tls.operator


def test_the_client_refuses_a_token_file_someone_else_owns(
    other_user: LocalUser, tls: Tls, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text(tls.operator)
    path.chmod(0o600)
    os.chown(path, other_user.uid, -1)
    with pytest.raises(SupervisorError, match=f"belongs to {other_user.name}, not {ME}"):
        read_token_file(str(path))


def test_the_daemon_refuses_a_tokens_file_others_can_read(tls: Tls, tmp_path: Path) -> None:
    loose = tmp_path / "tokens"
    loose.write_text(tls.tokens.read_text())
    loose.chmod(0o640)
    with pytest.raises(ConfigError, match=r"--api-tokens: the tokens file .* \(mode 0640\)"):
        Tokens.load(str(loose))
    loose.chmod(0o600)
    assert [(e.name, e.role) for e in Tokens.load(str(loose)).entries] == [
        ("alice", Role.VIEWER),
        ("bob", Role.OPERATOR),
    ]
    for bad, message in (
        ("alice viewer\n", "expected NAME ROLE sha256:HEX"),
        ("alice boss sha256:00\n", "unknown role 'boss'"),
        ("alice viewer md5:00\n", "is not a sha256:HEX token hash"),
        (f"a viewer {hash_token('1')}\na admin {hash_token('2')}\n", "'a' is listed twice"),
    ):
        loose.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            Tokens.load(str(loose))


def test_token_new_writes_a_private_file_and_prints_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bob.token"
    assert main(["token", "new", "bob", "--role", "operator", "--out", str(out)]) == 0
    printed, note = capsys.readouterr()
    assert (out.stat().st_mode & 0o777) == 0o600
    token = out.read_text().strip()
    assert printed == f"bob operator {hash_token(token)}\n"
    assert "--api-tokens" in note
    tokens = tmp_path / "tokens"
    tokens.write_text(printed)
    tokens.chmod(0o600)
    entry = Tokens.load(str(tokens)).find(token)
    assert entry is not None and (entry.name, entry.role) == ("bob", Role.OPERATOR)
    assert main(["token", "new", "bob", "--role", "operator", "--out", str(out)]) == 2
    assert "exists: a token file is never overwritten" in capsys.readouterr().err
    assert out.read_text().strip() == token


# --- the daemon's configuration ------------------------------------------------------------------


def test_the_daemon_explains_an_old_api_address_and_what_tcp_needs() -> None:
    with pytest.raises(ConfigError, match="--api now takes the path of the operator API's Unix"):
        api_socket("127.0.0.1:8470")
    assert api_socket("/run/trainwarden/api.sock") == "/run/trainwarden/api.sock"
    cfg = DaemonConfig(db_url="sqlite://", api_tcp_host="0.0.0.0", api_tcp_port=8471)
    with pytest.raises(
        ConfigError,
        match=r"--api-tcp 0\.0\.0\.0:8471 also needs --api-tls-cert, --api-tls-key, --api-tokens",
    ):
        build_auth(cfg)
    cfg.api_tls_cert, cfg.api_tls_key = "/c", "/k"
    with pytest.raises(ConfigError, match="also needs --api-tokens: over TCP"):
        build_auth(cfg)


# --- the metrics listener ----------------------------------------------------------------------


async def test_the_metrics_listener_reads_only(service: MemoryService) -> None:
    metrics = Metrics(CollectorRegistry())
    server = ApiServer(create_metrics_app(metrics, service.status), "127.0.0.1", 0)
    async with server, aiohttp.ClientSession(base_url=server.url) as http:
        resp = await http.get("/metrics")
        assert resp.status == 200 and "trainwarden_leader" in await resp.text()
        assert (await http.get("/healthz")).status == 200
        assert (await http.get("/api/v1/nodes")).status == 404
        drain = await http.post("/api/v1/nodes/nid001/drain", json={"reason": "x"})
        assert drain.status == 404
    assert service.calls == [] and service.nodes["nid001"].state == "healthy"


def test_a_socket_peer_is_known_by_uid() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.getuid()
    with socket.socket() as tcp:
        assert peer_uid(tcp) is None
