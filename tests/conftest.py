"""Fixtures shared by every test package.

Real data lives outside the repository: ``CXR_SHARED_DATA`` (default ``../shared/data`` beside the
checkout). Under CI (``CI=true``) a missing folder fails the tests that need it; elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url

from dashboard.local_server import CHROMIUM
from db import migrate
from db.engine import create_database_engine

REPO_ROOT = Path(__file__).resolve().parents[1]


def _missing(what: str) -> None:
    message = f"{what} not found; set CXR_SHARED_DATA to the shared data folder"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def missing_tool(what: str) -> None:
    """A tool .ci/run installs (chromium, nginx, ...): its absence fails under CI and skips elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is not installed (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (which clients can verify against) and its key, written as
    ``folder/cert.pem`` and ``folder/key.pem``."""
    import datetime
    import ipaddress

    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        missing_tool("cryptography (installed with Authlib from requirements.txt)")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A size-limited file system at ``folder`` (needs mount rights: root with CAP_SYS_ADMIN, as in CI); skips the
    test where it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (a full disk is easy to reach on it)."""
    with tmpfs(tmp_path / "disk", "2m") as folder:
        yield folder


def process_alive(pid: int | str) -> bool:
    """Whether the process exists and has not exited (a zombie has; only its parent's reaping is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_for_exit(pid: int, seconds: float, what: str) -> None:
    """Fail unless the process has exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        assert time.monotonic() < deadline, f"{what} (pid {pid}) is still running after {seconds:g} s"
        time.sleep(0.05)


def live_processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            named = text.encode() in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if named and process_alive(entry.name):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        _missing(str(root))
    return root


@pytest.fixture(scope="session")
def cxr_dev(shared_data: Path) -> Path:
    folder = shared_data / "cxr-dev"
    if not (folder / "labels.csv").is_file():
        _missing(str(folder))
    return folder


@pytest.fixture(scope="session")
def cxr_adult(shared_data: Path) -> Path:
    folder = shared_data / "cxr-adult"
    if not (folder / "labels.csv").is_file():
        _missing(str(folder))
    return folder


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    folder = shared_data / "dicom"
    if not folder.is_dir():
        _missing(str(folder))
    return folder


@pytest.fixture(scope="session")
def pydicom_data():
    """Path of a file shipped by the ``pydicom-data`` test dependency."""
    from pydicom.data import get_testdata_file

    def find(name: str) -> Path:
        path = get_testdata_file(name)
        if path is None:
            pytest.fail(f"{name} is not in pydicom-data; is requirements-dev.txt installed?")
        return Path(path)

    return find


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own CXR_HOME, so nothing touches the user's real state."""
    home = tmp_path_factory.mktemp("cxr-home")
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.delenv("CXR_DB_URL", raising=False)
    monkeypatch.delenv("CXR_PSEUDONYM_KEY", raising=False)
    return home


def _postgres_bin() -> Path | None:
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database: ``CXR_TEST_POSTGRES_URL``, else a throwaway local cluster.

    The cluster needs PostgreSQL's server binaries (Debian package ``postgresql``); without them the tests
    that use it skip, or fail under CI, where .ci/run installs them.
    """
    import shutil
    import subprocess
    import tempfile

    if os.environ.get("CXR_TEST_POSTGRES_URL"):
        yield os.environ["CXR_TEST_POSTGRES_URL"]
        return
    bindir = _postgres_bin()
    if bindir is None:
        _missing("PostgreSQL server binaries (initdb)")
    # Not under pytest's temp folder: the server's user could not reach into root's private tree.
    root = Path(tempfile.mkdtemp(prefix="cxr-test-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")

    def run(*command: str) -> None:
        result = subprocess.run([*as_postgres, *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")
    run(str(bindir / "initdb"), "-D", str(data), "-U", "cxr", "--auth=trust", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start",
        "-o", f"-c listen_addresses='' -k {sockets} -c fsync=off")
    try:
        run(str(bindir / "createdb"), "-h", str(sockets), "-U", "cxr", "cxr_test")
        yield f"postgresql+psycopg://cxr@/cxr_test?host={sockets}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database on each backend the product supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cxr.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"cxr_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cxr.db'}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small, randomly initialised but valid checkpoint (ResNet-18 at 32 px) for pipeline tests."""
    import torch

    from scoring.model import Checkpoint, Preprocessing, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return save_checkpoint(path, Checkpoint("resnet18", ["covid", "normal", "pneumonia"], Preprocessing(32),
                                            model.state_dict(), temperature=1.3,
                                            training={"name": "tiny-test", "synthetic": True}))


@pytest.fixture
def engine(db_url):
    """A migrated database on each backend (``db_url``)."""
    engine = create_database_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (it cannot download browsers here)."""
    if not Path(CHROMIUM).exists():
        missing_tool("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def active_model_database(url: str, checkpoint: Path) -> None:
    """A database whose active model version is ``checkpoint`` (--results-to sends the active version's)."""
    from db import migrate, model_versions
    from db.engine import create_database_engine, write_session
    from scoring.model import checkpoint_sha256, load_checkpoint

    engine = create_database_engine(url)
    try:
        migrate.ensure_schema(engine)
        with write_session(engine) as session:
            version = model_versions.register_checkpoint(session, checkpoint, load_checkpoint(checkpoint),
                                                         checkpoint_sha256(checkpoint))
            model_versions.promote(session, str(version.id))
    finally:
        engine.dispose()
