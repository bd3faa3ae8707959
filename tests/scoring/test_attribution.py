"""The attribution engine: maps in the original geometry, determinism, batching, thread safety, the region."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from scoring.attribution import (
    METHOD_INFO,
    METHODS,
    WHAT_A_MAP_SHOWS,
    AttributionError,
    central_chest_region,
    compute_map,
    gradcam_batch,
)
from scoring.attribution.engine import Placement, prepared_model
from scoring.attribution.region import outside_share
from scoring.imaging import read_xray
from scoring.model import preprocess

FILMS = ("covid/actualmed_015460318101003000225002.png", "normal/dilara_train_n_056.png")


@pytest.fixture(scope="module")
def films(cxr_dev) -> list[np.ndarray]:
    paths = [cxr_dev / name for name in FILMS]
    paths = [p for p in paths if p.is_file()] or sorted(cxr_dev.glob("*/*.png"))[:2]
    return [read_xray(path).pixels for path in paths]


@pytest.mark.parametrize("method", METHODS)
def test_a_map_comes_back_in_the_original_geometry_with_its_range_and_caption(tiny_checkpoint, films, method):
    pixels = films[0]
    made = compute_map(tiny_checkpoint, pixels, method, "covid")
    assert made.values.shape == pixels.shape and made.values.dtype == np.float32
    assert np.isfinite(made.values).all()
    assert made.value_min == pytest.approx(float(made.values.min()))
    assert made.value_max == pytest.approx(float(made.values.max()))
    assert math.isnan(made.outside_share) or 0.0 <= made.outside_share <= 1.0
    assert made.method == method and made.target_class == "covid" and made.params["input_size"] == 32
    assert made.caption.startswith(METHOD_INFO[method].label) and "target covid" in made.caption
    assert made.sanity_ok == (METHOD_INFO[method].sanity == "passed")
    if method == "gradcam":
        assert made.value_min >= 0  # Grad-CAM keeps the positive part
    assert WHAT_A_MAP_SHOWS == "A map shows what drove the score, not where the disease is."


def test_undoing_the_geometry_recovers_the_film_from_the_model_input(films):
    pixels = films[0]
    assert pixels.shape[0] != pixels.shape[1]  # padded on one side
    square = preprocess(pixels, 224, mean=0.0, std=1.0)[0].numpy()
    placement = Placement.of(*pixels.shape, 224)
    back = placement.to_original(placement.crop(square))
    assert back.shape == pixels.shape
    assert np.corrcoef(back.ravel(), pixels.ravel())[0, 1] > 0.97
    assert np.abs(back - pixels).mean() < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_the_same_inputs_give_the_same_map(tiny_checkpoint, films, method):
    first = compute_map(tiny_checkpoint, films[1], method, "pneumonia")
    second = compute_map(tiny_checkpoint, films[1].copy(), method, "pneumonia")
    assert np.array_equal(first.values, second.values)
    assert first.outside_share == second.outside_share or (math.isnan(first.outside_share)
                                                           and math.isnan(second.outside_share))


def test_batched_gradcam_gives_each_images_own_map(tiny_checkpoint, films):
    batched = gradcam_batch(tiny_checkpoint, films, ["covid", "normal"], batch_size=2)
    for pixels, made, target in zip(films, batched, ["covid", "normal"], strict=True):
        alone = compute_map(tiny_checkpoint, pixels, "gradcam", target)
        assert made.values.shape == pixels.shape
        np.testing.assert_allclose(made.values, alone.values, rtol=1e-4, atol=1e-6)


def test_parameters_are_stated_configurable_and_checked(tiny_checkpoint, films):
    ig = compute_map(tiny_checkpoint, films[0], "integrated_gradients", "covid", steps=8, internal_batch_size=4)
    assert ig.params == {"steps": 8, "baseline": 0.0, "input_size": 32} and "8 steps, black baseline" in ig.caption
    occlusion = compute_map(tiny_checkpoint, films[0], "occlusion", "covid", window=8, stride=4)
    assert occlusion.params["window"] == 8 and "8 px window, 4 px stride" in occlusion.caption
    default = compute_map(tiny_checkpoint, films[0], "occlusion", "covid")
    assert (default.params["window"], default.params["stride"]) == (5, 2)  # 32 / 7 and 32 / 14
    with pytest.raises(AttributionError, match="no parameter"):
        compute_map(tiny_checkpoint, films[0], "gradcam", "covid", steps=3)
    with pytest.raises(AttributionError, match="not one of the model's classes"):
        compute_map(tiny_checkpoint, films[0], "gradcam", "cat")
    with pytest.raises(AttributionError, match="unknown attribution method"):
        compute_map(tiny_checkpoint, films[0], "lime", "covid")


def test_concurrent_calls_on_one_shared_model_give_the_serial_maps_and_leave_no_hooks(tiny_checkpoint, films):
    jobs = [(films[i % 2], method, target) for i, (method, target) in
            enumerate([(m, t) for m in ("gradcam", "integrated_gradients") for t in ("covid", "normal", "pneumonia")])]
    serial = [compute_map(tiny_checkpoint, *job, steps=8) if job[1] != "gradcam" else compute_map(tiny_checkpoint, *job)
              for job in jobs]
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        start.wait()
        pixels, method, target = jobs[index]
        extra = {"steps": 8} if method != "gradcam" else {}
        results[index] = compute_map(tiny_checkpoint, pixels, method, target, **extra)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for alone, together in zip(serial, results, strict=True):
        assert np.array_equal(alone.values, together.values)
    model = prepared_model(tiny_checkpoint).model
    assert not any(module._forward_hooks or module._backward_hooks or module._forward_pre_hooks
                   for module in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_the_central_chest_region_leaves_out_the_border_band_and_corners():
    region = central_chest_region(400, 500)
    assert region.shape == (400, 500) and region.dtype == bool
    assert region[200, 250] and not region[:40].any() and not region[-40:].any()
    assert not region[:, :50].any() and not region[:, -50:].any()
    assert not region[45, 55] and not region[-46, -56]  # inner corners cut
    assert region[200, 60] and region[50, 250]  # the sides' middles stay (lungs reach out there)
    assert np.array_equal(region, region[::-1, ::-1])
    assert 0.55 < region.mean() < 0.64


def test_the_outside_share_counts_positive_attribution_off_the_central_region():
    values = np.zeros((100, 100), np.float32)
    assert math.isnan(outside_share(values))
    values[50, 50] = 1.0
    assert outside_share(values) == 0.0
    values[2, 2] = 3.0
    values[60, 60] = -5.0  # negative attribution is not counted
    assert outside_share(values) == pytest.approx(0.75)


def test_integrated_gradients_of_a_black_image_are_zero(tiny_checkpoint):
    made = compute_map(tiny_checkpoint, np.zeros((40, 30), np.float32), "integrated_gradients", "covid", steps=4)
    assert np.abs(made.values).max() < 1e-6 and torch.get_num_threads() >= 1
