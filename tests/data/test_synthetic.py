"""SyntheticSounds: deterministic, varied, disjoint splits, shapes known after __init__."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddlight.data.base import IndependentOrders
from ddlight.data.synthetic import CLASSES, SyntheticSounds, synthesize
from ddlight.features import FeatureConfig


@pytest.fixture
def tiny() -> SyntheticSounds:
    dm = SyntheticSounds(train_per_class=3, val_per_class=2, test_per_class=2, duration=0.5, seed=3)
    dm.setup()
    return dm


def test_shapes_known_after_init() -> None:
    dm = SyntheticSounds(duration=0.5, features=FeatureConfig(hop_length=250))
    assert dm.num_classes == len(CLASSES) >= 10
    assert dm.feature_shape == (3, 20, 8000 // 250 + 1)


def test_split_sizes_and_label_balance(tiny: SyntheticSounds) -> None:
    train = tiny.splits["train"]
    assert train.waves.shape == (3 * tiny.num_classes, 8000)
    assert np.bincount(train.labels).tolist() == [3] * tiny.num_classes
    assert len(tiny.splits["test"]) == 2 * tiny.num_classes


def test_deterministic_per_seed(tiny: SyntheticSounds) -> None:
    again = SyntheticSounds(train_per_class=3, val_per_class=2, test_per_class=2, duration=0.5, seed=3)
    other = SyntheticSounds(train_per_class=3, val_per_class=2, test_per_class=2, duration=0.5, seed=4)
    again.setup()
    other.setup()
    np.testing.assert_array_equal(again.splits["train"].waves, tiny.splits["train"].waves)
    assert not np.allclose(other.splits["train"].waves, tiny.splits["train"].waves)


def test_splits_share_no_clip(tiny: SyntheticSounds) -> None:
    keys = {split: {w.tobytes() for w in data.waves} for split, data in tiny.splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"]


def test_within_class_variation() -> None:
    """Two clips of one class differ in onset and in spectrum (pitch), not just in noise."""
    rng = np.random.default_rng(0)
    a, b = (synthesize(0, rng, 16000, 16000) for _ in range(2))
    onset = [int(np.argmax(np.abs(x) > 0.5 * np.abs(x).max())) for x in (a, b)]
    peak = [int(np.argmax(np.abs(np.fft.rfft(x)))) for x in (a, b)]
    assert onset[0] != onset[1] and peak[0] != peak[1]
    assert np.abs(a).max() < 1.0 and a.dtype == np.float32


def test_features_are_normalised_on_train(tiny: SyntheticSounds) -> None:
    x, y = tiny.split_features("train")
    assert x.shape == (len(y), *tiny.feature_shape)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 0.05


def test_independent_orders_are_side_by_side_permutations() -> None:
    torch.manual_seed(0)
    sampler = IndependentOrders(size=10, batch_size=4, orders=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert [len(b) for b in batches] == [8, 8, 4]  # two chunks of 4, 4, then 2
    first = [i for b in batches for i in b[: len(b) // 2]]
    second = [i for b in batches for i in b[len(b) // 2 :]]
    assert sorted(first) == sorted(second) == list(range(10))  # each order covers the data once
    assert first != second


def test_feature_cache_serves_what_the_front_end_computes(tiny: SyntheticSounds) -> None:
    waves = torch.from_numpy(tiny.splits["train"].waves)
    expected = tiny.features(waves)
    features, labels = next(iter(tiny._loader("train", shuffle=False)))  # cache_features is on by default
    assert features.shape == (tiny.batch_size if len(waves) > tiny.batch_size else len(waves), *tiny.feature_shape)
    torch.testing.assert_close(features, expected[: len(features)], rtol=1e-4, atol=1e-4)
    assert tiny.on_after_batch_transfer((features, labels), 0)[0] is features  # features pass through
    x, y = tiny.split_features("train")
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    assert x.data_ptr() == tiny.split_features("train")[0].data_ptr()  # computed once
    assert torch.equal(y, torch.from_numpy(tiny.splits["train"].labels))


def test_feature_cache_follows_loaded_normalisation(tiny: SyntheticSounds) -> None:
    before = tiny.split_features("val")[0]
    state = tiny.state_dict()
    state["features"] = {k: v * 2 if k == "std" else v for k, v in state["features"].items()}
    tiny.load_state_dict(state)  # a checkpoint's statistics replace the fitted ones
    torch.testing.assert_close(tiny.split_features("val")[0], before / 2, rtol=1e-4, atol=1e-4)
    uncached = SyntheticSounds(train_per_class=3, val_per_class=2, test_per_class=2, duration=0.5, seed=3,
                               cache_features=False)
    uncached.setup()
    waves, _ = next(iter(uncached.val_dataloader()))
    assert waves.dim() == 2  # waveforms: the front end runs on every batch
    torch.testing.assert_close(uncached.split_features("val")[0], before, rtol=1e-4, atol=1e-4)


def test_features_cached_under_inference_mode_can_be_trained_on(tiny: SyntheticSounds) -> None:
    with torch.inference_mode():  # as in trainer.test, which builds the test loader
        tiny.test_dataloader()
    x, _ = tiny.split_features("test")
    assert not x.is_inference()
    weight = torch.ones(x.shape[1], requires_grad=True)
    (x * weight[:, None, None]).sum().backward()  # an inference tensor would refuse to be saved for backward
    assert weight.grad is not None


def test_a_split_too_large_to_cache_is_computed_per_batch(tiny: SyntheticSounds, monkeypatch) -> None:
    per_split = {split: len(tiny.splits[split]) * int(np.prod(tiny.feature_shape)) * 4 for split in ("train", "val")}
    budget = per_split["train"] + per_split["val"] // 2  # the train split fits, then val does not
    monkeypatch.setattr("ddlight.data.base.physical_memory", lambda: 2 * budget)
    tiny.split_features("train")
    with pytest.warns(UserWarning, match=r"caching the val split's features would hold .* per batch"):
        waves, _ = next(iter(tiny.val_dataloader()))
    assert waves.dim() == 2  # waveforms: features on the device, per batch
    x, _ = tiny.split_features("val")
    assert x.shape[1:] == tiny.feature_shape and set(tiny._cache) == {"train"}


def test_the_cache_is_filled_when_an_item_is_read_not_when_the_loader_is_built(tiny: SyntheticSounds) -> None:
    loader = tiny.train_dataloader()  # a distiller's loader only counts its steps
    assert len(loader) > 0 and not tiny._cache
    features, _ = next(iter(loader))
    assert features.shape[1:] == tiny.feature_shape and set(tiny._cache) == {"train"}
