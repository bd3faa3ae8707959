"""Does the "model looks outside the lungs" signal separate the shortcut cases from the rest?

For a training run, prints the Grad-CAM outside-the-lungs share (the engine's map for the predicted class, the
region of ``scoring.attribution.region``) per class and per source: the run's validation split (as the model card
recorded it at training, or rebuilt from the run's ``config.json`` for runs older than that section) and every
labelled folder given with ``--data``. ``≥ thr`` is the share of
maps at or above the worklist filter's threshold.

    python benchmarks/outside_lungs_check.py --run runs/cxr-dev --data ../shared/data/cxr-adult
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from db.attributions import OUTSIDE_LUNGS_THRESHOLD
from model_training import data
from model_training.config import TrainConfig
from model_training.train import validation_items
from scoring.attribution.engine import prepared_model
from scoring.attribution.report import outside_share_summary


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"\n{title} (Grad-CAM for the predicted class; threshold {summary['threshold']})")
    print(f"  {'group':<44} {'n':>4} {'median':>7} {'q1-q3':>12} {'≥ thr':>7}")
    for heading, groups in (("per class", summary["per_class"]), ("per source (true class)",
                                                                  summary["per_source_class"])):
        print(f"  {heading}")
        for name, group in groups.items():
            if not group["n"]:
                continue
            print(f"    {name:<42} {group['n']:>4} {group['median']:>7.3f} "
                  f"{group['q1']:>5.3f}-{group['q3']:<6.3f} {group['above_threshold']:>7.1%}")


def summarise(model, items: list[data.LabelledImage], split: str) -> dict[str, Any]:
    return outside_share_summary(model, [item.path for item in items], [item.label for item in items],
                                 [item.source for item in items], split=split)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a cxr-train --out folder")
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="a labelled folder or CSV to check too (repeatable)")
    args = parser.parse_args(argv)

    model = prepared_model(args.run / "model.pt")
    card = json.loads((args.run / "model_card.json").read_text())
    recorded = card.get("metrics", {}).get("attribution")
    if recorded:
        print_summary(f"{args.run}: validation split, from the model card", recorded)
    else:
        print_summary(f"{args.run}: validation split, rebuilt from config.json",
                      summarise(model, validation_items(TrainConfig.load(args.run)), "validation"))
    for folder in args.data:
        print_summary(str(folder), summarise(model, data.load_labelled(folder), str(folder)))
    print(f"\nThe worklist filter flags maps with share ≥ {OUTSIDE_LUNGS_THRESHOLD}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
