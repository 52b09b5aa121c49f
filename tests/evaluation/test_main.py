"""`python -m ddlight.evaluation` and `ddlight fit --config configs/synset_eval.yaml` on a saved set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import Synset, save_synset
from ddlight.evaluation.__main__ import main as main_evaluation
from ddlight.features import FeatureConfig

CONFIG = Path(__file__).parents[2] / "configs" / "synset_eval.yaml"
TINY = {"train_per_class": 3, "val_per_class": 1, "test_per_class": 2, "duration": 0.25}


def tiny() -> SyntheticSounds:
    return SyntheticSounds(**TINY, features=FeatureConfig(n_fft=1024, hop_length=512))


@pytest.fixture
def synset_dir(tmp_path: Path) -> Path:
    """Two real clips per class of the tiny set, saved as a hard-label distilled set."""
    torch.set_num_threads(1)
    data = tiny()
    data.setup("fit")
    x, y = data.split_features("train")
    idx = torch.cat([(y == c).nonzero().flatten()[:2] for c in range(data.num_classes)])
    manifest = {"method": "test", "ipc": 2, "num_classes": data.num_classes, **data.describe()}
    return save_synset(tmp_path / "run" / "distilled", Synset(x[idx], y[idx], data.features.mean, data.features.std, manifest))


def test_command_writes_report_next_to_the_distilled_folder(synset_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = ["--data", "ddlight.data.synthetic.SyntheticSounds", "--data.features.hop_length=512", "--data.features.n_fft=1024"]
    data += [f"--data.{k}={v}" for k, v in TINY.items()]
    report = main_evaluation(["--synset", str(synset_dir), *data, "--architectures", "convnet", "mlp",
                              "--baselines", "random", "--repeats", "2", "--epochs", "2", "--device", "cpu",
                              "--network_options", "{convnet: {width: 8, depth: 1}}"])
    written = json.loads((synset_dir.parent / "evaluation.json").read_text())
    assert written == report and written["ipc"] == 2 and written["method"] == "test"
    assert [row["architecture"] for row in written["results"]] == ["convnet", "mlp"]
    assert list(written["results"][0]) == ["architecture", "synthetic", "random"]
    assert len(written["results"][0]["synthetic"]["runs"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("evaluation written to")


def test_synset_eval_config_trains_on_the_distilled_set(
    synset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    real = [f"--data.init_args.real.init_args.{k}={v}" for k, v in TINY.items()]
    main(["fit", "--config", str(CONFIG), "--data.init_args.path", str(synset_dir), *real,
          "--data.init_args.real.init_args.features.hop_length=512", "--trainer.fast_dev_run=1",
          "--model.init_args.network_options={width: 8, depth: 1}"])
    assert "test/acc" in capsys.readouterr().out  # trained on the synset, then tested on real data


def test_command_takes_a_data_config_file(synset_dir: Path, tmp_path: Path) -> None:
    """`--data configs/data/<dataset>.yaml` (the documented form) plus overrides of its init_args."""
    config = CONFIG.parent / "data" / "synthetic.yaml"
    overrides = [f"--data.init_args.{k}={v}" for k, v in TINY.items()]
    report = main_evaluation(["--synset", str(synset_dir), "--data", str(config), *overrides, "--baselines",
                              "--repeats", "1", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out"),
                              "--network_options", "{convnet: {width: 8, depth: 1}}"])
    assert report["dataset"] == "synthetic"
    assert list(report["results"][0]) == ["architecture", "synthetic"]
    assert (tmp_path / "out" / "evaluation.md").is_file()
