"""The worklist's state in the URL (dashboard.urlstate) and the overlay's fixed colour scale (dashboard.viewer)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from dashboard import urlstate, viewer
from db.worklist import WorklistFilter


def test_a_filter_survives_the_round_trip_through_the_url():
    flt = WorklistFilter(3, classes=("covid", "normal"), confidence_min=0.2, confidence_max=0.6, status="flagged",
                         date_field="study", date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 2, 3),
                         modality="CR", view="PA", folder="/data/site a", outside_lungs=True, sort="confidence",
                         max_wait_days=5)
    query = urlstate.filter_to_query(flt)
    as_lists = {key: value if isinstance(value, list) else [value] for key, value in query.items()}
    assert urlstate.filter_from_query(as_lists, default_version=1, max_wait_days=5, allow_folder=True,
                                      any_version=True) == flt


def test_readers_always_get_the_active_version():
    query = {"v": ["7"]}  # a challenger's id in a crafted link
    assert urlstate.filter_from_query(query, 3, 7).model_version_id == 3
    assert urlstate.filter_from_query(query, 3, 7, any_version=True).model_version_id == 7


def test_the_folder_filter_is_for_admins_only():
    query = {"folder": ["/archive/DOE^JOHN_MRN1234567"]}
    assert urlstate.filter_from_query(query, 1, 7).folder is None  # a reviewer learns nothing about folders
    assert urlstate.filter_from_query(query, 1, 7, allow_folder=True).folder == "/archive/DOE^JOHN_MRN1234567"


# Values a hostile or broken link carries: each is ignored (its default used) and named, never raised.
HOSTILE = [("image", "99999999999999999999"), ("image", "0"), ("image", "-1"), ("image", "1e3"), ("image", "٣"),
           ("v", "99999999999999999999"), ("page", "9" * 5000), ("page", "0"), ("from", "0001-01-01"),
           ("to", "9999-12-31"), ("from", "2024-02-30"), ("cmin", "nan"), ("status", "<b>x</b>"),
           ("mod", "x" * 500), ("view", "PA\x00")]


@pytest.mark.parametrize(("key", "value"), HOSTILE)
def test_hostile_url_values_are_ignored_and_named(key, value):
    query = {key: [value]}
    flt = urlstate.filter_from_query(query, 1, 7, allow_folder=True, any_version=True)
    assert flt == WorklistFilter(1, status="unreviewed")
    assert urlstate.image_from_query(query) is None and urlstate.page_from_query(query) == 1
    assert urlstate.invalid_keys(query) == [key]


def test_valid_values_are_not_named_invalid():
    query = {"image": ["12"], "v": ["3"], "page": ["2"], "from": ["2024-01-02"], "to": [dt.date.today().isoformat()],
             "cmin": ["0.2"], "status": ["all"], "mod": ["CR"], "folder": ["/data/a"]}
    assert urlstate.invalid_keys(query) == []
    assert urlstate.image_from_query(query) == 12 and urlstate.page_from_query(query) == 2


def test_defaults_keep_links_short_and_bad_values_fall_back():
    assert urlstate.filter_to_query(WorklistFilter(2, status="unreviewed")) == {"v": "2"}
    flt = urlstate.filter_from_query({"v": ["x"], "cmax": ["nan"], "status": ["bogus"], "sort": ["evil"],
                                      "from": ["2024-13-40"], "page": ["-3"]}, default_version=7, max_wait_days=7)
    assert flt == WorklistFilter(7, status="unreviewed")
    assert urlstate.page_from_query({"page": ["-3"]}) == 1 and urlstate.image_from_query({"image": ["12"]}) == 12


def test_the_filter_widgets_show_only_values_they_offer():
    flt = WorklistFilter(9, classes=("covid", "gone"), confidence_max=0.5, modality="CR", view="LL", status="flagged",
                         date_from=dt.date(2024, 1, 2))  # a range without its end is no range
    shown = urlstate.widget_values(flt, 3, ["covid", "normal"], modalities=["CR", "DX"], views=["PA", "AP"])
    assert shown == {"wl_version": 3, "wl_classes": ["covid"], "wl_status": "flagged", "wl_sort": "uncertainty",
                     "wl_confidence": (0.0, 0.5), "wl_date_field": "scored", "wl_dates": (), "wl_modality": "CR",
                     "wl_view": None, "wl_folder": "", "wl_outside": False}


def test_active_filters_are_named_with_their_values():
    assert urlstate.describe_filters(WorklistFilter(1)) == []
    flt = WorklistFilter(1, status="unreviewed", classes=("covid", "normal"), confidence_max=0.5,
                         date_from=dt.date(2024, 1, 2), modality="CR", folder="/data/a", outside_lungs=True)
    assert urlstate.describe_filters(flt) == ["unreviewed", "predicted covid or normal", "confidence 0–0.5",
                                              "scored 2024-01-02 – …", "modality CR", "folder /data/a",
                                              "looks outside the lungs"]


def test_the_overlay_scale_is_the_share_of_the_maps_strongest_positive_attribution():
    values = np.array([[-2.0, 0.0], [1.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(viewer.normalised_attribution(values, 4.0), [[0, 0], [0.25, 1]])
    assert not viewer.normalised_attribution(-values.clip(0), 0.0).any()
