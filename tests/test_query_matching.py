"""C-FIND attribute matching (PS3.4 C.2.2.2) without sockets or a database."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomd.query import DATE, NAME, NUMBER, TEXT, TIME, UID, InvalidQuery, matches, parse_identifier

CASES = [
    # kind, query value, stored value, expected
    (TEXT, "", None, True),
    (TEXT, "*", None, True),
    (TEXT, "CT", "CT", True),
    (TEXT, "CT", "ct", False),
    (TEXT, "CT", None, False),
    (TEXT, "C?", "CT", True),
    (TEXT, "C?", "CTX", False),
    (TEXT, "*CT1", "1CT1", True),
    (TEXT, "A.B*", "AXB", False),
    (TEXT, "MR", "CT\\MR", True),
    (TEXT, "CT\\US", "MR", False),
    (TEXT, "CT\\US", "US", True),
    (NAME, "doe^*", "Doe^John", True),
    (NAME, "Doe^John", "DOE^JOHN", True),
    (UID, "1.2.3", "1.2.3", True),
    (UID, "1.2.3\\1.2.4", "1.2.4", True),
    (UID, "1.2.3\\1.2.4", "1.2.5", False),
    (UID, "1.2.3", "1.2.30", False),
    (DATE, "20040826", "20040826", True),
    (DATE, "20040801-20040831", "20040826", True),
    (DATE, "20040801-20040831", "20040901", False),
    (DATE, "20040801-", "20050101", True),
    (DATE, "-20040801", "20040119", True),
    (DATE, "-20040801", "20040826", False),
    (DATE, "20040801-20040831", None, False),
    (DATE, "2004.08.26", "20040826", True),
    (DATE, "garbage", "20040826", False),
    (TIME, "0700-0800", "072730", True),
    (TIME, "-0800", "080030", True),
    (TIME, "-08", "085959.5", True),
    (TIME, "-0800", "081000", False),
    (TIME, "1200-", "072730", False),
    (TIME, "072730", "072730.000", True),
    (NUMBER, "1", "1", True),
    (NUMBER, "1\\2", "2", True),
    (NUMBER, "3", "2", False),
]


@pytest.mark.parametrize(("kind", "query_value", "stored", "expected"), CASES)
def test_matches(kind, query_value, stored, expected):
    assert matches(kind, query_value, stored) is expected


def identifier(level: str | None, **keys) -> Dataset:
    dataset = Dataset()
    if level is not None:
        dataset.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


def test_parse_identifier_keys():
    query = parse_identifier(identifier("STUDY", PatientName="Doe*", StudyDate="", StudyInstanceUID=""), "STUDY")

    assert query.level == "STUDY"
    assert query.matching == {"PatientName": "Doe*"}
    assert set(query.requested) == {"PatientName", "StudyDate", "StudyInstanceUID"}


@pytest.mark.parametrize(
    ("level", "model"),
    [(None, "STUDY"), ("WARD", "STUDY"), ("PATIENT", "STUDY")],
)
def test_parse_identifier_invalid_level(level, model):
    with pytest.raises(InvalidQuery):
        parse_identifier(identifier(level), model)
