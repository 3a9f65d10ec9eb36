"""Every way a database URL can be wrong gives one sentence naming it, password masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.engine import default_url, mask, parse_url
from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import open_store


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense", "invalid database URL 'nonsense'"),
        ("", "invalid database URL"),
        ("mysql://u:hunter2@db/tw", "unsupported database URL 'mysql://u:***@db/tw'"),
        ("postgresql+nodriver://u@h/tw", "no driver"),
        ("postgresql://u:hunter2@h", "names no database"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as err:
        open_store(url)
    message = str(err.value)
    assert expected in message
    assert "hunter2" not in message and "\n" not in message


def test_plain_postgresql_url_uses_the_shipped_driver() -> None:
    assert parse_url("postgresql://u@h/tw").drivername == "postgresql+psycopg"
    assert mask("postgresql+psycopg://u:s3cret@h:5432/tw") == "postgresql+psycopg://u:***@h:5432/tw"


@pytest.mark.integration
def test_unreachable_host_and_missing_database() -> None:
    with pytest.raises(StoreError) as err:
        open_store("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/tw")
    message = str(err.value)
    assert "cannot use database 'postgresql+psycopg://postgres:***@127.0.0.1:1/tw'" in message
    assert "refused" in message and "hunter2" not in message
    with pytest.raises(StoreError, match='database "tw_no_such_db" does not exist'):
        upgrade("postgresql+psycopg://postgres@127.0.0.1:5432/tw_no_such_db")


def test_sqlite_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        upgrade(f"sqlite:///{tmp_path / 'nope' / 'tw.db'}")
    assert not (tmp_path / "nope").exists()


def test_default_url(tmp_path: Path) -> None:
    assert default_url({"TRAINWARDEN_DB_URL": "postgresql+psycopg://h/tw"}) == (
        "postgresql+psycopg://h/tw"
    )
    state = tmp_path / "state" / "deep"
    url = default_url({"TRAINWARDEN_STATE_DIR": str(state)})
    assert url == f"sqlite:///{state / 'trainwarden.db'}"
    assert state.is_dir()
