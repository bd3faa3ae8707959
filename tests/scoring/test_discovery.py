"""Finding the files a run should look at (scoring.discovery)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from db.errors import CannotRun
from scoring import discovery
from scoring.discovery import CannotScan, discover, is_ignored_name

OLD = time.time() - 3600


def write(path, content: bytes = b"x", mtime: float = OLD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return path


def names(found) -> list[str]:
    return [os.path.basename(f.path) for f in found.files]


def test_images_are_found_recursively_sorted_with_size_and_mtime(tmp_path):
    b = write(tmp_path / "b" / "2.png", b"12345")
    write(tmp_path / "a.dcm")
    write(tmp_path / "b" / "deeper" / "1.jpg")
    found = discover([tmp_path])
    assert names(found) == ["a.dcm", "2.png", "1.jpg"]  # by full path
    assert [f.path for f in found.files] == sorted(f.path for f in found.files)
    entry = next(f for f in found.files if f.path == str(b))
    assert (entry.size_bytes, entry.mtime_ns) == (5, b.stat().st_mtime_ns)
    assert (found.deferred, found.ignored) == (0, 0)


def test_hidden_partial_and_sidecar_files_are_left_alone(tmp_path):
    write(tmp_path / "ok.png")
    for name in (".hidden.png", "copying.png.part", "x.tmp", "y.crdownload", "labels.csv", "report.PDF",
                 "notes.txt", "backup~"):
        write(tmp_path / name)
    write(tmp_path / ".git" / "inside.png")
    found = discover([tmp_path])
    assert names(found) == ["ok.png"] and found.ignored == 9
    assert is_ignored_name(".x") and is_ignored_name("A.JSON") and not is_ignored_name("scan.dcm")


def test_fresh_files_are_deferred(tmp_path):
    write(tmp_path / "old.png")
    write(tmp_path / "new.png", mtime=time.time())
    found = discover([tmp_path], settle_seconds=60)
    assert (names(found), found.deferred) == (["old.png"], 1)
    assert names(discover([tmp_path], settle_seconds=0)) == ["new.png", "old.png"]


YEARS_AHEAD = 70 * 365 * 86400.0  # about 2099: a modality with a wrong clock, or a preserved timestamp


@pytest.mark.parametrize("case, ahead, settle, wait, listed, deferred", [
    # dated 2099 and untouched since (its ctime is past the settle time): scored, not deferred every night forever
    ("2099, settled", YEARS_AHEAD, 0.2, 0.4, True, False),
    # dated 2099 by a copy that kept the timestamp just now (its ctime is recent): deferred this once
    ("2099, just copied", YEARS_AHEAD, 60, 0, False, True),
    # a few seconds ahead (a clock a little fast, a write in progress): deferred like any recent write
    ("seconds ahead", 5.0, 60, 0, False, True),
])
def test_files_dated_in_the_future_are_judged_by_when_they_last_changed(tmp_path, case, ahead, settle, wait,
                                                                         listed, deferred):
    write(tmp_path / "old.png")
    write(tmp_path / "future.png", mtime=time.time() + ahead)
    time.sleep(wait)
    found = discover([tmp_path], settle_seconds=settle)
    assert names(found) == (["future.png", "old.png"] if listed else ["old.png"])
    assert (found.deferred, found.future, found.future_deferred) == (int(deferred), 1, int(deferred))


def test_a_file_system_whose_clock_is_ahead_does_not_defer_its_files_forever(tmp_path, monkeypatch):
    """Both times of the file in the future (this machine's clock two hours behind the share's): nothing tells
    the file's age, so it is scored rather than left for a next run that would find the same."""
    write(tmp_path / "a.png", mtime=time.time())
    behind = time.time_ns() - 7200 * 10**9
    monkeypatch.setattr(discovery, "time", SimpleNamespace(time_ns=lambda: behind))
    found = discover([tmp_path], settle_seconds=30)
    assert (names(found), found.deferred) == (["a.png"], 0)
    assert found.future == 1


def test_link_loops_end_and_each_file_is_listed_once(tmp_path):
    write(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    (tmp_path / "other").symlink_to(tmp_path / "in")
    found = discover([tmp_path / "in", tmp_path / "in" / "a.png", tmp_path / "other"])
    assert names(found) == ["a.png"]


def test_a_dangling_link_is_listed_so_the_run_reports_it(tmp_path):
    write(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert names(discover([tmp_path], settle_seconds=0)) == ["a.png", "gone.png"]  # the link itself is new


def test_fifos_are_never_opened(tmp_path):
    write(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    found = discover([tmp_path])
    assert (names(found), found.ignored) == (["a.png"], 1)


def test_a_missing_root_cannot_run(tmp_path):
    with pytest.raises(CannotScan, match="cannot scan .*not-mounted") as raised:
        discover([tmp_path / "not-mounted"])
    assert isinstance(raised.value, CannotRun) and raised.value.exit_code == 2
