"""No header value of a broken DICOM reaches stderr, the logs, a warning or a failure message.

pydicom quotes a malformed value in its warnings and on its ``pydicom`` logger ("Invalid value for VR
IS: 'Doe^Jane'"). Each file here carries a canary in every identifying attribute, some of them
encoded so that pydicom complains about them, and is broken in one more way; it is read in process
and through the isolated child, and the canary must show up nowhere.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.tag import Tag

from scoring import imaging
from scoring.imaging import XRayReadError, read_xray

CANARY = "CANARY^PHI^7731"
# What a message could carry after PN parsing or splitting ("7731" alone turns up in random UIDs).
CANARY_PARTS = ("CANARY", "PHI^7731")

# Identifying attributes (after PS3.15 Table E.1-1), written out here independently of the reader's list.
IDENTIFYING = (
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
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
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
# Written with these VRs in explicit VR files, pydicom's validation quotes the value in its warning.
VALUE_QUOTING_VRS = ("IS", "UI")


def raw(ds: Dataset, keyword: str, value: str | bytes, vr: str | None = None) -> None:
    """Store ``value`` byte for byte, bypassing pydicom's checks on writing."""
    data = value.encode("latin-1") if isinstance(value, str) else value
    if len(data) % 2:
        data += b" "
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(data), data, 0, False, True)


def with_canaries(ds: Dataset, wrong_vrs: bool) -> Dataset:
    """The canary in every identifying attribute; with ``wrong_vrs``, every other one is stored with a VR
    whose validation quotes it (possible in explicit VR only), the rest with their own VR."""
    for index, keyword in enumerate(IDENTIFYING):
        vr = VALUE_QUOTING_VRS[index // 2 % 2] if wrong_vrs and index % 2 == 0 else None
        raw(ds, keyword, CANARY, vr)
    return ds


def rewrite(path: Path, change: Callable[[Dataset], object]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    return path


def cut(path: Path, keep: Callable[[int], int]) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return path


def cut_first_frame(ds: Dataset) -> None:
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])


@pytest.fixture
def ramp() -> np.ndarray:
    return np.linspace(0, 4095, 128 * 128).reshape(128, 128).astype(np.uint16)


class Files:
    def __init__(self, dicom_factory, tmp_path: Path, ramp: np.ndarray, dicom_dir: Path) -> None:
        self.factory, self.tmp_path, self.ramp, self.dicom_dir = dicom_factory, tmp_path, ramp, dicom_dir

    def canary(self, name: str, encoding: str = "explicit_le", wrong_vrs: bool = True, **attributes) -> Path:
        path = self.factory(name, self.ramp, encoding, **attributes)
        return rewrite(path, lambda ds: with_canaries(ds, wrong_vrs and encoding != "implicit_le"))

    def real(self, name: str) -> Path:
        """The shared real CR film (JPEG baseline), its identifying attributes replaced by the canary."""
        path = self.tmp_path / name
        path.write_bytes(next(self.dicom_dir.glob("1.2.276.*.dcm")).read_bytes())
        return rewrite(path, lambda ds: with_canaries(ds, wrong_vrs=True))


# (id, builder, expected reason or None for a successful read)
CASES = [
    ("bad_vrs_otherwise_fine", lambda f: f.canary("fine.dcm"), None),
    ("own_vrs_otherwise_fine", lambda f: f.canary("own.dcm", wrong_vrs=False), None),
    ("implicit_vr", lambda f: f.canary("implicit.dcm", "implicit_le"), None),
    (
        "unknown_character_set",
        lambda f: rewrite(f.canary("charset.dcm"), lambda ds: raw(ds, "SpecificCharacterSet", CANARY)),
        None,
    ),
    ("truncated_pixel_data", lambda f: cut(f.canary("cut.dcm"), lambda n: n - 5000), "truncated"),
    ("cut_inside_an_element", lambda f: cut(f.canary("cut2.dcm"), lambda n: 600), "truncated"),
    (
        "cut_deflated",
        lambda f: cut(f.canary("deflated.dcm", "deflated"), lambda n: n - 100),
        "truncated",
    ),
    (
        "cut_jpeg_ls_frame",
        lambda f: rewrite(f.canary("jls.dcm", "jpeg_ls_lossless"), cut_first_frame),
        "truncated",
    ),
    (
        "made_up_transfer_syntax",
        lambda f: rewrite(f.canary("ts.dcm"), lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4.5")),
        "unsupported_transfer_syntax",
    ),
    (
        "canary_as_transfer_syntax",
        lambda f: rewrite(
            f.canary("ts2.dcm"), lambda ds: raw(ds.file_meta, "TransferSyntaxUID", CANARY + " ")
        ),
        "unsupported_transfer_syntax",
    ),
    (
        "malformed_numbers_in_identifying_tags",
        lambda f: rewrite(
            f.canary("num.dcm"),
            lambda ds: [raw(ds, k, v) for k, v in (("PatientWeight", "NaN" + CANARY), ("PatientAge", CANARY + "Y"))],
        ),
        None,
    ),
    (
        "malformed_rescale_and_window",
        lambda f: rewrite(
            f.canary("rs.dcm"),
            lambda ds: [
                raw(ds, keyword, CANARY)
                for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
            ],
        ),
        None,
    ),
    (
        "nan_rescale_slope",
        lambda f: rewrite(f.canary("nan.dcm", RescaleIntercept="0"), lambda ds: raw(ds, "RescaleSlope", "NaN")),
        "invalid_pixels",
    ),
    (
        "malformed_number_of_frames",
        lambda f: rewrite(f.canary("frames.dcm"), lambda ds: raw(ds, "NumberOfFrames", CANARY)),
        "ANY",
    ),
    (
        "text_in_rows",
        lambda f: rewrite(f.canary("rows.dcm"), lambda ds: raw(ds, "Rows", CANARY, "LO")),
        "corrupt",
    ),
    (
        "canary_as_photometric_interpretation",
        lambda f: rewrite(f.canary("pi.dcm"), lambda ds: raw(ds, "PhotometricInterpretation", "CANARY PHI 7731")),
        "unsupported_image",
    ),
    (
        "canary_as_sop_class_without_pixel_data",
        lambda f: rewrite(
            f.canary("sop.dcm"), lambda ds: (delattr(ds, "PixelData"), raw(ds, "SOPClassUID", CANARY))
        ),
        "no_pixel_data",
    ),
    ("real_film", lambda f: f.real("real.dcm"), None),
    ("real_film_cut_frame", lambda f: rewrite(f.real("real-cut.dcm"), cut_first_frame), "truncated"),
    (
        "real_film_huge_slope",
        lambda f: rewrite(
            f.real("real-slope.dcm"), lambda ds: ds.update({"RescaleSlope": "1e38", "RescaleIntercept": "0"})
        ),
        "invalid_pixels",
    ),
]


@pytest.fixture
def files(dicom_factory, tmp_path, ramp, dicom_dir) -> Files:
    return Files(dicom_factory, tmp_path, ramp, dicom_dir)


@pytest.fixture
def fresh_child():
    """A child started inside the test, so that its stderr is the one capfd captures."""
    imaging.stop_reader_process()
    yield
    imaging.stop_reader_process()


def assert_no_canary(text: str, where: str) -> None:
    for part in (CANARY, *CANARY_PARTS):
        assert part not in text, f"{part!r} in {where}: {text}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolated", [False, True], ids=["in_process", "isolated"])
@pytest.mark.parametrize(("build", "reason"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_canary_never_leaks(files, build, reason, isolated, fresh_child, capfd, caplog) -> None:
    path = build(files)
    capfd.readouterr()  # what writing the file printed is not the reader's
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = read_xray(path, timeout=30.0 if isolated else None)
        except XRayReadError as exc:
            error: XRayReadError | None = exc
        else:
            error = None
    out, err = capfd.readouterr()
    assert_no_canary(err, "stderr")
    assert_no_canary(out, "stdout")
    assert_no_canary("\n".join(record.getMessage() for record in caplog.records), "the logs")
    assert_no_canary("\n".join(str(warning.message) for warning in caught), "the warnings")
    if error is not None:
        assert reason is not None, f"unexpected failure: {error}"
        assert reason == "ANY" or error.reason == reason, str(error)
        assert str(path) in str(error)
        assert_no_canary(str(error), "the failure message")
        assert_no_canary(repr(error.__reduce__()), "the pickled error")
    else:
        assert reason in (None, "ANY"), f"read succeeded; expected {reason}"
        assert_no_canary(repr(image.meta), "meta")


def test_the_canaries_are_really_quoted_by_pydicom(files) -> None:
    """The control: read naively, the same file puts the canary into pydicom's warnings and log."""
    path = files.canary("control.dcm")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("pydicom").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
            _ = [ds[keyword].value for keyword in IDENTIFYING]
    finally:
        logging.getLogger("pydicom").removeHandler(handler)
    assert any(CANARY in str(warning.message) for warning in caught)
    assert any(CANARY in record for record in records)


def test_failure_names_the_malformed_element_without_its_value(files) -> None:
    path = rewrite(files.canary("named.dcm"), lambda ds: setattr(ds, "PixelData", ds.PixelData[:-1000]))
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    message = str(caught.value)
    assert caught.value.reason == "truncated" and "needs" in message
    assert re.search(r"header problems: \(0008,\w{4}\) \w+: invalid value for VR (IS|UI)", message), message
    assert CANARY not in message


def test_pydicom_logger_is_restored_after_a_read(files) -> None:
    logger = logging.getLogger("pydicom")
    before = (list(logger.handlers), logger.propagate)
    read_xray(files.canary("restore.dcm"), timeout=None)
    assert (list(logger.handlers), logger.propagate) == before


def test_identifying_keywords_cover_the_issue_list() -> None:
    from scoring.imaging.header import IDENTIFYING_KEYWORDS

    named = {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "PatientAddress",
        "InstitutionName",
        "ReferringPhysicianName",
        "AccessionNumber",
    }
    assert named <= set(IDENTIFYING_KEYWORDS)


def test_scrub_keeps_the_problem_and_drops_the_value() -> None:
    from scoring.imaging.errors import scrub

    assert scrub(f"Invalid value for VR IS: '{CANARY}'. Please see <https://dicom.nema.org/x> for allowed values") == (
        "invalid value for VR IS"
    )
    assert scrub(f'Value "{CANARY}" is not valid for elements with a VR of DS') == "invalid value for VR DS"
    assert scrub(f"invalid literal for int() with base 10: b'{CANARY}'") == (
        "invalid literal for int() with base 10: '...'"
    )
    assert scrub(f"Unknown encoding \"{CANARY}\" - it doesn't exist") == "Unknown encoding '...' - it doesn't exist"
    kept = "'NoneType' object has no attribute 'encode'"
    assert scrub(kept) == kept


def test_failure_lists_pixel_module_problems_first(files) -> None:
    path = rewrite(files.canary("frames.dcm"), lambda ds: raw(ds, "NumberOfFrames", "1e9"))
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert "header problems: (0028,0008) NumberOfFrames: invalid value for VR IS" in str(caught.value)


def test_an_unquoted_value_in_an_unexpected_error_is_cut_out(files, monkeypatch) -> None:
    """The last guard: whatever third-party text carries an identifying value, the message does not."""

    def explode(raw_pixels, ds, *args):
        raise ValueError(f"cannot handle {ds.PatientName} of {ds.InstitutionName}")

    monkeypatch.setattr(imaging.dicom, "to_display", explode)
    path = files.canary("unexpected.dcm", wrong_vrs=False)
    with pytest.raises(XRayReadError) as caught:
        read_xray(path, timeout=None)
    assert caught.value.reason == "decode_failed"
    assert "unexpected ValueError: cannot handle ... of ..." in str(caught.value)
    assert_no_canary(str(caught.value), "the failure message")


def test_redaction_keeps_the_path_and_other_numbers() -> None:
    from scoring.imaging.errors import redact

    path = b"/data/Doe^Jane/12345.dcm"
    exc = XRayReadError("decode_failed", "/data/Doe^Jane/12345.dcm: Doe^Jane has 123456 bytes, ID 12345")
    assert redact(exc, path, ["Doe^Jane", "12345"]).message == (
        "/data/Doe^Jane/12345.dcm: ... has 123456 bytes, ID ..."
    )
