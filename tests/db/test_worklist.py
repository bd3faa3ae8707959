"""The worklist query (db.worklist) on both backends: filters, orders, paging, the maximum wait, previous/next."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from sqlalchemy import event, select

from db import claims, synthetic, worklist
from db.engine import read_session, write_session
from db.models import Image, Prediction, Review
from db.reviewers import add_reviewer
from db.reviews import add_review
from db.worklist import WorklistFilter


@pytest.fixture
def fill(engine):
    with write_session(engine) as session:
        return synthetic.fill(session, images=120, reviews=40, reviewers=2, seed=3)


def _all(session, flt: WorklistFilter) -> list:
    page = worklist.worklist_page(session, flt, page_size=1000)
    assert page.total == len(page.rows)
    return page.rows


def test_filters_match_a_plain_python_reading(engine, fill):
    with read_session(engine) as session:
        rows = {p.image_id: p for p in session.scalars(select(Prediction))}
        images = {i.id: i for i in session.scalars(select(Image))}
        reviews: dict[int, list[Review]] = {}
        for r in session.scalars(select(Review).order_by(Review.created_at, Review.id)):
            reviews.setdefault(r.image_id, []).append(r)
        base = WorklistFilter(fill.model_version_id)
        cases = {
            WorklistFilter(fill.model_version_id, status="unreviewed"): lambda i: i not in reviews,
            WorklistFilter(fill.model_version_id, status="reviewed"): lambda i: i in reviews,
            WorklistFilter(fill.model_version_id, status="flagged"): lambda i: i in reviews and reviews[i][-1]
            .flagged_for_retraining,
            WorklistFilter(fill.model_version_id, status="disagrees"): lambda i: i in reviews and reviews[i][-1]
            .label != rows[i].predicted_class,
            WorklistFilter(fill.model_version_id, classes=("covid",), confidence_max=0.6):
                lambda i: rows[i].predicted_class == "covid" and rows[i].confidence <= 0.6,
            WorklistFilter(fill.model_version_id, modality="CR", view="PA"):
                lambda i: images[i].modality == "CR" and images[i].view_position == "PA",
            WorklistFilter(fill.model_version_id, folder="/synthetic/site1/"):
                lambda i: images[i].path.startswith("/synthetic/site1/"),
        }
        for flt, expected in cases.items():
            assert {r.image_id for r in _all(session, flt)} == {i for i in rows if expected(i)}, flt
            assert flt.active_filters and not base.active_filters


def test_uncertainty_order_puts_overdue_cases_first(engine, fill):
    with read_session(engine) as session:
        flt = WorklistFilter(fill.model_version_id, max_wait_days=20)
        rows = _all(session, flt)
    overdue = [r for r in rows if r.overdue]
    assert 0 < len(overdue) < len(rows)
    assert rows[:len(overdue)] == overdue
    for part in (rows[:len(overdue)], rows[len(overdue):]):
        assert [r.entropy for r in part] == sorted((r.entropy for r in part), reverse=True)


@pytest.mark.parametrize("sort", worklist.SORTS)
def test_paging_neighbours_and_positions_agree_with_the_order(engine, fill, sort):
    flt = WorklistFilter(fill.model_version_id, sort=sort, status="all")
    with read_session(engine) as session:
        order = [r.image_id for r in _all(session, flt)]
        paged = [r.image_id for n in (1, 2, 3) for r in worklist.worklist_page(session, flt, page=n, page_size=50).rows]
        assert paged == order
        assert worklist.first_case(session, flt) == order[0]
        for i in (0, 7, len(order) - 1):
            assert worklist.position(session, flt, order[i]) == i + 1
            assert worklist.neighbour(session, flt, order[i]) == (order[i + 1] if i + 1 < len(order) else None)
            assert worklist.neighbour(session, flt, order[i], step=-1) == (order[i - 1] if i else None)


def test_next_skips_cases_another_reviewer_holds(engine, fill):
    flt = WorklistFilter(fill.model_version_id, status="unreviewed")
    with read_session(engine) as session:
        order = [r.image_id for r in _all(session, flt)]
    with write_session(engine) as session:
        claims.claim(session, order[1], fill.reviewer_ids[1])
    with read_session(engine) as session:
        assert worklist.neighbour(session, flt, order[0], skip_claimed_for=fill.reviewer_ids[0]) == order[2]
        assert worklist.neighbour(session, flt, order[0], skip_claimed_for=fill.reviewer_ids[1]) == order[1]
        page = worklist.worklist_page(session, flt, reviewer_id=fill.reviewer_ids[0])
        assert page.rows[1].claimed_by == "synthetic1" and page.rows[0].claimed_by is None



def test_rows_name_who_gave_the_latest_review(engine, fill):
    flt = WorklistFilter(fill.model_version_id, status="unreviewed")
    with read_session(engine) as session:
        first, second, untouched = [r.image_id for r in _all(session, flt)[:3]]
    with write_session(engine) as session:
        lee = add_reviewer(session, "dr.lee", "a-long-password", display_name="Dr Lee").id
        add_review(session, image_id=first, reviewer_id=fill.reviewer_ids[0], label="covid")
        add_review(session, image_id=first, reviewer_id=lee, label="normal", flagged_for_retraining=True)
        add_review(session, image_id=second, reviewer_id=fill.reviewer_ids[1], label="covid")
    with read_session(engine) as session:
        rows = {r.image_id: r for r in _all(session, replace(flt, status="all"))}
    assert (rows[first].latest_label, rows[first].latest_flagged, rows[first].latest_reviewer) == (
        "normal", True, "Dr Lee")  # the latest reading, not the first
    assert rows[second].latest_reviewer == "synthetic1"  # no display name: the user name
    assert rows[untouched].latest_reviewer is None


@pytest.mark.parametrize("page_size", [5, 50])
def test_a_page_costs_the_same_queries_whatever_its_size(engine, fill, page_size):
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with read_session(engine) as session:
        page = worklist.worklist_page(session, WorklistFilter(fill.model_version_id), page_size=page_size,
                                      reviewer_id=fill.reviewer_ids[0])
    assert len(page.rows) == page_size
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 4  # count, ids, rows, claims

def test_scored_date_range(engine, fill):
    now = dt.datetime.now(dt.UTC)
    day = (now - dt.timedelta(days=3)).date()
    flt = WorklistFilter(fill.model_version_id, date_from=day, date_to=day)
    with read_session(engine) as session:
        rows = _all(session, flt)
    assert rows and all(r.scored_at.date() == day for r in rows)


def test_the_widest_date_range_is_every_case(engine, fill):
    flt = WorklistFilter(fill.model_version_id, date_from=dt.date.min, date_to=dt.date.max)  # no OverflowError
    with read_session(engine) as session:
        assert len(_all(session, flt)) == 120


def test_the_worklist_reads_only_indexes_on_sqlite(sqlite_url):
    from db import migrate
    from db.engine import create_database_engine
    from db.worklist import _filtered, _ordered

    engine = create_database_engine(sqlite_url)
    migrate.upgrade(engine)
    flt = WorklistFilter(1, status="unreviewed")
    now = dt.datetime.now(dt.UTC)
    with read_session(engine) as session:
        for query in (_ordered(select(Prediction.id), flt, now).limit(50), _filtered(select(Prediction.id), flt, now)):
            sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row) for row in session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "USING COVERING INDEX ix_predictions_" in plan and "SCAN predictions" not in plan, plan
