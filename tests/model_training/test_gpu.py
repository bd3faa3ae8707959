"""Training on a GPU: bf16 autocast, or fp16 with loss scaling where bf16 is missing. The run itself needs a
CUDA device (skipped without one); the loss-scaling rule is checked everywhere."""

from __future__ import annotations

import pytest
import torch

from model_training.config import TrainConfig
from model_training.train import loss_scaler, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_training_runs_on_the_gpu(tmp_path, cxr_dev, sqlite_url):
    result = train(TrainConfig(data=str(cxr_dev), out=str(tmp_path / "run"), img_size=64, epochs=1,
                               batch_size=16, workers=2, device="cuda", db=sqlite_url))
    assert result.checkpoint.is_file()


def test_training_on_a_gpu_without_bf16_scales_its_fp16_loss(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert not loss_scaler(torch.device("cpu")).is_enabled()
    if torch.cuda.is_available():
        assert loss_scaler(torch.device("cuda")).is_enabled()
