"""The model card written next to every checkpoint: Markdown for people, JSON for programs, PNG pictures.

Pictures are drawn with :class:`matplotlib.figure.Figure` on an explicit Agg canvas: no pyplot, no global
backend or rcParams changes, so this is headless and safe to call from any thread.

Arguments of :func:`write_model_card` (all JSON-able; numpy scalars, paths and the like are converted):

``data_summary``
    ``{split: {"images": int, "patients": int, "per_class": {class: int}, "per_source": {source: int},
    "from_reviews": int, "per_source_class": {source: {class: int}}}, ...}`` — one entry per split
    ("train", "validation", "test"), as ``model_training.data.summary`` makes; every key is optional. The
    splits may also sit under a ``"splits"`` key. Top-level entries that are not splits are listed as they are.
``metrics``
    ``{split: classification_metrics(...), ..., "calibration": {"temperature": T, "ece_before": ..,
    "ece_after": .., "nll_before": .., "nll_after": .., "fit_on": "validation", ...}}``. Any split dict
    holding ``per_class`` and ``confusion_matrix`` gets tables and a confusion-matrix panel; extra scalar
    keys in it (e.g. ``"ece"``, ``"nll"``) become extra columns of the overall table.
``history``
    ``[{"epoch": 1, "train_loss": .., "val_loss": .., "val_macro_f1": .., "val_accuracy": .., "lr": ..}, ...]``;
    missing or ``None`` values are skipped.
``reliability``
    ``{"before": reliability_bins(...), "after": reliability_bins(...), "temperature": T, "split": "test"}``;
    either of before/after may be missing, temperature and split are optional labels. ``None``: no diagram.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model_training.metrics import too_few_patients_text

CARD_FORMAT = "cxr-review-model-card"
CARD_VERSION = 1
SYNTHETIC_WARNING = "Trained on synthetic demo data — not for clinical use"

MARKDOWN_FILE = "model_card.md"
JSON_FILE = "model_card.json"
TRAINING_CURVES_FILE = "training_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
RELIABILITY_FILE = "reliability_diagram.png"

_DPI = 110
_CALIBRATION_LABELS = {
    "temperature": "Temperature T",
    "ece_before": "ECE before scaling (T = 1)",
    "ece_after": "ECE after scaling",
    "nll_before": "NLL before scaling (T = 1)",
    "nll_after": "NLL after scaling",
    "fit_on": "Temperature fitted on",
    "evaluated_on": "ECE / NLL evaluated on",
    "n_bins": "ECE bins (equal width)",
}
_SPLIT_BASE_KEYS = {"n", "classes", "accuracy", "macro_f1", "macro_auroc", "auroc_excluded", "absent_classes",
                    "per_class", "confusion_matrix"}


# --- JSON ---------------------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays, tensors, paths, dates, dataclasses, sets converted;
    NaN and infinities become ``None`` (JSON has no such numbers); anything else unknown becomes ``str``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch tensor
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Sequence):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return str(value)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- helpers -------------------------------------------------------------------------------------------------

def _is_split_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and "per_class" in value and "confusion_matrix" in value


def _split_metrics(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(k): v for k, v in metrics.items() if _is_split_metrics(v)}


def _data_splits(data_summary: Mapping[str, Any]) -> tuple[dict[str, Mapping[str, Any]], dict[str, Any]]:
    """(splits, other top-level entries) of a data summary."""
    source = data_summary.get("splits") if isinstance(data_summary.get("splits"), Mapping) else data_summary
    keys = ("per_class", "per_source", "images", "per_source_class")
    splits = {str(k): v for k, v in source.items() if isinstance(v, Mapping) and any(key in v for key in keys)}
    other = {str(k): v for k, v in data_summary.items()
             if k != "splits" and not (source is data_summary and str(k) in splits)}
    return splits, other


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v, digits) for v in value) or "none"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    """A pipe table padded so the raw text lines up; columns from ``numeric_from`` on are right-aligned."""
    cells = [[_fmt(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in row] for row in rows]
    heads = [str(h) for h in headers]
    widths = [max([len(heads[i]), 3] + [len(r[i]) for r in cells]) for i in range(len(heads))]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if i >= numeric_from else v.ljust(w)
               for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(out) + " |"

    rule = ["-" * (w - 1) + ":" if i >= numeric_from else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(heads), "| " + " | ".join(rule) + " |", *(line(r) for r in cells)])


def _ordered_union(groups: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    names = [str(n) for n in first]
    for group in groups:
        for key in group:
            if str(key) not in names:
                names.append(str(key))
    return names


def _count_table(splits: Mapping[str, Mapping[str, Any]], key: str, label: str, order: Sequence[str] = ()) -> str:
    columns = [name for name, s in splits.items() if isinstance(s.get(key), Mapping)]
    if not columns:
        return ""
    rows_names = _ordered_union([splits[c][key] for c in columns],
                                [o for o in order if any(o in splits[c][key] for c in columns)])
    rows = []
    for row_name in rows_names:
        counts = [int(splits[c][key].get(row_name, 0) or 0) for c in columns]
        rows.append([row_name, *counts, sum(counts)])
    totals = [sum(int(v or 0) for v in splits[c][key].values()) for c in columns]
    rows.append(["**total**", *totals, sum(totals)])
    return _table([label, *columns, "all"], rows)


# --- pictures -------------------------------------------------------------------------------------------------

def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    _atomic_write(path, buffer.getvalue())
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None or not isinstance(value, int | float | np.number) or not math.isfinite(float(value)):
            continue
        epoch = row.get("epoch")
        xs.append(float(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else float(i + 1))
        ys.append(float(value))
    return xs, ys


def draw_training_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    panels = [("Loss", [("train_loss", "train"), ("val_loss", "validation")], None),
              ("Validation metrics", [("val_macro_f1", "macro-F1"), ("val_accuracy", "accuracy"),
                                      ("val_macro_auroc", "macro-AUROC")], (0.0, 1.02))]
    if any(_series(history, "lr")[0]):
        panels.append(("Learning rate", [("lr", "lr")], None))
    epochs = sorted({x for key in ("train_loss", "val_loss", "val_macro_f1", "val_accuracy", "val_macro_auroc", "lr")
                     for x in _series(history, key)[0]})
    fig = _new_figure(4.6 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_title, keys, ylim) in zip(axes, panels, strict=True):
        drawn = False
        for key, label in keys:
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, label=label)
                drawn = True
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlabel("epoch")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(True, alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        if panel_title == "Learning rate":
            lrs = _series(history, "lr")[1]
            if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 20:
                ax.set_yscale("log")
        if drawn:
            if len(keys) > 1:
                ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def draw_confusion_matrices(splits: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    items = list(splits.items())
    k = max(len(m["classes"]) for _, m in items)
    side = max(4.2, 0.85 * k + 2.4)
    fig = _new_figure(side * len(items) + 0.8, side)
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    image = None
    for ax, (split, m) in zip(axes, items, strict=True):
        classes = list(m["classes"])
        cm = np.asarray(m["confusion_matrix"], dtype=float)
        support = cm.sum(axis=1, keepdims=True)
        fraction = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
        image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
        size = 10 if k <= 6 else 8
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                text = f"{int(cm[i, j])}"
                if support[i, 0] > 0:
                    text += f"\n{100 * fraction[i, j]:.0f}%"
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if fraction[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(classes)), labels=classes, rotation=30 if max(map(len, classes)) > 6 else 0,
                      ha="right" if max(map(len, classes)) > 6 else "center")
        ax.set_yticks(range(len(classes)), labels=classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{split} (n = {m.get('n', int(cm.sum()))}, accuracy {_fmt(m.get('accuracy'))})", fontsize=11)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of the true class (row)")
    return _save(fig, path)


def draw_reliability(reliability: Mapping[str, Any], path: Path) -> Path:
    temperature = reliability.get("temperature")
    states = [(key, bins) for key, bins in (("before", reliability.get("before")), ("after", reliability.get("after")))
              if isinstance(bins, Mapping)]
    fig = _new_figure(5.0 * len(states), 5.6)
    grid = fig.add_gridspec(2, len(states), height_ratios=[3, 1])
    split = reliability.get("split")
    for col, (state, bins) in enumerate(states):
        ax = fig.add_subplot(grid[0, col])
        ax_count = fig.add_subplot(grid[1, col], sharex=ax)
        edges = np.asarray(bins["edges"], dtype=float)
        width = np.diff(edges)
        lefts = edges[:-1]
        count = np.asarray(bins["count"], dtype=float)
        filled = count > 0
        acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
        conf = np.array([c if c is not None else 0.0 for c in bins["confidence"]])
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        ax.bar(lefts[filled], acc[filled], width=width[filled], align="edge", color="#4C72B0",
               edgecolor="white", label="accuracy")
        gap_bottom = np.minimum(acc, conf)[filled]
        ax.bar(lefts[filled], np.abs(conf - acc)[filled], bottom=gap_bottom, width=width[filled], align="edge",
               facecolor="none", edgecolor="#C44E52", linewidth=1.0, hatch="///", label="gap to mean confidence")
        ax.plot(conf[filled], acc[filled], "o", color="black", markersize=3.5, clip_on=False,
                label="(mean confidence, accuracy)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
        label = "Before temperature scaling (T = 1)" if state == "before" else (
            f"After temperature scaling (T = {_fmt(temperature)})" if temperature is not None
            else "After temperature scaling")
        ax.set_title(f"{label}\nECE {_fmt(bins.get('ece'))}" + (f" on {split}" if split else ""), fontsize=10.5)
        ax.legend(loc="upper left", fontsize=8)
        ax.tick_params(labelbottom=False)
        ax_count.bar(lefts, count, width=width, align="edge", color="#55A868", edgecolor="white")
        for left, w, c in zip(lefts, width, count, strict=True):
            if c > 0:
                ax_count.text(left + w / 2, c, f"{int(c)}", ha="center", va="bottom", fontsize=7)
        ax_count.set_ylim(0, max(count.max(), 1) * 1.3)
        ax_count.set_xlabel("top-1 confidence")
        ax_count.set_ylabel("images")
        ax_count.set_xlim(0, 1)
    return _save(fig, path)


# --- Markdown ------------------------------------------------------------------------------------------------

def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n```"


def _intended_use() -> str:
    return "\n".join([
        "## Intended use and limitations",
        "",
        "- **Research and review support only.** This model is not a diagnostic device, is not cleared or "
        "approved for clinical use, and must not be used to diagnose, triage or treat patients. Its outputs "
        "are suggestions for qualified reviewers, who make every decision.",
        "- **Dataset-shortcut risk.** The training images of different classes come largely from different "
        "sources (sites, scanners, public datasets). A model can learn to recognise the source (text "
        "markers, borders, exposure, processing) instead of the disease, and still score well on held-out "
        "images from the same sources. Check the source-by-class counts below, check that attributions "
        "(saliency maps) fall on the lungs, and check performance per source before trusting the numbers.",
        "- **Held-out, not external.** Metrics come from held-out splits of the same data; expect lower and "
        "different performance on other hospitals, scanners, populations and image types.",
        "- **Calibration.** The temperature is fitted on the validation split; probabilities may be "
        "mis-calibrated on data unlike it.",
        "- **One label per image.** Probabilities are a softmax over the classes listed; the model cannot say "
        "\"none of these\" or report several findings at once.",
    ])


def _data_section(data_summary: Mapping[str, Any], classes: Sequence[str]) -> str:
    parts = ["## Data", ""]
    splits, other = _data_splits(data_summary)
    if splits:
        scalar_keys = _ordered_union([{k: None for k, v in s.items() if not isinstance(v, Mapping)}
                                      for s in splits.values()])
        if scalar_keys:
            parts += [_table(["", *splits], [[key, *[s.get(key) for s in splits.values()]] for key in scalar_keys]),
                      ""]
        for key, label, heading in (("per_class", "class", "Images per class"),
                                    ("per_source", "source", "Images per source")):
            table = _count_table(splits, key, label, classes if key == "per_class" else ())
            if table:
                parts += [f"### {heading}", "", table, ""]
        cross: dict[str, dict[str, int]] = {}
        for s in splits.values():
            for source, counts in (s.get("per_source_class") or {}).items():
                for cls, count in (counts or {}).items():
                    cross.setdefault(str(source), {}).setdefault(str(cls), 0)
                    cross[str(source)][str(cls)] += int(count or 0)
        if cross:
            cls_names = _ordered_union(list(cross.values()), [c for c in classes
                                                              if any(c in v for v in cross.values())])
            rows = [[source, *[counts.get(c, 0) for c in cls_names]] for source, counts in cross.items()]
            parts += ["### Source by class (all splits)", "",
                      "Where a class comes mostly from one source, the model can learn the source instead of "
                      "the finding.", "", _table(["source", *cls_names], rows), ""]
    plain = {k: v for k, v in other.items() if not isinstance(v, Mapping | list | tuple)}
    nested = {k: v for k, v in other.items() if k not in plain}
    if plain:
        parts += [f"- {k}: {_fmt(v)}" for k, v in plain.items()] + [""]
    if nested:
        parts += [_json_block(nested), ""]
    if len(parts) == 2:
        parts += ["No data summary given.", ""]
    return "\n".join(parts).rstrip()


def _performance_section(metrics: Mapping[str, Any]) -> str:
    splits = _split_metrics(metrics)
    parts = ["## Performance", ""]
    if not splits:
        return "\n".join(parts + ["No evaluation metrics given."])
    extra = [k for k in _ordered_union([{k: None for k in m} for m in splits.values()])
             if k not in _SPLIT_BASE_KEYS and all(isinstance(m.get(k), int | float | type(None)) for m in
                                                  splits.values())]
    rows = [[name, m.get("n"), m.get("accuracy"), m.get("macro_f1"), m.get("macro_auroc"),
             *[m.get(k) for k in extra]] for name, m in splits.items()]
    parts += ["Predicted class = highest probability. Macro averages weight every class equally; "
              "precision of a class never predicted counts as 0.", "",
              _table(["split", "n", "accuracy", "macro-F1", "macro-AUROC", *extra], rows), ""]
    for name, m in splits.items():
        notes = []
        if m.get("auroc_excluded"):
            notes.append(f"AUROC undefined (no positive or no negative images) and left out of macro-AUROC: "
                         f"{_fmt(m['auroc_excluded'])}.")
        if m.get("absent_classes"):
            notes.append(f"Classes with no images in this split (F1 = 0, included in macro-F1): "
                         f"{_fmt(m['absent_classes'])}.")
        classes = list(m["classes"])
        per_class = m["per_class"]
        rows = [[c, per_class[c].get("precision"), per_class[c].get("recall"), per_class[c].get("f1"),
                 per_class[c].get("auroc"), per_class[c].get("support"), per_class[c].get("predicted")]
                for c in classes]
        cm_rows = [[f"true {c}", *row] for c, row in zip(classes, m["confusion_matrix"], strict=True)]
        parts += [f"### {name}", "", _table(["class", "precision", "recall", "F1", "AUROC", "support",
                                             "predicted"], rows), ""]
        parts += [*notes, ""] if notes else []
        parts += ["Confusion matrix (rows = true class, columns = predicted class):", "",
                  _table(["", *[f"pred {c}" for c in classes]], cm_rows), ""]
    return "\n".join(parts).rstrip()


def _intervals_section(metrics: Mapping[str, Any]) -> str:
    """Bootstrap 95 % intervals of the headline figures, per split (``split["intervals"]``)."""
    splits = {name: m["intervals"] for name, m in _split_metrics(metrics).items()
              if isinstance(m.get("intervals"), Mapping)}
    if not splits:
        return ""
    parts = ["### 95 % confidence intervals", ""]
    for name, intervals in splits.items():
        method = intervals.get("_method") or {}
        rows = [[key.replace("auroc_", "AUROC ").replace("_vs_", " vs "), v.get("estimate"),
                 None if v.get("low") is None else f"{_fmt(v['low'])} - {_fmt(v['high'])}", v.get("resamples")]
                for key, v in intervals.items() if isinstance(v, Mapping) and not key.startswith("_")]
        parts += [f"{name}: {method.get('interval', 'percentile')} bootstrap, {method.get('resamples')} resamples "
                  f"(seed {method.get('seed')}), stratified by {method.get('stratified_by', 'class')}. The sets are "
                  "small: read the interval, not the point." + _sentence(too_few_patients_text(method)), "",
                  _table(["figure", "estimate", "95 % interval", "resamples"], rows), ""]
    return "\n".join(parts).rstrip()


def _sentence(text: str) -> str:
    return f" {text[0].upper()}{text[1:]}." if text else ""


def _recipe_section(config: Mapping[str, Any]) -> str:
    """How a retrained version was made (``config["recipe"]``), when it was."""
    recipe = config.get("recipe") if isinstance(config, Mapping) else None
    if not isinstance(recipe, Mapping) or not recipe:
        return ""
    rows = [[key, value if not isinstance(value, list | Mapping) else json.dumps(value)]
            for key, value in recipe.items()]
    return "\n".join(["## Retraining recipe", "",
                      "The retraining recipe this version was trained with (`cxr-train train --include-reviews`).",
                      "", _table(["setting", "value"], rows, numeric_from=99)])


def _recalibration_section(metrics: Mapping[str, Any]) -> str:
    """What ``cxr-train recalibrate`` fitted (``metrics["recalibration"]``), when it made this version."""
    found = metrics.get("recalibration")
    if not isinstance(found, Mapping):
        return ""
    parent = found.get("parent") or {}
    offsets, cases = found.get("offsets") or {}, found.get("cases_per_class") or {}
    left_out = found.get("classes_not_fitted") or {}
    rows = [[c, b, cases.get(c, f"{left_out.get(c, 0)} (fewer than {found.get('min_cases')}: not fitted)")]
            for c, b in offsets.items()]
    return "\n".join([
        "## Recalibration", "",
        f"The weights are those of version {parent.get('model_version_id') or '(unregistered)'} "
        f"({parent.get('name') or '-'}, sha256 {str(parent.get('sha256'))[:12]}), unchanged. Fitted on the site's "
        f"reviewed cases ({found.get('loss')}): a temperature T = {_fmt(found.get('temperature'))} (the parent's: "
        f"{_fmt(parent.get('temperature'))}) and one offset per class, so probabilities are "
        "softmax(logits / T + offset). Every pairwise ranking (e.g. covid vs pneumonia AUROC) is the parent's "
        "exactly; the decision and the confidence change. The figures on the fitting cases below are in-sample.", "",
        _table(["class", "offset", "reviewed cases fitted"], rows)])


def _per_source_section(metrics: Mapping[str, Any]) -> str:
    """Accuracy per data source, when the caller measured it (``metrics["per_source"][split]``)."""
    per_source = metrics.get("per_source")
    if not isinstance(per_source, Mapping) or not per_source:
        return ""
    rows = [[split, source, g.get("n"), g.get("accuracy"), ", ".join(g.get("classes", []))]
            for split, groups in per_source.items() for source, g in groups.items()]
    return "\n".join(["### Accuracy per source", "",
                      "A source that holds a single class shows only whether the model recognises the source.",
                      "", _table(["split", "source", "n", "accuracy", "true classes present"], rows)])


def _attribution_section(metrics: Mapping[str, Any]) -> str:
    """Where the model looks: the Grad-CAM share outside the central chest region, per class and per source."""
    found = metrics.get("attribution")
    if not isinstance(found, Mapping) or not isinstance(found.get("per_class"), Mapping):
        return ""
    headers = ["n", "median", "quartiles", f"share >= {_fmt(found.get('threshold'), 2)}"]

    def rows(groups: Mapping[str, Any]) -> list[list[Any]]:
        return [[name, g.get("n"), g.get("median"), f"{_fmt(g.get('q1'))}-{_fmt(g.get('q3'))}" if g.get("n") else None,
                 g.get("above_threshold")] for name, g in groups.items() if isinstance(g, Mapping)]

    parts = ["### Where the model looks", "",
             f"Share of positive Grad-CAM attribution (for the predicted class, {found.get('split')} images) that "
             "falls outside the central chest region (a generous box without the border band, the corners and the "
             "text strips; see `scoring.attribution.region`). A high share means the model looked at film borders, "
             "labels or anatomy off the lungs: a shortcut warning, not a finding.", "",
             _table(["true class", *headers], rows(found["per_class"]))]
    if isinstance(found.get("per_source_class"), Mapping) and found["per_source_class"]:
        parts += ["", _table(["source (class)", *headers], rows(found["per_source_class"]))]
    return "\n".join(parts)


def _calibration_section(metrics: Mapping[str, Any], reliability: Mapping[str, Any] | None,
                         picture: str | None) -> str:
    parts = ["## Calibration", "",
             "Temperature scaling divides the logits by one number T before the softmax (T > 1 softens "
             "over-confident probabilities). It never changes the predicted class. ECE (expected calibration "
             "error) is the image-weighted mean gap between top-1 confidence and accuracy over equal-width "
             "confidence bins on [0, 1] (the last bin includes 1.0).", ""]
    calibration = metrics.get("calibration")
    if isinstance(calibration, Mapping) and calibration:
        rows = [[_CALIBRATION_LABELS.get(str(k), str(k)), v] for k, v in calibration.items()
                if not isinstance(v, Mapping | list)]
        parts += [_table(["", "value"], rows), ""]
    else:
        parts += ["No calibration results given.", ""]
    if picture:
        parts += [f"![Reliability diagram]({picture})", ""]
    if reliability:
        for state in ("before", "after"):
            bins = reliability.get(state)
            if not isinstance(bins, Mapping):
                continue
            edges = bins["edges"]
            rows = [[f"{edges[i]:.3f}-{edges[i + 1]:.3f}", bins["count"][i], bins["confidence"][i],
                     bins["accuracy"][i]] for i in range(len(bins["count"])) if bins["count"][i]]
            parts += [f"Reliability {state} temperature scaling (non-empty bins; ECE {_fmt(bins.get('ece'))}):",
                      "", _table(["confidence bin", "images", "mean confidence", "accuracy"], rows), ""]
    return "\n".join(parts).rstrip()


def _history_section(history: Sequence[Mapping[str, Any]], picture: str | None) -> str:
    parts = ["## Training history", ""]
    if picture:
        parts += [f"![Training curves]({picture})", ""]
    if not history:
        return "\n".join(parts + ["No training history given."])
    keys = _ordered_union(list(history), ["epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr"])
    keys = [k for k in keys if any(k in row for row in history)
            and all(isinstance(row.get(k), int | float | np.number | type(None)) for row in history)]
    rows = [[_fmt(row.get(k), 3 if k == "lr" else 4) for k in keys] for row in history]
    return "\n".join(parts + [_table(keys, rows)])


def write_model_card(out_dir: str | os.PathLike, *, name: str, config: dict, data_summary: dict, metrics: dict,
                     history: list[dict], reliability: dict | None = None,
                     synthetic: bool = False) -> dict[str, Path]:
    """Write ``model_card.md``, ``model_card.json`` and the PNG pictures into ``out_dir`` (created if needed).

    See the module docstring for the structure of each argument. Returns the written paths under the keys
    ``markdown``, ``json``, ``training_curves``, ``confusion_matrix`` (when ``metrics`` holds a split with a
    confusion matrix) and ``reliability_diagram`` (when ``reliability`` is given). Each file is replaced
    atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    config_j = jsonable(config or {})
    data_j = jsonable(data_summary or {})
    metrics_j = jsonable(metrics or {})
    history_j = jsonable(list(history or []))
    reliability_j = jsonable(reliability) if reliability else None

    paths: dict[str, Path] = {}
    paths["training_curves"] = draw_training_curves(history_j, out / TRAINING_CURVES_FILE, title=name)
    splits = _split_metrics(metrics_j)
    if splits:
        paths["confusion_matrix"] = draw_confusion_matrices(splits, out / CONFUSION_MATRIX_FILE)
    if reliability_j and any(isinstance(reliability_j.get(s), Mapping) for s in ("before", "after")):
        paths["reliability_diagram"] = draw_reliability(reliability_j, out / RELIABILITY_FILE)
    pictures = {key: path.name for key, path in paths.items()}

    card = {"format": CARD_FORMAT, "version": CARD_VERSION, "name": name, "created_utc": created,
            "synthetic": bool(synthetic), "warning": SYNTHETIC_WARNING if synthetic else None,
            "intended_use": "Research and review support only; not a diagnostic device.",
            "config": config_j, "data_summary": data_j, "metrics": metrics_j, "history": history_j,
            "reliability": reliability_j, "pictures": pictures}
    paths["json"] = out / JSON_FILE
    _atomic_write(paths["json"], (json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
                  .encode("utf-8"))

    classes: list[str] = next((list(m["classes"]) for m in splits.values()), [])
    calibration = metrics_j.get("calibration") if isinstance(metrics_j.get("calibration"), Mapping) else {}
    header = [f"# Model card: {name}", ""]
    if synthetic:
        header += [f"> **WARNING: {SYNTHETIC_WARNING}.**", ""]
    facts = [("Created (UTC)", created), ("Classes", _fmt(classes) if classes else None),
             ("Architecture", config_j.get("arch") if isinstance(config_j, Mapping) else None),
             ("Temperature", _fmt(calibration.get("temperature")) if "temperature" in calibration else None),
             ("Synthetic data", "yes" if synthetic else "no")]
    header += [f"- {label}: {value}" for label, value in facts if value is not None]
    sections = [
        "\n".join(header),
        _intended_use(),
        _data_section(data_j, classes),
        _performance_section(metrics_j) + (f"\n\n![Confusion matrices]({pictures['confusion_matrix']})"
                                           if "confusion_matrix" in pictures else ""),
        *([section] if (section := _intervals_section(metrics_j)) else []),
        *([section] if (section := _per_source_section(metrics_j)) else []),
        *([section] if (section := _recipe_section(config_j)) else []),
        *([section] if (section := _recalibration_section(metrics_j)) else []),
        *([section] if (section := _attribution_section(metrics_j)) else []),
        _calibration_section(metrics_j, reliability_j, pictures.get("reliability_diagram")),
        _history_section(history_j, pictures.get("training_curves")),
        "## Configuration\n\n" + _json_block(config_j),
    ]
    paths["markdown"] = out / MARKDOWN_FILE
    _atomic_write(paths["markdown"], ("\n\n".join(sections) + "\n").encode("utf-8"))
    return paths
