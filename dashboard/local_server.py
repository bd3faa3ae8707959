"""The dashboard served by ``streamlit run`` on a free localhost port, for the browser and proxy tests, the
benchmark and the screenshots: ``with serve(env) as base: ...`` (``base`` is ``http://127.0.0.1:PORT``); and the
few steps every one of them takes in the browser (Debian's chromium, driven by Playwright), so that the
screenshots in the guides are taken the way the browser test reads a case."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Playwright cannot download browsers here


def case_heading(image_id: int | None = None) -> re.Pattern:
    """The case page's heading (of case ``image_id``, or any) once the page is whole: it reads "Case 12 · …" first
    and gets its place in the list last, so a key pressed before that may find its button not drawn yet, and be
    lost, as a reader's would be."""
    case = r"\d+" if image_id is None else str(image_id)
    return re.compile(rf"^Case {case} · (\d+ of \d+|not in the current list)")


CASE_HEADING = case_heading()


@contextmanager
def serve(env: Mapping[str, str], *, start_seconds: float = 120, app: str = "dashboard/streamlit_app.py",
          address: str | None = "127.0.0.1", cwd: Path = REPO) -> Iterator[str]:
    """Starts ``app`` (a path from ``cwd``, by default the repository root, or an absolute one) with ``env``
    (CXR_HOME, CXR_DB_URL), waits until it answers, stops it afterwards. ``address=None`` leaves the listening
    address to dashboard/.streamlit/config.toml, as the README's ``streamlit run dashboard`` does."""
    port = free_port()
    bind = ["--server.address", address] if address is not None else []
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port), *bind, "--server.headless", "true"],
        cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/_stcore/health", start_seconds, server)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, seconds: float, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the dashboard exited with status {server.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the dashboard did not answer at {url}")


def sign_in(page, user: str, password: str) -> None:
    """Signs in on the sign-in screen ``page`` shows, and waits for the signed-in page."""
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()


# a JavaScript predicate for wait_for_function: the app runs nothing
APP_IDLE = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app && app.dataset.testScriptState !== 'running' && app.dataset.testScriptState !== 'rerunRequested'
        && !document.querySelector('[data-testid="stStatusWidget"]');
}"""


def wait_until_idle(page, settle_ms: int = 500) -> None:
    """Until the app has finished its rerun, ``settle_ms`` more for what the browser draws after it, and again
    until idle: a press's rerun that the server had not started when this was called is waited for too if it
    starts within ``settle_ms``. The app's script state is read, not its status widget, which shows only once a
    run has lasted a while (a one-second run never shows it)."""
    page.wait_for_function(APP_IDLE)
    page.wait_for_timeout(settle_ms)
    page.wait_for_function(APP_IDLE)
