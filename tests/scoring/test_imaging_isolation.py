"""scoring.imaging's isolated decoder: the time limit, crash handling, forks, the child's imports and its
reaping when the parent exits."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from scoring import imaging
from scoring.imaging import XRayReadError, read_xray
from tests.conftest import wait_for_exit
from tests.scoring.imaging_checks import check_image

# --------------------------------------------------------------------------------------------
# The isolated decoder


@pytest.fixture
def fresh_reader(monkeypatch):
    """Each test starts and leaves a child without the test delay."""
    imaging.stop_reader_process()
    yield monkeypatch
    monkeypatch.delenv(imaging.TEST_DELAY_ENV, raising=False)
    imaging.stop_reader_process()


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.timeout(60)
def test_timeout_kills_the_child_and_the_next_read_works(fresh_reader, source_png) -> None:
    fresh_reader.setenv(imaging.TEST_DELAY_ENV, "30")
    pid = imaging.start_reader_process()
    started = time.monotonic()
    with pytest.raises(XRayReadError) as caught:
        read_xray(source_png, timeout=1.0)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout" and str(source_png) in str(caught.value)
    assert 1.0 <= elapsed < 4.0  # kill and reap take milliseconds; the rest is slack for busy CI
    assert imaging.reader_process_pid() is None
    assert_reaped(pid)

    fresh_reader.delenv(imaging.TEST_DELAY_ENV)
    check_image(read_xray(source_png, timeout=30.0))
    assert imaging.reader_process_pid() not in (None, pid)


@pytest.mark.timeout(60)
def test_crash_is_decode_failed_and_the_next_read_works(fresh_reader, source_png) -> None:
    fresh_reader.setenv(imaging.TEST_DELAY_ENV, "5")
    pid = imaging.start_reader_process()
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(XRayReadError) as caught:
        read_xray(source_png, timeout=30.0)
    killer.join()
    assert caught.value.reason == "decode_failed"
    assert f"decoder crashed (signal {int(signal.SIGKILL)})" in str(caught.value)
    assert_reaped(pid)

    fresh_reader.delenv(imaging.TEST_DELAY_ENV)
    check_image(read_xray(source_png))


@pytest.mark.timeout(60)
def test_what_a_crashed_child_printed_last_ends_its_failure(fresh_reader, source_png) -> None:
    """glibc's heap checks and C++'s unhandled exceptions say why on stderr, then abort: the only clue there is.
    (The child's stderr is a file the caller holds; the words are written into it here, as the child would.)"""
    from scoring.imaging import isolation

    fresh_reader.setenv(imaging.TEST_DELAY_ENV, "5")
    pid = imaging.start_reader_process()
    output = isolation._READER._codec_output

    def print_then_abort() -> None:
        os.write(output.fileno(), b"double free or corruption (out)\n")
        os.kill(pid, signal.SIGABRT)

    aborter = threading.Timer(0.5, print_then_abort)
    aborter.start()
    with pytest.raises(XRayReadError) as caught:
        read_xray(source_png, timeout=30.0)
    aborter.join()
    assert caught.value.reason == "decode_failed"
    crashed = f"decoder crashed (signal {int(signal.SIGABRT)})"
    assert str(caught.value).endswith(f"{crashed}: double free or corruption (out)")
    assert_reaped(pid)


def test_child_killed_between_reads_is_replaced_silently(fresh_reader, source_png) -> None:
    pid = imaging.start_reader_process()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    check_image(read_xray(source_png))
    assert imaging.reader_process_pid() not in (None, pid)


def test_forked_process_starts_its_own_child(fresh_reader, source_png) -> None:
    import multiprocessing

    parent_child = imaging.start_reader_process()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_read_in_fork, args=(str(source_png), queue))
    worker.start()
    worker.join(60)
    shape, pid = queue.get(timeout=5)
    assert shape == list(read_xray(source_png, timeout=None).pixels.shape)
    assert pid not in (None, parent_child)
    assert imaging.reader_process_pid() == parent_child
    check_image(read_xray(source_png))  # the parent's child is untouched


def _read_in_fork(path: str, queue) -> None:
    image = read_xray(path)
    queue.put((list(image.pixels.shape), imaging.reader_process_pid()))
    imaging.stop_reader_process()


def test_child_does_not_load_torch(fresh_reader, source_png) -> None:
    read_xray(source_png)
    pid = imaging.reader_process_pid()
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this platform")
    loaded = maps.read_text()
    assert "torch" not in loaded
    assert "numpy" in loaded  # the check can see Python extension modules at all


def test_what_a_codec_prints_ends_its_failure_and_never_reaches_the_callers_stderr(
        fresh_reader, pydicom_data, tmp_path, capfd) -> None:
    """C codecs print on stderr, which the child shares with a scoring run's output: OpenJPEG why it gave up on a
    JPEG 2000 header, GDCM that its 8-bit libjpeg cannot read a 12-bit JPEG before its 12-bit one does."""
    import pydicom

    signed = pydicom.dcmread(pydicom_data("JPGExtended.dcm"))
    signed.PixelRepresentation = 1  # its values are small: the same film, but only GDCM takes signed 12-bit JPEG
    signed.save_as(tmp_path / "signed-jpeg12.dcm")
    imaging.start_reader_process()  # with the test's stderr

    check_image(read_xray(tmp_path / "signed-jpeg12.dcm"))
    with pytest.raises(XRayReadError) as caught:
        read_xray(pydicom_data("JPEG2000-embedded-sequence-delimiter.dcm"))

    assert caught.value.reason == "decode_failed"
    message = str(caught.value)
    assert message.endswith(")") and "(the codec said: Invalid number of tiles" in message
    assert "precision 12" not in message  # the good film's noise was dropped, not carried into the next read
    assert capfd.readouterr().err == ""


def test_child_exits_with_its_parent_and_is_reaped(source_png, tmp_path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from scoring.imaging import read_xray, reader_process_pid; "
        "read_xray(sys.argv[1]); print(reader_process_pid())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(source_png)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    # A zombie would still answer signal 0: the parent's atexit handler must have waited for it.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.timeout(60)
def test_child_whose_caller_is_killed_mid_read_exits_without_a_traceback(source_png) -> None:
    import subprocess
    import sys

    script = (
        "import sys, threading, time; from scoring.imaging import read_xray, reader_process_pid, "
        "start_reader_process; start_reader_process(); print(reader_process_pid(), flush=True); "
        "threading.Thread(target=read_xray, args=(sys.argv[1],), daemon=True).start(); time.sleep(60)"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", script, str(source_png)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, imaging.TEST_DELAY_ENV: "1"},  # the child answers a second late
    )
    child = int(caller.stdout.readline())
    time.sleep(0.3)  # the request is on its way; the child is waiting out the delay
    caller.kill()
    caller.wait(10)
    wait_for_exit(child, 20, "the decoder child of a killed caller")
    assert "Traceback" not in caller.stderr.read()  # the child shared the caller's stderr


def test_timeout_must_be_positive(source_png) -> None:
    with pytest.raises(ValueError):
        read_xray(source_png, timeout=0)
