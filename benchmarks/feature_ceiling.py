"""How far can retraining on reviews move a version whose features stay (mostly) its own?

Fits a logistic regression on a checkpoint's pooled features (global average and max of ``layer3`` and of
``layer4``) to tell covid from pneumonia on cxr-adult, out of fold: patient-grouped, class-stratified K folds,
each film scored by a fit that never saw its patient. The out-of-fold AUROC is a rough ceiling for what a new
head, or a retrained ``layer4``, can get out of these features with this many labelled films; the checkpoint's
own covid-vs-pneumonia AUROC is printed beside it.

``--untrained N`` adds a control: N networks of the same architecture that never trained (torchvision's random
initialisation, seeds 0..N-1), through the same probe. Where the trained features do no better than these, the
training data taught nothing that tells the two classes apart.

    python benchmarks/feature_ceiling.py --model runs/cxr-dev/model.pt --folds 2 4 --untrained 3

Not a product path: the closed loop (``benchmarks/closed_loop.py``) measures what ``cxr-train`` does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_training import data
from model_training.metrics import binary_auroc
from scoring import imaging
from scoring.model import Checkpoint, build_model, load_checkpoint

SHARED = Path(os.environ.get("CXR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BLOCKS = ("layer3", "layer4")


def model_inputs(checkpoint: Checkpoint, items: list[data.LabelledImage]) -> torch.Tensor:
    """The films as the checkpoint's model sees them (read and preprocessed as training and scoring do)."""
    def one(path: str) -> torch.Tensor:
        image = imaging.read_xray(path, min_side=2 * checkpoint.input_size)
        return checkpoint.preprocessing(image.pixels, image.stored_shape)
    return torch.stack([one(item.path) for item in items])


@torch.inference_mode()
def pooled_features(net: torch.nn.Module, inputs: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per block, (images, 2 x channels) average- and max-pooled activations; and the logits."""
    found: dict[str, list[np.ndarray]] = {block: [] for block in BLOCKS}
    hooks = [getattr(net, block).register_forward_hook(
        lambda _m, _i, out, block=block: found[block].append(torch.cat([out.mean((2, 3)), out.amax((2, 3))],
                                                                       1).numpy()))
        for block in BLOCKS]
    net.eval()
    logits = [net(inputs[start:start + 16]).numpy() for start in range(0, len(inputs), 16)]
    for hook in hooks:
        hook.remove()
    return {block: np.concatenate(parts) for block, parts in found.items()}, np.concatenate(logits)


def untrained_twin(checkpoint: Checkpoint, seed: int) -> torch.nn.Module:
    """The checkpoint's architecture with torchvision's random initialisation, seeded."""
    torch.manual_seed(seed)
    return build_model(checkpoint.arch, len(checkpoint.classes))


def out_of_fold_auroc(features: np.ndarray, positive: np.ndarray, patients: np.ndarray, folds: int,
                      seed: int, c: float) -> float:
    scores = np.zeros(len(positive))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for fit_on, judged in splitter.split(features, positive, patients):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000))
        model.fit(features[fit_on], positive[fit_on])
        scores[judged] = model.decision_function(features[judged])
    return binary_auroc(positive, scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, metavar="CKPT")
    parser.add_argument("--adult", type=Path, default=SHARED / "cxr-adult")
    parser.add_argument("--folds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength (default: 1)")
    parser.add_argument("--untrained", type=int, default=0, metavar="N",
                        help="also probe N untrained networks of the same architecture (a control)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    items = [i for i in data.load_labelled(args.adult) if i.label in ("covid", "pneumonia")]
    checkpoint = load_checkpoint(args.model)
    inputs = model_inputs(checkpoint, items)
    features, logits = pooled_features(checkpoint.build(), inputs)
    classes = checkpoint.classes
    positive = np.array([i.label == "pneumonia" for i in items])
    patients = np.array([i.group for i in items])
    own = binary_auroc(positive, logits[:, classes.index("pneumonia")] - logits[:, classes.index("covid")])
    print(f"{len(items)} films ({positive.sum()} pneumonia), {len(set(patients))} patients; the checkpoint's own "
          f"covid-vs-pneumonia AUROC {own:.3f}")
    report = [("the checkpoint", features)] + [
        (f"untrained, seed {seed}", pooled_features(untrained_twin(checkpoint, seed), inputs)[0])
        for seed in range(args.untrained)]
    for name, found in report:
        for folds in args.folds:
            for block in BLOCKS:
                aurocs = [out_of_fold_auroc(found[block], positive, patients, folds, seed, args.c)
                          for seed in args.seeds]
                print(f"{name}: {folds} folds, {block} features: out-of-fold AUROC {np.mean(aurocs):.3f} "
                      f"(split seeds {', '.join(f'{a:.3f}' for a in aurocs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
