"""`python -m ddlight.evaluation` and `ddlight fit --config configs/synset_eval.yaml` on a saved set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import Synset, save_synset
from ddlight.evaluation import baseline_indices, suite
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
                              "--baselines", "random", "--repeats", "2", "--recipe.epochs", "2", "--device", "cpu",
                              "--network_options", "{convnet: {width: 8, depth: 1}}"])
    written = json.loads((synset_dir.parent / "evaluation.json").read_text())
    assert written == report and written["ipc"] == 2 and written["method"] == "test"
    assert [row["architecture"] for row in written["results"]] == ["convnet", "mlp"]
    assert list(written["results"][0]) == ["architecture", "synthetic", "random"]
    assert len(written["results"][0]["synthetic"]["runs"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("evaluation written to")


def test_a_decoded_set_is_compared_with_baselines_of_its_storage(
    synset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set of 2 samples per class decoded from 1 stored one (MTT's formation) gets 1-per-class baselines."""
    manifest_path = synset_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) | {"formation": 2, "stored_ipc": 1}
    manifest_path.write_text(json.dumps(manifest))
    sizes = []

    def spy(name: str, train_y: torch.Tensor, ipc: int, *args, **kwargs) -> torch.Tensor:
        sizes.append(ipc)
        return baseline_indices(name, train_y, ipc, *args, **kwargs)

    monkeypatch.setattr(suite, "baseline_indices", spy)
    data = ["--data", "ddlight.data.synthetic.SyntheticSounds", "--data.features.hop_length=512", "--data.features.n_fft=1024"]
    data += [f"--data.{k}={v}" for k, v in TINY.items()]
    report = main_evaluation(["--synset", str(synset_dir), *data, "--baselines", "random", "--repeats", "1",
                              "--recipe.epochs", "1", "--device", "cpu", "--out", str(tmp_path),
                              "--network_options", "{convnet: {width: 8, depth: 1}}"])
    assert sizes == [1]
    assert (report["ipc"], report["samples_per_class"]) == (1, 2)
    assert "the storage of 1 samples per class (the set decodes to 2" in (tmp_path / "evaluation.md").read_text()


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
                              "--repeats", "1", "--recipe.epochs", "1", "--device", "cpu", "--out", str(tmp_path / "out"),
                              "--network_options", "{convnet: {width: 8, depth: 1}}"])
    assert report["dataset"] == "synthetic"
    assert list(report["results"][0]) == ["architecture", "synthetic"]
    assert (tmp_path / "out" / "evaluation.md").is_file()


def test_unknown_baseline_is_refused_while_parsing(synset_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """`--baselines '[]'` (a YAML habit) is a baseline named "[]": refused before anything is loaded or trained."""
    with pytest.raises(SystemExit):
        main_evaluation(["--synset", str(synset_dir), "--data", str(CONFIG.parent / "data" / "synthetic.yaml"),
                         "--baselines", "[]"])
    assert "'[]'" in capsys.readouterr().err


def test_lr_auto_takes_the_learned_step_size_and_full_gives_g(synset_dir: Path, tmp_path: Path) -> None:
    """MTT sets carry syn_lr: `lr auto` (the default) trains every network with it, as the original does."""
    manifest_path = synset_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"syn_lr": 0.0234}))
    data = ["--data", "ddlight.data.synthetic.SyntheticSounds", "--data.features.hop_length=512", "--data.features.n_fft=1024"]
    data += [f"--data.{k}={v}" for k, v in TINY.items()]
    common = ["--baselines", "random", "--repeats", "1", "--recipe.epochs", "2", "--device", "cpu",
              "--network_options", "{convnet: {width: 8, depth: 1}}"]
    report = main_evaluation(["--synset", str(synset_dir), *data, *common, "--full", "true", "--full_epochs", "1",
                              "--repeats", "2", "--full_repeats", "1"])
    assert report["recipe"]["lr"] == 0.0234 and report["recipe"]["lr_requested"] == "auto"
    assert report["recipe"]["full_epochs"] == 1 and report["recipe"]["epochs"] == 2
    assert "full = whole training split trained 1 epochs" in (synset_dir.parent / "evaluation.md").read_text()
    row = report["results"][0]
    assert list(row) == ["architecture", "synthetic", "random", "full", "g"]
    assert len(row["full"]["runs"]) == 1 and len(row["synthetic"]["runs"]) == 2
    overridden = main_evaluation(
        ["--synset", str(synset_dir), *data, *common, "--recipe.lr", "0.05", "--out", str(tmp_path)]
    )
    assert overridden["recipe"]["lr"] == 0.05 and "g" not in overridden["results"][0]
    assert "lr 0.05" in (tmp_path / "evaluation.md").read_text()


def test_resolve_lr_and_gap_closure() -> None:
    from ddlight.evaluation import DEFAULT_LR, gap_closure, resolve_lr

    assert resolve_lr("auto", {"syn_lr": 0.02}) == 0.02
    assert resolve_lr("auto", {}) == DEFAULT_LR  # a set without a learned step size
    assert resolve_lr(0.1, {"syn_lr": 0.02}) == 0.1
    with pytest.raises(ValueError, match="syn_lr=-1"):
        resolve_lr("auto", {"syn_lr": -1})
    with pytest.raises(ValueError, match="'fast'"):
        resolve_lr("fast", {})
    assert gap_closure(70.0, 60.0, 80.0) == 0.5
    assert gap_closure(55.0, 60.0, 80.0) == -0.25  # worse than random: negative, reported as such
    assert gap_closure(70.0, 60.0, 60.0) is None


def test_classifier_lr_auto_trains_with_the_sets_learned_step_size(synset_dir: Path) -> None:
    import lightning as L

    from ddlight.data.synset import SynsetDataModule
    from ddlight.tasks import Classifier

    manifest_path = synset_dir / "manifest.json"
    manifest_path.write_text(json.dumps(json.loads(manifest_path.read_text()) | {"syn_lr": 0.0234}))
    data = SynsetDataModule(str(synset_dir))
    assert data.learned_lr == 0.0234
    model = Classifier(data.feature_shape, data.num_classes, network_options={"width": 8, "depth": 1}, lr="auto")
    trainer = L.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(model, datamodule=data)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0234
