"""``--pretrained PATH`` with a torchxrayvision-style ResNet-50 state dict (random weights made here; nothing is
downloaded): keys mapped, head replaced, intensity scale converted exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from model_training import pretrained, train
from model_training.train import TrainError
from scoring.model import Preprocessing, build_model


@pytest.fixture(scope="module")
def xrv_net() -> nn.Module:
    """A network shaped like torchxrayvision's resnet50-res512-all: one-channel conv1, 18 outputs."""
    torch.manual_seed(11)
    net = resnet50(num_classes=18)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for module in net.modules():  # non-trivial batch-norm statistics, so a wrong scale would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-50, 50)
            module.running_var.uniform_(0.5, 400)
    return net.eval()


def _save(tmp_path, state: dict, name: str):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("layout", ["weights file", "wrapper state dict"])
def test_torchxrayvision_layout_loads_with_a_new_head(tmp_path, xrv_net, layout):
    state = xrv_net.state_dict()
    if layout == "wrapper state dict":  # xrv.models.ResNet(...).state_dict(): keys under "model.", plus extras
        state = {f"model.{k}": v for k, v in state.items()} | {"op_threshs": torch.rand(18)}
    model = build_model("resnet50", 3)
    note = train.load_pretrained(model, _save(tmp_path, state, "xrv.pt"), "resnet50", Preprocessing(64))
    assert "torchxrayvision" in note and "x 512" in note
    assert torch.equal(model.layer4[2].conv3.weight, xrv_net.layer4[2].conv3.weight)
    assert torch.equal(model.bn1.running_var, xrv_net.bn1.running_var)
    assert torch.allclose(model.conv1.weight, xrv_net.conv1.weight * 512)  # 0.25 (our std) x 2048
    assert model.fc.weight.shape == (3, 2048)


def test_the_converted_network_sees_our_tensors_as_torchxrayvision_saw_its_own(tmp_path, xrv_net):
    model = build_model("resnet50", 3)
    train.load_pretrained(model, _save(tmp_path, xrv_net.state_dict(), "xrv.pt"), "resnet50", Preprocessing(64))
    model.eval()
    pixels = np.random.default_rng(0).random((80, 64)).astype(np.float32)  # reader pixels in [0, 1]
    ours = Preprocessing(64)(pixels)[None]
    theirs = (2 * torch.from_numpy(pixels) - 1) * 1024  # xrv.datasets.normalize(img, maxval=1)
    theirs = nn.functional.pad(theirs[None, None], (8, 8, 0, 0), value=-1024)  # same letterbox, black padding
    features_ours = nn.Sequential(*list(model.children())[:-1])
    features_theirs = nn.Sequential(*list(xrv_net.children())[:-1])
    with torch.inference_mode():
        a, b = features_ours(ours), features_theirs(theirs)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_torchxrayvision_weights_need_a_resnet50(tmp_path, xrv_net):
    path = _save(tmp_path, xrv_net.state_dict(), "xrv.pt")
    with pytest.raises(TrainError, match="add --arch resnet50"):
        train.load_pretrained(build_model("resnet18", 3), path, "resnet18", Preprocessing(64))


def test_refused_where_no_exact_conversion_exists(xrv_net):
    with pytest.raises(pretrained.PretrainedError, match="mean 0.4"):
        pretrained.map_torchxrayvision(xrv_net.state_dict(), Preprocessing(64, mean=0.4))
    stray = {"model.conv1.weight": xrv_net.conv1.weight, "head.weight": torch.zeros(1)}
    with pytest.raises(pretrained.PretrainedError, match="head.weight"):
        pretrained.map_torchxrayvision(stray, Preprocessing(64))


def test_a_plain_torchvision_state_dict_is_not_taken_for_torchxrayvision():
    torch.manual_seed(0)
    rgb = resnet50().state_dict()  # 3-channel conv1, 1000 outputs
    assert not pretrained.is_torchxrayvision(rgb)
    ours = build_model("resnet50", 18).state_dict()  # one channel, 18 outputs, no prefix: taken as xrv
    assert pretrained.is_torchxrayvision(ours)


def test_a_pickled_module_is_refused_with_what_to_save_instead(tmp_path, xrv_net):
    path = tmp_path / "whole.pt"
    torch.save(xrv_net, path)
    with pytest.raises(TrainError, match=r"torch.save\(model.state_dict\(\), path\)"):
        train.load_pretrained(build_model("resnet50", 3), str(path), "resnet50", Preprocessing(64))
