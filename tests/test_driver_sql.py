"""Statements run on the driver's cursor (dicomd.driver_sql) write what SQLAlchemy's execution writes.

Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, func, insert, select, update

from dicomd.driver_sql import DriverStatement
from dicomd.usage import INSTANCE_COLUMNS, STUDY_COLUMNS, index_statements
from portal.identities.service import create_identity
from portal.models import DicomIdentity, Study, UsageDay
from portal.usage_days import add_usage

# One with microseconds and one without: SQLAlchemy stores both in one text format on SQLite.
TIMES = [datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc), datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)]


def study_values(uid: str, identity_id: int, received_at: datetime) -> dict:
    return {
        "study_instance_uid": uid, "identity_id": identity_id, "study_date": "20260304", "study_time": "050607",
        "accession_number": "ACC1", "study_description": "Echo", "modalities": "US", "dicom_study_id": "1",
        "patient_id": "P1", "patient_name": "Doe^Jane", "patient_birth_date": None, "patient_sex": "F",
        "first_received_at": received_at, "last_received_at": received_at,
    }


@pytest.fixture
def identity_id(session):
    identity = create_identity(session, name="Echo cart", ae_title="ECHO1")
    session.commit()
    return identity.id


def study_row(engine, uid: str) -> dict:
    """Return the study's columns as SQLAlchemy reads them, and its times as the driver stores them."""
    with engine.connect() as connection:
        row = connection.execute(select(Study.__table__).where(Study.__table__.c.study_instance_uid == uid)).one()
        stored_times = connection.exec_driver_sql(
            f"SELECT first_received_at, last_received_at FROM studies WHERE study_instance_uid = '{uid}'"
        ).one()
    values = {name: value for name, value in row._mapping.items() if name not in ("id", "study_instance_uid")}
    return {**values, "stored_times": tuple(stored_times)}


@pytest.mark.parametrize("received_at", TIMES, ids=["microseconds", "whole-seconds"])
def test_insert_study_row_matches_sqlalchemy(engine, identity_id, received_at):
    statements = index_statements(engine.dialect)
    studies = Study.__table__

    with engine.begin() as connection:
        connection.execute(insert(studies), study_values("2.25.1", identity_id, received_at))
        inserted = statements.insert_study.execute(connection, study_values("2.25.2", identity_id, received_at))
        new_id = inserted.fetchone()[0]

    assert study_row(engine, "2.25.2") == study_row(engine, "2.25.1")
    assert study_row(engine, "2.25.2")["first_received_at"] == received_at
    with engine.connect() as connection:
        assert connection.scalar(select(studies.c.id).where(studies.c.study_instance_uid == "2.25.2")) == new_id


def test_touch_study_returns_id_and_modalities(engine, identity_id):
    statements = index_statements(engine.dialect)
    later = TIMES[0] + timedelta(hours=1)

    with engine.begin() as connection:
        statements.insert_study.execute(connection, study_values("2.25.3", identity_id, TIMES[0]))
        touched = statements.touch_study.execute(connection, {"uid": "2.25.3", "now": later}).fetchone()
        missing = statements.touch_study.execute(connection, {"uid": "2.25.404", "now": later}).fetchone()

    assert touched[1] == "US"
    assert missing is None
    assert study_row(engine, "2.25.3")["last_received_at"] == later


def test_counters_add_literal_one_and_set_update_time(engine, identity_id):
    statements = index_statements(engine.dialect)
    with engine.connect() as connection:
        updated_before = connection.scalar(select(DicomIdentity.updated_at).where(DicomIdentity.id == identity_id))

    with engine.begin() as connection:
        for _ in range(2):
            statements.count_on_identity.execute(connection, {"row_id": identity_id, "added_bytes": 100, "now": TIMES[1]})

    with engine.connect() as connection:
        identity = connection.execute(select(DicomIdentity.__table__).where(DicomIdentity.id == identity_id)).one()
    assert identity.instances_received == 2
    assert identity.bytes_received == 200
    assert identity.last_seen_at == TIMES[1]
    # DicomIdentity.updated_at has onupdate=utcnow, which SQLAlchemy's own execution also applies.
    assert identity.updated_at > updated_before


def test_add_usage_matches_sqlalchemy_with_zero_defaults(engine, identity_id):
    statements = index_statements(engine.dialect)
    days = UsageDay.__table__

    with engine.begin() as connection:
        add_usage(connection, identity_id, date(2026, 3, 4), instances_received=1, bytes_received=10)
        for _ in range(2):
            statements.add_usage.execute(
                connection, {"identity_id": identity_id, "day": date(2026, 3, 5), "instances_received": 1,
                             "bytes_received": 10},
            )

    with engine.connect() as connection:
        rows = {row.day: row for row in connection.execute(select(days).where(days.c.identity_id == identity_id))}
    assert rows[date(2026, 3, 5)].instances_received == 2
    assert rows[date(2026, 3, 5)].bytes_received == 20
    assert rows[date(2026, 3, 5)].store_requests == rows[date(2026, 3, 4)].store_requests == 0


def test_index_statements_set_every_column_they_name(engine):
    statements = index_statements(engine.dialect)

    assert set(statements.insert_study.names) == set(STUDY_COLUMNS)
    assert set(statements.insert_instance.names) == set(INSTANCE_COLUMNS)


def test_column_defaults_apply_as_in_sqlalchemy(engine):
    table = Table(
        "with_defaults", MetaData(), Column("id", Integer, primary_key=True),
        Column("scalar", Integer, default=7), Column("function", Integer, default=lambda: 8),
        Column("expression", Integer, default=func.abs(-9)),
    )
    table.create(engine)
    statement = DriverStatement.compile(insert(table), engine.dialect, ["id"])

    with engine.begin() as connection:
        statement.execute(connection, {"id": 1})
        row = connection.execute(select(table)).one()

    assert (row.scalar, row.function, row.expression) == (7, 8, 9)


def test_missing_value_raises_key_error(engine, identity_id):
    statement = DriverStatement.compile(
        update(DicomIdentity.__table__).where(DicomIdentity.id == bindparam("row_id")).values(enabled=False),
        engine.dialect,
    )

    with engine.begin() as connection, pytest.raises(KeyError, match="row_id"):
        statement.execute(connection, {})
