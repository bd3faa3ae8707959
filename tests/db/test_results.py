"""What the scorer stores: runs, images, file locations, predictions and failures (db.results)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import event, func, select

from db import model_versions, results
from db.engine import read_session, write_session
from db.models import Image, ImageFile, Prediction, ScoringRun
from db.results import FileStat

META = {"format": "dicom", "rows": 10, "cols": 12, "modality": "CR", "body_part": "CHEST", "view_position": "PA",
        "study_date": "20240131", "pixel_spacing": [0.2, "0.25"], "patient_pseudonym": "P-0123456789abcdef",
        "manufacturer": "M" * 200}  # longer than its column: cut, never a failed batch


@pytest.fixture
def run(engine) -> tuple[int, int]:
    """(model version id, run id) of a started run."""
    with write_session(engine) as session:
        version = model_versions.register(session, sha256="a" * 64, path="/m.pt", architecture="resnet18",
                                          classes=["covid", "normal"], input_size=32, preprocessing_hash="p" * 64,
                                          temperature=1.0)
        run = results.start_run(session, {"paths": ["/in"]}, version.id, pid=4242)
        return version.id, run.id


def image(session, sha: str, stat: FileStat, in_scope: bool = True) -> int:
    return results.upsert_image(session, sha256=sha, stat=stat, meta=META, in_scope=in_scope,
                                scope_reason="ok" if in_scope else "modality MR")


def predict(session, image_id: int, version_id: int, run_id: int) -> None:
    results.add_prediction(session, image_id=image_id, model_version_id=version_id, run_id=run_id,
                           probabilities={"covid": 0.25, "normal": 0.75}, predicted_class="normal",
                           confidence=0.75, entropy=0.8)


def test_runs_start_count_finish_and_are_marked_interrupted(engine, run):
    version_id, run_id = run
    with write_session(engine) as session:
        results.update_run(session, run_id, scanned=5, scored=4)
        other = results.start_run(session, {}, version_id, pid=1).id
        assert results.mark_interrupted_runs(session) == 2
        results.update_run(session, other, status="finished", finished=True)
    with read_session(engine) as session:
        first, second = session.scalars(select(ScoringRun).order_by(ScoringRun.id))
    assert (first.status, first.scanned, first.scored, first.finished_at, first.pid) == ("interrupted", 5, 4, None,
                                                                                          4242)
    assert first.arguments == {"paths": ["/in"]} and first.host
    assert second.status == "finished" and second.finished_at is not None


def test_an_image_is_stored_once_with_its_metadata(engine, run):
    stat = FileStat("/in/a.dcm", 100, 1_700_000_000_000_000_000)
    with write_session(engine) as session:
        first = image(session, "1" * 64, stat)
        assert image(session, "1" * 64, FileStat("/in/copy.dcm", 100, 1)) == first
    with read_session(engine) as session:
        stored = session.get(Image, first)
        assert session.scalar(select(func.count()).select_from(Image)) == 1
    assert (stored.path, stored.modality, stored.study_date) == ("/in/a.dcm", "CR", dt.date(2024, 1, 31))
    assert (stored.pixel_spacing_row, stored.pixel_spacing_col) == (0.2, 0.25)
    assert stored.manufacturer == "M" * 64 and stored.mtime == pytest.approx(1.7e9)


def test_known_files_by_path_size_and_mtime(engine, run):
    version_id, run_id = run
    scored, out_of_scope, failed = (FileStat(f"/in/{n}", 10, 5) for n in ("scored.png", "mr.dcm", "bad.png"))
    with write_session(engine) as session:
        scored_id = image(session, "1" * 64, scored)
        results.record_file(session, scored, scored_id)
        predict(session, scored_id, version_id, run_id)
        results.record_file(session, out_of_scope, image(session, "2" * 64, out_of_scope, in_scope=False))
        results.add_failure(session, run_id, failed, "truncated", "cut short")
    changed = FileStat("/in/scored.png", 11, 5)
    with read_session(engine) as session:
        known = results.known_files(session, [scored, out_of_scope, failed, FileStat("/in/new", 1, 1)], version_id)
        assert results.known_files(session, [changed], version_id) == {}  # another size: hash it again
        assert results.known_files(session, [scored], version_id + 1)[scored.path].scored is False
    assert set(known) == {scored.path, out_of_scope.path, failed.path}
    assert known[scored.path].scored and known[scored.path].settled and known[scored.path].sha256 == "1" * 64
    assert known[out_of_scope.path].settled and not known[out_of_scope.path].scored
    assert known[failed.path].failed and not known[failed.path].settled


def test_images_by_sha_find_content_at_any_path(engine, run):
    version_id, run_id = run
    with write_session(engine) as session:
        image_id = image(session, "1" * 64, FileStat("/in/a.png", 10, 5))
        predict(session, image_id, version_id, run_id)
        image(session, "2" * 64, FileStat("/in/b.png", 10, 5))
    with read_session(engine) as session:
        found = results.images_by_sha(session, ["1" * 64, "2" * 64, "3" * 64], version_id)
    assert set(found) == {"1" * 64, "2" * 64}
    assert found["1" * 64].scored and found["1" * 64].image_id == image_id and not found["2" * 64].scored


def test_a_file_moves_to_new_content_and_a_prediction_is_stored_once(engine, run):
    version_id, run_id = run
    stat = FileStat("/in/a.png", 10, 5)
    with write_session(engine) as session:
        old = image(session, "1" * 64, stat)
        results.record_file(session, stat, old)
        predict(session, old, version_id, run_id)
        predict(session, old, version_id, run_id)  # already scored by this version: nothing happens
        new = image(session, "2" * 64, FileStat("/in/a.png", 20, 6))
        results.record_file(session, FileStat("/in/a.png", 20, 6), new)
    with read_session(engine) as session:
        location = session.scalar(select(ImageFile))
        assert (location.image_id, location.size_bytes, location.mtime_ns) == (new, 20, 6)
        assert session.scalar(select(func.count()).select_from(ImageFile)) == 1
        assert session.scalar(select(func.count()).select_from(Prediction)) == 1


def test_run_failures_default_to_the_latest_run_with_any(engine, run):
    version_id, first = run
    with write_session(engine) as session:
        results.add_failure(session, first, FileStat("/in/a", 1, 1), "empty", "no bytes")
        second = results.start_run(session, {}, version_id, pid=1).id
        results.add_failure(session, second, FileStat("/in/b", 1, 1), "truncated", "cut")
        results.add_failure(session, second, FileStat("/in/c", 1, 1), "empty", "no bytes")
        results.start_run(session, {}, version_id, pid=1)  # a clean run after them
    with read_session(engine) as session:
        assert [f.path for f in results.run_failures(session)] == ["/in/b", "/in/c"]
        assert [(f.path, f.reason) for f in results.run_failures(session, first)] == [("/in/a", "empty")]


def test_undecodable_file_names_are_stored_as_escapes(engine, run):
    _, run_id = run
    name = b"/in/caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 name on a UTF-8 system
    assert results.storable_path(name) == "/in/caf\\xe9.png"
    with write_session(engine) as session:
        results.add_failure(session, run_id, FileStat(name, 1, 1), "empty", "no bytes")
    with read_session(engine) as session:
        assert results.run_failures(session)[0].path == "/in/caf\\xe9.png"
        assert name in results.known_files(session, [FileStat(name, 1, 1)], 1)


@pytest.mark.parametrize("value, expected", [
    ("20240131", dt.date(2024, 1, 31)), ("20240131 ", dt.date(2024, 1, 31)), ("20240131\x00", dt.date(2024, 1, 31)),
    ("2024.01.31", dt.date(2024, 1, 31)),  # ACR-NEMA, which PS3.5 asks readers to accept
    (dt.date(2020, 2, 29), dt.date(2020, 2, 29)), ("", None), (None, None),
    ("2026120", None),  # seven digits: strptime read it as 2026-01-20
    ("20240131120000", None),  # a DT value, not a DA (the old parser kept its first eight characters)
    ("2024", None), ("20241341", None), ("20240230", None), ("00000101", None), ("2024.0131", None),
    ("2024-01-31", None), ("+2024131", None),
    ("\u0662\u0660\u0662\u0664\u0660\u0661\u0663\u0661", None),  # Arabic-Indic digits: int() takes them, DA does not
])
def test_parse_dicom_date(value, expected):
    assert results.parse_dicom_date(value) == expected


@pytest.mark.parametrize("study_date, refused", [
    ("20240131", False), (None, False), ("", False), (" ", False), ("2026120", True), ("20240230", True)])
def test_a_refused_study_date_is_told_from_an_absent_one(study_date, refused):
    assert results.refused_study_date({"study_date": study_date}) is refused
    assert results.image_values({"study_date": study_date})["study_date"] == results.parse_dicom_date(study_date)


def test_store_results_writes_a_batch_with_one_statement_per_table(engine, run):
    version_id, run_id = run
    values = results.image_values(META)
    score = results.Score({"covid": 0.25, "normal": 0.75}, "normal", 0.75, 0.8)
    with write_session(engine) as session:
        known = image(session, "0" * 64, FileStat("/in/old.dcm", 1, 1))  # content seen before, at another path
    images = [results.ImageResult(f"{i}" * 64, (FileStat(f"/in/{i}.dcm", 10, i),), values, True, "ok", score)
              for i in range(4)]
    images.append(results.ImageResult("9" * 64, (FileStat("/in/mr.dcm", 10, 9), FileStat("/in/mr-copy.dcm", 10, 9)),
                                      values, False, "modality:MR"))
    failures = [results.FileFailure(FileStat("/in/bad.png", 3, 3), "truncated", "/in/bad.png: cut short")]
    statements: list[str] = []
    with write_session(engine) as session:
        event.listen(session.connection(), "before_cursor_execute",
                     lambda *args: statements.append(args[2].split()[0]))
        results.store_results(session, version_id, run_id, images, failures)
        results.store_results(session, version_id, run_id, images[:1], [])  # again: nothing new
    assert statements[:5] == ["INSERT", "SELECT", "INSERT", "INSERT", "INSERT"]
    with read_session(engine) as session:
        stored = dict(session.execute(select(Image.sha256, Image.id)).all())
        locations = dict(session.execute(select(ImageFile.path, ImageFile.image_id)).all())
        predicted = session.scalars(select(Prediction.image_id).order_by(Prediction.image_id)).all()
        failure = results.run_failures(session, run_id)[0]
        first = session.get(Image, stored["1" * 64])
    assert len(stored) == 5 and stored["0" * 64] == known
    assert locations == {"/in/0.dcm": known, "/in/1.dcm": stored["1" * 64], "/in/2.dcm": stored["2" * 64],
                         "/in/3.dcm": stored["3" * 64], "/in/mr.dcm": stored["9" * 64],
                         "/in/mr-copy.dcm": stored["9" * 64]}
    assert predicted == sorted(stored[f"{i}" * 64] for i in range(4))
    assert (failure.path, failure.reason, failure.size_bytes) == ("/in/bad.png", "truncated", 3)
    assert (first.path, first.modality, first.study_date, first.manufacturer) == ("/in/1.dcm", "CR",
                                                                                  dt.date(2024, 1, 31), "M" * 64)
