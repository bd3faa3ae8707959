"""The isolated decoder: a child process per calling process, and the time limit on each read.

With ``timeout`` (default ``DEFAULT_TIMEOUT_S``) ``read_xray`` decodes the file in a child process
(``python -c``, importing only this package, numpy, Pillow, pydicom and the codecs, never torch or
``db``), started lazily and kept alive between calls, one per calling process: a forked process (a
DataLoader worker) starts its own. The child is stopped and reaped at interpreter exit, and exits by
itself when its parent disappears. Cheap checks (stat, open, magic bytes) run in the caller first.
The limit covers decoding and the transfer of the pixels; on expiry the child is killed and
``timeout`` raised; if it dies (a segfault in a C codec, a panic) the read fails with
``decode_failed``; either way the next call starts a new child. What the C codecs print on the child's
stderr is kept from the caller's: a failure's message ends with it (a crash's too), a film that decoded
drops it. The child's address space is limited (``CHILD_ADDRESS_SPACE_BYTES``), so a file that makes a
codec ask for more memory than any film needs fails at once instead of taking the machine's. Reads from
several threads are serialised. The child's warnings and pydicom log records are kept from its stderr as in any decode
(see ``decode``); what it sends back is pixels, value-free metadata and scrubbed messages.

``start_reader_process()`` starts the child ahead of the first read; the environment variable
``CXR_READER_TEST_DELAY_S`` makes the child sleep that long before each read, and exists only so
that tests can exercise the time limit.
"""

from __future__ import annotations

import atexit
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import BinaryIO

import numpy as np

from .decode import decode_file
from .errors import DECODE_FAILED, TIMEOUT, XRayReadError, error, scrub
from .results import Decoded

DEFAULT_TIMEOUT_S = 30.0
CHILD_START_TIMEOUT_S = 60.0
TEST_DELAY_ENV = "CXR_READER_TEST_DELAY_S"
# The child's address space: room for the largest file the reader takes (MAX_FILE_BYTES) and several copies of
# the largest frame (MAX_PIXELS values) at 8 bytes, beside the codecs. A 3 KB JPEG 2000 codestream whose
# header asks for a huge image made OpenJPEG take all 24 GiB of a machine until the kernel killed a process;
# with the limit, its allocation fails at once and the file is a read error.
CHILD_ADDRESS_SPACE_BYTES = 6 * 1024**3
CODEC_OUTPUT_KEPT_BYTES = 4096


def read_isolated(path: bytes, timeout: float, min_side: int | None = None) -> Decoded:
    """Decode ``path`` in this process's decoder child; the result must arrive within ``timeout`` s."""
    return _isolated_reader().read(path, timeout, min_side)


def start_reader_process() -> int:
    """Start this process's isolated decoder now (e.g. in a DataLoader ``worker_init_fn``), so
    that the first read does not wait for it; returns its PID."""
    return _isolated_reader().start()


def stop_reader_process() -> None:
    """Stop this process's isolated decoder, if any; the next isolated read starts a new one."""
    reader = _READER
    if reader is not None and reader.owner_pid == os.getpid():
        reader.stop()


def reader_process_pid() -> int | None:
    """PID of this process's isolated decoder, or None when none is running (for tests)."""
    reader = _READER
    if reader is None or reader.owner_pid != os.getpid():
        return None
    return reader.pid


class _IsolatedReader:
    """One decoder child, owned by the process that created this object.

    Requests and headers travel as pickles over a socket pair; the pixels follow as raw bytes
    received straight into the result array (one kernel copy each way, no pickling).
    """

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._sock: socket.socket | None = None
        self._codec_output: BinaryIO | None = None  # the child's stderr (see _capture_codec_output)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def read(self, path: bytes, timeout: float, min_side: int | None = None) -> Decoded:
        with self._lock:
            try:
                self._send((path, min_side))
                return self._receive(path, timeout)
            except XRayReadError:
                raise  # the child has already been replaced where that was needed
            except BaseException:
                self._discard()  # interrupted mid-conversation: the child's state is unknown
                raise

    def start(self) -> int:
        with self._lock:
            self._ensure_started()
            assert self._process is not None
            return self._process.pid

    def stop(self) -> None:
        with self._lock:
            self._discard(graceful=True)

    def forget(self) -> None:
        """In a forked copy of the owner: drop our handles on the owner's child, leave it running."""
        for handle in (self._conn, self._sock, self._codec_output):
            if handle is not None:
                handle.close()
        self._conn, self._sock, self._process, self._codec_output = None, None, None, None

    def _send(self, request: tuple[bytes, int | None]) -> None:
        for attempt in (1, 2):
            self._ensure_started()
            assert self._conn is not None
            try:
                self._conn.send(request)
                return
            except OSError:  # the child died between calls (killed from outside): start afresh
                self._discard()
                if attempt == 2:
                    raise

    def _receive(self, path: bytes, timeout: float) -> Decoded:
        deadline = time.monotonic() + timeout
        self._wait(path, deadline, timeout)
        assert self._conn is not None
        try:
            header = self._conn.recv()
        except (EOFError, OSError):
            raise self._crashed(path) from None
        if header[0] == "error":
            raise XRayReadError(header[1], header[2])
        _, meta, patient_id, shape = header
        pixels = np.empty(shape, dtype=np.float32)
        self._receive_into(memoryview(pixels).cast("B"), path, deadline, timeout)
        return Decoded(pixels, meta, patient_id)

    def _receive_into(self, view: memoryview, path: bytes, deadline: float, timeout: float) -> None:
        assert self._sock is not None
        received = 0
        while received < len(view):
            self._wait(path, deadline, timeout)
            try:
                count = self._sock.recv_into(view[received:])
            except OSError:
                count = 0
            if count == 0:
                raise self._crashed(path)
            received += count

    def _wait(self, path: bytes, deadline: float, timeout: float) -> None:
        assert self._conn is not None
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            self._discard()
            raise error(TIMEOUT, path, f"no result within the time limit of {timeout:g} s")

    def _crashed(self, path: bytes) -> XRayReadError:
        description = self._exit_description()
        said = _last_words(self._codec_output)
        self._discard()
        return error(DECODE_FAILED, path, f"decoder crashed ({description})" + (f": {said}" if said else ""))

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._discard()
        if self._conn is None:
            self._start()

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        self._codec_output = tempfile.TemporaryFile()
        command = [sys.executable, "-c", "from scoring.imaging.isolation import child_main; child_main()"]
        try:
            self._process = subprocess.Popen(
                [*command, str(child_sock.fileno()), str(self._codec_output.fileno())],
                pass_fds=(child_sock.fileno(), self._codec_output.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is for the caller, not the child
            )
        finally:
            child_sock.close()
        self._sock = parent_sock
        self._conn = Connection(os.dup(parent_sock.fileno()))
        if not self._conn.poll(CHILD_START_TIMEOUT_S):
            self._discard()
            raise RuntimeError(f"the isolated X-ray decoder did not start within {CHILD_START_TIMEOUT_S:g} s")
        try:
            self._conn.recv()  # ("ready", pid)
        except (EOFError, OSError):
            description = self._exit_description()
            self._discard()
            raise RuntimeError(f"the isolated X-ray decoder failed to start ({description})") from None

    def _exit_description(self) -> str:
        process = self._process
        if process is None:
            return "no process"
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "connection lost"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def _discard(self, graceful: bool = False) -> None:
        conn, sock, process, codec_output = self._conn, self._sock, self._process, self._codec_output
        self._conn, self._sock, self._process, self._codec_output = None, None, None, None
        if codec_output is not None:
            codec_output.close()
        for handle in (conn, sock):
            if handle is not None:
                handle.close()  # EOF for the child, which then exits on its own
        if process is None:
            return
        if graceful:
            try:
                process.wait(timeout=2)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait()


_READER: _IsolatedReader | None = None
_READER_LOCK = threading.Lock()


def _isolated_reader() -> _IsolatedReader:
    global _READER
    with _READER_LOCK:
        if _READER is None or _READER.owner_pid != os.getpid():
            _READER = _IsolatedReader()
        return _READER


def _after_fork_in_child() -> None:
    global _READER, _READER_LOCK
    _READER_LOCK = threading.Lock()
    if _READER is not None:
        _READER.forget()
    _READER = None


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop_reader_process)


def child_main() -> None:
    """The decoder child: read (path, min_side) requests from the connection, answer with pixels or an
    error."""
    fd, output_fd = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=os.dup(fd))
    conn = Connection(fd)
    # stderr is the caller's: pydicom's records quote header values, so none may reach it, even from
    # outside a decode (where decode_file silences them anyway).
    logging.getLogger("pydicom").addHandler(logging.NullHandler())
    logging.getLogger("pydicom").propagate = False
    codec_output = _capture_codec_output(output_fd)
    _limit_address_space(CHILD_ADDRESS_SPACE_BYTES)
    _warm_up()
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                path, min_side = conn.recv()
            except (EOFError, OSError):
                return
            delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
            if delay > 0:
                time.sleep(delay)
            _answer(conn, sock, path, min_side, codec_output)
    except ConnectionError:
        # The caller is gone (a scorer or worker killed mid-read): there is no one to answer, and a traceback on
        # the stderr it shared with us would only reach the cron mail of a run that has already ended.
        return


def _capture_codec_output(output_fd: int) -> BinaryIO:
    """Point file descriptor 2 at the caller's anonymous file, where the C codecs' own messages land ("Invalid
    number of tiles", "Corrupt JPEG data"): a night's output would otherwise hold a line, unattributed, for each odd
    film. Python's own stderr (a traceback, should the child fail) still goes to the caller's."""
    sys.stderr = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    os.dup2(output_fd, 2)
    return open(output_fd, "r+b", buffering=0)


def _last_words(codec_output: BinaryIO | None) -> str:
    """The end of what a crashed child printed ("terminate called after throwing ..."), read by the caller
    without moving the file's position; scrubbed, one line."""
    if codec_output is None:
        return ""
    try:
        size = os.fstat(codec_output.fileno()).st_size
        tail = os.pread(codec_output.fileno(), CODEC_OUTPUT_KEPT_BYTES, max(0, size - CODEC_OUTPUT_KEPT_BYTES))
    except OSError:
        return ""
    return _one_line(tail)


def _codec_said(codec_output: BinaryIO) -> str:
    """What the codecs wrote since the last call, as one scrubbed line; the capture is emptied."""
    if codec_output.seek(0, os.SEEK_END) == 0:  # nothing printed, as for almost every film: one call
        return ""
    codec_output.seek(0)
    text = codec_output.read(CODEC_OUTPUT_KEPT_BYTES)
    codec_output.seek(0)
    codec_output.truncate()  # fd 2 shares this file position: the next message starts at 0 again
    return _one_line(text)


def _one_line(text: bytes) -> str:
    lines = dict.fromkeys(line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip())
    return scrub("; ".join(lines)) if lines else ""  # distinct lines, in order


def _answer(conn: Connection, sock: socket.socket, path: bytes, min_side: int | None,
            codec_output: BinaryIO) -> None:
    try:
        decoded = decode_file(path, min_side)
    except XRayReadError as exc:
        said = _codec_said(codec_output)
        conn.send(("error", exc.reason, f"{exc.message} (the codec said: {said})" if said else exc.message))
        return
    _codec_said(codec_output)  # a film that decoded: a fallback's complaint on the way is no news
    pixels = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
    conn.send(("ok", decoded.meta, decoded.patient_id, pixels.shape))
    sock.sendall(memoryview(pixels).cast("B"))


def _limit_address_space(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _warm_up() -> None:
    """Import the codecs now, so that their import time does not count against a file's limit."""
    import PIL.Image
    import PIL.JpegImagePlugin  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import pydicom.pixels  # noqa: F401

    PIL.Image.init()
    for module in ("gdcm", "openjpeg", "jpeg_ls", "rle"):
        try:
            __import__(module)
        except ImportError:
            pass
