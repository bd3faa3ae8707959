"""Would calibration refitted on the reviewed cases make a retrained version's probabilities more honest at the
new site?

``cxr-train`` fits one temperature on the whole validation split, which is mostly dataset images (cxr-dev) plus a
fifth of the reviewed cases. This script takes the v2 versions that ``benchmarks/closed_loop.py --work DIR``
left behind and, for each fold, compares the expected calibration error on that fold's evaluation part (adult
patients no version saw) under three temperatures:

- none (T = 1);
- the version's own, fitted on its whole validation split (what the product does);
- one refitted on the reviewed cases of that validation split only.

The validation split is recomputed exactly as training computed it (same data, seed and fraction), and the
script checks that it gives back the version's own temperature.

    python benchmarks/review_calibration.py --work /tmp/loop --recipe default
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from model_training import data
from model_training.calibration import fit_temperature, softmax
from model_training.config import TrainConfig
from model_training.evaluation import predict_checkpoint
from model_training.metrics import expected_calibration_error
from model_training.train import validation_items


def ece_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return expected_calibration_error(softmax(logits, temperature), labels)


def fold_figures(fold: Path, recipe: str) -> dict:
    run = fold / f"v2-{recipe}"
    validation = validation_items(TrainConfig.load(run))
    reviewed = [item for item in validation if item.review_id is not None]
    on_validation, _ = predict_checkpoint(run / "model.pt", validation, device="cpu")
    evaluation, _ = predict_checkpoint(run / "model.pt", data.load_labelled(fold / "evaluation.csv"), device="cpu")
    own = json.loads((run / "model_card.json").read_text())["metrics"]["calibration"]["temperature"]
    refit = fit_temperature(on_validation.logits, on_validation.labels)
    if not math.isclose(refit, own, rel_tol=1e-4):
        raise SystemExit(f"{run}: the recomputed validation split gives temperature {refit:.4f}, the version's own "
                         f"is {own:.4f}; the split was not reproduced")
    on_reviews = None  # a split may draw none of the reviewed patients into validation: nothing to refit on
    if reviewed:
        on_reviewed, _ = predict_checkpoint(run / "model.pt", reviewed, device="cpu")
        on_reviews = fit_temperature(on_reviewed.logits, on_reviewed.labels)
    temperatures = {"none": 1.0, "own": own, "reviews": on_reviews}
    return {"fold": str(fold), "validation": len(validation), "reviewed_in_validation": len(reviewed),
            "temperature": {"own": own, "reviews": on_reviews},
            "evaluation_ece": {name: None if t is None else ece_at(evaluation.logits, evaluation.labels, t)
                               for name, t in temperatures.items()}}


def cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a closed_loop.py --work folder")
    parser.add_argument("--recipe", default="default", help="which v2 of each fold (default: default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    folds = sorted(path.parent.parent for path in args.work.glob(f"seed*/fold*/v2-{args.recipe}/model.pt"))
    if not folds:
        parser.error(f"no seed*/fold*/v2-{args.recipe}/model.pt under {args.work}")
    figures = [fold_figures(fold, args.recipe) for fold in folds]
    print("| fold | reviewed cases in validation | T own | T reviews | ECE, no temperature | ECE, own | "
          "ECE, reviews |\n|---|---|---|---|---|---|---|")
    for row in figures:
        t, ece = row["temperature"], row["evaluation_ece"]
        print(f"| {Path(row['fold']).parent.name}/{Path(row['fold']).name} | {row['reviewed_in_validation']} | "
              f"{t['own']:.2f} | {cell(t['reviews'], 2)} | {ece['none']:.3f} | {ece['own']:.3f} | "
              f"{cell(ece['reviews'], 3)} |")
    compared = [row for row in figures if row["temperature"]["reviews"] is not None]  # the means stay paired
    means = {name: float(np.mean([row["evaluation_ece"][name] for row in compared])) if compared else None
             for name in ("none", "own", "reviews")}
    print(f"mean ECE over the {len(compared)} of {len(figures)} folds with reviewed cases in validation: "
          f"none {cell(means['none'], 3)}, own {cell(means['own'], 3)}, reviews {cell(means['reviews'], 3)}")
    if args.out:
        args.out.write_text(json.dumps({"folds": figures, "mean_evaluation_ece": means,
                                        "folds_compared": len(compared)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
