"""``flowq.store.wire``: the held claims' connection, libpq's pipeline driven directly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb

from flowq.store.statements import GENERAL_PATH
from flowq.store.wire import Wire, encode, statement, text_array


@pytest.fixture
def wire(postgres_url: str) -> Iterator[Wire]:
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    w = Wire(psycopg.connect(url, autocommit=True))
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS wire_t")
        setup.execute("CREATE TABLE wire_t (k text PRIMARY KEY, v jsonb, at timestamptz)")
        # what flowq_general_path() raises, under a name of this test's own
        setup.execute(
            "CREATE OR REPLACE FUNCTION wire_hand_back() RETURNS integer LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION USING ERRCODE = '{GENERAL_PATH}', MESSAGE = 'back'; END $$"
        )
    try:
        yield w
    finally:
        w.close()


def _count(wire: Wire) -> int:
    got = wire.execute("SELECT count(*) AS n FROM wire_t").fetchone()
    wire.sync()
    return int(got.n)


def test_placeholders_become_numbered_parameters_named_once() -> None:
    st = statement("SELECT %(a)s, %(b)s, %(a)s")
    assert st.text == b"SELECT $1, $2, $1"
    assert st.params == ("a", "b")
    assert statement("SELECT %(a)s, %(b)s, %(a)s") is st  # made once
    with pytest.raises(ValueError, match="placeholders"):
        statement("SELECT 'x' LIKE '%'")


def test_parameters_in_text_format() -> None:
    at = datetime(2026, 11, 26, 12, 0, 1, 5, tzinfo=UTC)
    assert encode(None) is None
    assert encode("é") == "é".encode()
    assert encode(at) == b"2026-11-26T12:00:01.000005+00:00"
    assert encode(Jsonb({"a": [1, None]})) == b'{"a": [1, null]}'
    assert encode(7) == b"7" and encode(True) == b"t"
    assert encode(["a", 'b"c', "d\\e", "f,g"]) == b'{"a","b\\"c","d\\\\e","f,g"}'
    with pytest.raises(TypeError, match="float"):
        encode(1.5)


def test_text_arrays_read_back() -> None:
    assert text_array("{}") == []
    assert text_array("{a,b}") == ["a", "b"]
    assert text_array('{"a b","c,d","e\\"f","g\\\\h",NULL,"NULL"}') == [
        "a b",
        "c,d",
        'e"f',
        "g\\h",
        None,
        "NULL",
    ]


def test_values_round_trip_through_the_server(wire: Wire) -> None:
    items = ["plain", "with space", 'quo"te', "back\\slash", "com,ma", "NULL", "ünï"]
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    row = wire.execute(
        "SELECT %(ids)s::text[] AS ids, %(doc)s AS doc, %(n)s::int + 1 AS n, "
        "%(none)s::text AS none, %(ok)s::bool AS ok, array_agg(x) AS agg "
        "FROM unnest(%(ids)s::text[]) AS x",
        {"ids": items, "doc": Jsonb({"k": ["v", 1]}), "n": 41, "none": None, "ok": True},
    ).fetchone()
    wire.sync()
    assert row.ids == items and row.agg == items
    assert row.doc == {"k": ["v", 1]}
    assert row.n == 42 and row.none is None and row.ok is True
    # a datetime is declared timestamptz: the same instant whatever its zone
    check = wire.execute("SELECT %(at)s = %(utc)s AS same", {"at": at, "utc": at.astimezone(UTC)})
    assert check.fetchone().same is True
    wire.sync()


def test_statements_between_syncs_are_one_transaction(wire: Wire) -> None:
    insert = "INSERT INTO wire_t (k, v, at) VALUES (%(k)s, %(v)s, %(at)s)"
    wire.execute(insert, {"k": "a", "v": Jsonb(1), "at": datetime.now(UTC)})
    wire.execute(insert, {"k": "b", "v": Jsonb(2), "at": datetime.now(UTC)})
    wire.sync()
    assert _count(wire) == 2
    # an error undoes what was sent before it since the last Sync, and raises its class at sync
    wire.execute(insert, {"k": "c", "v": Jsonb(3), "at": datetime.now(UTC)})
    wire.execute(insert, {"k": "a", "v": Jsonb(4), "at": datetime.now(UTC)})
    after = wire.execute("SELECT 1 AS one")
    with pytest.raises(psycopg.errors.UniqueViolation):
        wire.sync()
    assert after.fetchone() is None  # aborted with the transaction
    assert not wire.broken
    assert _count(wire) == 2  # "c" was rolled back; the Wire goes on after the Sync


def test_a_result_is_read_before_the_commit(wire: Wire) -> None:
    insert = "INSERT INTO wire_t (k) VALUES (%(k)s) RETURNING k"
    got = wire.execute(insert, {"k": "x"})
    assert got.fetchone().k == "x"  # read with a Flush: the transaction is still open
    with psycopg.connect(wire.conn.info.dsn, autocommit=True) as other:
        assert other.execute("SELECT count(*) FROM wire_t").fetchone() == (0,)
    wire.sync()
    with psycopg.connect(wire.conn.info.dsn, autocommit=True) as other:
        assert other.execute("SELECT count(*) FROM wire_t").fetchone() == (1,)


def test_each_statement_is_prepared_once_per_connection(wire: Wire) -> None:
    sql = "SELECT %(x)s::int AS x"
    for i in range(3):
        assert wire.execute(sql, {"x": i}).fetchone().x == i
    wire.sync()
    got = wire.execute("SELECT count(*) AS n FROM pg_prepared_statements").fetchone()
    wire.sync()
    assert got.n == 2  # this statement and the count itself


def test_a_statement_that_fails_to_prepare_is_not_taken_as_prepared(wire: Wire) -> None:
    bad = "SELECT no_such_column AS x FROM wire_t WHERE k = %(k)s"
    for _ in range(2):  # the second time prepares again, and fails the same way
        wire.execute(bad, {"k": "a"})
        with pytest.raises(psycopg.errors.UndefinedColumn):
            wire.sync()
    assert _count(wire) == 0


def test_a_lost_connection_raises_operational_error_and_breaks_the_wire(wire: Wire) -> None:
    pid = wire.execute("SELECT pg_backend_pid() AS pid").fetchone().pid
    wire.sync()
    with psycopg.connect(wire.conn.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        wire.execute("SELECT 1 AS one").fetchone()
        wire.sync()
    assert wire.broken


def test_a_statement_handing_its_case_back_leaves_the_session_usable(wire: Wire) -> None:
    # psycopg takes the hand-back's unknown SQLSTATE class for an OperationalError, as it
    # does a lost connection's; the Wire must not: a new session per hand-back costs a
    # connection (and every execution's last task is handed back)
    pid = wire.execute("SELECT pg_backend_pid() AS pid").fetchone().pid
    wire.sync()
    wire.execute("INSERT INTO wire_t (k) VALUES (%(k)s)", {"k": "undone"})
    wire.execute("SELECT wire_hand_back() AS x")
    with pytest.raises(psycopg.OperationalError) as raised:
        wire.sync()
    assert raised.value.sqlstate == GENERAL_PATH
    assert not wire.broken
    assert wire.execute("SELECT pg_backend_pid() AS pid").fetchone().pid == pid
    wire.sync()
    assert _count(wire) == 0  # the transaction went with the error


def _committed(wire: Wire) -> int:
    with psycopg.connect(wire.conn.info.dsn, autocommit=True) as other:
        got = other.execute("SELECT count(*) FROM wire_t").fetchone()
        return int(got[0]) if got else -1


def test_a_deferred_statement_commits_at_once_and_is_read_later(wire: Wire) -> None:
    insert = "INSERT INTO wire_t (k) VALUES (%(k)s) RETURNING k"
    later = wire.execute(insert, {"k": "x"})
    later.deferred = True
    wire.send_sync()  # nothing read
    assert not later.done
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while _committed(wire) != 1:  # committed by the server without being read
        assert datetime.now(UTC) < deadline
    # the next statement's read passes through it; a sync stops at its own Sync
    now = wire.execute("SELECT 2 AS two")
    wire.sync()
    assert later.done and later.fetchone().k == "x"
    assert now.fetchone().two == 2


def test_a_deferred_statements_error_stays_with_it(wire: Wire) -> None:
    wire.execute("INSERT INTO wire_t (k) VALUES (%(k)s)", {"k": "a"})
    wire.sync()
    later = wire.execute("INSERT INTO wire_t (k) VALUES (%(k)s) RETURNING k", {"k": "a"})
    later.deferred = True
    wire.send_sync()
    # the next read passes through the failed statement without raising its error
    assert wire.execute("SELECT 3 AS three").fetchone().three == 3
    wire.sync()
    with pytest.raises(psycopg.errors.UniqueViolation):
        later.fetchone()  # the error is its reader's
    assert not wire.broken
    # a statement that is not deferred still raises at the read that passes through it
    wire.execute("INSERT INTO wire_t (k) VALUES (%(k)s)", {"k": "a"})
    with pytest.raises(psycopg.errors.UniqueViolation):
        wire.sync()
    assert _committed(wire) == 1
