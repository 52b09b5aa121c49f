"""SynsetEvaluator on a tiny no-op Distiller: writes a valid evaluation.json/.md and logs metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from ddlight.callbacks import SynsetEvaluator
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers.base import Distiller
from ddlight.features import FeatureConfig
from ddlight.recipe import TrainRecipe


class NoOpDistiller(Distiller):
    """Keeps its real-initialised set (learning rate 0); one update per step so global_step advances."""

    def loss(self):  # noqa: D102
        return self.synthetic.sum()

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.SGD([self.synthetic], lr=0.0)


def test_writes_evaluation_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    data = SyntheticSounds(
        train_per_class=6, val_per_class=1, test_per_class=4, duration=0.25, batch_size=16,
        features=FeatureConfig(hop_length=512),
    )
    model = NoOpDistiller(data.feature_shape, data.num_classes, ipc=2)
    evaluator = SynsetEvaluator(
        repeats=2, recipe=TrainRecipe(epochs=2), network_options={"convnet": {"width": 8, "depth": 1}},
        every_n_steps=1,
    )
    trainer = L.Trainer(
        max_steps=2, logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[evaluator], accelerator="cpu", limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    report = json.loads((Path(trainer.log_dir) / "evaluation.json").read_text())
    assert (report["dataset"], report["method"], report["ipc"]) == ("synthetic", "noopdistiller", 2)
    assert report["features"]["hop_length"] == 512
    (row,) = report["results"]
    assert list(row) == ["architecture", "synthetic", "random", "herding", "kcenter"]
    for name in ("synthetic", "random", "herding", "kcenter"):
        assert len(row[name]["runs"]) == 2 and 0 <= row[name]["mean"] <= 100
    assert "| convnet |" in (Path(trainer.log_dir) / "evaluation.md").read_text()
    captured = capsys.readouterr()
    last_lines = captured.out.strip().splitlines()[-2:]
    assert last_lines[0].startswith("| convnet |") and "evaluation.json" in last_lines[1]
    assert not re.search(r"\d+%\|", captured.err)  # enable_progress_bar false: no evaluation bar either
    metrics = (Path(trainer.log_dir) / "metrics.csv").read_text()
    assert "eval/convnet_acc" in metrics and "eval/convnet_kcenter_acc" in metrics
    assert report["recipe"]["lr"] == 0.01 and report["recipe"]["lr_requested"] == "auto"  # no syn_lr: default


class LearnedLr(NoOpDistiller):
    """Reports a learned step size in its manifest, as MTT does."""

    def export_extras(self):  # noqa: D102
        return {"syn_lr": 0.037}


def test_lr_auto_uses_the_sets_learned_step_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    data = SyntheticSounds(train_per_class=3, val_per_class=1, test_per_class=2, duration=0.25, batch_size=16,
                           features=FeatureConfig(hop_length=512))
    model = LearnedLr(data.feature_shape, data.num_classes, ipc=1)
    evaluator = SynsetEvaluator(repeats=1, recipe=TrainRecipe(epochs=1), baselines=["random"], full=True,
                                network_options={"convnet": {"width": 8, "depth": 1}})
    trainer = L.Trainer(max_steps=1, logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=True,
                        enable_model_summary=False, callbacks=[evaluator], accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert re.search(r"full: +\d+%\|", capsys.readouterr().err)  # progress bars on: the evaluation's too
    report = json.loads((Path(trainer.log_dir) / "evaluation.json").read_text())
    assert report["recipe"]["lr"] == 0.037
    assert {"full", "g"} <= set(report["results"][0])


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="coreset"):
        SynsetEvaluator(baselines=["coreset"])


def test_bad_settings_are_refused_before_training() -> None:
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        SynsetEvaluator(repeats=0)
    with pytest.raises(ValueError, match="full_repeats must be >= 1"):
        SynsetEvaluator(full=True, full_repeats=0)
    with pytest.raises(ValueError, match="eval_split"):
        SynsetEvaluator(eval_split="train")
    with pytest.warns(UserWarning, match="no g"):
        SynsetEvaluator(full=True, baselines=["herding"])


def test_feature_grid_png() -> None:
    from ddlight.callbacks.synset_evaluator import feature_grid_png

    png = feature_grid_png(torch.randn(6, 3, 8, 10), torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], per_class=2)
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_shipped_spec_and_a_partial_recipe_in_a_config(capsys: pytest.CaptureFixture) -> None:
    """Every key of callbacks/synset_evaluator.yaml is a recipe field; a config setting some keeps the others."""
    import yaml

    from ddlight.cli import main

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "callbacks" / "synset_evaluator.yaml").read_text())["init_args"]
    evaluator = SynsetEvaluator(**spec | {"recipe": TrainRecipe(**spec["recipe"])})
    assert evaluator.recipe == TrainRecipe()
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(root / "configs" / "mtt_synthetic.yaml"), "--print_config"])
    (callback,) = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"][:1]
    assert callback["init_args"]["recipe"]["epochs"] == 150 and callback["init_args"]["recipe"]["lr"] == "auto"
