"""The dashboard's speed on a large database: the worklist query in SQL, and the case page and save-to-next in a
real browser.

Builds a SQLite database in a temporary CXR_HOME with ``--images`` synthetic predictions (default 100,000) and
``--reviews`` reviews (10,000) of a random ResNet-18 at 64 px (db.synthetic; the images are cxr-dev PNGs, cycled),
then prints:

1. the worklist filter + sort + page query (db.worklist.worklist_page: count, ordered ids, the page's details),
   p50/p95 per filter over pages 1, 2, 10 and 100, and over all;
2. in headless Chromium at 1440x900 against ``streamlit run`` on a free port: the next case ready (its film drawn
   by the viewer, and its overlay) with the overlay on and its Grad-CAM map already cached, and save-to-next
   (S pressed to the next case's film drawn) over ``--saves`` consecutive reviews, p50/p95.

    python benchmarks/bench_dashboard.py [--images 100000] [--reviews 10000] [--saves 50] [--no-browser]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from dashboard.local_server import APP_IDLE, CASE_HEADING, CHROMIUM, serve

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))
PASSWORD = "benchmark-password"
BROWSER_CASES = 200


def hardware() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model or platform.processor()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at start")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   (n={len(ordered)})"


def build(home: Path, images: int, reviews: int, data: Path) -> tuple[str, int]:
    import torch
    from sqlalchemy import update

    from db import migrate, synthetic
    from db.engine import create_database_engine, write_session
    from db.hashing import file_sha256
    from db.models import Image, ModelVersion
    from db.reviewers import add_reviewer
    from scoring.model import Checkpoint, Preprocessing, build_model, save_checkpoint

    url = f"sqlite:///{home / 'cxr.db'}"
    engine = create_database_engine(url)
    migrate.upgrade(engine)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(home / "model.pt", Checkpoint(
        "resnet18", list(synthetic.CLASSES), Preprocessing(64), build_model("resnet18", 3).state_dict(),
        training={"name": "benchmark", "synthetic": True}))
    pngs = sorted((data / "cxr-dev").glob("*/*.png"))
    started = time.perf_counter()
    with write_session(engine) as session:
        fill = synthetic.fill(session, images=images, reviews=reviews)
        session.execute(update(ModelVersion).where(ModelVersion.id == fill.model_version_id)
                        .values(path=str(checkpoint), sha256=file_sha256(checkpoint)))
        for k, png in enumerate(pngs):
            session.execute(update(Image).where(Image.id % len(pngs) == k).values(path=str(png), format="png"))
        add_reviewer(session, "bench", PASSWORD, role="reviewer")
    with write_session(engine) as session:
        give_real_files(session, home / "images", fill.model_version_id, pngs, BROWSER_CASES)
    print(f"database: {images} predictions, {reviews} reviews, built in {time.perf_counter() - started:.1f} s")
    return url, fill.model_version_id


def give_real_files(session, folder: Path, version_id: int, pngs: list[Path], n: int) -> None:
    """The first ``n`` cases of the default worklist get files of their own whose content matches their sha256, as
    the attribution engine checks (each a cxr-dev PNG re-encoded with a text chunk naming the case)."""
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo
    from sqlalchemy import update

    from db import worklist
    from db.hashing import file_sha256
    from db.models import Image
    from db.worklist import WorklistFilter

    folder.mkdir()
    rows = worklist.worklist_page(session, WorklistFilter(version_id, status="unreviewed"), page_size=n).rows
    for k, row in enumerate(rows):
        info = PngInfo()
        info.add_text("benchmark-case", str(row.image_id))
        target = folder / f"case{row.image_id}.png"
        PILImage.open(pngs[k % len(pngs)]).save(target, pnginfo=info)
        session.execute(update(Image).where(Image.id == row.image_id)
                        .values(path=str(target), sha256=file_sha256(target)))


def bench_sql(url: str, version_id: int, rounds: int) -> None:
    from db import worklist
    from db.engine import create_database_engine, read_session
    from db.worklist import WorklistFilter

    engine = create_database_engine(url)
    filters = {
        "unreviewed, uncertainty (default)": WorklistFilter(version_id, status="unreviewed"),
        "all, uncertainty": WorklistFilter(version_id),
        "unreviewed, confidence <= 0.6": WorklistFilter(version_id, status="unreviewed", confidence_max=0.6),
        "flagged": WorklistFilter(version_id, status="flagged"),
        "disagrees, by confidence": WorklistFilter(version_id, status="disagrees", sort="confidence"),
        "covid + CR, by date": WorklistFilter(version_id, classes=("covid",), modality="CR", sort="date"),
        "folder prefix": WorklistFilter(version_id, folder=str(DEFAULT_DATA / "cxr-dev" / "covid")),
        "unreviewed, PA, study date range": WorklistFilter(
            version_id, status="unreviewed", view="PA", date_field="study",
            date_from=dt.date.today() - dt.timedelta(days=20), date_to=dt.date.today()),
    }
    every: list[float] = []
    print("\nworklist filter + sort + page (count, ordered page ids, the page's rows), in process, warm:")
    with read_session(engine) as session:
        for name, flt in filters.items():
            worklist.worklist_page(session, flt)  # warm-up
            samples = []
            for _ in range(rounds):
                for page in (1, 2, 10, 100):
                    started = time.perf_counter()
                    worklist.worklist_page(session, flt, page=page)
                    samples.append(time.perf_counter() - started)
            every += samples
            print(f"  {name:36s} {percentiles(samples)}")
    print(f"  {'all filters':36s} {percentiles(every)}")


VIEWER = ("Array.from(document.querySelectorAll('*')).map(e => e.shadowRoot && "
          "e.shadowRoot.querySelector('.cxr-viewer')).find(Boolean)")


def _ready(page, previous: int | None, *, overlay: bool = False) -> int:
    """Wait until a case other than ``previous`` is drawn by the viewer (its film, and its overlay when asked);
    its id."""
    try:
        page.wait_for_function(
            f"([prev, overlay]) => {{ const v = {VIEWER}; return v && v.dataset.case && v.dataset.case !== String(prev)"
            f" && (!overlay || v.dataset.overlay === 'drawn'); }}", arg=[previous, overlay], polling=20)
    except Exception as error:
        state = page.evaluate(f"""() => {{ const v = {VIEWER}; return [v && v.dataset.case, location.search,
            [...document.querySelectorAll('h4, [data-testid=stAlert], [data-testid=stException]')]
            .map(e => e.textContent.slice(0, 200))]; }}""")
        raise RuntimeError(f"no new case drawn after case {previous}: {state}") from error
    return int(page.locator(".cxr-viewer").get_attribute("data-case"))


def _idle(page) -> None:
    """Until the app has finished its rerun, the preloading of the next case included (called once a case is drawn,
    i.e. while its run is under way)."""
    page.wait_for_function(APP_IDLE, polling=20)


def precompute(url: str, version_id: int, n: int) -> None:
    from db import worklist
    from db.engine import create_database_engine, read_session
    from db.worklist import WorklistFilter
    from scoring.attribution import load_or_compute

    engine = create_database_engine(url)
    with read_session(engine) as session:
        rows = worklist.worklist_page(session, WorklistFilter(version_id, status="unreviewed"), page_size=n).rows
    for row in rows:
        load_or_compute(engine, row.image_id, version_id, "gradcam", row.predicted_class)


def bench_browser(home: Path, url: str, version_id: int, saves: int) -> None:
    from playwright.sync_api import sync_playwright

    precompute(url, version_id, 40)
    env = {**os.environ, "CXR_HOME": str(home), "CXR_DB_URL": url}
    with serve(env) as base:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/")
            page.get_by_label("User name").fill("bench")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Start reading").click()
            current = _ready(page, None)
            _idle(page)
            page.get_by_role("heading", name=CASE_HEADING).first.click()  # the shortcuts act once the page has focus
            page.keyboard.press("o")
            _ready(page, None, overlay=True)
            cached = []
            for _ in range(20):
                _idle(page)
                started = time.perf_counter()
                page.keyboard.press("n")
                current = _ready(page, current, overlay=True)
                cached.append(time.perf_counter() - started)
            print("\nin Chromium (1440x900), against `streamlit run` on localhost:")
            print(f"  {'next case ready, cached overlay on':36s} {percentiles(cached)}")
            _idle(page)
            page.keyboard.press("o")
            page.wait_for_function(f"(() => {{ const v = {VIEWER}; return v && v.dataset.overlay === ''; }})()")
            timings = []
            for _ in range(saves):
                page.get_by_role("heading", name=CASE_HEADING).first.click()  # keep the focus on the page
                page.keyboard.press("2")
                page.get_by_text("Label: normal").wait_for()
                _idle(page)
                started = time.perf_counter()
                page.keyboard.press("s")
                current = _ready(page, current)
                timings.append(time.perf_counter() - started)
            print(f"  {'save to next case ready':36s} {percentiles(timings)}")
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--reviews", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10, help="passes over the pages of each filter")
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    print(hardware())
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dashboard-") as tmp:
        home = Path(tmp)
        os.environ["CXR_HOME"] = str(home)
        url, version_id = build(home, args.images, args.reviews, args.data)
        bench_sql(url, version_id, args.rounds)
        if not args.no_browser:
            bench_browser(home, url, version_id, args.saves)


if __name__ == "__main__":
    main()
