"""Model card: Markdown, JSON and PNG pictures written, valid and consistent; odd inputs do not break it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_training.calibration import softmax
from model_training.card import SYNTHETIC_WARNING, write_model_card
from model_training.metrics import classification_metrics, reliability_bins

CLASSES = ["normal", "pneumonia", "covid"]


def _card_inputs(seed: int = 0, n: int = 120) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    before, after = softmax(logits * 2.0), softmax(logits)
    val = classification_metrics(y, after, CLASSES)
    test = classification_metrics(y[::-1], after[::-1], CLASSES)
    rb, ra = reliability_bins(before, y), reliability_bins(after, y)
    return {
        "name": "cxr-test-model",
        "config": {"arch": "resnet18", "epochs": 3, "lr": 1e-3, "data": Path("/data/cohort"), "size": (224, 224),
                   "seed": np.int64(7)},
        "data_summary": {
            "train": {"images": 300, "patients": 250, "per_class": {"normal": 100, "pneumonia": 120, "covid": 80},
                      "per_source": {"site-a": 220, "site-b": 80}, "from_reviews": 3,
                      "per_source_class": {"site-a": {"normal": 100, "pneumonia": 120}, "site-b": {"covid": 80}}},
            "validation": {"images": n, "patients": n, "per_class": {"normal": 40, "pneumonia": 40, "covid": 40},
                           "per_source": {"site-a": 80, "site-b": 40}, "from_reviews": 0},
            "dataset": "demo",
        },
        "metrics": {"validation": val, "test": test,
                    "calibration": {"temperature": 2.0, "fit_on": "validation", "ece_before": rb["ece"],
                                    "ece_after": ra["ece"]}},
        "history": [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_macro_f1": 0.5 + 0.1 * e,
                     "val_accuracy": 0.55 + 0.1 * e, "lr": 1e-3 / e} for e in (1, 2, 3)],
        "reliability": {"before": rb, "after": ra, "temperature": 2.0, "split": "validation"},
    }


@pytest.fixture(scope="module")
def card_model_training_full(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    inputs = _card_inputs()
    paths = write_model_card(tmp_path_factory.mktemp("card") / "nested" / "out", **inputs, synthetic=True)
    return inputs, paths


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert np.asarray(image).std() > 0  # not a blank canvas


def test_files_written(card_model_training_full):
    _, paths = card_model_training_full
    assert set(paths) == {"markdown", "json", "training_curves", "confusion_matrix", "reliability_diagram"}
    assert {p.name for p in paths.values()} == {"model_card.md", "model_card.json", "training_curves.png",
                                                "confusion_matrix.png", "reliability_diagram.png"}
    assert len({p.parent for p in paths.values()}) == 1
    for key in ("training_curves", "confusion_matrix", "reliability_diagram"):
        _assert_png(paths[key])
    assert not list(paths["json"].parent.glob("*.tmp"))


def test_json_round_trips(card_model_training_full):
    inputs, paths = card_model_training_full
    card = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert card["name"] == "cxr-test-model" and card["synthetic"] is True
    assert card["warning"] == SYNTHETIC_WARNING
    assert card["metrics"] == inputs["metrics"]  # plain floats/lists survive unchanged
    assert card["history"] == inputs["history"]
    assert card["reliability"]["after"] == inputs["reliability"]["after"]
    assert card["config"]["data"] == "/data/cohort" and card["config"]["size"] == [224, 224]
    assert card["config"]["seed"] == 7
    assert card["created_utc"].endswith("+00:00")
    assert card["pictures"]["confusion_matrix"] == "confusion_matrix.png"
    assert card["data_summary"]["train"]["per_class"]["covid"] == 80


def test_markdown_content(card_model_training_full):
    inputs, paths = card_model_training_full
    text = paths["markdown"].read_text(encoding="utf-8")
    assert text.startswith("# Model card: cxr-test-model\n")
    assert SYNTHETIC_WARNING in text
    assert "not a diagnostic device" in text and "shortcut" in text.lower()
    for picture in ("training_curves.png", "confusion_matrix.png", "reliability_diagram.png"):
        assert f"]({picture})" in text
    val = inputs["metrics"]["validation"]
    assert f"{val['macro_f1']:.3f}" in text and f"{val['accuracy']:.3f}" in text
    assert "| site-b " in text  # source-by-class table
    assert "Temperature T" in text and '"arch": "resnet18"' in text
    # Plain-text tables: every row of a table has the same width.
    for block in text.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({len(r) for r in rows}) == 1, block


def test_warning_only_when_synthetic(tmp_path):
    inputs = _card_inputs()
    paths = write_model_card(tmp_path, **{**inputs, "reliability": None, "history": inputs["history"][:1]},
                             synthetic=False)
    text = paths["markdown"].read_text(encoding="utf-8")
    assert SYNTHETIC_WARNING not in text and "WARNING" not in text
    card = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert card["synthetic"] is False and card["warning"] is None
    # No reliability given: no diagram, and the card says so by omission rather than failing.
    assert "reliability_diagram" not in paths and not (tmp_path / "reliability_diagram.png").exists()
    _assert_png(paths["training_curves"])  # a single epoch still draws


def test_class_absent_from_validation_and_odd_history(tmp_path):
    y = np.array([0, 0, 1, 1, 0])  # no "covid" in validation -> AUROC None for it
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    val = classification_metrics(y, p, CLASSES)
    assert val["per_class"]["covid"]["auroc"] is None
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": float("nan"), "val_macro_f1": None}]
    paths = write_model_card(tmp_path, name="edge", config={}, data_summary={}, metrics={"validation": val},
                             history=history, reliability={"before": reliability_bins(p, y)}, synthetic=True)
    for key in ("training_curves", "confusion_matrix", "reliability_diagram"):
        _assert_png(paths[key])
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "covid" in text and "n/a" in text and "left out of macro-AUROC" in text
    card = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert card["history"][0]["val_loss"] is None  # NaN is not JSON: stored as null
    assert card["metrics"]["validation"]["per_class"]["covid"]["auroc"] is None


def test_empty_history_and_summary(tmp_path):
    paths = write_model_card(tmp_path, name="bare", config={}, data_summary={}, metrics={}, history=[])
    assert set(paths) == {"markdown", "json", "training_curves"}
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "No training history given." in text and "No evaluation metrics given." in text
    _assert_png(paths["training_curves"])


def test_thread_safe(tmp_path):
    inputs = _card_inputs(n=60)
    inputs["metrics"].pop("test")
    inputs["reliability"].pop("before")
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            write_model_card(tmp_path / str(i), **{**inputs, "history": inputs["history"][:2]})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i in range(2):
        _assert_png(tmp_path / str(i) / "reliability_diagram.png")
