"""C-FIND over the index of stored instances: attribute matching (PS3.4 C.2.2.2) and the records it runs on.

The matching functions are plain functions over strings, tested without a
socket or a database. `find_records` reads the candidate records of one
Query/Retrieve level from the database and `match_identifier` filters them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.models import Instance, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Matching kinds of the attributes: a UID list, a date or time range, an
# integer, a person name (case-insensitive) or any other string (case-sensitive).
UID, DATE, TIME, NUMBER, NAME, TEXT = "UI", "DA", "TM", "IS", "PN", "TEXT"

PATIENT_ATTRIBUTES = {
    "PatientName": NAME,
    "PatientID": TEXT,
    "PatientBirthDate": DATE,
    "PatientSex": TEXT,
    "NumberOfPatientRelatedStudies": NUMBER,
    "NumberOfPatientRelatedSeries": NUMBER,
    "NumberOfPatientRelatedInstances": NUMBER,
}
STUDY_ATTRIBUTES = {
    "StudyInstanceUID": UID,
    "StudyDate": DATE,
    "StudyTime": TIME,
    "AccessionNumber": TEXT,
    "StudyID": TEXT,
    "StudyDescription": TEXT,
    "ModalitiesInStudy": TEXT,
    "NumberOfStudyRelatedSeries": NUMBER,
    "NumberOfStudyRelatedInstances": NUMBER,
}
SERIES_ATTRIBUTES = {
    "SeriesInstanceUID": UID,
    "Modality": TEXT,
    "SeriesNumber": NUMBER,
    "SeriesDescription": TEXT,
    "NumberOfSeriesRelatedInstances": NUMBER,
}
IMAGE_ATTRIBUTES = {
    "SOPInstanceUID": UID,
    "SOPClassUID": UID,
    "InstanceNumber": NUMBER,
}

# The attributes a record of each level has: its own and those of the levels above.
LEVEL_ATTRIBUTES = {
    "PATIENT": PATIENT_ATTRIBUTES,
    "STUDY": {**PATIENT_ATTRIBUTES, **STUDY_ATTRIBUTES},
    "SERIES": {
        **{key: kind for key, kind in PATIENT_ATTRIBUTES.items() if not key.startswith("Number")},
        **{key: kind for key, kind in STUDY_ATTRIBUTES.items() if not key.startswith("Number")},
        **SERIES_ATTRIBUTES,
    },
    "IMAGE": {
        **{key: kind for key, kind in PATIENT_ATTRIBUTES.items() if not key.startswith("Number")},
        **{key: kind for key, kind in STUDY_ATTRIBUTES.items() if not key.startswith("Number")},
        **{key: kind for key, kind in SERIES_ATTRIBUTES.items() if not key.startswith("Number")},
        **IMAGE_ATTRIBUTES,
    },
}

# The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Identifier elements that are not matching or return keys.
CONTROL_KEYWORDS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"})

# Returned when a response has a value outside ASCII; the index stores text as Unicode.
UTF8_CHARACTER_SET = "ISO_IR 192"


class InvalidQuery(ValueError):
    """The identifier cannot be processed: a missing or unknown level, or a level the model does not have."""


@dataclass(frozen=True)
class Query:
    """A decoded C-FIND identifier: the level, the matching keys with values and every requested key."""

    level: str
    matching: dict[str, str]
    requested: tuple[str, ...]


def parse_identifier(identifier: Dataset, model: str) -> Query:
    """Decode a C-FIND identifier for `model` ("PATIENT" or "STUDY" root).

    Raises InvalidQuery when the level is missing or not part of the model:
    the Study Root model has no PATIENT level.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise InvalidQuery(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    if model == "STUDY" and level == "PATIENT":
        raise InvalidQuery("the Study Root model has no PATIENT level")

    matching: dict[str, str] = {}
    requested: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in CONTROL_KEYWORDS or element.VR == "SQ":
            # NOTE: sequence matching (PS3.4 C.2.2.2.6) is not supported; such keys are ignored.
            continue
        requested.append(keyword)
        value = _element_text(element.value)
        if value:
            matching[keyword] = value
    return Query(level=level, matching=matching, requested=tuple(requested))


def _element_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(item) for item in value).strip()
    return str(value).strip("\0 ")


def matches(kind: str, query_value: str, stored_value: str | int | None) -> bool:
    """Return whether a stored value matches a C-FIND matching key value of the given kind.

    An empty `query_value` is universal matching and matches anything, an
    empty stored value included. Any other key never matches an empty stored
    value. A stored value with several values (ModalitiesInStudy "CT\\MR")
    matches when one of them does.
    """
    if query_value in ("", "*"):
        return True
    if stored_value is None or stored_value == "":
        return False

    stored = str(stored_value)
    if kind == UID:
        return stored in {uid.strip() for uid in query_value.split("\\")}
    if kind == DATE:
        return _matches_range(query_value, stored, _date_bound)
    if kind == TIME:
        return _matches_range(query_value, stored, _time_bound)
    if kind == NUMBER:
        return _matches_number(query_value, stored)
    # A query value with several values, such as ModalitiesInStudy "CT\\MR", matches any one of them.
    patterns = query_value.split("\\")
    values = stored.split("\\") if kind == TEXT else [stored]
    return any(
        _matches_text(pattern, value, ignore_case=kind == NAME) for pattern in patterns for value in values
    )


def _matches_text(pattern: str, value: str, *, ignore_case: bool) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return value.lower() == pattern.lower() if ignore_case else value == pattern
    # DICOM wildcards: "*" matches any run of characters and "?" one character.
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    expression = "".join(parts)
    return re.fullmatch(expression, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


def _matches_number(query_value: str, stored: str) -> bool:
    try:
        wanted = {int(part) for part in query_value.split("\\")}
        return int(stored) in wanted
    except ValueError:
        return False


def _matches_range(query_value: str, stored: str, bound) -> bool:
    """Match a DA or TM value, a range "A-B", "A-" or "-B", or a list of them, against `stored`."""
    value = bound(stored, upper=False)
    if value is None:
        return False
    for part in query_value.split("\\"):
        if "-" in part:
            low_text, high_text = part.split("-", 1)
        else:
            low_text = high_text = part
        low = bound(low_text, upper=False) if low_text.strip() else None
        high = bound(high_text, upper=True) if high_text.strip() else None
        if (low_text.strip() and low is None) or (high_text.strip() and high is None):
            continue
        if (low is None or value >= low) and (high is None or value <= high):
            return True
    return False


def _date_bound(text: str, *, upper: bool) -> str | None:
    """Return a DA value as YYYYMMDD, accepting the old YYYY.MM.DD form; None if it is not a date."""
    digits = text.strip().replace(".", "")
    return digits if re.fullmatch(r"\d{8}", digits) else None


def _time_bound(text: str, *, upper: bool) -> float | None:
    """Return a TM value in seconds after midnight; an upper bound includes the whole of its last unit.

    "-12" matches up to 12:59:59.999999, as a range end given in hours
    includes that hour.
    """
    match = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?", text.strip())
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    value = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(f"0.{fraction or 0}")
    if upper:
        if minutes is None:
            value += 3600 - 1e-6
        elif seconds is None:
            value += 60 - 1e-6
        elif fraction is None:
            value += 1 - 1e-6
    return value


def match_identifier(query: Query, record: dict) -> bool:
    """Return whether `record` matches every matching key of `query` that its level defines.

    Keys that the level does not have are not matched on: they are
    returned empty, as PS3.4 C.2.2.1 allows for unsupported keys.
    """
    attributes = LEVEL_ATTRIBUTES[query.level]
    return all(
        matches(attributes[keyword], value, record.get(keyword))
        for keyword, value in query.matching.items()
        if keyword in attributes
    )


def response_identifier(query: Query, record: dict, retrieve_ae_title: str) -> Dataset:
    """Build the pending response identifier: the level and every requested key, empty when unknown."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = query.level
    identifier.RetrieveAETitle = retrieve_ae_title
    needs_utf8 = False
    for keyword in query.requested:
        value = record.get(keyword)
        if value is None:
            setattr(identifier, keyword, None)
            continue
        setattr(identifier, keyword, value)
        needs_utf8 = needs_utf8 or (isinstance(value, str) and not value.isascii())
    if needs_utf8:
        identifier.SpecificCharacterSet = UTF8_CHARACTER_SET
    return identifier


def find_records(session: Session, query: Query) -> list[dict]:
    """Return the records of the query's level that match its keys, in a stable order.

    Single-valued keys of the hierarchy (UIDs and PatientID) are matched in
    SQL; every other key is matched in Python on the rows that remain.
    """
    if query.level in ("PATIENT", "STUDY"):
        records = _patient_records(_study_records(session, query)) if query.level == "PATIENT" else _study_records(session, query)
    elif query.level == "SERIES":
        records = _series_records(session, query)
    else:
        records = _image_records(session, query)
    return [record for record in records if match_identifier(query, record)]


def _uid_filter(statement, query: Query, keyword: str, column):
    value = query.matching.get(keyword, "")
    if value and "*" not in value and "?" not in value:
        statement = statement.where(column.in_([uid.strip() for uid in value.split("\\")]))
    return statement


def _hierarchy_filters(statement, query: Query):
    statement = _uid_filter(statement, query, "StudyInstanceUID", Study.study_instance_uid)
    statement = _uid_filter(statement, query, "PatientID", Study.patient_id)
    return statement


def _study_columns(study: Study) -> dict:
    return {
        "PatientName": study.patient_name,
        "PatientID": study.patient_id,
        "PatientBirthDate": study.patient_birth_date,
        "PatientSex": study.patient_sex,
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "StudyID": study.dicom_study_id,
        "StudyDescription": study.study_description,
        "ModalitiesInStudy": study.modalities,
    }


def _study_records(session: Session, query: Query) -> list[dict]:
    counts = (
        select(
            Instance.study_id,
            func.count(func.distinct(Instance.series_instance_uid)).label("series"),
            func.count(Instance.id).label("instances"),
        )
        .group_by(Instance.study_id)
        .subquery()
    )
    statement = _hierarchy_filters(
        select(Study, counts.c.series, counts.c.instances).join(counts, counts.c.study_id == Study.id), query
    ).order_by(Study.study_date, Study.study_time, Study.id)
    return [
        {**_study_columns(study), "NumberOfStudyRelatedSeries": series, "NumberOfStudyRelatedInstances": instances}
        for study, series, instances in session.execute(statement)
    ]


def _patient_records(studies: Iterable[dict]) -> list[dict]:
    """Group study records by Patient ID; studies without one are not reachable at the PATIENT level."""
    patients: dict[str, dict] = {}
    for study in studies:
        patient_id = study["PatientID"]
        if not patient_id:
            continue
        patient = patients.setdefault(patient_id, {
            **{key: study[key] for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")},
            "NumberOfPatientRelatedStudies": 0,
            "NumberOfPatientRelatedSeries": 0,
            "NumberOfPatientRelatedInstances": 0,
        })
        patient["NumberOfPatientRelatedStudies"] += 1
        patient["NumberOfPatientRelatedSeries"] += study["NumberOfStudyRelatedSeries"]
        patient["NumberOfPatientRelatedInstances"] += study["NumberOfStudyRelatedInstances"]
    return list(patients.values())


def _series_records(session: Session, query: Query) -> list[dict]:
    statement = (
        select(
            Study,
            Instance.series_instance_uid,
            func.max(Instance.modality),
            func.max(Instance.series_number),
            func.max(Instance.series_description),
            func.count(Instance.id),
        )
        .join(Study, Study.id == Instance.study_id)
        .group_by(Study.id, Instance.series_instance_uid)
        .order_by(Study.id, func.max(Instance.series_number), Instance.series_instance_uid)
    )
    statement = _uid_filter(_hierarchy_filters(statement, query), query, "SeriesInstanceUID", Instance.series_instance_uid)
    return [
        {
            **_study_columns(study),
            "SeriesInstanceUID": series_uid,
            "Modality": modality,
            "SeriesNumber": series_number,
            "SeriesDescription": description,
            "NumberOfSeriesRelatedInstances": count,
        }
        for study, series_uid, modality, series_number, description, count in session.execute(statement)
    ]


def instance_rows(session: Session, query: Query) -> Iterator[tuple[Study, Instance]]:
    """Yield (study, instance) rows narrowed by the query's single-valued hierarchy keys."""
    statement = select(Study, Instance).join(Study, Study.id == Instance.study_id)
    statement = _hierarchy_filters(statement, query)
    statement = _uid_filter(statement, query, "SeriesInstanceUID", Instance.series_instance_uid)
    statement = _uid_filter(statement, query, "SOPInstanceUID", Instance.sop_instance_uid)
    statement = statement.order_by(Study.id, Instance.series_instance_uid, Instance.instance_number, Instance.id)
    yield from session.execute(statement).tuples()


def image_record(study: Study, instance: Instance) -> dict:
    """Return the IMAGE level record of one stored instance."""
    return {
        **_study_columns(study),
        "SeriesInstanceUID": instance.series_instance_uid,
        "Modality": instance.modality,
        "SeriesNumber": instance.series_number,
        "SeriesDescription": instance.series_description,
        "SOPInstanceUID": instance.sop_instance_uid,
        "SOPClassUID": instance.sop_class_uid,
        "InstanceNumber": instance.instance_number,
    }


def _image_records(session: Session, query: Query) -> list[dict]:
    return [image_record(study, instance) for study, instance in instance_rows(session, query)]
