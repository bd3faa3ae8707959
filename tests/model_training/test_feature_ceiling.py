"""``benchmarks/feature_ceiling.py``: the out-of-fold probe on a checkpoint's features, and its untrained control."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run_ceiling(*args: str) -> list[str]:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "feature_ceiling.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def aurocs(lines: list[str], name: str) -> list[float]:
    return [float(re.search(r"out-of-fold AUROC (\d\.\d+)", line).group(1)) for line in lines
            if line.startswith(f"{name}:")]


@pytest.mark.slow
def test_untrained_control_with_the_checkpoints_seed_gives_the_checkpoints_figures(tiny_checkpoint, cxr_adult):
    # tiny_checkpoint is torchvision's initialisation under seed 0, so the seed-0 twin must match it exactly,
    # and the seed-1 twin (other weights) must not
    lines = run_ceiling("--model", str(tiny_checkpoint), "--adult", str(cxr_adult), "--folds", "2", "--seeds", "0",
                        "--untrained", "2")
    assert re.match(r"232 films \(51 pneumonia\), 13\d patients; the checkpoint's own covid-vs-pneumonia AUROC "
                    r"0\.\d{3}$", lines[0])
    checkpoint = aurocs(lines, "the checkpoint")
    assert len(checkpoint) == 2 and all(0 <= a <= 1 for a in checkpoint)  # layer3, layer4
    assert aurocs(lines, "untrained, seed 0") == checkpoint
    assert aurocs(lines, "untrained, seed 1") != checkpoint
