"""Shared pieces of the downstream studies: loading and checking a set, same-size sets per source, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddlight.data.synthetic import SyntheticSounds
from ddlight.downstream import continual, nas
from ddlight.downstream.inputs import StudyData, check_per_class, check_sources, load_study_data, source_set
from ddlight.io import load_synset, save_synset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def study(soft: bool = False) -> StudyData:
    """3 classes: a set of 2 per class (features = 100 + index) and 4 real samples per class (features = index)."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    targets = torch.nn.functional.one_hot(labels, 3).float() * 0.8 + 0.2 / 3 if soft else labels
    train_y = torch.arange(3).repeat_interleave(4)
    features = 100 + torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 2)
    train_x = torch.arange(12.0).view(12, 1, 1, 1).expand(12, 1, 2, 2)
    return StudyData(features, targets, {"ipc": 2}, ["a", "b", "c"], train_x, train_y, train_x[:3], train_y[:3])


@pytest.mark.parametrize("soft", [False, True])
def test_synthetic_source_draws_per_class_from_the_set(soft: bool) -> None:
    data = study(soft)
    x, targets = source_set(data, "synthetic", 1, seed=3)
    labels = targets if targets.dim() == 1 else targets.argmax(-1)
    assert sorted(labels.tolist()) == [0, 1, 2]
    for sample, label in zip(x, labels):  # each drawn sample is one of the set's samples of its class
        index = int(sample.flatten()[0]) - 100
        assert data.labels[index] == label
    assert torch.equal(source_set(data, "synthetic", 1, seed=3)[0], x)  # seeded
    whole, _ = source_set(data, "synthetic", 2)
    assert sorted(whole[:, 0, 0, 0].tolist()) == [100.0 + i for i in range(6)]


def test_real_sources_draw_per_class_from_the_training_split() -> None:
    data = study()
    x, y = source_set(data, "random", 3, seed=0)
    assert torch.bincount(y).tolist() == [3, 3, 3]
    assert all(data.train_y[int(v)] == label for v, label in zip(x[:, 0, 0, 0], y))
    embeddings = data.train_x.flatten(1)
    x, y = source_set(data, "kcenter", 2, embeddings)
    assert torch.bincount(y).tolist() == [2, 2, 2]


def test_a_source_must_hold_enough_samples_per_class() -> None:
    data = study()
    with pytest.raises(ValueError, match=r"the distilled set holds fewer than 3 samples"):
        check_per_class(data, ["synthetic"], 3)
    check_per_class(data, ["random"], 3)  # the real split has 4 per class
    with pytest.raises(ValueError, match=r"the real training split holds fewer than 5 samples of classes \{'a': 4"):
        check_per_class(data, ["herding"], 5)
    with pytest.raises(ValueError, match="must be >= 1"):
        check_per_class(data, ["random"], 0)
    with pytest.raises(ValueError, match="valid: synthetic, random, herding, kcenter"):
        check_sources(["forgetting"])


def test_load_study_data_checks_the_set_against_the_data(synset_dir: Path, tiny_data: SyntheticSounds) -> None:
    data = load_study_data(synset_dir, tiny_data, "val")
    assert data.features.shape == (22, *tiny_data.feature_shape) and data.num_classes == 11
    assert len(data.eval_y) == 22 and len(data.train_y) == 33
    assert data.describe() | {"classes": None} == {"dataset": "synthetic", "method": "test", "ipc": 2, "classes": None}
    with pytest.raises(ValueError, match="eval_split"):
        load_study_data(synset_dir, tiny_data, "train")


def _broken(synset_dir: Path, tmp_path: Path, what: str) -> Path:
    """A copy of the set whose class list or feature shape no longer matches the data."""
    synset = load_synset(synset_dir)
    if what == "classes":
        synset.manifest["classes"] = synset.manifest["classes"][::-1]
    else:
        synset.features = synset.features[..., :-1]
        synset.manifest["feature_shape"] = list(synset.features.shape[1:])
    return save_synset(tmp_path / what, synset)


@pytest.mark.parametrize("study_main", [continual.main, nas.main], ids=["continual", "nas"])
@pytest.mark.parametrize("what", ["missing", "classes", "shape"])
def test_bad_input_fails_before_any_training(
    study_main, what: str, synset_dir: Path, data_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("a network was trained")

    monkeypatch.setattr("ddlight.downstream.continual.fit_network", no_training)
    monkeypatch.setattr("ddlight.downstream.nas.fit_network", no_training)
    monkeypatch.setattr("ddlight.downstream.inputs.embedding_network", no_training)
    folder = tmp_path / "nowhere" if what == "missing" else _broken(synset_dir, tmp_path, what)
    error, message = (FileNotFoundError, "synset.safetensors not found") if what == "missing" else (
        ValueError, f"does not match the real DataModule.*{'classes' if what == 'classes' else 'feature_shape'}")
    with pytest.raises(error, match=message):
        study_main(["--synset", str(folder), *data_args, "--device", "cpu"])
    assert not [*tmp_path.rglob("continual.json"), *tmp_path.rglob("nas.json")]


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("continual_*.yaml")) + sorted(CONFIGS.glob("nas_*.yaml")),
                         ids=lambda p: p.name)
def test_study_configs_parse(config: Path) -> None:
    module = continual if config.name.startswith("continual") else nas
    parsed = module.command_parser().parse_args(["--config", str(config), "--synset", "runs/x/distilled"])
    dataset = config.stem.split("_", 1)[1]
    expected = {"synthetic": "SyntheticSounds", "us8k": "UrbanSound8K"}[dataset]
    assert parsed.data.class_path.endswith(expected)
    assert parsed.synset == "runs/x/distilled"


def test_there_are_configs_for_both_studies_and_datasets() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"continual_synthetic.yaml", "continual_us8k.yaml", "nas_synthetic.yaml", "nas_us8k.yaml"} <= names
