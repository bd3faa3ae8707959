"""The dashboard after ``cxr-demo``: the served app answers its health check, and every page renders once.

``python .ci/dashboard_smoke.py --url http://127.0.0.1:PORT --server-pid PID`` waits for the server started by
``streamlit run dashboard`` to answer ``/_stcore/health``, then runs each page headlessly with Streamlit's own
``AppTest``, signed in as the demo admin on the database of ``CXR_HOME`` / ``CXR_DB_URL``. The server never runs
a page before a browser connects; AppTest does, so a module a page imports but requirements.txt lacks fails here.
Exit 0 when every page ran without an exception, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("cxr.ci.dashboard")

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "dashboard" / "streamlit_app.py"


class SmokeError(Exception):
    pass


def wait_for_health(url: str, server_pid: int | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if server_pid is not None and not _alive(server_pid):
            raise SmokeError(f"the dashboard server (pid {server_pid}) exited before it answered")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                body = response.read().decode(errors="replace").strip()
            if response.status == 200 and body == "ok":
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise SmokeError(f"{url}/_stcore/health did not answer ok within {seconds:g} s")
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pages() -> list[str]:
    """Every page file, relative to the app (as ``AppTest.switch_page`` takes them)."""
    return sorted(str(path.relative_to(APP.parent)) for path in (APP.parent / "views").glob("*.py")
                  if path.name != "__init__.py")


def demo_admin_and_case() -> tuple[int, int]:
    """The id of the account ``cxr-demo`` created, and of a scored image."""
    from sqlalchemy import select

    from db.engine import get_engine, read_session
    from db.models import Prediction
    from db.reviewers import find_reviewer
    from model_training.demo import DEMO_ACCOUNT

    with read_session(get_engine()) as session:
        account = find_reviewer(session, DEMO_ACCOUNT)
        image_id = session.scalar(select(Prediction.image_id).order_by(Prediction.image_id).limit(1))
    if account is None or image_id is None:
        raise SmokeError(f"no {DEMO_ACCOUNT!r} account or no scored image: did cxr-demo run on this database?")
    return account.id, image_id


def render(account_id: int, page: str | None, query: dict[str, str], timeout: float):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.session_state["account_id"] = account_id
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page is not None and not at.exception:
        at.switch_page(page).run()
    return at


def render_every_page(account_id: int, image_id: int, timeout: float) -> list[str]:
    """Problems found: the exceptions of each page, and a case page that did not show the case."""
    problems = []
    for page in [None, *pages()]:
        query = {"image": str(image_id)} if page == "views/case.py" else {}
        at = render(account_id, page, query, timeout)
        name = page or "the default page"
        for exception in at.exception:
            problems.append(f"{name}: {exception.message}\n{''.join(exception.stack_trace)}")
        for shown in [*at.error, *at.warning]:
            log.info("%s shows: %s", name, shown.value)
        if page == "views/case.py" and not at.exception and not any(
                f"Case {image_id}" in str(markdown.value) for markdown in at.markdown):
            # "No such case" would skip the viewer and the attributions, and their imports with them
            problems.append(f"{name}: case {image_id} was not shown")
        log.info("rendered %s: %d exception(s)", name, len(at.exception))
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="where `streamlit run dashboard` serves, e.g. http://127.0.0.1:8501")
    parser.add_argument("--server-pid", type=int, help="fail at once if this process (the server) has exited")
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the health check")
    parser.add_argument("--page-timeout", type=float, default=180.0, help="seconds each page may take")
    args = parser.parse_args(argv)
    try:
        wait_for_health(args.url.rstrip("/"), args.server_pid, args.wait)
        log.info("%s answers its health check", args.url)
        account_id, image_id = demo_admin_and_case()
        problems = render_every_page(account_id, image_id, args.page_timeout)
    except SmokeError as exc:
        log.error("%s", exc)
        return 1
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
