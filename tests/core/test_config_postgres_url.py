"""A PostgreSQL URL as hosting platforms hand it out, with libpq's settings (Neon's end in
?sslmode=require&channel_binding=require; people add connect_timeout, application_name,
options, sslrootcert): SQLAlchemy passed them to asyncpg.connect() as keywords it does not
have, and every connection failed with a TypeError. They are now given to asyncpg in its own
terms, and a setting it cannot take is refused when the settings are read, naming it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.config import Settings, asyncpg_connect_args
from core.db.store import create_engine
from tests.conftest import POSTGRES_URL

NEON = (
    "postgresql://ann:hunter2@ep-cool-darkness-123456.eu-central-1.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)


def taken(url: str) -> tuple[str, dict[str, Any]]:
    """The URL and asyncpg.connect() arguments the engine gets for RELAYBOT_DATABASE_URL=url."""
    settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    return asyncpg_connect_args(settings.database_url)


def refused(url: str) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    said = str(caught.value)
    assert [err["loc"] for err in caught.value.errors()] == [("database_url",)]
    assert "hunter2" not in said
    return said


def test_neons_url_checks_the_servers_certificate_and_name_instead_of_channel_binding() -> None:
    # asyncpg has no channel binding: the server is verified as sslmode=verify-full does,
    # against the system's CAs (asyncpg's ssl=True), so no server in the middle is used.
    url, args = taken(NEON)
    assert url == (
        "postgresql+asyncpg://ann:hunter2@ep-cool-darkness-123456.eu-central-1.aws.neon.tech"
        "/neondb"
    )
    assert args == {"ssl": True}


def test_channel_binding_with_a_root_certificate_verifies_against_it() -> None:
    url, args = taken(
        "postgres://ann:hunter2@db.example.com/app?sslmode=require&channel_binding=require"
        "&sslrootcert=/etc/ssl/db-ca.pem"
    )
    assert make_url(url).query == {"ssl": "verify-full"}
    assert args == {"dsn": "postgresql://?sslrootcert=%2Fetc%2Fssl%2Fdb-ca.pem"}


@pytest.mark.parametrize("binding", ["prefer", "disable"])
def test_channel_binding_that_is_not_required_is_left_out(binding: str) -> None:
    url, args = taken(f"postgres://ann:hunter2@db/app?sslmode=require&channel_binding={binding}")
    assert make_url(url).query == {"ssl": "require"}
    assert args == {}


def test_libpqs_settings_are_given_to_asyncpg_in_its_own_terms() -> None:
    url, args = taken(
        "postgres://ann:hunter2@db/app?sslmode=verify-full&connect_timeout=10"
        "&application_name=relaybot%20eu&options=-c%20statement_timeout%3D5000"
        "&sslrootcert=/ca.pem&sslcert=/client.pem&sslkey=/client.key"
    )
    assert make_url(url).query == {"ssl": "verify-full"}
    assert args["timeout"] == 10.0
    # asyncpg reads the TLS files and server settings from a connection URI of its own.
    dsn = make_url(args.pop("dsn"))
    assert dict(dsn.query) == {
        "sslrootcert": "/ca.pem",
        "sslcert": "/client.pem",
        "sslkey": "/client.key",
        "application_name": "relaybot eu",
        "options": "-c statement_timeout=5000",
    }
    assert args == {"timeout": 10.0}


def test_a_connect_timeout_of_zero_waits_for_ever_as_libpq_does() -> None:
    assert taken("postgres://ann@db/app?connect_timeout=0")[1] == {"timeout": None}


def test_asyncpgs_own_settings_and_several_hosts_pass_as_they_are() -> None:
    written = (
        "postgresql+asyncpg://ann@/app?host=db1:5432&host=db2:5432"
        "&target_session_attrs=read-write&prepared_statement_cache_size=0&command_timeout=30"
    )
    url, args = taken(written)
    assert make_url(url).query == make_url(written).query
    assert args == {}


def test_a_user_and_password_in_the_query_pass_as_they_are() -> None:
    """A URL without user info may carry them in the query (libpq and asyncpg take them)."""
    written = "postgresql+asyncpg://db/app?user=ann&password=s3cret"
    url, args = taken(written)
    assert make_url(url).query == make_url(written).query
    assert args == {}


@pytest.mark.parametrize("setting", ["keepalives=1", "sslpassword=hunter2", "timeout=10"])
def test_a_setting_asyncpg_cannot_take_is_refused_naming_it_not_its_value(setting: str) -> None:
    name = setting.partition("=")[0]
    said = refused(f"postgres://ann:hunter2@db/app?sslmode=require&{setting}")
    assert f"the URL's ?{name}= is a setting relaybot's PostgreSQL driver (asyncpg)" in said


def test_a_connect_timeout_that_is_not_whole_seconds_is_refused() -> None:
    said = refused("postgres://ann:hunter2@db/app?connect_timeout=ten")
    assert "connect_timeout must be a whole number of seconds" in said


def test_channel_binding_required_without_tls_is_refused() -> None:
    said = refused("postgres://ann:hunter2@db/app?sslmode=disable&channel_binding=require")
    assert "channel_binding=require needs TLS" in said


@pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset")
@pytest.mark.parametrize("synchronous_commit", [True, False])
async def test_libpqs_settings_reach_postgresql(
    postgres_url: str, synchronous_commit: bool
) -> None:
    query = {
        "sslmode": "disable",
        "connect_timeout": "10",
        "application_name": "relaybot-hosted",
        "options": "-c statement_timeout=4321",
    }
    written = make_url(postgres_url).set(drivername="postgres").update_query_dict(query)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=written.render_as_string(hide_password=False),
    )
    # Both of relaybot's pools (the second's commits do not wait for the disk).
    engine = create_engine(settings.database_url, synchronous_commit=synchronous_commit)
    try:
        async with engine.connect() as conn:
            shown = {
                name: (await conn.execute(text(f"SHOW {name}"))).scalar()
                for name in ("application_name", "statement_timeout", "synchronous_commit")
            }
    finally:
        await engine.dispose()
    assert shown == {
        "application_name": "relaybot-hosted",
        "statement_timeout": "4321ms",
        "synchronous_commit": "on" if synchronous_commit else "off",
    }
