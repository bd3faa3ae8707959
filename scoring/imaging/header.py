"""DICOM header values, read so that a malformed element neither stops the read nor leaks.

pydicom converts an element's value on first access and complains about a malformed one with a
warning (and a log record) that quotes the value: ``Invalid value for VR IS: 'Doe^Jane'``.
:func:`header_problems` converts every top-level element up front, one at a time, so that each
complaint is tied to its tag and kept as a value-free note such as ``(0010,0010) PatientName:
invalid value for VR IS``; the notes end up in a failure message, never the values. The other
helpers read a value or return None, and show a value in a message only when it is a number or a
well-formed code.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

from .errors import scrub

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
# Defined terms of Photometric Interpretation (PS3.3 C.7.6.3.1.2, retired ones included): the only
# values of that element a message shows; anything else could be any text at all.
_PHOTOMETRIC_TERMS = frozenset(
    MONOCHROME + COLOUR + ("HSV", "ARGB", "CMYK", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "XYB")
)
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")

# Attributes that identify a patient, a clinician or a visit (after PS3.15 Table E.1-1): their values
# are cut out of any failure message, whatever third-party text may have carried them there.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "MedicalRecordLocator",
    "MilitaryRank",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OperatorsName",
    "RequestingPhysician",
    "AccessionNumber",
    "StudyID",
    "StationName",
    "DeviceSerialNumber",
    "StudyDescription",
    "SeriesDescription",
)
_PIXEL_GROUPS = (0x0028, 0x7FE0)
_MIN_REDACTED = 4  # shorter values ("M", "45") would cut ordinary words and numbers out of messages


class Geometry(NamedTuple):
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str


def header_problems(ds: Any) -> list[str]:
    """Convert every top-level element now; what pydicom complained about, as value-free notes."""
    from pydicom.datadict import keyword_for_tag

    problems: list[str] = []
    # The image pixel module first: a failure message shows the first few notes, and those matter most.
    for tag in sorted(ds.keys(), key=lambda tag: (tag.group not in _PIXEL_GROUPS, tag)):
        failure = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds[tag]
            except Exception as exc:  # left raw: whoever reads it later gets None or a scrubbed error
                failure = [f"cannot be read ({type(exc).__name__})"]
        name = f"{tag} {keyword_for_tag(tag) or 'private or unknown'}"
        for complaint in [scrub(warning.message) for warning in caught] + failure:
            if f"{name}: {complaint}" not in problems:
                problems.append(f"{name}: {complaint}")
    return problems


def identifying_values(ds: Any) -> list[str]:
    """The text of every identifying element present, whole and split into components."""
    values: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            element = ds.get_item(keyword)  # the raw element where conversion failed
            wholes = _texts(element.value) if element is not None and element.value is not None else []
        except Exception:
            continue
        for whole in wholes:
            values.update(part.strip("\x00 ") for part in [whole, *re.split(r"[\^=\\]", whole)])
    return [value for value in values if len(value) >= _MIN_REDACTED]


def _texts(value: Any) -> list[str]:
    """The ways a value may be spelt in a message: as read, decoded, and as its repr."""
    if isinstance(value, bytes):
        return [value.decode("latin-1"), value.decode("utf-8", "replace"), repr(value)[2:-1]]
    if hasattr(value, "keys"):  # a dataset (an identifying keyword stored as a sequence): not a spelling
        return []
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [text for item in value for text in _texts(item)]
    text = str(value)
    return [text, repr(text)[1:-1]]


def int_value(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def first_value(value: Any) -> float | None:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)


def text(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    stripped = str(value).strip("\x00 ")
    return stripped or None


def upper(value: Any) -> str:
    return str(value).strip().upper() if value is not None else ""


def shown_number(ds: Any, keyword: str) -> str:
    """An element's value for a message: a number as it is, anything else described."""
    try:
        value = ds.get(keyword)
    except Exception:
        return "unreadable"
    if value is None or value == "":
        return "missing"
    return str(value) if isinstance(value, int) else "not a number"


def shown_photometric(photometric: str) -> str:
    return repr(photometric) if photometric in _PHOTOMETRIC_TERMS else "(not a defined term)"


def shown_uid(uid: str) -> str:
    return uid if len(uid) <= 64 and _UID.fullmatch(uid) else "(not a valid UID)"


def syntax_name(syntax: str) -> str:
    from pydicom.uid import UID

    if not syntax:
        return "missing"
    if shown_uid(syntax) != syntax:
        return shown_uid(syntax)
    name = UID(syntax).name
    return syntax if name == syntax else f"{syntax} ({name})"
