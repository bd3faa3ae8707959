"""The retraining recipe: what --include-reviews does by default, each part on its own, and a run that uses it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sqlalchemy import select

from db import model_versions
from db.config import pseudonymise
from db.engine import write_session
from db.models import ModelVersion
from model_training import data, train
from model_training.predictions import make_loader
from model_training.train import PLAIN_RECIPE, RETRAIN_RECIPE, Recipe, TrainError
from scoring.model import Preprocessing, build_model, load_checkpoint
from tests.model_training.conftest import tiny_config
from tests.model_training.test_train import reviewed  # noqa: F401  (a fixture)


def test_the_recipe_follows_include_reviews_and_each_option_overrides_it():
    assert train.resolve_recipe(tiny_config("d", "o", None)) == PLAIN_RECIPE
    assert train.resolve_recipe(tiny_config("d", "o", None, include_reviews=True)) == RETRAIN_RECIPE
    chosen = train.resolve_recipe(tiny_config("d", "o", None, include_reviews=True, freeze_blocks=0,
                                              from_active=False))
    assert (chosen.freeze_blocks, chosen.from_active, chosen.review_share) == (0, False, RETRAIN_RECIPE.review_share)
    with pytest.raises(TrainError, match="review_share must be in \\[0, 1\\), got 1.5"):
        Recipe(from_active=False, review_share=1.5, freeze_blocks=0, border_mask=0.0)
    with pytest.raises(TrainError, match="freeze_blocks must be 0..4, got 7"):
        Recipe(from_active=False, review_share=0.0, freeze_blocks=7, border_mask=0.0)


def _item(i: int, label: str, review: bool) -> data.LabelledImage:
    return data.LabelledImage(f"/x/{i}.png", label, sha256=str(i), review_id=i if review else None)


def test_reviewed_cases_get_their_share_balanced_by_class():
    items = ([_item(i, "covid", False) for i in range(90)] + [_item(100 + i, "pneumonia", False) for i in range(10)]
             + [_item(200 + i, "covid", True) for i in range(15)]
             + [_item(300 + i, "pneumonia", True) for i in range(5)])
    weights = train.review_sample_weights(items, 0.5).numpy()
    is_review = np.array([item.review_id is not None for item in items])
    pneumonia = np.array([item.label == "pneumonia" for item in items])
    assert weights.sum() == pytest.approx(1.0) and weights[is_review].sum() == pytest.approx(0.5)
    assert weights[is_review & pneumonia].sum() == pytest.approx(0.25)  # 5 reviewed pneumonias: half the reviews
    assert weights[~is_review & pneumonia].sum() == pytest.approx(0.25)
    assert train.review_sample_weights(items, 0.0) is None
    assert train.review_sample_weights(items[:100], 0.5) is None  # no reviews: nothing to resample


def test_border_mask_fills_bands_at_the_edges_only():
    augmentation = data.Augmentation(border=0.2)
    tensor = torch.ones(1, 50, 50)
    rng = np.random.default_rng(0)
    masked = [augmentation.mask_border(tensor, rng, -2.0) for _ in range(20)]
    assert all(torch.equal(m[:, 10:40, 10:40], tensor[:, 10:40, 10:40]) for m in masked)  # the centre is kept
    assert any((m == -2.0).any() for m in masked) and set(torch.cat(masked).unique().tolist()) <= {1.0, -2.0}
    rng = np.random.default_rng(0)
    assert data.Augmentation().mask_border(tensor, rng, -2.0) is tensor
    assert rng.random() == np.random.default_rng(0).random()  # off: draws nothing, so older runs reproduce


def test_frozen_blocks_keep_their_weights():
    model = build_model("resnet18", 3)
    frozen = train.frozen_modules(model, 2)
    assert {id(m) for m in frozen} == {id(model.conv1), id(model.bn1), id(model.layer1), id(model.layer2)}
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())


@pytest.mark.slow
def test_include_reviews_starts_from_the_active_version_and_records_the_recipe(tmp_path, reviewed, small_set,  # noqa: F811
                                                                               sqlite_url, tiny_checkpoint):
    engine, _ = reviewed
    with write_session(engine) as session:
        version = session.scalar(select(ModelVersion))
        model_versions.promote(session, str(version.id))
    result = train.train(tiny_config(small_set, tmp_path / "v2", sqlite_url, epochs=1, include_reviews=True))
    before, after = load_checkpoint(tiny_checkpoint).state_dict, load_checkpoint(result.checkpoint).state_dict
    assert torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])  # frozen
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # frozen statistics too
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])  # trained
    card = json.loads((tmp_path / "v2" / "model_card.json").read_text())
    recipe = card["config"]["recipe"]
    assert recipe["from_active"] and str(tiny_checkpoint) in recipe["initial_weights"]
    assert "## Retraining recipe" in (tmp_path / "v2" / "model_card.md").read_text()
    assert "### 95 % confidence intervals" in (tmp_path / "v2" / "model_card.md").read_text()
    assert result.metrics["validation"]["intervals"]["accuracy"]["resamples"] == 1000
    config = tiny_config(small_set, tmp_path / "v2", sqlite_url, include_reviews=True)
    reviewed_in_validation = sum(item.review_id is not None for item in train.validation_items(config))
    if reviewed_in_validation:
        assert result.metrics["validation_reviewed_cases"]["n"] == reviewed_in_validation
    else:
        assert "validation_reviewed_cases" not in result.metrics


def _split_of(items: list[data.LabelledImage]) -> dict[str, str]:
    train_items, val_items = data.patient_split(items, 0.25, 7)
    assert {i.group for i in train_items}.isdisjoint({i.group for i in val_items})
    return {**{i.sha256: "train" for i in train_items}, **{i.sha256: "validation" for i in val_items}}


def test_retraining_never_moves_a_film_between_the_splits():
    dataset = [data.LabelledImage(f"/d/{i}.png", ("covid", "normal")[i % 2], f"p{i // 2}", sha256=f"d{i}")
               for i in range(40)]

    def reviews(first: int, last: int) -> list[data.LabelledImage]:
        return [data.LabelledImage(f"/r/{i}.png", ("covid", "pneumonia")[i % 2], None, "review", f"r{i}", i + 1)
                for i in range(first, last)]

    v1 = _split_of(dataset)
    v2_items = data.merge_reviews(dataset, reviews(0, 20))
    v2 = _split_of(v2_items)
    # before v3, a dataset film of each split is reviewed (relabelled), and twenty more reviews arrive
    in_train, in_val = (next(i for i in dataset if v1[i.sha256] == split) for split in ("train", "validation"))
    relabelled = [replace(i, label="pneumonia", source="review", review_id=100 + n)
                  for n, i in enumerate((in_train, in_val))]
    v3 = _split_of(data.merge_reviews(v2_items, reviews(20, 40) + relabelled))
    assert {sha: v2[sha] for sha in v1} == v1 and {sha: v3[sha] for sha in v2} == v2
    assert (v3[in_train.sha256], v3[in_val.sha256]) == ("train", "validation")
    assert {v3[f"r{i}"] for i in range(40)} == {"train", "validation"}  # reviews go to both splits


def test_a_patient_reviewed_later_joins_the_patients_split():
    dataset = [data.LabelledImage(f"/d/{i}.png", "covid", f"p{i}", sha256=f"d{i}") for i in range(20)]
    split = _split_of(dataset)
    for i in range(20):  # a reviewed case carries the pseudonym of its patient's id, as the scorer stored it
        review = data.LabelledImage(f"/r/{i}.png", "pneumonia", pseudonymise(f"p{i}"), "review", f"r{i}", i + 1)
        merged = data.merge_reviews(dataset, [review])
        assert next(item.patient_id for item in merged if item.sha256 == f"r{i}") == f"p{i}"
        assert _split_of(merged)[f"r{i}"] == split[f"d{i}"]
    unknown = data.LabelledImage("/r/x.png", "pneumonia", pseudonymise("another"), "review", "rx", 99)
    assert data.merge_reviews(dataset, [unknown])[-1].patient_id == pseudonymise("another")


@pytest.mark.parametrize("seed", range(5))
def test_a_class_whose_patients_all_draw_validation_is_still_trained_on(seed):
    items = [data.LabelledImage(f"/d/{i}.png", "covid", f"p{i}", sha256=f"d{i}") for i in range(30)]
    items.append(data.LabelledImage("/d/n.png", "normal", "pn", sha256="n"))
    train_items, val_items = data.patient_split(items, 0.99, seed)
    assert {i.label for i in train_items} == {"covid", "normal"}


def test_each_split_keeps_the_order_of_the_items():
    # --resume rebuilds the training list from the items and the saved validation hashes, in the items' order: the
    # split must give that order too, or the resumed run's shuffle draws other images
    items = [data.LabelledImage(f"/d/{i}.png", ("covid", "normal")[i % 2], f"p{i % 7}", sha256=f"d{i}")
             for i in range(42)]
    train_items, val_items = data.patient_split(items, 0.3, 1)
    assert train_items == [i for i in items if i in train_items] and val_items == [i for i in items if i in val_items]


def test_a_case_drawn_twice_in_an_epoch_is_augmented_anew_and_reproducibly(small_set):
    items = data.load_labelled(small_set)[:3]
    dataset = data.LabelledDataset(items, sorted({i.label for i in items}), Preprocessing(32), data.Augmentation(),
                                   seed=0)
    dataset.set_epoch(1)

    def first_batch() -> torch.Tensor:
        loader = make_loader(dataset, batch_size=3, workers=0, device=torch.device("cpu"), shuffle_seed=1,
                             sample_weights=torch.tensor([1.0, 0.0, 0.0]))  # every draw is the first case
        return next(iter(loader))[0]

    batch = first_batch()
    assert all(not torch.equal(batch[i], batch[j]) for i in range(3) for j in range(i))
    assert torch.equal(batch, first_batch())
