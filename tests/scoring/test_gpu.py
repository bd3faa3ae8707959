"""On a CUDA machine: the scorer's GPU path (bf16/fp16 autocast, channels_last, pinned memory) agrees with
the CPU. Skipped where there is no CUDA device."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sqlalchemy import select

from db.engine import create_database_engine, read_session
from db.models import Prediction
from scoring import cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_scores_agree_with_cpu(tmp_path, cxr_dev, tiny_checkpoint, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for png in sorted(cxr_dev.glob("*/*.png"))[:40]:
        shutil.copy2(png, images)
    probabilities = {}
    for device in ("cpu", "cuda"):
        url = f"sqlite:///{tmp_path / device}.db"
        assert cli.main(["--db", url, "--model", str(tiny_checkpoint), "--device", device, "--json",
                         "--settle-seconds", "0", str(images)]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["scored"] == 40
        with read_session(create_database_engine(url)) as session:
            probabilities[device] = {p.image_id: p.probabilities for p in session.scalars(select(Prediction))}
    for image_id, cpu in probabilities["cpu"].items():
        gpu = probabilities["cuda"][image_id]
        assert max(abs(cpu[c] - gpu[c]) for c in cpu) < 0.05  # bf16 autocast vs float32

