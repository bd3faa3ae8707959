from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from scoring.model import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFound,
    Preprocessing,
    autocast_dtype,
    build_model,
    calibrated_probabilities,
    checkpoint_sha256,
    grey_conv1_from_rgb,
    load_checkpoint,
    normalised_entropy,
    preprocess,
    save_checkpoint,
)

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_forward_on_a_tiny_one_channel_input(arch):
    model = build_model(arch, 3).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="'vgg16'"):
        build_model("vgg16", 3)


def test_input_gradient_is_finite_and_nonzero():
    model = build_model("resnet18", 3).eval()
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    model(x)[0, 1].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_preprocess_keeps_aspect_and_pads_to_a_square():
    pixels = np.ones((100, 50), np.float32)
    out = preprocess(pixels, 64, mean=0.0, std=1.0)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    # 100x50 -> 64x32 of ones, centred, with 16 columns of padding (0) either side
    assert torch.allclose(out[0, :, 16:48], torch.ones(64, 32))
    assert out[0, :, :16].abs().max() == 0 and out[0, :, 48:].abs().max() == 0


def test_preprocess_normalises():
    out = preprocess(np.full((10, 10), 0.75, np.float32), 10, mean=0.5, std=0.25)
    assert torch.allclose(out, torch.ones(1, 10, 10))


def test_preprocess_rejects_colour_input():
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros((4, 4, 3), np.float32), 8)


def test_preprocessing_hash_changes_with_every_parameter():
    base = Preprocessing(224)
    variants = [Preprocessing(256), Preprocessing(224, mean=0.4), Preprocessing(224, std=0.3),
                Preprocessing(224, pad_value=0.5), Preprocessing(224, version=2)]
    assert len({base.hash, *(v.hash for v in variants)}) == 6
    assert Preprocessing.from_dict(base.to_dict()).hash == base.hash


def test_grey_conv1_answers_grey_input_like_the_rgb_kernel():
    rgb = torch.randn(64, 3, 7, 7)
    grey_image = torch.rand(1, 1, 16, 16)
    expected = torch.nn.functional.conv2d(grey_image.expand(1, 3, 16, 16), rgb)
    assert torch.allclose(torch.nn.functional.conv2d(grey_image, grey_conv1_from_rgb(rgb)), expected, atol=1e-5)


@pytest.fixture
def checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES))
    return Checkpoint("resnet18", CLASSES, Preprocessing(64), model.state_dict(), temperature=1.7,
                      training={"epochs": 2, "data": "unit test"})


def test_checkpoint_round_trip(tmp_path, checkpoint):
    path = save_checkpoint(tmp_path / "m.pt", checkpoint)
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.classes, loaded.input_size, loaded.temperature) == ("resnet18", CLASSES, 64, 1.7)
    assert loaded.preprocessing == checkpoint.preprocessing and loaded.training["epochs"] == 2
    x = torch.randn(1, 1, 64, 64)
    original = build_model("resnet18", 3)
    original.load_state_dict(checkpoint.state_dict)
    with torch.inference_mode():
        assert torch.equal(original.eval()(x), loaded.build()(x))
    assert checkpoint_sha256(path) == checkpoint_sha256(path) and len(checkpoint_sha256(path)) == 64


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_checkpoint_can_never_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "cxr-review-checkpoint", "payload": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_foreign_and_tampered_checkpoints_are_refused(tmp_path, checkpoint):
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a CXR Review checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2, 3]) + b"garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    path = save_checkpoint(tmp_path / "m.pt", checkpoint)
    payload = torch.load(path, weights_only=True)
    payload["preprocessing"]["mean"] = 0.1
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="preprocessing hash"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_calibration_and_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    sharp, soft = calibrated_probabilities(logits, 1.0), calibrated_probabilities(logits, 3.0)
    assert torch.allclose(sharp.sum(-1), torch.ones(2)) and soft[0, 0] < sharp[0, 0]
    entropy = normalised_entropy(sharp)
    assert entropy[1] == pytest.approx(1.0) and 0 < entropy[0] < 1
    with pytest.raises(ValueError, match="temperature"):
        calibrated_probabilities(logits, 0.0)


def test_a_missing_checkpoint_is_a_cannot_run_and_still_a_file_not_found(tmp_path):
    from db.errors import CannotRun

    with pytest.raises(CheckpointNotFound, match="does not exist") as raised:
        load_checkpoint(tmp_path / "nope.pt")
    assert isinstance(raised.value, CannotRun) and isinstance(raised.value, FileNotFoundError)


@pytest.mark.parametrize("device, precision, bf16_supported, expected", [
    ("cpu", "auto", True, None), ("cpu", "bf16", True, torch.bfloat16), ("cpu", "fp32", True, None),
    ("cuda", "auto", True, torch.bfloat16), ("cuda", "auto", False, torch.float16),
    ("cuda", "fp16", True, torch.float16), ("cuda", "fp32", True, None)])
def test_one_autocast_dtype_for_training_and_scoring(monkeypatch, device, precision, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert autocast_dtype(torch.device(device), precision) == expected


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_autocast_dtype_refuses_what_cannot_run(precision):
    with pytest.raises(ValueError):
        autocast_dtype(torch.device("cpu"), precision)


def test_calibrated_probabilities_add_offsets_to_the_scaled_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    offsets = [0.3, -0.5, 0.2]
    expected = torch.softmax(logits / 2.0 + torch.tensor(offsets), dim=-1)
    assert torch.allclose(calibrated_probabilities(logits, 2.0, offsets), expected)
    assert torch.equal(calibrated_probabilities(logits, 2.0, [0.0] * 3), calibrated_probabilities(logits, 2.0))
    assert calibrated_probabilities(logits.double(), 2.0, offsets).dtype == torch.float64
    with pytest.raises(ValueError, match="offsets for 3 classes"):
        calibrated_probabilities(logits, 2.0, [0.1, 0.2])


def test_offsets_are_saved_as_format_2_and_zero_offsets_as_before(tmp_path, checkpoint):
    plain = save_checkpoint(tmp_path / "plain.pt", checkpoint)
    payload = torch.load(plain, weights_only=True)
    assert payload["format_version"] == 1 and "logit_offsets" not in payload  # what version 1 always wrote
    assert load_checkpoint(plain).logit_offsets == [0.0, 0.0, 0.0]

    checkpoint.logit_offsets = [0.25, 0.0, -0.25]
    shifted = save_checkpoint(tmp_path / "shifted.pt", checkpoint)
    assert torch.load(shifted, weights_only=True)["format_version"] == 2
    loaded = load_checkpoint(shifted)
    assert loaded.logit_offsets == [0.25, 0.0, -0.25]
    assert loaded.preprocessing.hash == load_checkpoint(plain).preprocessing.hash
    assert checkpoint_sha256(shifted) != checkpoint_sha256(plain)  # another version
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(loaded.probabilities(logits), torch.softmax(logits / 1.7 + torch.tensor([0.25, 0.0, -0.25]),
                                                                     dim=-1))


def test_offsets_outside_format_2_or_not_one_per_class_are_refused(tmp_path, checkpoint):
    payload = torch.load(save_checkpoint(tmp_path / "m.pt", checkpoint), weights_only=True)
    for version, offsets, message in ((1, [0.1, 0.0, -0.1], "only there"), (2, None, "only there"),
                                      (2, [0.1, -0.1], "do not fit"), (2, [0.0, float("nan"), 0.0], "do not fit")):
        tampered = {**payload, "format_version": version}
        if offsets is not None:
            tampered["logit_offsets"] = offsets
        torch.save(tampered, tmp_path / "tampered.pt")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "tampered.pt")
