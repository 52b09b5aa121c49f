"""A tiny SyntheticSounds set and distilled sets made of its real clips, for the downstream studies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddlight.data.synthetic import SyntheticSounds
from ddlight.features import FeatureConfig
from ddlight.io import Synset, save_synset

TINY = {"train_per_class": 3, "val_per_class": 2, "test_per_class": 2, "duration": 0.25}
FEATURES = {"n_fft": 1024, "hop_length": 512}


@pytest.fixture
def tiny_data() -> SyntheticSounds:
    """11 classes, 3 / 2 / 2 clips per class, 3 x 20 x 8 features."""
    torch.set_num_threads(1)
    return SyntheticSounds(**TINY, features=FeatureConfig(**FEATURES))


@pytest.fixture
def data_args() -> list[str]:
    """The tiny data on a study's command line."""
    args = ["--data", "ddlight.data.synthetic.SyntheticSounds"]
    args += [f"--data.{k}={v}" for k, v in TINY.items()]
    return args + [f"--data.features.{k}={v}" for k, v in FEATURES.items()]


@pytest.fixture
def synset_dir(tiny_data: SyntheticSounds, tmp_path: Path) -> Path:
    """Two real training clips per class saved as a hard-label distilled set (ipc 2) in run/distilled."""
    tiny_data.setup("fit")
    x, y = tiny_data.split_features("train")
    idx = torch.cat([(y == c).nonzero().flatten()[:2] for c in range(tiny_data.num_classes)])
    manifest = {"method": "test", "ipc": 2, "num_classes": tiny_data.num_classes, **tiny_data.describe()}
    synset = Synset(x[idx], y[idx], tiny_data.features.mean, tiny_data.features.std, manifest)
    return save_synset(tmp_path / "run" / "distilled", synset)
