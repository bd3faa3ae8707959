"""The shipped nginx site (deploy/nginx/cxr-review.conf) run by Debian's nginx on loopback ports, without root:
only its ports, certificate and upstream are replaced, and a minimal nginx.conf around it keeps everything
nginx writes in a temporary prefix. Without nginx the proxy tests skip, except under CI, where they fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard.local_server import free_port, serve
from db import migrate
from db.engine import create_database_engine
from tests.conftest import missing_tool, self_signed_certificate

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "deploy" / "nginx" / "cxr-review.conf"
MIME_TYPES = Path("/etc/nginx/mime.types")
UPSTREAM = "server 127.0.0.1:8501;"


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Proxy:
    http_port: int
    https_port: int
    certificate: Certificate
    prefix: Path

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


@pytest.fixture(scope="session")
def nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        missing_tool("nginx (Debian package nginx)")
    return found


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> Certificate:
    """A throwaway self-signed certificate for 127.0.0.1, which the tests' clients verify against."""
    return Certificate(*self_signed_certificate(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def proxy_to(nginx, certificate, tmp_path_factory) -> Callable[[int], AbstractContextManager[Proxy]]:
    """``with proxy_to(upstream_port) as proxy: ...``: the shipped site in front of that loopback port."""

    @contextmanager
    def start(upstream_port: int) -> Iterator[Proxy]:
        proxy = Proxy(free_port(), free_port(), certificate, tmp_path_factory.mktemp("nginx"))
        site = proxy.prefix / "cxr-review.conf"
        site.write_text(render_site(SITE.read_text(encoding="utf-8"), proxy, upstream_port), encoding="utf-8")
        conf = proxy.prefix / "nginx.conf"
        conf.write_text(wrapper_conf(proxy.prefix, site), encoding="utf-8")
        with running_nginx(nginx, proxy, conf):
            yield proxy

    return start


@pytest.fixture(scope="session")
def dashboard_env(tmp_path_factory) -> dict[str, str]:
    """What the app needs to start and show its sign-in page: a home and an empty, current database."""
    home = tmp_path_factory.mktemp("proxy-home")
    url = f"sqlite:///{home / 'cxr.db'}"
    engine = create_database_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return {**os.environ, "CXR_HOME": str(home), "CXR_DB_URL": url}


@pytest.fixture(scope="module")
def dashboard(dashboard_env) -> Iterator[str]:
    """The dashboard on a loopback port: its base URL."""
    with serve(dashboard_env) as base:
        yield base


@pytest.fixture(scope="module")
def site(dashboard, proxy_to) -> Iterator[Proxy]:
    """The dashboard behind the shipped site."""
    with proxy_to(port_of(dashboard)) as proxy:
        yield proxy


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def render_site(text: str, proxy: Proxy, upstream_port: int) -> str:
    """The site file with the tests' ports, certificate and upstream, and nothing else changed. Every placeholder
    must occur exactly once, so that a reworded site file fails here instead of being tested half-replaced."""
    ipv6 = "[::1]" if ipv6_loopback() else None
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{proxy.http_port};",
        "listen [::]:80;": f"listen {ipv6}:{proxy.http_port};" if ipv6 else "",  # no IPv6 here: IPv4 only
        "listen 443 ssl;": f"listen 127.0.0.1:{proxy.https_port} ssl;",
        "listen [::]:443 ssl;": f"listen {ipv6}:{proxy.https_port} ssl;" if ipv6 else "",
        "/etc/ssl/certs/cxr.example.org.pem": str(proxy.certificate.cert),
        "/etc/ssl/private/cxr.example.org.key": str(proxy.certificate.key),
        UPSTREAM: f"server 127.0.0.1:{upstream_port};",
    }
    for placeholder, value in replacements.items():
        assert text.count(placeholder) == 1, f"{placeholder!r} occurs {text.count(placeholder)} times in {SITE}"
        text = text.replace(placeholder, value)
    return text


def wrapper_conf(prefix: Path, site: Path) -> str:
    """A minimal nginx.conf around the site: every file nginx writes stays under ``prefix``."""
    mime = f"include {MIME_TYPES};" if MIME_TYPES.exists() else ""
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private temporary folders.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
events {{}}
http {{
    {mime}
    access_log {prefix / "access.log"};
{temp_paths}
    include {site};
}}
"""


@contextmanager
def running_nginx(nginx: str, proxy: Proxy, conf: Path) -> Iterator[None]:
    log = proxy.prefix / "error.log"
    server = subprocess.Popen(
        [nginx, "-p", str(proxy.prefix), "-c", str(conf),
         "-g", f"daemon off; pid {proxy.prefix / 'nginx.pid'}; error_log {log};"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(proxy.https_port, server, log)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_port(port: int, server: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            errors = log.read_text() if log.exists() else ""
            pytest.fail(f"nginx exited with status {server.returncode}: {server.stdout.read()}{errors}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nginx did not listen on port {port} within {seconds:g} s")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


